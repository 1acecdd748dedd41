"""The glue between a run directory and the algorithms: one function per thing a notebook does.

The stage packages (``cubes``, ``features``, ``analysis``, ``explain``, ``connectivity``) work
on arrays and tables and know nothing of runs or parameter files. Here each step reads its
inputs from the run (through :mod:`.artifacts`), unpacks the validated :class:`Config` into
the keyword options the algorithm takes, reuses cached results through the one protocol of
:mod:`.cache`, and writes its outputs back. Writers that put a step's results into a run are
all called ``save_<what>``. See ``docs/architecture.md``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..analysis import clustering as C
from ..analysis.brightness import BrightnessCheck
from ..analysis import export
from ..analysis import feature_sets as FS
from ..analysis import reduce as R
from ..connectivity.groups import PresynapseAnalysis, analyze
from ..connectivity.summary_page import write_summary
from ..core.atomic import atomic_path
from ..core.config import Config, ConfigError, make_config
from ..core.errors import DataError
from ..core.layers import N_FEATURE_MODULES, validate_layer
from ..core.progress_bars import in_batch
from ..cubes.build import build_cubes
from ..cubes.geometry import CubeGeometry
from ..cubes.rendering import RenderedView, RenderSettings
from ..cubes.store import CubeSet
from ..data.bbox import BboxData
from ..data.datasets import open_dataset
from ..data.description import (
    load_dataset_description,
    refused_types,
    require_crop_mode,
    require_segmentation_type,
)
from ..explain import attention as X
from ..features.checkpoint import ModelInfo, build_model
from ..features.devices import DeviceError, describe_device, resolve_device
from ..features.extract import (
    ExtractionSettings,
    extract_cubeset,
    FeatureResult,
    describe,
    resolve_input_range,
    seed_csv_name,
)
from ..features.vgg3d import VGG3D
from ..figures import training as training_figures
from ..figures.plots import preview_rows
from .. import training as T
from ..training import (
    HISTORY_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    PretrainResult,
    PretrainSettings,
    read_history,
    upto_for,
)
from . import artifacts as A
from . import scale
from . import cache
from .runs import Run, RunError

if TYPE_CHECKING:
    import matplotlib.figure
    import plotly.graph_objects as go

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- parameters
def resolve_parameters(cfg: Config) -> Config:
    """``cfg`` as the run really uses it, so what a run records is what it read.

    With a dataset description (``dataset``) its voxel size and label ids replace
    ``voxel_size_nm`` / ``label_table``, and the folders of the original layout (``raw_dir``
    ...) are not read at all, so they are recorded empty rather than as the demo's. An
    invalid description is a :class:`ConfigError` naming the ``dataset`` key. With a connectome
    description (``connectome``) none of the bbox-dataset keys is read; they are recorded empty.
    """
    if cfg.connectome:  # the description holds the data: the bbox-dataset keys are not read at all
        return cfg.model_copy(update={"dataset": "", "raw_dir": "", "seg_dir": "", "mask_dir": "", "table_dir": "",
                                      "bboxes": [], "label_table": {}})
    if not cfg.dataset or not Path(cfg.dataset).expanduser().is_file():
        return cfg  # nothing to resolve yet: 01_load names the missing file when it runs
    try:
        desc = load_dataset_description(cfg.dataset).spec
    except DataError as exc:
        raise ConfigError(f"parameter 'dataset': {exc}") from exc
    names = list(cfg.bboxes) or list(desc.bboxes)
    labels = {name: desc.bboxes[name].labels.model_dump() for name in names if name in desc.bboxes}
    return cfg.model_copy(update={
        "voxel_size_nm": [float(v) for v in desc.voxel_size_nm], "label_table": labels,
        "raw_dir": "", "seg_dir": "", "mask_dir": "", "table_dir": "",
    })


# --------------------------------------------------------------------------- 01_load
def geometry(cfg: Config) -> CubeGeometry:
    """The crop geometry a configuration asks for."""
    return CubeGeometry(
        size=cfg.cube_size, crop_mode=cfg.crop_mode, presynapse_weight=cfg.presynapse_weight, orient=bool(cfg.orient_cubes)
    )


def check_dataset(bboxes: Sequence[BboxData], cfg: Config) -> None:
    """Refuse, before any work, a segmentation type the dataset cannot serve or a smart crop
    where pre/post cannot be decided, naming what is missing."""
    require_segmentation_type(bboxes, cfg.segmentation_type)
    require_crop_mode(bboxes, cfg.crop_mode, cfg.presynapse_weight)


#: Steps that run the network on ``device``.
NETWORK_STEPS = ("02_pretrain", "03_extract", "06_attention")


def network_device(cfg: Config) -> torch.device:
    """The device ``cfg.device`` names on this machine (auto: a GPU when torch sees one, else
    the CPU), resolved once per step; one absent here is a one-line :class:`DeviceError`."""
    device = resolve_device(cfg.device)
    logger.info("the network runs on %s (device %s)", describe_device(device), cfg.device)
    return device


#: Parameters that say which data is opened (so which segmentation types it can serve).
DATASET_KEYS = ("dataset", "raw_dir", "seg_dir", "mask_dir", "table_dir", "bboxes", "label_table")
#: Steps that read ``segmentation_type`` / ``crop_mode`` against the dataset.
_TYPE_STEPS, _CROP_STEPS = ("01_load", "03_extract"), ("01_load",)


def with_data_paths(cfg: Config, root: str | Path | None) -> Config:
    """``cfg`` with its relative data paths resolved against ``root`` (the project folder the
    notebooks run in), so a check made elsewhere opens the same files."""
    if root is None:
        return cfg
    keys = [k for k in ("dataset", "raw_dir", "seg_dir", "mask_dir", "table_dir") if getattr(cfg, k, "")]
    paths = {k: Path(getattr(cfg, k)).expanduser() for k in keys}
    return cfg.model_copy(update={k: str(p if p.is_absolute() else Path(root) / p) for k, p in paths.items()})


def dataset_key(cfg: Config) -> str:
    """What decides the opened dataset, with the modification times of its folders and files
    (a memo of a long-lived panel then sees data written or replaced since)."""
    stamps = {}
    for k in ("dataset", "raw_dir", "seg_dir", "mask_dir", "table_dir"):
        value = getattr(cfg, k, "")
        if value:
            try:
                stamps[k] = Path(value).stat().st_mtime_ns
            except OSError:
                stamps[k] = None
    values = {k: getattr(cfg, k, None) for k in DATASET_KEYS}
    return json.dumps([values, stamps], sort_keys=True, default=str)


def dataset_refusals(cfg: Config, *, steps: Sequence[str] | None = None, root: str | Path | None = None,
                     memo: dict[str, list[BboxData]] | None = None) -> dict[str, str]:
    """Parameter key -> one line saying why the dataset ``cfg`` names cannot serve it (empty
    when it can): the ``segmentation_type`` (naming what the dataset lacks and the types it
    supports) and a smart ``crop_mode`` where pre/post cannot be decided; and a ``device``
    this machine lacks when a step that runs the network is among ``steps``.

    The run command, sweeps and the control panel all ask this before a run directory exists.
    It opens the dataset lazily (tables and volume headers, no cube); ``memo`` keeps opened
    datasets between calls. A dataset that cannot be opened is not judged here: 01_load names
    that problem. ``steps`` (default all) limits the check to the steps that read these keys.
    """
    steps = list(A.STEPS if steps is None else steps)
    out: dict[str, str] = {}
    if any(s in steps for s in NETWORK_STEPS):
        try:
            resolve_device(cfg.device)
        except DeviceError as exc:
            out["device"] = str(exc)
    check_type, check_crop = any(s in steps for s in _TYPE_STEPS), any(s in steps for s in _CROP_STEPS)
    if not (check_type or check_crop):
        return out
    cfg = with_data_paths(cfg, root)
    key = dataset_key(cfg)
    bboxes = memo.get(key) if memo is not None else None
    if bboxes is None:
        try:
            bboxes = open_dataset(cfg)
        except (DataError, OSError, ValueError) as exc:
            logger.info("dataset not checked against the parameters (01_load will report it): %s", exc)
            return out
        if memo is not None:
            memo[key] = bboxes
    if check_type:
        try:
            require_segmentation_type(bboxes, cfg.segmentation_type)
        except DataError as exc:
            out["segmentation_type"] = str(exc)
    if check_crop:
        try:
            require_crop_mode(bboxes, cfg.crop_mode, cfg.presynapse_weight)
        except DataError as exc:
            out["crop_mode"] = str(exc)
    return out


def make_cubes(bboxes: Sequence[BboxData], cfg: Config, progress: bool = True) -> CubeSet:
    """Build the cube store for ``cfg`` (no cache, no checks: :func:`build` does those)."""
    cubes = build_cubes(bboxes, geometry(cfg), cfg.voxel_size_nm, progress=progress, target_voxel_nm=cfg.target_voxel_nm)
    cubes.refused_types = refused_types(bboxes)
    return cubes


def build(bboxes: Sequence[BboxData], cfg: Config, run: Run, progress: bool = True, *,
          sample: scale.Sample | None = None) -> CubeSet:
    """01_load: the run's cubes, reused from the cache when what decides them is unchanged;
    the run's ``cubes`` folder holds them (a link into the cache when caching).

    A connectome run builds its ``sample`` (drawn and written here when not given), and any run
    with ``engine: dask`` builds in partitions (:mod:`.scale`): resumable, no cache."""
    check_dataset(bboxes, cfg)
    if scale.uses_partitions(cfg):
        if cfg.connectome and sample is None:
            sample = scale.sample(bboxes, cfg, run)
        return scale.build_partitioned(bboxes, cfg, run, geometry=geometry(cfg), refused=refused_types(bboxes),
                                       sample_table=sample.table if sample is not None else None, progress=progress)
    cubes, entry = cache.reuse_or_compute(
        run, cfg, "cubes", compute=lambda: make_cubes(bboxes, cfg, progress=progress),
        store=lambda c, folder: c.save(folder), load=CubeSet.load,
    )
    if entry is None:
        cubes.save(run.cubes_dir)
    else:
        cache.link_into_run(cache.entry_data(entry), run.cubes_dir)
    return cubes


def load_cubes(run: Run) -> CubeSet:
    """The cubes 01_load stored in ``run``; when they lived in a cache entry that is gone, the
    error says so."""
    link = run.cubes_dir
    if link.is_symlink() and not link.exists():
        target = Path(os.path.normpath(link.parent / os.readlink(link)))
        entry = target.parent if target.name == cache.entry_data(target.parent).name else target
        raise RunError(
            f"the cubes of run {run.path} lived in the cache entry {entry}, which no longer exists "
            "(the cache was moved or cleared): rerun 01_load for this run"
        )
    return CubeSet.load(run.require(A.CUBES))


# --------------------------------------------------------------------------- 02_pretrain
def pretrain_settings(cfg: Config, cube_size: int, input_range: str) -> PretrainSettings:
    """The training settings ``cfg`` asks for: the trunk trained up to the layer 03_extract reads
    (``extraction_method`` / ``layer_num``), on cubes resampled to ``pretrain_cube_size`` (0: the
    stored ``cube_size``), in ``input_range`` (resolved as extraction resolves it)."""
    return PretrainSettings(
        epochs=cfg.pretrain_epochs, batch_size=cfg.pretrain_batch_size,
        cube_size=cfg.pretrain_cube_size or int(cube_size), learning_rate=cfg.pretrain_learning_rate,
        temperature=cfg.pretrain_temperature, patience=cfg.pretrain_patience, precision=cfg.pretrain_precision,
        seed=cfg.seed, upto=upto_for(cfg.extraction_method, cfg.layer_num), input_range=input_range,
    )


def pretrain_intro(cfg: Config) -> str:
    """What 02_pretrain does with ``cfg``, in a sentence (with ``pretrain`` false: that it does nothing)."""
    if not cfg.pretrain:
        uses = f"`{cfg.weights_path}`" if cfg.weights_path else f"seeded random weights (seed {cfg.seed})"
        return (f"**Pretraining is off** (`pretrain: false`): this step does nothing, and 03_extract uses {uses}. "
                "Set `pretrain: true` to train the network on this run's synapses first.")
    start = f"from `{cfg.weights_path}` (fine-tuning)" if cfg.weights_path else f"from seeded random weights (seed {cfg.seed})"
    part = "the whole trunk" if cfg.extraction_method == "standard" else f"the trunk up to features.{cfg.layer_num}"
    size = f"{cfg.pretrain_cube_size}³ voxels" if cfg.pretrain_cube_size else "their stored size"
    return (f"Training {part} {start} with SimCLR for at most {cfg.pretrain_epochs} epochs (stopping after "
            f"{cfg.pretrain_patience} without a better loss), {cfg.pretrain_batch_size} synapses per batch, cubes "
            f"resampled to {size}, learning rate {cfg.pretrain_learning_rate:g}, temperature {cfg.pretrain_temperature:g}, "
            f"{cfg.pretrain_precision}, on device `{cfg.device}`.")


def pretrain_cubes(run: Run, cfg: Config) -> CubeSet | None:
    """The cubes 02_pretrain trains on (those of 01_load); None when ``pretrain`` is false, so the
    notebook's later cells do nothing."""
    return load_cubes(run) if cfg.pretrain else None


