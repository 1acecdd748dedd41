"""Morphometric descriptors of one synapse cube, in physical units, for clustering on shape.

Without trained weights the network's features mostly follow brightness, so a synapse is also
described by numbers measured on its structure bits: sizes, cleft shape, vesicle cloud,
mitochondria, the pre/post contact and the postsynaptic shape near the cleft, plus intensity
contrasts that do not change with brightness. :func:`measure_cube` measures all of them on one
``S^3`` cube when cubes are built (they are cached with the cubes, in the cube table);
:data:`DESCRIPTORS` names each with its unit and formula, and says whether it may be clustered
(raw intensity statistics may not: they are brightness). The formulas are explained in
``docs/cubes.md`` (section "Descriptors").

Missing values: a descriptor of a structure the dataset does not annotate is NaN; a structure
that is annotated but has no voxel in the cube has volume 0 and NaN for distances and shapes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError, cKDTree

from ..core import labels as L
from .morphometry import SIZE_COLUMNS, mito_near_pre_voxels, sheet_area

__all__ = [
    "DESCRIPTORS",
    "NOT_ANNOTATED",
    "SIZE_COLUMNS",
    "Annotated",
    "Descriptor",
    "descriptor_columns",
    "measure_cube",
    "readable_table",
]

#: Pre voxels whose centre lies within this distance (nm) of a post voxel centre are in contact.
CONTACT_DISTANCE_NM = 50.0
#: Post voxels within this distance (nm) of the cleft make the postsynaptic density zone.
PSD_DISTANCE_NM = 40.0
#: Radius (nm) of the ball around the cleft centre in which the post partner's shape is measured.
POST_RADIUS_NM = 300.0
#: Fewest cleft voxels for a shape fit (plane, quadric).
MIN_SHAPE_VOXELS = 10

#: Which table column tells, per row, whether a structure is annotated (NaN = not annotated).
ANNOTATION_SENTINELS = {
    "vesicle": "vesicle_volume_um3",
    "cleft": "cleft_volume_um3",
    "mito": "mito_volume_um3",
    "partners": "pre_volume_um3",
}
NOT_ANNOTATED = "not annotated"


@dataclass(frozen=True)
class Descriptor:
    """One measured number: its column name, unit, meaning, formula and whether it is clustered."""

    name: str
    unit: str  # "" for ratios and counts
    what: str
    formula: str
    clustered: bool = True
    needs: tuple[str, ...] = ()  # structures (keys of Annotated) it is measured on

    @property
    def label(self) -> str:
        """Readable column header with the unit, e.g. ``vesicle volume (um^3)``."""
        base = self.name
        for suffix in ("_um3", "_um2", "_nm", "_per_um"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
                break
        text = base.replace("_", " ")
        return f"{text} ({self.unit})" if self.unit else text


@dataclass(frozen=True)
class Annotated:
    """Which structures a dataset annotates; a descriptor of an unannotated one is NaN."""

    vesicle: bool = True
    cleft: bool = True
    mito: bool = True
    partners: bool = True  # a neurite segmentation that names the pre/post partners

    @classmethod
    def from_ids(cls, ids: L.LabelIds, *, has_seg: bool, has_mask: bool = True) -> Annotated:
        """From a bbox's label ids (0 = not annotated) and which volumes it has."""
        return cls(
            vesicle=has_mask and int(ids.vesicle) != 0,
            cleft=has_mask and (int(ids.cleft) != 0 or int(ids.cleft2) != 0),
            mito=has_mask and int(ids.mito) != 0,
            partners=bool(has_seg),
        )

    def has(self, needs: Sequence[str]) -> bool:
        return all(getattr(self, k) for k in needs)


def _d(name: str, unit: str, what: str, formula: str, needs: tuple[str, ...], clustered: bool = True) -> Descriptor:
    return Descriptor(name, unit, what, formula, clustered, needs)


_V, _C, _M, _P = ("vesicle",), ("cleft",), ("mito",), ("partners",)
_STRUCTURES = {"vesicle": _V, "cleft": _C, "pre": _P, "post": _P, "mito": _M}

