"""Do the clusters mean morphology? Agreement with the known classes for every feature set and
every way of making the deep features see shape, on the demo and the hard preset.

For each dataset (default demo; ``--preset hard`` data when given), segmentation type and
variant of the deep features

* plain      today's rendering (per-cube min-max), cubes as imaged;
* normalised per-cube intensity normalisation (``intensity_normalization``, ``--norm``);
* oriented   normalised + canonically oriented cubes (``orient_cubes``);
* oriented + averaging: the same + features averaged over 4 rotations about the cleft normal,

the deep features are extracted once (random weights, seed 42, layer and pooling of
``parameters/demo.yaml``), and for every feature set (deep, descriptors, hybrid) the pipeline's
own reduction (standardise or block-weight, PCA) and clustering (kmeans, k chosen over 2..8 by
``--criteria``, and at the true k) run. It prints ARI / NMI against ``synapse_class`` and the
chosen k, plus the brightness check of the chosen clustering. Descriptors do not depend on the
segmentation type or on the rendering: their rows repeat one number per dataset.

The cost table gives seconds per synapse of building plain cubes, of the descriptors inside
that build, of building oriented cubes, and of extracting plain vs rotation-averaged features,
as ratios to plain extraction measured in this one run.

Usage: python benchmarks/bench_morphology.py [--data data/demo] [--hard data/demo_hard]
       [--types 0,5,10] [--norm mask] [--criteria silhouette,gap,stability,consensus]
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from synapse_nb.analysis import clustering as C
from synapse_nb.analysis.brightness import brightness_check
from synapse_nb.analysis.feature_sets import assemble
from synapse_nb.analysis.reduce import pca
from synapse_nb.core.config import load_config
from synapse_nb.cubes import descriptors as D
from synapse_nb.data.datasets import open_dataset
from synapse_nb.features.checkpoint import build_model
from synapse_nb.pipeline.steps import compute_features, make_cubes

SETS = ("deep", "descriptors", "hybrid")
VARIANTS = {
    "plain": dict(orient_cubes=False, rotation_averaging=1, normalize=False),
    "normalised": dict(orient_cubes=False, rotation_averaging=1, normalize=True),
    "oriented": dict(orient_cubes=True, rotation_averaging=1, normalize=True),
    "oriented+avg4": dict(orient_cubes=True, rotation_averaging=4, normalize=True),
}


def config_for(root: Path, **values):
    paths = {"raw_dir": str(root / "raw"), "seg_dir": str(root / "seg"), "mask_dir": str(root / "mask"),
             "table_dir": str(root / "tables")}
    return load_config("parameters/demo.yaml", cache_dir="", **paths, **values)


def clustered(features: pd.DataFrame, feature_set: str, truth: np.ndarray, criteria: list[str], seed: int = 42) -> list[dict]:
    """Rows of (criterion, chosen k, ARI, NMI, brightness) for one feature matrix: k is chosen once
    by every criterion (one selection table), then kmeans runs at each chosen k and at the true k."""
    fm = assemble(features, feature_set=feature_set, descriptor_weight=0.5)
    Z, _ = pca(fm.values, n_components=min(50, len(features) - 1), seed=seed)
    table = C.select_k(Z, (2, 8), seed=seed, criterion="consensus", show_progress=False)
    picks = {**{str(k): int(v) for k, v in table.attrs["picks"].items()}, "consensus": int(table.attrs["chosen_k"])}
    rows = []
    for crit in [*criteria, "true k"]:
        k = len(set(truth)) if crit == "true k" else picks[crit]
        result = C.cluster(Z, method="kmeans", k=k, seed=seed, show_progress=False)
        check = brightness_check(features, Z, labels=result.labels)
        rows.append({
            "criterion": crit, "k": int(result.k),
            "ARI": adjusted_rand_score(truth, result.labels), "NMI": normalized_mutual_info_score(truth, result.labels),
            "|r(PC1, brightness)|": abs(check.pc1_r) if check.measurable else float("nan"),
            "brightness warning": bool(check.warn),
        })
    return rows


def run_dataset(name: str, root: Path, types: list[int], norm: str, criteria: list[str], model, info) -> tuple[pd.DataFrame, dict]:
    """Every (type, variant, set, criterion) row of one dataset, and its cost figures."""
    rows, cost = [], {}
    cubesets = {}
    for orient in (False, True):
        cfg = config_for(root, orient_cubes=orient)
        data = open_dataset(cfg)
        t0 = time.perf_counter()
        cubesets[orient] = make_cubes(data, cfg, progress=False)
        cost["build oriented" if orient else "build plain"] = (time.perf_counter() - t0) / len(cubesets[orient])
    table = cubesets[False].table
    truth = table["synapse_class"].astype(str).to_numpy()
    t0 = time.perf_counter()
    raw, bits = np.asarray(cubesets[False].raw[:16]), np.asarray(cubesets[False].bits[:16])
    annotated = D.Annotated(vesicle=True, cleft=True, mito=True, partners=True)
    for i in range(len(raw)):
        D.measure_cube(raw[i], bits[i], voxel_nm=tuple(cubesets[False].voxel_size_nm), annotated=annotated)
    cost["descriptors"] = (time.perf_counter() - t0) / len(raw)
    for t in types:
        for variant, v in VARIANTS.items():
            cfg = config_for(root, segmentation_type=t, orient_cubes=v["orient_cubes"],
                             rotation_averaging=v["rotation_averaging"],
                             intensity_normalization=norm if v["normalize"] else "minmax")
            cubes = cubesets[v["orient_cubes"]]
            t0 = time.perf_counter()
            result = compute_features(cubes, model, info, cfg, progress=False)
            seconds = (time.perf_counter() - t0) / len(result.features)
            if t == types[0] and variant in ("plain", "oriented+avg4"):
                cost[f"extract {variant}"] = seconds
            feats = result.features
            keep_truth = feats["synapse_class"].astype(str).to_numpy()
            for fs in SETS:
                if fs == "descriptors" and variant != "plain":
                    continue  # descriptors do not depend on the rendering
                for r in clustered(feats, fs, keep_truth, criteria):
                    rows.append({"data": name, "type": t, "variant": variant if fs != "descriptors" else "-",
                                 "features": fs, **r})
            print(f"  {name} type {t} {variant}: {len(feats)} synapses, {seconds:.2f} s/synapse", flush=True)
    return pd.DataFrame(rows), cost


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--hard", default="data/demo_hard", help="hard preset folder; skipped when absent")
    ap.add_argument("--types", default="0,5,10")
    ap.add_argument("--norm", default="mask", choices=("cube", "mask"))
    ap.add_argument("--criteria", default="silhouette,gap,stability,consensus")
    ap.add_argument("--out", default="", help="also write the rows as CSV here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    types = [int(t) for t in args.types.split(",")]
    criteria = args.criteria.split(",")
    model, info = build_model(None, seed=42)
    frames = []
    for name, folder in (("demo", args.data), ("hard", args.hard)):
        if not Path(folder, "raw").is_dir():
            print(f"{name}: {folder} not found, skipped (make it with python -m synapse_nb demo-data --preset {name})")
            continue
        table, cost = run_dataset(name, Path(folder), types, args.norm, criteria, model, info)
        frames.append(table)
        base = cost["extract plain"]
        print(f"\n{name}: seconds per synapse (ratio to plain extraction)")
        for what, s in cost.items():
            print(f"  {what:24s} {s:7.3f} s  ({s / base:5.2f}x)")
    if not frames:
        return 1
    rows = pd.concat(frames, ignore_index=True)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 500)
    print()
    print(rows.round(3).to_string(index=False))
    if args.out:
        rows.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