def _training_view(cubes: CubeSet, cfg: Config) -> RenderedView:
    """The cubes rendered as 03_extract renders them (the network trains on what it will see),
    without the synapses whose mask is empty for the segmentation type."""
    cubes.require_type(cfg.segmentation_type)
    keep = np.setdiff1d(np.arange(len(cubes)), cubes.empty_mask_rows(cfg.segmentation_type))
    if len(keep) < 2:
        raise ValueError(
            f"pretraining needs at least 2 synapses with a non-empty mask for segmentation type {cfg.segmentation_type}, "
            f"this run has {len(keep)}: choose another segmentation_type or set pretrain: false"
        )
    return cubes.rendered(RenderSettings.from_config(cfg), indices=keep)


def pretrain_views(cubes: CubeSet | None, cfg: Config, n_examples: int = 4, *,
                   n_views: int = 3) -> "matplotlib.figure.Figure | None":
    """A figure of ``n_examples`` synapses (one per known class first) as training sees them and
    ``n_views`` random views of each; None when ``cubes`` is None (pretraining off)."""
    if cubes is None or n_examples < 1:
        return None
    view = _training_view(cubes, cfg)
    rows = preview_rows(cubes.table.iloc[view.indices].reset_index(drop=True), n_examples, cfg.class_column)
    examples = T.augmentation_examples(view, rows, n_views=n_views, cube_size=cfg.pretrain_cube_size or None, seed=cfg.seed)
    return training_figures.augmentation_figure(examples)


