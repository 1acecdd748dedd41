"""A bounded cache of storage chunks, so neighbouring synapses share reads.

Cube building reads one window per synapse and volume. In a chunked store a window touches
whole chunks, and neighbouring synapses (batches are ordered by chunk locality) touch the same
ones; without a cache each synapse fetches them again. :class:`ChunkCache` keeps the most
recently used chunks of one volume up to a byte budget (least recently used dropped first),
and :meth:`ChunkCache.prefetch` fetches the chunks of many windows with a few threads, so the
latency of an object store is paid concurrently instead of once per window.
It is safe to share between threads (a Dask worker running several batches).
"""
from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

Reader = Callable[[Sequence[int], Sequence[int]], np.ndarray]


class ChunkCache:
    """Chunks of one (z, y, x) volume of ``shape``, read with ``read(lo, hi)`` on a miss."""

    def __init__(self, read: Reader, shape: Sequence[int], chunk: Sequence[int], max_bytes: int) -> None:
        if len(chunk) != 3 or min(int(c) for c in chunk) < 1:
            raise ValueError(f"chunk must be three positive sizes (z, y, x), got {chunk!r}")
        self._read = read
        self.shape = np.asarray([int(s) for s in shape], dtype=np.int64)
        self.chunk = np.asarray([int(c) for c in chunk], dtype=np.int64)
        self.max_bytes = int(max_bytes)
        self._blocks: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __getstate__(self) -> dict:
        """Pickled (sent to another process) without its chunks and lock: it starts empty there."""
        state = dict(self.__dict__)
        state.update(_blocks=OrderedDict(), _bytes=0, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _keys(self, lo: Sequence[int], hi: Sequence[int]) -> list[tuple[int, int, int]]:
        first = np.asarray(lo, dtype=np.int64) // self.chunk
        last = (np.asarray(hi, dtype=np.int64) - 1) // self.chunk
        return list(itertools.product(*(range(int(a), int(b) + 1) for a, b in zip(first, last))))  # type: ignore[arg-type]

    def _block(self, key: tuple[int, int, int]) -> np.ndarray:
        with self._lock:
            block = self._blocks.get(key)
            if block is not None:
                self._blocks.move_to_end(key)
                self.hits += 1
                return block
        lo = np.asarray(key, dtype=np.int64) * self.chunk
        hi = np.minimum(lo + self.chunk, self.shape)
        block = self._read(lo.tolist(), hi.tolist())
        with self._lock:
            self.misses += 1
            if key not in self._blocks:
                self._blocks[key] = block
                self._bytes += block.nbytes
            while self._bytes > self.max_bytes and len(self._blocks) > 1:
                _, old = self._blocks.popitem(last=False)
                self._bytes -= old.nbytes
        return block

    def read(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        """Voxels [lo, hi) (inside the volume, non-empty), assembled from cached chunks."""
        lo_a = np.asarray(lo, dtype=np.int64)
        hi_a = np.asarray(hi, dtype=np.int64)
        out: np.ndarray | None = None
        for key in self._keys(lo, hi):
            block = self._block(key)
            if out is None:
                out = np.empty(tuple(int(v) for v in hi_a - lo_a) + block.shape[3:], dtype=block.dtype)
            start = np.asarray(key, dtype=np.int64) * self.chunk
            a = np.maximum(lo_a, start)
            b = np.minimum(hi_a, start + np.asarray(block.shape[:3]))
            out[tuple(slice(int(x), int(y)) for x, y in zip(a - lo_a, b - lo_a))] = \
                block[tuple(slice(int(x), int(y)) for x, y in zip(a - start, b - start))]
        assert out is not None
        return out

    def prefetch(self, boxes: Iterable[tuple[Sequence[int], Sequence[int]]], threads: int = 8) -> int:
        """Fetch every chunk the windows ``boxes`` touch (those not cached yet), ``threads`` at a
        time; returns how many were fetched. Windows whose chunks exceed the budget are not
        kept whole (the budget wins)."""
        keys: dict[tuple[int, int, int], None] = {}
        for lo, hi in boxes:
            lo_c = np.clip(np.asarray(lo, dtype=np.int64), 0, self.shape)
            hi_c = np.clip(np.asarray(hi, dtype=np.int64), 0, self.shape)
            if np.all(hi_c > lo_c):
                keys.update(dict.fromkeys(self._keys(lo_c, hi_c)))
        with self._lock:
            todo = [k for k in keys if k not in self._blocks]
        if not todo:
            return 0
        with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
            list(pool.map(self._block, todo))
        return len(todo)

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._bytes = 0