_LIST: list[Descriptor] = [
    # sizes
    _d("vesicle_volume_um3", "um^3", "volume of the closest vesicle cloud in the cube", "N_vesicle * vz*vy*vx", _V),
    _d("cleft_volume_um3", "um^3", "volume of the closest cleft (cleft | cleft2)", "N_cleft * vz*vy*vx", _C),
    _d("cleft_area_um2", "um^2", "area of the cleft sheet", "cleft_area_vox * det(D) * |D^-1 n| (Nanson)", _C),
    _d("pre_volume_um3", "um^3", "presynaptic segment volume in the cube", "N_pre * vz*vy*vx", _P),
    _d("post_volume_um3", "um^3", "postsynaptic segment volume in the cube", "N_post * vz*vy*vx", _P),
    _d("mito_near_pre_volume_um3", "um^3", "mitochondria inside or touching the presynaptic segment",
       "N(mito & dilate6(pre, 2)) * vz*vy*vx", ("mito", "partners")),
    _d("mito_volume_um3", "um^3", "all mitochondria in the cube", "N_mito_any * vz*vy*vx", _M),
    # cleft shape
    _d("cleft_flatness", "", "how flat the cleft is (1 = a plane, 0 = a ball)", "1 - sqrt(l3 / l2), l1>=l2>=l3 PCA variances (nm)", _C),
    _d("cleft_curvature_per_um", "1/um", "mean curvature of the cleft sheet",
       "|a + c| * 1000, h = a u^2 + b u w + c w^2 + d u + e w + f least squares in the PCA frame (nm)", _C),
    _d("cleft_components", "", "6-connected pieces of the cleft (cleft | cleft2)", "count of ndimage.label components", _C),
    _d("cleft_holes", "", "perforations: holes in the cleft sheet seen along its normal",
       "enclosed background regions of the closed projection of the cleft on its plane", _C),
    _d("cleft_extent_nm", "nm", "largest diameter of the cleft along its plane", "max |(p - q) projected on the plane|", _C),
    # vesicle cloud
    _d("vesicle_cleft_distance_nm", "nm", "distance from the vesicle-cloud centroid to the nearest cleft voxel",
       "min_q |mean(p_vesicle) - q_cleft|", ("vesicle", "cleft")),
    _d("vesicle_spread_nm", "nm", "RMS radius of the vesicle cloud", "sqrt(mean |p - mean(p)|^2)", _V),
    # mitochondria
    _d("mito_cleft_distance_nm", "nm", "distance from the closest mitochondrion to the cleft",
       "min |p_mito - q_cleft|", ("mito", "cleft")),
    # contact
    _d("contact_area_um2", "um^2", "area where the pre and post segments face each other",
       f"sheet area (as the cleft) of pre surface voxels within {CONTACT_DISTANCE_NM:g} nm of post", _P),
    # post shape near the cleft
    _d("post_convexity", "", "post partner near the cleft: volume / convex hull volume (spine neck lowers it)",
       f"N_post(ball) * vz*vy*vx / V(hull of its voxels), ball of {POST_RADIUS_NM:g} nm at the cleft centroid",
       ("partners", "cleft")),
    _d("post_open_fraction", "", "share of the ball's surface the post crosses (a shaft runs through, a spine head does not)",
       f"N(post & shell) / N(shell), shell = one voxel at {POST_RADIUS_NM:g} nm from the cleft centroid",
       ("partners", "cleft")),
]
# intensity: raw statistics (brightness, not clustered) and brightness-invariant contrasts
_LIST += [_d("raw_mean_cube", "", "raw mean of the cube", "mean(raw)", (), clustered=False),
          _d("raw_std_cube", "", "raw standard deviation of the cube", "std(raw)", (), clustered=False)]
for _s, _needs in _STRUCTURES.items():
    _LIST += [
        _d(f"raw_mean_{_s}", "", f"raw mean inside {_s}", f"mean(raw[{_s}])", _needs, clustered=False),
        _d(f"raw_std_{_s}", "", f"raw standard deviation inside {_s}", f"std(raw[{_s}])", _needs, clustered=False),
    ]
_LIST += [_d(f"contrast_{_s}", "", f"how much brighter {_s} is than the cube, in cube std",
             f"(mean(raw[{_s}]) - mean(raw)) / std(raw)", _needs) for _s, _needs in _STRUCTURES.items()]
