"""Synthetic connectome: one large chunked volume with known synapses, for tests, demo and benchmarks.

:func:`make_synthetic_connectome` writes, into ``out``::

    connectome.zarr/{raw,seg,cleft,mask}   zarr 3 arrays, (z, y, x), chunked
    connectome_wk/                          the same four layers as a webKnossos dataset (mag 1)
    agglomerates.h5                         segment_to_agglomerate (uint64, index = segment id)
    synapses.parquet / .csv / .h5           the synapse table (HDF5: group ``synapses``)
    connectome.yaml, connectome_wk.yaml     connectome descriptions of both copies
    synthetic_connectome.json               parameters and counts; marks the folder as ours

What is in it: neurites are tubes running roughly along z (axons thin, dendrites thicker,
random filler neurites between them); each neurite is cut into several segment ids along its
length (an over-segmentation, like real pipelines) and ``agglomerates.h5`` maps every segment
back to its neurite. Synapses are those of :mod:`synapse_nb.data.demo` (same classes, same
per-synapse geometry: bouton, spine or shaft partner, cleft, densities, vesicle cloud, bouton
mitochondrion), 2-8 per axon, each onto its own dendrite. Layers: ``raw`` uint8 EM-like
(brightness and contrast drift smoothly over the volume; classes differ in shape, not
brightness), ``seg`` uint32 segment ids (0 on membranes / outside), ``cleft`` uint8 soft
prediction (high on clefts, plus small above-threshold false-positive blobs near but away from
synapses, so "the component nearest the synapse" matters), ``mask`` uint8 (mito 2, vesicle 3).

The volume is painted slab by slab (``chunk_zyx[0]`` z-slices plus a halo), so memory does not
grow with the volume. Everything derives from ``seed``: the same seed gives the same bytes.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ..core.atomic import write_text
from ..core.labels import DEMO_CLASS_COLUMN, LabelIds
from ..core.progress_bars import progress as progress_bar
from .volumes import import_webknossos
from .demo import (
    _ALL_CLASS_PARAMS,
    _HALF_GAP,
    _I_CLEFT,
    _I_CYTO,
    _I_DENSE_CORE,
    _I_ECS,
    _I_MEMBRANE,
    _I_PREDENSITY,
    _I_PSD,
    _I_VES_LUMEN,
    _I_VES_RING,
    _class_for_next_group,
    _draw_geometry,
    _interp_matrix,
    _label_synapses,
    _make_synapse,
    _membranes,
    _paint_mito_texture,
    _side_point,
    _Synapse,
    _synapse_geometry,
    _unit,
    preset_class_names,
)

logger = logging.getLogger(__name__)

__all__ = ["SyntheticConnectome", "make_synthetic_connectome", "MARKER_FILE", "MASK_LABELS", "CLEFT_THRESHOLD"]

#: Written into every output folder; its presence allows overwriting the folder.
MARKER_FILE = "synthetic_connectome.json"
#: Ids in the ``mask`` layer.
MASK_LABELS = {"mito": 2, "vesicle": 3}
#: Threshold of the ``cleft`` prediction written into the descriptions.
CLEFT_THRESHOLD = 128
TABLE_COLUMNS = ["synapse_id", "x", "y", "z", "pre_segment", "post_segment", DEMO_CLASS_COLUMN, "region", "axon"]

# Internal label ids while painting (cleft ids are turned into the prediction, not kept in mask).
_PAINT_IDS = LabelIds(mito=MASK_LABELS["mito"], vesicle=MASK_LABELS["vesicle"], cleft=1, cleft2=4)
_HALO = 16  # z-slices painted beyond each slab: side-point checks reach 15 voxels, blur 2
_PRIORITY = {"filler": 0, "dendrite": 1, "axon": 2}  # later kinds win where tubes overlap
_GROUP_RANGE = (2, 8)  # synapses per axon
_SPACING_FACTOR = 0.75  # of the mean free distance per synapse: lower packs more, closer
_CORE_MARGIN = 2.0  # voxels kept between a synapse centre and another synapse's core sphere
_AXON_TRIES = 10  # random axon paths tried per group
_BLUR_HALO = 3  # planes of raw painted beyond a slab: the blur (sigma 0.7, truncate 3) reaches 2


@dataclass(frozen=True)
class SyntheticConnectome:
    """What :func:`make_synthetic_connectome` wrote (paths) and how much of it."""

    root: Path
    zarr: Path
    webknossos: Path | None
    description: Path
    description_webknossos: Path | None
    tables: dict[str, Path]
    agglomerates: Path
    shape_zyx: tuple[int, int, int]
    n_synapses: int
    n_axons: int
    n_neurites: int
    n_segments: int
    seconds: float

    @property
    def table(self) -> pd.DataFrame:
        return pd.read_parquet(self.tables["parquet"])


@dataclass
class _Neurite:
    nid: int
    kind: str  # filler | dendrite | axon
    z0: int  # first plane
    cy: np.ndarray  # centre per plane from z0
    cx: np.ndarray
    r: np.ndarray
    sid: np.ndarray  # segment id per plane


@dataclass
class _Plan:
    shape: tuple[int, int, int]
    neurites: list[_Neurite]
    synapses: list[_Synapse]
    axon_of: list[int]  # agglomerate id of each synapse's axon
    n_segments: int
    seg_to_agg: np.ndarray
    blobs: np.ndarray  # (n, 5): z, y, x, radius, peak of false-positive cleft blobs


# ----------------------------------------------------------------------------------------
# Planning (cheap: no volume)
# ----------------------------------------------------------------------------------------
def _path(rng: np.random.Generator, shape, z0: int, z1: int, y0: float, x0: float, z_ref: float,
          slope: float) -> tuple[np.ndarray, np.ndarray]:
    """A gently tilted, wiggling centre line (y, x) per plane z0..z1-1 through (z_ref, y0, x0)."""
    z = np.arange(z0, z1, dtype=float) - z_ref
    sy, sx = rng.uniform(-slope, slope, 2)
    amp, freq, ph = rng.uniform(2.0, 8.0, 2), rng.uniform(0.005, 0.02, 2), rng.uniform(0, 2 * np.pi, 2)
    wy = amp[0] * (np.sin(freq[0] * z + ph[0]) - np.sin(ph[0]))
    wx = amp[1] * (np.sin(freq[1] * z + ph[1]) - np.sin(ph[1]))
    return y0 + sy * z + wy, x0 + sx * z + wx


def _split(rng: np.random.Generator, n: int, first_id: int) -> np.ndarray:
    """Segment id per plane: the neurite cut into 2-4 pieces (1 if short), ids from ``first_id``."""
    pieces = int(min(rng.integers(2, 5), max(1, n // 24)))
    cuts = np.sort(rng.choice(np.arange(12, n - 11), pieces - 1, replace=False)) if pieces > 1 else []
    sid = np.full(n, first_id, np.int64)
    for j, c in enumerate(cuts):
        sid[c:] = first_id + j + 1
    return sid


def _spacing(shape, n: int) -> float:
    """Minimum distance between cleft centres: loose enough that ``n`` fit (random packing)."""
    free = float(np.prod(np.maximum(np.asarray(shape, float) - 40, 1.0)))
    return float(min(50.0, max(18.0, _SPACING_FACTOR * (free / n) ** (1 / 3))))


def _core_spheres(c: np.ndarray, n: np.ndarray, geoms: dict[str, np.ndarray], post: str) -> list[tuple]:
    """Spheres (centres (m, 3), radii (m,)) holding each candidate's protected core.

    The bouton (centre - normal * db, rb) and the partner's head (spine) or the shaft near the
    cleft; a later synapse whose centre falls in an earlier core is dropped while painting.
    """
    spheres = [(c - n * geoms["db"][:, None], geoms["rb"])]
    if post == "spine":
        spheres.append((c + n * geoms["dp"][:, None], geoms["post_r"]))
    else:
        spheres.append((c, geoms["rc"] + 8.0))
    return spheres


class _Occupancy:
    """Placed synapse centres and core spheres, with k-d trees for the vectorised site tests."""

    def __init__(self) -> None:
        self.centres = np.zeros((0, 3))
        self.sphere_c = np.zeros((0, 3))
        self.sphere_r = np.zeros(0)
        self._trees = None

    def add(self, centres: np.ndarray, spheres: list[tuple]) -> None:
        self.centres = np.vstack([self.centres, centres])
        self.sphere_c = np.vstack([self.sphere_c, *[s[0] for s in spheres]])
        self.sphere_r = np.concatenate([self.sphere_r, *[s[1] for s in spheres]])
        self._trees = None

    def free(self, c: np.ndarray, spheres: list[tuple], spacing: float, ok: np.ndarray) -> np.ndarray:
        """Per candidate (where ``ok``): far from every placed centre, not in a placed core, no centre in its own."""
        from scipy.spatial import cKDTree

        ok = ok.copy()
        if not len(self.centres):
            return ok
        if self._trees is None:
            self._trees = (cKDTree(self.centres), cKDTree(self.sphere_c))
        tc, ts = self._trees
        rmax = float(self.sphere_r.max()) + _CORE_MARGIN
        kk = min(8, len(self.sphere_c))
        radius = np.append(self.sphere_r, -np.inf)  # missing neighbours come as index len(tree)
        tests = [lambda i: tc.query(c[i], distance_upper_bound=spacing)[0] >= spacing]
        for sc, sr in spheres:  # no placed centre inside the candidate's cores
            tests.append(lambda i, sc=sc, sr=sr: tc.query(sc[i], distance_upper_bound=float(sr.max()) + _CORE_MARGIN)[0]
                         >= sr[i] + _CORE_MARGIN)

        def in_core(i: np.ndarray) -> np.ndarray:
            dist, idx = ts.query(c[i], k=kk, distance_upper_bound=rmax)
            dist, idx = dist.reshape(len(i), kk), idx.reshape(len(i), kk)
            return ~np.any(dist < radius[idx] + _CORE_MARGIN, axis=1)

        for test in [*tests, in_core]:  # each test only on the candidates still in
            i = np.flatnonzero(ok)
            if not len(i):
                break
            ok[i] = test(i)
        return ok


def _pair_free(c: np.ndarray, spheres: list[tuple], i: int, chosen: list[int], spacing: float) -> bool:
    """Candidate ``i`` against the already chosen candidates of the same axon (few: a loop is fine)."""
    if not chosen:
        return True
    j = np.asarray(chosen)
    if np.min(np.linalg.norm(c[j] - c[i], axis=1)) < spacing:
        return False
    for sc, sr in spheres:
        if np.any(np.linalg.norm(sc[j] - c[i], axis=1) < sr[j] + _CORE_MARGIN):
            return False
        if np.any(np.linalg.norm(c[j] - sc[i], axis=1) < sr[i] + _CORE_MARGIN):
            return False
    return True


def _axon_sites(rng, shape, cls: str, k: int, cy, cx, occupied: _Occupancy, spacing: float) -> list[tuple]:
    """Up to ``k`` synapse sites (centre, normal, tangent, geometry, near) along one axon.

    One candidate per plane, generated and tested against the placed synapses at once; a
    greedy pass in random plane order then keeps candidates clear of each other.
    """
    Z = shape[0]
    margin = 20
    zs = rng.permutation(np.arange(margin, Z - margin))
    geoms = _draw_geometry(rng, cls, len(zs))
    up, down = np.minimum(zs + 1, Z - 1), zs - 1
    t = np.column_stack([np.ones(len(zs)), cy[up] - cy[down], cx[up] - cx[down]])
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    a = np.column_stack([np.zeros(len(zs)), rng.normal(size=(len(zs), 2))])
    n = a - (a * t).sum(1, keepdims=True) * t
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    c = np.round(np.column_stack([zs, cy[zs], cx[zs]]) + n * geoms["db"][:, None])
    hi = np.asarray(shape, float) - 1 - margin
    post = _ALL_CLASS_PARAMS[cls]["post"]
    spheres = _core_spheres(c, n, geoms, post)
    ok = occupied.free(c, spheres, spacing, np.all((c >= margin) & (c <= hi), axis=1))
    chosen: list[int] = []
    for i in np.flatnonzero(ok):
        if len(chosen) == k:
            break
        if _pair_free(c, spheres, int(i), chosen, spacing):
            chosen.append(int(i))
    return [(c[i], n[i], t[i], {key: float(v[i]) for key, v in geoms.items()}, False) for i in chosen]


def _plan(shape: tuple[int, int, int], n_synapses: int, seed: int) -> _Plan:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    Z, Y, X = shape
    classes = [str(c) for c in preset_class_names("default")]
    counts = {c: 0 for c in classes}
    spacing = _spacing(shape, n_synapses)
    neurites: list[_Neurite] = []
    synapses: list[_Synapse] = []
    axon_of: list[int] = []
    occupied = _Occupancy()
    next_sid = 1
    failures = 0

    def add(kind: str, z0: int, cy, cx, r) -> _Neurite:
        nonlocal next_sid
        sid = _split(rng, len(cy), next_sid)
        next_sid = int(sid[-1]) + 1
        nrt = _Neurite(len(neurites) + 1, kind, z0, cy, cx, np.asarray(r, float), sid)
        neurites.append(nrt)
        return nrt

    while len(synapses) < n_synapses and failures < 50:
        k = int(min(rng.integers(_GROUP_RANGE[0], _GROUP_RANGE[1] + 1), max(1, n_synapses - len(synapses))))
        cls = _class_for_next_group(counts, rng)
        best = None
        for _ in range(_AXON_TRIES):
            y0, x0 = rng.uniform(0.1, 0.9) * Y, rng.uniform(0.1, 0.9) * X
            cy, cx = _path(rng, shape, 0, Z, y0, x0, Z / 2, 0.3)
            sites = _axon_sites(rng, shape, cls, k, cy, cx, occupied, spacing)
            if best is None or len(sites) > len(best[2]):
                best = (cy, cx, sites)
            if len(sites) == k:
                break
        cy, cx, sites = best
        if not sites:
            failures += 1
            continue
        axon = add("axon", 0, cy, cx, np.full(Z, rng.uniform(3.0, 4.5)))
        sites.sort(key=lambda s: s[0][0])
        for site in sites:
            name = f"syn{len(synapses) + 1:05d}"
            # (the shape only sizes the demo's straight dendrite tube, unused here: keep it tiny)
            syn, _ = _make_synapse(rng, name, cls, 0, 0, 0, site, len(sites), (1, 1, 1))
            # the partner dendrite runs roughly along z (tubes are painted plane by plane)
            n = syn.normal
            zdir = np.array([1.0, *rng.normal(0, 0.12, 2)])
            syn.den_dir = _unit(zdir - zdir.dot(n) * n)
            half = int(rng.integers(50, 110))
            c = syn.center
            z0, z1 = max(0, int(c[0]) - half), min(Z, int(c[0]) + half)
            t = (np.arange(z0, z1) - syn.den_point[0]) / syn.den_dir[0]
            dend = add("dendrite", z0, syn.den_point[1] + t * syn.den_dir[1], syn.den_point[2] + t * syn.den_dir[2],
                       np.full(z1 - z0, syn.den_r))
            syn.pre_id = int(axon.sid[int(c[0]) - axon.z0])
            syn.post_id = int(dend.sid[int(c[0]) - dend.z0])
            synapses.append(syn)
            axon_of.append(axon.nid)
            counts[cls] += 1
        c = np.array([site[0] for site in sites], float)
        geoms = {key: np.array([site[3][key] for site in sites]) for key in sites[0][3]}
        occupied.add(c, _core_spheres(c, np.array([site[1] for site in sites]), geoms, _ALL_CLASS_PARAMS[cls]["post"]))
    if len(synapses) < n_synapses:
        logger.warning("synthetic connectome: placed %d of %d synapses (volume %s too small for spacing %.0f)",
                       len(synapses), n_synapses, shape, spacing)
    # filler neurites: ~25 % of every plane
    n_fill = int(0.25 * Y * X / (np.pi * 30.0))
    for _ in range(n_fill):
        dend = rng.random() < 0.35
        r0 = rng.uniform(7.0, 11.0) if dend else rng.uniform(3.0, 6.0)
        length = int(rng.integers(min(Z, 80), Z + 1))
        z0 = int(rng.integers(0, Z - length + 1))
        cy, cx = _path(rng, shape, z0, z0 + length, rng.uniform(0, Y), rng.uniform(0, X), z0, 0.4)
        ph, fr = rng.uniform(0, 2 * np.pi), rng.uniform(0.02, 0.06)
        add("filler", z0, cy, cx, r0 * (1 + 0.18 * np.sin(ph + fr * np.arange(length))))
    seg_to_agg = np.zeros(next_sid, np.uint64)
    for nrt in neurites:
        seg_to_agg[np.unique(nrt.sid)] = nrt.nid
    blobs = _false_positive_blobs(rng, shape, np.array([s.center for s in synapses], float))
    return _Plan(shape, neurites, synapses, axon_of, next_sid - 1, seg_to_agg, blobs)


def _false_positive_blobs(rng, shape, centres: np.ndarray) -> np.ndarray:
    """Small above-threshold blobs 22-40 voxels from some synapses and >= 22 from every synapse."""
    out = []
    if not len(centres):
        return np.zeros((0, 5))
    hi = np.asarray(shape, float) - 4
    for i in rng.permutation(len(centres))[: max(1, len(centres) // 3)]:
        d = _unit(rng.normal(size=3))
        p = np.round(centres[i] + d * rng.uniform(22, 40))
        if np.any(p < 4) or np.any(p > hi) or np.min(np.linalg.norm(centres - p, axis=1)) < 22:
            continue
        out.append([*p, rng.uniform(1.5, 3.0), rng.uniform(140, 210)])
    return np.asarray(out, float).reshape(-1, 5)


# ----------------------------------------------------------------------------------------
# Painting one slab
# ----------------------------------------------------------------------------------------
class _Samples:
    """All neurite centre samples, sorted by plane, for painting plane by plane."""

    def __init__(self, neurites: list[_Neurite]):
        parts = []
        for order, nrt in enumerate(neurites):
            z = np.arange(nrt.z0, nrt.z0 + len(nrt.cy))
            key = np.full(len(z), _PRIORITY[nrt.kind] * 10 ** 7 + order)
            parts.append(np.column_stack([z, key, nrt.cy, nrt.cx, nrt.r, nrt.sid]))
        a = np.concatenate(parts) if parts else np.zeros((0, 6))
        a = a[np.lexsort((a[:, 1], a[:, 0]))]
        self.z = a[:, 0].astype(np.int64)
        self.cy, self.cx, self.r, self.sid = a[:, 2], a[:, 3], a[:, 4], a[:, 5].astype(np.int64)
        self.kind = (a[:, 1] // 10 ** 7).astype(np.int64)

    def paint(self, plane: np.ndarray, z: int) -> None:
        """Paint the discs of plane ``z`` (float32 distances, flat int32 indices: few, small temporaries)."""
        lo, hi = np.searchsorted(self.z, [z, z + 1])
        Y, X = plane.shape
        flat_plane = plane.reshape(-1)
        for kind in range(3):  # priority order: later kinds overwrite
            sel = np.arange(lo, hi)[self.kind[lo:hi] == kind]
            if not len(sel):
                continue
            R = np.ceil(self.r[sel]).astype(int)
            for rad in np.unique(R):
                s = sel[R == rad]
                oy, ox = np.mgrid[-rad:rad + 1, -rad:rad + 1].reshape(2, -1).astype(np.int32)
                ry, rx = np.round(self.cy[s]), np.round(self.cx[s])
                fy = (ry - self.cy[s]).astype(np.float32)[:, None] + oy[None]
                fx = (rx - self.cx[s]).astype(np.float32)[:, None] + ox[None]
                fy *= fy
                fx *= fx
                fy += fx
                ok = fy <= (self.r[s] ** 2).astype(np.float32)[:, None]
                del fx, fy
                iy = ry.astype(np.int32)[:, None] + oy[None]
                ix = rx.astype(np.int32)[:, None] + ox[None]
                edge = (ry - rad < 0) | (ry + rad >= Y) | (rx - rad < 0) | (rx + rad >= X)
                if edge.any():  # discs crossing the plane's border: keep the inside part
                    ok[edge] &= (iy[edge] >= 0) & (iy[edge] < Y) & (ix[edge] >= 0) & (ix[edge] < X)
                iy *= X
                iy += ix
                ids = np.broadcast_to(self.sid[s, None], iy.shape)
                flat_plane[iy[ok]] = ids[ok]


def _shifted(s: _Synapse, origin: np.ndarray) -> _Synapse:
    """``s`` in the coordinates of a box starting at ``origin`` (zyx)."""
    mito = None if s.mito is None else (s.mito[0] - origin, s.mito[1], s.mito[2])
    return replace(s, center=(s.center - origin).astype(int), den_point=s.den_point - origin,
                   cloud_center=s.cloud_center - origin, mito=mito)


def _tight_bounds(s: _Synapse) -> tuple[np.ndarray, np.ndarray]:
    """Box (zyx, relative to ``s.center``) holding the synapse's painted structures.

    Tighter than the demo's cube: the bouton sphere, the partner's head (or the shaft near the
    cleft) and the cleft disc. The dendrite beyond is painted as a tube anyway.
    """
    c = s.center.astype(float)
    spheres = [(-s.normal * s.db, s.rb + 2), (np.zeros(3), s.rc + 5)]
    if s.post_type == "spine":
        spheres.append((s.normal * s.dp, s.post_r + 2))
        spheres.append((s.den_point - c, s.den_r + 2))
    else:
        spheres.append((s.normal * s.dp, s.rc + 9))
    lo = np.min([p - r for p, r in spheres], axis=0)
    hi = np.max([p + r for p, r in spheres], axis=0)
    return np.floor(lo).astype(int), np.ceil(hi).astype(int) + 1


def _tight_geometry(s: _Synapse, ext: tuple[int, int, int]):
    """demo._synapse_geometry over the synapse's tight box clipped to ``ext`` (slices in ext)."""
    lo, hi = _tight_bounds(s)
    lo = np.maximum(s.center + lo, 0)
    hi = np.minimum(s.center + hi, ext)
    if np.any(hi <= lo):
        lo, hi = np.zeros(3, int), np.ones(3, int)
    loc = _synapse_geometry(_shifted(s, lo), tuple(int(v) for v in hi - lo))
    loc.sl = tuple(slice(int(a.start + o), int(a.stop + o)) for a, o in zip(loc.sl, lo))
    return loc


