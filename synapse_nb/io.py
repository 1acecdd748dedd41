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


def read_synapse_table(
    path: str | Path,
    bbox: str | None = None,
    columns: L.TableColumns = L.SEED_COLUMNS,
    allow_missing_sides: bool = False,
    integer_coords: bool = True,
) -> pd.DataFrame:
    """Read one synapse table (xlsx or csv), check its columns and rename them to the seed's.

    Rows keep their spreadsheet row number in ``table_row`` so later errors can point at them.
    ``allow_missing_sides``: a side whose three coordinates are all empty is kept as NaN
    (partners unknown). ``integer_coords`` rounds coordinates to voxels (the seed layout);
    otherwise they stay float (they may be mapped onto a resampled grid later).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"synapse table not found: {path}" + (f" (bbox {bbox})" if bbox else ""))
    try:
        df = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_excel(path)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read synapse table {path}: {exc}") from exc
    required = columns.required()
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"synapse table {path} lacks column(s) {missing}; it has {list(df.columns)}. "
            f"Expected {list(required)} (x, y, z in bbox voxels)"
        )
    df = df.copy()
    df["table_row"] = np.arange(len(df)) + 2  # header is spreadsheet row 1
    sides = (columns.side1, columns.side2)
    for col in (*columns.center, *columns.side1, *columns.side2):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    for col in columns.center:
        bad = df[col].isna()
        if bad.any():
            rows = df.loc[bad, "table_row"].tolist()[:5]
            raise DataError(f"synapse table {path}: column {col} is empty or not a number in row(s) {rows}")
    for side in sides:
        nan = df[list(side)].isna()
        partial = nan.any(axis=1) & ~nan.all(axis=1) if allow_missing_sides else nan.any(axis=1)
        if partial.any():
            col = next(c for c in side if nan.loc[partial, c].any())
            rows = df.loc[partial, "table_row"].tolist()[:5]
            hint = " (leave all three of a side empty when its partner is unknown)" if allow_missing_sides else ""
            raise DataError(f"synapse table {path}: column {col} is empty or not a number in row(s) {rows}{hint}")
    if integer_coords and not allow_missing_sides:
        for col in (*columns.center, *columns.side1, *columns.side2):
            df[col] = df[col].round().astype(np.int64)
    else:
        for col in (*columns.center, *columns.side1, *columns.side2):
            df[col] = df[col].astype(np.float64).round() if integer_coords else df[col].astype(np.float64)
    df[columns.name] = df[columns.name].astype(str)
    dup = df[columns.name].duplicated()
    if dup.any():
        raise DataError(f"synapse table {path}: duplicate synapse names {df.loc[dup, columns.name].tolist()[:5]}")
    renames = {k: v for k, v in columns.to_canonical().items() if k != v}
    clash = [v for k, v in renames.items() if v in df.columns and v not in renames]
    if clash:
        raise DataError(
            f"synapse table {path}: it has column(s) {clash} besides the configured ones; rename them or use them as the configured columns"
        )
    df = df.rename(columns=renames)
    if bbox is not None:
        df.insert(0, L.BBOX_COLUMN, bbox)
    return df


def has_side_points(table: pd.DataFrame) -> bool:
    """True when at least one synapse has both side points."""
    cols = [*L.SIDE1_COLUMNS, *L.SIDE2_COLUMNS]
    if table.empty or any(c not in table for c in cols):
        return False
    return bool(table[cols].notna().all(axis=1).any())


@dataclass
class BboxData:
    """One bbox: lazy raw / segmentation / extra-label volumes plus its synapse table."""

    name: str
    raw: object
    seg: object | None  # None: the dataset has no neurite segmentation
    mask: object | None  # None: the dataset has no extra-label volume
    table: pd.DataFrame
    label_ids: L.LabelIds
    sources: dict[str, Path] = field(default_factory=dict)
    voxel_size_nm: tuple[float, float, float] | None = None  # z, y, x; None = the configuration's
    dataset: str = ""  # the dataset's name, for messages and reports

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.raw.shape)  # type: ignore[attr-defined]

    def capabilities(self) -> L.DataCapabilities:
        """What this bbox can serve (see :func:`synapse_nb.labels.missing_for_type`)."""
        return L.DataCapabilities(
            label_ids=self.label_ids,
            has_seg=self.seg is not None,
            has_mask=self.mask is not None,
            has_sides=has_side_points(self.table),
        )


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
        dataset=str(raw_dir),
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
    """Open the bboxes a configuration names.

    With ``cfg.dataset`` set, the dataset description YAML (:mod:`synapse_nb.dataset`) says
    where the volumes and tables are, and its voxel size and label ids win over
    ``voxel_size_nm`` / ``label_table``. Otherwise the seed layout under ``raw_dir`` ...
    is read (all bboxes under ``raw_dir`` when none are named).
    """
    if cfg.dataset:
        from .dataset import open_dataset_description

        bboxes = open_dataset_description(cfg.dataset, list(cfg.bboxes) or None)
        logger.info(
            "dataset description %s: its voxel size %s nm and label ids are used; voxel_size_nm, label_table, "
            "raw_dir, seg_dir, mask_dir and table_dir in the parameters are ignored",
            cfg.dataset,
            list(bboxes[0].voxel_size_nm or ()),
        )
        return bboxes
    names = list(cfg.bboxes) or discover_bboxes(cfg.raw_dir)
    return open_seed_dataset(names, cfg.raw_dir, cfg.seg_dir, cfg.mask_dir, cfg.table_dir, cfg.label_ids())


def _source_text(b: BboxData) -> str:
    raw = b.raw
    fmt = getattr(raw, "fmt", "slices" if isinstance(raw, SliceStack) else type(raw).__name__)
    where = b.sources.get("raw", getattr(raw, "path", getattr(raw, "folder", "")))
    key = getattr(raw, "key", None)
    return f"{fmt}: {where}" + (f" [{key}]" if key else "")


def dataset_summary(bboxes: Sequence[BboxData], voxel_size_nm: Sequence[float] | None = None) -> pd.DataFrame:
    """One row per bbox: source, shape, voxel size, synapse count, label ids, seg/mask presence."""
    rows = []
    for b in bboxes:
        vox = b.voxel_size_nm or (tuple(voxel_size_nm) if voxel_size_nm is not None else None)
        rows.append(
            {
                "bbox": b.name,
                "source": _source_text(b),
                "shape (z, y, x)": "x".join(str(s) for s in b.shape),
                "voxel (z, y, x) nm": ", ".join(f"{float(v):g}" for v in vox) if vox else "",
                "synapses": len(b.table),
                **{f"{k} id": v for k, v in b.label_ids.as_dict().items()},
                "seg": b.seg is not None,
                "mask": b.mask is not None,
            }
        )
    return pd.DataFrame(rows)
