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
from ..core.errors import DataError


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
