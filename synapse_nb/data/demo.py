"""Synthetic EM demo dataset with known synapse classes.

:func:`make_demo_dataset` writes several bounding boxes in exactly the seed's on-disk layout
(see :mod:`synapse_nb.data.seed_layout`)::

    <out>/raw/bbox1/slice_000.tif ...    uint8 EM-like intensities, volume indexed [z, y, x]
    <out>/seg/bbox1/slice_000.tif ...    uint16 neurite instance ids (0 = membrane/extracellular)
    <out>/mask/bbox_1/slice_000.tif ...  uint8 extra labels, ids from ``labels.label_ids_for``
    <out>/tables/bbox1.xlsx              synapse table (Var1, centre and side coordinates)

plus two helper files that the seed layout does not have and readers may ignore:
``<out>/ground_truth.csv`` (the returned table for all bboxes) and ``<out>/demo_spec.json``
(spec, class descriptions, label ids; it also marks the folder as a demo folder that may be
overwritten).

What is in a volume
-------------------
* Neuropil: curved tubes (axons and dendrites) packed densely; every voxel goes to the nearest
  tube skeleton within a (wobbly) reach, so neighbouring neurites share polygonal borders like in
  real neuropil. Membranes: every voxel next to a different id (both sides of a border, incl. the
  extracellular side) is dark in ``raw`` (~40 before blur) and 0 in ``seg``. Cytoplasm is
  mid-gray (~150-165) with low-frequency variation and some granularity, extracellular space
  light; then a slight blur and Gaussian noise. A few neurites carry mitochondria.
* Synapses: a presynaptic bouton (a swelling on an axon) faces a postsynaptic partner (a spine
  head on a neck attached to a dendrite, or the dendrite shaft) across a thin cleft. The cleft is
  the 3-voxel sheet between both (label ``cleft``; on ~40 % of synapses an outer part is
  ``cleft2``, which is simply ``cleft`` in bboxes where both ids are equal), with a dark
  postsynaptic density and a thinner presynaptic density. A vesicle cloud (label ``vesicle``;
  raw: small dark rings ~5 voxels wide, dense-core vesicles as dark dots) fills part of the bouton
  next to the cleft. Mitochondria (label ``mito``; dark elongated blobs with cristae stripes)
  sit in some boutons. Sizes are roughly real at 8 nm voxels (boutons 0.3-0.5 um wide), so an
  80^3 cube is mostly one synapse.
* Axon groups: one axon makes 1-5 synapses (at the default size mostly 1-4, as the boutons must
  be >= ``min_spacing`` apart along it); its seg id is ``true_pre_id`` and all synapses of one
  axon have the axon's class on purpose.

Classes (column ``synapse_class``, string values, see :data:`CLASS_NAMES`) differ in bouton size,
vesicle-cloud size and vesicle type, cleft size and shape, mitochondria and partner type, so an
80^3 raw cube centred on the cleft looks clearly different between classes. Classes are
assigned per axon group, balancing the number of synapses per class within each bbox.

Presets (:data:`DEMO_PRESETS`, :func:`demo_spec`, tables in :mod:`.demo_presets`): ``default`` is
the above. ``hard`` has five classes (:data:`HARD_CLASS_NAMES`), four of one size that differ only
in vesicle type, postsynaptic density thickness or cleft curvature, plus nuisance a method must
ignore: brightness offset and contrast gain per bbox (:func:`bbox_nuisance`, written into
``demo_spec.json``), a smooth brightness drift inside each bbox, cleft normals spread evenly over
the sphere (the default's prefer z, as its axons prefer the y/x plane) and stronger noise.
``brightness`` is a small test volume: one class, brightness and contrast varying strongly per
bbox, so a clustering that follows brightness splits it by bbox.

Table coordinates are x, y, z bbox-local integer voxels (volumes are [z, y, x]). The centre is
a voxel of the ``cleft`` label at the middle of the cleft; the side points lie on the partner
segments 3-12 voxels from it along the cleft normal. The presynaptic side is put in side 1 or
side 2 at random (``true_pre_side``). Centres keep ``border_margin`` (20) voxels from every
border; about one synapse per bbox lies closer than ``soft_margin`` (40), so cube padding is
exercised. Centres are >= ``min_spacing`` (56) apart (less in volumes too small for that).
A synapse whose structures were squeezed away by a neighbour (only happens in tiny volumes)
is left out of the table with an INFO log line.

Determinism: everything derives from ``DemoSpec.seed`` (per-bbox ``SeedSequence([seed, i])``).
The synapse plan (positions, classes, axon groups) uses its own stream, so
:func:`plan_demo_table` returns the classes/centres without rasterising any volume.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage as ndi

from ..core.atomic import atomic_dir, atomic_path, write_text
from ..core.labels import CENTER_COLUMNS, DEMO_CLASS_COLUMN, NAME_COLUMN, SIDE1_COLUMNS, SIDE2_COLUMNS, LabelIds, label_ids_for, mask_folder_name
from .demo_presets import DEMO_PRESETS, HARD_CLASS_NAMES, HARD_CLASS_PARAMS, PRESET_CLASSES, PRESET_SPECS

logger = logging.getLogger(__name__)

__all__ = [
    "CLASS_NAMES",
    "DEMO_PRESETS",
    "HARD_CLASS_NAMES",
    "DemoSpec",
    "demo_spec",
    "preset_class_names",
    "make_demo_dataset",
    "plan_demo_table",
    "bbox_names",
    "bbox_nuisance",
    "DEMO_MARKER_FILE",
    "GROUND_TRUTH_FILE",
]

#: Written into every demo folder; its presence allows overwriting the folder.
DEMO_MARKER_FILE = "demo_spec.json"
#: Concatenated ground-truth table of all bboxes (same content as the return value).
GROUND_TRUTH_FILE = "ground_truth.csv"
#: Voxel size of the demo data in nm (z, y, x), like the seed data.
DEMO_VOXEL_SIZE_NM = (8.0, 8.0, 8.0)

#: The known synapse classes (values of column ``synapse_class``) and what they look like.
CLASS_NAMES: dict[int | str, str] = {
    "A_spine_bigcloud": (
        "large bouton packed with a big cloud of small clear vesicles, short flat cleft, "
        "no mitochondrion, small spine head on a thin neck as partner"
    ),
    "B_shaft_mito": (
        "flattened bouton with a large mitochondrion and only a small vesicle cloud, long flat "
        "cleft with a thin density, onto a thick dendrite shaft"
    ),
    "C_perforated": (
        "medium bouton with a medium cloud of clear and dense-core vesicles, curved cleft with "
        "a perforated postsynaptic density cupping the bouton, large mushroom spine head"
    ),
}

# Geometry per class: (low, high) ranges are drawn uniformly per synapse.
_CLASS_PARAMS: dict[str, dict] = {
    "A_spine_bigcloud": dict(
        post="spine", rb=(26.0, 30.0), rc=(6.0, 8.0), k=(0.0, 0.0), post_r=(10.0, 12.0),
        neck_len=(5.0, 8.0), neck_r=3.0, den_r=(9.0, 12.0), cloud_r=(25.0, 29.0),
        mito_p=0.0, mito_semi=(0.0, 0.0), n_perf=0, dense_core=0.0, psd=3.0, ves_spacing=4.7,
    ),
    "B_shaft_mito": dict(
        post="shaft", rb=(23.0, 26.0), rc=(18.0, 21.0), k=(0.0, 0.0), post_r=(0.0, 0.0),
        neck_len=(0.0, 0.0), neck_r=0.0, den_r=(26.0, 30.0), cloud_r=(7.0, 9.0),
        mito_p=1.0, mito_semi=(0.85, 0.45), n_perf=0, dense_core=0.0, psd=1.6, ves_spacing=5.0,
    ),
    "C_perforated": dict(
        post="spine", rb=(18.0, 20.0), rc=(13.0, 15.0), k=(1 / 40, 1 / 28), post_r=(22.0, 25.0),
        neck_len=(4.0, 6.0), neck_r=3.5, den_r=(9.0, 12.0), cloud_r=(10.0, 12.0),
        mito_p=0.35, mito_semi=(0.55, 0.25), n_perf=2, dense_core=0.6, psd=4.5, ves_spacing=6.5,
    ),
}
_ALL_CLASS_PARAMS: dict[str, dict] = {**_CLASS_PARAMS, **HARD_CLASS_PARAMS}
_HALF_GAP = 1.0  # cleft sheet: |s| <= 1 (3 voxels, 24 nm)
_GROUP_SIZES = np.array([1, 2, 3, 4, 5])
_GROUP_P = np.array([0.30, 0.25, 0.20, 0.15, 0.10])

# Raw intensities (before blur and noise).
_I_CYTO, _I_ECS, _I_MEMBRANE = 162.0, 175.0, 38.0
_I_CLEFT, _I_PSD, _I_PREDENSITY = 120.0, 42.0, 78.0
_I_VES_RING, _I_VES_LUMEN, _I_DENSE_CORE = 40.0, 168.0, 45.0
_I_MITO, _I_MITO_CRISTA, _I_MITO_MEMBRANE = 100.0, 45.0, 40.0


@dataclass
class DemoSpec:
    """Size and seed of the demo dataset.

    ``synapses_per_bbox`` is a target: synapses come in axon groups of 1-5 and are placed with a
    minimum spacing, so a bbox may get slightly more (the last group overshoots) or fewer (if the
    volume is too small for the spacing) synapses.
    """

    n_bboxes: int = 4
    shape: tuple[int, int, int] = (160, 224, 224)  # z, y, x per bbox
    synapses_per_bbox: int = 16
    seed: int = 0
    #: Minimum distance between synapse centres (voxels); relaxed if the volume is too small.
    min_spacing: float = 56.0
    #: Synapse centres keep at least this distance from every border ...
    border_margin: int = 20
    #: ... and only a few (``near_border_fraction`` of the target, at least 1) lie closer than this.
    soft_margin: int = 40
    near_border_fraction: float = 0.07
    #: Random neuropil tubes per million voxels (besides the synapses' own axons/dendrites).
    tubes_per_mvoxel: float = 40.0
    noise_sigma: float = 9.0
    blur_sigma: float = 0.7
    #: Class table (a key of :data:`DEMO_PRESETS`); :func:`demo_spec` also applies the preset's
    #: sizes and nuisance. Recorded in ``demo_spec.json``.
    preset: str = "default"
    #: Subset of the preset's classes to draw from (None: the preset's own selection).
    classes: tuple[str, ...] | None = None
    #: Per-bbox brightness offset in grey levels, one value per bbox spread over this range.
    brightness_range: tuple[float, float] = (0.0, 0.0)
    #: Per-bbox contrast gain around grey 128, spread over this range like the offset.
    contrast_range: tuple[float, float] = (1.0, 1.0)
    #: Std (grey levels) of a smooth brightness drift inside each bbox (feature size ~64 voxels).
    brightness_drift: float = 0.0
    #: Spread synapse axons (and so cleft normals) evenly over all directions instead of
    #: preferring axons in the y/x plane.
    isotropic_normals: bool = False
    #: Largest number of synapses on one axon (1-5); small values balance classes per bbox better.
    max_axon_group: int = 5

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        if len(self.shape) != 3 or min(self.shape) < 32:
            raise ValueError(f"DemoSpec.shape must be 3 sizes >= 32 (z, y, x), got {self.shape}")
        if self.n_bboxes < 1:
            raise ValueError(f"DemoSpec.n_bboxes must be >= 1, got {self.n_bboxes}")
        if self.synapses_per_bbox < 1:
            raise ValueError(f"DemoSpec.synapses_per_bbox must be >= 1, got {self.synapses_per_bbox}")
        self._check_classes()
        self._check_nuisance()

    def _check_classes(self) -> None:
        if self.preset not in DEMO_PRESETS:
            raise ValueError(f"DemoSpec.preset must be one of {sorted(DEMO_PRESETS)}, got {self.preset!r}")
        if self.classes is not None:
            self.classes = tuple(str(c) for c in self.classes)
            known = preset_class_names(self.preset)
            unknown = [c for c in self.classes if c not in known]
            if not self.classes or unknown:
                raise ValueError(f"DemoSpec.classes must name classes of preset {self.preset!r} "
                                 f"({', '.join(map(str, known))}), got {list(self.classes)}")

    def _check_nuisance(self) -> None:
        self.brightness_range = tuple(float(v) for v in self.brightness_range)  # type: ignore[assignment]
        self.contrast_range = tuple(float(v) for v in self.contrast_range)  # type: ignore[assignment]
        for key in ("brightness_range", "contrast_range"):
            lo, hi = getattr(self, key)
            if not lo <= hi:
                raise ValueError(f"DemoSpec.{key} must be (low, high) with low <= high, got {(lo, hi)}")
        if self.contrast_range[0] <= 0:
            raise ValueError(f"DemoSpec.contrast_range must be > 0, got {self.contrast_range}")
        if self.brightness_drift < 0:
            raise ValueError(f"DemoSpec.brightness_drift must be >= 0, got {self.brightness_drift}")
        if not 1 <= self.max_axon_group <= len(_GROUP_SIZES):
            raise ValueError(f"DemoSpec.max_axon_group must be 1-{len(_GROUP_SIZES)}, got {self.max_axon_group}")


def preset_class_names(preset: str = "default") -> dict[int | str, str]:
    """The class table (name -> description) of a preset: every class its specs may use."""
    if preset not in DEMO_PRESETS:
        raise ValueError(f"unknown demo preset {preset!r}: use one of {sorted(DEMO_PRESETS)}")
    return CLASS_NAMES if preset == "default" else HARD_CLASS_NAMES


def _spec_classes(spec: DemoSpec) -> list[str]:
    """The classes ``spec`` draws from, in table order."""
    chosen = spec.classes or PRESET_CLASSES.get(spec.preset)
    return [str(c) for c in preset_class_names(spec.preset) if chosen is None or c in chosen]


def demo_spec(preset: str = "default", **overrides) -> DemoSpec:
    """The :class:`DemoSpec` of a preset (see :data:`DEMO_PRESETS`), with ``overrides`` applied.

    ``demo_spec("hard", seed=3)`` is the hard demo with another seed; ``demo_spec()`` equals
    ``DemoSpec()``.
    """
    if preset not in PRESET_SPECS:
        raise ValueError(f"unknown demo preset {preset!r}: use one of {sorted(PRESET_SPECS)}")
    return DemoSpec(**{**PRESET_SPECS[preset], "preset": preset, **overrides})


def bbox_names(spec: DemoSpec) -> list[str]:
    return [f"bbox{i + 1}" for i in range(spec.n_bboxes)]


# ----------------------------------------------------------------------------------------
# Planning (cheap, no volumes)
# ----------------------------------------------------------------------------------------
@dataclass
class _Synapse:
    name: str
    cls: str
    group: int
    pre_id: int
    post_id: int
    post_type: str
    center: np.ndarray  # int zyx, a cleft voxel
    normal: np.ndarray  # unit, pre -> post
    e1: np.ndarray  # in-plane unit vectors (cleft plane)
    e2: np.ndarray
    tangent: np.ndarray  # axon direction at the bouton
    rb: float
    db: float  # bouton centre = center - normal * db
    rc: float
    k: float  # cleft curvature (s_c = s + k * rho^2)
    post_r: float
    dp: float  # spine head centre = center + normal * dp
    neck_r: float
    den_r: float
    den_dir: np.ndarray
    den_point: np.ndarray  # a point on the dendrite axis (zyx, float)
    cloud_r: float
    cloud_center: np.ndarray
    perforations: list = field(default_factory=list)  # (a1, a2, radius) in the cleft plane
    cleft2: bool = False
    mito: tuple | None = None  # (center zyx, long axis unit, semi-axes (long, short))
    dense_core: float = 0.0
    psd: float = 3.0
    pre_side: int = 1
    group_size: int = 1


@dataclass
class _Tube:
    tid: int
    points: np.ndarray  # (n, 3) zyx float, ~0.5 voxel steps
    radius: np.ndarray  # (n,)
    kind: str  # "axon" | "dendrite"


@dataclass
class _BBoxPlan:
    bbox: str
    shape: tuple[int, int, int]
    synapses: list[_Synapse]
    tubes: list[_Tube]  # synapse axons and dendrites (the neuropil filler is drawn later)
    next_id: int


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _perpendicular_basis(n: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    a = rng.normal(size=3)
    e1 = _unit(a - a.dot(n) * n)
    e2 = np.cross(n, e1)
    return e1, e2


def _bezier_path(rng: np.random.Generator, shape: tuple[int, int, int], spread: float,
                 flat_z: float = 0.6) -> np.ndarray:
    """A smooth random curve crossing the volume, sampled every ~0.5 voxel (zyx)."""
    shp = np.asarray(shape, float)
    q = rng.uniform(0.05, 0.95, 3) * shp
    u = rng.normal(size=3)
    u[0] *= flat_z  # z is the short axis; prefer paths running in the y/x plane
    u = _unit(u)
    half = 0.6 * np.linalg.norm(shp)
    p0, p3 = q - u * half, q + u * half
    p1 = p0 + (p3 - p0) / 3 + rng.normal(0, spread, 3)
    p2 = p0 + 2 * (p3 - p0) / 3 + rng.normal(0, spread, 3)
    n = int(2 * half * 2.6) + 8
    t = np.linspace(0.0, 1.0, n)[:, None]
    pts = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3 * p3
    inside = np.all((pts >= -0.5) & (pts <= shp - 0.5), axis=1)
    if not inside.any():
        return pts[:0]
    idx = np.flatnonzero(inside)
    return pts[idx[0]: idx[-1] + 1]


def _draw_geometry(rng: np.random.Generator, cls: str, size: int) -> dict[str, np.ndarray]:
    """Random sizes of ``size`` candidate synapses of class ``cls`` (arrays)."""
    p = _ALL_CLASS_PARAMS[cls]
    keys = ("rb", "rc", "k", "post_r", "neck_len", "den_r", "cloud_r")
    g = {key: rng.uniform(*p[key], size) for key in keys}
    h = _HALF_GAP
    g["db"] = h + np.sqrt(np.maximum(g["rb"] ** 2 - g["rc"] ** 2, 1.0))
    if p["post"] == "spine":
        g["dp"] = h - g["k"] * g["rc"] ** 2 + np.sqrt(np.maximum(g["post_r"] ** 2 - g["rc"] ** 2, 1.0))
    else:
        g["dp"] = h + np.sqrt(np.maximum(g["den_r"] ** 2 - g["rc"] ** 2, 1.0))
    return g


def _class_for_next_group(counts: dict[str, int], rng: np.random.Generator) -> str:
    least = min(counts.values())
    options = sorted(c for c, v in counts.items() if v == least)
    return options[int(rng.integers(len(options)))]


@dataclass
class _Placement:
    """Where synapse centres of one bbox may go and how far apart they must be."""

    lo: np.ndarray  # centres stay within [lo, hi] (border_margin, zyx)
    hi: np.ndarray
    soft_lo: np.ndarray  # a centre outside [soft_lo, soft_hi] counts as near the border
    soft_hi: np.ndarray
    spacing: float  # minimum distance between centres
    max_near: int  # how many centres may lie near the border


def _placement(spec: DemoSpec) -> _Placement:
    """Margins and spacing for ``spec``, shrunk for volumes too small to honour them."""
    shp = np.asarray(spec.shape, float)
    margin = np.minimum(spec.border_margin, (shp - 1) / 2 - 1)
    soft = np.minimum(spec.soft_margin, (shp - 1) / 4)  # small volumes: every cube is "near"
    lo, hi = margin, shp - 1 - margin
    soft_lo, soft_hi = soft, shp - 1 - soft
    # the spacing shrinks for volumes too small to hold the target at full spacing
    free_vol = float(np.prod(np.maximum(hi - lo, 1.0)))
    spacing = float(min(spec.min_spacing, max(18.0, 0.9 * (free_vol / spec.synapses_per_bbox) ** (1 / 3))))
    max_near = max(1, int(round(spec.near_border_fraction * spec.synapses_per_bbox)))
    return _Placement(lo, hi, soft_lo, soft_hi, spacing, max_near)


def _sites_on_path(rng: np.random.Generator, path: np.ndarray, cls: str, k: int, place: _Placement,
                   centres: list[np.ndarray], n_near: int) -> list[tuple]:
    """Up to ``k`` synapse sites along one axon path, as (centre, normal, tangent, geometry, near).

    One candidate per path point (vectorised), then a greedy walk from a random start keeps
    candidates that respect the margins, the spacing and the near-border quota.
    """
    tang = np.gradient(path, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    geoms = _draw_geometry(rng, cls, len(path))
    a = rng.normal(size=path.shape)
    normals = a - (a * tang).sum(1, keepdims=True) * tang
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    cands = np.round(path + normals * geoms["db"][:, None])
    valid = np.all((cands >= place.lo) & (cands <= place.hi), axis=1)
    near = np.any((cands < place.soft_lo) | (cands > place.soft_hi), axis=1)
    if centres:
        dmin = np.min(np.linalg.norm(cands[:, None, :] - np.asarray(centres)[None], axis=2), axis=1)
        valid &= dmin >= place.spacing
    chosen: list[tuple] = []
    i = int(rng.integers(0, 30))
    while i < len(path) and len(chosen) < k:
        ok = bool(valid[i])
        if ok and near[i]:
            ok = n_near + sum(ch[4] for ch in chosen) < place.max_near
        if ok and chosen:
            ok = min(np.linalg.norm(ch[0] - cands[i]) for ch in chosen) >= place.spacing
        if ok:
            geom = {key: float(v[i]) for key, v in geoms.items()}
            chosen.append((cands[i], normals[i], tang[i], geom, bool(near[i])))
            i += int(2 * place.spacing)  # ~0.5 voxel path steps: move on >= spacing
        else:
            i += 1
    return chosen


def _axon_for_group(rng: np.random.Generator, shape: tuple[int, int, int], cls: str, k: int,
                    place: _Placement, centres: list[np.ndarray], n_near: int,
                    flat_z: float = 0.6) -> tuple[np.ndarray, list] | None:
    """Try up to 25 random axon paths; the (path, sites) carrying the most of ``k`` synapses."""
    best: tuple[np.ndarray, list] | None = None
    for _attempt in range(25):
        path = _bezier_path(rng, shape, spread=18.0, flat_z=flat_z)
        if len(path) < 20:
            continue
        chosen = _sites_on_path(rng, path, cls, k, place, centres, n_near)
        if best is None or len(chosen) > len(best[1]):
            best = (path, chosen)
        if len(chosen) == k:
            break
    return best


def _dendrite_tube(post_id: int, den_point: np.ndarray, den_dir: np.ndarray, den_r: float,
                   shape: tuple[int, int, int]) -> _Tube:
    """A long straight dendrite through ``den_point`` (rasterised into the neuropil later)."""
    shp = np.asarray(shape, float)
    length = float(np.linalg.norm(shp))
    ts = np.arange(-length, length, 0.5)
    dpts = den_point[None, :] + ts[:, None] * den_dir[None, :]
    inside = np.all((dpts >= -0.5) & (dpts <= shp - 0.5), axis=1)
    dpts = dpts[inside]
    return _Tube(post_id, dpts, np.full(len(dpts), den_r), "dendrite")


def _perforations(rng: np.random.Generator, n_perf: int, rc: float) -> list[tuple]:
    """Holes in the cleft disc, as (a1, a2, radius) in the cleft plane; the second opposes the first."""
    perfs = []
    for j in range(n_perf):
        a = rng.uniform(0, 2 * np.pi) if j == 0 else perfs[0][3] + np.pi + rng.uniform(-0.6, 0.6)
        rr = 0.55 * rc
        perfs.append((rr * np.cos(a), rr * np.sin(a), 0.2 * rc, a))
    return [p[:3] for p in perfs]


def _bouton_mito(rng: np.random.Generator, params: dict, geom: dict, c: np.ndarray, n: np.ndarray,
                 t: np.ndarray) -> tuple | None:
    """The bouton's mitochondrion (centre, long axis, semi-axes), drawn with the class's odds."""
    if rng.random() >= params["mito_p"]:
        return None
    f_long, f_short = params["mito_semi"]
    semi = (f_long * geom["rb"], f_short * geom["rb"])
    # behind the vesicle cloud, away from the cleft
    mc = c - n * (geom["db"] + geom["rb"] - semi[1] - 3.0)
    return (mc, t.copy(), semi)


def _make_synapse(rng: np.random.Generator, name: str, cls: str, group: int, axon_id: int, post_id: int,
                  site: tuple, group_size: int, shape: tuple[int, int, int]) -> tuple[_Synapse, _Tube]:
    """One planned synapse at ``site`` (from :func:`_sites_on_path`) and its partner dendrite."""
    c, n, t, geom, _near = site
    params = _ALL_CLASS_PARAMS[cls]
    e1, e2 = _perpendicular_basis(n, rng)
    den_dir = _unit(np.cross(n, _perpendicular_basis(n, rng)[0]))
    if params["post"] == "spine":
        den_dist = geom["dp"] + geom["post_r"] + geom["neck_len"] + geom["den_r"]
    else:
        den_dist = geom["dp"]
    den_point = c + n * den_dist
    dendrite = _dendrite_tube(post_id, den_point, den_dir, geom["den_r"], shape)
    cloud_center = c - n * (_HALF_GAP + 0.5 + 0.85 * geom["cloud_r"])
    perforations = _perforations(rng, params["n_perf"], geom["rc"])
    mito = _bouton_mito(rng, params, geom, c, n, t)
    syn = _Synapse(
        name=name, cls=cls, group=group, pre_id=axon_id,
        post_id=post_id, post_type=params["post"], center=c.astype(int), normal=n,
        e1=e1, e2=e2, tangent=t, rb=geom["rb"], db=geom["db"], rc=geom["rc"],
        k=geom["k"], post_r=geom["post_r"], dp=geom["dp"], neck_r=params["neck_r"],
        den_r=geom["den_r"], den_dir=den_dir, den_point=den_point,
        cloud_r=geom["cloud_r"], cloud_center=cloud_center,
        perforations=perforations, cleft2=bool(rng.random() < 0.4),
        mito=mito, dense_core=params["dense_core"], psd=params["psd"],
        pre_side=int(rng.integers(1, 3)), group_size=group_size,
    )
    return syn, dendrite


def _plan_bbox(spec: DemoSpec, index: int) -> _BBoxPlan:
    """Place the synapses of one bbox in axon groups, balancing classes (no volumes yet)."""
    bbox = f"bbox{index + 1}"
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, index, 0]))
    shape = spec.shape
    place = _placement(spec)
    centres: list[np.ndarray] = []
    synapses: list[_Synapse] = []
    tubes: list[_Tube] = []
    next_id = 1
    counts = {c: 0 for c in _spec_classes(spec)}
    sizes, size_p = _GROUP_SIZES[:spec.max_axon_group], _GROUP_P[:spec.max_axon_group]
    if spec.max_axon_group < len(_GROUP_SIZES):  # the full table is used as is (same draws)
        size_p = size_p / size_p.sum()
    flat_z = 1.0 if spec.isotropic_normals else 0.6
    group = 0
    failures = 0
    n_near = 0  # synapses closer than soft_margin to a border (a quota keeps them few)
    while len(synapses) < spec.synapses_per_bbox and failures < 12:
        remaining = spec.synapses_per_bbox - len(synapses)
        k = int(rng.choice(sizes, p=size_p))
        k = min(k, max(1, remaining + 1))
        cls = _class_for_next_group(counts, rng)
        best = _axon_for_group(rng, shape, cls, k, place, centres, n_near, flat_z)
        if best is None or not best[1]:
            failures += 1
            continue
        path, chosen = best
        axon_id = next_id
        next_id += 1
        axon_r = float(rng.uniform(3.0, 4.5))
        tubes.append(_Tube(axon_id, path, np.full(len(path), axon_r), "axon"))
        for site in chosen:
            n_near += int(site[4])
            name = f"{bbox}_syn{len(synapses) + 1:02d}"
            syn, dendrite = _make_synapse(rng, name, cls, group, axon_id, next_id, site, len(chosen), shape)
            next_id += 1
            tubes.append(dendrite)
            synapses.append(syn)
            centres.append(site[0])
            counts[cls] += 1
        group += 1
    if len(synapses) < spec.synapses_per_bbox:
        log = logger.warning if len(synapses) < 0.75 * spec.synapses_per_bbox else logger.info
        log("%s: placed %d of %d synapses (volume %s too small for spacing %.0f)",
            bbox, len(synapses), spec.synapses_per_bbox, shape, place.spacing)
    return _BBoxPlan(bbox, shape, synapses, tubes, next_id)


def _plan_rows(plan: _BBoxPlan) -> list[dict]:
    rows = []
    for s in plan.synapses:
        z, y, x = (int(v) for v in s.center)
        rows.append({
            "bbox": plan.bbox, NAME_COLUMN: s.name,
            CENTER_COLUMNS[0]: x, CENTER_COLUMNS[1]: y, CENTER_COLUMNS[2]: z,
            DEMO_CLASS_COLUMN: s.cls, "true_pre_id": s.pre_id, "true_post_id": s.post_id,
            "true_pre_side": s.pre_side, "post_type": s.post_type, "axon_group": s.group,
            "axon_group_size": s.group_size, "has_mito": s.mito is not None,
            "cleft_radius": round(s.rc, 2), "vesicle_cloud_radius": round(s.cloud_r, 2),
            "bouton_radius": round(s.rb, 2),
        })
    return rows


def plan_demo_table(spec: DemoSpec | None = None) -> pd.DataFrame:
    """The planned synapses (bbox, name, centre, class, axon, ...) without writing volumes.

    Same classes, centres and axon groups as :func:`make_demo_dataset` for the same spec; the
    side coordinates are only known after rasterising and are absent here.
    """
    spec = spec or DemoSpec()
    rows = []
    for i in range(spec.n_bboxes):
        rows.extend(_plan_rows(_plan_bbox(spec, i)))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------
# Rasterising
# ----------------------------------------------------------------------------------------
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation weights (n_out, n_in) spreading n_in knots over n_out samples."""
    pos = np.linspace(0.5, n_in - 1.5, n_out)
    i0 = np.floor(pos).astype(int)
    f = pos - i0
    w = np.zeros((n_out, n_in), np.float32)
    w[np.arange(n_out), i0] = 1 - f
    w[np.arange(n_out), np.minimum(i0 + 1, n_in - 1)] += f
    return w