_LIST += [
    _d("psd_darkness", "", "postsynaptic density: how much darker post is next to the cleft, in cube std",
       f"(mean(raw) - mean(raw[post within {PSD_DISTANCE_NM:g} nm of cleft])) / std(raw)", ("partners", "cleft")),
    _d("vesicle_texture", "", "texture of the vesicle cloud (vesicle rings and lumens)", "std(raw[vesicle]) / std(raw)", _V),
]

#: Every descriptor, in the order of the table columns.
DESCRIPTORS: dict[str, Descriptor] = {d.name: d for d in _LIST}


# --------------------------------------------------------------------------------------
# measuring one cube
# --------------------------------------------------------------------------------------
def measure_cube(
    raw: np.ndarray,
    bits: np.ndarray,
    *,
    voxel_nm: tuple[float, float, float],
    annotated: Annotated,
) -> dict[str, float]:
    """Every descriptor of :data:`DESCRIPTORS` for one cube (raw and structure bits, [z, y, x]),
    preceded by the voxel morphometrics (:func:`~.morphometry.morphometrics`' keys, counted once).

    ``voxel_nm`` is the cube's voxel (z, y, x) in nm; geometry is done in nm. Descriptors of
    structures ``annotated`` says are missing are NaN (the voxel counts stay as counted).
    Small structures are measured on their bounding boxes and the partners' shapes on every
    second voxel, so this costs a few dense passes over the cube.
    """
    bits = np.asarray(bits)
    raw = np.asarray(raw)
    if bits.ndim != 3 or raw.shape != bits.shape:
        raise ValueError(f"raw {raw.shape} and bits {bits.shape} must be one 3-D cube of the same shape")
    v = np.asarray(voxel_nm, dtype=np.float64).reshape(-1)
    if v.size != 3 or not np.all(v > 0):
        raise ValueError(f"voxel_nm must be three positive numbers (z, y, x), got {voxel_nm!r}")
    cube = _Cube(bits, v)
    vox = _voxel_sizes(cube)
    out: dict[str, float] = {}
    out.update(_sizes(vox, cube))
    out.update(_cleft_shape(cube))
    out.update(_vesicle(cube))
    out["mito_cleft_distance_nm"] = _mito_distance(cube)
    out["contact_area_um2"] = _contact_area(cube)
    out.update(_post_shape(cube))
    out.update(_intensity(raw, cube))
    for name, d in DESCRIPTORS.items():
        if not annotated.has(d.needs):
            out[name] = math.nan
    return {**vox, **{name: float(out[name]) for name in DESCRIPTORS}}


_CLEFT_BITS = L.BIT_CLEFT | L.BIT_CLEFT2


class _Grid:
    """The partners' masks on a grid of voxel ``v`` nm: dense, plus coarse cells of their bits."""

    def __init__(self, bits: np.ndarray, v: np.ndarray) -> None:
        self.bits, self.v, self.shape = bits, v, bits.shape
        self.pre = (bits & np.uint8(L.BIT_PRE)) != 0
        self.post = (bits & np.uint8(L.BIT_POST)) != 0
        self.coarse = _pool_or(bits)


class _Cube:
    """Structure masks of one cube, made once: small structures cropped to their boxes, the
    partners dense; the partners' shapes are measured on every second voxel (``sub``)."""

    def __init__(self, bits: np.ndarray, v: np.ndarray) -> None:
        self.bits, self.v, self.shape = bits, v, bits.shape
        # which bits occur in each slice along each axis: bounding boxes of every structure at once
        self._present = [np.bitwise_or.reduce(bits, axis=tuple(j for j in range(3) if j != a)) for a in range(3)]
        self.pre = (bits & np.uint8(L.BIT_PRE)) != 0
        self.post = (bits & np.uint8(L.BIT_POST)) != 0
        # about twice the smallest voxel along every axis (anisotropic voxels keep their long axis)
        self.step = tuple(max(1, round(2 * float(v.min()) / float(a))) for a in v)
        self.sub_slices = tuple(slice(None, None, k) for k in self.step)
        self.sub = _Grid(np.ascontiguousarray(bits[self.sub_slices]), v * np.array(self.step))
        self._crops: dict[int, tuple[tuple[slice, ...], np.ndarray] | None] = {}

    def crop(self, bit: int) -> tuple[tuple[slice, ...], np.ndarray] | None:
        """(box, mask inside the box) of the voxels carrying any of ``bit``; None if there are none."""
        if bit not in self._crops:
            idx = [np.flatnonzero(p & np.uint8(bit)) for p in self._present]
            if any(i.size == 0 for i in idx):
                self._crops[bit] = None
            else:
                box = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)
                self._crops[bit] = (box, (self.bits[box] & np.uint8(bit)) != 0)
        return self._crops[bit]

    def count(self, bit: int) -> int:
        c = self.crop(bit)
        return 0 if c is None else int(np.count_nonzero(c[1]))

    def indices(self, bit: int) -> np.ndarray:
        """Voxel indices (n, 3) of ``bit`` in the cube."""
        c = self.crop(bit)
        if c is None:
            return np.zeros((0, 3), dtype=np.int64)
        return np.argwhere(c[1]) + np.array([s.start for s in c[0]])

    def points(self, bit: int) -> np.ndarray:
        """Voxel centres (n, 3) of ``bit`` in nm."""
        return self.indices(bit) * self.v


