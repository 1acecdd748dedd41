"""Connectome description YAML: a whole dataset seen as one huge, lazily read bbox.

A lab's connectome is a synapse table of any size (parquet, CSV or HDF5) with positions in
global voxels, chunked layers (raw, segmentation, a cleft / synapse-prediction layer, an
optional label layer with mitochondria and vesicle clouds) and an optional segment ->
agglomerate mapping. One YAML says where all of that is (``parameters/connectome_example.yaml``)::

    name: synthetic_connectome          # optional, default: the file's stem
    voxel_size_nm: [8.0, 8.0, 8.0]      # z, y, x of every layer that does not state its own
    synapses:
      path: synapses.parquet            # .parquet / .pq, .csv, .h5 / .hdf5
      key: synapses                     # HDF5: a group of 1-D datasets or a compound dataset
      columns:
        id: synapse_id                  # optional (default: the row number); unique
        position: [x, y, z]             # global voxels of the layers (x, y, z)
        pre: pre_segment                # optional partner ids
        post: post_segment
        side1: [s1x, s1y, s1z]          # optional partner points (x, y, z)
        side2: [s2x, s2y, s2z]
        keep: [synapse_class]           # extra columns carried into the run's tables
      partner_ids: segments             # segments | agglomerates: what pre / post hold
    layers:                             # each {path, key?, format?, voxel_size_nm?, mag?}
      raw: {path: connectome.zarr, key: raw}
      seg: {path: connectome.zarr, key: seg}
      cleft: {path: connectome.zarr, key: cleft, threshold: 128}
      mask: {path: connectome.zarr, key: mask, labels: {mito: 2, vesicle: 3}}
    agglomerates: {path: agglomerates.h5, key: segment_to_agglomerate}
    viewer: {webknossos: "https://wk.example.org/datasets/lab/{dataset}/view#{x},{y},{z},0,1.3"}

:func:`open_connectome` opens it into a :class:`Connectome`; :meth:`Connectome.as_bbox`
gives the :class:`~synapse_nb.data.bbox.BboxData` cube building knows, whose volumes are
virtual and lazy:

- ``seg``: the segmentation with the agglomerate mapping applied to every window read
  (:class:`MappedSegmentation`);
- ``mask``: the label layer's mitochondria and vesicle ids (other ids zeroed) with the voxels
  where the cleft layer is at or above ``threshold`` set to the cleft id
  (:class:`VirtualMask`). The cleft id is :data:`CLEFT_LABEL` unless the label layer uses it
  for mitochondria or vesicles; then it is the smallest id they do not use.

Documented choices
------------------
Voxel sizes
    A layer's voxel size is what its file states (webKnossos: dataset voxel size times the
    mag; precomputed: the scale's resolution; OME-Zarr: its scale), else its own
    ``voxel_size_nm``, else the top-level one. Every layer must have the raw layer's voxel
    size and shape (pick the mag that matches); the whole connectome is then resampled to
    ``target_voxel_nm`` like bboxes.
Table rows
    ``table_row`` is the 0-based row in the file. Rows that cannot be used are not fatal:
    they go to :attr:`Connectome.rejected` with a reason (a position that is not three finite
    numbers or lies outside the raw layer, a partner id the agglomerate mapping does not
    know). Partner ids <= 0, empty or not integers mean "unknown" (<NA>). A side point with
    any coordinate missing is unknown as a whole (NaN).
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..core import labels as L
from ..core.config import ConfigError, parse_yaml, read_text
from ..core.errors import DataError, format_validation_error, shorten, validate_name
from .agglomerates import DEFAULT_KEY as AGGLOMERATE_KEY
from .agglomerates import AgglomerateMapping
from .bbox import BboxData
from .description import DescriptionFile
from .viewers import check_viewer
from .volumes import FORMAT_ALIASES, FORMATS, Volume, _apply_post, _index_plan, import_webknossos, open_volume

logger = logging.getLogger(__name__)

#: The id the cleft gets in the virtual mask (unless the label layer uses it).
CLEFT_LABEL = 1
#: Storage chunk assumed when the raw layer's format has none (z, y, x).
DEFAULT_CHUNK = (64, 64, 64)
#: Bytes of recently read storage chunks each layer keeps (neighbouring synapses share them).
CHUNK_CACHE_BYTES = 256 * 1024**2
PRE_COLUMN = "pre_id"
POST_COLUMN = "post_id"
TABLE_ROW = "table_row"
REJECTED_COLUMNS = (L.NAME_COLUMN, TABLE_ROW, "reason")
TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5"}
_SHOWN_COLUMNS = 20
_STRICT = ConfigDict(extra="forbid", strict=True)


# --------------------------------------------------------------------------------------
# the YAML schema
# --------------------------------------------------------------------------------------
def _xyz(v: list[str] | None) -> list[str] | None:
    if v is not None and len(v) != 3:
        raise ValueError("give three column names: x, y, z")
    return v


class SynapseColumns(BaseModel):
    """Which columns of the synapse table hold what (triples are x, y, z)."""

    model_config = _STRICT

    id: str | None = None
    position: list[str]
    pre: str | None = None
    post: str | None = None
    side1: list[str] | None = None
    side2: list[str] | None = None
    keep: list[str] = Field(default_factory=list)

    @field_validator("position", "side1", "side2")
    @classmethod
    def _three(cls, v: list[str] | None) -> list[str] | None:
        return _xyz(v)

    @model_validator(mode="after")
    def _sides_together(self) -> SynapseColumns:
        if (self.side1 is None) != (self.side2 is None):
            raise ValueError("give both side1 and side2 (partner points), or neither")
        return self

    def needed(self) -> list[str]:
        """Every column the table must have, once each, in a stable order."""
        cols = [self.id, *self.position, self.pre, self.post, *(self.side1 or []), *(self.side2 or []), *self.keep]
        return list(dict.fromkeys(c for c in cols if c))


class SynapseTableSpec(BaseModel):
    model_config = _STRICT

    path: str
    key: str | None = None
    columns: SynapseColumns
    partner_ids: Literal["segments", "agglomerates"] = "segments"


def _voxel_triple(v: list[float] | None) -> list[float] | None:
    if v is not None and (len(v) != 3 or any(not math.isfinite(x) or x <= 0 for x in v)):
        raise ValueError("give three positive voxel sizes z, y, x in nm")
    return [float(x) for x in v] if v is not None else None


class LayerSpec(BaseModel):
    """One layer: a file or folder, the array in it, its format, voxel size and mag."""

    model_config = _STRICT

    path: str
    key: str | None = None
    format: str | None = None
    voxel_size_nm: list[float] | None = None
    mag: str | int | None = None

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str | None) -> str | None:
        if v is not None and v.lower() not in FORMATS and v.lower() not in FORMAT_ALIASES:
            raise ValueError(f"unknown format {v!r}; choose one of {list(FORMATS)}")
        return v

    @field_validator("voxel_size_nm")
    @classmethod
    def _voxels(cls, v: list[float] | None) -> list[float] | None:
        return _voxel_triple(v)


class CleftLayerSpec(LayerSpec):
    """The cleft / synapse-prediction layer: a voxel at or above ``threshold`` is cleft."""

    threshold: float

    @field_validator("threshold")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("threshold must be a finite number")
        return float(v)


class MaskLabels(BaseModel):
    """Ids of the label layer's structures; 0 = not annotated."""

    model_config = _STRICT

    mito: int = Field(0, ge=0)
    vesicle: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _distinct(self) -> MaskLabels:
        if self.mito == 0 and self.vesicle == 0:
            raise ValueError("give the label layer's mito and / or vesicle id (a label layer with neither is unused)")
        if self.mito and self.mito == self.vesicle:
            raise ValueError(f"mito and vesicle must be different ids, both are {self.mito}")
        return self


