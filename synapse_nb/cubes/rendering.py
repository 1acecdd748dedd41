"""From a stored cube to network input: masks of segmentation types and intensity rendering.

Cubes are stored once as raw intensities plus structure bits, so any segmentation type and
alpha can be rendered later without rebuilding. :func:`segmentation_mask` turns bits into the
mask of a type, :func:`render` applies the per-cube intensity normalisation (min-max, or a
z-score over the cube or the mask so brightness and contrast of a volume do not drive the
features), the gray blend outside the mask and the optional steps of :class:`RenderSettings`;
:class:`RenderedView` does it batch by batch for a whole :class:`~.store.CubeSet`. The formulas
are explained in ``docs/cubes.md``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from ..core import labels as L
from ..core.layers import INPUT_RANGES
from .components import dilate6
from .geometry import is_oriented, valid_mask_from_pads

if TYPE_CHECKING:
    import pandas as pd

    from .store import CubeSet

logger = logging.getLogger(__name__)

INTENSITY_NORMALIZATIONS: tuple[str, ...] = ("minmax", "cube", "mask")
"""``minmax``: (raw - min) / (max - min) over the cube (the original tool's). ``cube`` / ``mask``:
z-score over the cube's in-volume voxels / over the kept mask, mapped by :data:`ZSCORE_SPAN`."""

ZSCORE_SPAN = 6.0
"""z-scores become ``clip(0.5 + z / ZSCORE_SPAN, 0, 1)``: the mean maps to 0.5 and +-3 standard
deviations span [0, 1], so the gray value and the input ranges keep their meaning."""

MIN_MASK_VOXELS = 100
"""``mask`` normalisation falls back to the cube's statistics when the mask has fewer voxels:
a mean and standard deviation over a handful of voxels would be noise."""

_PAD_COLUMNS = tuple(f"pad_{a}_{s}" for a in "zyx" for s in ("before", "after"))


def _minmax(x: np.ndarray) -> np.ndarray:
    """Min-max of one cube to [0, 1] in float32; a constant cube becomes zeros."""
    mn = np.float32(x.min())
    rng = np.float32(x.max()) - mn
    if rng <= 0:
        return np.zeros(x.shape, dtype=np.float32)
    return (x.astype(np.float32) - mn) / rng


def zscore_to_unit(raw: np.ndarray, where: np.ndarray | None) -> np.ndarray:
    """``clip(0.5 + (raw - mean) / (ZSCORE_SPAN * std), 0, 1)`` in float32, statistics over ``where``.

    Mean and standard deviation are taken in float64 over the voxels where ``where`` is True
    (all voxels when None), so ``a * raw + b`` with ``a > 0`` renders as ``raw`` does. Constant
    statistics voxels (std 0) give 0.5 everywhere.
    """
    r = raw.astype(np.float64)
    sample = r if where is None else r[where]
    mean = float(sample.mean())
    std = float(sample.std())
    if not std > 0:
        return np.full(raw.shape, 0.5, dtype=np.float32)
    z = (r - mean) * (1.0 / (ZSCORE_SPAN * std)) + 0.5
    return np.clip(z, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------
# masks and rendering
# --------------------------------------------------------------------------------------
def check_segmentation_type(segmentation_type: int) -> int:
    """The segmentation type as an int; ValueError if it is not one of the known types."""
    t = int(segmentation_type)
    if t not in L.SEGMENTATION_TYPES:
        raise ValueError(
            f"segmentation_type {segmentation_type!r} is unknown; choose one of {sorted(L.SEGMENTATION_TYPES)}"
        )
    return t


def segmentation_mask(bits: np.ndarray, segmentation_type: int) -> np.ndarray:
    """Boolean mask M of a segmentation type from structure bits; (S,S,S) or (N,S,S,S)."""
    t = check_segmentation_type(segmentation_type)
    bits = np.asarray(bits)
    if bits.ndim not in (3, 4):
        raise ValueError(f"bits must be (S,S,S) or (N,S,S,S), got shape {bits.shape}")
    if t == 0:
        return np.ones(bits.shape, dtype=bool)
    m = (bits & np.uint8(L.SEGTYPE_BITS[t])) != 0
    if t == 11:
        mito = (bits & np.uint8(L.BIT_MITO_ANY)) != 0
        if mito.any():
            m &= ~dilate6(mito, L.MITO_DILATION_TYPE11)
    return m


@dataclass(frozen=True)
class RenderSettings:
    """How a stored cube becomes network input (or a picture): one value, checked once.

    x = minmax(raw) (or a z-score mapped to [0, 1], see ``intensity_normalization``); outside
    the mask of ``segmentation_type``: alpha*gray + (1-alpha)*x; then optional 8-bit
    quantisation (truncating, ``floor(255 x) / 255``), optional second min-max, and the value
    range ("0_1" or "-1_1"). See docs/architecture.md for where each option comes from and
    docs/cubes.md for the formulas.
    """

    segmentation_type: int
    alpha: float = 1.0
    gray_value: float = 0.6
    quantize_8bit: bool = False
    second_minmax: bool = False
    input_range: str = "0_1"
    intensity_normalization: str = "minmax"

    def __post_init__(self) -> None:
        object.__setattr__(self, "segmentation_type", check_segmentation_type(self.segmentation_type))
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be within [0, 1], got {self.alpha!r}")
        if not 0.0 <= float(self.gray_value) <= 1.0:
            raise ValueError(f"gray_value must be within [0, 1], got {self.gray_value!r}")
        if self.input_range not in INPUT_RANGES:
            raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {self.input_range!r}")
        if self.intensity_normalization not in INTENSITY_NORMALIZATIONS:
            raise ValueError(
                f"intensity_normalization must be one of {INTENSITY_NORMALIZATIONS}, got {self.intensity_normalization!r}"
            )
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "gray_value", float(self.gray_value))
        object.__setattr__(self, "quantize_8bit", bool(self.quantize_8bit))
        object.__setattr__(self, "second_minmax", bool(self.second_minmax))

    @classmethod
    def from_config(cls, cfg: object, segmentation_type: int | None = None) -> "RenderSettings":
        """The settings held by a parameter set (any object with these attributes)."""
        return cls(
            segmentation_type=getattr(cfg, "segmentation_type") if segmentation_type is None else segmentation_type,
            alpha=getattr(cfg, "alpha"), gray_value=getattr(cfg, "gray_value"),
            quantize_8bit=getattr(cfg, "quantize_8bit"), second_minmax=getattr(cfg, "second_minmax"),
            intensity_normalization=getattr(cfg, "intensity_normalization", "minmax"),
        )


def render(raw: np.ndarray, bits: np.ndarray, settings: RenderSettings, valid: np.ndarray | None = None) -> np.ndarray:
    """Network input (float32) for one cube (S,S,S) or a batch (N,S,S,S), scaled per cube.

    ``valid`` (bool, same shape, optional) marks the voxels inside the volume: the ``cube`` and
    ``mask`` normalisations take their statistics there only, so border padding does not
    shrink the standard deviation. ``minmax`` ignores it (padding holds the in-volume mean,
    which never changes a min-max).
    """
    raw = np.asarray(raw)
    bits = np.asarray(bits)
    if raw.shape != bits.shape or raw.ndim not in (3, 4):
        raise ValueError(f"raw {raw.shape} and bits {bits.shape} must both be (S,S,S) or (N,S,S,S)")
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != raw.shape:
            raise ValueError(f"valid mask {valid.shape} must have the shape of raw {raw.shape}")
    if raw.ndim == 4:
        # one cube at a time into one output: same result as broadcasting over the batch,
        # but the temporaries stay cube-sized (much faster than batch-sized temporaries)
        out = np.empty(raw.shape, dtype=np.float32)
        for i in range(raw.shape[0]):
            out[i] = _render_one(raw[i], bits[i], settings, None if valid is None else valid[i])
        return out
    return _render_one(raw, bits, settings, valid)


def truncate_to_8bit(x: np.ndarray) -> np.ndarray:
    """``floor(255 x) / 255`` in float32: truncation, as an 8-bit image conversion does.

    ``x`` lies in [0, 1]; 1.0 stays 1.0 and every float32 ``k / 255`` stays itself. Values are
    held within [0, 255] before the division, so rounding noise can never leave the range.
    """
    x = np.asarray(x, dtype=np.float32)
    levels = np.floor(x * np.float32(255))
    np.clip(levels, np.float32(0), np.float32(255), out=levels)
    return levels / np.float32(255)


def normalization_voxels(bits: np.ndarray, settings: RenderSettings, valid: np.ndarray | None,
                         mask: np.ndarray | None = None) -> np.ndarray | None:
    """Where the z-score statistics of one cube are taken (None = every voxel).

    ``cube``: the in-volume voxels (``valid``). ``mask``: the kept mask of the segmentation type
    inside the volume (type 0: the in-volume cube), or the in-volume cube when the mask has
    fewer than :data:`MIN_MASK_VOXELS` voxels. ``minmax`` takes no statistics: None.
    """
    how = settings.intensity_normalization
    if how == "minmax":
        return None
    if how == "mask" and settings.segmentation_type != 0:
        m = segmentation_mask(bits, settings.segmentation_type) if mask is None else mask
        if valid is not None:
            m = m & valid
        if np.count_nonzero(m) >= MIN_MASK_VOXELS:
            return m
    if valid is not None and np.count_nonzero(valid) > 0:
        return valid
    return None


def _render_one(raw: np.ndarray, bits: np.ndarray, s: RenderSettings, valid: np.ndarray | None = None) -> np.ndarray:
    blend = s.segmentation_type != 0 and s.alpha != 0.0
    need_mask = blend or (s.intensity_normalization == "mask" and s.segmentation_type != 0)
    m = segmentation_mask(bits, s.segmentation_type) if need_mask else None
    if s.intensity_normalization == "minmax":
        x = _minmax(raw)
    else:
        x = zscore_to_unit(raw, normalization_voxels(bits, s, valid, mask=m))
    if blend:
        a = np.float32(s.alpha)
        background = a * np.float32(s.gray_value) + (np.float32(1) - a) * x
        x = np.where(m, x, background)
    if s.quantize_8bit:
        x = truncate_to_8bit(x)
    if s.second_minmax:
        x = _minmax(x)
    if s.input_range == "-1_1":
        x = x * np.float32(2) - np.float32(1)
    return np.ascontiguousarray(x, dtype=np.float32)


# --------------------------------------------------------------------------------------
# the dataset level
# --------------------------------------------------------------------------------------
def describe_synapse(row: Mapping[str, object], fallback: str) -> str:
    """``"bbox b, synapse s, table row n"`` from a cube-table row; ``fallback`` if it names nothing."""
    parts = []
    for column, label in ((L.BBOX_COLUMN, "bbox"), (L.NAME_COLUMN, "synapse"), ("table_row", "table row")):
        value = row.get(column)
        if value is not None and not (isinstance(value, float) and value != value):
            parts.append(f"{label} {value}")
    return ", ".join(parts) if parts else fallback


NORMAL_COLUMNS: tuple[str, str, str] = ("cleft_normal_z", "cleft_normal_y", "cleft_normal_x")


def cleft_normal_axes(table: pd.DataFrame) -> np.ndarray:
    """int64 axis (0 z, 1 y, 2 x) of largest ``|cleft_normal_*|`` per row; 0 where it is missing.

    This is the axis exact 90-degree rotations about the cleft normal turn around (features
    averaged over rotations, :class:`synapse_nb.features.FeatureExtractor`). The
    ``cleft_normal_*`` columns are measured on the plain cube, so an oriented cube (``oriented``
    column true: rotated so the normal lies along z) gets axis 0 whatever they say.
    """
    n = len(table)
    oriented = np.zeros(n, dtype=bool)
    if "oriented" in table.columns:
        oriented = np.array([is_oriented({"oriented": v}) for v in table["oriented"]], dtype=bool)
    if not all(c in table.columns for c in NORMAL_COLUMNS):
        if n and not oriented.all():
            logger.info("the cube table has no cleft_normal_* columns: rotations turn about the z axis")
        return np.zeros(n, dtype=np.int64)
    normals = np.abs(table[list(NORMAL_COLUMNS)].to_numpy(dtype=np.float64))
    ok = (np.isfinite(normals).all(axis=1) & (normals.sum(axis=1) > 0)) | oriented
    axes = np.where(ok & ~oriented, np.argmax(np.where(np.isfinite(normals), normals, -1.0), axis=1), 0).astype(np.int64)
    if n and not ok.all():
        logger.info("%d of %d synapses have no cleft normal: their rotations turn about the z axis", int((~ok).sum()), n)
    return axes


class RenderedView:
    """Lazy rendered network input of a :class:`CubeSet`; rendered batch by batch on indexing."""

    def __init__(self, cubes: "CubeSet", indices: np.ndarray | None, settings: RenderSettings) -> None:
        self.cubes = cubes
        self.indices = np.arange(len(cubes)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(cubes)):
            raise IndexError(f"indices out of range for {len(cubes)} synapses")
        self.settings = settings
        S = cubes.geometry.size
        self.shape = (len(self.indices), S, S, S)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key) -> np.ndarray:
        """int -> (S,S,S); slice / index array -> (b,S,S,S) float32."""
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if i < 0:
                i += len(self)
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} out of range for {len(self)} synapses")
            return self._render(self.indices[i : i + 1])[0]
        if isinstance(key, slice):
            return self._render(self.indices[key])
        return self._render(self.indices[np.asarray(key, dtype=np.int64)])

    def _render(self, rows: np.ndarray) -> np.ndarray:
        S = self.cubes.geometry.size
        if rows.size == 0:
            return np.zeros((0, S, S, S), dtype=np.float32)
        # contiguous runs read as slices (cheap on memory maps)
        if np.all(np.diff(rows) == 1):
            raw = np.asarray(self.cubes.raw[rows[0] : rows[-1] + 1])
            bits = np.asarray(self.cubes.bits[rows[0] : rows[-1] + 1])
        else:
            raw = np.asarray(self.cubes.raw[rows])
            bits = np.asarray(self.cubes.bits[rows])
        valid = None
        if self.settings.intensity_normalization != "minmax":
            valid = np.stack([self._valid(int(r), raw[i]) for i, r in enumerate(rows)])
        return render(raw, bits, self.settings, valid=valid)

    def _valid(self, row: int, raw: np.ndarray) -> np.ndarray:
        """In-volume voxels of a stored cube, from its ``pad_*`` columns (all True without them).

        The pads of a plain cube are trusted only when every voxel they mark as padding holds
        the recorded ``pad_value`` (the builder's fill); otherwise the cube counts as wholly
        in-volume. An oriented cube's region comes from its rotation and source-window pads
        (:func:`~.geometry.valid_mask_from_pads`); its border voxels interpolate padding, so no
        such check applies there.
        """
        table = self.cubes.table
        S = raw.shape[0]
        info = table.iloc[row]
        if is_oriented(info):
            try:
                return valid_mask_from_pads(S, info)
            except (KeyError, ValueError):
                logger.debug("cube set row %d: oriented cube without its orient_* columns; statistics over the whole cube", row)
                return np.ones(raw.shape, dtype=bool)
        if not all(c in table.columns for c in _PAD_COLUMNS):
            return np.ones(raw.shape, dtype=bool)
        if all(int(info[c]) == 0 for c in _PAD_COLUMNS):
            return np.ones(raw.shape, dtype=bool)
        valid = valid_mask_from_pads(S, info)
        pad_value = float(info["pad_value"]) if "pad_value" in table.columns else float("nan")
        if valid.any() and np.all(raw[~valid].astype(np.float64) == pad_value):
            return valid
        logger.debug("cube set row %d: its pad_* columns do not match the stored raw; statistics over the whole cube", row)
        return np.ones(raw.shape, dtype=bool)

    def normal_axes(self) -> np.ndarray:
        """Per synapse of the view, the cube axis (0 z, 1 y, 2 x) closest to its cleft normal.

        See :func:`cleft_normal_axes`: oriented cubes (normal along z by construction) and
        synapses without a normal get axis 0.
        """
        return cleft_normal_axes(self.cubes.table.iloc[self.indices])

    def synapse_where(self, i: int) -> str:
        """How messages name the synapse at position ``i`` of this view (bbox, synapse, table row)."""
        row = int(self.indices[int(i)])
        return describe_synapse(self.cubes.table.iloc[row].to_dict(), fallback=f"cube set row {row}")

    def batches(self, batch_size: int = 16) -> Iterable[np.ndarray]:
        for start in range(0, len(self), batch_size):
            yield self[start : start + batch_size]

    def __repr__(self) -> str:
        return f"RenderedView(n={len(self)}, {self.settings})"