def _voxel_sizes(cube: _Cube) -> dict[str, float]:
    """The voxel morphometrics (:func:`~.morphometry.morphometrics`, same keys and values)."""
    mito_near = 0
    m = cube.crop(L.BIT_MITO_ANY)
    if m is not None:
        mito = np.zeros(cube.shape, dtype=bool)
        mito[m[0]] = m[1]
        mito_near = mito_near_pre_voxels(cube.pre, mito)
    cleft = cube.indices(_CLEFT_BITS)
    area, normal = sheet_area(cleft - cleft.min(axis=0)) if cleft.shape[0] else (0.0, np.full(3, np.nan))
    return {
        "vesicle_volume_vox": cube.count(L.BIT_VESICLE),
        "cleft_volume_vox": cleft.shape[0],
        "cleft_area_vox": area,
        "pre_volume_vox": int(np.count_nonzero(cube.pre)),
        "post_volume_vox": int(np.count_nonzero(cube.post)),
        "mito_near_pre_volume_vox": mito_near,
        "cleft_normal_z": float(normal[0]),
        "cleft_normal_y": float(normal[1]),
        "cleft_normal_x": float(normal[2]),
    }


def _sizes(vox: dict[str, float], cube: _Cube) -> dict[str, float]:
    vol_um3 = float(np.prod(cube.v)) * 1e-9
    normal = np.array([vox["cleft_normal_z"], vox["cleft_normal_y"], vox["cleft_normal_x"]])
    area = _nanson_um2(vox["cleft_area_vox"], normal, cube.v) if vox["cleft_area_vox"] else 0.0
    return {
        "vesicle_volume_um3": vox["vesicle_volume_vox"] * vol_um3,
        "cleft_volume_um3": vox["cleft_volume_vox"] * vol_um3,
        "cleft_area_um2": area,
        "pre_volume_um3": vox["pre_volume_vox"] * vol_um3,
        "post_volume_um3": vox["post_volume_vox"] * vol_um3,
        "mito_near_pre_volume_um3": vox["mito_near_pre_volume_vox"] * vol_um3,
        "mito_volume_um3": cube.count(L.BIT_MITO_ANY) * vol_um3,
    }


def _nanson_um2(area_vox: float, normal: np.ndarray, v: np.ndarray) -> float:
    """Area in um^2 of ``area_vox`` voxel faces of a plane with index-space normal ``normal``."""
    return float(area_vox * float(np.prod(v)) * np.linalg.norm(normal / v)) * 1e-6


def _sheet_area_um2(idx: np.ndarray, v: np.ndarray) -> float:
    """Area (um^2) of a sheet of voxels: :func:`sheet_area` on the voxel grid, then Nanson's formula."""
    if idx.shape[0] == 0:
        return 0.0
    area_vox, n = sheet_area(idx - idx.min(axis=0))
    return _nanson_um2(area_vox, n, v)


