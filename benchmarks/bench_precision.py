"""Does bfloat16 change the science? bf16 vs float32 features judged against the spread
between synapses and by whether the clusters change.

Cosine to float32 says nothing here: with random weights the float32 features of two
*different* synapses already have cosine ~0.99999 with each other. So for each setting this
prints
* error / spread: median over synapses of |f_bf16 - f_fp32| divided by the median distance
  between the float32 features of two different synapses, on raw features and on the
  standardised features the pipeline clusters (z-score per feature, as 04_reduce does);
* cluster agreement: KMeans(k) with k = the number of demo classes, fitted on the PCA of the
  standardised bf16 features and, separately, of the float32 ones: ARI between the two
  labelings (1.00 = the same clusters), plus each one's ARI against the known classes.

Usage: python benchmarks/bench_precision.py [--data data/demo] [--n 32] [--size 48] [--settings 5:20,10:trunk]
(on a CPU without native bf16 instructions torch emulates bf16 convolutions, ~100x slower
than float32: keep --n and --size small there).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from scipy.spatial.distance import pdist

from synapse_nb.core.config import make_config
from synapse_nb.cubes.rendering import RenderSettings
from synapse_nb.data.datasets import open_dataset
from synapse_nb.features.checkpoint import build_model
from synapse_nb.features.extract import pool_features
from synapse_nb.features.inference import InferenceTrunk
from synapse_nb.pipeline.steps import make_cubes

def features(model, x: torch.Tensor, upto: int | None, pooling: str, dtype: torch.dtype) -> np.ndarray:
    trunk = InferenceTrunk(model, upto, dtype)
    with torch.inference_mode():
        return np.concatenate([pool_features(trunk(x[i : i + 1]), pooling).numpy() for i in range(len(x))])


def zscore(f: np.ndarray) -> np.ndarray:
    sd = f.std(axis=0)
    sd[sd == 0] = 1.0
    return (f - f.mean(axis=0)) / sd


def clusters(f: np.ndarray, k: int, seed: int = 42) -> np.ndarray:
    z = zscore(f)
    p = PCA(n_components=min(50, len(f) - 1), random_state=seed).fit_transform(z)
    return KMeans(k, n_init=10, random_state=seed).fit_predict(p)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--settings", default="5:20,10:trunk,5:trunk,10:20",
                    help="comma-separated type:layer pairs (layer 'trunk' = whole trunk), avg pooling")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    root = Path(args.data)
    cfg = make_config({"raw_dir": str(root / "raw"), "seg_dir": str(root / "seg"), "mask_dir": str(root / "mask"),
                       "table_dir": str(root / "tables"), "cube_size": args.size})
    cubes = make_cubes(open_dataset(cfg), cfg, progress=False)
    rows = np.linspace(0, len(cubes) - 1, min(args.n, len(cubes))).astype(int)
    truth = cubes.table.iloc[rows]["synapse_class"].astype(str).to_numpy() if "synapse_class" in cubes.table else None
    k = len(set(truth)) if truth is not None else 3
    model, info = build_model(None, seed=42)
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"{len(rows)} demo synapses at {args.size}^3, {info.source} weights (seed 42), native bf16: {native}, k = {k}")
    print("| type | layer | pooling | err/spread raw | err/spread z-scored | ARI bf16 vs fp32 | ARI fp32 vs truth | "
          "ARI bf16 vs truth | min cosine bf16-fp32 | median cosine between synapses (fp32) | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    settings = [(int(t), None if l == "trunk" else int(l), "avg") for t, l in (p.split(":") for p in args.settings.split(","))]
    for seg_type, upto, pooling in settings:
        x = torch.from_numpy(cubes.rendered(RenderSettings(seg_type), indices=rows)[0 : len(rows)]).unsqueeze(1)
        t0 = time.perf_counter()
        f32 = features(model, x, upto, pooling, torch.float32)
        f16 = features(model, x, upto, pooling, torch.bfloat16)
        secs = time.perf_counter() - t0
        ratios = []
        for a, b in ((f32, f16), (zscore(f32), (f16 - f32.mean(0)) / np.where(f32.std(0) == 0, 1, f32.std(0)))):
            err = np.linalg.norm(b - a, axis=1)
            ratios.append(float(np.median(err) / np.median(pdist(a))))
        cos = (f16 * f32).sum(1) / np.linalg.norm(f16, axis=1) / np.linalg.norm(f32, axis=1)
        unit = f32 / np.linalg.norm(f32, axis=1, keepdims=True)
        between = np.median((unit @ unit.T)[np.triu_indices(len(f32), 1)])
        l32, l16 = clusters(f32, k), clusters(f16, k)
        t32 = adjusted_rand_score(truth, l32) if truth is not None else float("nan")
        t16 = adjusted_rand_score(truth, l16) if truth is not None else float("nan")
        layer = "trunk" if upto is None else str(upto)
        print(f"| {seg_type} | {layer} | {pooling} | {ratios[0]:.3f} | {ratios[1]:.3f} | {adjusted_rand_score(l32, l16):.2f} | "
              f"{t32:.2f} | {t16:.2f} | {cos.min():.6f} | {between:.6f} | {secs:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
