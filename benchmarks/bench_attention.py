"""Grad-CAM cost on this CPU: seconds per synapse per layer, and peak memory of a batch of 8.

80^3 cubes, float32, seeded random weights, the ``norm`` target on the whole trunk (the
``cluster`` target costs the same: a few extra operations on the pooled vector).

* as :func:`synapse_nb.explain.attention.explain` runs it at its default batch of 1: plain eval-mode
  ``nn.Module`` (autograd needs it; the folded :class:`~synapse_nb.features.inference.InferenceTrunk` has no
  backward), inside :func:`synapse_nb.features.inference.reuse_large_allocations`. Channels-last weights
  were tried and gave no reliable gain on the shared 2-core machine, so they are off;
* seconds per synapse for each layer alone (forward to features.33 + backward to that layer),
  and for the three default layers in ONE pass (what :func:`synapse_nb.explain.attention.explain`
  does), at batch 1 and at the module's default batch;
* peak resident memory (VmHWM) of a fresh process that builds the model and explains one
  batch of 1 and of 8 cubes at the three default layers, with and without
  ``reuse_large_allocations`` (at batch 1 it removes ~1 s of page faults per synapse for
  ~0.2 GB more; at batch 8 it measured slower and ~2 GB heavier, so ``explain`` only uses it
  at batch 1).

Usage::

    python benchmarks/bench_attention.py            # 4 synapses per setting
    python benchmarks/bench_attention.py --quick    # 2 synapses per setting
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from synapse_nb.core.layers import INPUT_SIZE
from synapse_nb.explain.attention import DEFAULT_BATCH_SIZE, NormTarget, gradcam
from synapse_nb.features.checkpoint import build_model
from synapse_nb.features.extract import available_cores
from synapse_nb.features.inference import reuse_large_allocations

LAYERS = (3, 20, 27)


def cubes(n: int, size: int = INPUT_SIZE, seed: int = 0) -> torch.Tensor:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random((n, size, size, size), dtype=np.float32), sigma=(0, 2, 2, 2))
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    return torch.from_numpy((x - lo) / (hi - lo)).unsqueeze(1)


def seconds_per_synapse(model, x: torch.Tensor, layers, batch: int) -> float:
    # as synapse_nb.explain.attention.explain runs it: reused buffers at batch 1 only
    with reuse_large_allocations() if batch == 1 else contextlib.nullcontext():
        return _seconds(model, x, layers, batch)


def _seconds(model, x: torch.Tensor, layers, batch: int) -> float:
    target = NormTarget(33, "avg")
    # one warm-up batch (oneDNN primitive creation), not timed
    gradcam(model.features, x[:batch], layers, lambda a: target.score(a, range(len(a))), 33)
    t0 = time.perf_counter()
    for s in range(0, len(x), batch):
        gradcam(model.features, x[s : s + batch], layers, lambda a: target.score(a, range(len(a))), 33)
    return (time.perf_counter() - t0) / len(x)


def vm_hwm_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(batch: int, reuse: bool) -> None:
    """Run in a fresh process: peak memory of one batch at the three default layers."""
    torch.set_num_threads(available_cores())
    model, _ = build_model(None, seed=42)
    x = cubes(batch)
    after_model = vm_hwm_mb()
    target = NormTarget(33, "avg")
    t0 = time.perf_counter()
    with reuse_large_allocations() if reuse else contextlib.nullcontext():
        gradcam(model.features, x, LAYERS, lambda a: target.score(a, range(len(a))), 33)
    print(json.dumps({"batch": batch, "reuse": reuse, "seconds": time.perf_counter() - t0, "vmhwm_model_mb": after_model, "vmhwm_mb": vm_hwm_mb()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 synapses per setting")
    ap.add_argument("--child-batch", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--child-reuse", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--memory-batch", type=int, default=8, help="batch size of the memory measurement")
    args = ap.parse_args()
    if args.child_batch:
        child(args.child_batch, bool(args.child_reuse))
        return
    n = 2 if args.quick else 4
    threads = available_cores()
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {threads} threads, {INPUT_SIZE}^3 cubes, float32, random weights, {n} synapses per setting")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (the machine may be shared)")
    model, _ = build_model(None, seed=42)
    x = cubes(n)
    for layer in LAYERS:
        print(f"features.{layer:<2d} alone, batch 1: {seconds_per_synapse(model, x, [layer], 1):6.2f} s per synapse")
    for batch in sorted({1, DEFAULT_BATCH_SIZE}):
        s = seconds_per_synapse(model, x, LAYERS, batch)
        print(f"features.{','.join(map(str, LAYERS))} in one pass, batch {batch}: {s:6.2f} s per synapse "
              f"({s / len(LAYERS):.2f} s per synapse per layer)")
    for batch in sorted({1, args.memory_batch}):
        for reuse in (True, False):
            cmd = [sys.executable, __file__, "--child-batch", str(batch), "--child-reuse", str(int(reuse))]
            mem = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            how = "inside reuse_large_allocations (explain: batch 1 only)" if reuse else "plain glibc malloc"
            print(f"fresh process, batch of {batch}, {how}: peak RSS (VmHWM) {mem['vmhwm_mb']:.0f} MB "
                  f"({mem['vmhwm_model_mb']:.0f} MB after building the model and cubes), {mem['seconds']:.1f} s for the batch")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