def _pca(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid, variances (descending) and axes (columns, matching) of points."""
    c = pts.mean(axis=0)
    d = pts - c
    # einsum rather than np.cov / @: a threaded BLAS would spin idle cores for these small products
    vals, vecs = np.linalg.eigh(np.einsum("ni,nj->ij", d, d) / max(len(d) - 1, 1))
    return c, vals[::-1].clip(min=0.0), vecs[:, ::-1]


def _cleft_shape(cube: _Cube) -> dict[str, float]:
    nan = math.nan
    out = {"cleft_flatness": nan, "cleft_curvature_per_um": nan, "cleft_components": 0.0,
           "cleft_holes": nan, "cleft_extent_nm": nan}
    c = cube.crop(_CLEFT_BITS)
    if c is None:
        return out
    out["cleft_components"] = float(ndimage.label(c[1])[1])
    pts = cube.points(_CLEFT_BITS)
    if pts.shape[0] < MIN_SHAPE_VOXELS:
        return out
    centre, lam, axes = _pca(pts)
    if lam[1] <= 0:  # a line: no plane
        return out
    out["cleft_flatness"] = 1.0 - math.sqrt(lam[2] / lam[1])
    local = np.einsum("ni,ij->nj", pts - centre, axes)  # u, w in the plane, h along the normal
    out["cleft_curvature_per_um"] = _mean_curvature(local) * 1000.0
    plane = local[:, :2]
    out["cleft_extent_nm"] = _diameter(plane)
    out["cleft_holes"] = float(_holes(plane, float(cube.v.max())))
    return out


def _mean_curvature(local: np.ndarray) -> float:
    """|a + c| (1/nm) of the least-squares h = a u^2 + b u w + c w^2 + d u + e w + f."""
    scale = math.sqrt(float(np.mean(local[:, 0] ** 2 + local[:, 1] ** 2))) or 1.0
    u, w, h = local[:, 0] / scale, local[:, 1] / scale, local[:, 2] / scale  # well-conditioned units
    design = np.column_stack([u * u, u * w, w * w, u, w, np.ones_like(u)])
    gram = np.einsum("ni,nj->ij", design, design)
    coef = np.linalg.lstsq(gram, np.einsum("ni,n->i", design, h), rcond=None)[0]
    curvature = abs(float(coef[0] + coef[2])) / scale
    return curvature if curvature > 1e-12 else 0.0  # rounding noise of a plane


def _diameter(plane: np.ndarray) -> float:
    """Largest distance between two 2-D points (over the convex hull's vertices)."""
    try:
        cand = plane[ConvexHull(plane).vertices]
    except (QhullError, ValueError):  # collinear points: the hull is a segment
        cand = plane
    diff = cand[:, None, :] - cand[None, :, :]
    return float(np.sqrt((diff ** 2).sum(-1).max()))


def _holes(plane: np.ndarray, pixel: float) -> int:
    """Enclosed holes of 2-D points rasterised at ``pixel`` and closed by one pixel."""
    ij = np.floor((plane - plane.min(axis=0)) / pixel).astype(np.int64) + 2
    img = np.zeros(tuple(ij.max(axis=0) + 3), dtype=bool)
    img[ij[:, 0], ij[:, 1]] = True
    img = ndimage.binary_closing(img, structure=np.ones((3, 3), dtype=bool))
    lab, n = ndimage.label(~img)
    outside = lab[0, 0]  # the padded border is background connected to the outside
    return int(n - (1 if outside else 0))


def _vesicle(cube: _Cube) -> dict[str, float]:
    pts = cube.points(L.BIT_VESICLE)
    if pts.shape[0] == 0:
        return {"vesicle_cleft_distance_nm": math.nan, "vesicle_spread_nm": math.nan}
    c = pts.mean(axis=0)
    spread = math.sqrt(float(((pts - c) ** 2).sum(axis=1).mean()))
    cleft = cube.points(_CLEFT_BITS)
    dist = float(np.sqrt(((cleft - c) ** 2).sum(axis=1).min())) if cleft.shape[0] else math.nan
    return {"vesicle_cleft_distance_nm": dist, "vesicle_spread_nm": spread}


def _mito_distance(cube: _Cube) -> float:
    """Smallest distance (nm) between a voxel of the closest mitochondrion and a cleft voxel."""
    m = cube.crop(L.BIT_MITO)
    cleft = cube.points(_CLEFT_BITS)
    if m is None or cleft.shape[0] == 0:
        return math.nan
    box, mask = m
    surf = (np.argwhere(_surface(mask)) + np.array([s.start for s in box])) * cube.v  # nearest voxels are on the surface
    tree = cKDTree(cleft)
    # an upper bound from the surface voxels nearest the cleft centroid makes the full search prune
    first = np.argsort(((surf - cleft.mean(axis=0)) ** 2).sum(axis=1))[:16]
    bound = float(tree.query(surf[first], k=1)[0].min())
    d, _ = tree.query(surf, k=1, distance_upper_bound=bound + 1e-6)
    return float(min(bound, float(np.min(d))))


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 6-neighbour outside it (the array border counts as outside)."""
    inner = np.zeros_like(mask)
    inner[1:-1, 1:-1, 1:-1] = mask[1:-1, 1:-1, 1:-1]
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        inner[tuple(lo)] &= mask[tuple(hi)]
        inner[tuple(hi)] &= mask[tuple(lo)]
    return mask & ~inner


_CELL = 4  # voxels per coarse cell when looking for where the partners come near each other


def _contact_area(cube: _Cube) -> float:
    """Area (um^2) of the pre surface within :data:`CONTACT_DISTANCE_NM` of the post surface."""
    g = cube.sub
    pre, post, v = g.pre, g.post, g.v
    if not pre.any() or not post.any():
        return 0.0
    pre_c = (g.coarse & np.uint8(L.BIT_PRE)) != 0
    post_c = (g.coarse & np.uint8(L.BIT_POST)) != 0
    pre_near = _surface_near(pre, pre_c, post_c, v)
    post_near = _surface_near(post, post_c, pre_c, v)
    if pre_near.shape[0] == 0 or post_near.shape[0] == 0:
        return 0.0
    d, _ = cKDTree(post_near * v).query(pre_near * v, k=1, distance_upper_bound=CONTACT_DISTANCE_NM + 1e-6)
    return _sheet_area_um2(pre_near[np.isfinite(d)], v)


def _surface_near(a: np.ndarray, ca: np.ndarray, cb: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Indices (n, 3) of surface voxels of ``a`` in coarse cells within reach of a cell holding ``b``.

    ``ca``, ``cb``: the coarse cells of ``a`` and ``b``. Only voxels in those cells can lie within
    :data:`CONTACT_DISTANCE_NM` of ``b``; the rest of ``a`` is never looked at voxel by voxel.
    """
    # voxels |i - j| cells apart along an axis are at least (|i - j| - 1) * _CELL + 1 voxels apart
    reach = np.floor((CONTACT_DISTANCE_NM / v - 1) / _CELL).astype(int) + 1
    near_b = ndimage.maximum_filter(cb, size=tuple(int(2 * r + 1) for r in reach), mode="constant")
    cells = np.argwhere(ca & near_b)
    if cells.shape[0] == 0:
        return np.zeros((0, 3), dtype=np.int64)
    off = np.argwhere(np.ones((_CELL,) * 3, dtype=bool))
    idx = (cells[:, None, :] * _CELL + off[None, :, :]).reshape(-1, 3)
    idx = idx[np.all(idx < np.array(a.shape), axis=1)]
    idx = idx[a[tuple(idx.T)]]
    inner = np.ones(idx.shape[0], dtype=bool)
    for axis in range(3):
        col = idx[:, axis]
        inner &= (col > 0) & (col < a.shape[axis] - 1)  # outside the cube counts as outside a
    for axis in range(3):
        for step in (-1, 1):
            q = idx[inner].copy()
            q[:, axis] += step
            inner[inner] = a[tuple(q.T)]
    return idx[~inner]


def _pool_or(bits: np.ndarray) -> np.ndarray:
    """Coarse grid of :data:`_CELL`^3 cells: the OR of the structure bits of each cell."""
    pad = [(0, (-n) % _CELL) for n in bits.shape]
    b = np.ascontiguousarray(np.pad(bits, pad) if any(p[1] for p in pad) else bits, dtype=np.uint8)
    z, y, x = b.shape
    if _CELL == 4:  # four neighbouring bytes along x as one uint32: one fast pass
        u = b.view(np.uint32)
        u = u | (u >> 8) | (u >> 16) | (u >> 24)
        bx = (u & 0xFF).astype(np.uint8).reshape(z, y, x // 4)
    else:
        bx = np.bitwise_or.reduce(b.reshape(z, y, x // _CELL, _CELL), axis=3)
    by = np.bitwise_or.reduce(bx.reshape(z, y // _CELL, _CELL, -1), axis=2)
    return np.bitwise_or.reduce(by.reshape(z // _CELL, _CELL, y // _CELL, -1), axis=1)


def _post_shape(cube: _Cube) -> dict[str, float]:
    """Convexity and open fraction of the post partner in a ball around the cleft centroid."""
    out = {"post_convexity": math.nan, "post_open_fraction": math.nan}
    cleft = cube.points(_CLEFT_BITS)
    if cleft.shape[0] == 0:
        return out
    radius = min(POST_RADIUS_NM, float(((np.array(cube.shape) / 2 - 1) * cube.v).min()))
    g = cube.sub
    v, shape = g.v, np.array(g.shape)
    c = cleft.mean(axis=0)
    lo = np.maximum(np.floor((c - radius) / v).astype(int), 0)
    hi = np.minimum(np.ceil((c + radius) / v).astype(int) + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    d2 = [((np.arange(s.start, s.stop) * vv - cc) ** 2).astype(np.float32) for s, vv, cc in zip(box, v, c)]
    r2 = d2[0][:, None, None] + d2[1][None, :, None] + d2[2][None, None, :]
    ball = r2 <= np.float32(radius * radius)
    shell = ball & (r2 > np.float32((radius - float(v.max())) ** 2))
    inside = g.post[box] & ball
    n_shell = int(np.count_nonzero(shell))
    if n_shell:
        out["post_open_fraction"] = np.count_nonzero(inside & shell) / n_shell
    n = int(np.count_nonzero(inside))
    if n:
        out["post_convexity"] = n * float(np.prod(v)) / _voxel_hull_volume(inside, v)
    return out


def _sphere_directions(n: int) -> np.ndarray:
    """``n`` unit vectors spread evenly over the sphere (Fibonacci lattice)."""
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = np.pi * (1 + 5 ** 0.5) * k
    r = np.sqrt(1 - z * z)
    return np.column_stack([z, r * np.cos(phi), r * np.sin(phi)])


#: Directions whose extreme voxels span the hull (a finer set changes convexity by < 1 %).
_HULL_DIRECTIONS = _sphere_directions(400)


def _voxel_hull_volume(mask: np.ndarray, v: np.ndarray) -> float:
    """Volume (nm^3) of the convex hull of ``mask``'s voxel centres grown by half a voxel's half-width.

    Hull vertices are extreme voxels: only the first and last voxel of each line along x can
    be one, and the voxels extreme in 400 directions span the hull. Growing the hull of the
    centres by the voxel box scaled by 1/2 (Steiner's formula to first order: V + 1/2 * sum over
    facets of area * support of the voxel box) makes digital balls and cylinders of any size
    score 1 +- 0.05, where the plain hull of the centres or of the whole voxel cubes drifts
    with the size in voxels.
    """
    ends = np.unique(_line_ends(mask, 2))
    pts = np.column_stack(np.unravel_index(ends, mask.shape)) * v
    if pts.shape[0] >= 4:
        p32, d32 = pts.astype(np.float32), _HULL_DIRECTIONS.T.astype(np.float32)
        # three broadcasts, not a matrix product: a threaded BLAS would spin idle cores
        proj = p32[:, :1] * d32[0] + p32[:, 1:2] * d32[1] + p32[:, 2:] * d32[2]
        pts = pts[np.unique(np.argmax(proj, axis=0))]
    half = v / 2
    try:
        hull = ConvexHull(pts)
    except (QhullError, ValueError):  # flat or tiny: the box around the voxels
        return float(np.prod(pts.max(axis=0) - pts.min(axis=0) + v))
    tri = hull.points[hull.simplices]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = 0.5 * np.linalg.norm(cross, axis=1)
    normal = hull.equations[:, :3]
    return float(hull.volume + 0.5 * np.sum(area * np.einsum("fk,k->f", np.abs(normal), half)))


def _line_ends(mask: np.ndarray, axis: int) -> np.ndarray:
    """Flat indices of the first and last voxel of ``mask`` on every line along ``axis``."""
    m = np.moveaxis(mask, axis, -1)
    first = m.argmax(axis=-1)
    last = m.shape[-1] - 1 - m[..., ::-1].argmax(axis=-1)
    a, b = np.nonzero(m.any(axis=-1))
    ends = np.concatenate([first[a, b], last[a, b]])
    a, b = np.concatenate([a, a]), np.concatenate([b, b])
    other = [j for j in range(3) if j != axis]
    coords = [None, None, None]
    coords[other[0]], coords[other[1]], coords[axis] = a, b, ends
    return np.ravel_multi_index(tuple(coords), mask.shape)


def _intensity(raw: np.ndarray, cube: _Cube) -> dict[str, float]:
    x = raw.astype(np.float32)
    mean, std = _mean_std(x)
    out = {"raw_mean_cube": mean, "raw_std_cube": std}

    def stats(box: tuple[slice, ...], m: np.ndarray) -> tuple[float, float]:
        return _mean_std(x[box][m])

    regions = {"vesicle": cube.crop(L.BIT_VESICLE), "cleft": cube.crop(_CLEFT_BITS),
               "pre": cube.pre, "post": cube.post, "mito": cube.crop(L.BIT_MITO_ANY)}
    for s, region in regions.items():
        if region is None:
            m_s, s_s = math.nan, math.nan
        elif isinstance(region, np.ndarray):
            m_s, s_s = _mean_std(x[region])
        else:
            m_s, s_s = stats(*region)
        out[f"raw_mean_{s}"], out[f"raw_std_{s}"] = m_s, s_s
        out[f"contrast_{s}"] = (m_s - mean) / std if std > 0 else math.nan
    out["vesicle_texture"] = out["raw_std_vesicle"] / std if std > 0 else math.nan
    out["psd_darkness"] = _psd_darkness(x, cube, mean, std)
    return out


def _mean_std(vals: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of float32 values, summed in float64; NaN when empty."""
    if vals.size == 0:
        return math.nan, math.nan
    n = vals.size
    mu = float(vals.sum(dtype=np.float64)) / n
    var = float(np.square(vals).sum(dtype=np.float64)) / n - mu * mu
    return mu, math.sqrt(max(var, 0.0))


def _psd_darkness(x: np.ndarray, cube: _Cube, mean: float, std: float) -> float:
    """(cube mean - mean of post voxels within :data:`PSD_DISTANCE_NM` of the cleft) / cube std.

    Measured on every second voxel (``cube.sub``): a mean needs no more.
    """
    g = cube.sub
    cleft = (g.bits & np.uint8(_CLEFT_BITS)) != 0
    if std <= 0 or not cleft.any() or not g.post.any():
        return math.nan
    reach = np.ceil(PSD_DISTANCE_NM / g.v).astype(int) + 1
    idx = [np.flatnonzero(cleft.any(axis=tuple(j for j in range(3) if j != a))) for a in range(3)]
    lo = np.maximum(np.array([i[0] for i in idx]) - reach, 0)
    hi = np.minimum(np.array([i[-1] + 1 for i in idx]) + reach, np.array(g.shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    dist = ndimage.distance_transform_edt(~cleft[box], sampling=g.v)
    near = g.post[box] & (dist <= PSD_DISTANCE_NM)
    if not near.any():
        return math.nan
    return (mean - float(x[cube.sub_slices][box][near].mean(dtype=np.float64))) / std


# --------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------
def descriptor_columns(table: pd.DataFrame, *, clustered_only: bool = True) -> list[str]:
    """Descriptor columns present in ``table``, in registry order (only clusterable ones by default)."""
    return [n for n, d in DESCRIPTORS.items() if n in table.columns and (d.clustered or not clustered_only)]


def readable_table(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` for display: descriptors rounded to 3 significant digits, units in the headers,
    and "not annotated" where the dataset does not annotate the structure a value needs."""
    out = df.copy()
    missing: dict[str, pd.Series] = {}
    for key, col in ANNOTATION_SENTINELS.items():
        if col in df.columns:
            missing[key] = df[col].isna()
    for name in descriptor_columns(df, clustered_only=False):
        d = DESCRIPTORS[name]
        values = pd.to_numeric(df[name], errors="coerce")
        shown = values.map(_round_sig).astype(object)
        not_ann = pd.Series(False, index=df.index)
        for key in d.needs:
            if key in missing:
                not_ann |= missing[key]
        shown[values.isna() & not_ann] = NOT_ANNOTATED
        out[name] = shown
    return out.rename(columns={n: DESCRIPTORS[n].label for n in descriptor_columns(df, clustered_only=False)})


def _round_sig(x: float, digits: int = 3) -> float:
    """``x`` rounded to ``digits`` significant digits (NaN and 0 unchanged)."""
    if x is None or not np.isfinite(x) or x == 0:
        return x
    return float(round(x, digits - 1 - math.floor(math.log10(abs(x)))))