def _lowfreq(rng: np.random.Generator, shape: tuple[int, int, int], cell: int) -> np.ndarray:
    """Smooth noise (about unit std) with feature size ~``cell`` voxels, float32.

    Coarse Gaussian noise, smoothed, then upsampled separably by matrix products (fast).
    """
    small = tuple(max(2, int(np.ceil(s / cell))) + 2 for s in shape)
    coarse = ndi.gaussian_filter(rng.standard_normal(small, dtype=np.float32), 0.7)
    coarse /= max(float(coarse.std()), 1e-6)
    wz, wy, wx = (_interp_matrix(s, c) for s, c in zip(shape, small))
    a = coarse @ wx.T  # (cz, cy, X)
    a = np.einsum("yc,zcx->zyx", wy, a, optimize=True)  # (cz, Y, X)
    out = (wz @ a.reshape(small[0], -1)).reshape(shape)
    return np.ascontiguousarray(out, dtype=np.float32)


def _filler_tubes(rng: np.random.Generator, spec: DemoSpec, first_id: int) -> list[_Tube]:
    n = int(round(spec.tubes_per_mvoxel * np.prod(spec.shape) / 1e6))
    tubes = []
    tid = first_id
    for _ in range(n):
        pts = _bezier_path(rng, spec.shape, spread=30.0, flat_z=1.0)
        if len(pts) < 4:
            continue
        dendrite = rng.random() < 0.35
        r0 = rng.uniform(7.0, 11.0) if dendrite else rng.uniform(3.0, 7.0)
        phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.01, 0.04)
        r = r0 * (1 + 0.18 * np.sin(phase + freq * np.arange(len(pts))))
        tubes.append(_Tube(tid, pts, r, "dendrite" if dendrite else "axon"))
        tid += 1
    return tubes


