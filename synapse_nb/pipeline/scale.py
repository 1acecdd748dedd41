"""Runs at connectome scale: sample synapses, then build cubes and extract features in partitions.

A connectome run (``connectome`` set) draws its synapses from the description's table with a
seeded policy (:mod:`synapse_nb.sampling`) and writes that sample to the run before any cube
is built. Cubes and features are then computed batch by batch (:mod:`synapse_nb.engine`):
batches follow chunk locality, each finished batch is committed as its own partition of the
run's cube store (``cubes/parts``) or feature store (``features_parts``), so a stopped or
crashed step computes only the partitions still missing when it runs again, and a partition is
never written twice. ``engine`` decides where batches run: ``dask`` (a LocalCluster by
default, a scheduler address or a dask-jobqueue cluster) or ``in_process``. Bbox runs use the
same path when ``engine: dask`` is asked for; otherwise they keep the simple one-piece build.

What the partitions were computed from is recorded beside them (``cubes/engine.json``,
``features_parts/engine.json``); other inputs clear them, so nothing stale is ever reused.
The cache of :mod:`.cache` is not used here: the run's partitions are the resumable store.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pandas as pd

from ..core import labels as L
from ..core.atomic import atomic_path
from ..core.config import Config
from ..core.errors import DataError
from ..cubes.geometry import CubeGeometry
from ..cubes.rendering import RenderSettings
from ..cubes.store import PARTS_FOLDER, CubeSet, PartitionedCubeStore
from ..data.bbox import BboxData
from ..data.connectome import load_connectome_description
from ..data.datasets import open_dataset
from ..data.viewers import viewer_links
from ..engine import (
    ClusterSpec,
    PartitionStore,
    dashboard_link,
    locality_order,
    open_client,
    plan_batches,
    run_partitions,
)
from ..engine.tasks import (
    FEATURES_FILE,
    open_connectome_bboxes,
    SKIPPED_FILE,
    BuildBatch,
    DataSource,
    ExtractBatch,
    NetworkSpec,
    build_batch,
    extract_batch,
)
from ..features.extract import ExtractionSettings
from ..sampling import SamplePlan, SampleResult, sample_synapses
from . import artifacts as A
from .cache import file_fingerprint, store_fingerprint
from .runs import RunError

if TYPE_CHECKING:
    from .runs import Run

logger = logging.getLogger(__name__)

#: Parameters that decide the cube partitions (with the sample and the data's stamp).
PARTITION_CUBE_KEYS = (
    "cube_size", "crop_mode", "presynapse_weight", "target_voxel_nm", "orient_cubes", "voxel_size_nm", "label_table",
    "engine_batch_size",
)
#: Parameters that decide the feature partitions (with the cubes and the network).
PARTITION_FEATURE_KEYS = (
    "segmentation_type", "alpha", "gray_value", "quantize_8bit", "second_minmax", "input_range",
    "intensity_normalization", "extraction_method", "layer_num", "pooling_method", "rotation_averaging", "precision",
)
#: Version of what a partition holds; a change clears older partitions.
PARTITION_VERSION = 1


# --------------------------------------------------------------------------- which path
def uses_partitions(cfg: Config) -> bool:
    """Whether cubes and features are computed in partitions: always for a connectome, and for
    bboxes when ``engine: dask`` is asked for."""
    return bool(cfg.connectome) or cfg.engine == "dask"


def uses_dask(cfg: Config) -> bool:
    """Whether the partitions run on Dask (``engine`` dask, or auto with a connectome)."""
    return cfg.engine == "dask" or (cfg.engine == "auto" and bool(cfg.connectome))


def cluster_spec(cfg: Config) -> ClusterSpec:
    return ClusterSpec(
        scheduler=cfg.dask_scheduler, n_workers=cfg.dask_workers, threads_per_worker=cfg.dask_threads_per_worker,
        memory_per_worker=cfg.dask_memory_per_worker, jobqueue=dict(cfg.dask_jobqueue),
    )


def _say(text: str) -> None:
    """Show ``text`` in the notebook when one runs this (the report keeps it); log it always."""
    logger.info("%s", text)
    try:
        from IPython import get_ipython

        if get_ipython() is not None and getattr(get_ipython(), "kernel", None) is not None:
            from ..core.notebook import say

            say(text)
    except ImportError:  # pragma: no cover - IPython is a dependency
        pass


@contextmanager
def engine_client(cfg: Config) -> Iterator[object | None]:
    """A Dask client for ``cfg`` (closed afterwards), or None when the partitions run here."""
    if not uses_dask(cfg):
        yield None
        return
    spec = cluster_spec(cfg)
    with open_client(spec) as client:
        link = dashboard_link(client)
        where = "a LocalCluster on this machine" if spec.scheduler == "local" else f"scheduler {spec.scheduler}"
        _say(f"Dask: {spec.n_workers} worker(s) of {spec.threads_per_worker} thread(s) on {where}"
             + (f"; dashboard: {link}" if link else ""))
        yield client


# --------------------------------------------------------------------------- sampling
def sample_plan(cfg: Config) -> SamplePlan:
    """The sampling policy the parameters ask for (regions in x, y, z voxels of the connectome)."""

    def box(v: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return tuple(v[:3]), tuple(v[3:])

    policy = cfg.sample_policy
    return SamplePlan(
        policy=policy,
        n=(cfg.sample_size or None) if policy in ("random", "per_axon") else None,
        seed=cfg.seed,
        roi=tuple(box(b) for b in cfg.sample_roi.values()),
        strata_column=(cfg.sample_strata_column or None) if policy == "stratified" else None,
        strata_boxes=({k: box(v) for k, v in cfg.sample_strata_boxes.items()} or None) if policy == "stratified" else None,
        per_stratum=cfg.sample_per_stratum if policy == "stratified" else None,
        per_axon=cfg.sample_per_axon if policy == "per_axon" else None,
    )


@dataclass
class Sample:
    """The synapses a connectome run builds and how they were drawn."""

    result: SampleResult
    rejected: pd.DataFrame
    available: int

    @property
    def table(self) -> pd.DataFrame:
        return self.result.table

    def text(self) -> str:
        plan = self.result.plan
        head = f"**{len(self.table):,} of {self.available:,} usable synapses** sampled (policy `{plan.policy}`, seed {plan.seed})."
        if len(self.rejected):
            head += f" {len(self.rejected):,} rows of the synapse table cannot be used (`tables/rejected.csv`)."
        notes = " ".join(self.result.notes)
        return head + (f" {notes}" if notes else "")


def sample(data: Sequence[BboxData], cfg: Config, run: "Run") -> Sample | None:
    """01_load, connectome runs: draw the sample and write it (with a viewer link per synapse when
    the description sets a viewer) to the run before any cube is built; None for bbox runs."""
    if not cfg.connectome:
        return None
    (bbox,) = data
    rejected = getattr(bbox, "rejected", None)
    rejected = rejected if isinstance(rejected, pd.DataFrame) else pd.DataFrame(columns=[L.NAME_COLUMN, "table_row", "reason"])
    run.write(A.REJECTED, rejected.reset_index(drop=True))  # first: the reasons are kept when nothing is usable
    try:
        result = sample_synapses(bbox.table, sample_plan(cfg))
    except ValueError as exc:
        raise DataError(f"sampling {cfg.connectome}: {exc}") from None
    if len(result.table) == 0:
        notes = "; ".join(n.rstrip(". ") for n in result.notes)
        why = (f"; {len(rejected)} rows of its synapse table cannot be used ({run.file(A.REJECTED)} has the reasons)"
               if len(rejected) else "")
        raise DataError(
            f"the sample of {cfg.connectome} is empty (policy {cfg.sample_policy}, {len(bbox.table)} usable synapses"
            f"{'; ' + notes if notes else ''}{why}): widen sample_roi, choose another policy or fix the synapse table"
        )
    spec = load_connectome_description(cfg.connectome)
    table = result.table.copy()
    viewer = spec.spec.viewer
    table["viewer_link"] = viewer_links(table, viewer, dataset=bbox.dataset or bbox.name,
                                        voxel_size_nm=bbox.voxel_size_nm) if viewer else None
    result.table = table
    run.write(A.SAMPLE, table)
    run.write(A.SAMPLE_RECORD, {
        "connectome": str(cfg.connectome), "plan": result.plan.as_dict(), "sampled": len(table),
        "usable": len(bbox.table), "rejected": len(rejected), "notes": list(result.notes),
        "summary": result.summary.to_dict(orient="records"),
        "sample_sha256": _frame_sha(table[[L.NAME_COLUMN, "table_row"]]),
    })
    out = Sample(result, rejected, len(bbox.table))
    _say(out.text())
    return out


def _frame_sha(frame: pd.DataFrame) -> str:
    try:
        hashed = pd.util.hash_pandas_object(frame, index=False)
    except TypeError:  # cells that cannot be hashed (lists): their text
        hashed = pd.util.hash_pandas_object(frame.astype(str), index=False)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()[:32]


# --------------------------------------------------------------------------- the data on a worker
def _open_dataset_bboxes(cfg_json: str) -> list[BboxData]:
    return open_dataset(Config.model_validate_json(cfg_json))


def data_source(cfg: Config) -> DataSource:
    """How a worker opens this run's data (absolute paths: a remote worker has another folder)."""
    if cfg.connectome:
        path = str(Path(cfg.connectome).resolve())
        return DataSource(f"connectome:{path}:{_stamp(path)}", open_connectome_bboxes, (path, False))
    keys = ("dataset", "raw_dir", "seg_dir", "mask_dir", "table_dir")
    absolute = cfg.model_copy(update={k: str(Path(getattr(cfg, k)).resolve()) for k in keys if getattr(cfg, k)})
    blob = absolute.model_dump_json()
    return DataSource(f"dataset:{hashlib.sha256(blob.encode()).hexdigest()[:16]}", _open_dataset_bboxes, (blob,))