def _data_description(cubes: CubeSet, view: RenderedView, cfg: Config, run: Run) -> dict[str, object]:
    """What the weights were trained on, for their record and every report quoting them."""
    table = cubes.table.iloc[view.indices]
    name = Path(cfg.dataset).stem if cfg.dataset else (Path(cfg.raw_dir).parent.name or cfg.raw_dir)
    bboxes = sorted(str(b) for b in table["bbox"].unique()) if "bbox" in table.columns else []
    return {"name": name, "run": run.name, "n_synapses": len(view), "bboxes": bboxes,
            "segmentation_type": cfg.segmentation_type, "cube_size": cubes.geometry.size}


def _pretrain_identity(run: Run) -> dict[str, object]:
    """The run's cubes as the pretrain cache key sees them (the cube entry, or their files)."""
    return {"cubes": cache.stored_identity(run.cubes_dir)}


def _store_pretraining(result: PretrainResult, folder: Path) -> None:
    """A finished training into a cache entry: weights, history and record (no optimizer state:
    nothing resumes a finished training)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, HISTORY_FILE):
        shutil.copy2(result.weights_path.parent / name, folder / name)
    record = {"stopped_early": result.stopped_early, "stop_reason": result.stop_reason, "device": result.device,
              "metadata": result.metadata}
    (folder / PRETRAIN_ENTRY_RECORD).write_text(json.dumps(record), encoding="utf-8")


def _load_pretraining(folder: Path) -> PretrainResult:
    record = json.loads((folder / PRETRAIN_ENTRY_RECORD).read_text(encoding="utf-8"))
    return PretrainResult(history=read_history(folder), weights_path=folder / WEIGHTS_FILE, state_path=folder / STATE_FILE,
                          metadata=record["metadata"], stopped_early=bool(record["stopped_early"]),
                          stop_reason=str(record["stop_reason"]), device=str(record["device"]), resumed_from=0)


#: The record a pretrain cache entry keeps beside the weights and the history.
PRETRAIN_ENTRY_RECORD = "pretrain.json"


def pretrain(cubes: CubeSet | None, cfg: Config, run: Run, *, progress: bool = True,
             on_epoch: Callable[[int, float, float], None] | None = None) -> PretrainResult | None:
    """02_pretrain: train the network on the run's cubes (SimCLR) and write ``pretrain/weights.pt``,
    which :func:`network` then gives 03_extract and 06_attention. None (nothing done) when
    ``pretrain`` is false or ``cubes`` is None.

    Training happens in the run's ``pretrain/`` folder, saved after every epoch, so a killed run
    resumes where it stopped when the step runs again; a folder left by other settings is
    started over. With ``cache_dir`` a finished training is stored in the cache under a key of
    everything that decides the weights (:data:`cache.PRETRAIN_KEYS` and the run's cubes), and a
    later run with the same key links its ``pretrain/`` to that entry instead of training.
    Training and caching are kept apart on purpose: an unfinished training is never an entry (it
    lives in its run, resumable), and an entry is never trained further.
    """
    if cubes is None or not cfg.pretrain:
        logger.info("pretrain is false: 02_pretrain does nothing")
        return None
    view = _training_view(cubes, cfg)
    init = cfg.weights_path or None
    settings = pretrain_settings(cfg, cubes.geometry.size, _start_input_range(cfg))
    folder = run.file(A.PRETRAIN_DIR)
    identity = _pretrain_identity(run) if run.cubes_dir.exists() else None
    key = cache.content_key(cfg, cache.PRETRAIN_KEYS, identity, version=cache.RESULT_VERSIONS["pretrain"])
    data = _data_description(cubes, view, cfg, run)

    trained: list[bool] = []

    def train() -> PretrainResult:
        trained.append(True)
        _clear_other_training(run, folder, key)
        run.write(A.PRETRAIN_RECORD, {"key": key, "finished": False, "settings": settings.as_dict(), "data": data})
        return T.pretrain(view, settings=settings, out_dir=folder, device=cfg.device, init_weights=init,
                          progress=progress and not in_batch(), on_epoch=on_epoch, describe_data=data)

    hit = False
    if cfg.cache_dir and identity is not None:
        result, entry = cache.reuse_or_compute(run, cfg, "pretrain", compute=train, store=_store_pretraining,
                                               load=_load_pretraining, upstream=identity)
        hit = entry is not None and not trained
        if hit:
            if folder.is_dir() and not folder.is_symlink():
                logger.info("replacing the training in %s by the finished one of the cache entry %s", folder, entry)
                shutil.rmtree(folder)
            cache.link_into_run(cache.entry_data(entry), folder)
            result = _load_pretraining(folder)
    else:
        result = train()
    save_pretraining(run, result, key=key, hit=hit, data=data)
    return result


def _start_input_range(cfg: Config) -> str:
    """``input_range`` as extraction resolves it for the weights training starts from: ``auto``
    follows them (seeded random weights take [0, 1], as :func:`build_model` records)."""
    if cfg.input_range != "auto":
        return cfg.input_range
    if not cfg.weights_path:
        return "0_1"
    return resolve_input_range(cfg, build_model(cfg.weights_path, seed=cfg.seed)[1])


def _clear_other_training(run: Run, folder: Path, key: str) -> None:
    """Make ``folder`` ready to train for ``key``: a link into the cache is removed (training never
    writes into an entry), and a training left by other settings (or of unknown settings) is
    deleted, so a rerun with new settings starts over while a killed run with the same resumes."""
    if folder.is_symlink():
        folder.unlink()
        return
    if not folder.exists():
        return
    earlier = run.read(A.PRETRAIN_RECORD).get("key") if run.has(A.PRETRAIN_RECORD) else None
    if earlier != key:
        logger.warning("the training in %s was made with other settings or data: starting over", folder)
        shutil.rmtree(folder)


def save_pretraining(run: Run, result: PretrainResult, *, key: str, hit: bool, data: dict[str, object]) -> Path:
    """Write ``tables/pretrain.json``: settings, epochs, whether and why training stopped early,
    seconds per epoch, device, the data trained on, where the weights are and the cache use."""
    m = result.metadata
    record = {
        "key": key, "finished": True, "reused_from_cache": hit,
        "weights": os.path.relpath(run.file(A.PRETRAIN_WEIGHTS), run.path),
        "settings": m.get("settings", {}), "method": m.get("method", ""),
        "epochs_run": int(m.get("epochs_run", len(result.history))), "epochs_planned": m.get("epochs_planned"),
        "stopped_early": bool(result.stopped_early), "stop_reason": result.stop_reason,
        "final_loss": m.get("final_loss"), "best_loss": m.get("best_loss"), "best_epoch": m.get("best_epoch"),
        "seconds_per_epoch": [round(float(s), 2) for s in result.history["seconds"]],
        "seconds": round(float(result.history["seconds"].sum()), 1),
        "resumed_from_epoch": int(result.resumed_from), "device": result.device,
        "init_weights": m.get("init_weights"), "data": data,
    }
    return run.write(A.PRETRAIN_RECORD, record)


def pretrain_outcome(result: PretrainResult | None, run: Run) -> str:
    """What training did and where the weights are, in Markdown ("" when nothing was trained)."""
    if result is None:
        return ""
    record = run.read(A.PRETRAIN_RECORD)
    how = ("Reused the finished training of an earlier run with the same cubes and settings (cache)."
           if record.get("reused_from_cache") else
           f"Resumed after epoch {result.resumed_from}." if result.resumed_from else "")
    return (f"{how} {record['epochs_run']} epoch(s) in {record['seconds']:.0f} s on {result.device}, final loss "
            f"{record['final_loss']:.3f} (best {record['best_loss']:.3f} at epoch {record['best_epoch']}); "
            f"{result.stop_reason}.\n\nWeights: `{run.file(A.PRETRAIN_WEIGHTS)}` (03_extract uses them; "
            "another run can too, with `weights_path`).").strip()


def loss_figure(result: PretrainResult | None) -> "go.Figure | None":
    """The loss per epoch with the chance level of the batch size; None when nothing was trained."""
    if result is None:
        return None
    return training_figures.loss_curve(result.history, batch_size=int(result.metadata["settings"]["batch_size"]))


def epoch_table(result: PretrainResult | None) -> pd.DataFrame | None:
    """Epoch, loss, seconds and learning rate of each epoch; None when nothing was trained."""
    if result is None:
        return None
    return result.history.round({"loss": 4, "seconds": 1}).set_index("epoch")


# --------------------------------------------------------------------------- the network of a run
def pretrained_weights(run: Run) -> Path:
    """The weights 02_pretrain trained in ``run``; a one-line :class:`RunError` naming 02_pretrain
    when they are missing (never run, or its cache entry was cleared)."""
    path = run.file(A.PRETRAIN_WEIGHTS)
    if path.is_file():
        return path
    folder = run.file(A.PRETRAIN_DIR)
    why = (f"its folder {folder} links to a cache entry that no longer exists (the cache was moved or cleared)"
           if folder.is_symlink() and not folder.exists() else f"{path} does not exist")
    raise RunError(
        f"pretrain is true but run {run.path} holds no pretrained weights: {why}. Run step 02_pretrain first "
        f"(python -m synapse_nb run PARAMS --run-dir {run.path} --from 02_pretrain), or set pretrain: false"
    )


def network(run: Run, cfg: Config) -> tuple[VGG3D, ModelInfo]:
    """The network 03_extract and 06_attention use in ``run`` (the one place that decides it):
    with ``pretrain`` the weights 02_pretrain trained in the run, else ``weights_path`` (empty:
    seeded random weights). :class:`ModelInfo` says which, for the reports."""
    return build_model(pretrained_weights(run) if cfg.pretrain else (cfg.weights_path or None), seed=cfg.seed)


def network_identity(run: Run, cfg: Config) -> dict[str, str] | None:
    """What identifies the network of ``run`` beyond ``weights_path`` (which the feature cache key
    already fingerprints): the content hash of the run's pretrained weights with ``pretrain``,
    so features of other weights (random, or another training) are never reused for them."""
    if not cfg.pretrain:
        return None
    digest = hashlib.sha256()
    with open(pretrained_weights(run), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"pretrained_weights_sha256": digest.hexdigest()[:32]}


# --------------------------------------------------------------------------- 03_extract
def compute_features(cubes: CubeSet, model: VGG3D, info: ModelInfo, cfg: Config, progress: bool = True, *,
                     device: torch.device | None = None) -> FeatureResult:
    """Render every usable cube for the configured segmentation type and extract its features.

    Synapses whose mask is empty for this type are left out and reported; a type the cubes'
    dataset cannot serve at all is refused. ``device`` (default: ``cfg.device`` resolved) is
    where the network runs; the result records it.
    """
    device = network_device(cfg) if device is None else device
    cubes.require_type(cfg.segmentation_type)
    features, skipped, extractor = extract_cubeset(
        cubes, model, ExtractionSettings.from_config(cfg, info), RenderSettings.from_config(cfg), device=device,
        progress=progress and not in_batch(),
    )
    if len(features) == 0:
        raise ValueError(
            f"every synapse has an empty mask for segmentation type {cfg.segmentation_type}: "
            "choose another segmentation_type or check the label ids (label_table)"
        )
    name = seed_csv_name(cfg.extraction_method, cfg.layer_num, cfg.pooling_method, cfg.segmentation_type, cfg.alpha)
    return FeatureResult(features, skipped, name, describe(info, cfg), extractor.last_seconds or 0.0, extractor.device_name)


def _store_features(result: FeatureResult, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    result.features.to_parquet(folder / "features.parquet", index=False)
    result.skipped.to_parquet(folder / "skipped.parquet", index=False)
    (folder / "meta.json").write_text(json.dumps(result.meta()), encoding="utf-8")


def _load_features(folder: Path) -> FeatureResult:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    return FeatureResult(pd.read_parquet(folder / "features.parquet"), pd.read_parquet(folder / "skipped.parquet"),
                         meta["seed_name"], meta["description"], float(meta["seconds"]),
                         str(meta.get("device", "cpu")))  # entries older than the device parameter ran on the CPU


def extract(cubes: CubeSet, model: VGG3D, info: ModelInfo, cfg: Config, run: Run, *,
            device: torch.device | None = None) -> FeatureResult:
    """03_extract: :func:`compute_features`, or the cached result when the run's cubes (the cache
    entry they are, or their files) and every extraction parameter are unchanged. The cube
    parameters of ``cfg`` play no part: 03_extract is not given them, the run's cubes decide.
    ``device`` (default: ``cfg.device`` resolved here, before any work) is where the network runs;
    the result says where its features were computed (for a reused entry: where they were made)."""
    device = network_device(cfg) if device is None else device
    if scale.is_partitioned(run.cubes_dir):
        weights = pretrained_weights(run) if cfg.pretrain else (cfg.weights_path or None)
        name = seed_csv_name(cfg.extraction_method, cfg.layer_num, cfg.pooling_method, cfg.segmentation_type, cfg.alpha)
        return scale.extract_partitioned(
            run.cubes_dir, scale.network_spec(weights, cfg.seed), ExtractionSettings.from_config(cfg, info),
            describe(info, cfg), name, cfg, run, device_name=describe_device(device), progress=not in_batch(),
        )
    upstream = None
    if cfg.cache_dir:
        if not run.cubes_dir.exists():  # nothing on disk identifies these cubes: no reuse
            logger.info("run %s holds no cubes of 01_load: features are computed without the cache", run.path)
            return compute_features(cubes, model, info, cfg, device=device)
        upstream = {"cubes": cache.stored_identity(run.cubes_dir)}
        weights = network_identity(run, cfg)
        if weights is not None:  # only then: keys of runs without pretraining stay as they were
            upstream["network"] = weights
    # ``device`` is not among the keys of the entry (cache.FEATURE_KEYS): the features are the
    # same computation wherever they run, so features made on a GPU serve a CPU run and back.
    result, _ = cache.reuse_or_compute(
        run, cfg, "features", compute=lambda: compute_features(cubes, model, info, cfg, device=device),
        store=_store_features, load=_load_features, upstream=upstream,
    )
    return result


def save_features(result: FeatureResult, run: Run) -> dict[str, Path]:
    """Write the features (parquet and, under the original tool's file name, CSV), the
    excluded synapses and the extraction record to the run."""
    paths = {"parquet": run.write(A.FEATURES, result.features)}
    paths["csv"] = run.file(A.SEED_FEATURES_CSV, name=result.seed_name)
    with atomic_path(paths["csv"]) as tmp:
        result.features.to_csv(tmp, index=False)
    paths["skipped"] = run.write(A.SKIPPED_FEATURES, result.skipped)
    paths["extraction"] = run.write(A.EXTRACTION, result.meta())
    return paths


# --------------------------------------------------------------------------- 04_reduce / 05_cluster
def reduce(features: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """04_reduce: the ``feature_set`` matrix (blocks weighted by ``descriptor_weight``), PCA
    (``pca_components`` 0 = none), UMAP and t-SNE with ``cfg``."""
    matrix = FS.assemble(features, feature_set=cfg.feature_set, descriptor_weight=cfg.descriptor_weight)
    return R.reduce_features(
        features, pca_components=cfg.pca_components or None, n_neighbors=cfg.n_neighbors, min_dist=cfg.min_dist,
        metric=cfg.umap_metric, perplexity=cfg.perplexity, seed=cfg.seed, matrix=matrix,
    )


def load_reduced(run: Run) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Features, embeddings and the PCA matrix 05_cluster clusters in."""
    features, emb = run.read(A.FEATURES), run.read(A.EMBEDDINGS)
    return features, emb, emb[R.pca_columns(emb)].to_numpy()


def cluster(X: np.ndarray, cfg: Config) -> C.ClusterResult:
    """05_cluster: the method, k (0 = choose, by ``k_selection``) and k range of ``cfg``."""
    return C.cluster(X, method=cfg.clustering_method, k=cfg.n_clusters or None, k_range=(cfg.k_min, cfg.k_max),
                     seed=cfg.seed, k_selection=cfg.k_selection)


def stability(X: np.ndarray, result: C.ClusterResult, cfg: Config) -> pd.DataFrame:
    """Subsample stability of the chosen clustering (and of the other k when k was chosen)."""
    k_range = (cfg.k_min, cfg.k_max) if not cfg.n_clusters and result.method != "hdbscan" else None
    return C.stability(X, result.method, result.k, n_boot=cfg.n_bootstrap, seed=cfg.seed, k_range=k_range)


def save_clusters(run: Run, features: pd.DataFrame, emb: pd.DataFrame, result: C.ClusterResult,
                  stab: pd.DataFrame, agreement: pd.DataFrame, cfg: Config,
                  brightness: BrightnessCheck | None = None) -> dict[str, Path]:
    """Write what later notebooks and sweeps read: clusters, stability, agreement, quality (with
    the feature set, how k was chosen and the brightness check), AnnData. The clusters table
    carries each synapse's ``viewer_link`` when the run has viewer links (connectome runs)."""
    from ..figures.gallery import VIEWER_LINK_COLUMN, has_viewer_links

    clusters = C.clusters_table(features, result)
    if has_viewer_links(features):
        clusters[VIEWER_LINK_COLUMN] = features[VIEWER_LINK_COLUMN].to_numpy(dtype=object)
    paths = {
        "clusters": run.write(A.CLUSTERS, clusters),
        "stability": run.write(A.STABILITY, stab),
        "agreement": run.write(A.AGREEMENT, agreement),
    }
    reduced = emb.attrs.get("reduce", {})
    selection = result.selection.attrs if result.selection is not None else {}
    quality = {
        "method": result.method, "k": int(result.k),
        "silhouette": round(float(result.info.get("silhouette", float("nan"))), 3),
        "feature_set": reduced.get("feature_set", cfg.feature_set),
        "feature_columns": reduced.get("n_columns", {}),
        "feature_notes": reduced.get("notes", []),
        "k_chosen_by": selection.get("criterion", "fixed" if cfg.n_clusters else result.method),
        "k_rule": selection.get("rule", ""),
        "k_picks": {str(k): int(v) for k, v in selection.get("picks", {}).items()},
        "brightness": brightness.to_dict() if brightness is not None else {},
    }
    paths["quality"] = run.write(A.CLUSTER_QUALITY, quality)
    paths["h5ad"] = export.to_anndata(features, emb, result, run.file(A.ANNDATA), params=cfg.to_dict())
    return paths


# --------------------------------------------------------------------------- 06_attention
def feature_config(run: Run, cfg: Config) -> Config:
    """``cfg`` with the feature settings 03_extract used in this run (so maps explain those
    features), keeping the attention keys. ``weights_path`` empty = 03's network (the run's
    pretrained weights when 03 used them, see :func:`network`); set to other weights than 03's,
    it replaces that network."""
    recorded = run.read(A.STEP_PARAMS, step="03_extract")
    values = cfg.to_dict()
    for key in (*X.FEATURE_KEYS, "pretrain"):
        if key in recorded and key in Config.model_fields:
            values[key] = recorded[key]
    if cfg.weights_path and cfg.weights_path != recorded.get("weights_path"):
        values.update(weights_path=cfg.weights_path, pretrain=False)
    return make_config(values, source=str(run.file(A.STEP_PARAMS, step="03_extract")))


def _explained_layers(layers: Sequence[int], upto: int, target: str) -> tuple[list[int], dict[int, str]]:
    """Layers that have a gradient for a target reading ``features.<upto>``; the rest with why."""
    ok, skipped = [], {}
    for i in sorted({validate_layer(i) for i in layers}):
        if i > upto:
            skipped[i] = (
                f"features.{i} is skipped: the {target} target reads features.{upto} "
                f"(stage_specific extraction, layer_num {upto}), which comes before it, so that layer has no "
                f"gradient and any map would be fake. Use attention_layers up to {upto}, or extract with the whole trunk."
            )
        else:
            ok.append(i)
    return ok, skipped


def _clusters_for_attention(run: Run, n_features: int) -> tuple[np.ndarray | None, pd.DataFrame | None]:
    if not (run.has(A.CLUSTERS) and run.has(A.EMBEDDINGS)):
        return None, None
    labels = run.read(A.CLUSTERS)["cluster_label"].to_numpy()
    emb = run.read(A.EMBEDDINGS)
    if len(labels) != n_features or len(emb) != n_features:
        raise X.AttentionError(
            f"features ({n_features} rows), embeddings ({len(emb)}) and clusters ({len(labels)}) of run "
            f"{run.path} do not line up: rerun 04_reduce and 05_cluster"
        )
    return labels, emb


def _reduce_settings(run: Run) -> dict[str, object]:
    """How 04_reduce made the clustering space (its recorded feature set, PCA size, seed): the
    cluster target must know whether the network's features alone were clustered. Runs whose
    04_reduce recorded no feature set clustered the deep features."""
    recorded = run.read(A.STEP_PARAMS, step="04_reduce") if run.has(A.STEP_PARAMS, step="04_reduce") else {}
    fields = Config.model_fields
    feature_set = str(recorded.get("feature_set") or "deep")
    weight = recorded.get("descriptor_weight", fields["descriptor_weight"].default)
    return {
        "feature_set": feature_set,
        "pca_components": int(recorded.get("pca_components", fields["pca_components"].default)),
        "seed": int(recorded.get("seed", fields["seed"].default)),
        "descriptor_weight": float(weight) if feature_set == "hybrid" else None,
    }


def _target(kind: str, fcfg: Config, model: VGG3D, info: ModelInfo, cfg: Config, space, labels) -> tuple[X.Target, int]:
    upto = N_FEATURE_MODULES - 1 if fcfg.extraction_method == "standard" else fcfg.layer_num
    if kind == "logit":
        return X.logit_target(model, info, cfg.attention_class), N_FEATURE_MODULES - 1
    if kind == "cluster":
        return X.ClusterTarget(upto, fcfg.pooling_method, space, labels), upto
    return X.NormTarget(upto, fcfg.pooling_method), upto


def load_study(run: Run, cfg: Config) -> X.Study:
    """06_attention: features, clusters, embeddings and cubes of ``run``, 03_extract's network (on
    ``cfg.device``, resolved first) and the target ``cfg.attention_target``; errors name the
    missing step or the key to change."""
    device = network_device(cfg)
    fcfg = feature_config(run, cfg)
    features = run.read(A.FEATURES)
    cubes = load_cubes(run)
    if cubes.geometry.size != fcfg.cube_size:
        logger.info("cube size %d from the stored cubes (parameters said %d)", cubes.geometry.size, fcfg.cube_size)
        fcfg = fcfg.model_copy(update={"cube_size": cubes.geometry.size})  # what the maps are made at (recorded by 06)
    labels, emb = _clusters_for_attention(run, len(features))
    points = None if emb is None else emb[R.pca_columns(emb)].to_numpy(np.float64)
    kind = cfg.attention_target
    space = None
    if kind == "cluster":
        if labels is None:
            raise X.AttentionError(
                f"attention_target 'cluster' needs the clusters of 05_cluster and the embeddings of 04_reduce "
                f"({run.file(A.CLUSTERS)}); run them, or use attention_target 'norm'"
            )
        space = X.cluster_space(features, emb, labels, **_reduce_settings(run))
    model, info = network(run, fcfg)
    model.to(device)
    target, upto = _target(kind, fcfg, model, info, cfg, space, labels)
    layers, skipped = _explained_layers(cfg.attention_layers, upto, kind)
    if not layers:
        raise X.AttentionError(
            f"none of attention_layers {list(cfg.attention_layers)} can be explained: " + " ".join(skipped.values())
        )
    notes: list[str] = []
    if fcfg.precision != "float32":
        notes.append(f"03_extract ran in {fcfg.precision}; Grad-CAM runs in float32 (features agree to about 0.999 cosine).")
    if kind != "logit" and fcfg.rotation_averaging > 1:
        notes.append(X.rotation_note(fcfg.rotation_averaging))
    notes += space.notes if space is not None else []
    return X.Study(fcfg, features, labels, points, space, cubes, model, info, resolve_input_range(fcfg, info), target,
                   layers, skipped, notes, device)


def save_attention(run: Run, result: X.AttentionResult, overlap: pd.DataFrame, summary: pd.DataFrame,
                   regions: pd.DataFrame) -> dict[str, Path]:
    """Write the tables and the maps (float16) into the run."""
    paths = {
        "samples": run.write(A.ATTENTION_SAMPLES, result.samples),
        "overlap": run.write(A.ATTENTION_OVERLAP, overlap),
        "summary": run.write(A.ATTENTION_OVERLAP_SUMMARY, summary),
        "regions": run.write(A.ATTENTION_REGIONS, regions),
        "maps": run.file(A.ATTENTION_MAPS),
    }
    with atomic_path(paths["maps"]) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, maps=result.maps.astype(np.float16), mean_maps=result.mean_maps().astype(np.float32),
                layers=np.asarray(result.layers), feature_rows=result.samples["feature_row"].to_numpy(),
                cube_rows=result.samples["cube_row"].to_numpy(),
            )
    meta = {"target": result.target, "weights": result.weights, "layers": result.layers, "threshold": result.threshold,
            "skipped_layers": {str(k): v for k, v in result.skipped_layers.items()}, "seconds": result.seconds,
            "border_ring_voxels": result.ring, "explained": list(result.explained), "device": result.device}
    paths["meta"] = run.write(A.ATTENTION_META, meta)
    return paths