def _neuropil(shape: tuple[int, int, int], tubes: list[_Tube], wobble: np.ndarray) -> np.ndarray:
    """Seg ids: each voxel -> nearest tube skeleton if within its (wobbly) reach."""
    skel_id = np.zeros(shape, np.int32)
    skel_r = np.zeros(shape, np.float32)
    hi = np.asarray(shape) - 1
    for tube in tubes:  # synapse tubes come last, so they win shared skeleton voxels
        ip = np.clip(np.round(tube.points).astype(np.int64), 0, hi)
        skel_id[ip[:, 0], ip[:, 1], ip[:, 2]] = tube.tid
        skel_r[ip[:, 0], ip[:, 1], ip[:, 2]] = tube.radius
    dist, ind = ndi.distance_transform_edt(skel_id == 0, return_indices=True)
    flat = np.ravel_multi_index(tuple(ind), shape)
    del ind
    seg = skel_id.ravel()[flat].reshape(shape)
    reach = skel_r.ravel()[flat].reshape(shape) * 1.8 + wobble
    seg[dist > reach] = 0
    return seg


@dataclass
class _Local:
    sl: tuple[slice, slice, slice]
    bouton: np.ndarray
    post: np.ndarray
    core: np.ndarray  # protected after painting (bouton, head/near shaft, neck, gap)
    gap: np.ndarray
    cleft: np.ndarray
    cleft2: np.ndarray
    psd: np.ndarray
    predensity: np.ndarray
    cloud: np.ndarray
    vesicle_room: np.ndarray  # cloud minus a 1.5 voxel rim: where vesicle centres may go
    mito: np.ndarray | None


