"""Synapse cubes: the domain core (SPEC 4).

One stored cube serves every segmentation type and alpha. Per synapse we keep

* ``raw``  - the raw intensity cube in its native dtype (usually uint8), and
* ``bits`` - a uint8 cube of structure bits (:data:`synapse_nb.labels.BIT_PRE` ...),

and :func:`render` turns (raw, bits, segmentation type, alpha) into the network input with a
few vectorised numpy operations. Building reads one local window per volume and synapse,
never a full-volume pass.

Documented choices (SPEC 4 leaves them open)
--------------------------------------------
Windows
    *Decision box*: the ``S^3`` box centred on the cleft centre (clipped to the volume). The
    pre/post decision (closest vesicle cloud to the cleft centre, overlaps) and the smart
    crop's centre of mass of the presynaptic segment are computed inside it. The seg and
    mask windows read per synapse are the decision box grown by ``m = ceil(w*S/2)`` voxels on
    every side (``m = 0`` for the plain cleft crop), which is exactly enough to contain the
    final cube wherever the smart crop moves it. Raw is read once, for the final cube only.
    A side point outside that window is looked up with a one-voxel read.
Closest component
    6-connected components (:func:`scipy.ndimage.label`, default cross) of ``mask == L``; the
    component holding the L-voxel nearest (Euclidean) to the target point wins; equally near
    voxels of different components: the first in C order. For the structure bits of the
    final cube, components are computed inside the cube's in-volume part and "closest" means
    closest to the cube centre (voxel ``S//2`` on each axis): a structure is what the network
    sees, so a component that connects only outside the cube counts as two.
Pre/post tie rule
    Larger overlap with the closest vesicle cloud wins. On a tie (equal, including both 0)
    the synapse is flagged ``ambiguous`` and the side whose segment comes nearest to the
    vesicle cloud's centroid is chosen (no vesicle cloud, or still equal: side 1; only one
    side on a neurite: that side). The seed silently took side 2.
Crop centre
    ``round((1-w)*cleft + w*CoM)`` with round-half-up; the box is ``[c - S//2, c - S//2 + S)``.
Padding
    Where the box leaves the volume it is padded on the side where it leaves (so the synapse
    stays where it belongs in the cube); labels with 0, raw with the mean of the cube's
    in-volume raw voxels (rounded for integer dtypes) so padding never changes the per-cube
    min-max. Pad amounts and value are recorded in ``info``.
Type 11
    ``(closest cleft | pre) & ~dilate(all mitochondria in the cube)`` with a 6-connected
    dilation of 2 iterations (= scipy ``binary_dilation(iterations=2)``, city-block radius
    2). Mitochondria just outside the cube are not seen (affects its outer 2-voxel shell).
Intensity
    per cube min-max of raw to [0, 1] (constant cube -> 0), blend outside the mask
    ``a*g + (1-a)*x``, then optionally 8-bit quantisation ``round(255*x)/255``
    (numpy rounding, half to even; ``quantize_8bit``, default False), then optionally a second per-cube min-max
    (``second_minmax``, default False), then ``input_range`` "0_1" (as is) or "-1_1"
    (``2x - 1``). Defaults False/False: the plain SPEC formula, nothing hidden.
Morphometrics (voxels; physical units in :func:`add_physical_units`)
    ``vesicle_volume_vox`` closest vesicle component in the cube; ``cleft_volume_vox``
    closest cleft | closest cleft2; ``cleft_area_vox`` the area of the cleft's best-fit (PCA)
    plane it covers, in voxel faces: a projection along axis a covers |n_a| * area, so the
    area is (distinct voxel columns along a) / |n_a|, taking the smallest value over the
    axes (thickness only ever adds columns). Exact for axis-aligned sheets of any thickness,
    within a few % for tilted flat sheets, an estimate for curved clefts; ``pre_volume_vox`` /
    ``post_volume_vox`` segment voxels in the cube; ``mito_near_pre_volume_vox`` mitochondrion
    voxels of the cube inside the presynaptic segment dilated by 2 voxels (6-connected),
    i.e. mitochondria inside or touching the presynaptic neurite.
Missing data (real datasets, SPEC 3.2)
    Label id 0 means "not annotated": it never matches the background, so that structure's
    bits stay empty. Without a seg volume, or with both side points empty (NaN), the synapse
    is still built with empty pre/post (``pre_side`` 0) and flagged ambiguous ("no side
    points" / "no neurite segmentation"); with one side empty, the other side is used as
    with a side on background. Which segmentation types a dataset can serve at all is
    decided up front (:func:`synapse_nb.dataset.require_segmentation_type`; the smart crop,
    which needs the presynaptic side, by :func:`synapse_nb.dataset.require_crop_mode`).
Anisotropic voxels
    With ``target_voxel_nm`` set and a different data voxel, the volumes are wrapped in
    :class:`synapse_nb.volumes.ResampledVolume` (per-window resampling: raw linear, labels
    nearest; voxel centres coincide physically) and the table points are mapped exactly onto
    that grid; the cube is then built as above on the isotropic grid, so padding, centring and
    morphometrics (physical units with the target voxel) are unchanged. Each table row records
    ``native_voxel_{z,y,x}_nm``, ``cube_voxel_{z,y,x}_nm`` and ``resampled``.
Dataset level
    :func:`build_cubes` visits each bbox's synapses in z order (neighbouring windows share
    slices of a lazy reader) but keeps table order in the result, and drops a reader's slice
    cache once its bbox is done, so memory stays at about one bbox's cache plus the cubes.
    :meth:`CubeSet.save` writes a sibling temporary folder and renames it into place.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from . import labels as L
from .atomic import atomic_dir
from .io import BboxData, DataError
from .progress import progress as progress_bar
from .volumes import ResampledVolume, native_to_target, needs_resampling

if TYPE_CHECKING:
    from .config import Config
    from .runs import Run

logger = logging.getLogger(__name__)

CROP_MODES = ("cleft", "presynapse")
INPUT_RANGES = ("0_1", "-1_1")
CUBESET_FORMAT = 1

#: Morphometric keys in voxel units (info / table columns).
MORPHOMETRIC_VOXEL_KEYS = (
    "vesicle_volume_vox",
    "cleft_volume_vox",
    "cleft_area_vox",
    "pre_volume_vox",
    "post_volume_vox",
    "mito_near_pre_volume_vox",
)
#: Vesicle-cloud and cleft sizes in physical units: what SPEC 9 relates to clusters.
SIZE_COLUMNS = ("vesicle_volume_nm3", "cleft_volume_nm3", "cleft_area_nm2")
_PHYSICAL_NAMES = {
    "vesicle_volume_vox": "vesicle_volume_nm3",
    "cleft_volume_vox": "cleft_volume_nm3",
    "pre_volume_vox": "pre_volume_nm3",
    "post_volume_vox": "post_volume_nm3",
    "mito_near_pre_volume_vox": "mito_near_pre_volume_nm3",
}


# --------------------------------------------------------------------------------------
# configuration and results
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CubeGeometry:
    """How a cube is cut out around a synapse."""

    size: int = 80  # cube edge in voxels
    crop_mode: str = "cleft"  # "cleft" (centred on the cleft) or "presynapse" (smart crop)
    presynapse_weight: float = 0.7  # w: centre = (1-w)*cleft + w*CoM(presynaptic segment)

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size < 2:
            raise ValueError(f"cube size must be an integer >= 2, got {self.size!r}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if not 0.0 <= float(self.presynapse_weight) <= 1.0:
            raise ValueError(f"presynapse_weight must be within [0, 1], got {self.presynapse_weight!r}")

    @property
    def margin(self) -> int:
        """Extra window half-width the smart crop may move the cube by."""
        if self.crop_mode == "cleft":
            return 0
        return int(math.ceil(float(self.presynapse_weight) * self.size / 2))

    def as_dict(self) -> dict:
        return {"size": int(self.size), "crop_mode": self.crop_mode, "presynapse_weight": float(self.presynapse_weight)}


class SynapseError(ValueError):
    """One synapse cannot be built; the message names bbox, synapse, table row and why."""


@dataclass
class SynapseCube:
    """One synapse: raw cube, structure bits and what was decided while building it."""

    raw: np.ndarray  # (S,S,S) native dtype, padded where the cube leaves the volume
    bits: np.ndarray  # (S,S,S) uint8 structure bits (labels.BIT_*)
    valid: np.ndarray | None = None  # not stored: see valid_mask() (the pads describe it)
    info: dict = field(default_factory=dict)

    def valid_mask(self) -> np.ndarray:
        """Boolean (S,S,S): True where the cube lies inside the volume."""
        return valid_mask_from_pads(self.raw.shape[0], self.info)

    def render(self, segmentation_type: int, alpha: float = 1.0, **kwargs) -> np.ndarray:
        return render(self.raw, self.bits, segmentation_type, alpha=alpha, **kwargs)


def valid_mask_from_pads(size: int, info: dict) -> np.ndarray:
    out = np.zeros((size,) * 3, dtype=bool)
    sl = tuple(slice(int(info[f"pad_{a}_before"]), size - int(info[f"pad_{a}_after"])) for a in "zyx")
    out[sl] = True
    return out


# --------------------------------------------------------------------------------------
# small vectorised helpers
# --------------------------------------------------------------------------------------
def dilate6(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """6-connected binary dilation over the last three axes (border = 0).

    Same result as ``scipy.ndimage.binary_dilation(mask, iterations=n)`` on one cube, but
    works on a batch (N,S,S,S) without dilating across cubes.
    """
    out = np.array(mask, dtype=bool, copy=True)
    if iterations <= 0 or not out.any():
        return out
    nd = out.ndim
    for _ in range(iterations):
        src = out.copy()
        for axis in range(nd - 3, nd):
            lo = [slice(None)] * nd
            hi = [slice(None)] * nd
            lo[axis] = slice(None, -1)
            hi[axis] = slice(1, None)
            out[tuple(hi)] |= src[tuple(lo)]
            out[tuple(lo)] |= src[tuple(hi)]
    return out


def closest_component(binary: np.ndarray, target: Sequence[float]) -> np.ndarray:
    """Boolean mask of the 6-connected component of ``binary`` nearest to ``target``.

    Nearest = smallest Euclidean distance from any of its voxels to the target (index
    coordinates of ``binary``). Empty mask if ``binary`` has no voxel.
    """
    out = np.zeros(binary.shape, dtype=bool)
    idx = np.flatnonzero(binary)
    if idx.size == 0:
        return out
    coords = np.unravel_index(idx, binary.shape)
    t = np.asarray(target, dtype=np.float64).reshape(3)
    if np.all(t == np.floor(t)):  # integer target: exact integer arithmetic
        d2 = sum((c - int(v)) ** 2 for c, v in zip(coords, t))
    else:
        d2 = sum((c - v) ** 2 for c, v in zip(coords, t))
    k = int(np.argmin(d2))
    lo = [int(c.min()) for c in coords]
    hi = [int(c.max()) + 1 for c in coords]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = binary[box]
    lab, n = ndimage.label(sub)
    if n == 1:
        out[box] = sub
        return out
    seed = tuple(int(c[k]) - a for c, a in zip(coords, lo))
    out[box] = lab == lab[seed]
    return out


def _minmax(x: np.ndarray) -> np.ndarray:
    """Min-max of one cube to [0, 1] in float32; a constant cube becomes zeros."""
    mn = np.float32(x.min())
    rng = np.float32(x.max()) - mn
    if rng <= 0:
        return np.zeros(x.shape, dtype=np.float32)
    return (x.astype(np.float32) - mn) / rng


def _round_half_up(v: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)


# --------------------------------------------------------------------------------------
# masks and rendering
# --------------------------------------------------------------------------------------
def _check_type(segmentation_type: int) -> int:
    t = int(segmentation_type)
    if t not in L.SEGMENTATION_TYPES:
        raise ValueError(
            f"segmentation_type {segmentation_type!r} is unknown; choose one of {sorted(L.SEGMENTATION_TYPES)}"
        )
    return t


def segmentation_mask(bits: np.ndarray, segmentation_type: int) -> np.ndarray:
    """Boolean mask M of a segmentation type from structure bits; (S,S,S) or (N,S,S,S)."""
    t = _check_type(segmentation_type)
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


def render(
    raw: np.ndarray,
    bits: np.ndarray,
    segmentation_type: int,
    alpha: float = 1.0,
    gray_value: float = 0.6,
    quantize_8bit: bool = False,
    second_minmax: bool = False,
    input_range: str = "0_1",
) -> np.ndarray:
    """Network input (float32) for one cube (S,S,S) or a batch (N,S,S,S), per-cube scaling.

    x = minmax(raw); outside M: alpha*gray + (1-alpha)*x; then optional 8-bit quantisation,
    optional second min-max, and the value range ("0_1" or "-1_1").
    """
    t = _check_type(segmentation_type)
    raw = np.asarray(raw)
    bits = np.asarray(bits)
    if raw.shape != bits.shape or raw.ndim not in (3, 4):
        raise ValueError(f"raw {raw.shape} and bits {bits.shape} must both be (S,S,S) or (N,S,S,S)")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha!r}")
    if not 0.0 <= float(gray_value) <= 1.0:
        raise ValueError(f"gray_value must be within [0, 1], got {gray_value!r}")
    if input_range not in INPUT_RANGES:
        raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {input_range!r}")
    if raw.ndim == 4:
        # one cube at a time into one output: same result as broadcasting over the batch,
        # but the temporaries stay cube-sized (much faster than batch-sized temporaries)
        out = np.empty(raw.shape, dtype=np.float32)
        for i in range(raw.shape[0]):
            out[i] = _render_one(raw[i], bits[i], t, alpha, gray_value, quantize_8bit, second_minmax, input_range)
        return out
    return _render_one(raw, bits, t, alpha, gray_value, quantize_8bit, second_minmax, input_range)


def _render_one(raw, bits, t, alpha, gray_value, quantize_8bit, second_minmax, input_range) -> np.ndarray:
    x = _minmax(raw)
    if t != 0 and float(alpha) != 0.0:
        m = segmentation_mask(bits, t)
        a = np.float32(alpha)
        background = a * np.float32(gray_value) + (np.float32(1) - a) * x
        x = np.where(m, x, background)
    if quantize_8bit:
        x = np.round(x * np.float32(255)) / np.float32(255)
    if second_minmax:
        x = _minmax(x)
    if input_range == "-1_1":
        x = x * np.float32(2) - np.float32(1)
    return np.ascontiguousarray(x, dtype=np.float32)


# --------------------------------------------------------------------------------------
# morphometrics
# --------------------------------------------------------------------------------------
def cleft_area(cleft: np.ndarray) -> tuple[float, np.ndarray]:
    """Area (voxel faces) of a cleft's best-fit plane covered by it, and the unit normal (z,y,x).

    min over axes a of (distinct voxel columns along a) / |n_a|, n = PCA plane normal.
    """
    coords = np.argwhere(cleft)
    n = len(coords)
    if n == 0:
        return 0.0, np.full(3, np.nan)
    pts = coords.astype(np.float64)
    if n < 3:
        normal = np.array([1.0, 0.0, 0.0])
    else:
        cov = np.cov(pts, rowvar=False)
        _, vecs = np.linalg.eigh(cov)
        normal = vecs[:, 0]
        # snap numerical noise so axis-aligned sheets stay exactly axis-aligned
        normal = np.where(np.abs(normal) < 1e-9, 0.0, normal)
        normal = normal / np.linalg.norm(normal)
    dom = int(np.argmax(np.abs(normal)))
    if normal[dom] < 0:
        normal = -normal
    # Each projection of a sheet onto a coordinate plane covers |n_a| * area plus a smear
    # from the sheet's thickness; the smallest estimate is the tightest (for near
    # axis-aligned sheets that is the dominant axis, and it is exact there).
    ints = coords.astype(np.int64)
    best = math.inf
    for a in range(3):
        if abs(normal[a]) < 1e-6:
            continue
        u, v = [b for b in range(3) if b != a]
        keys = ints[:, u] * (int(ints[:, v].max()) + 1) + ints[:, v]
        best = min(best, np.unique(keys).size / abs(normal[a]))
    return float(best), normal


def morphometrics(bits: np.ndarray) -> dict:
    """Per-synapse sizes in voxels from one bits cube (see the module doc for definitions)."""
    bits = np.asarray(bits)
    ves = (bits & np.uint8(L.BIT_VESICLE)) != 0
    cleft = (bits & np.uint8(L.BIT_CLEFT | L.BIT_CLEFT2)) != 0
    pre = (bits & np.uint8(L.BIT_PRE)) != 0
    post = (bits & np.uint8(L.BIT_POST)) != 0
    mito = (bits & np.uint8(L.BIT_MITO_ANY)) != 0
    area, normal = cleft_area(cleft)
    mito_near = 0
    if mito.any() and pre.any():
        # Only pre voxels within the mitochondria's bounding box + 2 can reach a mitochondrion
        # voxel in two 6-connected steps, so dilate that box only: same count, less work.
        mz = np.nonzero(mito)
        mlo = np.array([int(c.min()) for c in mz])
        mhi = np.array([int(c.max()) + 1 for c in mz])
        glo = np.maximum(mlo - 2, 0)
        ghi = np.minimum(mhi + 2, np.array(pre.shape))
        grown = dilate6(pre[_box(glo, ghi)], 2)
        mito_near = int(np.count_nonzero(mito[_box(mlo, mhi)] & grown[_box(mlo - glo, mhi - glo)]))
    return {
        "vesicle_volume_vox": int(np.count_nonzero(ves)),
        "cleft_volume_vox": int(np.count_nonzero(cleft)),
        "cleft_area_vox": area,
        "pre_volume_vox": int(np.count_nonzero(pre)),
        "post_volume_vox": int(np.count_nonzero(post)),
        "mito_near_pre_volume_vox": mito_near,
        "cleft_normal_z": float(normal[0]),
        "cleft_normal_y": float(normal[1]),
        "cleft_normal_x": float(normal[2]),
    }


def add_physical_units(table: pd.DataFrame, voxel_size_nm: Sequence[float]) -> pd.DataFrame:
    """Add nm^3 / nm^2 columns next to the voxel morphometrics (voxel size in z, y, x).

    The cleft area uses Nanson's formula for its plane normal n (voxel index space):
    area_nm2 = area_vox * det(D) * |D^-1 n| with D = diag(voxel size), exact for flat clefts
    and also for anisotropic voxels.
    """
    vz, vy, vx = (float(v) for v in voxel_size_nm)
    if min(vz, vy, vx) <= 0:
        raise ValueError(f"voxel_size_nm must be positive (z, y, x), got {voxel_size_nm!r}")
    out = table.copy()
    vol = vz * vy * vx
    for vox, phys in _PHYSICAL_NAMES.items():
        if vox in out:
            out[phys] = out[vox].astype(float) * vol
    if "cleft_area_vox" in out:
        n = out[["cleft_normal_z", "cleft_normal_y", "cleft_normal_x"]].to_numpy(dtype=float)
        scale = vol * np.sqrt((n[:, 0] / vz) ** 2 + (n[:, 1] / vy) ** 2 + (n[:, 2] / vx) ** 2)
        scale = np.where(np.isfinite(scale), scale, 0.0)
        out["cleft_area_nm2"] = out["cleft_area_vox"].astype(float) * scale
    return out


# --------------------------------------------------------------------------------------
# building one synapse
# --------------------------------------------------------------------------------------
def _xyz_to_zyx(p: Sequence[float]) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64).reshape(-1)
    if arr.size != 3 or not np.all(np.isfinite(arr)):
        raise ValueError(f"expected 3 finite coordinates (x, y, z), got {p!r}")
    return _round_half_up(arr[::-1])


def _side_is_missing(p: Sequence[float] | None) -> bool:
    """A side point with all three coordinates empty (NaN) or None: partner unknown."""
    if p is None:
        return True
    try:
        arr = np.asarray(p, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return False
    return arr.size == 3 and bool(np.all(np.isnan(arr)))


def _fmt_xyz(zyx: np.ndarray) -> str:
    return f"(x={int(zyx[2])}, y={int(zyx[1])}, z={int(zyx[0])})"


def _where(bbox, synapse, table_row) -> str:
    parts = [f"bbox {bbox if bbox is not None else '?'}", f"synapse {synapse if synapse is not None else '?'}"]
    if table_row is not None:
        parts.append(f"table row {table_row}")
    return ", ".join(parts)


def _inside(p: np.ndarray, shape: Sequence[int]) -> bool:
    return bool(np.all(p >= 0) and np.all(p < np.asarray(shape)))


def _box(lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice]:
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def _count_overlap(seg_box: np.ndarray, seg_id: int, comp_idx: tuple[np.ndarray, ...] | None) -> int:
    if seg_id == 0 or comp_idx is None or comp_idx[0].size == 0:
        return 0
    return int(np.count_nonzero(seg_box[comp_idx] == seg_id))


def _nearest_d2(seg_box: np.ndarray, seg_id: int, point: np.ndarray) -> float:
    coords = np.nonzero(seg_box == seg_id)
    if coords[0].size == 0:
        return math.inf
    d2 = sum((c - float(p)) ** 2 for c, p in zip(coords, point))
    return float(d2.min())


def check_points(
    where: str,
    shape: Sequence[int],
    center_xyz: Sequence[float],
    side1_xyz: Sequence[float] | None,
    side2_xyz: Sequence[float] | None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Centre and side points as (z, y, x) voxel indices, checked against ``shape``.

    A side given as None or as three empty (NaN) coordinates is returned as None (partner
    unknown); anything else that is not three finite numbers is an error.
    """
    try:
        c = _xyz_to_zyx(center_xyz)
        s1 = None if _side_is_missing(side1_xyz) else _xyz_to_zyx(side1_xyz)  # type: ignore[arg-type]
        s2 = None if _side_is_missing(side2_xyz) else _xyz_to_zyx(side2_xyz)  # type: ignore[arg-type]
    except ValueError as exc:
        raise SynapseError(f"{where}: bad coordinates: {exc}; fix the synapse table") from exc
    vol_xyz = f"(x < {shape[2]}, y < {shape[1]}, z < {shape[0]})"
    if not _inside(c, shape):
        raise SynapseError(
            f"{where}: central coordinate {_fmt_xyz(c)} lies outside the volume {vol_xyz}; "
            "fix central_coord_1..3 (x, y, z in bbox voxels) in the synapse table"
        )
    for k, s in ((1, s1), (2, s2)):
        if s is not None and not _inside(s, shape):
            raise SynapseError(
                f"{where}: side {k} point {_fmt_xyz(s)} lies outside the volume {vol_xyz}; "
                f"fix side_{k}_coord_1..3 (x, y, z) in the synapse table"
            )
    return c, s1, s2


