"""Does self-supervised pretraining make the features mean morphology, and what does it cost?

Three parts, each printed as a table (one run, this machine):

* cost: seconds per training epoch per 100 synapses at 80^3, 48^3 and 32^3 cubes, float32 and
  bfloat16 (measured on a few demo synapses, one epoch, then scaled to 100; on a CPU without
  native bf16 it is emulated, so only its 32^3 row is measured, on fewer synapses);
* quality: on the default demo and the hard preset, ARI / NMI against ``synapse_class`` with
  the k the tool chooses (consensus) and at the true k, for random weights vs weights pretrained
  on the same synapses, deep and hybrid feature sets, the rest of the pipeline unchanged
  (``parameters/demo.yaml``); pretrained features both from the full cubes and from cubes
  resampled to the training size; with the pretraining settings and wall time;
* rotation: cosine between the features of a cube and of its 90-degree turns, and the distance
  between them over the median distance between synapses (the cosine alone says little:
  random-weight features of different synapses already have cosine ~0.9999).

Usage: python benchmarks/bench_pretrain.py [--data data/demo] [--hard data/demo_hard]
       [--epochs 40] [--cube 32] [--skip cost,quality,rotation] [--work /tmp/bench_pretrain]
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.spatial.distance import pdist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_morphology import clustered, config_for  # noqa: E402

from synapse_nb.cubes.rendering import RenderSettings  # noqa: E402
from synapse_nb.data.datasets import open_dataset  # noqa: E402
from synapse_nb.features.checkpoint import build_model  # noqa: E402
from synapse_nb.features.devices import cpu_has_native_bf16  # noqa: E402
from synapse_nb.features.extract import FeatureExtractor, features_frame, rotate_cube  # noqa: E402
from synapse_nb.pipeline.steps import make_cubes  # noqa: E402
from synapse_nb.training import PretrainSettings, ResampledCubes, pretrain, upto_for  # noqa: E402


def settings_for(cfg, *, epochs: int, cube: int | None, precision: str = "float32", batch: int | None = None) -> PretrainSettings:
    """The pipeline's settings for this config (as ``02_pretrain`` makes them)."""
    return PretrainSettings(
        epochs=epochs, batch_size=batch or cfg.pretrain_batch_size, cube_size=cube,
        learning_rate=cfg.pretrain_learning_rate, temperature=cfg.pretrain_temperature,
        patience=cfg.pretrain_patience, precision=precision, seed=cfg.seed,
        upto=upto_for(cfg.extraction_method, cfg.layer_num), input_range="0_1",
    )


class Subset:
    """The first ``n`` cubes of a source."""

    def __init__(self, cubes, n: int) -> None:
        self.cubes, self.n = cubes, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item: slice) -> np.ndarray:
        start, stop, _ = item.indices(self.n)
        return np.asarray(self.cubes[start:stop], dtype=np.float32)


def rendered(root: Path):
    cfg = config_for(root)
    cubes = make_cubes(open_dataset(cfg), cfg, progress=False)
    keep = np.setdiff1d(np.arange(len(cubes)), cubes.empty_mask_rows(cfg.segmentation_type))
    return cfg, cubes, keep, cubes.rendered(RenderSettings.from_config(cfg), indices=keep)


def cost(view, cfg, work: Path) -> pd.DataFrame:
    rows = []
    for size in (80, 48, 32):
        for precision in ("float32", "bfloat16"):
            n = 16 if precision == "float32" else 4
            if precision == "bfloat16" and size != 32 and not cpu_has_native_bf16():
                rows.append({"cube": f"{size}^3", "precision": precision, "synapses timed": 0})
                continue  # emulated bf16 takes hours here; its 32^3 row shows the ratio
            s = settings_for(cfg, epochs=1, cube=size, precision=precision, batch=n)
            t0 = time.perf_counter()
            result = pretrain(Subset(view, n), settings=s, out_dir=work / f"cost_{size}_{precision}", device="cpu", progress=False)
            wall = time.perf_counter() - t0
            epoch = float(result.history["seconds"].iloc[0])
            rows.append({"cube": f"{size}^3", "precision": precision, "synapses timed": n,
                         "s/epoch per 100 synapses": epoch / n * 100, "wall incl. setup (s)": wall})
            print(f"  cost {size}^3 {precision}: {epoch:.1f} s for {n} synapses", flush=True)
    return pd.DataFrame(rows)