def _box(center: np.ndarray, half: float, shape: tuple[int, int, int]):
    lo = np.maximum(np.floor(center - half).astype(int), 0)
    hi = np.minimum(np.ceil(center + half).astype(int) + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _offsets(sl, origin: np.ndarray):
    """Broadcastable float32 coordinate offsets (dz, dy, dx) of a box relative to origin."""
    return [np.arange(s.start, s.stop, dtype=np.float32).reshape([-1 if a == i else 1 for a in range(3)])
            - np.float32(origin[i]) for i, s in enumerate(sl)]


def _dot(d, v) -> np.ndarray:
    return d[0] * np.float32(v[0]) + d[1] * np.float32(v[1]) + d[2] * np.float32(v[2])


def _ellipsoid(d, axis: np.ndarray, semi: tuple[float, float]) -> np.ndarray:
    r2 = d[0] ** 2 + d[1] ** 2 + d[2] ** 2
    t = _dot(d, axis)
    return (t / semi[0]) ** 2 + (r2 - t ** 2) / semi[1] ** 2 <= 1.0


def _synapse_geometry(s: _Synapse, shape: tuple[int, int, int]) -> _Local:
    h = _HALF_GAP
    c = s.center.astype(float)
    n = s.normal
    reach_post = (s.dp + s.post_r + 3 if s.post_type == "spine" else s.dp + 4)
    half = max(s.db + s.rb, reach_post, s.rc + 4) + 3
    sl = _box(c, half, shape)
    d = _offsets(sl, c)
    r2 = d[0] ** 2 + d[1] ** 2 + d[2] ** 2
    sn = _dot(d, n)
    a1, a2 = _dot(d, s.e1), _dot(d, s.e2)
    rho2 = a1 ** 2 + a2 ** 2
    sc = sn + np.float32(s.k) * rho2
    bouton = (r2 + 2 * s.db * sn + s.db ** 2 <= s.rb ** 2) & (sc < -h)
    if s.post_type == "spine":
        head = (r2 - 2 * s.dp * sn + s.dp ** 2 <= s.post_r ** 2) & (sc > h)
        # neck: segment from the head centre to the dendrite axis
        w = [d[i] - np.float32(n[i] * s.dp) for i in range(3)]
        length = float(np.linalg.norm(s.den_point - c) - s.dp)
        t = np.clip(_dot(w, n), 0, length)
        off2 = (w[0] - t * n[0]) ** 2 + (w[1] - t * n[1]) ** 2 + (w[2] - t * n[2]) ** 2
        neck = (off2 <= s.neck_r ** 2) & (sc > h)
        wd = [d[i] - np.float32(s.den_point[i] - c[i]) for i in range(3)]
        td = _dot(wd, s.den_dir)
        shaft = (wd[0] ** 2 + wd[1] ** 2 + wd[2] ** 2 - td ** 2 <= s.den_r ** 2) & (sc > h)
        post = head | neck | shaft
        core_post = head | neck
    else:
        wd = [d[i] - np.float32(s.den_point[i] - c[i]) for i in range(3)]
        td = _dot(wd, s.den_dir)
        post = (wd[0] ** 2 + wd[1] ** 2 + wd[2] ** 2 - td ** 2 <= s.den_r ** 2) & (sc > h)
        core_post = post & (r2 <= (s.rc + 8) ** 2)
    disc = rho2 <= s.rc ** 2
    holes = np.zeros_like(disc)
    for p1, p2, pr in s.perforations:
        holes |= (a1 - p1) ** 2 + (a2 - p2) ** 2 <= pr ** 2
    gap = (np.abs(sc) <= h) & (rho2 <= (s.rc + 3) ** 2)
    cleft_all = (np.abs(sc) <= h + 0.5) & disc & ~holes
    if s.cleft2:
        cleft2 = cleft_all & (a1 > 0.3 * s.rc) & (rho2 > (0.55 * s.rc) ** 2)
    else:
        cleft2 = np.zeros_like(cleft_all)
    cleft = cleft_all & ~cleft2
    psd = (sc > h) & (sc <= h + s.psd + 1) & disc & ~holes
    predensity = (sc < -h) & (sc >= -h - 2.5) & (rho2 <= (0.9 * s.rc) ** 2) & ~holes
    cc = s.cloud_center - c
    cloud = ((d[0] - cc[0]) ** 2 + (d[1] - cc[1]) ** 2 + (d[2] - cc[2]) ** 2 <= s.cloud_r ** 2) & bouton
    rb_in = s.rb - 1.5
    room = (r2 + 2 * s.db * sn + s.db ** 2 <= rb_in ** 2) & (sc < -h - 2.5) & cloud
    mito = None
    if s.mito is not None:
        mc, ax, semi = s.mito
        dm = [d[i] - np.float32(mc[i] - c[i]) for i in range(3)]
        mito = _ellipsoid(dm, ax, semi) & (sc < -h - 3.0)
    core = bouton | core_post | gap
    return _Local(sl, bouton, post, core, gap, cleft, cleft2, psd, predensity, cloud, room, mito)


def _membranes(seg: np.ndarray) -> np.ndarray:
    mem = np.zeros(seg.shape, bool)
    for ax in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[ax], b[ax] = slice(1, None), slice(None, -1)
        diff = seg[tuple(a)] != seg[tuple(b)]
        mem[tuple(a)] |= diff
        mem[tuple(b)] |= diff
    return mem


def _paint_mito_texture(raw: np.ndarray, inside: np.ndarray, sl, center: np.ndarray,
                        axis: np.ndarray, rng: np.random.Generator) -> None:
    if not inside.any():
        return
    d = _offsets(sl, center)
    along = _dot(d, axis)
    e1, _ = _perpendicular_basis(axis, rng)
    across = _dot(d, e1)
    # cristae: two families of thin sheets (across and along the long axis), so that every
    # section through the mitochondrion shows dark lines
    p1, p2 = rng.uniform(4.0, 5.5, 2)
    tilt = rng.uniform(-0.4, 0.4)
    w1 = 0.5 * (1 + np.cos(2 * np.pi * (along + tilt * across) / p1 + rng.uniform(0, 2 * np.pi)))
    w2 = 0.5 * (1 + np.cos(2 * np.pi * across / p2 + rng.uniform(0, 2 * np.pi)))
    stripe = np.maximum(w1 ** 4, 0.8 * w2 ** 6)
    val = _I_MITO - (_I_MITO - _I_MITO_CRISTA) * stripe
    rim = inside & ~ndi.binary_erosion(inside)
    box = raw[sl]
    box[inside] = np.broadcast_to(val, inside.shape)[inside]
    box[rim] = _I_MITO_MEMBRANE


def _paint_vesicles(raw: np.ndarray, ves_label: np.ndarray, s: _Synapse, loc: _Local,
                    rng: np.random.Generator) -> None:
    room = loc.vesicle_room & ves_label
    if not room.any():
        return
    # jittered grid of vesicle centres inside the cloud
    idx = np.argwhere(room)
    lo, hi = idx.min(0), idx.max(0) + 1
    spacing = _ALL_CLASS_PARAMS[s.cls]["ves_spacing"]
    grid = np.stack(np.meshgrid(*[np.arange(a + rng.uniform(0, spacing), b, spacing) for a, b in zip(lo, hi)],
                                indexing="ij"), -1).reshape(-1, 3)
    if len(grid) == 0:
        return
    grid = grid + rng.uniform(-1.2, 1.2, grid.shape)
    gi = np.clip(np.round(grid).astype(int), lo, hi - 1)
    keep = room[gi[:, 0], gi[:, 1], gi[:, 2]] & (rng.random(len(grid)) < 0.9)
    centres, gi = grid[keep], gi[keep]
    if len(centres) == 0:
        return
    radius = rng.uniform(2.1, 2.7, len(centres))
    dense = rng.random(len(centres)) < s.dense_core
    radius[dense] = rng.uniform(3.0, 4.0, int(dense.sum()))
    # nearest centre per voxel inside the cloud's bounding box (EDT on a small box)
    sub = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    seeds = np.ones(tuple(hi - lo), bool)
    seeds[tuple((gi - lo).T)] = False
    _, ind = ndi.distance_transform_edt(seeds, return_indices=True)
    lookup = np.full(seeds.shape, -1, np.int64)
    lookup[tuple((gi - lo).T)] = np.arange(len(centres))
    nearest = lookup[tuple(ind)]
    coords = np.indices(seeds.shape, dtype=np.float32) + lo.reshape(3, 1, 1, 1).astype(np.float32)
    dist = np.sqrt(((coords - centres[nearest].transpose(3, 0, 1, 2).astype(np.float32)) ** 2).sum(0))
    r = radius[nearest].astype(np.float32)
    isdense = dense[nearest]
    region = ves_label[sub]
    vals = np.full(dist.shape, np.nan, np.float32)
    vals[(dist <= r) & ~isdense] = _I_VES_LUMEN
    vals[(dist <= r) & (dist > r - 1.1) & ~isdense] = _I_VES_RING
    vals[(dist <= r) & isdense] = _I_DENSE_CORE
    vals[(dist <= r + 0.8) & (dist > r) & isdense] = _I_VES_LUMEN - 10
    draw = region & ~np.isnan(vals)
    box = raw[loc.sl][sub]
    box[draw] = vals[draw]


def _side_point(seg: np.ndarray, s: _Synapse, target: int, direction: float) -> np.ndarray | None:
    """A voxel on ``target`` a few voxels from the cleft along +-normal (zyx int), or None."""
    hi = np.asarray(seg.shape) - 1
    for dist in (6, 5, 7, 8, 4, 9, 10, 11, 12, 3, 13, 14, 15):
        p = np.clip(np.round(s.center + direction * dist * s.normal).astype(int), 0, hi)
        if seg[tuple(p)] == target:
            return p
    # fallback: nearest voxel of the target close to the cleft
    sl = _box(s.center.astype(float), 12, seg.shape)
    idx = np.argwhere(seg[sl] == target) + np.array([x.start for x in sl])
    dist = np.linalg.norm(idx - s.center, axis=1)
    ok = (dist >= 3) & (dist <= 12)
    if not ok.any():
        return None  # the partner was squeezed away from the cleft by a neighbour
    return idx[ok][np.argmin(dist[ok])]


def _carve_synapses(seg: np.ndarray, synapses: list[_Synapse]) -> list[_Local]:
    """Paint each synapse's bouton, partner and cleft gap into ``seg``; return their geometry.

    Earlier synapses' cores are protected from later ones.
    """
    protected = np.zeros(seg.shape, bool)
    locs = []
    for s in synapses:
        loc = _synapse_geometry(s, seg.shape)
        box, prot = seg[loc.sl], protected[loc.sl]
        box[loc.post & ~prot] = s.post_id
        box[loc.bouton & ~prot] = s.pre_id
        box[loc.gap & ~prot] = 0
        prot |= loc.core
        locs.append(loc)
    return locs


def _filler_mitos(rng: np.random.Generator, filler: list[_Tube], seg: np.ndarray, mask: np.ndarray,
                  mito_id: int, synapses: list[_Synapse]) -> list[tuple]:
    """Label mitochondria in some thick neuropil tubes away from synapses.

    Returns (slice, inside mask, centre, axis) per mitochondrion for painting raw later.
    """
    mitos: list[tuple] = []
    syn_centres = np.array([s.center for s in synapses]) if synapses else np.zeros((0, 3))
    for tube in filler:
        if tube.radius.mean() < 4.5 or rng.random() > 0.15:
            continue
        j = int(rng.integers(len(tube.points)))
        mc = tube.points[j]
        if len(syn_centres) and np.min(np.linalg.norm(syn_centres - mc, axis=1)) < 40:
            continue
        j2 = min(j + 2, len(tube.points) - 1)
        j1 = max(j2 - 4, 0)
        ax = _unit(tube.points[j2] - tube.points[j1])
        r = float(tube.radius[j])
        semi = (min(2.6 * r, 16.0), 0.6 * r)
        sl = _box(mc, semi[0] + 1, seg.shape)
        inside = _ellipsoid(_offsets(sl, mc), ax, semi) & (seg[sl] == tube.tid)
        mask[sl][inside] = mito_id
        mitos.append((sl, inside, mc, ax))
    return mitos


def _label_synapses(seg: np.ndarray, mask: np.ndarray, synapses: list[_Synapse], locs: list[_Local],
                    ids: LabelIds) -> list[tuple]:
    """Label bouton mitochondria, vesicle clouds and clefts in ``mask``.

    Returns the bouton mitochondria as (slice, inside mask, centre, axis) for painting raw.
    """
    mitos: list[tuple] = []
    for s, loc in zip(synapses, locs):
        box_seg, box_mask = seg[loc.sl], mask[loc.sl]
        pre = box_seg == s.pre_id
        ves = loc.cloud & pre
        if loc.mito is not None:
            m = loc.mito & pre
            box_mask[m] = ids.mito
            ves &= ~ndi.binary_dilation(m, iterations=2)
            mitos.append((loc.sl, m, s.mito[0], s.mito[1]))
        box_mask[ves] = ids.vesicle
    for loc in locs:  # clefts last: nothing may cover a cleft (cleft2 first: centres stay cleft)
        mask[loc.sl][loc.cleft2] = ids.cleft2
    for loc in locs:
        mask[loc.sl][loc.cleft] = ids.cleft
    return mitos


def _table_rows(seg: np.ndarray, mask: np.ndarray, plan: _BBoxPlan, locs: list[_Local],
                ids: LabelIds) -> list[dict]:
    """Ground-truth rows with side points and true sizes; synapses that did not survive are left out.

    Also narrows each ``loc.cloud`` to the vesicle voxels that were kept, for painting raw.
    """
    rows = []
    for s, loc in zip(plan.synapses, locs):
        pre = seg[loc.sl] == s.pre_id
        ves_final = (mask[loc.sl] == ids.vesicle) & loc.cloud & pre
        loc.cloud = ves_final  # reuse for raw painting
        # self-check: a synapse squeezed out by its neighbours (tiny volumes) gets no table row
        pre_pt = _side_point(seg, s, s.pre_id, -1.0)
        post_pt = _side_point(seg, s, s.post_id, +1.0)
        problem = None
        if mask[tuple(s.center)] != ids.cleft:
            problem = "centre lost its cleft label"
        elif pre_pt is None or post_pt is None:
            problem = "a partner segment is not next to the cleft"
        elif not ves_final.any():
            problem = "no vesicle cloud left in the bouton"
        if problem:
            logger.info("%s: %s dropped from the table (%s)", plan.bbox, s.name, problem)
            continue
        side1, side2 = (pre_pt, post_pt) if s.pre_side == 1 else (post_pt, pre_pt)
        row = _plan_rows(_BBoxPlan(plan.bbox, plan.shape, [s], [], 0))[0]
        row.update({SIDE1_COLUMNS[0]: int(side1[2]), SIDE1_COLUMNS[1]: int(side1[1]),
                    SIDE1_COLUMNS[2]: int(side1[0]), SIDE2_COLUMNS[0]: int(side2[2]),
                    SIDE2_COLUMNS[1]: int(side2[1]), SIDE2_COLUMNS[2]: int(side2[0])})
        row["true_vesicle_voxels"] = int(ves_final.sum())
        row["true_cleft_voxels"] = int(loc.cleft.sum() + loc.cleft2.sum())
        row["true_mito_voxels"] = int((loc.mito & pre).sum()) if loc.mito is not None else 0
        rows.append(row)
    return rows


def _base_intensities(rng: np.random.Generator, seg: np.ndarray, mem: np.ndarray,
                      tubes: list[_Tube]) -> np.ndarray:
    """Raw before synapse details: textured cytoplasm (axons a bit darker), light ECS, dark membranes."""
    shape = seg.shape
    raw = np.full(shape, _I_CYTO, np.float32)
    raw += _lowfreq(rng, shape, 24) * np.float32(7.0)
    raw += ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.2) * np.float32(14.0)
    max_id = int(seg.max())
    offsets = rng.normal(0, 7.0, max_id + 1).astype(np.float32)
    kinds = {t.tid: t.kind for t in tubes}
    for tid, kind in kinds.items():
        if kind == "axon" and tid <= max_id:
            offsets[tid] -= 6.0
    offsets[0] = 0
    raw += offsets[seg]
    ecs = seg == 0
    raw[ecs] = _I_ECS
    raw[mem] = _I_MEMBRANE
    return raw