class MaskLayerSpec(LayerSpec):
    labels: MaskLabels


def _plain_path(v: Any) -> Any:
    return {"path": v} if isinstance(v, str) else v


class LayersSpec(BaseModel):
    model_config = _STRICT

    raw: LayerSpec
    seg: LayerSpec | None = None
    cleft: CleftLayerSpec | None = None
    mask: MaskLayerSpec | None = None

    @field_validator("raw", "seg", mode="before")
    @classmethod
    def _path_only(cls, v: Any) -> Any:
        return _plain_path(v)


class AgglomerateSpec(BaseModel):
    model_config = _STRICT

    path: str
    key: str = AGGLOMERATE_KEY


class ConnectomeSpec(BaseModel):
    """The validated content of a connectome description YAML."""

    model_config = _STRICT

    name: str = ""
    voxel_size_nm: list[float] | None = None
    synapses: SynapseTableSpec
    layers: LayersSpec
    agglomerates: AgglomerateSpec | None = None
    viewer: dict[str, Any] | None = None  # checked by data.viewers.check_viewer

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_name(v, "connectome name") if v else v

    @field_validator("voxel_size_nm")
    @classmethod
    def _voxels(cls, v: list[float] | None) -> list[float] | None:
        return _voxel_triple(v)

    @field_validator("viewer")
    @classmethod
    def _viewer(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        check_viewer(v)  # a ValueError naming the bad key or template: a description error
        return v


@dataclass(frozen=True)
class ConnectomeDescription(DescriptionFile):
    """A validated connectome description plus where it came from (relative paths and
    ``file://`` URLs resolve against its folder)."""

    spec: ConnectomeSpec

    @property
    def where(self) -> str:
        return f"connectome description {self.file}"


def _is_connectome_data(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("synapses"), dict) and isinstance(data.get("layers"), dict)


def is_connectome_description(path: Any) -> bool:
    """True for a YAML file (or its parsed mapping) with a ``synapses`` and a ``layers`` section."""
    if isinstance(path, dict):
        return _is_connectome_data(path)
    try:
        file = Path(path).expanduser()
        if not file.is_file() or file.suffix.lower() not in (".yaml", ".yml"):
            return False
        return _is_connectome_data(parse_yaml(read_text(file, what="connectome description"), str(file)))
    except (ConfigError, OSError, TypeError, ValueError):
        return False


def load_connectome_description(path: str | Path) -> ConnectomeDescription:
    """Read and validate a connectome description (no volume or table is opened)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"connectome description not found: {file}")
    try:
        text = read_text(file, what="connectome description")
        data = parse_yaml(text, f"connectome description {file}")
    except ConfigError as exc:
        raise DataError(str(exc)) from None
    if not isinstance(data, dict):
        raise DataError(f"connectome description {file} must hold a mapping (synapses, layers ...), not {type(data).__name__}")
    try:
        spec = ConnectomeSpec(**data)
    except ValidationError as exc:
        raise DataError(
            format_validation_error(
                exc,
                f"invalid connectome description {file}",
                noun="key",
                unknown_hint="see parameters/connectome_example.yaml for the keys a connectome description takes",
            )
        ) from None
    return ConnectomeDescription(spec=spec, file=file.resolve(), text_sha256=hashlib.sha256(text.encode()).hexdigest())


# --------------------------------------------------------------------------------------
# the synapse table
# --------------------------------------------------------------------------------------
def _unknown_columns(path: Path, missing: list[str], have: list[str]) -> DataError:
    shown = ", ".join(repr(c) for c in have[:_SHOWN_COLUMNS]) or "none"
    more = f" and {len(have) - _SHOWN_COLUMNS} more" if len(have) > _SHOWN_COLUMNS else ""
    what = "column" if len(missing) == 1 else "columns"
    return DataError(
        f"synapse table {path} has no {what} {', '.join(repr(m) for m in missing)}; it has {shown}{more}: "
        "fix synapses.columns in the connectome description"
    )


def _decode(values: Any) -> Any:
    """HDF5 byte strings as text; anything else as is."""
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        return np.char.decode(arr, "utf-8", errors="replace")
    if arr.dtype.kind == "O" and arr.size and isinstance(arr.flat[0], bytes):
        return np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in arr], dtype=object)
    return arr


def _read_hdf5_table(path: Path, key: str | None, needed: list[str]) -> pd.DataFrame:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"cannot open synapse table {path}: {exc}") from None
    with f:
        node = f[key] if key and key in f else (f if not key else None)
        if node is None:
            tops = sorted(f.keys())
            raise DataError(f"synapse table {path} has no group or dataset {key!r}; it has {_listing(tops)}: fix synapses.key")
        if isinstance(node, h5py.Dataset):
            names = list(node.dtype.names or [])
            if not names:
                raise DataError(
                    f"synapse table {path}, key {key!r} is a dataset without named fields; give a group with one 1-D "
                    "dataset per column, or a compound dataset"
                )
            missing = [c for c in needed if c not in names]
            if missing:
                raise _unknown_columns(path, missing, names)
            data = node.fields(needed)[...] if len(needed) > 1 else node.fields(needed[0])[...]
            if len(needed) == 1:
                return pd.DataFrame({needed[0]: _decode(data)})
            return pd.DataFrame({c: _decode(data[c]) for c in needed})
        names = sorted(n for n, obj in node.items() if isinstance(obj, h5py.Dataset))
        missing = [c for c in needed if c not in names]
        if missing:
            raise _unknown_columns(path, missing, names)
        cols: dict[str, Any] = {}
        for c in needed:
            ds = node[c]
            if ds.ndim != 1:
                raise DataError(f"synapse table {path}: dataset {c!r} has shape {ds.shape}; each column must be a 1-D dataset")
            cols[c] = _decode(ds[...])
        lengths = {c: len(v) for c, v in cols.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"synapse table {path}: its column datasets differ in length ({lengths}); they must have one entry per synapse")
        return pd.DataFrame(cols)


def _read_table_columns(path: Path, key: str | None, needed: list[str]) -> pd.DataFrame:
    """Only the ``needed`` columns of a parquet, CSV or HDF5 synapse table."""
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if not path.is_file():
        raise DataError(f"synapse table not found: {path}; fix synapses.path")
    if kind is None:
        raise DataError(f"synapse table {path}: unknown format {path.suffix!r}; use .parquet / .pq, .csv or .h5 / .hdf5")
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            names = list(pq.ParquetFile(path).schema_arrow.names)
            missing = [c for c in needed if c not in names]
            if missing:
                raise _unknown_columns(path, missing, names)
            return pq.read_table(path, columns=needed).to_pandas()
        if kind == "csv":
            names = [str(c) for c in pd.read_csv(path, nrows=0).columns]
            missing = [c for c in needed if c not in names]
            if missing:
                raise _unknown_columns(path, missing, names)
            return pd.read_csv(path, usecols=needed, low_memory=False)
        return _read_hdf5_table(path, key, needed)
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"synapse table {path} is empty: write a header row and one row per synapse") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's fault; one line naming it
        raise DataError(f"cannot read synapse table {path}: {shorten(exc, 200)}") from None


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:_SHOWN_COLUMNS]) or "none"
    return shown + (f" and {len(names) - _SHOWN_COLUMNS} more" if len(names) > _SHOWN_COLUMNS else "")


def _floats(column: pd.Series) -> np.ndarray:
    """float64 values; text, booleans and non-finite values become NaN."""
    if pd.api.types.is_bool_dtype(column):
        return np.full(len(column), np.nan)
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    values[~np.isfinite(values)] = np.nan
    return values


def _partner_ids(column: pd.Series) -> pd.Series:
    """Nullable Int64 partner ids; <= 0, empty, fractional or text = unknown (<NA>)."""
    col = column
    if not (pd.api.types.is_integer_dtype(col) or pd.api.types.is_float_dtype(col)):
        col = pd.to_numeric(col, errors="coerce")
    if pd.api.types.is_unsigned_integer_dtype(col) and len(col) and int(col.max()) > np.iinfo(np.int64).max:
        raise DataError("partner ids above 2**63 - 1 are not supported")
    if pd.api.types.is_float_dtype(col):
        v = col.to_numpy(dtype=np.float64, na_value=np.nan)
        ok = np.isfinite(v) & (v > 0) & (v == np.floor(v)) & (v < 2.0**63)
        out = np.zeros(len(v), dtype=np.int64)
        out[ok] = v[ok].astype(np.int64)
        return pd.Series(pd.arrays.IntegerArray(out, ~ok))
    v = col.to_numpy(dtype=np.int64, na_value=0) if col.dtype.kind != "O" else col.fillna(0).to_numpy(dtype=np.int64)
    return pd.Series(pd.arrays.IntegerArray(v, ~(v > 0)))


def _names(column: pd.Series) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(ids as text, the same ids as int64 when all are integers, which ids are missing (None)).

    Integral float ids lose their '.0'. Text is made by Arrow (several times faster than numpy's).
    """
    import pyarrow as pa

    if pd.api.types.is_float_dtype(column) or pd.api.types.is_integer_dtype(column):
        v = column.to_numpy(dtype=np.float64, na_value=np.nan) if column.hasnans else None
        missing = np.isnan(v) if v is not None else np.zeros(len(column), dtype=bool)
        if pd.api.types.is_integer_dtype(column) and v is None:
            ints: np.ndarray | None = column.to_numpy(dtype=np.int64)
        else:
            f = column.to_numpy(dtype=np.float64, na_value=np.nan)
            ints = np.where(missing, 0, f).astype(np.int64) if np.all(f[~missing] == np.floor(f[~missing])) else None
            if ints is None:
                text = pa.array(f, mask=missing).cast(pa.string()).to_numpy(zero_copy_only=False)
                return text, None, missing
        text = pa.array(ints, mask=missing).cast(pa.string()).to_numpy(zero_copy_only=False)
        return text, (None if missing.any() else ints), missing
    values = column.to_numpy(dtype=object)
    ok = ~pd.isna(values)
    out = np.full(len(values), None, dtype=object)
    out[ok] = [v if isinstance(v, str) else str(v) for v in values[ok]]
    return out, None, ~ok


def _first_duplicate(text: np.ndarray, ints: np.ndarray | None) -> tuple[int, int] | None:
    """Rows (0-based) of the first id that occurs twice, or None."""
    keys = pd.Series(ints) if ints is not None else pd.Series(text)
    dup = keys.duplicated(keep=False).to_numpy() & keys.notna().to_numpy()
    if not dup.any():
        return None
    first = int(np.flatnonzero(dup)[0])
    second = int(np.flatnonzero(dup & (keys == keys.iat[first]).to_numpy())[1])
    return first, second


def _fmt_xyz(p: np.ndarray) -> str:
    return f"(x={p[0]:g}, y={p[1]:g}, z={p[2]:g})"


@dataclass
class _TableParts:
    table: pd.DataFrame  # every row, canonical columns
    reasons: list[tuple[int, str]]  # (position in table, reason) of rows not usable


def read_connectome_table(path: Path, spec: SynapseTableSpec) -> _TableParts:
    """The canonical columns of every row; rows whose position is unusable get a reason."""
    cols = spec.columns
    needed = cols.needed()
    raw = _read_table_columns(path, spec.key, needed)
    n = len(raw)
    if n == 0:
        raise DataError(f"synapse table {path} has no rows: add one row per synapse")
    out: dict[str, Any] = {}
    if cols.id:
        names, ints, missing_ids = _names(raw[cols.id].reset_index(drop=True))
        twice = _first_duplicate(names, ints)
        if twice is not None:
            raise DataError(
                f"synapse table {path}: id {shorten(repr(names[twice[0]]))} occurs more than once (rows {twice[0]} and "
                f"{twice[1]}, 0-based); ids in column {cols.id!r} must be unique"
            )
    else:
        names, _, missing_ids = _names(pd.Series(np.arange(n, dtype=np.int64)))
    out[L.NAME_COLUMN] = names
    pos = np.column_stack([_floats(raw[c]) for c in cols.position])
    for c, values in zip(L.CENTER_COLUMNS, pos.T):
        out[c] = values
    for side, names3 in ((cols.side1, L.SIDE1_COLUMNS), (cols.side2, L.SIDE2_COLUMNS)):
        if side is None:
            vals = np.full((n, 3), np.nan)
        else:
            vals = np.column_stack([_floats(raw[c]) for c in side])
            vals[np.isnan(vals).any(axis=1)] = np.nan
        for c, v in zip(names3, vals.T):
            out[c] = v
    for role, name in ((PRE_COLUMN, cols.pre), (POST_COLUMN, cols.post)):
        if name is None:
            out[role] = pd.Series(pd.arrays.IntegerArray(np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool)))
        else:
            try:
                out[role] = _partner_ids(raw[name].reset_index(drop=True))
            except DataError as exc:
                raise DataError(f"synapse table {path}, column {name!r}: {exc}") from None
    out[TABLE_ROW] = np.arange(n, dtype=np.int64)
    clash = [c for c in cols.keep if c in out]
    if clash:
        raise DataError(f"synapse table {path}: keep lists {clash}, names the reader writes itself; rename those columns")
    for c in cols.keep:
        out[c] = raw[c].to_numpy()
    table = pd.DataFrame(out)

    reasons: list[tuple[int, str]] = []
    for i in np.flatnonzero(missing_ids):
        reasons.append((int(i), f"the id column {cols.id!r} is empty"))
    bad_pos = np.isnan(pos).any(axis=1)
    if bad_pos.any():
        given = raw[cols.position].to_numpy()
        for i in np.flatnonzero(bad_pos):
            shown = ", ".join(shorten(repr(v) if isinstance(v, (str, bytes)) else str(v), 30) for v in given[i])
            reasons.append((int(i), f"position ({shown}) in columns {cols.position} is not three finite numbers"))
    return _TableParts(table, reasons)


