"""Where a cube is cut: index arithmetic for one synapse, kept apart from any pixel work.

A synapse table gives points in (x, y, z); volumes are indexed [z, y, x]. This module checks
and converts those points (:func:`check_points`), says which boxes of the volumes are read
(:func:`label_window`, :func:`decision_box`, :class:`LabelWindows`), where the cube is
centred (:func:`crop_centre`) and how it sits against the volume border (:class:`CropBox`),
maps table points onto a resampled grid (:class:`CubeGrid`) and says where the voxels of an
oriented (rotated) cube come from (:func:`rotation_from_info`, :func:`oriented_valid_mask`).
The rules it implements
(windows, crop centre, padding, anisotropic voxels) are explained in ``docs/cubes.md``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.errors import DataError
from ..data.bbox import BboxData
from ..data.volumes import ResampledVolume, native_to_target, needs_resampling

CROP_MODES = ("cleft", "presynapse")


# --------------------------------------------------------------------------------------
# configuration and results
# --------------------------------------------------------------------------------------

class SynapseError(ValueError):
    """One synapse cannot be built; the message names bbox, synapse, table row and why."""


@dataclass(frozen=True)
class CubeGeometry:
    """How a cube is cut out around a synapse."""

    size: int = 80  # cube edge in voxels
    crop_mode: str = "cleft"  # "cleft" (centred on the cleft) or "presynapse" (smart crop)
    presynapse_weight: float = 0.7  # w: centre = (1-w)*cleft + w*CoM(presynaptic segment)
    orient: bool = False  # rotate each cube to its cleft frame (see synapse_nb.cubes.orientation)

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size < 2:
            raise ValueError(f"cube size must be an integer >= 2, got {self.size!r}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if not 0.0 <= float(self.presynapse_weight) <= 1.0:
            raise ValueError(f"presynapse_weight must be within [0, 1], got {self.presynapse_weight!r}")
        if not isinstance(self.orient, (bool, np.bool_)):
            raise ValueError(f"orient must be True or False, got {self.orient!r}")

    @property
    def margin(self) -> int:
        """Extra window half-width the smart crop may move the cube by."""
        if self.crop_mode == "cleft":
            return 0
        return int(math.ceil(float(self.presynapse_weight) * self.size / 2))

    @property
    def source_edge(self) -> int:
        """Edge of the cube built from the volumes: ``size``, or the larger window an oriented cube
        is resampled from (every rotation of the ``size^3`` cube about its centre fits inside)."""
        return orient_window_edge(int(self.size)) if self.orient else int(self.size)

    def as_dict(self) -> dict:
        return {
            "size": int(self.size),
            "crop_mode": self.crop_mode,
            "presynapse_weight": float(self.presynapse_weight),
            "orient": bool(self.orient),
        }


def orient_window_edge(size: int) -> int:
    """Edge of the source cube an oriented ``size^3`` cube is resampled from.

    Its half-diagonal is ``size * sqrt(3) / 2``, so ``ceil(size * sqrt(3))`` holds every
    rotation; two more voxels keep the linear interpolation's neighbours inside too.
    """
    return int(math.ceil(int(size) * math.sqrt(3))) + 2


def valid_mask_from_pads(size: int, info: dict) -> np.ndarray:
    """Boolean (S,S,S): True where a cube with these ``pad_*`` entries lies inside the volume.

    An oriented cube (``info["oriented"]`` true) is valid where its nearest source voxel is:
    computed from its rotation and the ``orient_pad_*`` entries of the window it was resampled from.
    """
    if is_oriented(info):
        return oriented_valid_mask(size, info)
    out = np.zeros((size,) * 3, dtype=bool)
    sl = tuple(slice(int(info[f"pad_{a}_before"]), size - int(info[f"pad_{a}_after"])) for a in "zyx")
    out[sl] = True
    return out


def is_oriented(info) -> bool:
    """Whether a cube's info / table row describes an oriented cube (missing or NaN: no)."""
    getter = getattr(info, "get", None)
    v = getter("oriented", False) if callable(getter) else False
    return isinstance(v, (bool, np.bool_)) and bool(v)


# --------------------------------------------------------------------------------------
# oriented cubes (rotated about their centre, see synapse_nb.cubes.orientation)
# --------------------------------------------------------------------------------------
#: The rotation's table columns: ``orient_r{i}{j}`` = component j (z, y, x) of the cube's new axis i.
ROTATION_COLUMNS = tuple(f"orient_r{i}{j}" for i in range(3) for j in range(3))