def _z_reach(s: _Synapse) -> float:
    reach_post = s.dp + s.post_r + 3 if s.post_type == "spine" else s.dp + 4
    return max(s.db + s.rb, reach_post, s.rc + 4) + 3


def _vesicle_centres(s: _Synapse, seed: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vesicle centres (global zyx), radii and dense-core flags of one synapse, independent of slabs.

    Like the demo's jittered grid, anchored at the cloud's bounding box so every slab agrees.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3, index]))
    spacing = _ALL_CLASS_PARAMS[s.cls]["ves_spacing"]
    lo, hi = s.cloud_center - s.cloud_r, s.cloud_center + s.cloud_r
    grid = np.stack(np.meshgrid(*[np.arange(a + rng.uniform(0, spacing), b, spacing) for a, b in zip(lo, hi)],
                                indexing="ij"), -1).reshape(-1, 3)
    grid = grid + rng.uniform(-1.2, 1.2, grid.shape)
    # inside the cloud and the bouton minus a rim, on the presynaptic side of the cleft
    d = grid - s.center
    sn = d @ s.normal
    r2 = (d ** 2).sum(1)
    bouton_in = r2 + 2 * s.db * sn + s.db ** 2 <= (s.rb - 1.5) ** 2
    cloud = ((grid - s.cloud_center) ** 2).sum(1) <= s.cloud_r ** 2
    keep = bouton_in & cloud & (sn < -_HALF_GAP - 2.5) & (rng.random(len(grid)) < 0.9)
    centres = grid[keep]
    radius = rng.uniform(2.1, 2.7, len(centres))
    dense = rng.random(len(centres)) < s.dense_core
    radius[dense] = rng.uniform(3.0, 4.0, int(dense.sum()))
    return centres, radius, dense