# --------------------------------------------------------------------------------------
# the virtual volumes
# --------------------------------------------------------------------------------------
def _read(volume: Any, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    read = getattr(volume, "read_window", None)
    if callable(read):
        return np.asarray(read(lo, hi))
    return np.asarray(volume[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))])


def _clip(lo: Sequence[int], hi: Sequence[int], shape: Sequence[int]) -> tuple[list[int], list[int]]:
    lo_c = [min(max(int(a), 0), n) for a, n in zip(lo, shape)]
    hi_c = [min(max(int(b), a), n) for a, b, n in zip(lo_c, hi, shape)]
    return lo_c, hi_c


class _LazyView:
    """Common reading surface of the virtual volumes (numpy basic slicing, read_window)."""

    ndim = 3
    shape: tuple[int, int, int]
    dtype: np.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def _window(self, lo: list[int], hi: list[int]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_window(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        """Voxels [lo, hi) (z, y, x), clipped to the volume."""
        lo_c, hi_c = _clip(lo, hi, self.shape)
        if any(b <= a for a, b in zip(lo_c, hi_c)):
            return np.zeros(tuple(b - a for a, b in zip(lo_c, hi_c)), dtype=self.dtype)
        return self._window(lo_c, hi_c)

    def __getitem__(self, key: Any) -> np.ndarray:
        lo, hi, post = _index_plan(key, self.shape)
        return _apply_post(self.read_window(lo, hi), post)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self.read_window((0, 0, 0), self.shape)
        return arr.astype(dtype) if dtype is not None else arr


class MappedSegmentation(_LazyView):
    """The segmentation with segment ids replaced by agglomerate ids, window by window."""

    def __init__(self, volume: Any, mapping: AgglomerateMapping) -> None:
        self.volume = volume
        self.mapping = mapping
        self.shape = tuple(int(s) for s in volume.shape)  # type: ignore[assignment]
        self.dtype = np.dtype(mapping.dtype)
        self.path = getattr(volume, "path", None)

    @property
    def voxels_read(self) -> int:
        return int(getattr(self.volume, "voxels_read", 0))

    def _window(self, lo: list[int], hi: list[int]) -> np.ndarray:
        win = _read(self.volume, lo, hi)
        where = f"(seg layer {getattr(self.volume, 'where', self.path)}, window z, y, x {lo}..{hi})"
        return self.mapping(win, where)

    def clear_cache(self) -> None:
        clear = getattr(self.volume, "clear_cache", None)
        if callable(clear):
            clear()

    def __repr__(self) -> str:
        return f"MappedSegmentation({self.volume!r} through {self.mapping!r})"


def free_cleft_label(mito: int, vesicle: int) -> int:
    """:data:`CLEFT_LABEL` unless mito or vesicle use it; then the smallest id neither uses."""
    label = CLEFT_LABEL
    while label in (mito, vesicle):
        label += 1
    return label


class VirtualMask(_LazyView):
    """Label layer's mito / vesicle ids (others 0) with the thresholded cleft painted in."""

    def __init__(
        self,
        *,
        shape: Sequence[int],
        mask: Any | None,
        cleft: Any | None,
        threshold: float,
        mito: int,
        vesicle: int,
        cleft_label: int,
    ) -> None:
        if mask is None and cleft is None:
            raise ValueError("a virtual mask needs a label layer or a cleft layer")
        self.mask = mask
        self.cleft = cleft
        self.threshold = float(threshold)
        self.mito, self.vesicle, self.cleft_label = int(mito), int(vesicle), int(cleft_label)
        self.shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
        top = max(self.mito, self.vesicle, self.cleft_label if cleft is not None else 0, 1)
        self.dtype = np.dtype(np.min_scalar_type(top))
        self._kept = np.array([i for i in (self.mito, self.vesicle) if i > 0], dtype=np.int64)

    def _window(self, lo: list[int], hi: list[int]) -> np.ndarray:
        out = np.zeros(tuple(b - a for a, b in zip(lo, hi)), dtype=self.dtype)
        if self.mask is not None and self._kept.size:
            labels = _read(self.mask, lo, hi)
            keep = np.isin(labels, self._kept)
            out[keep] = labels[keep]
        if self.cleft is not None:
            out[_read(self.cleft, lo, hi) >= self.threshold] = self.cleft_label
        return out

    @property
    def voxels_read(self) -> int:
        return sum(int(getattr(v, "voxels_read", 0)) for v in (self.mask, self.cleft) if v is not None)

    def clear_cache(self) -> None:
        for v in (self.mask, self.cleft):
            clear = getattr(v, "clear_cache", None)
            if callable(clear):
                clear()

    def __repr__(self) -> str:
        return (
            f"VirtualMask(shape={self.shape}, labels {self.mask!r} (mito {self.mito}, vesicle {self.vesicle}), "
            f"cleft {self.cleft!r} >= {self.threshold:g} -> {self.cleft_label})"
        )


# --------------------------------------------------------------------------------------
# the connectome
# --------------------------------------------------------------------------------------
@dataclass
class Connectome:
    """An opened connectome: lazy layers, the usable synapse rows and the rejected ones."""

    name: str
    source: Path
    raw: Volume
    seg: Any | None  # MappedSegmentation with agglomerates, else the seg Volume
    cleft: Volume | None
    mask: Any | None  # VirtualMask, or None without label and cleft layers
    cleft_threshold: float
    label_ids: L.LabelIds
    voxel_size_nm: tuple[float, float, float]  # z, y, x
    table: pd.DataFrame
    agglomerates: AgglomerateMapping | None
    viewer: dict | None
    chunk_shape: tuple[int, int, int]
    rejected: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(REJECTED_COLUMNS)))
    sources: dict[str, Path] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.raw.shape)  # type: ignore[return-value]

    def as_bbox(self, table: pd.DataFrame | None = None) -> BboxData:
        """The connectome as one bbox named after it (``table``: a subset of rows, e.g. a sample)."""
        rows = self.table if table is None else table
        missing = [c for c in (L.NAME_COLUMN, *L.CENTER_COLUMNS) if c not in rows.columns]
        if missing:
            raise DataError(f"connectome {self.name}: the table given to as_bbox lacks column(s) {missing}")
        return BboxData(
            name=self.name,
            raw=self.raw,
            seg=self.seg,
            mask=self.mask,
            table=rows,
            label_ids=self.label_ids,
            sources={**self.sources, "description": self.source},
            voxel_size_nm=self.voxel_size_nm,
            dataset=self.name,
        )

    def __repr__(self) -> str:
        return (
            f"Connectome({self.name!r}: shape {self.shape} (z, y, x), voxel {self.voxel_size_nm} nm, "
            f"{len(self.table)} synapses, {len(self.rejected)} rejected)"
        )