def source_index_affine(rotation: np.ndarray, size: int, source_edge: int) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and offset of output index -> source index (both cubes rotate about their centre voxel)."""
    m = np.asarray(rotation, dtype=np.float64).T
    return m, np.full(3, source_edge // 2, dtype=np.float64) - m @ np.full(3, size // 2, dtype=np.float64)


def rotation_from_info(info: Mapping) -> np.ndarray:
    """The (3, 3) rotation of an oriented cube's table row / info; the identity for a plain cube."""
    if not is_oriented(info):
        return np.eye(3)
    try:
        return np.array([float(info[c]) for c in ROTATION_COLUMNS]).reshape(3, 3)
    except KeyError as exc:
        raise KeyError(f"oriented cube row lacks rotation column {exc}; rebuild the cubes") from exc


def oriented_valid_mask(size: int, info: Mapping) -> np.ndarray:
    """Boolean (S,S,S): True where an oriented cube's nearest source voxel lies inside the volume.

    Raw voxels next to the border of this region mix padding into their linear interpolation.
    """
    S, E = int(size), int(info["orient_window"])
    lo = np.array([int(info[f"orient_pad_{a}_before"]) for a in "zyx"])
    hi = E - np.array([int(info[f"orient_pad_{a}_after"]) for a in "zyx"])
    matrix, offset = source_index_affine(rotation_from_info(info), S, E)
    out = np.ones((S, S, S), dtype=bool)
    grid = np.indices((S, S, S), dtype=np.float64).reshape(3, -1)
    src = np.floor(matrix @ grid + offset[:, None] + 0.5)
    for k in range(3):
        out &= ((src[k] >= lo[k]) & (src[k] < hi[k])).reshape(S, S, S)
    return out


# --------------------------------------------------------------------------------------
# points and boxes
# --------------------------------------------------------------------------------------
def round_half_up(v: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, halves upwards (``floor(v + 0.5)``), as int64."""
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)


def box_slices(lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice]:
    """The index slices of the half-open box ``[lo, hi)``."""
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def fmt_xyz(zyx: np.ndarray) -> str:
    """A (z, y, x) voxel index written as the table writes it, (x=.., y=.., z=..)."""
    return f"(x={int(zyx[2])}, y={int(zyx[1])}, z={int(zyx[0])})"


def fmt_extent(shape: Sequence[int]) -> str:
    """A volume's (z, y, x) shape written as the bounds of table coordinates."""
    return f"(x < {shape[2]}, y < {shape[1]}, z < {shape[0]})"


def _xyz_to_zyx(p: Sequence[float]) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64).reshape(-1)
    if arr.size != 3 or not np.all(np.isfinite(arr)):
        raise ValueError(f"expected 3 finite coordinates (x, y, z), got {p!r}")
    return round_half_up(arr[::-1])


def _side_is_missing(p: Sequence[float] | None) -> bool:
    """A side point with all three coordinates empty (NaN) or None: partner unknown."""
    if p is None:
        return True
    try:
        arr = np.asarray(p, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return False
    return arr.size == 3 and bool(np.all(np.isnan(arr)))


def _inside(p: np.ndarray, shape: Sequence[int]) -> bool:
    return bool(np.all(p >= 0) and np.all(p < np.asarray(shape)))


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
    vol_xyz = fmt_extent(shape)
    if not _inside(c, shape):
        raise SynapseError(
            f"{where}: central coordinate {fmt_xyz(c)} lies outside the volume {vol_xyz}; "
            "fix central_coord_1..3 (x, y, z in bbox voxels) in the synapse table"
        )
    for k, s in ((1, s1), (2, s2)):
        if s is not None and not _inside(s, shape):
            raise SynapseError(
                f"{where}: side {k} point {fmt_xyz(s)} lies outside the volume {vol_xyz}; "
                f"fix side_{k}_coord_1..3 (x, y, z) in the synapse table"
            )
    return c, s1, s2


@dataclass(frozen=True, eq=False)
class Box:
    """Half-open box ``[lo, hi)`` of (z, y, x) volume indices."""

    lo: np.ndarray
    hi: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.hi - self.lo)  # type: ignore[return-value]

    def slices(self, origin: np.ndarray | None = None) -> tuple[slice, slice, slice]:
        """Index slices of the box, in volume indices or relative to ``origin``."""
        if origin is None:
            return box_slices(self.lo, self.hi)
        return box_slices(self.lo - origin, self.hi - origin)

    def contains(self, other: Box) -> bool:
        return not (np.any(other.lo < self.lo) or np.any(other.hi > self.hi))