def _paint_vesicles(raw: np.ndarray, ves_label: np.ndarray, sl, origin: np.ndarray, ves) -> None:
    """Vesicles (rings, dense cores) where ``ves_label``; nearest-centre rule like the demo."""
    centres, radius, dense = ves
    if not len(centres) or not ves_label.any():
        return
    lo = np.array([x.start for x in sl]) + origin
    hi = np.array([x.stop for x in sl]) + origin
    near = np.all((centres > lo - 6) & (centres < hi + 6), axis=1)
    centres, radius, dense = centres[near], radius[near], dense[near]
    if not len(centres):
        return
    from scipy.spatial import cKDTree

    idx = np.argwhere(ves_label)
    # voxels farther than the largest painted radius from every centre stay as they are, so
    # the search stops there (nearest index len(centres): padded below, never drawn)
    dist, nearest = cKDTree(centres).query(idx + lo, distance_upper_bound=float(radius.max()) + 0.8)
    radius, dense = np.append(radius, 0.0), np.append(dense, False)
    r = radius[nearest]
    isd = dense[nearest]
    vals = np.full(len(idx), np.nan, np.float32)
    vals[(dist <= r) & ~isd] = _I_VES_LUMEN
    vals[(dist <= r) & (dist > r - 1.1) & ~isd] = _I_VES_RING
    vals[(dist <= r) & isd] = _I_DENSE_CORE
    vals[(dist <= r + 0.8) & (dist > r) & isd] = _I_VES_LUMEN - 10
    draw = ~np.isnan(vals)
    idx = idx[draw]
    box = raw[sl]
    box[tuple(idx.T)] = vals[draw]


