"""Reduce + cluster time on synthetic feature tables (blobs), with the share of each step.

    python benchmarks/bench_cluster.py                         # 1k, 10k, 100k x 96-d and 192-d
    python benchmarks/bench_cluster.py --sizes 1000 10000 --dims 192
    python benchmarks/bench_cluster.py --no-tsne --n-boot 10

Every case runs the package defaults a notebook uses: standardise, PCA to 50, UMAP 2-D and
3-D (k-NN graph shared above 4096 rows), t-SNE 2-D and 3-D (fitted on at most 5000 / 2500
rows, the rest placed by nearest neighbours), k selection by silhouette over k = 2..10 (KMeans,
MiniBatchKMeans above 20k rows, silhouette sampled above 5k rows), the final clustering, and
subsample stability per k (20 refits on 80 % of at most 10k rows). Numba compiles UMAP once
per process (UMAP itself and pynndescent's approximate k-NN); that time is measured on a
warm-up of 4200 rows and reported separately.
ARI of the clusters against the planted blobs is printed as a sanity check.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".numba_cache"))

import numpy as np
import pandas as pd
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from synapse_nb.analysis import clustering as C
from synapse_nb.analysis import reduce as R

STEPS = ["standardize", "pca", "umap_knn", "umap_2d", "umap_3d", "tsne_2d", "tsne_3d", "select_k", "cluster", "stability"]


def table(n: int, d: int, centers: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    X, y = make_blobs(n, d, centers=centers, cluster_std=4.0, center_box=(-6, 6), random_state=seed)
    meta = pd.DataFrame({"bbox": [f"bbox{1 + i % 7}" for i in range(n)], "Var1": [f"syn_{i}" for i in range(n)]})
    feats = pd.DataFrame(X.astype(np.float32), columns=[f"feat_{i:04d}" for i in range(d)])
    return pd.concat([meta, feats], axis=1), y


def run_case(n: int, d: int, args: argparse.Namespace) -> dict:
    df, truth = table(n, d, args.centers)
    t_all = time.perf_counter()
    methods = ("umap",) if args.no_tsne else ("umap", "tsne")
    emb = R.reduce_features(df, pca_components=args.pca, methods=methods, dims=(2, 3), seed=0, show_progress=False)
    times = dict(emb.attrs["reduce"]["timings"])
    Z = emb[R.pca_columns(emb)].to_numpy()

    t0 = time.perf_counter()
    sel = C.select_k(Z, (2, args.k_max), seed=0, show_progress=False)
    times["select_k"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = C.cluster(Z, "kmeans", k=C.chosen_k(sel), seed=0, show_progress=False)
    times["cluster"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stab = C.stability(Z, "kmeans", k=res.k, n_boot=args.n_boot, k_range=(2, args.k_max), seed=0, show_progress=False)
    times["stability"] = time.perf_counter() - t0
    total = time.perf_counter() - t_all
    row = {"n": n, "d": d, **{s: times.get(s, 0.0) for s in STEPS}, "total_s": total,
           "k": res.k, "ari_vs_blobs": adjusted_rand_score(truth, res.labels),
           "stability_ari": float(stab.loc[stab["chosen"], "ari_mean"].iloc[0])}
    return row


def fmt(rows: list[dict]) -> str:
    head = ["n", "d", "total s"] + [f"{s} s (%)" for s in STEPS] + ["k", "ARI blobs", "stab. ARI"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['n']:,}", str(r["d"]), f"{r['total_s']:.1f}"]
        for s in STEPS:
            v = r[s]
            cells.append("-" if v == 0 else f"{v:.1f} ({100 * v / r['total_s']:.0f}%)")
        cells += [str(r["k"]), f"{r['ari_vs_blobs']:.3f}", f"{r['stability_ari']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[96, 192])
    ap.add_argument("--centers", type=int, default=6, help="planted blobs")
    ap.add_argument("--pca", type=int, default=50)
    ap.add_argument("--k-max", type=int, default=10)
    ap.add_argument("--n-boot", type=int, default=20)
    ap.add_argument("--no-tsne", action="store_true")
    ap.add_argument("--csv", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    t0 = time.perf_counter()
    warm, _ = table(R.UMAP_EXACT_MAX_N + 100, 16, 3)
    R.reduce_features(warm, pca_components=10, methods=("umap",), dims=(2, 3), show_progress=False)
    print(f"numba warm-up (UMAP + k-NN compile, once per process): {time.perf_counter() - t0:.1f} s", flush=True)

    rows = []
    for n in args.sizes:
        for d in args.dims:
            row = run_case(n, d, args)
            rows.append(row)
            print(f"n={n:,} d={d}: {row['total_s']:.1f} s", flush=True)
    print()
    print(fmt(rows))
    if args.csv:
        pd.DataFrame(rows).to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
