"""Throughput of the VGG3D trunk on this machine: seed setting vs our defaults vs bf16.

Everything is measured in ONE run so the numbers are comparable (the same machine load):

* seed setting: plain ``model.features`` in float32, default (contiguous) layout, batch 2;
* our default ``FeatureExtractor`` (float32);
* our opt-in bfloat16 mode, with the minimum cosine similarity of its features to float32
  over all synapses (every pooling, standard and layer-20 extraction);
* trunk GFLOP/s next to a large matrix multiply measured in the same run, so one sees how
  close the convolutions get to what the cores can do.

Usage::

    python benchmarks/bench_network.py            # 16 synapses per setting, 3 repeats
    python benchmarks/bench_network.py --quick    # a fast smoke run
    python benchmarks/bench_network.py --sweep    # also batch size / layout variants

It also times our float32 default in a child process started with ``ONEDNN_MAX_CPU_ISA=AVX2``
(skip with ``--no-avx2-child``): on AMD Zen 4, whose AVX-512 units are 256 bits wide, oneDNN's
AVX2 kernels handle the 24-channel convolutions of block 1 better. That setting is
process-wide and must be made before torch runs its first convolution; it also removes the
native bf16 kernels, so it is reported separately and is not a default.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from synapse_nb.core.layers import INPUT_SIZE, layer_output_size
from synapse_nb.features.checkpoint import build_model
from synapse_nb.features.extract import (
    DEFAULT_BATCH_SIZE,
    POOLINGS,
    FeatureExtractor,
    available_cores,
    pool_features,
)
from synapse_nb.features.inference import InferenceTrunk
from synapse_nb.features.vgg3d import VGG3D


def conv_flops(model: VGG3D, size: int = INPUT_SIZE, upto: int | None = None) -> float:
    """FLOPs (2 x multiply-accumulates) of all convolutions of the trunk for one cube."""
    total = 0
    for i, m in enumerate(model.features):
        if upto is not None and i > upto:
            break
        if isinstance(m, torch.nn.Conv3d):
            voxels = layer_output_size(i, size) ** 3
            total += 2 * voxels * m.out_channels * m.in_channels * int(np.prod(m.kernel_size))
    return float(total)


def realistic_cubes(n: int, size: int = INPUT_SIZE, seed: int = 0) -> np.ndarray:
    """Smoothed noise with blob-like structure, min-max scaled to [0, 1] per cube."""
    gen = torch.Generator().manual_seed(seed)
    out = np.empty((n, size, size, size), dtype=np.float32)
    for i in range(n):
        x = torch.rand(1, 1, size, size, size, generator=gen)
        x = F.avg_pool3d(x, 5, stride=1, padding=2, count_include_pad=False)
        x = F.avg_pool3d(x, 5, stride=1, padding=2, count_include_pad=False)
        x = x + 0.05 * torch.rand(x.shape, generator=gen)  # a little fine-grained texture
        x = (x - x.min()) / (x.max() - x.min())
        out[i] = x[0, 0].numpy()
    return out


def matmul_gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 1.5) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def seed_setting_rate(model: VGG3D, cubes: np.ndarray, batch: int = 2) -> float:
    """The seed's way: eager modules, contiguous float32, batch 2, no_grad."""
    with torch.no_grad():
        model.features(torch.from_numpy(cubes[:batch]).unsqueeze(1))  # warm-up
        t0 = time.perf_counter()
        for s in range(0, len(cubes), batch):
            x = torch.from_numpy(cubes[s : s + batch]).unsqueeze(1)
            model.features(x).mean(dim=(2, 3, 4)).numpy()
        return len(cubes) / (time.perf_counter() - t0)


def extractor_rate(ex: FeatureExtractor, cubes: np.ndarray) -> tuple[float, np.ndarray]:
    ex(cubes[: ex.batch_size])  # warm-up (oneDNN primitive creation)
    t0 = time.perf_counter()
    feats = ex(cubes)
    return len(cubes) / (time.perf_counter() - t0), feats


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)
    return float(cos.min())


def bf16_agreement(model: VGG3D, cubes: np.ndarray) -> dict[str, float]:
    """Minimum per-synapse cosine(bf16, fp32) for each pooling, standard and layer 20."""
    res: dict[str, float] = {}
    x = torch.from_numpy(cubes).unsqueeze(1)
    with torch.inference_mode():
        for label, upto in (("standard", None), ("layer20", 20)):
            ref = torch.cat([InferenceTrunk(model, upto, torch.float32)(x[i : i + 2]) for i in range(0, len(x), 2)])
            low = torch.cat([InferenceTrunk(model, upto, torch.bfloat16)(x[i : i + 2]) for i in range(0, len(x), 2)])
            for pooling in POOLINGS:
                res[f"{label}/{pooling}"] = min_cosine(pool_features(low, pooling).numpy(), pool_features(ref, pooling).numpy())
    return res


def fp32_only(args: argparse.Namespace) -> int:
    """Child mode: time only our float32 default and print one parsable line."""
    torch.set_num_threads(available_cores())
    model, _ = build_model(None, seed=42)
    cubes = realistic_cubes(args.n)
    ex = FeatureExtractor(model, pooling="avg", input_range="0_1", progress=False, batch_size=args.batch_size)
    rates = [extractor_rate(ex, cubes)[0] for _ in range(args.repeats)]
    print("CHILD_RESULT " + " ".join(f"{r:.4f}" for r in rates))
    return 0