def build_synapse(
    raw,
    seg,
    mask,
    center_xyz: Sequence[float],
    side1_xyz: Sequence[float],
    side2_xyz: Sequence[float],
    ids: L.LabelIds,
    geometry: CubeGeometry = CubeGeometry(),
    *,
    bbox: str | None = None,
    synapse: str | None = None,
    table_row: int | None = None,
) -> SynapseCube:
    """Cut one synapse out of lazy volumes indexed [z, y, x]; coordinates are (x, y, z).

    Reads one window per volume (see the module doc). Raises :class:`SynapseError` naming
    ``bbox``, ``synapse`` and ``table_row`` when the synapse cannot be built.
    """
    where = _where(bbox, synapse, table_row)
    shape = tuple(int(s) for s in raw.shape)
    if len(shape) != 3:
        raise SynapseError(f"{where}: raw volume must be 3-D (z, y, x), got shape {shape}")
    other = {k: tuple(v.shape) for k, v in (("seg", seg), ("mask", mask)) if v is not None}
    if any(v != shape for v in other.values()):
        detail = ", ".join(f"{k} {v}" for k, v in other.items())
        raise SynapseError(f"{where}: raw {shape} and {detail} volumes differ in shape; fix the input volumes")
    c, s1, s2 = check_points(where, shape, center_xyz, side1_xyz, side2_xyz)
    vol_xyz = f"(x < {shape[2]}, y < {shape[1]}, z < {shape[0]})"

    S = int(geometry.size)
    h = S // 2
    m = geometry.margin
    shp = np.asarray(shape)
    # one window per label volume: the decision box grown by the smart-crop margin
    win_lo = np.maximum(c - h - m, 0)
    win_hi = np.minimum(c - h + S + m, shp)
    seg_w = np.asarray(seg[_box(win_lo, win_hi)]) if seg is not None else None
    mask_w = np.asarray(mask[_box(win_lo, win_hi)]) if mask is not None else None

    def seg_at(p: np.ndarray | None) -> int:
        if p is None or seg_w is None:
            return 0
        q = p - win_lo
        if np.all(q >= 0) and np.all(q < seg_w.shape):
            return int(seg_w[tuple(q)])
        return int(np.asarray(seg[_box(p, p + 1)]).reshape(-1)[0])  # one-voxel read

    id1, id2 = seg_at(s1), seg_at(s2)
    reasons: list[str] = []
    if seg is None:
        reasons.append("no neurite segmentation in this dataset: pre/post empty")
    elif s1 is None and s2 is None:
        reasons.append("no side points: pre/post empty")
    elif s1 is not None and s2 is not None:
        if id1 == 0 and id2 == 0:
            raise SynapseError(
                f"{where}: both side points {_fmt_xyz(s1)} and {_fmt_xyz(s2)} lie on background (seg id 0), "
                "so pre/post cannot be decided; move side_1/side_2 coordinates inside the partner neurites"
            )
        if id1 == id2:
            raise SynapseError(
                f"{where}: both side points {_fmt_xyz(s1)} and {_fmt_xyz(s2)} lie in the same segment (id {id1}), "
                "so pre/post cannot be decided; put each side point inside a different partner neurite"
            )
    else:
        reasons.append(f"side {1 if s1 is None else 2} point missing")

    # --- decision box: cleft-centred S^3 (clipped) ------------------------------------
    dec_lo = np.maximum(c - h, 0)
    dec_hi = np.minimum(c - h + S, shp)
    dbox = _box(dec_lo - win_lo, dec_hi - win_lo)
    seg_d = seg_w[dbox] if seg_w is not None else None
    mask_d = mask_w[dbox] if mask_w is not None else None
    c_d = c - dec_lo
    vesicle_known = mask_d is not None and int(ids.vesicle) != 0  # label id 0 = not annotated
    ves_d = closest_component(mask_d == ids.vesicle, c_d) if vesicle_known else np.zeros(dec_hi - dec_lo, dtype=bool)
    ves_idx = np.nonzero(ves_d)
    ov1 = _count_overlap(seg_d, id1, ves_idx)
    ov2 = _count_overlap(seg_d, id2, ves_idx)
    for k, sid, s in ((1, id1, s1), (2, id2, s2)):
        if sid == 0 and s is not None and seg is not None:
            reasons.append(f"side {k} point {_fmt_xyz(s)} lies on background (seg id 0)")
    if id1 == 0 and id2 == 0:
        pass  # no partner known: nothing to decide
    elif not vesicle_known:
        reasons.append("no vesicle-cloud label in this dataset")
    elif ves_idx[0].size == 0:
        reasons.append("no vesicle cloud in the cleft-centred window")
    if id1 == 0 and id2 == 0:
        pre_side = 0
    elif ov1 != ov2:
        pre_side = 1 if ov1 > ov2 else 2
    else:
        reasons.append(f"pre/post tie: both sides overlap the closest vesicle cloud by {ov1} voxels")
        if id1 == 0 or id2 == 0:
            pre_side = 1 if id1 != 0 else 2
            reasons.append(f"chose side {pre_side}, the only side on a neurite")
        elif ves_idx[0].size:
            centroid = np.array([i.mean() for i in ves_idx])
            d1, d2 = _nearest_d2(seg_d, id1, centroid), _nearest_d2(seg_d, id2, centroid)
            if d1 == d2:
                pre_side = 1
                reasons.append("both segments equally near the vesicle-cloud centroid: chose side 1 by convention")
            else:
                pre_side = 1 if d1 < d2 else 2
                reasons.append(f"chose side {pre_side}, whose segment is nearer to the vesicle-cloud centroid")
        else:
            pre_side = 1
            reasons.append("chose side 1 by convention")
    pre_id, post_id = (id1, id2) if pre_side == 1 else (id2, id1) if pre_side == 2 else (0, 0)

    # --- crop centre ------------------------------------------------------------------
    if geometry.crop_mode == "presynapse" and pre_id != 0 and geometry.presynapse_weight > 0:
        pre_d = seg_d == pre_id
        total = int(np.count_nonzero(pre_d))
        if total:
            com = np.array(
                [
                    (pre_d.sum(axis=tuple(a for a in range(3) if a != ax)) * np.arange(pre_d.shape[ax])).sum() / total
                    for ax in range(3)
                ]
            ) + dec_lo
            w = float(geometry.presynapse_weight)
            center = _round_half_up((1.0 - w) * c + w * com)
        else:
            center = c.copy()
            reasons.append("presynaptic segment absent from the cleft-centred window: cube centred on the cleft")
    else:
        center = c.copy()

    # --- final cube -------------------------------------------------------------------
    lo = center - h
    hi = lo + S
    vlo = np.maximum(lo, 0)
    vhi = np.minimum(hi, shp)
    if np.any(vhi <= vlo):
        raise SynapseError(f"{where}: the cube around {_fmt_xyz(center)} does not overlap the volume {vol_xyz}")
    if np.any(vlo < win_lo) or np.any(vhi > win_hi):  # cannot happen by construction
        raise AssertionError(f"{where}: cube {lo}..{hi} escapes the window {win_lo}..{win_hi}")
    pad_before = vlo - lo
    pad_after = hi - vhi
    raw_v = np.asarray(raw[_box(vlo, vhi)])
    if raw_v.size == 0:
        raise SynapseError(f"{where}: empty raw window around {_fmt_xyz(center)}; check the raw volume")
    cbox = _box(vlo - win_lo, vhi - win_lo)
    seg_c = seg_w[cbox] if seg_w is not None else None
    mask_c = mask_w[cbox] if mask_w is not None else None
    target = (S // 2) - pad_before  # cube centre in the in-volume part's coordinates

    bits_v = np.zeros(tuple(int(v) for v in vhi - vlo), dtype=np.uint8)

    def put(sel: np.ndarray, bit: int) -> None:
        np.bitwise_or(bits_v, np.uint8(bit), out=bits_v, where=sel)

    if pre_id:
        put(seg_c == pre_id, L.BIT_PRE)
    if post_id:
        put(seg_c == post_id, L.BIT_POST)
    same_region = bool(np.all(vlo == dec_lo) and np.all(vhi == dec_hi) and np.all(center == c))
    cache: dict[int, np.ndarray] = {}
    if same_region:
        cache[int(ids.vesicle)] = ves_d  # same region, same target: reuse

    def closest(label: int) -> np.ndarray:
        label = int(label)
        if label == 0 or mask_c is None:  # 0 = not annotated, never the background
            return np.zeros(bits_v.shape, dtype=bool)
        if label not in cache:
            cache[label] = closest_component(mask_c == label, target)
        return cache[label]

    put(closest(ids.vesicle), L.BIT_VESICLE)
    put(closest(ids.cleft), L.BIT_CLEFT)
    put(closest(ids.cleft2), L.BIT_CLEFT2)
    mito_any = (mask_c == ids.mito) if (mask_c is not None and int(ids.mito) != 0) else np.zeros(bits_v.shape, dtype=bool)
    if mito_any.any():
        put(mito_any, L.BIT_MITO_ANY)
        put(closest_component(mito_any, target), L.BIT_MITO)

    # --- pad into the S^3 cube ---------------------------------------------------------
    inner = _box(pad_before, S - pad_after)
    padded = bool(np.any(pad_before) or np.any(pad_after))
    if np.issubdtype(raw_v.dtype, np.integer):
        pad_value = int(_round_half_up(raw_v.mean()))
    else:
        pad_value = float(raw_v.mean())
    if padded:
        raw_cube = np.full((S, S, S), pad_value, dtype=raw_v.dtype)
        raw_cube[inner] = raw_v
        bits = np.zeros((S, S, S), dtype=np.uint8)
        bits[inner] = bits_v
    else:
        raw_cube, bits = np.ascontiguousarray(raw_v), bits_v

    info: dict = {
        "pre_side": int(pre_side),
        "pre_seg_id": int(pre_id),
        "post_seg_id": int(post_id),
        "side1_seg_id": int(id1),
        "side2_seg_id": int(id2),
        "overlap_side1": int(ov1),
        "overlap_side2": int(ov2),
        "ambiguous": bool(reasons),
        "ambiguity_reason": "; ".join(reasons),
        "crop_mode": geometry.crop_mode,
        "cube_center_z": int(center[0]),
        "cube_center_y": int(center[1]),
        "cube_center_x": int(center[2]),
    }
    for i, a in enumerate("zyx"):
        info[f"pad_{a}_before"] = int(pad_before[i])
        info[f"pad_{a}_after"] = int(pad_after[i])
    info["pad_value"] = float(pad_value) if padded else float("nan")
    info.update(morphometrics(bits))
    return SynapseCube(raw=raw_cube, bits=bits, valid=None, info=info)


# --------------------------------------------------------------------------------------
# the dataset level
# --------------------------------------------------------------------------------------
class RenderedView:
    """Lazy rendered network input of a :class:`CubeSet`; rendered batch by batch on indexing."""

    def __init__(self, cubes: "CubeSet", indices: np.ndarray | None, **params) -> None:
        self.cubes = cubes
        self.indices = np.arange(len(cubes)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(cubes)):
            raise IndexError(f"indices out of range for {len(cubes)} synapses")
        self.params = params
        _check_type(params["segmentation_type"])
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
        return render(raw, bits, **self.params)

    def batches(self, batch_size: int = 16) -> Iterable[np.ndarray]:
        for start in range(0, len(self), batch_size):
            yield self[start : start + batch_size]

    def __repr__(self) -> str:
        return f"RenderedView(n={len(self)}, {self.params})"


@dataclass
class CubeSet:
    """All synapse cubes of a dataset plus one table row per built synapse."""

    raw: np.ndarray  # (N,S,S,S) native dtype
    bits: np.ndarray  # (N,S,S,S) uint8
    table: pd.DataFrame  # one row per built synapse (input columns, info, morphometrics)
    skipped: pd.DataFrame  # bbox, Var1, table_row, reason
    geometry: CubeGeometry = CubeGeometry()
    voxel_size_nm: tuple[float, float, float] = (8.0, 8.0, 8.0)  # z, y, x
    #: segmentation type -> why the dataset cannot serve it (kept with the cubes, so a later
    #: step asked for such a type refuses it as 01_load did)
    refused_types: dict[int, str] = field(default_factory=dict)

    def require_type(self, segmentation_type: int) -> None:
        """Raise a :class:`DataError` when the cubes' dataset cannot serve this type."""
        t = int(segmentation_type)
        if t in self.refused_types:
            ok = ", ".join(str(s) for s in L.SEGMENTATION_TYPES if s not in self.refused_types)
            raise DataError(
                f"segmentation type {t} ({L.SEGMENTATION_TYPE_SHORT[t]}) {self.refused_types[t]}. "
                f"Types these cubes support: {ok}"
            )

    def __post_init__(self) -> None:
        n = len(self.table)
        S = self.geometry.size
        if self.raw.shape != (n, S, S, S) or self.bits.shape != (n, S, S, S):
            raise ValueError(
                f"CubeSet arrays {self.raw.shape} / {self.bits.shape} do not match {n} table rows of {S}^3 cubes"
            )

    def __len__(self) -> int:
        return len(self.table)

    def rendered(
        self,
        segmentation_type: int,
        alpha: float = 1.0,
        gray_value: float = 0.6,
        quantize_8bit: bool = False,
        second_minmax: bool = False,
        input_range: str = "0_1",
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> RenderedView:
        """Lazy view of the network input for one segmentation type / alpha (optionally a row subset)."""
        return RenderedView(
            self,
            None if indices is None else np.asarray(indices),
            segmentation_type=int(segmentation_type),
            alpha=float(alpha),
            gray_value=float(gray_value),
            quantize_8bit=bool(quantize_8bit),
            second_minmax=bool(second_minmax),
            input_range=input_range,
        )

    def empty_mask_rows(self, segmentation_type: int, batch_size: int = 64) -> np.ndarray:
        """Row indices whose mask is empty for this type (SPEC 13: report/skip them)."""
        t = _check_type(segmentation_type)
        if t == 0 or len(self) == 0:
            return np.zeros(0, dtype=np.int64)
        empty = []
        for start in range(0, len(self), batch_size):
            bits = np.asarray(self.bits[start : start + batch_size])
            if t == 11:
                has = segmentation_mask(bits, t).any(axis=(1, 2, 3))
            else:
                has = ((bits & np.uint8(L.SEGTYPE_BITS[t])) != 0).any(axis=(1, 2, 3))
            empty.append(np.flatnonzero(~has) + start)
        return np.concatenate(empty).astype(np.int64)

    def empty_mask_report(self, segmentation_type: int) -> pd.DataFrame:
        """The synapses an empty mask excludes for this type, with a reason (for the run log)."""
        rows = self.empty_mask_rows(segmentation_type)
        cols = [c for c in (L.BBOX_COLUMN, L.NAME_COLUMN, "table_row") if c in self.table]
        out = self.table.iloc[rows][cols].reset_index(drop=True)
        out["reason"] = (
            f"empty mask for segmentation type {int(segmentation_type)} "
            f"({L.SEGMENTATION_TYPES[int(segmentation_type)]}): that structure is absent from the cube"
        )
        return out

    # --- persistence -----------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write raw.npy, bits.npy, table.parquet, skipped.parquet and meta.json.

        Everything is written into a temporary sibling folder first and then renamed into
        place, so a crash never leaves a mix of old and new files; a previous version is kept
        under a ``.old-*`` name until the new one is in place.
        """
        folder = Path(folder)
        if folder.exists() and not (folder / "meta.json").is_file() and (not folder.is_dir() or any(folder.iterdir())):
            raise DataError(
                f"refusing to overwrite {folder}: it exists and is not a saved cube set; choose another folder"
            )
        with atomic_dir(folder) as tmp:
            with open(tmp / "raw.npy", "wb") as f:
                np.save(f, np.asarray(self.raw))
            with open(tmp / "bits.npy", "wb") as f:
                np.save(f, np.asarray(self.bits))
            self.table.reset_index(drop=True).to_parquet(tmp / "table.parquet", index=False)
            self.skipped.reset_index(drop=True).to_parquet(tmp / "skipped.parquet", index=False)
            meta = {
                "format": CUBESET_FORMAT,
                "n": len(self),
                "geometry": self.geometry.as_dict(),
                "voxel_size_nm": [float(v) for v in self.voxel_size_nm],
                "raw_dtype": str(np.asarray(self.raw[:0]).dtype),
                "refused_types": {str(k): v for k, v in self.refused_types.items()},
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, mmap: bool = True) -> "CubeSet":
        """Load a saved CubeSet; the cube arrays are memory-mapped read-only by default."""
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"no cube set in {folder}: meta.json is missing; rebuild the cubes")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != CUBESET_FORMAT:
            raise DataError(f"cube set {folder} has format {meta.get('format')!r}; rebuild the cubes")
        mode = "r" if mmap else None
        try:
            raw = np.load(folder / "raw.npy", mmap_mode=mode)
            bits = np.load(folder / "bits.npy", mmap_mode=mode)
            table = pd.read_parquet(folder / "table.parquet")
            skipped = pd.read_parquet(folder / "skipped.parquet")
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read cube set {folder}: {exc}; rebuild the cubes") from exc
        try:
            return cls(
                raw=raw,
                bits=bits,
                table=table,
                skipped=skipped,
                geometry=CubeGeometry(**meta["geometry"]),
                voxel_size_nm=tuple(float(v) for v in meta["voxel_size_nm"]),
                refused_types={int(k): v for k, v in meta.get("refused_types", {}).items()},
            )
        except ValueError as exc:
            raise DataError(f"cube set {folder} is inconsistent: {exc}; rebuild the cubes") from exc


def _release_reader_cache(volume) -> None:
    """Drop a lazy reader's cached slices once its bbox is done (keeps peak RSS to ~one bbox)."""
    clear = getattr(volume, "clear_cache", None)
    if callable(clear):
        clear()


def _safe_float(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.inf
    return f if math.isfinite(f) else math.inf


SKIPPED_COLUMNS = (L.BBOX_COLUMN, L.NAME_COLUMN, "table_row", "reason")


def _bbox_grid(b: BboxData, voxel_size: tuple[float, float, float], target_voxel_nm: float | None):
    """The volumes cube building reads for one bbox and the voxel size of its cubes.

    With resampling, the volumes are :class:`~synapse_nb.volumes.ResampledVolume` views:
    each window read resamples only the native voxels it covers (raw linear, labels nearest).
    """
    native = tuple(float(v) for v in (b.voxel_size_nm or voxel_size))
    if len(native) != 3 or min(native) <= 0:
        raise DataError(f"bbox {b.name}: voxel size must be three positive numbers (z, y, x), got {native!r}")
    if not needs_resampling(native, target_voxel_nm):
        return (b.raw, b.seg, b.mask), native, native, None
    t = float(target_voxel_nm)  # type: ignore[arg-type]
    vols = (
        ResampledVolume(b.raw, native, t, order=1),
        ResampledVolume(b.seg, native, t, order=0) if b.seg is not None else None,
        ResampledVolume(b.mask, native, t, order=0) if b.mask is not None else None,
    )
    return vols, native, (t, t, t), t


def _to_grid(p: Sequence[float], native: Sequence[float], t: float | None, grid_shape: Sequence[int]) -> list[float]:
    """Table point (x, y, z native voxels) -> (x, y, z) on the cube grid (unchanged without resampling).

    The grid has ``floor(N * v / t + 0.5)`` voxels, so it can end up to half a target voxel
    short of the native extent: a point in the last native voxels is held on the last grid
    voxel (as the resampled values are), never pushed outside the grid.
    """
    arr = np.asarray(p, dtype=np.float64).reshape(-1)
    if t is None or arr.size != 3 or not np.all(np.isfinite(arr)):
        return list(p)
    zyx = np.minimum(native_to_target(arr[::-1], native, t), np.asarray(grid_shape, dtype=np.float64) - 1)
    return list(zyx[::-1])


def build_cubes(
    bboxes: Sequence[BboxData],
    geometry: CubeGeometry = CubeGeometry(),
    voxel_size_nm: Sequence[float] = (8.0, 8.0, 8.0),
    progress: bool = True,
    target_voxel_nm: float | None = None,
) -> CubeSet:
    """Build the cubes of every synapse of every bbox.

    ``voxel_size_nm`` is the data's voxel size for bboxes that carry none of their own
    (``BboxData.voxel_size_nm``, set by dataset descriptions). With ``target_voxel_nm`` set
    (> 0) and a different data voxel size, every synapse's windows are resampled to that
    isotropic grid (see :mod:`synapse_nb.volumes`): table points are mapped exactly onto it
    (voxel centres coincide physically) and the cube is built there unchanged.

    A synapse that raises :class:`SynapseError` (or a :class:`DataError` while reading its
    window) is recorded in ``skipped`` with the reason and the others continue. If no synapse
    can be built at all, :class:`DataError` lists the first reasons.
    """
    if not bboxes:
        raise DataError("no bboxes to build cubes from: select at least one bbox")
    voxel_size = tuple(float(v) for v in voxel_size_nm)
    if len(voxel_size) != 3 or min(voxel_size) <= 0:
        raise DataError(f"voxel_size_nm must be three positive numbers (z, y, x), got {voxel_size_nm!r}")
    grids = [_bbox_grid(b, voxel_size, target_voxel_nm) for b in bboxes]
    cube_voxels = {g[2] for g in grids}
    if len(cube_voxels) > 1:
        detail = ", ".join(f"{b.name}: {g[2]}" for b, g in zip(bboxes, grids))
        raise DataError(
            f"bboxes have different voxel sizes ({detail}); set target_voxel_nm to resample them to one isotropic grid"
        )
    cube_voxel = cube_voxels.pop()
    S = int(geometry.size)
    total = sum(len(b.table) for b in bboxes)
    dtype = np.result_type(*(np.dtype(getattr(b.raw, "dtype", np.uint8)) for b in bboxes))
    raw_all = np.empty((total, S, S, S), dtype=dtype)
    bits_all = np.empty((total, S, S, S), dtype=np.uint8)
    rows: list[dict | None] = [None] * total
    skipped: list[tuple[int, dict]] = []
    offset = 0
    with progress_bar(total=total, desc="synapse cubes", unit="syn", enabled=progress) as bar:
        for b, ((raw, seg, mask), native, grid_voxel, t) in zip(bboxes, grids):
            records = b.table.to_dict("records")
            grid_info = {
                "resampled": t is not None,
                **{f"native_voxel_{a}_nm": float(v) for a, v in zip("zyx", native)},
                **{f"cube_voxel_{a}_nm": float(v) for a, v in zip("zyx", grid_voxel)},
            }
            # Visit synapses in z order: neighbouring windows share slices, so a lazy slice
            # reader opens each slice about once per bbox. Results keep the table order.
            z = [_safe_float(r.get(L.CENTER_COLUMNS[2])) for r in records]
            for j in np.argsort(np.asarray(z), kind="stable"):
                rec = records[j]
                name = rec.get(L.NAME_COLUMN)
                trow = rec.get("table_row")
                points = [[rec[k] for k in cols] for cols in (L.CENTER_COLUMNS, L.SIDE1_COLUMNS, L.SIDE2_COLUMNS)]
                try:
                    if t is not None:
                        # check in the table's own (native) voxels, so errors quote its numbers
                        check_points(_where(b.name, name, trow), tuple(b.raw.shape), *points)  # type: ignore[attr-defined]
                        points = [_to_grid(p, native, t, raw.shape) for p in points]
                    cube = build_synapse(
                        raw,
                        seg,
                        mask,
                        *points,
                        b.label_ids,
                        geometry,
                        bbox=b.name if t is None else f"{b.name} (on its {t:g} nm resampled grid)",
                        synapse=name,
                        table_row=trow,
                    )
                except (SynapseError, DataError) as exc:
                    logger.warning("skipped synapse: %s", exc)
                    reason = {L.BBOX_COLUMN: b.name, L.NAME_COLUMN: name, "table_row": trow, "reason": str(exc)}
                    skipped.append((offset + int(j), reason))
                else:
                    i = offset + int(j)
                    raw_all[i] = cube.raw
                    bits_all[i] = cube.bits
                    rows[i] = {**rec, L.BBOX_COLUMN: b.name, **cube.info, **grid_info}
                bar.update(1)
            offset += len(records)
            for vol in (b.raw, b.seg, b.mask):
                if vol is not None:
                    _release_reader_cache(vol)
    ok = np.array([r is not None for r in rows], dtype=bool)
    n = int(ok.sum())
    skipped = [r for _, r in sorted(skipped, key=lambda item: item[0])]
    skipped_df = pd.DataFrame(skipped, columns=list(SKIPPED_COLUMNS))
    if n == 0:
        detail = "; ".join(skipped_df["reason"].head(3))
        raise DataError(f"no synapse cube could be built ({len(skipped_df)} skipped). First reasons: {detail}")
    if skipped:
        logger.warning("%d of %d synapses skipped; see CubeSet.skipped", len(skipped), total)
    if n < total:
        raw_all = raw_all[ok]
        bits_all = bits_all[ok]
    table = add_physical_units(pd.DataFrame([r for r in rows if r is not None]), cube_voxel)
    # readable column order: identity, input columns, then what was computed
    first = [c for c in (L.BBOX_COLUMN, L.NAME_COLUMN, "table_row") if c in table]
    table = table[first + [c for c in table.columns if c not in first]]
    return CubeSet(raw=raw_all, bits=bits_all, table=table, skipped=skipped_df, geometry=geometry, voxel_size_nm=cube_voxel)


def geometry_from_config(cfg: "Config") -> CubeGeometry:
    """The crop geometry a configuration asks for."""
    return CubeGeometry(size=cfg.cube_size, crop_mode=cfg.crop_mode, presynapse_weight=cfg.presynapse_weight)


def build_from_config(bboxes: Sequence[BboxData], cfg: "Config", progress: bool = True) -> CubeSet:
    """:func:`build_cubes` with the geometry, voxel sizes and resampling target of ``cfg``.

    Refuses, before any work, a ``segmentation_type`` the dataset cannot serve (e.g. type 5
    on data without a vesicle-cloud label), or the smart crop where pre/post cannot be
    decided, naming what is missing.
    """
    from .dataset import refused_types, require_crop_mode, require_segmentation_type

    require_segmentation_type(bboxes, cfg.segmentation_type)
    require_crop_mode(bboxes, cfg.crop_mode, cfg.presynapse_weight)
    cubes = build_cubes(
        bboxes, geometry_from_config(cfg), cfg.voxel_size_nm, progress=progress, target_voxel_nm=cfg.target_voxel_nm
    )
    cubes.refused_types = refused_types(bboxes)
    return cubes


def build_or_reuse(bboxes: Sequence[BboxData], cfg: "Config", run: "Run", progress: bool = True) -> CubeSet:
    """Cubes for ``cfg``: reused from the cache when the parameters that decide them are
    unchanged, built (and cached) otherwise; the run's ``cubes`` folder points at them."""
    from . import cache
    from .dataset import require_crop_mode, require_segmentation_type

    require_segmentation_type(bboxes, cfg.segmentation_type)
    require_crop_mode(bboxes, cfg.crop_mode, cfg.presynapse_weight)
    target = cache.stage_dir(cfg, "cubes")
    if target is None:
        cubes = build_from_config(bboxes, cfg, progress=progress)
        cubes.save(run.cubes_dir)
        return cubes
    hit = (target / "meta.json").is_file()
    if hit:
        cubes = CubeSet.load(target)
    else:
        cubes = build_from_config(bboxes, cfg, progress=progress)
        cubes.save(target)
    cache.link_into_run(target, run.cubes_dir)
    cache.record(run, "cubes", target.name, hit)
    return cubes