# --------------------------------------------------------------------------- 07_presynapse
def analyze_presynapse(run: Run, cfg: Config, within_bbox: bool = True, *, grouping: str = "auto") -> PresynapseAnalysis:
    """07_presynapse: :func:`analyze` on the run's features (03), embeddings (04), clusters (05)
    and the synapse table stored with the cubes (01). ``grouping``: auto / presynaptic /
    either_side (see :mod:`synapse_nb.connectivity.groups`)."""
    cube_table = load_cubes(run).table
    return analyze(run.read(A.FEATURES), run.read(A.EMBEDDINGS), run.read(A.CLUSTERS), cube_table,
                   include_ambiguous=cfg.include_ambiguous, n_permutations=cfg.n_permutations, seed=cfg.seed,
                   within_bbox=within_bbox, class_column=cfg.class_column, grouping=grouping)


def save_presynapse(run: Run, analysis: PresynapseAnalysis, cubes: CubeSet | None = None,
                    cfg: Config | None = None) -> dict[str, Path]:
    """Write the group, synapse and excluded tables, the test numbers and the summary page."""
    syn = analysis.synapses.copy()
    syn["pre_seg_id"] = syn["pre_seg_id"].fillna(0).astype("int64")  # either-side grouping keeps unknown ids
    paths = {
        "groups": run.write(A.PRESYNAPSE_GROUPS, analysis.groups),
        "synapses": run.write(A.PRESYNAPSE_SYNAPSES, syn),
        "excluded": run.write(A.PRESYNAPSE_EXCLUDED, analysis.excluded),
        "test": run.write(A.PRESYNAPSE_TEST, analysis.summary()),
    }
    paths["summary"] = write_summary(run.file(A.PRESYNAPSE_SUMMARY), analysis, cubes, cfg,
                                     title=f"Presynapse connectivity · {run.name}")
    return paths
