"""Reading the seed's on-disk layout lazily (SPEC 3.1).

A volume is any array-like with ``.shape``, ``.dtype`` and numpy basic slicing
(``vol[z0:z1, y0:y1, x0:x1]``): numpy arrays, memory maps, h5py and zarr datasets all
qualify, and :class:`SliceStack` gives a folder of 2-D slices the same face. Cube building
only ever slices the window it needs, so a bbox is never loaded whole.
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd
import tifffile
from natsort import natsorted

from . import labels as L

if TYPE_CHECKING:
    from .config import Config

logger = logging.getLogger(__name__)

SLICE_SUFFIXES = (".tif", ".tiff", ".png")
LUMA = np.array([0.299, 0.587, 0.114])
_BBOX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class DataError(ValueError):
    """Bad input data; the message names the file, bbox or row and what to fix."""


def validate_name(name: str, what: str = "bbox name") -> str:
    """Reject names that would escape their folder when used as a path component."""
    if not isinstance(name, str) or not _BBOX_NAME.match(name) or ".." in name:
        raise DataError(
            f"invalid {what} {name!r}: use letters, digits, '_', '-' or '.' only (it is used as a folder name)"
        )
    return name


def list_slices(folder: Path) -> list[Path]:
    """Slice files of ``folder`` in natural order (slice_2 before slice_10)."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in SLICE_SUFFIXES and not p.name.startswith(".")]
    return natsorted(files, key=lambda p: p.name)


@dataclass(frozen=True)
class _TiffLayout:
    """Where the pixels of an uncompressed, contiguous TIFF sit in its file."""

    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype
    file_size: int


def _tiff_layout(path: Path) -> _TiffLayout | None:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        if not page.is_contiguous or len(tif.pages) != 1:
            return None
        offset, _ = page.is_contiguous
        dtype = np.dtype(page.dtype).newbyteorder(tif.byteorder)
        return _TiffLayout(int(offset), tuple(page.shape), dtype, path.stat().st_size)


def _read_slice(path: Path, kind: str, layout: _TiffLayout | None = None) -> np.ndarray:
    """Read one 2-D slice; RGB raw -> luma gray, multi-channel labels -> first channel.

    With the ``layout`` of a sibling slice and an equal file size, the pixels are mapped
    directly (a stack written by one writer shares it), which is ~3x cheaper than parsing
    every TIFF header.
    """
    try:
        if layout is not None and path.stat().st_size == layout.file_size:
            arr = np.memmap(path, dtype=layout.dtype, mode="r", offset=layout.offset, shape=layout.shape)
        elif path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
        else:
            try:
                arr = tifffile.memmap(path, mode="r")
            except ValueError:  # compressed or non-contiguous TIFF: decode instead
                arr = tifffile.imread(path)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise DataError(f"cannot read slice {path}: {exc}") from exc
    if arr.ndim == 3:
        if kind == "raw":
            arr = (arr[..., :3].astype(np.float32) @ LUMA.astype(np.float32)).round().astype(np.uint8) if arr.shape[-1] >= 3 else arr[..., 0]
        else:
            arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(f"slice {path} has shape {arr.shape}; expected a 2-D image (or 2-D with channels)")
    return arr


class SliceStack:
    """A folder of 2-D slices seen as a lazy (z, y, x) volume.

    Only the slices a window touches are opened (uncompressed TIFFs are memory-mapped), so a
    synapse window costs a few megabytes whatever the bbox size.
    """

    def __init__(self, folder: str | Path, kind: str = "raw", cache_slices: int = 256) -> None:
        self.folder = Path(folder)
        self.kind = kind
        if not self.folder.is_dir():
            raise DataError(f"slice folder not found: {self.folder}")
        self.files = list_slices(self.folder)
        if not self.files:
            raise DataError(f"no .tif/.tiff/.png slices in {self.folder}")
        first = _read_slice(self.files[0], kind)
        self._layout = None
        if self.files[0].suffix.lower() in (".tif", ".tiff"):
            try:
                self._layout = _tiff_layout(self.files[0])
            except Exception:  # noqa: BLE001 - fall back to per-slice parsing
                self._layout = None
        self._plane_shape = first.shape
        self.dtype = first.dtype
        self.shape = (len(self.files), *first.shape)
        self._slice = functools.lru_cache(maxsize=cache_slices)(self._load)

    ndim = 3

    def clear_cache(self) -> None:
        """Forget opened slices (call when done with a bbox to release its mappings)."""
        self._slice.cache_clear()

    def _load(self, z: int) -> np.ndarray:
        arr = _read_slice(self.files[z], self.kind, self._layout)
        if arr.shape != self._plane_shape:
            raise DataError(
                f"slice {self.files[z]} has shape {arr.shape} but {self.files[0].name} has {self._plane_shape}; "
                "all slices of a volume must have the same size"
            )
        return arr

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        zkey, ykey, xkey = key
        if isinstance(zkey, (int, np.integer)):
            return np.asarray(self._slice(int(zkey))[ykey, xkey])
        zs = range(*zkey.indices(self.shape[0]))
        out = np.empty((len(zs), *np.empty(self._plane_shape, dtype=bool)[ykey, xkey].shape), dtype=self.dtype)
        for i, z in enumerate(zs):
            out[i] = self._slice(z)[ykey, xkey]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self[:, :, :]
        return arr.astype(dtype) if dtype is not None else arr

    def __repr__(self) -> str:
        return f"SliceStack({str(self.folder)!r}, shape={self.shape}, dtype={self.dtype})"