def _paint_synapses(raw: np.ndarray, seg: np.ndarray, mem: np.ndarray, synapses: list[_Synapse],
                    locs: list[_Local], rng: np.random.Generator) -> None:
    """Cleft, pre- and postsynaptic densities and vesicles of every synapse into ``raw``."""
    for s, loc in zip(synapses, locs):
        box = raw[loc.sl]
        box_seg = seg[loc.sl]
        box[loc.gap & (box_seg == 0)] = _I_CLEFT
        box[loc.cleft | loc.cleft2] = np.minimum(box[loc.cleft | loc.cleft2], _I_CLEFT)
        box[loc.predensity & (box_seg == s.pre_id)] = _I_PREDENSITY
        psd = loc.psd & ((box_seg == s.post_id) | mem[loc.sl])
        box[psd] = _I_PSD
        _paint_vesicles(raw, loc.cloud, s, loc, rng)


def bbox_nuisance(spec: DemoSpec) -> list[tuple[float, float]]:
    """(brightness offset, contrast gain) of each bbox of ``spec``.

    Stratified: each bbox gets its own slice of the range (in random order), so two bboxes of
    one run always differ by at least half a slice. Own random stream: the rest is unchanged.
    """
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(1000,)))
    n = spec.n_bboxes

    def spread(lo: float, hi: float) -> np.ndarray:
        return lo + (hi - lo) * (rng.permutation(n) + 0.25 + 0.5 * rng.random(n)) / n

    offsets = spread(*spec.brightness_range)
    gains = spread(*spec.contrast_range)
    return [(float(o), float(g)) for o, g in zip(offsets, gains)]


