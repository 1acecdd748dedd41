"""How much does a synapse's pose change its features? The same synapses imaged in another pose:
each bbox volume is rotated in memory (90 degrees: an exact permutation of voxels; 35 degrees:
resampled, linear for raw and nearest for labels) about the z axis (in the y-x plane) and about
the x axis (in the z-y plane), the table points are mapped with it, and the cubes are built again.

For plain cubes, canonically oriented cubes (``orient_cubes``) and each of those with features
averaged over 4 rotations about the cleft normal (``rotation_averaging``), it prints

* the median cosine between the features of a synapse and of its rotated copy (near 1 says
  little: random-weight features of *different* synapses have cosine ~0.9999 too), and
* pose / spread: the median distance between a synapse's features and its rotated copy's,
  divided by the median distance between two different synapses (z-scored features, the space
  the pipeline clusters in). 0 = pose does not matter; 1 = a rotation moves a synapse as far as
  another synapse is.

Usage: python benchmarks/bench_rotation.py [--data data/demo] [--n 16] [--type 5] [--norm mask]
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial.distance import pdist

from synapse_nb.core import labels as L
from synapse_nb.core.config import load_config
from synapse_nb.cubes.build import build_synapse
from synapse_nb.cubes.geometry import CubeGeometry
from synapse_nb.cubes.rendering import RenderSettings, render
from synapse_nb.data.datasets import open_dataset
from synapse_nb.features.checkpoint import build_model
from synapse_nb.features.extract import FeatureExtractor


def rotation(angle_deg: float, plane: tuple[int, int]) -> np.ndarray:
    """3x3 rotation (z, y, x index space) by ``angle_deg`` in the plane of two axes."""
    a = np.deg2rad(angle_deg)
    R = np.eye(3)
    i, j = plane
    R[i, i], R[i, j], R[j, i], R[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
    return np.round(R, 12)


def rotate_volume(vol: np.ndarray, R: np.ndarray, order: int) -> np.ndarray:
    """``out[q] = vol[R^T (q - c) + c]`` about the volume centre c (same shape)."""
    c = (np.asarray(vol.shape, float) - 1) / 2
    return ndimage.affine_transform(vol, R.T, offset=c - R.T @ c, order=order, mode="nearest")


def rotate_point_xyz(p_xyz, R: np.ndarray, shape) -> list[float]:
    c = (np.asarray(shape, float) - 1) / 2
    q = R @ (np.asarray(p_xyz, float)[::-1] - c) + c
    return [float(v) for v in np.round(q)[::-1]]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--n", type=int, default=16, help="synapses (taken evenly from the first two bboxes)")
    ap.add_argument("--type", type=int, default=5)
    ap.add_argument("--norm", default="mask")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    root = args.data
    cfg = load_config("parameters/demo.yaml", cache_dir="", raw_dir=f"{root}/raw", seg_dir=f"{root}/seg",
                      mask_dir=f"{root}/mask", table_dir=f"{root}/tables", segmentation_type=args.type,
                      intensity_normalization=args.norm)
    bboxes = open_dataset(cfg)[:2]
    model, _ = build_model(None, seed=42)
    settings = RenderSettings.from_config(cfg)
    extractors = {r: FeatureExtractor(model, method="stage_specific", layer_num=cfg.layer_num, pooling="avg",
                                      progress=False, rotations=r) for r in (1, 4)}
    per_bbox = max(1, args.n // len(bboxes))
    poses = [("as imaged", 0.0, (1, 2)), ("90 deg about z", 90.0, (1, 2)), ("90 deg about x", 90.0, (0, 1)),
             ("35 deg about z", 35.0, (1, 2)), ("35 deg about x", 35.0, (0, 1))]
    feats: dict[tuple, dict[str, np.ndarray]] = {}
    t0 = time.perf_counter()
    for b in bboxes:
        vols = [np.asarray(v[:, :, :]) for v in (b.raw, b.seg, b.mask)]
        records = b.table.to_dict("records")
        chosen = [records[i] for i in np.linspace(0, len(records) - 1, per_bbox).astype(int)]
        for pose, angle, plane in poses:
            R = rotation(angle, plane)
            rv = vols if angle == 0 else [rotate_volume(v, R, 1 if i == 0 else 0) for i, v in enumerate(vols)]
            for rec in chosen:
                pts = [rotate_point_xyz([rec[k] for k in cols], R, vols[0].shape)
                       for cols in (L.CENTER_COLUMNS, L.SIDE1_COLUMNS, L.SIDE2_COLUMNS)]
                if any(not 0 <= v < n for p in pts for v, n in zip(p, vols[0].shape[::-1])):
                    continue  # rotated out of the (non-cubic) volume: left out of every pose below
                for orient in (False, True):
                    cube = build_synapse(*rv, *pts, b.label_ids, CubeGeometry(size=cfg.cube_size, orient=orient))
                    x = render(cube.raw, cube.bits, settings)[None]
                    n = np.array([cube.info[f"cleft_normal_{a}"] for a in "zyx"])
                    axis = 0 if orient else int(np.argmax(np.abs(n)))
                    for r, ex in extractors.items():
                        f = ex(x, rotation_axes=np.array([axis]) if r > 1 else None)[0]
                        feats.setdefault((pose, orient, r), {})[f"{b.name}/{rec[L.NAME_COLUMN]}"] = f
        print(f"{b.name}: {len(chosen)} synapses x {len(poses)} poses done ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = []
    for orient in (False, True):
        for r in (1, 4):
            names = sorted(set.intersection(*(set(v) for (_, o, rr), v in feats.items() if o == orient and rr == r)))
            base = np.array([feats[("as imaged", orient, r)][k] for k in names])
            mu, sd = base.mean(0), base.std(0)
            sd[sd == 0] = 1
            spread = np.median(pdist((base - mu) / sd))
            for pose, _, _ in poses[1:]:
                other = np.array([feats[(pose, orient, r)][k] for k in names])
                cos = np.sum(base * other, 1) / (np.linalg.norm(base, axis=1) * np.linalg.norm(other, axis=1))
                dist = np.linalg.norm((base - mu) / sd - (other - mu) / sd, axis=1)
                rows.append({"cubes": "oriented" if orient else "plain", "rotation averaging": r, "pose": pose,
                             "median cosine": np.median(cos), "pose / spread": np.median(dist) / spread})
    pd.set_option("display.width", 160)
    print(f"\n{len(base)} synapses (those inside the volume in every pose), type {args.type}, layer {cfg.layer_num} avg, normalisation {args.norm}, random weights")
    table = pd.DataFrame(rows)
    table["median cosine"] = table["median cosine"].map(lambda c: f"{c:.7f}")
    print(table.round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
