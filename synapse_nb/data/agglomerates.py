"""Segment -> agglomerate mapping from an HDF5 table, read lazily.

Connectomics pipelines over-segment a volume into small segments and then agglomerate them
into neurites; the mapping is stored as one 1-D dataset indexed by segment id (webKnossos
agglomerate files call it ``segment_to_agglomerate``). Such a file can hold billions of
entries, so only the entries asked for are read: the sorted unique ids are grouped into runs
of nearby ids and each run is one contiguous read. A small mapping (up to
``max_in_memory_bytes``) is read whole once instead, which is faster for many windows.

Segment 0 (background) always maps to 0. An id past the end of the dataset is a
:class:`DataError` naming the file, the key and the id: the mapping belongs to another
segmentation.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DataError

logger = logging.getLogger(__name__)

DEFAULT_KEY = "segment_to_agglomerate"
#: Mappings up to this size are read whole on first use.
DEFAULT_IN_MEMORY_BYTES = 256 * 2**20
#: Ids closer than this are read in one contiguous run (reading a gap is cheaper than a seek).
_RUN_GAP = 4096
#: Entries read per block when scanning the whole mapping (for :meth:`knows_agglomerate`).
_SCAN_BLOCK = 2**24


class AgglomerateMapping:
    """Segment id -> agglomerate id from the 1-D HDF5 dataset ``key`` of ``path``.

    Picklable: the file is opened on first use in each process (Dask workers included).
    """

    def __init__(self, path: str | Path, key: str = DEFAULT_KEY, *, max_in_memory_bytes: int = DEFAULT_IN_MEMORY_BYTES) -> None:
        import h5py

        self.path = Path(path)
        self.key = key
        self.max_in_memory_bytes = int(max_in_memory_bytes)
        if not self.path.is_file():
            raise DataError(f"agglomerate file not found: {self.path}")
        try:
            with h5py.File(self.path, "r") as f:
                node = f.get(key)
                names: list[str] = []
                f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
                if not isinstance(node, h5py.Dataset):
                    shown = ", ".join(repr(n) for n in names[:20]) or "none"
                    raise DataError(f"agglomerate file {self.path} has no dataset {key!r}; datasets present: {shown}")
                if node.ndim != 1 or not np.issubdtype(node.dtype, np.integer):
                    raise DataError(
                        f"agglomerate file {self.path}, key {key!r}: expected a 1-D integer dataset indexed by segment id, "
                        f"got shape {node.shape} dtype {node.dtype}"
                    )
                self.size = int(node.shape[0])
                self.dtype = np.dtype(node.dtype)
        except OSError as exc:
            raise DataError(f"cannot open agglomerate file {self.path}: {exc}") from None
        self._file: Any = None
        self._all: np.ndarray | None = None
        self._known: np.ndarray | None = None

    # -- file access --------------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = None  # an open HDF5 handle does not cross processes
        return state

    def _dataset(self) -> Any:
        if self._file is None:
            import h5py

            self._file = h5py.File(self.path, "r")
        return self._file[self.key]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def in_memory(self) -> bool:
        return self.size * self.dtype.itemsize <= self.max_in_memory_bytes

    def _whole(self) -> np.ndarray:
        if self._all is None:
            self._all = np.asarray(self._dataset()[...])
        return self._all

    def _lookup_sorted(self, ids: np.ndarray) -> np.ndarray:
        """Values at sorted unique ``ids`` (all < size), one contiguous read per run of close ids."""
        if self.in_memory:
            return self._whole()[ids]
        if ids.size == 0:
            return np.zeros(0, dtype=self.dtype)
        ds = self._dataset()
        breaks = np.flatnonzero(np.diff(ids) > _RUN_GAP) + 1
        out = np.empty(ids.size, dtype=self.dtype)
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, ids.size]):
            lo, hi = int(ids[a]), int(ids[b - 1]) + 1
            out[a:b] = np.asarray(ds[lo:hi])[ids[a:b] - lo]
        return out

    # -- the mapping ----------------------------------------------------------------------
    def check(self, segments: np.ndarray, where: str = "") -> None:
        """Raise a :class:`DataError` naming the first segment id past the mapping's end."""
        seg = np.asarray(segments)
        if seg.size == 0:
            return
        top = seg.max()
        if int(top) >= self.size or (np.issubdtype(seg.dtype, np.signedinteger) and int(seg.min()) < 0):
            bad = int(top) if int(top) >= self.size else int(seg.min())
            raise DataError(
                f"segment id {bad}{(' ' + where) if where else ''} is not in the mapping {self.path} (key {self.key!r}, "
                f"{self.size} entries, ids 0..{self.size - 1}): give the agglomerate file of this segmentation"
            )

    def __call__(self, segments: np.ndarray, where: str = "") -> np.ndarray:
        """Agglomerate ids of ``segments`` (any shape; 0 stays 0), in the mapping's dtype."""
        seg = np.asarray(segments)
        if not (np.issubdtype(seg.dtype, np.integer) or seg.dtype == np.bool_):
            raise DataError(f"segment ids must be integers to look them up in {self.path}, got dtype {seg.dtype}")
        self.check(seg, where)
        if seg.size == 0:
            return np.zeros(seg.shape, dtype=self.dtype)
        if self.in_memory:
            out = self._whole()[seg.astype(np.intp, copy=False)]
        else:
            uniq, inverse = np.unique(seg, return_inverse=True)
            out = self._lookup_sorted(uniq.astype(np.int64))[inverse.reshape(seg.shape)]
        out = np.asarray(out, dtype=self.dtype)
        out[seg == 0] = 0
        return out

    def known_agglomerates(self) -> np.ndarray:
        """Sorted unique agglomerate ids the mapping holds (read once, block by block)."""
        if self._known is None:
            if self.in_memory:
                self._known = np.unique(self._whole())
            else:
                ds = self._dataset()
                parts = [np.unique(np.asarray(ds[a : min(a + _SCAN_BLOCK, self.size)])) for a in range(0, self.size, _SCAN_BLOCK)]
                self._known = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=self.dtype)
                logger.info("agglomerate mapping %s: %d agglomerates in %d segments", self.path, self._known.size, self.size)
        return self._known

    def knows_agglomerate(self, ids: Any) -> np.ndarray:
        """Bool array: whether each agglomerate id occurs in the mapping (0 is always known)."""
        arr = np.asarray(ids)
        if arr.size == 0:
            return np.zeros(arr.shape, dtype=bool)
        known = self.known_agglomerates()
        return np.isin(arr, known) | (arr == 0)

    def __repr__(self) -> str:
        return f"AgglomerateMapping({self.path}, key={self.key!r}, {self.size} segments)"