def _fmt_shape_xyz(shape: Sequence[int]) -> str:
    return f"(x={shape[2]}, y={shape[1]}, z={shape[0]})"


def _open_layer(desc: ConnectomeDescription, role: str, spec: LayerSpec) -> Volume:
    path = desc.resolve(spec.path)
    if not path.exists():
        raise DataError(f"{desc.where}: layer {role}: {path} does not exist; fix layers.{role}.path")
    try:
        return open_volume(path, key=spec.key, fmt=spec.format, kind="raw" if role == "raw" else "label", mag=spec.mag)
    except DataError as exc:
        raise DataError(f"{desc.where}: layer {role}: {exc}; fix layers.{role}") from None


def _layer_voxel(desc: ConnectomeDescription, role: str, spec: LayerSpec, vol: Volume) -> tuple[float, float, float] | None:
    hint = vol.voxel_size_hint_nm
    stated = spec.voxel_size_nm or desc.spec.voxel_size_nm
    if hint is not None:
        if stated is not None and not np.allclose(hint, stated, rtol=1e-6):
            logger.warning(
                "%s: layer %s states %s nm (z, y, x) in its own metadata but the description says %s; the layer's own value is used",
                desc.where, role, list(hint), stated,
            )
        return tuple(float(v) for v in hint)  # type: ignore[return-value]
    return tuple(float(v) for v in stated) if stated is not None else None  # type: ignore[return-value]


