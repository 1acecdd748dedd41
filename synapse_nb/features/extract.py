"""Feature extraction from synapse cubes with VGG3D (see :mod:`.vgg3d`), and the feature tables.

Cubes are read batch by batch from any object with ``len()`` and slice indexing (a numpy
array, or the lazy view of the cube store), so memory stays at one batch whatever N is.
``rotations`` > 1 averages the features of each cube over exact 90-degree turns about an axis
per synapse (its cleft normal's), so an arbitrary in-plane orientation of the synapse does not
drive the features; it costs one forward pass per rotation.
The forward pass uses :class:`synapse_nb.features.inference.InferenceTrunk` (BatchNorm folded, ReLU fused,
channels-last) and stops at the requested module for ``stage_specific`` extraction.
See ``benchmarks/bench_network.py`` for the measurements behind the defaults.

Speed notes (2 Zen 4 cores, 80^3 cubes, synapses/s): the seed's setting (float32, NCDHW,
eager BatchNorm/ReLU, batch 2) ~1.1; our float32 default ~2.5; bfloat16 ~4.7-5.0. What made the
difference: channels-last activations (also for the 1-channel input), BatchNorm folded and
ReLU fused into the convolutions, and no page faults on the 49 MB activation buffers
(:func:`synapse_nb.features.inference.reuse_large_allocations`). On AMD Zen 4 float32 reaches ~3.1 if the
process starts with ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN's AVX-512 kernels pad the 24
channels of block 1 to 32, its AVX2 kernels do not). That variable is process-wide, must be
set before torch's first convolution and hides the native bf16 kernels (bf16 then becomes
very slow), so this module does not set it.

``device`` (see :mod:`.devices`) moves the trunk and each batch to a GPU; features come back as
float32 on the CPU. The CPU tricks above (glibc allocation reuse, thread count, oneDNN fused
ReLU, channels-last, the bf16 ISA checks) apply on the CPU only; on CUDA ``bfloat16`` runs with
bf16 weights where the GPU supports bf16 and as float16 autocast elsewhere; MPS runs float32.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.layers import (
    INPUT_RANGES,
    N_FEATURE_MODULES,
    TRUNK_CHANNELS,
    layer_channels,
    layer_description,
    layer_downscale,
    validate_layer,
)
from ..core.errors import DataError
from ..cubes.rendering import describe_synapse
from .checkpoint import ModelInfo, check_finite
from .devices import autocast, cpu_has_native_bf16, describe_device, mixed_precision_dtype, resolve_device
from .inference import InferenceTrunk, reuse_large_allocations
from .vgg3d import VGG3D

if TYPE_CHECKING:
    from ..core.config import Config
    from ..cubes.rendering import RenderSettings
    from ..cubes.store import CubeSet

logger = logging.getLogger(__name__)

POOLINGS: tuple[str, ...] = ("avg", "max", "concat_avg_max", "spp")
EXTRACTION_METHODS: tuple[str, ...] = ("standard", "stage_specific")
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")
SPP_LEVELS: tuple[int, ...] = (1, 2, 4)
"""Output sizes of the adaptive average pools concatenated by ``spp`` (1 + 8 + 64 = 73 cells)."""
FEATURE_PREFIX = "feat_"

DEFAULT_BATCH_SIZE = 1
"""Measured on the 2-core reference machine (bench_network.py --sweep): batch 1, 2 and 4 are
within noise of each other for both precisions (float32 2.46/2.43/2.28, bfloat16
4.69/4.82/4.55 synapses/s), so the smallest is used: least memory, finest progress."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

ROTATIONS: tuple[int, ...] = (1, 2, 4)
"""Allowed numbers of rotations averaged: n turns of 360/n degrees (1 = no averaging)."""

_PLANES = {0: (1, 2), 1: (0, 2), 2: (0, 1)}  # rotation axis -> the plane (of a Z,Y,X cube) it turns


def rotate_cube(x: torch.Tensor, quarter_turns: int, axis: int) -> torch.Tensor:
    """A (Z, Y, X) cube turned by ``quarter_turns`` * 90 degrees about ``axis`` (0 z, 1 y, 2 x).

    Exact (a permutation of voxels, ``torch.rot90``), so nothing is resampled or cut off.
    """
    if int(axis) not in _PLANES:
        raise ValueError(f"rotation axis must be 0 (z), 1 (y) or 2 (x), got {axis!r}")
    return torch.rot90(x, int(quarter_turns) % 4, dims=_PLANES[int(axis)])


