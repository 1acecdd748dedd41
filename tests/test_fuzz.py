"""Property-based tests: whatever a user types, only the package's own clear errors come out.

The parameter validation (``make_config``, ``read_yaml``) gets random mappings and random
YAML text; the synapse-table reader gets random CSV tables and random bytes. Each call either
succeeds or raises ConfigError / DataError with a short message; a library exception (a
pydantic, PyYAML, pandas or numpy traceback) fails the test.
"""
from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

# hypothesis keeps caches in ./.hypothesis unless told otherwise: not in the working tree
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "synapse_nb_hypothesis"))

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synapse_nb.core import config as C
from synapse_nb.core import labels as L
from synapse_nb.core.errors import MAX_PROBLEMS, DataError
from synapse_nb.data import tables

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # nothing written into the working tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

FIELDS = list(C.Config.model_fields)
names = st.one_of(st.sampled_from(FIELDS), st.text(max_size=30), st.sampled_from(["", " ", "alpah", "self", "__class__", "base", "grid"]))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["5000-char", "data/demo/raw", "bbox1", "../etc", "avg", "kmeans", "cleft"]).map(
        lambda s: "x" * 5000 if s == "5000-char" else s
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), inner, max_size=4)),
    max_leaves=12,
)


def assert_clear(exc: BaseException, kind: type, max_lines: int = 1) -> None:
    """``exc`` is ours, short, and says something."""
    assert type(exc) is kind, f"{type(exc).__name__} leaked: {exc!r}"[:500]
    text = str(exc)
    lines = text.splitlines()
    assert text.strip() and len(lines) <= max_lines, f"{len(lines)} lines: {text[:500]!r}"
    assert all(len(line) <= 1200 for line in lines), f"a line of {max(map(len, lines))} characters"
    assert "Traceback" not in text


#: a validation error: heading, the first MAX_PROBLEMS, "... and N more", the known keys
VALIDATION_LINES = 1 + MAX_PROBLEMS + 2


# --------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------
@FUZZ
@given(st.one_of(st.dictionaries(names, values, max_size=8), st.dictionaries(st.one_of(st.integers(), st.none(), st.booleans()), values, max_size=3)))
def test_make_config_gives_a_config_or_a_clear_error(mapping):
    try:
        cfg = C.make_config(mapping)
    except Exception as exc:  # noqa: BLE001 - what comes out is the property under test
        assert_clear(exc, C.ConfigError, VALIDATION_LINES)
        return
    assert isinstance(cfg, C.Config) and set(mapping) <= set(FIELDS)
    assert all(getattr(cfg, key) == value for key, value in mapping.items())  # strict: nothing is coerced


def yaml_texts() -> st.SearchStrategy[str]:
    dumped = st.dictionaries(st.one_of(names, st.integers()), values, max_size=8).map(
        lambda d: yaml.safe_dump(d, sort_keys=False, allow_unicode=True)
    )
    alphabet = st.sampled_from(list(":-[]{}&*!|>'\"#?,%@`\n\t ") + list("abcxyz019._") + ["alpha", "seed", "\u00e9", "\x00", "<<"])
    noise = st.lists(alphabet, max_size=60).map("".join)
    mutated = st.tuples(dumped, noise, st.integers(min_value=0, max_value=200)).map(lambda t: t[0][: t[2]] + t[1] + t[0][t[2]:])
    return st.one_of(dumped, noise, mutated)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(text=yaml_texts(), encoding=st.sampled_from(["utf-8", "utf-8", "utf-8", "latin-1", "utf-16", "bytes"]), junk=st.binary(max_size=40))
def test_read_yaml_gives_a_mapping_or_a_clear_error(fuzz_dir, text, encoding, junk):
    path = fuzz_dir / "params.yaml"
    if encoding == "bytes":
        data = junk
    else:
        try:
            data = text.encode(encoding)
        except UnicodeEncodeError:
            data = text.encode("utf-8")
    path.write_bytes(data)
    try:
        values = C.read_yaml(path)
    except Exception as exc:  # noqa: BLE001
        assert_clear(exc, C.ConfigError)
        assert str(path) in str(exc)
        return
    assert isinstance(values, dict) and all(isinstance(k, str) for k in values)
    try:
        C.make_config(values, source=str(path))
    except Exception as exc:  # noqa: BLE001
        assert_clear(exc, C.ConfigError, VALIDATION_LINES)


# --------------------------------------------------------------------------------------
# synapse tables
# --------------------------------------------------------------------------------------
cells = st.one_of(
    st.integers(min_value=-5, max_value=500).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=10**9, max_value=10**30).map(str),
    st.sampled_from(["", "nan", "NaN", "inf", "-inf", "n/a", "True", "1e400", " 3 ", "1,5", '"', "x\ny"]),
    st.text(max_size=8),
)
column_names = st.one_of(st.sampled_from([*L.REQUIRED_TABLE_COLUMNS, L.BBOX_COLUMN, "table_row"]), st.text(max_size=10))


@st.composite
def csv_tables(draw) -> str:
    required = list(L.REQUIRED_TABLE_COLUMNS)
    kept = [c for c in required if draw(st.integers(0, 9))]  # most required columns, sometimes one missing
    extra = draw(st.lists(column_names, max_size=3))
    cols = draw(st.permutations(kept + extra))
    n_rows = draw(st.integers(0, 6))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(cols)
    for i in range(n_rows):
        row = [draw(cells) if c != L.NAME_COLUMN or draw(st.booleans()) else f"syn{i}" for c in cols]
        if draw(st.integers(0, 9)) == 0:
            row = row[: draw(st.integers(0, len(row)))] + draw(st.lists(cells, max_size=2))  # ragged rows
        writer.writerow(row)
    return buf.getvalue()


@FUZZ
@given(text=csv_tables(), bbox=st.sampled_from([None, "bbox1"]), missing_sides=st.booleans(), integer=st.booleans())
def test_read_synapse_table_gives_a_table_or_a_clear_error(fuzz_dir, text, bbox, missing_sides, integer):
    path = fuzz_dir / "table.csv"
    path.write_text(text, encoding="utf-8")
    try:
        df = tables.read_synapse_table(path, bbox=bbox, allow_missing_sides=missing_sides, integer_coords=integer)
    except Exception as exc:  # noqa: BLE001
        assert_clear(exc, DataError)
        assert str(path) in str(exc)
        return
    assert len(df) > 0 and set(L.REQUIRED_TABLE_COLUMNS) <= set(df.columns)
    coords = df[[*L.CENTER_COLUMNS, *L.SIDE1_COLUMNS, *L.SIDE2_COLUMNS]].to_numpy(dtype=float)
    assert np.isfinite(coords[:, :3]).all() and (np.abs(coords[np.isfinite(coords)]) <= tables.MAX_COORD).all()
    assert not df[L.NAME_COLUMN].duplicated().any()
    if bbox:
        assert (df[L.BBOX_COLUMN] == bbox).all()


@FUZZ
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".csv", ".xlsx", ".xls"]), zip_head=st.booleans())
def test_read_synapse_table_on_random_bytes(fuzz_dir, data, suffix, zip_head):
    path = fuzz_dir / f"random{suffix}"
    path.write_bytes((b"PK\x03\x04" if zip_head else b"") + data)
    try:
        df = tables.read_synapse_table(path)
    except Exception as exc:  # noqa: BLE001
        assert_clear(exc, DataError)
        assert str(path) in str(exc)
        return
    assert isinstance(df, pd.DataFrame) and len(df) > 0