def _matching_mag(vol: Volume, target: Sequence[float]) -> str | None:
    """The mag / scale of a multiscale layer whose voxel size is ``target`` (z, y, x)."""
    try:
        if vol.fmt == "webknossos":
            wk = import_webknossos()
            ds = wk.Dataset.open(vol.path)
            base = np.asarray(ds.voxel_size_with_unit.to_nanometer().to_list(), dtype=np.float64)
            for mag in sorted(ds.get_layer(vol.key).mags):
                if np.allclose((base * np.asarray(mag.to_list()))[::-1], target, rtol=1e-6):
                    return str(mag.to_layer_name())
        if vol.fmt == "precomputed":
            import json

            folder = vol.path / vol.key if vol.key else vol.path
            info = json.loads((folder / "info").read_text(encoding="utf-8"))
            for scale in info.get("scales", []):
                if np.allclose([float(v) for v in scale["resolution"]][::-1], target, rtol=1e-6):
                    return str(scale["key"])
    except Exception:  # noqa: BLE001 - only a suggestion for an error message
        return None
    return None


def _check_threshold(desc: ConnectomeDescription, vol: Volume, threshold: float) -> None:
    dt = vol.dtype
    if dt == np.bool_:
        lo, hi = 0.0, 1.0
    elif np.issubdtype(dt, np.integer):
        lo, hi = float(np.iinfo(dt).min), float(np.iinfo(dt).max)
    elif np.issubdtype(dt, np.floating):
        return
    else:
        raise DataError(f"{desc.where}: layer cleft has dtype {dt}; a cleft layer holds numbers (a prediction or a 0/1 label)")
    if threshold <= lo or threshold > hi:
        what = "every voxel would be cleft" if threshold <= lo else "no voxel can reach it"
        raise DataError(
            f"{desc.where}: layer cleft threshold {threshold:g} is outside the range of its dtype {dt} "
            f"({lo:g} < threshold <= {hi:g}; {what}); fix layers.cleft.threshold"
        )