def _has_nuisance(spec: DemoSpec) -> bool:
    return spec.brightness_range != (0.0, 0.0) or spec.contrast_range != (1.0, 1.0) or spec.brightness_drift > 0


def _apply_nuisance(raw: np.ndarray, spec: DemoSpec, index: int) -> np.ndarray:
    """Contrast gain around grey 128, brightness offset and a smooth drift of bbox ``index``."""
    offset, gain = bbox_nuisance(spec)[index]
    raw = (raw - np.float32(128.0)) * np.float32(gain) + np.float32(128.0 + offset)
    if spec.brightness_drift > 0:
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, index, 2]))
        raw += _lowfreq(rng, spec.shape, 64) * np.float32(spec.brightness_drift)
    return raw


def _render_raw(rng: np.random.Generator, spec: DemoSpec, index: int, seg: np.ndarray, mem: np.ndarray,
                tubes: list[_Tube], mitos: list[tuple], plan: _BBoxPlan, locs: list[_Local]) -> np.ndarray:
    """The uint8 EM-like raw volume: intensities, mitochondria, synapses, blur, nuisance, noise."""
    raw = _base_intensities(rng, seg, mem, tubes)
    for sl, inside, mc, ax in mitos:
        _paint_mito_texture(raw, inside, sl, mc, ax, rng)
    _paint_synapses(raw, seg, mem, plan.synapses, locs, rng)
    raw = ndi.gaussian_filter(raw, spec.blur_sigma, output=np.float32)
    if _has_nuisance(spec):
        raw = _apply_nuisance(raw, spec, index)
    raw += rng.standard_normal(spec.shape, dtype=np.float32) * np.float32(spec.noise_sigma)
    return np.clip(np.rint(raw), 0, 255).astype(np.uint8)


