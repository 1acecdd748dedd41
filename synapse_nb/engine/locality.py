"""Order synapses so that each batch reads few storage chunks.

A connectome volume is stored in chunks (e.g. 64^3 voxels); reading one synapse's window
decodes every chunk the window overlaps. Synapses taken in table order (or at random) land
all over the volume, so a batch touches nearly as many chunks as it has windows times the
chunks per window. Sorting by the Morton (Z-order) code of the chunk a synapse falls in keeps
neighbours together: a batch then covers a compact region and shares most of its chunks.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["batch_chunk_reads", "chunks_touched", "locality_order", "morton_codes", "plan_batches"]

_BITS = 21  # bits per axis that fit three times into 63 bits


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """Insert two zero bits between the bits of each value (21 bits -> 63 bits)."""
    v = v.astype(np.uint64) & np.uint64(0x1FFFFF)
    v = (v | (v << np.uint64(32))) & np.uint64(0x1F00000000FFFF)
    v = (v | (v << np.uint64(16))) & np.uint64(0x1F0000FF0000FF)
    v = (v | (v << np.uint64(8))) & np.uint64(0x100F00F00F00F00F)
    v = (v | (v << np.uint64(4))) & np.uint64(0x10C30C30C30C30C3)
    v = (v | (v << np.uint64(2))) & np.uint64(0x1249249249249249)
    return v


def morton_codes(chunk_index_zyx: np.ndarray) -> np.ndarray:
    """Z-order code of integer (z, y, x) chunk indices, shape (n, 3) -> (n,) uint64."""
    idx = np.asarray(chunk_index_zyx, dtype=np.int64)
    if idx.ndim != 2 or idx.shape[1] != 3:
        raise ValueError(f"chunk indices must have shape (n, 3), got {idx.shape}")
    if len(idx) == 0:
        return np.zeros(0, dtype=np.uint64)
    idx = idx - idx.min(axis=0)  # codes need non-negative indices; only the order matters
    if idx.max() >= 2 ** _BITS:
        raise ValueError(f"chunk grid too large for a Morton code: {int(idx.max()) + 1} chunks on one axis "
                         f"(at most {2 ** _BITS}); use larger chunks")
    z, y, x = (_spread_bits(idx[:, a]) for a in range(3))
    return (z << np.uint64(2)) | (y << np.uint64(1)) | x


def _chunk3(chunk_zyx: int | Sequence[int]) -> np.ndarray:
    chunk = np.broadcast_to(np.asarray(chunk_zyx, dtype=np.int64), (3,)).copy()
    if (chunk <= 0).any():
        raise ValueError(f"chunk shape must be positive, got {tuple(chunk.tolist())}")
    return chunk


def locality_order(positions_zyx: np.ndarray, chunk_zyx: int | Sequence[int]) -> np.ndarray:
    """Indices of ``positions_zyx`` (n, 3 voxels, z y x) sorted by the Morton code of their
    chunk, ties by position (z, y, x): synapses of one chunk, and of neighbouring chunks,
    become adjacent."""
    pos = np.asarray(positions_zyx, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (n, 3) in z, y, x order, got {pos.shape}")
    if not np.isfinite(pos).all():
        bad = int(np.flatnonzero(~np.isfinite(pos).all(axis=1))[0])
        raise ValueError(f"position of row {bad} is not finite: {pos[bad].tolist()}")
    chunk = _chunk3(chunk_zyx)
    codes = morton_codes(np.floor(pos / chunk).astype(np.int64))
    # lexsort: last key is the primary one
    return np.lexsort((pos[:, 2], pos[:, 1], pos[:, 0], codes)).astype(np.int64)


def plan_batches(n_or_order: int | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split ``range(n)`` or an order (e.g. from :func:`locality_order`) into consecutive
    batches of at most ``batch_size`` indices."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(n_or_order, (int, np.integer)):
        if n_or_order < 0:
            raise ValueError(f"number of items must be >= 0, got {n_or_order}")
        order = np.arange(int(n_or_order), dtype=np.int64)
    else:
        order = np.asarray(n_or_order, dtype=np.int64).ravel()
    size = int(batch_size)
    return [order[i:i + size] for i in range(0, len(order), size)]


def chunks_touched(windows: np.ndarray, chunk: int | Sequence[int]) -> int:
    """Number of distinct storage chunks that a set of windows overlaps.

    ``windows`` has shape (n, 2, 3): per window the start and stop voxel (z, y, x, stop
    exclusive). This is how many chunk reads one batch costs when a batch reads each chunk once.
    """
    return len(_chunk_set(windows, _chunk3(chunk)))


def _chunk_set(windows: np.ndarray, chunk: np.ndarray) -> set[tuple[int, int, int]]:
    win = np.asarray(windows, dtype=np.int64)
    if win.ndim != 3 or win.shape[1:] != (2, 3):
        raise ValueError(f"windows must have shape (n, 2, 3) (start, stop per z, y, x), got {win.shape}")
    first = np.floor_divide(win[:, 0], chunk)
    last = np.floor_divide(win[:, 1] - 1, chunk)
    found: set[tuple[int, int, int]] = set()
    for lo, hi in zip(first, last):
        if (hi < lo).any():
            continue  # an empty window reads nothing
        zz, yy, xx = np.meshgrid(*(np.arange(lo[a], hi[a] + 1) for a in range(3)), indexing="ij")
        found.update(zip(zz.ravel().tolist(), yy.ravel().tolist(), xx.ravel().tolist()))
    return found


def batch_chunk_reads(batches: Iterable[np.ndarray], windows: np.ndarray, chunk: int | Sequence[int]) -> int:
    """Chunk reads a batch plan needs: the chunks each batch touches, summed over batches."""
    win = np.asarray(windows)
    chunk3 = _chunk3(chunk)
    return sum(len(_chunk_set(win[np.asarray(b, dtype=np.int64)], chunk3)) for b in batches)