def data_inputs(cfg: Config) -> dict[str, object]:
    """Fingerprints of what a connectome's cubes are cut from: the synapse table, every layer
    (metadata files, chunk count and stamps of up to 10 000 chunk files) and the agglomerate
    file, so layers rewritten behind an unchanged description are never served from old
    partitions. Empty for bbox runs (their key holds the dataset's own stamp)."""
    if not cfg.connectome:
        return {}
    desc = load_connectome_description(cfg.connectome)
    spec = desc.spec
    out: dict[str, object] = {"table": file_fingerprint(desc.resolve(spec.synapses.path))}
    for role in ("raw", "seg", "cleft", "mask"):
        layer = getattr(spec.layers, role)
        if layer is not None:
            path = desc.resolve(layer.path)
            out[role] = file_fingerprint(path) if path.is_file() else store_fingerprint(path, layer.key)
    if spec.agglomerates is not None:
        out["agglomerates"] = file_fingerprint(desc.resolve(spec.agglomerates.path))
    return out


def _stamp(path: str | Path) -> str:
    try:
        st = Path(path).stat()
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


# --------------------------------------------------------------------------- 01_load
def _chunk_shape(volume: object) -> tuple[int, int, int]:
    """The storage chunk (z, y, x) of a volume, for locality ordering (64^3 when unknown)."""
    for obj in (volume, getattr(volume, "volume", None), getattr(volume, "_source", None)):
        chunks = getattr(obj, "chunk_shape", None) or getattr(obj, "chunks", None)
        if isinstance(chunks, (tuple, list)) and len(chunks) >= 3 and all(isinstance(c, (int, np.integer)) for c in chunks[-3:]):
            return tuple(int(c) for c in chunks[-3:])  # type: ignore[return-value]
    return (64, 64, 64)