def _render_bbox(spec: DemoSpec, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """Rasterise one planned bbox: raw (uint8), seg (uint16), mask (uint8) and its table."""
    plan = _plan_bbox(spec, index)
    ids: LabelIds = label_ids_for(plan.bbox)
    shape = spec.shape
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, index, 1]))
    filler = _filler_tubes(rng, spec, plan.next_id)
    wobble = _lowfreq(rng, shape, 10) * np.float32(1.6)
    seg = _neuropil(shape, filler + plan.tubes, wobble)
    del wobble
    locs = _carve_synapses(seg, plan.synapses)
    mem = _membranes(seg)  # both sides of every boundary (incl. extracellular side)
    seg[mem] = 0
    mask = np.zeros(shape, np.uint8)
    mitos = _filler_mitos(rng, filler, seg, mask, ids.mito, plan.synapses)
    mitos += _label_synapses(seg, mask, plan.synapses, locs, ids)
    rows = _table_rows(seg, mask, plan, locs, ids)
    raw_u8 = _render_raw(rng, spec, index, seg, mem, filler + plan.tubes, mitos, plan, locs)
    if seg.max() > np.iinfo(np.uint16).max:
        raise RuntimeError("demo generator: too many segments for uint16")
    return raw_u8, seg.astype(np.uint16), mask, pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------