class CubeSource(Protocol):
    """What the extractor reads: ``len()`` and ``[a:b] -> (b - a, Z, Y, X)`` float array."""

    def __len__(self) -> int: ...

    def __getitem__(self, item: slice) -> np.ndarray: ...


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def feature_dim(pooling: str, channels: int) -> int:
    """Length of the feature vector that ``pooling`` makes from ``channels`` channels."""
    _check_choice("pooling", pooling, POOLINGS)
    factor = {"avg": 1, "max": 1, "concat_avg_max": 2, "spp": sum(s**3 for s in SPP_LEVELS)}[pooling]
    return factor * int(channels)


def pool_features(x: torch.Tensor, pooling: str) -> torch.Tensor:
    """Reduce activations (B, C, z, y, x) to (B, D) over space; float32 in, float32 out."""
    _check_choice("pooling", pooling, POOLINGS)
    if pooling == "avg":
        return x.mean(dim=(2, 3, 4))
    if pooling == "max":
        return x.amax(dim=(2, 3, 4))
    if pooling == "concat_avg_max":
        return torch.cat([x.mean(dim=(2, 3, 4)), x.amax(dim=(2, 3, 4))], dim=1)
    return torch.cat([F.adaptive_avg_pool3d(x, s).flatten(1) for s in SPP_LEVELS], dim=1)