def _reject_outside(table: pd.DataFrame, shape_zyx: Sequence[int]) -> list[tuple[int, str]]:
    pos = table[list(L.CENTER_COLUMNS)].to_numpy(dtype=np.float64)  # x, y, z
    finite = np.isfinite(pos).all(axis=1)
    idx = np.floor(np.where(np.isfinite(pos), pos, 0) + 0.5)
    limit = np.asarray(shape_zyx[::-1], dtype=np.float64)
    outside = finite & ((idx < 0) | (idx >= limit)).any(axis=1)
    extent = f"(x < {shape_zyx[2]}, y < {shape_zyx[1]}, z < {shape_zyx[0]})"
    return [(int(i), f"position {_fmt_xyz(pos[i])} lies outside the raw layer {extent}") for i in np.flatnonzero(outside)]


def _apply_mapping(table: pd.DataFrame, mapping: AgglomerateMapping, partner_ids: str) -> list[tuple[int, str]]:
    """Map pre / post segment ids to agglomerates in place, or check agglomerate ids; reasons of bad rows."""
    reasons: list[tuple[int, str]] = []
    for col, word in ((PRE_COLUMN, "pre"), (POST_COLUMN, "post")):
        ids = table[col]
        known = ids.notna().to_numpy()
        if not known.any():
            continue
        values = ids.to_numpy(dtype=np.int64, na_value=0)
        if partner_ids == "segments":
            bad = known & (values >= mapping.size)
            for i in np.flatnonzero(bad):
                why = f"{word} segment id {values[i]} is past the end of the agglomerate mapping {mapping.path} ({mapping.size} entries)"
                reasons.append((int(i), why))
            ok = known & ~bad
            mapped = np.zeros(len(values), dtype=np.int64)
            if ok.any():
                uniq, inverse = np.unique(values[ok], return_inverse=True)
                mapped[ok] = mapping(uniq).astype(np.int64)[inverse]
            table[col] = pd.arrays.IntegerArray(mapped, ~ok | (mapped <= 0))
        else:
            uniq, inverse = np.unique(values[known], return_inverse=True)
            absent = np.zeros(len(values), dtype=bool)
            absent[known] = ~mapping.knows_agglomerate(uniq)[inverse]
            for i in np.flatnonzero(absent):
                reasons.append((int(i), f"{word} agglomerate id {values[i]} is not in the mapping {mapping.path}"))
    return reasons