def _write_stack(folder: Path, volume: np.ndarray) -> None:
    """Write one uncompressed 2-D TIFF per z slice; the folder appears complete or not at all."""
    width = max(3, len(str(volume.shape[0] - 1)))
    with atomic_dir(folder) as tmp:
        for z in range(volume.shape[0]):
            tifffile.imwrite(tmp / f"slice_{z:0{width}d}.tif", volume[z])


_LAYOUT_DIRS = ("raw", "seg", "mask", "tables")


def _check_out_dir(out: Path) -> None:
    if not out.exists() or not any(out.iterdir()) or (out / DEMO_MARKER_FILE).exists():
        return
    raise FileExistsError(
        f"{out} is not empty and has no {DEMO_MARKER_FILE}: refusing to write demo data into a "
        "folder that may hold real data. Choose an empty or new folder."
    )


def _remove_stale(out: Path, keep: list[str]) -> None:
    """Remove bboxes of an earlier, larger demo run in the same (demo) folder."""
    keep_set = set(keep)
    for sub in ("raw", "seg"):
        for p in (out / sub).glob("bbox*"):
            if p.is_dir() and p.name not in keep_set:
                shutil.rmtree(p)
    masks = {mask_folder_name(b) for b in keep}
    for p in (out / "mask").glob("bbox*"):
        if p.is_dir() and p.name not in masks:
            shutil.rmtree(p)
    for p in (out / "tables").glob("bbox*.xlsx"):
        if p.stem not in keep_set:
            p.unlink()


_TABLE_FIRST = [NAME_COLUMN, *CENTER_COLUMNS, *SIDE1_COLUMNS, *SIDE2_COLUMNS, DEMO_CLASS_COLUMN]


def make_demo_dataset(out_dir: str | os.PathLike, spec: DemoSpec | None = None,
                      progress: bool = True) -> pd.DataFrame:
    """Write the synthetic dataset to ``out_dir`` and return its ground-truth table.

    The returned table has one row per synapse of every bbox: ``bbox``, ``Var1``, the centre
    and side coordinates (x, y, z), ``synapse_class`` (a key of :data:`CLASS_NAMES`, or of
    :data:`HARD_CLASS_NAMES` for the ``hard``/``brightness`` presets),
    ``true_pre_side`` (1 or 2), ``true_pre_id``/``true_post_id`` (seg ids), ``post_type``
    (``spine``/``shaft``), ``axon_group``/``axon_group_size`` (synapses sharing the presynaptic
    axon), ``has_mito`` and planned/true sizes. The Excel table of a bbox holds the same
    columns except ``bbox``. Refuses to write into a non-empty folder that is not a demo folder.
    """
    from tqdm.auto import tqdm

    spec = spec or DemoSpec()
    out = Path(out_dir)
    _check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    names = bbox_names(spec)
    t0 = time.perf_counter()
    tables = []
    for i in tqdm(range(spec.n_bboxes), desc="demo bboxes", disable=not progress, leave=False):
        tb = time.perf_counter()
        bbox = names[i]
        raw, seg, mask, table = _render_bbox(spec, i)
        _write_stack(out / "raw" / bbox, raw)
        _write_stack(out / "seg" / bbox, seg)
        _write_stack(out / "mask" / mask_folder_name(bbox), mask)
        cols = _TABLE_FIRST + [c for c in table.columns if c not in _TABLE_FIRST and c != "bbox"]
        with atomic_path(out / "tables" / f"{bbox}.xlsx") as tmp:
            table[cols].to_excel(tmp, index=False, engine="openpyxl")
        tables.append(table)
        logger.info("demo %s: %d synapses, shape %s, %.1f s", bbox, len(table), spec.shape,
                    time.perf_counter() - tb)
    _remove_stale(out, names)
    gt = pd.concat(tables, ignore_index=True)
    with atomic_path(out / GROUND_TRUTH_FILE) as tmp:
        gt.to_csv(tmp, index=False)
    table = preset_class_names(spec.preset)
    meta = {
        "spec": asdict(spec),
        "preset": spec.preset,
        "bboxes": names,
        "voxel_size_nm": list(DEMO_VOXEL_SIZE_NM),
        "label_ids": {b: label_ids_for(b).as_dict() for b in names},
        "class_column": DEMO_CLASS_COLUMN,
        "classes": {c: table[c] for c in _spec_classes(spec)},
        "bbox_brightness_offset_gain": dict(zip(names, bbox_nuisance(spec))),
        "n_synapses": int(len(gt)),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_text(out / DEMO_MARKER_FILE, json.dumps(meta, indent=2))
    logger.info("demo dataset (preset %s): %d bboxes, %d synapses written to %s in %.1f s", spec.preset,
                spec.n_bboxes, len(gt), out, time.perf_counter() - t0)
    return gt