def available_cores() -> int:
    """Cores this process may run on (respects taskset / container CPU sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class FeatureExtractor:
    """Turn cubes into one pooled feature vector per synapse.

    ``method="standard"`` uses the whole trunk (192 channels at 5^3); ``"stage_specific"``
    stops after ``features[layer_num]`` (default 20: the first conv of block 3, before its
    BatchNorm, 96 channels at 20^3) and computes nothing after it.

    ``precision="bfloat16"`` is opt-in: about twice as fast on CPUs with native bf16, features
    within cosine 0.999 of float32 (tested), but not bit-identical.

    Cubes are expected in [0, 1] (what the cube builder writes). ``input_range`` decides what
    the network sees: ``"0_1"`` as is, ``"-1_1"`` as ``2 x - 1`` (how HemiBrain was trained);
    ``None`` follows the weights (``model.info.default_input_range``, "0_1" if unknown).

    ``rotations`` = n in (1, 2, 4): the features of a synapse are the mean of the pooled
    features of its cube turned by k * 360 / n degrees (k = 0 .. n-1) about its axis (given per
    synapse to ``__call__``; the axis closest to the cleft normal). With 4 they do not change
    when the cube is turned by 90 degrees about that axis (with 2: by 180 degrees); the mean
    is summed in a fixed (sorted) order so this holds to the bit. n = 1 is the plain features.
    Each batch is run n times, so memory stays one batch and the cost is n times.

    ``device`` (auto / cpu / cuda / cuda:N / mps, or a ``torch.device``) is where the trunk runs;
    a device this machine lacks is a :class:`~synapse_nb.features.devices.DeviceError`. The
    default, the CPU, gives the same bits as before the parameter existed.
    """

    def __init__(
        self,
        model: VGG3D,
        method: str = "standard",
        layer_num: int = 20,
        pooling: str = "avg",
        batch_size: int = DEFAULT_BATCH_SIZE,
        precision: str = "float32",
        channels_last: bool = True,
        input_range: str | None = None,
        num_threads: int | None = None,
        progress: bool = True,
        rotations: int = 1,
        *,
        device: str | torch.device = "cpu",
    ) -> None:
        self.method = _check_choice("method", method, EXTRACTION_METHODS)
        self.pooling = _check_choice("pooling", pooling, POOLINGS)
        self.precision = _check_choice("precision", precision, PRECISIONS)
        self.device = resolve_device(str(device))  # a device this machine lacks: DeviceError before any work
        self.layer_num = validate_layer(layer_num)
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        if isinstance(rotations, bool) or rotations not in ROTATIONS:
            raise ValueError(f"rotations must be one of {ROTATIONS}, got {rotations!r}")
        self.rotations = int(rotations)
        info = getattr(model, "info", None)
        if input_range is None:
            input_range = info.default_input_range if info is not None else "0_1"
        self.input_range = _check_choice("input_range", input_range, INPUT_RANGES)
        self.num_threads = int(num_threads) if num_threads else available_cores()
        self.progress = progress
        self.channels_last = bool(channels_last)
        self.upto = self.layer_num if method == "stage_specific" else N_FEATURE_MODULES - 1
        self.channels = layer_channels(self.upto) if method == "stage_specific" else TRUNK_CHANNELS
        self.dim = feature_dim(pooling, self.channels)
        self.model_info = info
        _check_trunk_weights(model, self.upto, info)
        self.device_name = describe_device(self.device)
        trunk_dtype, self.amp_dtype = self._dtypes()
        self.compute_dtype = self.amp_dtype or trunk_dtype  # what the convolutions compute in
        self.trunk = InferenceTrunk(
            model, self.upto, trunk_dtype, channels_last=self.channels_last, device=self.device
        )
        self.last_seconds: float | None = None

    def _dtypes(self) -> tuple[torch.dtype, torch.dtype | None]:
        """(dtype of the trunk's weights, autocast dtype or None) for ``precision`` on the device.

        CPU: the weights in the requested dtype (native bf16 kernels are checked). CUDA: bf16
        weights where the GPU supports bf16, else float32 weights under float16 autocast (AMP).
        MPS: float32 (mixed precision is not attempted there).
        """
        kind = self.device.type
        if kind == "cpu":
            if self.precision == "bfloat16":
                isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
                if not cpu_has_native_bf16():
                    logger.warning("bfloat16 requested but this CPU has no native bf16 support: it may be slower than float32")
                elif isa and "BF16" not in isa and "AMX" not in isa and isa not in ("ALL", "DEFAULT", "AVX10_1_512"):
                    logger.warning("bfloat16 requested but ONEDNN_MAX_CPU_ISA=%s hides the bf16 kernels: expect it to be slow", isa)
            return _DTYPES[self.precision], None
        if kind == "cuda":
            mixed = mixed_precision_dtype(self.device, self.precision)
            if mixed == torch.float16:
                logger.info("%s has no bfloat16: precision bfloat16 runs as float16 autocast", self.device_name)
                return torch.float32, torch.float16
            return (torch.bfloat16 if mixed == torch.bfloat16 else torch.float32), None
        if self.precision != "float32":
            logger.warning("precision %s is not used on %s: extraction runs in float32", self.precision, self.device_name)
        return torch.float32, None

    def describe(self) -> str:
        """Settings in one line, for reports."""
        where = "whole trunk (features.33)" if self.method == "standard" else layer_description(self.upto)
        rng = "[0, 1]" if self.input_range == "0_1" else "[-1, 1]"
        computed = str(self.compute_dtype).removeprefix("torch.")
        how = self.precision if computed == self.precision else f"{self.precision} run as {computed}"
        if self.amp_dtype is not None:
            how += " autocast"
        text = (
            f"{self.method} extraction, {where}, {self.pooling} pooling -> {self.dim} features, "
            f"{how}, input range {rng}, on {self.device_name}"
        )
        if self.rotations > 1:
            text += f", averaged over {self.rotations} rotations of {360 // self.rotations} degrees about the cleft normal"
        return text

    def _batch(self, cubes: CubeSource, start: int, stop: int, spatial: list[tuple[int, ...]]) -> torch.Tensor:
        """Read and validate cubes[start:stop] into a (b, 1, Z, Y, X) float32 tensor."""
        where = f"cubes[{start}:{stop}]"
        arr = np.asarray(cubes[start:stop])
        if arr.ndim != 4 or arr.shape[0] != stop - start:
            raise ValueError(
                f"{where} has shape {arr.shape}; expected ({stop - start}, Z, Y, X) — one 3-D cube per synapse"
            )
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"{where} has dtype {arr.dtype}; expected real numbers (float32)")
        shape = tuple(int(s) for s in arr.shape[1:])
        if spatial and shape != spatial[0]:
            raise ValueError(f"{where} has cube shape {shape}, earlier cubes had {spatial[0]}")
        need = layer_downscale(self.upto)
        if min(shape) < need:
            raise ValueError(f"{where} cubes of shape {shape} are too small: layer {self.upto} needs >= {need} voxels per axis")
        spatial[:1] = [shape]
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        finite = np.isfinite(arr).reshape(len(arr), -1).all(axis=1)
        if not finite.all():
            bad = [start + int(i) for i in np.flatnonzero(~finite)]
            raise ValueError(f"{where} contains NaN or infinite values (cube indices {bad[:10]})")
        x = torch.from_numpy(arr).unsqueeze(1)
        if self.input_range == "-1_1":
            x = x * 2.0 - 1.0
        return x

    def _check_features(self, cubes: CubeSource, start: int, feats: np.ndarray) -> None:
        """Refuse NaN/inf features (their cubes were checked finite, so the network is at fault)."""
        bad = np.flatnonzero(~np.isfinite(feats).all(axis=1))
        if bad.size == 0:
            return
        i = start + int(bad[0])
        name_of = getattr(cubes, "synapse_where", None)
        where = name_of(i) if callable(name_of) else f"cube {i} (row {i} of the input)"
        hint = (
            "bfloat16 overflowed: extract with precision='float32'"
            if self.precision == "bfloat16"
            else "check the weights (load the checkpoint again with build_model) and the cube"
        )
        raise DataError(
            f"features of {where} are NaN/inf ({bad.size} synapse(s) of cubes[{start}:{start + len(feats)}]); "
            f"its input cube is finite, so the network produced them: {hint}"
        )

    def _rotation_axes(self, n: int, rotation_axes: Sequence[int] | np.ndarray | None) -> np.ndarray | None:
        """Per-synapse rotation axes as int64 (N,), checked; None when nothing is rotated."""
        if self.rotations == 1:
            return None
        if rotation_axes is None:
            return np.zeros(n, dtype=np.int64)
        axes = np.asarray(rotation_axes).reshape(-1)
        if len(axes) != n:
            raise ValueError(f"rotation_axes has {len(axes)} entries for {n} cubes; give one axis (0, 1 or 2) per cube")
        if not np.issubdtype(axes.dtype, np.integer) or (axes.size and (axes.min() < 0 or axes.max() > 2)):
            raise ValueError(f"rotation_axes must be integers 0 (z), 1 (y) or 2 (x), got {np.unique(axes)[:5]}")
        return axes.astype(np.int64)

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        """Pooled float32 features (b, D) of a CPU batch, computed on the device, back on the CPU."""
        x = x.to(self.device)
        with autocast(self.device, self.precision) if self.amp_dtype is not None else contextlib.nullcontext():
            act = self.trunk(x)
        return pool_features(act, self.pooling).cpu().numpy()

    def _pooled(self, x: torch.Tensor, axes: np.ndarray | None, start: int) -> np.ndarray:
        """Pooled features (b, D) of one batch, averaged over the rotations when asked."""
        if axes is None:
            return self._forward(x)
        step = 4 // self.rotations
        shape = x.shape[2:]
        for i in range(len(x)):
            a, b = _PLANES[int(axes[start + i])]
            if shape[a] != shape[b]:
                raise ValueError(
                    f"cube {start + i} has shape {tuple(shape)}: turning it about axis {int(axes[start + i])} "
                    "needs equal sizes on the other two axes"
                )
        per_turn = []
        for k in range(self.rotations):
            if k == 0:
                xr = x
            else:
                xr = torch.stack([rotate_cube(x[i, 0], k * step, int(axes[start + i])) for i in range(len(x))]).unsqueeze(1)
            per_turn.append(self._forward(xr))
        # sorted before summing: the same set of turns gives the same bits in any order
        return (np.sort(np.stack(per_turn), axis=0).sum(axis=0) / np.float32(self.rotations)).astype(np.float32)

    def __call__(self, cubes: CubeSource, *, rotation_axes: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Features (N, D) float32, in the order of ``cubes``.

        ``rotation_axes`` (one of 0 z, 1 y, 2 x per cube) is the axis the ``rotations`` turn
        about (default: z for every cube; ignored when ``rotations`` is 1). A cube store view
        gives them by ``view.normal_axes()``.

        Raises :class:`~synapse_nb.core.errors.DataError` naming the first synapse whose
        features are NaN or infinite (by bbox and name when ``cubes`` is the cube store's view).
        """
        n = len(cubes)
        out = np.empty((n, self.dim), dtype=np.float32)
        axes = self._rotation_axes(n, rotation_axes)
        if n == 0:
            return out
        spatial: list[tuple[int, ...]] = []
        starts = list(range(0, n, self.batch_size))
        on_cpu = self.device.type == "cpu"
        prev_threads = torch.get_num_threads()
        if on_cpu:  # thread count and heap tuning are for CPU convolutions; a GPU needs neither
            torch.set_num_threads(self.num_threads)
        t0 = time.perf_counter()
        try:
            # read the next batch in a thread while the current one is computed (I/O overlap)
            bar = tqdm(total=n, unit="syn", desc="features", disable=not self.progress)
            heap = reuse_large_allocations() if on_cpu else contextlib.nullcontext()
            with heap, ThreadPoolExecutor(max_workers=1) as pool, torch.inference_mode(), bar:
                def read(s: int) -> Any:
                    return pool.submit(self._batch, cubes, s, min(s + self.batch_size, n), spatial)

                pending = read(starts[0])
                for k, start in enumerate(starts):
                    x = pending.result()
                    if k + 1 < len(starts):
                        pending = read(starts[k + 1])
                    feats = self._pooled(x, axes, start)
                    self._check_features(cubes, start, feats)
                    out[start : start + len(x)] = feats
                    bar.update(len(x))
        finally:
            torch.set_num_threads(prev_threads)
        self.last_seconds = time.perf_counter() - t0
        logger.info(
            "extracted %d x %d features in %.1f s (%.2f synapses/s): %s",
            n, self.dim, self.last_seconds, n / max(self.last_seconds, 1e-9), self.describe(),
        )
        return out


def _check_trunk_weights(model: VGG3D, upto: int, info: ModelInfo | None) -> None:
    """Refuse NaN/inf in the trunk modules the extraction runs (``features.0`` .. ``features.upto``).

    The fused convolution + ReLU turns NaN activations into 0, so broken weights would give
    all-zero features that look fine; checkpoints are checked on load, this catches weights
    changed afterwards.
    """
    used = {f"features.{k}" for k in range(upto + 1)}
    state = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] in used}
    source = info.source if info is not None and info.pretrained else "the model"
    check_finite(state, source, advice="the weights are corrupt: build the model again with build_model")


