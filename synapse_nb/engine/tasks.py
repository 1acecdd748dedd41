"""What one partition computes: the cubes of a batch of synapses, or the features of a cube part.

A payload is a small picklable value (where the data is, which rows, the settings); the
worker that runs it opens the data and builds the network itself, once per worker process
(:func:`~.execute.worker_cached`), so neither the volumes nor the model travel through the
scheduler. The task writes its result into the folder the engine gives it; the engine commits
that folder as the partition (first finished attempt wins).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..core import labels as L
from ..cubes.build import build_rows
from ..cubes.geometry import CubeGeometry
from ..cubes.rendering import RenderSettings
from ..cubes.store import CubeSet
from ..data.bbox import BboxData
from ..data.volumes import Volume
from ..features.checkpoint import build_model
from ..features.extract import ExtractionSettings, extract_cubeset
from .execute import worker_cached

logger = logging.getLogger(__name__)

#: Files of a feature partition.
FEATURES_FILE, SKIPPED_FILE = "features.parquet", "skipped.parquet"


def open_connectome_bboxes(path: str, with_table: bool = True) -> list[BboxData]:
    """A connectome description opened as the one bbox cube building knows. A worker opens its
    layers only (``with_table`` False): its batches carry their rows, and a table of millions of
    rows would cost every worker seconds and hundreds of MB."""
    from ..data.connectome import open_connectome

    return [open_connectome(path, with_table=with_table).as_bbox()]


@dataclass(frozen=True)
class DataSource:
    """How a worker opens the data: ``opener(*args)`` returns the bboxes (a connectome is one).

    ``key`` names the data for the per-worker cache (the description's path and stamp), so a
    worker opens it once however many batches it builds.
    """

    key: str
    opener: Callable[..., list[BboxData]]
    args: tuple = ()

    def bbox(self, name: str) -> BboxData:
        bboxes = worker_cached(("data", self.key), lambda: {b.name: b for b in self.opener(*self.args)})
        if name not in bboxes:
            raise KeyError(f"bbox {name!r} is not in the data {self.key} (it has {sorted(bboxes)[:10]})")
        return bboxes[name]


@dataclass(frozen=True)
class BuildBatch:
    """Build the cubes of ``rows`` (table rows of bbox ``bbox``) into one cube part."""

    source: DataSource
    bbox: str
    rows: pd.DataFrame
    geometry: CubeGeometry
    voxel_size_nm: tuple[float, float, float]
    target_voxel_nm: float | None


def _base_volumes(volume: object, depth: int = 0) -> list[Volume]:
    """The stored volumes behind a (possibly virtual or resampled) volume."""
    if isinstance(volume, Volume):
        return [volume]
    if volume is None or depth > 3:
        return []
    return [v for name in ("volume", "mask", "cleft") for v in _base_volumes(getattr(volume, name, None), depth + 1)]


def prefetch_windows(bbox: BboxData, rows: pd.DataFrame, geometry: CubeGeometry, *,
                     target_voxel_nm: float | None, threads: int = 8) -> int:
    """Fetch, with ``threads`` concurrent reads, the storage chunks of every window the batch's
    synapses will read, into the volumes' chunk caches (volumes without one are left alone);
    building then reads from memory. Returns the number of chunks fetched."""
    volumes = [v for vol in (bbox.raw, bbox.seg, bbox.mask) for v in _base_volumes(vol)]
    volumes = [v for v in volumes if getattr(v, "_chunks", None) is not None]
    if not volumes or rows.empty:
        return 0
    half = max(int(geometry.size) // 2 + geometry.margin, geometry.source_edge // 2) + 2  # cube voxels
    native = np.asarray(bbox.voxel_size_nm or (8.0, 8.0, 8.0), dtype=np.float64)
    scale = (float(target_voxel_nm) / native) if target_voxel_nm else np.ones(3)
    half_native = np.ceil(half * scale).astype(np.int64) + 1
    centre = np.nan_to_num(rows[list(L.CENTER_COLUMNS)].to_numpy(np.float64)[:, ::-1]).round().astype(np.int64)
    boxes = [(c - half_native, c + half_native + 1) for c in centre]
    return sum(v.prefetch(boxes, threads) for v in volumes)


def build_batch(batch: BuildBatch, out: Path) -> None:
    """Engine task: the batch's cubes (skipped synapses with their reasons) saved as a cube set."""
    bbox = batch.source.bbox(batch.bbox)
    prefetch_windows(bbox, batch.rows, batch.geometry, target_voxel_nm=batch.target_voxel_nm)
    cubes = build_rows(bbox, batch.rows, batch.geometry, voxel_size_nm=batch.voxel_size_nm,
                       target_voxel_nm=batch.target_voxel_nm)
    cubes.save(out)


@dataclass(frozen=True)
class NetworkSpec:
    """The network a worker builds: a weights file (None: seeded random weights) and the seed."""

    weights_path: str | None
    seed: int
    stamp: str = ""  # size and mtime of the weights file: a replaced file is loaded again

    def build(self):
        return worker_cached(
            ("network", self.weights_path, self.seed, self.stamp),
            lambda: build_model(self.weights_path, seed=self.seed, warn_random=False)[0],
        )


@dataclass(frozen=True)
class ExtractBatch:
    """Extract the features of the cubes of one stored cube set (one part of a partitioned store,
    or rows ``start:stop`` of a one-piece store)."""

    cubes: str
    network: NetworkSpec
    settings: ExtractionSettings
    render: RenderSettings
    device: str = "cpu"
    rows: tuple[int, int] | None = None
    threads: int | None = None  # torch threads of the worker (its share of the cores); None: all


def extract_batch(batch: ExtractBatch, out: Path) -> None:
    """Engine task: the features and empty-mask exclusions of one part, as two parquet files."""
    cubes = CubeSet.load(batch.cubes)
    if batch.rows is not None:
        a, b = batch.rows
        cubes = CubeSet(raw=cubes.raw[a:b], bits=cubes.bits[a:b], table=cubes.table.iloc[a:b].reset_index(drop=True),
                        skipped=cubes.skipped.iloc[:0], geometry=cubes.geometry, voxel_size_nm=cubes.voxel_size_nm)
    model = batch.network.build()
    features, skipped, _ = extract_cubeset(cubes, model, batch.settings, batch.render, device=batch.device,
                                           progress=False, num_threads=batch.threads)
    out.mkdir(parents=True, exist_ok=True)
    features.to_parquet(out / FEATURES_FILE, index=False)
    skipped.reset_index(drop=True).to_parquet(out / SKIPPED_FILE, index=False)