def build_batches(data: Sequence[BboxData], cfg: Config, geometry: CubeGeometry,
                  table: pd.DataFrame | None = None) -> dict[int, BuildBatch]:
    """Partition id -> batch: each bbox's rows (or the connectome's sample) in chunk-locality
    order, cut into ``engine_batch_size`` synapses."""
    source = data_source(cfg)
    target = cfg.target_voxel_nm or None
    payloads: dict[int, BuildBatch] = {}
    for b in data:
        rows = (table if table is not None else b.table).reset_index(drop=True)
        if rows.empty:
            continue
        xyz = rows[list(L.CENTER_COLUMNS)].to_numpy(np.float64)
        order = locality_order(np.nan_to_num(xyz[:, ::-1], nan=0.0), _chunk_shape(b.raw))
        voxel = tuple(b.voxel_size_nm or cfg.voxel_size_nm)
        for idx in plan_batches(order, cfg.engine_batch_size):
            payloads[len(payloads)] = BuildBatch(source, b.name, rows.iloc[idx].reset_index(drop=True), geometry,
                                                 voxel, target)  # type: ignore[arg-type]
    return payloads


def _identity(cfg: Config, keys: Sequence[str], **extra: object) -> dict[str, object]:
    return {"version": PARTITION_VERSION, **{k: getattr(cfg, k) for k in keys}, **extra}