def avx2_child(args: argparse.Namespace) -> list[float] | None:
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    cmd = [sys.executable, os.path.abspath(__file__), "--fp32-only", "--n", str(args.n),
           "--repeats", str(args.repeats), "--batch-size", str(args.batch_size)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600, check=True).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"AVX2 child run failed: {exc}")
        return None
    for line in out.splitlines():
        if line.startswith("CHILD_RESULT"):
            return [float(v) for v in line.split()[1:]]
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16, help="synapses per timed setting (default 16; the first cube "
                    "of each call pays one-off buffer set-up, so a small n understates throughput)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
    ap.add_argument("--quick", action="store_true", help="n=2, one repeat, no sweep (smoke test)")
    ap.add_argument("--sweep", action="store_true", help="also time batch sizes 1/2/4 and the contiguous layout")
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    ap.add_argument("--no-avx2-child", action="store_true", help="skip the ONEDNN_MAX_CPU_ISA=AVX2 child run")
    ap.add_argument("--fp32-only", action="store_true", help=argparse.SUPPRESS)  # used by the child run
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.sweep, args.no_avx2_child = 2, 1, False, True
    if args.fp32_only:
        return fp32_only(args)

    threads = available_cores()
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    model, info = build_model(None, seed=42)
    flop = conv_flops(model)
    print(f"trunk conv FLOPs per 80^3 synapse (2 x MACs, counted): {flop / 1e9:.2f} GFLOP "
          f"(up to layer 20: {conv_flops(model, upto=20) / 1e9:.2f} GFLOP)")
    cubes = realistic_cubes(args.n)

    rates: dict[str, list[float]] = {}
    feats: dict[str, np.ndarray] = {}
    settings = {
        "ours_fp32": dict(precision="float32", batch_size=args.batch_size),
        "ours_bf16": dict(precision="bfloat16", batch_size=args.batch_size),
    }
    if args.sweep:
        for bs in (1, 2, 4):
            for prec in ("float32", "bfloat16"):
                settings[f"{prec} batch {bs} channels_last"] = dict(precision=prec, batch_size=bs)
            settings[f"float32 batch {bs} contiguous"] = dict(precision="float32", batch_size=bs, channels_last=False)
    mm = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):  # interleave settings so that load drifts hit all of them
        rates.setdefault("seed", []).append(seed_setting_rate(model, cubes))
        for name, kw in settings.items():
            ex = FeatureExtractor(model, pooling="avg", input_range="0_1", progress=False, **kw)
            r, f = extractor_rate(ex, cubes)
            rates.setdefault(name, []).append(r)
            feats[name] = f
        mm["fp32"].append(matmul_gflops(torch.float32))
        mm["bf16"].append(matmul_gflops(torch.bfloat16))
    if not args.no_avx2_child:
        child = avx2_child(args)
        if child:
            rates["avx2_child"] = child
    med = {k: statistics.median(v) for k, v in rates.items()}
    mmm = {k: statistics.median(v) for k, v in mm.items()}
    cos_timed = min_cosine(feats["ours_bf16"], feats["ours_fp32"])
    agreement = bf16_agreement(model, cubes[: max(2, min(args.n, 6))])

    def row(label: str, key: str, peak: float, extra: str = "") -> str:
        r = med[key]
        spread = f"{min(rates[key]):.2f}-{max(rates[key]):.2f}"
        return (f"| {label:<38} | {r:6.2f} | {spread:>11} | {r * flop / 1e9:7.1f} | {100 * r * flop / 1e9 / peak:5.1f}% "
                f"| {r / med['seed']:5.2f}x | {extra}")

    print()
    print(f"{args.n} synapses of 80^3 per setting, median of {args.repeats} repeat(s); {info.description()}")
    print(f"| {'setting':<38} | syn/s  | range       | GFLOP/s | of mm | vs seed | notes")
    print(f"|{'-' * 40}|--------|-------------|---------|-------|---------|------")
    print(row("seed: fp32, contiguous, batch 2, eager", "seed", mmm["fp32"], "BN + ReLU as separate passes"))
    print(row(f"ours default: fp32, channels_last, b{args.batch_size}", "ours_fp32", mmm["fp32"], "BN folded, ReLU fused"))
    print(row(f"ours opt-in: bf16, channels_last, b{args.batch_size}", "ours_bf16", mmm["bf16"],
              f"min cosine vs fp32 (avg) {cos_timed:.6f}"))
    if "avx2_child" in med:
        print(row(f"ours fp32, b{args.batch_size}, ONEDNN_MAX_CPU_ISA=AVX2", "avx2_child", mmm["fp32"],
                  "child process; no fast bf16 there"))
    for name in settings:
        if name.startswith(("float32 ", "bfloat16 ")):
            print(row(name, name, mmm["fp32" if name.startswith("float32") else "bf16"]))
    print(f"| matmul 2048^2 fp32 (same run)          | GFLOP/s {mmm['fp32']:.1f}")
    print(f"| matmul 2048^2 bf16 (same run)          | GFLOP/s {mmm['bf16']:.1f}")
    print(f"speed-up ours fp32 / seed: {med['ours_fp32'] / med['seed']:.2f}x; ours bf16 / seed: "
          f"{med['ours_bf16'] / med['seed']:.2f}x; bf16 / fp32: {med['ours_bf16'] / med['ours_fp32']:.2f}x")
    print("min cosine(bf16, fp32) per synapse: " + ", ".join(f"{k} {v:.5f}" for k, v in agreement.items()))
    print(f"load average at end {os.getloadavg()[0]:.2f} (values well above {threads} mean other work shared the cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
