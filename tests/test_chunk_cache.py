"""The chunk cache of lazy volumes: same voxels as direct reads, bounded memory, concurrent prefetch."""
from __future__ import annotations

import threading

import numpy as np
import zarr

from synapse_nb.data.chunk_cache import ChunkCache
from synapse_nb.data.volumes import open_volume


def _store(tmp_path, shape=(40, 50, 60), chunks=(8, 16, 16)):
    data = np.random.default_rng(0).integers(0, 255, size=shape, dtype=np.uint8)
    z = zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=shape, chunks=chunks, dtype="uint8")
    z[:] = data
    return data, open_volume(tmp_path / "v.zarr", fmt="zarr")


def test_cached_windows_equal_direct_reads_and_share_chunks(tmp_path):
    data, vol = _store(tmp_path)
    vol.cache_chunks(64 * 1024**2)
    rng = np.random.default_rng(1)
    for _ in range(40):
        lo = rng.integers(0, [35, 45, 55])
        hi = lo + rng.integers(1, [12, 20, 30])
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        np.testing.assert_array_equal(vol[sl], data[sl])
    # every chunk was fetched from the store at most once: never more voxels than the volume
    assert vol.voxels_read <= data.size
    reads = vol.voxels_read
    np.testing.assert_array_equal(vol[10:20, 10:30, 10:40], data[10:20, 10:30, 10:40])
    assert vol.voxels_read - reads <= 2 * 2 * 3 * 8 * 16 * 16  # at most the chunks not seen yet


def test_the_budget_bounds_the_cache_and_clear_empties_it(tmp_path):
    data, vol = _store(tmp_path)
    chunk_bytes = 8 * 16 * 16
    vol.cache_chunks(3 * chunk_bytes)
    np.testing.assert_array_equal(vol[:, :, :], data)
    cache = vol._chunks
    assert cache is not None and 0 < cache._bytes <= 3 * chunk_bytes and 3 <= len(cache._blocks) < 3 * 4 * 4 * 4
    vol.clear_cache()
    assert cache._bytes == 0 and not cache._blocks
    vol.cache_chunks(0)
    before = vol.voxels_read
    vol[0:2, 0:2, 0:2]
    assert vol.voxels_read - before == 8  # off: exactly the window again


def test_prefetch_fetches_each_chunk_once_with_threads(tmp_path):
    calls: list[tuple] = []
    lock = threading.Lock()
    data = np.arange(32 * 32 * 32, dtype=np.int32).reshape(32, 32, 32)

    def read(lo, hi):
        with lock:
            calls.append((tuple(lo), tuple(hi)))
        return data[tuple(slice(a, b) for a, b in zip(lo, hi))].copy()

    cache = ChunkCache(read, data.shape, (8, 8, 8), max_bytes=10**9)
    boxes = [((0, 0, 0), (16, 16, 16)), ((8, 8, 8), (24, 24, 24)), ((-5, -5, -5), (4, 4, 4))]
    fetched = cache.prefetch(boxes, threads=4)
    assert fetched == len(calls) == len(set(calls)) == 8 + 7  # two 2^3 boxes sharing one chunk; the third is inside
    assert cache.prefetch(boxes, threads=4) == 0
    np.testing.assert_array_equal(cache.read((3, 5, 7), (20, 21, 22)), data[3:20, 5:21, 7:22])
    assert len(calls) == 27 and len(set(calls)) == 27  # the 12 chunks not prefetched, each read once