def _clear_if_other(folder: Path, record: Path, identity: dict[str, object], what: str) -> None:
    """Remove ``folder`` (the run's own partitions) when they were computed from other inputs."""
    if folder.is_symlink():  # a one-piece store linked from the cache: not ours to extend
        folder.unlink()
        return
    if not folder.exists():
        return
    try:
        old = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if old != json.loads(json.dumps(identity, default=str)):
        logger.warning("%s in %s were computed from other inputs or settings: they are removed and computed again",
                       what, folder)
        shutil.rmtree(folder)


def _write_identity(record: Path, identity: dict[str, object]) -> None:
    record.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(record) as tmp:
        Path(tmp).write_text(json.dumps(identity, indent=2, default=str), encoding="utf-8")


def build_partitioned(data: Sequence[BboxData], cfg: Config, run: "Run", *, geometry: CubeGeometry,
                      refused: dict[int, str], sample_table: pd.DataFrame | None = None,
                      progress: bool = True) -> CubeSet:
    """01_load in partitions: the cubes of every batch not built yet, then the whole store.

    Every synapse asked for ends up exactly once, as a cube or as a skipped row with its
    reason; partitions that failed are named in a :class:`RunError` (the others are kept:
    running 01_load again computes only those)."""
    payloads = build_batches(data, cfg, geometry, sample_table)
    if not payloads:
        raise DataError("no synapse to build: the sample or the bbox tables are empty")
    asked = pd.concat([p.rows.assign(**{L.BBOX_COLUMN: p.bbox})[[L.BBOX_COLUMN, L.NAME_COLUMN, "table_row"]]
                       for p in payloads.values()], ignore_index=True)
    rows = pd.concat([p.rows for p in payloads.values()], ignore_index=True)  # positions, partners: what a cube is cut from
    identity = _identity(cfg, PARTITION_CUBE_KEYS, data=data_source(cfg).key, inputs=data_inputs(cfg),
                         asked=_frame_sha(asked), rows=_frame_sha(rows))
    folder = run.cubes_dir
    _clear_if_other(folder, run.file(A.ENGINE_CUBES), identity, "cube partitions")
    _write_identity(run.file(A.ENGINE_CUBES), identity)
    store = PartitionedCubeStore(folder)
    with engine_client(cfg) as client:
        report = run_partitions(client, payloads, build_batch, PartitionStore(folder / PARTS_FOLDER), progress=progress,
                                desc="cube batches")
    _raise_failures(report, "cube batches", "01_load", run)
    first = CubeSet.load(folder / PARTS_FOLDER / f"part-{sorted(report.done)[0]:06d}")
    store.finish(geometry=geometry, voxel_size_nm=first.voxel_size_nm, refused_types=refused)
    cubes = CubeSet.load(folder)
    _check_exactly_once(asked, cubes)
    logger.info("cubes: %s", report.summary())
    return cubes


def _raise_failures(report, what: str, step: str, run: "Run") -> None:
    if report.complete:
        return
    first = report.failures.iloc[0] if len(report.failures) else None
    why = f" (first: partition {int(first['partition'])}: {first['reason']})" if first is not None else ""
    raise RunError(
        f"{len(report.missing)} of {len(report.requested)} {what} did not finish{why}; the {len(report.done)} finished "
        f"are kept: run {step} again (python -m synapse_nb run PARAMS --run-dir {run.path} --from {step}) to compute "
        "only the missing ones"
    )


def _check_exactly_once(asked: pd.DataFrame, cubes: CubeSet) -> None:
    """Every synapse asked for is in the store once, built or skipped; anything else is a bug."""
    cols = [L.BBOX_COLUMN, L.NAME_COLUMN]
    got = pd.concat([cubes.table[cols], cubes.skipped[cols]], ignore_index=True).astype(str)
    want = asked[cols].astype(str)
    if len(got) != len(want) or got.duplicated().any() or not want.merge(got, how="left", indicator=True)["_merge"].eq("both").all():
        raise RunError(
            f"the cube store holds {len(got)} synapses ({int(got.duplicated().sum())} twice) for {len(want)} asked: "
            "remove the run's cubes folder and run 01_load again"
        )


