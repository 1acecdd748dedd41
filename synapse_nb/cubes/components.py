"""Connected components and dilation on label cubes.

Which structure counts as "the" vesicle cloud, cleft or mitochondrion of a synapse is decided
by :func:`closest_component`; :func:`dilate6` grows masks for segmentation type 11 and the
mitochondria morphometric. Both are plain numpy/scipy on arrays already in memory. The rules
(6-connectivity, what "closest" means, ties) are explained in ``docs/cubes.md``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


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