def read_synapse_table(path: str | Path, bbox: str | None = None) -> pd.DataFrame:
    """Read one synapse table (xlsx or csv) and check the seed's columns (SPEC 3.1).

    Rows keep their spreadsheet row number in ``table_row`` so later errors can point at them.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"synapse table not found: {path}" + (f" (bbox {bbox})" if bbox else ""))
    try:
        df = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_excel(path)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read synapse table {path}: {exc}") from exc
    missing = [c for c in L.REQUIRED_TABLE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"synapse table {path} lacks column(s) {missing}; it has {list(df.columns)}. "
            f"Expected {list(L.REQUIRED_TABLE_COLUMNS)} (x, y, z in bbox voxels)"
        )
    coord_cols = [*L.CENTER_COLUMNS, *L.SIDE1_COLUMNS, *L.SIDE2_COLUMNS]
    df = df.copy()
    df["table_row"] = np.arange(len(df)) + 2  # header is spreadsheet row 1
    for col in coord_cols:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna()
        if bad.any():
            rows = df.loc[bad, "table_row"].tolist()[:5]
            raise DataError(f"synapse table {path}: column {col} is empty or not a number in row(s) {rows}")
        df[col] = values.round().astype(np.int64)
    df[L.NAME_COLUMN] = df[L.NAME_COLUMN].astype(str)
    dup = df[L.NAME_COLUMN].duplicated()
    if dup.any():
        raise DataError(f"synapse table {path}: duplicate synapse names {df.loc[dup, L.NAME_COLUMN].tolist()[:5]}")
    if bbox is not None:
        df.insert(0, L.BBOX_COLUMN, bbox)
    return df


@dataclass
class BboxData:
    """One bbox: lazy raw / segmentation / extra-label volumes plus its synapse table."""

    name: str
    raw: object
    seg: object
    mask: object
    table: pd.DataFrame
    label_ids: L.LabelIds
    sources: dict[str, Path] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.raw.shape)  # type: ignore[attr-defined]


def _check_same_geometry(name: str, volumes: Mapping[str, SliceStack]) -> None:
    shapes = {k: tuple(v.shape) for k, v in volumes.items()}
    if len(set(shapes.values())) > 1:
        detail = ", ".join(f"{k}: {len(volumes[k].files)} slices of {v[1:]} in {volumes[k].folder}" for k, v in shapes.items())
        raise DataError(f"bbox {name}: raw, seg and mask volumes differ ({detail}); fix the slices or drop {name} from bboxes")


def open_seed_bbox(
    name: str,
    raw_dir: str | Path,
    seg_dir: str | Path,
    mask_dir: str | Path,
    table_dir: str | Path,
    label_table: Mapping[str, L.LabelIds] | None = None,
) -> BboxData:
    """Open one bbox of the seed layout without reading its voxels."""
    validate_name(name)
    folders = {
        "raw": Path(raw_dir) / name,
        "seg": Path(seg_dir) / name,
        "mask": Path(mask_dir) / L.mask_folder_name(name),
    }
    for kind, folder in folders.items():
        if not folder.is_dir():
            raise DataError(
                f"bbox {name}: {kind} folder not found: {folder}. Check {kind}_dir in the parameters or remove {name} from bboxes"
            )
    stacks = {k: SliceStack(p, kind="raw" if k == "raw" else "label") for k, p in folders.items()}
    _check_same_geometry(name, stacks)
    table_path = _find_table(Path(table_dir), name)
    table = read_synapse_table(table_path, bbox=name)
    return BboxData(
        name=name,
        raw=stacks["raw"],
        seg=stacks["seg"],
        mask=stacks["mask"],
        table=table,
        label_ids=L.label_ids_for(name, label_table),
        sources={**folders, "table": table_path},
    )


def _find_table(table_dir: Path, name: str) -> Path:
    for suffix in (".xlsx", ".xls", ".csv"):
        candidate = table_dir / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    raise DataError(f"bbox {name}: no synapse table {name}.xlsx or {name}.csv in {table_dir}")


def open_seed_dataset(
    bboxes: Sequence[str],
    raw_dir: str | Path,
    seg_dir: str | Path,
    mask_dir: str | Path,
    table_dir: str | Path,
    label_table: Mapping[str, L.LabelIds] | None = None,
) -> list[BboxData]:
    """Open every requested bbox; any bad bbox is an error naming it (the seed dropped it)."""
    if not bboxes:
        raise DataError("no bboxes selected: list at least one in 'bboxes'")
    return [open_seed_bbox(b, raw_dir, seg_dir, mask_dir, table_dir, label_table) for b in bboxes]


def discover_bboxes(raw_dir: str | Path) -> list[str]:
    """Bbox folder names under ``raw_dir`` in natural order."""
    root = Path(raw_dir)
    if not root.is_dir():
        raise DataError(f"raw_dir not found: {root}")
    return natsorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def open_dataset(cfg: "Config") -> list[BboxData]:
    """Open the bboxes a configuration names (all bboxes under ``raw_dir`` when none are)."""
    names = list(cfg.bboxes) or discover_bboxes(cfg.raw_dir)
    return open_seed_dataset(names, cfg.raw_dir, cfg.seg_dir, cfg.mask_dir, cfg.table_dir, cfg.label_ids())


def dataset_summary(bboxes: Sequence[BboxData]) -> pd.DataFrame:
    """One row per bbox: shape, synapse count and the label ids in use."""
    rows = []
    for b in bboxes:
        rows.append(
            {
                "bbox": b.name,
                "shape (z, y, x)": "x".join(str(s) for s in b.shape),
                "synapses": len(b.table),
                **{f"{k} id": v for k, v in b.label_ids.as_dict().items()},
            }
        )
    return pd.DataFrame(rows)