# --------------------------------------------------------------------------- 03_extract
def network_spec(weights: Path | str | None, seed: int) -> NetworkSpec:
    return NetworkSpec(str(Path(weights).resolve()) if weights else None, int(seed), _stamp(weights) if weights else "")


def is_partitioned(cubes_dir: Path) -> bool:
    """Whether a run's cube store was written in partitions (by :func:`build_partitioned`)."""
    return (Path(cubes_dir) / PARTS_FOLDER).is_dir()


def extract_partitioned(cubes_dir: Path, network: NetworkSpec, settings: ExtractionSettings, description: str,
                        seed_name: str, cfg: Config, run: "Run", *, device_name: str, progress: bool = True):
    """03_extract in partitions: the features of every cube part not extracted yet, then one table.

    Returns a :class:`~synapse_nb.features.extract.FeatureResult` like the one-process path."""
    from ..features.extract import FeatureResult  # here: the result type of a step

    render = RenderSettings.from_config(cfg)
    parts_dir = Path(cubes_dir) / PARTS_FOLDER
    cube_meta = Path(cubes_dir).resolve() / "meta.json"
    cubes_stamp = _parts_stamp(parts_dir) if parts_dir.is_dir() else _stamp(cube_meta)
    identity = _identity(cfg, PARTITION_FEATURE_KEYS, input_range=settings.input_range, network=network.__dict__,
                         cubes=cubes_stamp, cubes_identity=_read_text(run.file(A.ENGINE_CUBES)))
    folder = run.file(A.FEATURE_PARTS)
    record = folder / "engine.json"
    _clear_if_other(folder, record, identity, "feature partitions")
    _write_identity(record, identity)
    threads = cfg.dask_threads_per_worker if uses_dask(cfg) else None
    device = cfg.device
    if parts_dir.is_dir():
        ids = sorted(int(p.name.split("-")[1]) for p in parts_dir.glob("part-*") if p.is_dir())
        payloads = {i: ExtractBatch(str(parts_dir / f"part-{i:06d}"), network, settings, render, device, None, threads)
                    for i in ids}
    else:  # a one-piece store (built in one process): batches of rows
        n = len(CubeSet.load(cubes_dir).table)
        step = cfg.engine_batch_size
        payloads = {j: ExtractBatch(str(Path(cubes_dir).resolve()), network, settings, render, device,
                                    (a, min(a + step, n)), threads) for j, a in enumerate(range(0, n, step))}
    with engine_client(cfg) as client:
        report = run_partitions(client, payloads, extract_batch, PartitionStore(folder), progress=progress,
                                desc="feature batches")
    _raise_failures(report, "feature batches", "03_extract", run)
    feats = [pd.read_parquet(folder / f"part-{i:06d}" / FEATURES_FILE) for i in sorted(payloads)]
    skipped = [pd.read_parquet(folder / f"part-{i:06d}" / SKIPPED_FILE) for i in sorted(payloads)]
    features = pd.concat([f for f in feats if len(f)] or feats[:1], ignore_index=True)
    skipped_all = pd.concat(skipped, ignore_index=True)
    if len(features) == 0:
        raise ValueError(
            f"every synapse has an empty mask for segmentation type {cfg.segmentation_type}: "
            "choose another segmentation_type or check the label ids (label_table)"
        )
    logger.info("features: %s", report.summary())
    return FeatureResult(features, skipped_all, seed_name, description, report.seconds,
                         device_name + (" on each Dask worker" if uses_dask(cfg) else ""))


def _parts_stamp(parts_dir: Path) -> str:
    """Which committed attempt each cube part is: parts built again change it; 01_load run again
    over the same parts (it rewrites ``meta.json``) does not, so finished features are kept."""
    store = PartitionStore(parts_dir)
    attempts = sorted((i, str(store.commit_record(i).get("attempt", ""))) for i in store.done())
    return hashlib.sha256(json.dumps(attempts).encode()).hexdigest()[:32]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""