def _open_layers(desc: ConnectomeDescription) -> tuple[dict[str, Volume], tuple[float, float, float]]:
    """Every layer opened lazily and checked against raw (voxel size, extent, dtype)."""
    layers = desc.spec.layers
    vols: dict[str, Volume] = {"raw": _open_layer(desc, "raw", layers.raw)}
    for role in ("seg", "cleft", "mask"):
        lspec = getattr(layers, role)
        if lspec is not None:
            vols[role] = _open_layer(desc, role, lspec)
    for vol in vols.values():
        vol.cache_chunks(CHUNK_CACHE_BYTES)
    raw_voxel = _layer_voxel(desc, "raw", layers.raw, vols["raw"])
    if raw_voxel is None:
        raise DataError(
            f"{desc.where}: the raw layer's voxel size is unknown (its file does not state it); give voxel_size_nm (z, y, x)"
        )
    raw_shape = tuple(int(s) for s in vols["raw"].shape)
    for role, vol in vols.items():
        if role == "raw":
            continue
        voxel = _layer_voxel(desc, role, getattr(layers, role), vol)
        if voxel is not None and not np.allclose(voxel, raw_voxel, rtol=1e-6):
            mag = _matching_mag(vol, raw_voxel)
            todo = (
                f"set layers.{role}.mag: {mag!r} (that mag has raw's voxel size)" if mag
                else f"use the mag / scale of {role} with raw's voxel size, or fix layers.{role}.voxel_size_nm if its file states it wrongly"
            )
            raise DataError(
                f"{desc.where}: layer {role} has voxel size {list(voxel)} nm (z, y, x) but raw has {list(raw_voxel)}; "
                f"every layer must have raw's voxel size: {todo}"
            )
        shape = tuple(int(s) for s in vol.shape)
        if shape != raw_shape:
            raise DataError(
                f"{desc.where}: layer {role} has shape {_fmt_shape_xyz(shape)} but raw has {_fmt_shape_xyz(raw_shape)}; "
                f"every layer must cover raw's voxels (check layers.{role}.path, key and mag)"
            )
    for role in ("seg", "mask"):
        vol = vols.get(role)
        if vol is not None and not (np.issubdtype(vol.dtype, np.integer) or vol.dtype == np.bool_):
            raise DataError(f"{desc.where}: layer {role} has dtype {vol.dtype}; label layers must hold integers")
    return vols, raw_voxel