# --------------------------------------------------------------------------- tables / files
def feature_name(i: int) -> str:
    """Column name of feature ``i``: ``feat_0000`` ... (at least four digits)."""
    return f"{FEATURE_PREFIX}{i:04d}"


def feature_columns(df: pd.DataFrame) -> list[str]:
    """The feature columns of a features table, in order."""
    return [c for c in df.columns if isinstance(c, str) and c.startswith(FEATURE_PREFIX)]


def features_frame(features: np.ndarray, metadata: pd.DataFrame) -> pd.DataFrame:
    """Metadata columns first, then ``feat_0000``...; rows aligned by position.

    A named index of ``metadata`` (e.g. ``synapse_id``) becomes a column so that it survives
    CSV/parquet round trips; an unnamed index is positional and dropped.
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {features.shape}")
    if len(metadata) != len(features):
        raise ValueError(f"{len(features)} feature rows but {len(metadata)} metadata rows")
    if np.issubdtype(features.dtype, np.number):
        bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
        if bad.size:
            i = int(bad[0])
            where = describe_synapse(metadata.iloc[i].to_dict(), fallback=f"row {i}")
            raise DataError(
                f"features of {where} (row {i}; {bad.size} of {len(features)} rows) are NaN/inf; "
                "they would break the reductions: extract them again with sound weights (build_model refuses "
                "corrupt checkpoints) or leave these synapses out"
            )
    # keep a named index (e.g. synapse_id) as a column; drop an anonymous positional one
    meta = metadata.reset_index(drop=all(name is None for name in metadata.index.names))
    clash = feature_columns(meta)
    if clash:
        raise ValueError(f"metadata already has feature-like columns {clash[:5]} (prefix {FEATURE_PREFIX!r})")
    feats = pd.DataFrame(features.astype(np.float32, copy=False), columns=[feature_name(i) for i in range(features.shape[1])])
    return pd.concat([meta, feats], axis=1)


def _alpha_text(alpha: float) -> str:
    return str(float(alpha)).replace(".", "_")


def seed_csv_name(method: str, layer_num: int | None, pooling: str, segmentation_type: int, alpha: float) -> str:
    """The seed's CSV name ``features[_layer{N}]_{pool}_seg{S}_alpha{A}.csv`` (A with '.' -> '_').

    ``_layer{N}`` appears only for ``stage_specific``. Example: ``features_avg_seg10_alpha1_0.csv``.
    """
    _check_choice("method", method, EXTRACTION_METHODS)
    _check_choice("pooling", pooling, POOLINGS)
    layer = f"_layer{validate_layer(layer_num)}" if method == "stage_specific" else ""
    return f"features{layer}_{pooling}_seg{int(segmentation_type)}_alpha{_alpha_text(alpha)}.csv"


# --------------------------------------------------------------------------- result
@dataclass
class FeatureResult:
    """What notebook 03 produces: features with metadata, and who was left out and why."""

    features: pd.DataFrame  # synapse metadata + feat_* columns
    skipped: pd.DataFrame  # bbox, Var1, table_row, reason (empty masks for this type)
    seed_name: str  # the seed's CSV file name for these settings
    description: str  # weights, input range and extraction settings in words
    seconds: float
    device: str = "cpu"  # where the features were computed (describe_device); older results: the CPU

    @property
    def matrix(self) -> np.ndarray:
        return self.features[feature_columns(self.features)].to_numpy(np.float32)

    def meta(self) -> dict[str, object]:
        """What is recorded beside the table: seed file name, description, seconds, device."""
        return {"seed_name": self.seed_name, "description": self.description, "seconds": self.seconds,
                "device": self.device}

    def preview(self, n_rows: int = 5, n_features: int = 8) -> pd.DataFrame:
        """Synapse names with their first features: what the feature table looks like."""
        ident = [c for c in ("bbox", "Var1") if c in self.features.columns]
        return self.features[ident + feature_columns(self.features)[:n_features]].head(n_rows)


@dataclass(frozen=True)
class ExtractionSettings:
    """Every option of :class:`FeatureExtractor` that decides the features, as one value a
    step can build from parameters and send to another process (the Dask engine's workers)."""

    method: str = "standard"
    layer_num: int = 20
    pooling: str = "avg"
    batch_size: int = DEFAULT_BATCH_SIZE
    precision: str = "float32"
    input_range: str = "0_1"
    rotations: int = 1

    @classmethod
    def from_config(cls, cfg: "Config", info: ModelInfo) -> "ExtractionSettings":
        return cls(method=cfg.extraction_method, layer_num=cfg.layer_num, pooling=cfg.pooling_method,
                   batch_size=cfg.batch_size, precision=cfg.precision, input_range=resolve_input_range(cfg, info),
                   rotations=cfg.rotation_averaging)


def extract_cubeset(cubes: "CubeSet", model: VGG3D, settings: ExtractionSettings, render: "RenderSettings", *,
                    device: str | torch.device = "cpu", progress: bool = True,
                    num_threads: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame, FeatureExtractor]:
    """The features of every cube whose mask is not empty for ``render``'s segmentation type.

    Returns the features table (cube metadata + ``feat_*``), the synapses left out for an empty
    mask (with the reason) and the extractor (its device and timing). A cube set where every
    mask is empty gives an empty table: the caller decides whether that is an error (a whole
    run) or not (one partition of a large one).
    """
    skipped = cubes.empty_mask_report(render.segmentation_type)
    keep = np.setdiff1d(np.arange(len(cubes)), cubes.empty_mask_rows(render.segmentation_type))
    extractor = FeatureExtractor(
        model, method=settings.method, layer_num=settings.layer_num, pooling=settings.pooling,
        batch_size=settings.batch_size, precision=settings.precision, input_range=settings.input_range,
        progress=progress, rotations=settings.rotations, device=device, num_threads=num_threads,
    )
    if len(keep) == 0:
        return features_frame(np.zeros((0, extractor.dim), np.float32), cubes.table.iloc[:0].reset_index(drop=True)), skipped, extractor
    view = cubes.rendered(render, indices=keep)
    matrix = extractor(view, rotation_axes=view.normal_axes() if extractor.rotations > 1 else None)
    return features_frame(matrix, cubes.table.iloc[keep].reset_index(drop=True)), skipped, extractor


def resolve_input_range(cfg: "Config", info: ModelInfo) -> str:
    """``auto`` follows the weights: [-1, 1] for a HemiBrain checkpoint, [0, 1] otherwise."""
    return info.default_input_range if cfg.input_range == "auto" else cfg.input_range


def describe(info: ModelInfo, cfg: "Config") -> str:
    """The sentence every report shows about the network (random weights are said loudly)."""
    rng = "[0, 1]" if resolve_input_range(cfg, info) == "0_1" else "[-1, 1]"
    how = "whole trunk" if cfg.extraction_method == "standard" else layer_description(cfg.layer_num)
    text = (
        f"{info.description()}. Input range {rng} ({'chosen' if cfg.input_range != 'auto' else 'following the weights'}); "
        f"{cfg.extraction_method} extraction ({how}), {cfg.pooling_method} pooling, {cfg.precision}"
    )
    norm = getattr(cfg, "intensity_normalization", "minmax")
    if norm != "minmax":
        over = "the cube" if norm == "cube" else "the kept mask"
        text += f"; intensities z-scored over {over} per synapse"
    turns = int(getattr(cfg, "rotation_averaging", 1))
    if turns > 1:
        text += f"; features averaged over {turns} rotations of {360 // turns} degrees about the cleft normal"
    return text + "."