def decision_box(center: np.ndarray, size: int, shape: Sequence[int]) -> Box:
    """The ``S^3`` box centred on the cleft, clipped to the volume: where pre/post is decided."""
    h = size // 2
    return Box(np.maximum(center - h, 0), np.minimum(center - h + size, np.asarray(shape)))


def label_window(center: np.ndarray, geometry: CubeGeometry, shape: Sequence[int]) -> Box:
    """The decision box grown by the smart-crop margin: the one seg/mask read per synapse.

    For an oriented cube the box is that of the larger source cube (:func:`orient_window_edge`).
    """
    S = geometry.source_edge  # an oriented cube is resampled from a larger cube around its centre
    h = S // 2
    m = geometry.margin
    return Box(np.maximum(center - h - m, 0), np.minimum(center - h + S + m, np.asarray(shape)))


@dataclass(frozen=True, eq=False)
class LabelWindows:
    """The seg and mask voxels of one box (None where the dataset has no such volume)."""

    box: Box
    seg: np.ndarray | None
    mask: np.ndarray | None
    seg_volume: object | None = None  # the lazy seg volume, for points outside the box

    @classmethod
    def read(cls, seg, mask, box: Box) -> LabelWindows:
        """Read ``box`` of the lazy seg and mask volumes (one read each)."""
        sl = box.slices()
        seg_w = np.asarray(seg[sl]) if seg is not None else None
        mask_w = np.asarray(mask[sl]) if mask is not None else None
        return cls(box, seg_w, mask_w, seg)

    def crop(self, box: Box) -> LabelWindows:
        """The part of these windows inside ``box`` (a view, no read)."""
        sl = box.slices(origin=self.box.lo)
        return LabelWindows(
            box,
            self.seg[sl] if self.seg is not None else None,
            self.mask[sl] if self.mask is not None else None,
            self.seg_volume,
        )

    def seg_id_at(self, p: np.ndarray | None) -> int:
        """Segment id at volume index ``p``; 0 without a point or a seg volume.

        A point outside the window is looked up with a one-voxel read of the volume.
        """
        if p is None or self.seg is None:
            return 0
        q = p - self.box.lo
        if np.all(q >= 0) and np.all(q < self.seg.shape):
            return int(self.seg[tuple(q)])
        return int(np.asarray(self.seg_volume[box_slices(p, p + 1)]).reshape(-1)[0])  # type: ignore[index]


# --------------------------------------------------------------------------------------
# crop centre and padding
# --------------------------------------------------------------------------------------
def _centre_of_mass(binary: np.ndarray, total: int) -> np.ndarray:
    """Centre of mass (index coordinates) of a non-empty boolean cube with ``total`` voxels."""
    return np.array(
        [
            (binary.sum(axis=tuple(a for a in range(3) if a != ax)) * np.arange(binary.shape[ax])).sum() / total
            for ax in range(3)
        ]
    )


def crop_centre(
    geometry: CubeGeometry, cleft: np.ndarray, decision: LabelWindows, pre_id: int
) -> tuple[np.ndarray, str | None]:
    """Cube centre (z, y, x) and, when the smart crop had to fall back to the cleft, why.

    The plain crop is centred on the cleft; the smart crop moves towards the centre of mass
    of the presynaptic segment inside the decision box, ``round((1-w)*cleft + w*CoM)``.
    """
    if geometry.crop_mode != "presynapse" or pre_id == 0 or not geometry.presynapse_weight > 0:
        return cleft.copy(), None
    pre_d = decision.seg == pre_id
    total = int(np.count_nonzero(pre_d))
    if not total:
        return cleft.copy(), "presynaptic segment absent from the cleft-centred window: cube centred on the cleft"
    com = _centre_of_mass(pre_d, total) + decision.box.lo
    w = float(geometry.presynapse_weight)
    return round_half_up((1.0 - w) * cleft + w * com), None