def _virtual_labels(desc: ConnectomeDescription, vols: dict[str, Volume], mapping: AgglomerateMapping | None,
                    threshold: float) -> tuple[Any, VirtualMask | None, L.LabelIds]:
    """The mapped segmentation, the virtual mask (labels + thresholded cleft) and their label ids."""
    layers = desc.spec.layers
    seg: Any = vols.get("seg")
    if seg is not None and mapping is not None:
        seg = MappedSegmentation(seg, mapping)
    mito = layers.mask.labels.mito if layers.mask is not None else 0
    vesicle = layers.mask.labels.vesicle if layers.mask is not None else 0
    cleft_id = free_cleft_label(mito, vesicle) if "cleft" in vols else 0
    mask = None
    if "mask" in vols or "cleft" in vols:
        mask = VirtualMask(
            shape=tuple(int(s) for s in vols["raw"].shape), mask=vols.get("mask"), cleft=vols.get("cleft"),
            threshold=threshold, mito=mito, vesicle=vesicle, cleft_label=cleft_id or CLEFT_LABEL,
        )
    return seg, mask, L.LabelIds(mito=mito, vesicle=vesicle, cleft=cleft_id, cleft2=0)


def open_connectome(path: str | Path, *, with_table: bool = True) -> Connectome:
    """Open a connectome description: layers lazily (metadata only, each with a chunk cache of
    :data:`CHUNK_CACHE_BYTES`), the table whole (``with_table`` False: no table, for a worker
    whose batches carry their own rows)."""
    desc = load_connectome_description(path)
    spec = desc.spec
    layers = spec.layers
    vols, raw_voxel = _open_layers(desc)
    raw_shape = tuple(int(s) for s in vols["raw"].shape)
    threshold = float(layers.cleft.threshold) if layers.cleft is not None else math.nan
    if "cleft" in vols:
        _check_threshold(desc, vols["cleft"], threshold)
    mapping = None
    if spec.agglomerates is not None:
        try:
            mapping = AgglomerateMapping(desc.resolve(spec.agglomerates.path), spec.agglomerates.key)
        except DataError as exc:
            raise DataError(f"{desc.where}: agglomerates: {exc}; fix agglomerates.path / key") from None
    seg, mask, label_ids = _virtual_labels(desc, vols, mapping, threshold)

    table_path = desc.resolve(spec.synapses.path)
    if with_table:
        parts = read_connectome_table(table_path, spec.synapses)
        table = parts.table
        reasons = parts.reasons + _reject_outside(table, raw_shape)
        if mapping is not None:
            reasons += _apply_mapping(table, mapping, spec.synapses.partner_ids)
    else:
        table = pd.DataFrame({c: pd.Series(dtype=np.float64) for c in
                              (*L.CENTER_COLUMNS, *L.SIDE1_COLUMNS, *L.SIDE2_COLUMNS)})
        table.insert(0, L.NAME_COLUMN, pd.Series(dtype=object))
        table[PRE_COLUMN] = pd.Series(dtype="Int64")
        table[POST_COLUMN] = pd.Series(dtype="Int64")
        table[TABLE_ROW] = pd.Series(dtype=np.int64)
        reasons = []
    table, rejected = _split(table, reasons)
    if len(rejected):
        logger.warning(
            "connectome %s: %d of %d synapse rows cannot be used (see Connectome.rejected); first: row %s, %s",
            desc.name, len(rejected), len(table) + len(rejected), rejected[TABLE_ROW].iat[0], rejected["reason"].iat[0],
        )
    chunk = vols["raw"].chunk_shape or DEFAULT_CHUNK
    sources = {role: desc.resolve(getattr(layers, role).path) for role in vols}
    sources["table"] = table_path
    if spec.agglomerates is not None:
        sources["agglomerates"] = desc.resolve(spec.agglomerates.path)
    out = Connectome(
        name=desc.name, source=desc.file, raw=vols["raw"], seg=seg, cleft=vols.get("cleft"), mask=mask,
        cleft_threshold=threshold, label_ids=label_ids, voxel_size_nm=raw_voxel, table=table, agglomerates=mapping,
        viewer=dict(spec.viewer) if spec.viewer is not None else None,
        chunk_shape=tuple(int(c) for c in chunk),  # type: ignore[arg-type]
        rejected=rejected, sources=sources,
    )
    logger.info("%r", out)
    return out


def _split(table: pd.DataFrame, reasons: list[tuple[int, str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(usable rows, rejected rows with the first reason of each)."""
    if not reasons:
        return table.reset_index(drop=True), pd.DataFrame({c: pd.Series(dtype=object) for c in REJECTED_COLUMNS})
    first: dict[int, str] = {}
    for i, why in reasons:
        first.setdefault(i, why)
    bad = np.fromiter(sorted(first), dtype=np.int64)
    rejected = pd.DataFrame(
        {
            L.NAME_COLUMN: table[L.NAME_COLUMN].to_numpy()[bad],
            TABLE_ROW: table[TABLE_ROW].to_numpy()[bad],
            "reason": [first[int(i)] for i in bad],
        }
    )
    keep = np.ones(len(table), dtype=bool)
    keep[bad] = False
    return table[keep].reset_index(drop=True), rejected
