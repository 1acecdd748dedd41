"""The cube store: every cube of a dataset kept as two arrays and a table, on disk and back.

A :class:`CubeSet` holds the raw and structure-bit cubes of all built synapses, one table row
each (what was decided and measured) and the synapses that were skipped. It renders lazily for
any segmentation type and alpha, and saves/loads atomically, memory-mapping the cubes on load.
What a cube holds is explained in ``docs/cubes.md``.

A connectome run cannot hold its cubes in memory: :class:`PartitionedCubeStore` writes them
batch by batch, each batch a plain cube set folder (``parts/part-000012``), and
:meth:`CubeSet.load` opens the whole store as one cube set whose arrays are
:class:`RowConcat` views over the parts' memory maps (nothing is read until indexed).
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core import labels as L
from ..core.atomic import atomic_dir, write_text
from ..core.errors import DataError
from .geometry import CubeGeometry
from .rendering import (
    RenderedView,
    RenderSettings,
    check_segmentation_type,
    segmentation_mask,
)

logger = logging.getLogger(__name__)

CUBESET_FORMAT = 1
PARTITIONED_FORMAT = 2
PARTS_FOLDER = "parts"


def part_folder(folder: str | os.PathLike, part_id: int) -> Path:
    """Where part ``part_id`` of a partitioned store lives: ``folder/parts/part-000012``."""
    return Path(folder) / PARTS_FOLDER / f"part-{int(part_id):06d}"


@dataclass
class CubeSet:
    """All synapse cubes of a dataset plus one table row per built synapse."""

    raw: np.ndarray  # (N,S,S,S) native dtype (a RowConcat over the parts of a partitioned store)
    bits: np.ndarray  # (N,S,S,S) uint8 (likewise)
    table: pd.DataFrame  # one row per built synapse (input columns, info, morphometrics)
    skipped: pd.DataFrame  # bbox, Var1, table_row, reason
    geometry: CubeGeometry = CubeGeometry()
    voxel_size_nm: tuple[float, float, float] = (8.0, 8.0, 8.0)  # z, y, x
    #: segmentation type -> why the dataset cannot serve it (kept with the cubes, so a later
    #: step asked for such a type refuses it as 01_load did)
    refused_types: dict[int, str] = field(default_factory=dict)

    def require_type(self, segmentation_type: int) -> None:
        """Raise a :class:`DataError` when the cubes' dataset cannot serve this type."""
        t = int(segmentation_type)
        if t in self.refused_types:
            ok = ", ".join(str(s) for s in L.SEGMENTATION_TYPES if s not in self.refused_types)
            raise DataError(
                f"segmentation type {t} ({L.SEGMENTATION_TYPE_SHORT[t]}) {self.refused_types[t]}. "
                f"Types these cubes support: {ok}"
            )

    def __post_init__(self) -> None:
        n = len(self.table)
        S = self.geometry.size
        if self.raw.shape != (n, S, S, S) or self.bits.shape != (n, S, S, S):
            raise ValueError(
                f"CubeSet arrays {self.raw.shape} / {self.bits.shape} do not match {n} table rows of {S}^3 cubes"
            )

    def __len__(self) -> int:
        return len(self.table)

    def rendered(self, settings: RenderSettings, indices: Sequence[int] | np.ndarray | None = None) -> RenderedView:
        """Lazy view of the rendered cubes (optionally a row subset)."""
        return RenderedView(self, None if indices is None else np.asarray(indices), settings)

    def empty_mask_rows(self, segmentation_type: int, batch_size: int = 64) -> np.ndarray:
        """Row indices whose mask is empty for this type (steps report and skip them)."""
        t = check_segmentation_type(segmentation_type)
        if t == 0 or len(self) == 0:
            return np.zeros(0, dtype=np.int64)
        empty = []
        for start in range(0, len(self), batch_size):
            bits = np.asarray(self.bits[start : start + batch_size])
            if t == 11:
                has = segmentation_mask(bits, t).any(axis=(1, 2, 3))
            else:
                has = ((bits & np.uint8(L.SEGTYPE_BITS[t])) != 0).any(axis=(1, 2, 3))
            empty.append(np.flatnonzero(~has) + start)
        return np.concatenate(empty).astype(np.int64)

    def empty_mask_report(self, segmentation_type: int) -> pd.DataFrame:
        """The synapses an empty mask excludes for this type, with a reason (for the run log)."""
        rows = self.empty_mask_rows(segmentation_type)
        cols = [c for c in (L.BBOX_COLUMN, L.NAME_COLUMN, "table_row") if c in self.table]
        out = self.table.iloc[rows][cols].reset_index(drop=True)
        out["reason"] = (
            f"empty mask for segmentation type {int(segmentation_type)} "
            f"({L.SEGMENTATION_TYPES[int(segmentation_type)]}): that structure is absent from the cube"
        )
        return out

    # --- persistence -----------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write raw.npy, bits.npy, table.parquet, skipped.parquet and meta.json.

        Everything is written into a temporary sibling folder first and then renamed into
        place, so a crash never leaves a mix of old and new files; a previous version is kept
        under a ``.old-*`` name until the new one is in place.
        """
        folder = Path(folder)
        if folder.exists() and not (folder / "meta.json").is_file() and (not folder.is_dir() or any(folder.iterdir())):
            raise DataError(
                f"refusing to overwrite {folder}: it exists and is not a saved cube set; choose another folder"
            )
        with atomic_dir(folder) as tmp:
            self._write_files(tmp)
        return folder

    def _write_files(self, tmp: Path) -> None:
        """The files of a one-piece store, written into the (temporary) folder ``tmp``."""
        with open(tmp / "raw.npy", "wb") as f:
            np.save(f, np.asarray(self.raw))
        with open(tmp / "bits.npy", "wb") as f:
            np.save(f, np.asarray(self.bits))
        self.table.reset_index(drop=True).to_parquet(tmp / "table.parquet", index=False)
        self.skipped.reset_index(drop=True).to_parquet(tmp / "skipped.parquet", index=False)
        meta = {
            "format": CUBESET_FORMAT,
            "n": len(self),
            "geometry": self.geometry.as_dict(),
            "voxel_size_nm": [float(v) for v in self.voxel_size_nm],
            "raw_dtype": str(np.asarray(self.raw[:0]).dtype),
            "refused_types": {str(k): v for k, v in self.refused_types.items()},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | os.PathLike, mmap: bool = True) -> "CubeSet":
        """Load a saved CubeSet, one-piece or partitioned (:class:`PartitionedCubeStore`).

        The cube arrays are memory-mapped read-only by default; a partitioned store's arrays are
        :class:`RowConcat` views over its parts (in part order), read only where indexed.
        """
        folder = Path(folder)
        meta = _read_meta(folder)
        if meta.get("format") == PARTITIONED_FORMAT and meta.get("partitioned"):
            return _load_partitioned(cls, folder, meta, mmap)
        if meta.get("format") != CUBESET_FORMAT:
            raise DataError(f"cube set {folder} has format {meta.get('format')!r}; rebuild the cubes")
        mode = "r" if mmap else None
        try:
            raw = _load_array(folder / "raw.npy", mode)
            bits = _load_array(folder / "bits.npy", mode)
            table = pd.read_parquet(folder / "table.parquet")
            skipped = pd.read_parquet(folder / "skipped.parquet")
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read cube set {folder}: {exc}; rebuild the cubes") from exc
        try:
            return cls(
                raw=raw,
                bits=bits,
                table=table,
                skipped=skipped,
                geometry=CubeGeometry(**meta["geometry"]),
                voxel_size_nm=tuple(float(v) for v in meta["voxel_size_nm"]),
                refused_types={int(k): v for k, v in meta.get("refused_types", {}).items()},
            )
        except ValueError as exc:
            raise DataError(f"cube set {folder} is inconsistent: {exc}; rebuild the cubes") from exc


def _read_meta(folder: Path) -> dict:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"no cube set in {folder}: meta.json is missing; rebuild the cubes")
    try:
        return json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {meta_path}: {exc}; rebuild the cubes") from exc


def _load_array(path: Path, mode: str | None) -> np.ndarray:
    """A saved cube array, memory-mapped when ``mode``; an empty one (a part where every synapse
    was skipped) cannot be mapped and is read as it is (a header only)."""
    try:
        return np.load(path, mmap_mode=mode)
    except ValueError:
        if mode is None:
            raise
        arr = np.load(path)
        if arr.size:
            raise
        return arr


# --------------------------------------------------------------------------------------
# the partitioned store
# --------------------------------------------------------------------------------------
class PartitionedCubeStore:
    """A cube store written part by part (one part per batch of synapses), never all in memory.

    Each part is a plain :class:`CubeSet` folder ``parts/part-{id:06d}``, written atomically; a
    part already there is kept (first writer wins: a retried batch cannot replace one another
    worker finished). :meth:`finish` writes ``meta.json``, after which :meth:`CubeSet.load`
    opens the store as one cube set.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise DataError(f"cube store {self.folder} is a file; choose a folder")
        meta = self.folder / "meta.json"
        if meta.is_file() and not _read_meta(self.folder).get("partitioned"):
            raise DataError(
                f"{self.folder} holds a one-piece cube set, not a partitioned store; choose another folder"
            )

    def path(self, part_id: int) -> Path:
        return part_folder(self.folder, part_id)

    def has_part(self, part_id: int) -> bool:
        """Whether part ``part_id`` was written completely."""
        return (self.path(part_id) / "meta.json").is_file()

    def parts(self) -> list[int]:
        """The ids of the complete parts, ascending."""
        root = self.folder / PARTS_FOLDER
        if not root.is_dir():
            return []
        ids = []
        for p in root.iterdir():
            name = p.name
            if name.startswith("part-") and name[5:].isdigit() and (p / "meta.json").is_file():
                ids.append(int(name[5:]))
        return sorted(ids)

    def write_part(self, part_id: int, cubes: CubeSet) -> bool:
        """Write ``cubes`` as part ``part_id``; False (nothing written) when it exists already."""
        if int(part_id) < 0:
            raise ValueError(f"part id must be >= 0, got {part_id!r}")
        target = self.path(part_id)
        if self.has_part(part_id):
            logger.info("cube store %s: part %d exists already; kept", self.folder, part_id)
            return False
        written = True

        def existing(t: Path) -> bool:
            nonlocal written
            written = not (t / "meta.json").is_file()
            return not written

        with atomic_dir(target, keep_existing=existing) as tmp:
            cubes._write_files(tmp)
        if not written:
            logger.info("cube store %s: part %d was written meanwhile by another worker; kept", self.folder, part_id)
        return written

    def finish(
        self,
        geometry: CubeGeometry,
        voxel_size_nm: Sequence[float],
        refused_types: dict[int, str] | None = None,
        *,
        parts: Sequence[int] | None = None,
    ) -> Path:
        """Write ``meta.json`` for ``parts`` (default: every complete part), after checking each
        was built with this geometry and voxel size."""
        ids = sorted(int(i) for i in (self.parts() if parts is None else parts))
        voxel = [float(v) for v in voxel_size_nm]
        n = 0
        for i in ids:
            if not self.has_part(i):
                raise DataError(f"cube store {self.folder}: part {i} is missing; build it before finishing the store")
            meta = _read_meta(self.path(i))
            _check_part(self.path(i), meta, geometry.as_dict(), voxel)
            n += int(meta.get("n", 0))
        meta = {
            "format": PARTITIONED_FORMAT,
            "partitioned": True,
            "parts": ids,
            "n": n,
            "geometry": geometry.as_dict(),
            "voxel_size_nm": voxel,
            "refused_types": {str(k): v for k, v in (refused_types or {}).items()},
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text(self.folder / "meta.json", json.dumps(meta, indent=2))
        return self.folder


def _check_part(path: Path, meta: dict, geometry: dict, voxel: list[float]) -> None:
    """A part must be a one-piece cube set built with the store's geometry and voxel size."""
    if meta.get("format") != CUBESET_FORMAT:
        raise DataError(f"cube store part {path} has format {meta.get('format')!r}; rebuild that part")
    if meta.get("geometry") != geometry or [float(v) for v in meta.get("voxel_size_nm", [])] != voxel:
        raise DataError(
            f"cube store part {path} was built with geometry {meta.get('geometry')} and voxel "
            f"{meta.get('voxel_size_nm')} nm, the store with {geometry} and {voxel} nm; rebuild that part"
        )


def _load_partitioned(cls: type[CubeSet], folder: Path, meta: dict, mmap: bool) -> CubeSet:
    """One cube set over every part of a finished partitioned store (arrays stay on disk)."""
    try:
        geometry = CubeGeometry(**meta["geometry"])
        voxel = [float(v) for v in meta["voxel_size_nm"]]
        ids = [int(i) for i in meta["parts"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"cube store {folder}: meta.json is incomplete ({exc}); finish the store again") from exc
    for i in ids:
        if not (part_folder(folder, i) / "meta.json").is_file():
            raise DataError(f"cube store {folder}: part {i} listed in meta.json is missing; rebuild that part")
        _check_part(part_folder(folder, i), _read_meta(part_folder(folder, i)), geometry.as_dict(), voxel)
    parts = [cls.load(part_folder(folder, i), mmap=mmap) for i in ids]
    S = geometry.size
    built = [p for p in parts if len(p)]
    dtypes = {np.dtype(p.raw.dtype) for p in built}
    if len(dtypes) > 1:
        raise DataError(f"cube store {folder}: its parts hold raw cubes of different dtypes {sorted(map(str, dtypes))}; rebuild them")
    raw_dtype = dtypes.pop() if dtypes else (np.dtype(parts[0].raw.dtype) if parts else np.dtype(np.uint8))
    raw = RowConcat([p.raw for p in built], (S, S, S), raw_dtype)
    bits = RowConcat([p.bits for p in built], (S, S, S), np.dtype(np.uint8))
    tables = [p.table for p in built] or [p.table for p in parts[:1]]
    skipped = [p.skipped for p in parts if len(p.skipped)]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    skipped_df = pd.concat(skipped, ignore_index=True) if skipped else (
        parts[0].skipped.iloc[:0] if parts else pd.DataFrame(columns=[L.BBOX_COLUMN, L.NAME_COLUMN, "table_row", "reason"])
    )
    try:
        return cls(
            raw=raw,  # type: ignore[arg-type]
            bits=bits,  # type: ignore[arg-type]
            table=table,
            skipped=skipped_df,
            geometry=geometry,
            voxel_size_nm=tuple(voxel),  # type: ignore[arg-type]
            refused_types={int(k): v for k, v in meta.get("refused_types", {}).items()},
        )
    except ValueError as exc:
        raise DataError(f"cube store {folder} is inconsistent: {exc}; rebuild the cubes") from exc


class RowConcat:
    """The row-wise concatenation of arrays (a partitioned store's memory maps), read lazily.

    Indexes like the concatenated numpy array along the first axis: an int, a slice (any
    step), an int array or list, a boolean array, or a tuple starting with one of those;
    only the rows asked for are read. ``np.asarray`` reads everything.
    """

    def __init__(self, arrays: Sequence[np.ndarray], row_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self._arrays = list(arrays)
        for a in self._arrays:
            if tuple(a.shape[1:]) != tuple(row_shape):
                raise ValueError(f"cannot concatenate rows of shape {a.shape[1:]} with rows of shape {row_shape}")
        self._row_shape = tuple(int(s) for s in row_shape)
        self.dtype = np.dtype(dtype)
        sizes = [int(a.shape[0]) for a in self._arrays]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self._starts[-1]), *self._row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self._row_shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return f"RowConcat(shape={self.shape}, dtype={self.dtype}, parts={len(self._arrays)})"

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self._take(np.arange(len(self), dtype=np.int64))
        return arr.astype(dtype, copy=False) if dtype is not None else arr

    def __getitem__(self, key: Any) -> np.ndarray:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        if isinstance(first, tuple) or first is Ellipsis or first is None:
            raise IndexError(f"RowConcat indexes rows first (int, slice, int or boolean array), got {key!r}")
        if isinstance(first, (int, np.integer)):
            i = self._check_index(int(first))
            part = int(np.searchsorted(self._starts, i, side="right")) - 1
            row = self._arrays[part][i - int(self._starts[part])]
            return np.asarray(row[rest]) if rest else row
        if isinstance(first, slice):
            rows = self._slice(first)
            if rows is not None:  # one part, a step of 1: a view of its memory map
                return rows[(slice(None), *rest)] if rest else rows
            idx = np.arange(len(self), dtype=np.int64)[first]
        else:
            idx = self._index_array(first)
        flat = idx.reshape(-1)
        taken = self._take(flat)
        if not rest:
            return taken.reshape(idx.shape + self._row_shape)
        return taken[(np.arange(flat.size).reshape(idx.shape), *rest)]

    # --- helpers ----------------------------------------------------------------------
    def _check_index(self, i: int) -> int:
        n = len(self)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(f"index {i} is out of bounds for {n} cubes")
        return j

    def _slice(self, sl: slice) -> np.ndarray | None:
        """The rows of a step-1 slice when they all lie in one part (a view), else None."""
        start, stop, step = sl.indices(len(self))
        if step != 1:
            return None
        if stop <= start:
            return np.empty((0, *self._row_shape), dtype=self.dtype)
        part = int(np.searchsorted(self._starts, start, side="right")) - 1
        base = int(self._starts[part])
        if stop > int(self._starts[part + 1]):
            return None
        return self._arrays[part][start - base : stop - base]

    def _index_array(self, key: Any) -> np.ndarray:
        arr = np.asarray(key)
        if arr.dtype == bool:
            if arr.shape != (len(self),):
                raise IndexError(f"boolean index of shape {arr.shape} does not match {len(self)} cubes")
            return np.flatnonzero(arr).astype(np.int64)
        if arr.size == 0:
            return arr.astype(np.int64)
        if not np.issubdtype(arr.dtype, np.integer):
            raise IndexError(f"cube rows are indexed by integers or booleans, got {arr.dtype} ({key!r:.80})")
        n = len(self)
        if arr.min() < -n or arr.max() >= n:
            raise IndexError(f"index out of bounds for {n} cubes (got {int(arr.min())}..{int(arr.max())})")
        return np.where(arr < 0, arr + n, arr).astype(np.int64)

    def _take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (normalised, 1-D) in that order; each part is read once, its rows sorted."""
        out = np.empty((idx.size, *self._row_shape), dtype=self.dtype)
        if idx.size == 0:
            return out
        part = np.searchsorted(self._starts, idx, side="right") - 1
        for p in np.unique(part):
            where = np.flatnonzero(part == p)
            local = idx[where] - self._starts[p]
            order = np.argsort(local, kind="stable")
            lo, hi = int(local[order[0]]), int(local[order[-1]]) + 1
            if hi - lo == where.size and np.all(np.diff(local[order]) == 1):
                out[where[order]] = self._arrays[p][lo:hi]  # a run of rows: one sequential read
            else:
                out[where[order]] = self._arrays[p][local[order]]
        return out
