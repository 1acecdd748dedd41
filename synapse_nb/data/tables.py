"""The synapse table reader: one Excel or CSV table in, the canonical columns out.

Every way of opening data (the original tool's folders, dataset description YAML files) reads
its table through :func:`read_synapse_table`, so column checks, error messages that name the
spreadsheet row, and the renaming to the seed's column names are the same everywhere.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core import labels as L
from ..core.errors import DataError, shorten

#: First bytes of the workbook formats pandas reads: zip (xlsx, xlsm, ods) and OLE2 (xls).
_WORKBOOK_MAGIC = (b"PK\x03\x04", b"\xd0\xcf\x11\xe0")
#: Largest coordinate accepted, in voxels (a bbox is at most a few 10 000 voxels wide).
MAX_COORD = 1e9
#: Columns of a table named in a message.
_SHOWN_COLUMNS = 20


def _read_frame(path: Path, where: str) -> pd.DataFrame:
    """The table as pandas reads it; a one-line DataError naming the file for anything unreadable."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise DataError(f"cannot read synapse table {path}{where}: {exc.strerror or exc}") from None
    if not head:
        raise DataError(
            f"synapse table {path}{where} is an empty file (0 bytes): write a header row and one row per synapse into it"
        )
    csv = path.suffix.lower() == ".csv"
    if not csv and not head.startswith(_WORKBOOK_MAGIC):
        raise DataError(
            f"synapse table {path}{where} is not an Excel workbook (it holds text, perhaps CSV): "
            f"rename it to {path.stem}.csv if it is CSV, or save it from Excel as .xlsx"
        )
    try:
        return pd.read_csv(path) if csv else pd.read_excel(path)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"synapse table {path}{where} is empty (no header row): write a header row and one row per synapse into it"
        ) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"synapse table {path}{where} is not UTF-8 text (byte {exc.start}): save it as UTF-8 CSV") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's fault; say so on one line
        raise DataError(f"cannot read synapse table {path}{where}: {shorten(exc, 200)}") from None


def _numbers(column: pd.Series) -> pd.Series:
    """``column`` as float64; text, true/false and non-finite values become NaN (not a number)."""
    if pd.api.types.is_bool_dtype(column):
        return pd.Series(np.nan, index=column.index, dtype=np.float64)
    if column.dtype == object:
        column = column.map(lambda v: np.nan if isinstance(v, (bool, np.bool_)) else v)
    values = pd.to_numeric(column, errors="coerce").astype(np.float64)
    return values.where(np.isfinite(values))


def _check_coordinates(df: pd.DataFrame, path: Path, columns: L.TableColumns, allow_missing_sides: bool,
                       integer_coords: bool) -> None:
    """Coordinates in place as numbers (rounded to voxels when asked); a one-line error naming
    the column and rows for an empty, non-numeric or absurd value."""
    sides = (columns.side1, columns.side2)
    coords = (*columns.center, *columns.side1, *columns.side2)
    for col in coords:
        df[col] = _numbers(df[col])
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
    for col in coords:
        huge = df[col].abs() > MAX_COORD
        if huge.any():
            rows = df.loc[huge, "table_row"].tolist()[:5]
            raise DataError(
                f"synapse table {path}: column {col} holds a value beyond {MAX_COORD:.0e} voxels in row(s) {rows}; "
                "coordinates are voxel positions in the bbox"
            )
    if integer_coords and not allow_missing_sides:
        for col in coords:
            df[col] = df[col].round().astype(np.int64)
    else:
        for col in coords:
            df[col] = df[col].round() if integer_coords else df[col]


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
    otherwise they stay float (they may be mapped onto a resampled grid later). Any problem is
    a one-line :class:`DataError` naming the file (and the rows).
    """
    path = Path(path)
    where = f" (bbox {bbox})" if bbox else ""
    if not path.is_file():
        raise DataError(f"synapse table not found: {path}{where}")
    df = _read_frame(path, where)
    required = columns.required()
    missing = [c for c in required if c not in df.columns]
    if missing:
        have = list(df.columns)
        shown = shorten(repr(have[:_SHOWN_COLUMNS]), 400) + (f" and {len(have) - _SHOWN_COLUMNS} more" if len(have) > _SHOWN_COLUMNS else "")
        raise DataError(
            f"synapse table {path} lacks column(s) {missing}; it has {shown}. "
            f"Expected {list(required)} (x, y, z in bbox voxels)"
        )
    if df.empty:
        raise DataError(
            f"synapse table {path}{where} has no synapse rows (only the header): add one row per synapse"
            + (f", or drop {bbox} from 'bboxes'" if bbox else "")
        )
    if bbox is not None and L.BBOX_COLUMN in df.columns:
        raise DataError(
            f"synapse table {path}: it has a column '{L.BBOX_COLUMN}', which the reader fills with the bbox name; rename or delete that column"
        )
    df = df.copy()
    df["table_row"] = np.arange(len(df)) + 2  # header is spreadsheet row 1
    _check_coordinates(df, path, columns, allow_missing_sides, integer_coords)
    df[columns.name] = df[columns.name].astype(str)
    dup = df[columns.name].duplicated()
    if dup.any():
        names = shorten(repr(df.loc[dup, columns.name].tolist()[:5]), 300)
        raise DataError(f"synapse table {path}: duplicate synapse names {names}")
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
    """True when at least one synapse names both partners: two side points, or (connectome
    tables) a presynaptic and a postsynaptic id, from which cube building finds the points."""
    if table.empty:
        return False
    ids = ("pre_id", "post_id")
    if all(c in table for c in ids) and bool(table[list(ids)].notna().all(axis=1).any()):
        return True
    cols = [*L.SIDE1_COLUMNS, *L.SIDE2_COLUMNS]
    if any(c not in table for c in cols):
        return False
    return bool(table[cols].notna().all(axis=1).any())