def _crop(inside: np.ndarray, sl, pad: int = 0, shape=None) -> tuple[slice, slice, slice]:
    """The slices (in the volume) of the bounding box of ``inside`` (given over ``sl``), padded."""
    idx = np.argwhere(inside)
    lo = idx.min(0) + [a.start for a in sl] - pad
    hi = idx.max(0) + 1 + [a.start for a in sl] + pad
    if shape is not None:
        lo, hi = np.maximum(lo, 0), np.minimum(hi, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


class _Lowfreq:
    """Smooth noise (unit std, feature size ``cell``) over the whole volume, evaluated per slab."""

    def __init__(self, rng: np.random.Generator, shape, cell: int):
        self.shape = shape
        small = tuple(max(2, int(np.ceil(s / cell))) + 2 for s in shape)
        coarse = ndi.gaussian_filter(rng.standard_normal(small).astype(np.float32), 0.7)
        self.coarse = coarse / max(float(coarse.std()), 1e-6)
        self.w = [_interp_matrix(s, c) for s, c in zip(shape, small)]

    def chunks(self, z0: int, z1: int, step: int = 8):
        """Yield (i0, i1, field of planes z0+i0..z0+i1) in float32 chunks: little memory per slab."""
        wz, wy, wx = self.w
        cols = np.flatnonzero(wz[z0:z1].any(0))  # linear interpolation: a few coarse planes
        a = self.coarse[cols] @ wx.T
        a = np.einsum("yc,zcx->zyx", wy, a, optimize=True).reshape(len(cols), -1)
        for i in range(z0, z1, step):
            j = min(i + step, z1)
            yield i - z0, j - z0, (wz[i:j, cols] @ a).reshape(j - i, *self.shape[1:])


@dataclass
class _Painter:
    plan: _Plan
    seed: int
    samples: _Samples
    offsets: np.ndarray  # raw offset per segment id
    texture: _Lowfreq
    drift: _Lowfreq
    gain: _Lowfreq
    reach: np.ndarray  # z reach of each synapse

    @classmethod
    def create(cls, plan: _Plan, seed: int) -> "_Painter":
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
        offsets = rng.normal(0, 7.0, plan.n_segments + 1).astype(np.float32)
        for nrt in plan.neurites:
            if nrt.kind == "axon":
                offsets[np.unique(nrt.sid)] -= 6.0
        offsets[0] = 0
        return cls(plan, seed, _Samples(plan.neurites), offsets, _Lowfreq(rng, plan.shape, 24),
                   _Lowfreq(rng, plan.shape, 256), _Lowfreq(rng, plan.shape, 256),
                   np.array([_z_reach(s) for s in plan.synapses]))

    def slab(self, z0: int, z1: int, index: int) -> tuple[dict[str, np.ndarray], list[dict]]:
        """The four layers of planes z0..z1-1 and the table rows of synapses centred there."""
        Z, Y, X = self.plan.shape
        e0, e1 = max(0, z0 - _HALO), min(Z, z1 + _HALO)
        origin = np.array([e0, 0, 0])
        ext = (e1 - e0, Y, X)
        seg = np.zeros(ext, np.int32)
        for z in range(e0, e1):
            self.samples.paint(seg[z - e0], z)
        cz = np.array([s.center[0] for s in self.plan.synapses], float)
        active = np.flatnonzero((cz + self.reach >= e0) & (cz - self.reach < e1))
        syns = [_shifted(self.plan.synapses[i], origin) for i in active]
        locs = []
        protected = np.zeros(ext, bool)
        for s in syns:  # as demo._carve_synapses: earlier synapses' cores are protected
            loc = _tight_geometry(s, ext)
            box, prot = seg[loc.sl], protected[loc.sl]
            box[loc.post & ~prot] = s.post_id
            box[loc.bouton & ~prot] = s.pre_id
            box[loc.gap & ~prot] = 0
            prot |= loc.core
            loc.bouton = loc.post = loc.core = None  # carving only: free them (a slab holds ~1000 boxes)
            locs.append(loc)
        del protected
        mem = _membranes(seg)
        seg[mem] = 0
        mask = np.zeros(ext, np.uint8)
        mitos = _label_synapses(seg, mask, syns, locs, _PAINT_IDS)
        cleft = (mask == _PAINT_IDS.cleft) | (mask == _PAINT_IDS.cleft2)
        rows = self._rows(seg, mask, syns, locs, active, e0, z0, z1)
        # raw only where the core's blur reaches (its noise, blur and drift are the costly part)
        r0, r1 = max(e0, z0 - _BLUR_HALO), min(e1, z1 + _BLUR_HALO)
        raw = self._raw(seg, mem, syns, locs, active, mitos, mask, origin, (r0 - e0, r1 - e0), index)
        mask[cleft] = 0
        pred = self._cleft(cleft, locs, origin, e0, e1)
        core = slice(z0 - e0, z1 - e0)
        return {"raw": raw[z0 - r0:z1 - r0], "seg": seg[core].astype(np.uint32), "cleft": pred[core],
                "mask": mask[core]}, rows

    def _rows(self, seg, mask, syns, locs, active, e0, z0, z1) -> list[dict]:
        rows = []
        Y, X = self.plan.shape[1:]
        for s, loc, i in zip(syns, locs, active):
            zc = int(s.center[0]) + e0
            if not z0 <= zc < z1:
                continue
            problem = None
            if mask[tuple(s.center)] != _PAINT_IDS.cleft:
                problem = "centre lost its cleft label"
            elif seg[tuple(s.center)] != 0:
                problem = "centre covered by an earlier synapse"
            elif _side_point(seg, s, s.pre_id, -1.0) is None or _side_point(seg, s, s.post_id, +1.0) is None:
                problem = "a partner segment is not next to the cleft"
            elif not ((mask[loc.sl] == _PAINT_IDS.vesicle) & loc.cloud).any():
                problem = "no vesicle cloud left in the bouton"
            if problem:
                logger.info("synthetic connectome: %s dropped (%s)", s.name, problem)
                continue
            z, y, x = (int(v) for v in self.plan.synapses[i].center)
            rows.append({"synapse_id": int(i) + 1, "x": x, "y": y, "z": z, "pre_segment": s.pre_id,
                         "post_segment": s.post_id, DEMO_CLASS_COLUMN: s.cls,
                         "region": f"q{1 + 2 * int(y >= Y // 2) + int(x >= X // 2)}",
                         "axon": self.plan.axon_of[i]})
        return rows

    def _raw(self, seg, mem, syns, locs, active, mitos, mask, origin, zr: tuple[int, int], index) -> np.ndarray:
        """uint8 EM-like raw of planes zr[0]..zr[1]-1 of the slab extent (float32 work in place)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 2, index]))
        a, b = zr
        e0 = int(origin[0])
        raw = np.zeros(seg.shape, np.float32)  # whole extent so the synapse boxes index it; only a:b is filled
        part = raw[a:b]
        for i, j, field in self.texture.chunks(e0 + a, e0 + b):
            field *= np.float32(7.0)
            field += np.float32(_I_CYTO)
            field += self.offsets[seg[a + i:a + j]]
            part[i:j] = field
        part[seg[a:b] == 0] = _I_ECS
        part[mem[a:b]] = _I_MEMBRANE
        with_mito = [i for s, i in zip(syns, active) if s.mito is not None]
        for (sl, inside, mc, ax), j in zip(mitos, with_mito):
            if sl[0].stop <= a or sl[0].start >= b or not inside.any():
                continue
            sub = _crop(inside, sl)
            inner = inside[tuple(slice(p.start - q.start, p.stop - q.start) for p, q in zip(sub, sl))]
            _paint_mito_texture(raw, inner, sub, mc, ax, np.random.default_rng(np.random.SeedSequence([self.seed, 4, int(j)])))
        for s, loc, i in zip(syns, locs, active):  # as demo._paint_synapses, with slab-safe vesicles
            lo, hi = max(loc.sl[0].start, a), min(loc.sl[0].stop, b)
            if lo >= hi:
                continue  # only in the halo: its raw is never written
            box, box_seg = raw[loc.sl], seg[loc.sl]
            box[loc.gap & (box_seg == 0)] = _I_CLEFT
            cl = loc.cleft | loc.cleft2
            box[cl] = np.minimum(box[cl], _I_CLEFT)
            box[loc.predensity & (box_seg == s.pre_id)] = _I_PREDENSITY
            box[loc.psd & ((box_seg == s.post_id) | mem[loc.sl])] = _I_PSD
            inner = slice(lo - loc.sl[0].start, hi - loc.sl[0].start)
            sl = (slice(lo, hi), *loc.sl[1:])
            ves = (mask[sl] == _PAINT_IDS.vesicle) & loc.vesicle_room[inner]
            _paint_vesicles(raw, ves, sl, origin, _vesicle_centres(self.plan.synapses[i], self.seed, int(i)))
        part = ndi.gaussian_filter(part, 0.7, output=np.float32, truncate=3.0)
        del raw
        gains, drifts = self.gain.chunks(e0 + a, e0 + b), self.drift.chunks(e0 + a, e0 + b)
        for (i, j, gain), (_, _, drift) in zip(gains, drifts):
            chunk = part[i:j]
            gain *= np.float32(0.12)
            gain += np.float32(1.0)
            chunk -= np.float32(128.0)
            chunk *= gain
            drift *= np.float32(12.0)
            drift += np.float32(128.0)
            chunk += drift
            noise = rng.standard_normal(chunk.shape, dtype=np.float32)
            noise *= np.float32(9.0)
            chunk += noise
        np.rint(part, out=part)
        np.clip(part, 0, 255, out=part)
        return part.astype(np.uint8)

    def _cleft(self, cleft: np.ndarray, locs, origin, e0, e1) -> np.ndarray:
        """Soft prediction: blurred clefts (>= 200 on every cleft voxel) and false-positive blobs."""
        pred = np.zeros(cleft.shape, np.uint8)
        for loc in locs:
            if not (loc.cleft.any() or loc.cleft2.any()):
                continue
            sl = _crop(loc.cleft | loc.cleft2, loc.sl, pad=4, shape=cleft.shape)
            c = cleft[sl]
            soft = ndi.gaussian_filter(c.astype(np.float32), 1.0) * np.float32(320.0)
            soft[c] = np.maximum(soft[c], 200.0)
            box = pred[sl]
            np.maximum(box, np.clip(soft, 0, 255).astype(np.uint8), out=box)
        for z, y, x, r, peak in self.plan.blobs:
            if not e0 - 3 * r <= z < e1 + 3 * r:
                continue
            p = np.array([z, y, x]) - origin
            half = int(np.ceil(2.5 * r))
            lo = np.maximum(p.astype(int) - half, 0)
            hi = np.minimum(p.astype(int) + half + 1, cleft.shape)
            if np.any(hi <= lo):
                continue
            g = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            d2 = sum((gi - pi) ** 2 for gi, pi in zip(g, p))
            val = np.clip(peak * np.exp(-d2 / (2 * r * r)), 0, 255).astype(np.uint8)
            box = pred[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            np.maximum(box, val, out=box)
        return pred


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------
_LAYERS = {"raw": (np.uint8, "color"), "seg": (np.uint32, "segmentation"), "cleft": (np.uint8, "color"),
           "mask": (np.uint8, "segmentation")}


def _check_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER_FILE).exists():
        raise FileExistsError(f"{out} is not empty and has no {MARKER_FILE}: refusing to write a synthetic "
                              "connectome into a folder that may hold real data. Choose an empty or new folder.")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("connectome.zarr", "connectome_wk"):
        if (out / name).exists():
            shutil.rmtree(out / name)


def _wk_dataset(path: Path, shape, voxel_size_nm, chunk_zyx, largest_id: int):
    wk = import_webknossos()

    Z, Y, X = shape
    ds = wk.Dataset(path, voxel_size=tuple(float(v) for v in voxel_size_nm[::-1]), exist_ok=False)
    bbox = wk.BoundingBox((0, 0, 0), (X, Y, Z))
    chunk = (32, 32, 32)
    shard = tuple(int(min(-(-s // 32) * 32, c)) for s, c in zip((X, Y, Z), (512, 512, chunk_zyx[0])))
    mags = {}
    for name, (dtype, category) in _LAYERS.items():
        kw = {}
        if category == "segmentation":
            kw["largest_segment_id"] = largest_id if name == "seg" else max(MASK_LABELS.values())
        layer = ds.add_layer(name, category, dtype=dtype, bounding_box=bbox, **kw)
        mags[name] = layer.add_mag("1", chunk_shape=chunk, shard_shape=shard, compress=True)
    return mags


def _write_tables(out: Path, table: pd.DataFrame) -> dict[str, Path]:
    import h5py

    paths = {"parquet": out / "synapses.parquet", "csv": out / "synapses.csv", "h5": out / "synapses.h5"}
    table.to_parquet(paths["parquet"], index=False)
    table.to_csv(paths["csv"], index=False)
    with h5py.File(paths["h5"], "w") as f:
        g = f.create_group("synapses")
        for col in table.columns:
            values = table[col].to_numpy()
            if values.dtype == object:
                g.create_dataset(col, data=values.astype(str).astype(object), dtype=h5py.string_dtype())
            else:
                g.create_dataset(col, data=values)
    return paths


def _descriptions(out: Path, name: str, voxel_size_nm, webknossos: bool) -> tuple[Path, Path | None]:
    import yaml

    columns = {"id": "synapse_id", "position": ["x", "y", "z"], "pre": "pre_segment", "post": "post_segment",
               "keep": [DEMO_CLASS_COLUMN, "region"]}
    viewer = {"webknossos": "http://localhost:9000/datasets/sample_organization/{dataset}/view#{x},{y},{z},0,1.3"}
    agg = {"path": "agglomerates.h5", "key": "segment_to_agglomerate"}

    def doc(table: dict, layers: dict) -> str:
        return yaml.safe_dump({"name": name, "voxel_size_nm": [float(v) for v in voxel_size_nm],
                               "synapses": {**table, "columns": columns, "partner_ids": "segments"},
                               "layers": layers, "agglomerates": agg, "viewer": viewer}, sort_keys=False)

    def layers(extra: dict) -> dict:
        out_layers = {key: {"path": extra["path"], "key": key, **extra.get("more", {})} for key in _LAYERS}
        out_layers["cleft"]["threshold"] = CLEFT_THRESHOLD
        out_layers["mask"]["labels"] = dict(MASK_LABELS)
        return out_layers

    desc = out / "connectome.yaml"
    write_text(desc, doc({"path": "synapses.parquet"}, layers({"path": "connectome.zarr"})))
    desc_wk = None
    if webknossos:
        desc_wk = out / "connectome_wk.yaml"
        write_text(desc_wk, doc({"path": "synapses.h5", "key": "synapses"},
                                layers({"path": "connectome_wk", "more": {"format": "webknossos", "mag": "1"}})))
    return desc, desc_wk


def make_synthetic_connectome(out: str | Path, *, shape_zyx: tuple[int, int, int] = (512, 1024, 1024),
                              n_synapses: int = 3000, seed: int = 0, chunk_zyx: tuple[int, int, int] = (64, 128, 128),
                              voxel_size_nm: tuple[float, float, float] = (8.0, 8.0, 8.0), webknossos: bool = True,
                              progress: bool = True) -> SyntheticConnectome:
    """Write a synthetic connectome (zarr, optionally webKnossos, tables, agglomerates, descriptions).

    Painted slab by slab (``chunk_zyx[0]`` planes at a time), so memory stays at a few slabs'
    worth whatever the volume size. Refuses a non-empty folder that is not one of ours.
    """
    import h5py
    import zarr

    t0 = time.perf_counter()
    out = Path(out)
    shape = tuple(int(s) for s in shape_zyx)
    chunks = tuple(int(c) for c in chunk_zyx)
    if len(shape) != 3 or min(shape) < 64:
        raise ValueError(f"shape_zyx must be 3 sizes >= 64 (z, y, x), got {shape_zyx}")
    if len(chunks) != 3 or min(chunks) < 16:
        raise ValueError(f"chunk_zyx must be 3 sizes >= 16 (z, y, x), got {chunk_zyx}")
    if n_synapses < 1:
        raise ValueError(f"n_synapses must be >= 1, got {n_synapses}")
    _check_out(out)
    plan = _plan(shape, n_synapses, seed)
    painter = _Painter.create(plan, seed)
    root = zarr.open_group(str(out / "connectome.zarr"), mode="w")
    arrays = {name: root.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
              for name, (dtype, _) in _LAYERS.items()}
    mags = _wk_dataset(out / "connectome_wk", shape, voxel_size_nm, chunks, plan.n_segments) if webknossos else {}
    rows: list[dict] = []
    starts = list(range(0, shape[0], chunks[0]))

    def write(z0: int, z1: int, layers: dict[str, np.ndarray]) -> None:
        for name, data in layers.items():
            arrays[name][z0:z1] = data
            if name in mags:
                mags[name].write(data.transpose(2, 1, 0), absolute_offset=(0, 0, z0), allow_unaligned=True)

    # a slab is compressed and written (mostly outside the GIL) while the next one is painted;
    # one write at a time, so at most two slabs' layers are held
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = None
        for index, z0 in enumerate(progress_bar(starts, desc="synthetic connectome", enabled=progress)):
            z1 = min(z0 + chunks[0], shape[0])
            layers, slab_rows = painter.slab(z0, z1, index)
            rows.extend(slab_rows)
            if pending is not None:
                pending.result()
            pending = writer.submit(write, z0, z1, layers)
            del layers
        if pending is not None:
            pending.result()
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS).sort_values("synapse_id", ignore_index=True)
    with h5py.File(out / "agglomerates.h5", "w") as f:
        f.create_dataset("segment_to_agglomerate", data=plan.seg_to_agg)
    tables = _write_tables(out, table)
    desc, desc_wk = _descriptions(out, "synthetic_connectome", voxel_size_nm, webknossos)
    seconds = round(time.perf_counter() - t0, 1)
    result = SyntheticConnectome(
        root=out, zarr=out / "connectome.zarr", webknossos=(out / "connectome_wk") if webknossos else None,
        description=desc, description_webknossos=desc_wk, tables=tables, agglomerates=out / "agglomerates.h5",
        shape_zyx=shape, n_synapses=len(table), n_axons=int(table["axon"].nunique()), n_neurites=len(plan.neurites),
        n_segments=plan.n_segments, seconds=seconds)
    meta = {"shape_zyx": list(shape), "chunk_zyx": list(chunks), "seed": seed, "n_synapses_planned": n_synapses,
            "n_synapses": result.n_synapses, "n_axons": result.n_axons, "n_neurites": result.n_neurites,
            "n_segments": result.n_segments, "voxel_size_nm": [float(v) for v in voxel_size_nm],
            "classes": {c: preset_class_names("default")[c] for c in sorted(table[DEMO_CLASS_COLUMN].unique())},
            "mask_labels": MASK_LABELS, "cleft_threshold": CLEFT_THRESHOLD}
    write_text(out / MARKER_FILE, json.dumps(meta, indent=2))
    logger.info("synthetic connectome %s: %d synapses on %d axons, %d neurites in %d segments, %.1f s",
                shape, result.n_synapses, result.n_axons, result.n_neurites, result.n_segments, seconds)
    return result
