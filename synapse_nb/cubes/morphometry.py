"""Sizes of a synapse measured on its cube: the numbers clusters are compared by.

:func:`morphometrics` counts voxels of the structure bits of one cube (vesicle cloud, cleft
volume and area, partner segments, mitochondria near the presynaptic side);
:func:`add_physical_units` turns a table of them into um^3 / um^2 for a voxel size (cubes built
now carry those columns already, measured with the other descriptors by
:func:`synapse_nb.cubes.descriptors.measure_cube`). Only what lies inside the cube is measured.
The definitions are explained in ``docs/cubes.md``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..core import labels as L
from .components import dilate6
from .geometry import box_slices

#: Morphometric keys in voxel units (info / table columns).
MORPHOMETRIC_VOXEL_KEYS = (
    "vesicle_volume_vox",
    "cleft_volume_vox",
    "cleft_area_vox",
    "pre_volume_vox",
    "post_volume_vox",
    "mito_near_pre_volume_vox",
)
#: Vesicle-cloud and cleft sizes in physical units: the sizes compared between clusters.
SIZE_COLUMNS = ("vesicle_volume_um3", "cleft_volume_um3", "cleft_area_um2")
_PHYSICAL_NAMES = {
    "vesicle_volume_vox": "vesicle_volume_um3",
    "cleft_volume_vox": "cleft_volume_um3",
    "pre_volume_vox": "pre_volume_um3",
    "post_volume_vox": "post_volume_um3",
    "mito_near_pre_volume_vox": "mito_near_pre_volume_um3",
}
_NM3_PER_UM3 = 1e9
_NM2_PER_UM2 = 1e6


# --------------------------------------------------------------------------------------
# morphometrics
# --------------------------------------------------------------------------------------
def cleft_area(cleft: np.ndarray) -> tuple[float, np.ndarray]:
    """Area (voxel faces) of a cleft's best-fit plane covered by it, and the unit normal (z,y,x).

    min over axes a of (distinct voxel columns along a) / |n_a|, n = PCA plane normal.
    """
    return sheet_area(np.argwhere(cleft))


def sheet_area(coords: np.ndarray) -> tuple[float, np.ndarray]:
    """:func:`cleft_area` of a sheet given by its voxel indices (n, 3), non-negative integers."""
    coords = np.asarray(coords).reshape(-1, 3)
    n = len(coords)
    if n == 0:
        return 0.0, np.full(3, np.nan)
    pts = coords.astype(np.float64)
    if n < 3:
        normal = np.array([1.0, 0.0, 0.0])
    else:
        d = pts - pts.mean(axis=0)
        cov = np.einsum("ni,nj->ij", d, d) / (n - 1)  # not np.cov: no BLAS threads for a 3 x 3
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


def mito_near_pre_voxels(pre: np.ndarray, mito: np.ndarray) -> int:
    """Mitochondrion voxels inside the presynaptic segment dilated by 2 voxels (6-connected)."""
    if not mito.any() or not pre.any():
        return 0
    # Only pre voxels within the mitochondria's bounding box + 2 can reach a mitochondrion
    # voxel in two 6-connected steps, so dilate that box only: same count, less work.
    mz = np.nonzero(mito)
    mlo = np.array([int(c.min()) for c in mz])
    mhi = np.array([int(c.max()) + 1 for c in mz])
    glo = np.maximum(mlo - 2, 0)
    ghi = np.minimum(mhi + 2, np.array(pre.shape))
    grown = dilate6(pre[box_slices(glo, ghi)], 2)
    return int(np.count_nonzero(mito[box_slices(mlo, mhi)] & grown[box_slices(mlo - glo, mhi - glo)]))


def morphometrics(bits: np.ndarray) -> dict:
    """Per-synapse sizes in voxels from one bits cube (definitions in ``docs/cubes.md``)."""
    bits = np.asarray(bits)
    ves = (bits & np.uint8(L.BIT_VESICLE)) != 0
    cleft = (bits & np.uint8(L.BIT_CLEFT | L.BIT_CLEFT2)) != 0
    pre = (bits & np.uint8(L.BIT_PRE)) != 0
    post = (bits & np.uint8(L.BIT_POST)) != 0
    mito = (bits & np.uint8(L.BIT_MITO_ANY)) != 0
    area, normal = cleft_area(cleft)
    return {
        "vesicle_volume_vox": int(np.count_nonzero(ves)),
        "cleft_volume_vox": int(np.count_nonzero(cleft)),
        "cleft_area_vox": area,
        "pre_volume_vox": int(np.count_nonzero(pre)),
        "post_volume_vox": int(np.count_nonzero(post)),
        "mito_near_pre_volume_vox": mito_near_pre_voxels(pre, mito),
        "cleft_normal_z": float(normal[0]),
        "cleft_normal_y": float(normal[1]),
        "cleft_normal_x": float(normal[2]),
    }


def add_physical_units(table: pd.DataFrame, voxel_size_nm: Sequence[float]) -> pd.DataFrame:
    """Add the um^3 / um^2 size columns computed from the voxel morphometrics (voxel size z, y, x).

    For tables that lack them (e.g. built before the descriptors existed); a size column the
    table already has is kept, because the one measured with the cube knows whether the
    structure is annotated at all (NaN), which voxel counts cannot tell. The cleft area uses
    Nanson's formula for its plane normal n (voxel index space): area = area_vox * det(D) *
    |D^-1 n| with D = diag(voxel size), exact for flat clefts, also for anisotropic voxels.
    """
    vz, vy, vx = (float(v) for v in voxel_size_nm)
    if min(vz, vy, vx) <= 0:
        raise ValueError(f"voxel_size_nm must be positive (z, y, x), got {voxel_size_nm!r}")
    out = table.copy()
    vol = vz * vy * vx
    for vox, phys in _PHYSICAL_NAMES.items():
        if vox in out and phys not in out:
            out[phys] = out[vox].astype(float) * vol / _NM3_PER_UM3
    if "cleft_area_vox" in out and "cleft_area_um2" not in out:
        n = out[["cleft_normal_z", "cleft_normal_y", "cleft_normal_x"]].to_numpy(dtype=float)
        scale = vol * np.sqrt((n[:, 0] / vz) ** 2 + (n[:, 1] / vy) ** 2 + (n[:, 2] / vx) ** 2)
        scale = np.where(np.isfinite(scale), scale, 0.0)
        out["cleft_area_um2"] = out["cleft_area_vox"].astype(float) * scale / _NM2_PER_UM2
    return out