@dataclass(frozen=True, eq=False)
class CropBox:
    """The ``S^3`` cube ``[c - S//2, c - S//2 + S)`` around a centre and its part inside the volume."""

    center: np.ndarray
    size: int
    lo: np.ndarray  # cube corner in volume indices (may lie outside the volume)
    inside: Box  # the in-volume part (empty on some axis when the cube misses the volume)

    @classmethod
    def around(cls, center: np.ndarray, size: int, shape: Sequence[int]) -> CropBox:
        S = int(size)
        lo = center - S // 2
        hi = lo + S
        return cls(center, S, lo, Box(np.maximum(lo, 0), np.minimum(hi, np.asarray(shape))))

    @property
    def hi(self) -> np.ndarray:
        return self.lo + self.size

    @property
    def overlaps_volume(self) -> bool:
        return not np.any(self.inside.hi <= self.inside.lo)

    @property
    def pad_before(self) -> np.ndarray:
        return self.inside.lo - self.lo

    @property
    def pad_after(self) -> np.ndarray:
        return self.hi - self.inside.hi

    @property
    def padded(self) -> bool:
        return bool(np.any(self.pad_before) or np.any(self.pad_after))

    @property
    def target(self) -> np.ndarray:
        """The cube centre (voxel ``S//2``) in the coordinates of the in-volume part."""
        return (self.size // 2) - self.pad_before

    def inner_slices(self) -> tuple[slice, slice, slice]:
        """Where the in-volume part goes inside the padded cube."""
        return box_slices(self.pad_before, self.size - self.pad_after)


# --------------------------------------------------------------------------------------
# the grid cubes are built on (native or resampled)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CubeGrid:
    """The volumes cube building reads for one bbox and the voxel size of its cubes.

    With resampling, the volumes are :class:`~synapse_nb.data.volumes.ResampledVolume` views:
    each window read resamples only the native voxels it covers (raw linear, labels nearest).
    """

    raw: object
    seg: object | None
    mask: object | None
    native_voxel_nm: tuple[float, float, float]
    voxel_nm: tuple[float, float, float]  # the cubes' voxel
    target_voxel_nm: float | None  # None: the native grid, nothing resampled

    def table_info(self) -> dict:
        """The grid columns recorded in every table row of this bbox."""
        return {
            "resampled": self.target_voxel_nm is not None,
            **{f"native_voxel_{a}_nm": float(v) for a, v in zip("zyx", self.native_voxel_nm)},
            **{f"cube_voxel_{a}_nm": float(v) for a, v in zip("zyx", self.voxel_nm)},
        }

    def to_grid(self, p: Sequence[float]) -> list[float]:
        """Table point (x, y, z native voxels) -> (x, y, z) on this grid (unchanged without resampling).

        The grid has ``floor(N * v / t + 0.5)`` voxels, so it can end up to half a target voxel
        short of the native extent: a point in the last native voxels is held on the last grid
        voxel (as the resampled values are), never pushed outside the grid.
        """
        t = self.target_voxel_nm
        arr = np.asarray(p, dtype=np.float64).reshape(-1)
        if t is None or arr.size != 3 or not np.all(np.isfinite(arr)):
            return list(p)
        grid_shape = np.asarray(self.raw.shape, dtype=np.float64)  # type: ignore[attr-defined]
        zyx = np.minimum(native_to_target(arr[::-1], self.native_voxel_nm, t), grid_shape - 1)
        return list(zyx[::-1])


def bbox_grid(b: BboxData, voxel_size: tuple[float, float, float], target_voxel_nm: float | None) -> CubeGrid:
    """The grid the cubes of bbox ``b`` are built on (``voxel_size`` if the bbox has none)."""
    native = tuple(float(v) for v in (b.voxel_size_nm or voxel_size))
    if len(native) != 3 or min(native) <= 0:
        raise DataError(f"bbox {b.name}: voxel size must be three positive numbers (z, y, x), got {native!r}")
    if not needs_resampling(native, target_voxel_nm):
        return CubeGrid(b.raw, b.seg, b.mask, native, native, None)  # type: ignore[arg-type]
    t = float(target_voxel_nm)  # type: ignore[arg-type]
    return CubeGrid(
        ResampledVolume(b.raw, native, t, order=1),
        ResampledVolume(b.seg, native, t, order=0) if b.seg is not None else None,
        ResampledVolume(b.mask, native, t, order=0) if b.mask is not None else None,
        native,  # type: ignore[arg-type]
        (t, t, t),
        t,
    )