def features(view, model, info, cfg, source=None) -> np.ndarray:
    ex = FeatureExtractor(model, method=cfg.extraction_method, layer_num=cfg.layer_num, pooling=cfg.pooling_method,
                          batch_size=cfg.batch_size, precision="float32", input_range="0_1", progress=False)
    return ex(view if source is None else source)


def quality(name: str, root: Path, args, work: Path) -> pd.DataFrame:
    cfg, cubes, keep, view = rendered(root)
    table = cubes.table.iloc[keep].reset_index(drop=True)
    truth = table["synapse_class"].astype(str).to_numpy()
    s = settings_for(cfg, epochs=args.epochs, cube=args.cube)
    t0 = time.perf_counter()
    result = pretrain(view, settings=s, out_dir=work / f"quality_{name}", device="cpu", progress=False,
                      describe_data={"dataset": name})
    wall = time.perf_counter() - t0
    print(f"  {name}: {result.describe()} in {wall:.0f} s", flush=True)
    random_model, random_info = build_model(None, seed=cfg.seed)
    trained, trained_info = build_model(result.weights_path)
    variants = {
        "random": features(view, random_model, random_info, cfg),
        "pretrained, 80^3": features(view, trained, trained_info, cfg),
        f"pretrained, resampled to {args.cube}^3": features(view, trained, trained_info, cfg, ResampledCubes(view, args.cube)),
        f"random, resampled to {args.cube}^3": features(view, random_model, random_info, cfg, ResampledCubes(view, args.cube)),
    }
    rows = []
    for weights, matrix in variants.items():
        feats = features_frame(matrix, table)
        for fs in ("deep", "hybrid"):
            for r in clustered(feats, fs, truth, ["consensus"]):
                rows.append({"data": name, "weights": weights, "features": fs, **r,
                             "epochs": int(result.metadata["epochs_run"]), "pretrain s": round(wall)})
    return pd.DataFrame(rows)


def rotation(view, cfg, weights: Path | None, cube: int) -> pd.DataFrame:
    rows = []
    models = {"random": build_model(None, seed=cfg.seed)}
    if weights is not None:
        models["pretrained"] = build_model(weights)
    n = min(16, len(view))
    x = torch.from_numpy(np.asarray(view[0:n], dtype=np.float32))
    for label, (model, info) in models.items():
        for resample in (None, cube):
            src = x if resample is None else torch.from_numpy(ResampledCubes(Subset(view, n), resample)[0:n])
            base = features(src.numpy(), model, info, cfg)
            spread = float(np.median(pdist(base)))
            for axis in (0, 1, 2):
                turned = features(torch.stack([rotate_cube(c, 1, axis) for c in src]).numpy(), model, info, cfg)
                cos = np.sum(base * turned, 1) / (np.linalg.norm(base, axis=1) * np.linalg.norm(turned, axis=1))
                dist = np.linalg.norm(base - turned, axis=1) / spread
                rows.append({"weights": label, "cubes": "80^3" if resample is None else f"resampled {resample}^3",
                             "turn axis": "zyx"[axis], "median cosine": float(np.median(cos)),
                             "distance / spread": float(np.median(dist))})
    return pd.DataFrame(rows)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--hard", default="data/demo_hard", help="hard preset folder; skipped when absent")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--cube", type=int, default=32)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: cost, quality, rotation")
    ap.add_argument("--work", default="", help="folder for the training runs (default: a temporary one)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    skip = set(filter(None, args.skip.split(",")))
    pd.set_option("display.width", 200)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_pretrain_"))
    print(f"training runs in {work}; torch threads {torch.get_num_threads()}")
    cfg, _, _, view = rendered(Path(args.data))
    if "cost" not in skip:
        print(cost(view, cfg, work).round(2).to_string(index=False))
    frames = []
    if "quality" not in skip:
        for name, folder in (("demo", args.data), ("hard", args.hard)):
            if not Path(folder, "raw").is_dir():
                print(f"{name}: {folder} not found, skipped")
                continue
            frames.append(quality(name, Path(folder), args, work))
        if frames:
            print(pd.concat(frames, ignore_index=True).round(3).to_string(index=False))
    if "rotation" not in skip:
        weights = work / "quality_demo" / "weights.pt"
        print(rotation(view, cfg, weights if weights.is_file() else None, args.cube).round(5).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
