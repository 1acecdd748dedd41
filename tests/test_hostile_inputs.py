"""Hostile and careless inputs: parameter files, synapse tables and the seed layout.

Each case gets the package's own error (ConfigError / DataError) with one line that names the
file (and key or row) and says what to do, never a library traceback, and quickly.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from synapse_nb.core import config as C
from synapse_nb.core import labels as L
from synapse_nb.core.errors import DataError
from synapse_nb.data import seed_layout, tables

from .conftest import PROJECT_ROOT


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, f"not one line: {text!r}"
    assert len(text) < 1000, f"message of {len(text)} characters"
    return text


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


# --------------------------------------------------------------------------------------
# parameter files
# --------------------------------------------------------------------------------------
def test_non_utf8_parameter_file_is_named(tmp_path):
    bad = write(tmp_path / "latin1.yaml", "alpha: 0.5\nraw_dir: caf\xe9\n".encode("latin-1"))
    with pytest.raises(C.ConfigError) as exc:
        C.read_yaml(bad)
    assert one_line(exc) == f"{bad} is not UTF-8 text (byte 23 is 0xe9): save it as UTF-8"
    utf16 = write(tmp_path / "utf16.yaml", "alpha: 0.5\n".encode("utf-16"))
    with pytest.raises(C.ConfigError, match=r"utf16.yaml is not UTF-8 text .*save it as UTF-8"):
        C.load_config(utf16)


def test_utf8_with_byte_order_mark_is_read(tmp_path):
    path = write(tmp_path / "bom.yaml", b"\xef\xbb\xbfalpha: 0.5\n")
    assert C.load_config(path).alpha == 0.5


def test_parameter_file_size_is_capped(tmp_path):
    big = tmp_path / "big.yaml"
    line = b"unknown_key_with_a_long_name_%07d: 1\n"
    big.write_bytes(b"".join(line % i for i in range(C.MAX_FILE_BYTES // 30)))  # > 1 MB of unknown keys
    assert big.stat().st_size > C.MAX_FILE_BYTES
    t0 = time.perf_counter()
    with pytest.raises(C.ConfigError) as exc:
        C.load_config(big)
    assert time.perf_counter() - t0 < 2
    assert one_line(exc).startswith(f"{big} is larger than 1,000,000 bytes")
    assert "check that it is the right file" in str(exc.value)


def test_many_unknown_keys_give_a_short_message(tmp_path):
    path = write(tmp_path / "many.yaml", "".join(f"unknown_{i}: {i}\n" for i in range(150)) + "alpha: 3\n")
    with pytest.raises(C.ConfigError) as exc:
        C.load_config(path)
    lines = str(exc.value).splitlines()
    assert lines[0] == f"invalid parameters in {path}:"
    assert lines[1].startswith("  parameter 'alpha': Input should be less than or equal to 1")  # bad values first
    assert lines[2:6] == [f"  unknown parameter 'unknown_{i}'" for i in range(4)]
    assert lines[6] == "  ... and 146 more problem(s)"
    assert lines[7].startswith("  known parameters: raw_dir, seg_dir") and len(lines) == 8
    assert sum(line.count("known parameters") for line in lines) == 1


def test_too_many_top_level_keys_are_refused(tmp_path):
    path = write(tmp_path / "wide.yaml", "".join(f"k{i}: {i}\n" for i in range(C.MAX_KEYS + 1)))
    with pytest.raises(C.ConfigError) as exc:
        C.read_yaml(path)
    assert one_line(exc) .startswith(f"{path}: it has 201 top-level keys; a parameter file has one per parameter")


def test_too_many_values_are_refused(tmp_path):
    path = write(tmp_path / "long_list.yaml", "bboxes: [" + ", ".join(f"b{i}" for i in range(C.MAX_VALUES)) + "]\n")
    with pytest.raises(C.ConfigError) as exc:
        C.read_yaml(path)
    assert one_line(exc) == (
        f"{path}: it holds more than 10,000 values; a parameter file holds a few dozen: check that it is a parameter file"
    )


def test_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    bomb = write(tmp_path / "laughs.yaml", "\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(C.ConfigError) as exc:
        C.load_config(bomb)
    assert time.perf_counter() - t0 < 1
    assert one_line(exc) == (
        f"{bomb}: 'b[0]' repeats the value anchored on line 1 (a YAML alias *name): anchors and aliases are not "
        "allowed in parameter files, write the values out"
    )
    cycle = write(tmp_path / "cycle.yaml", "bboxes: &x [*x]\n")
    with pytest.raises(C.ConfigError, match="anchors and aliases are not allowed"):
        C.read_yaml(cycle)


def test_long_text_values_are_refused_naming_the_key(tmp_path):
    path = write(tmp_path / "long.yaml", "alpha: 0.5\nraw_dir: " + "x" * 50_000 + "\n")
    with pytest.raises(C.ConfigError) as exc:
        C.load_config(path)
    assert one_line(exc) == (
        f"{path}: 'raw_dir' (line 2) holds a text of 50,000 characters, more than 4,096: "
        "paths and names are far shorter, check the value"
    )
    nested = write(tmp_path / "nested.yaml", "grid:\n  weights_path: [a.pt, " + "y" * 5000 + "]\n")
    with pytest.raises(C.ConfigError, match=r"'grid.weights_path\[1\]' \(line 2\) holds a text of 5,000 characters"):
        C.read_yaml(nested)
    # the same bound when the values come from elsewhere (papermill, the panel, a Python dict)
    with pytest.raises(C.ConfigError) as exc:
        C.make_config({"weights_path": "w" * 5000})
    assert str(exc.value).splitlines()[1] == (
        "  parameter 'weights_path' holds a text of 5,000 characters, more than 4,096: paths and names are far shorter, check the value"
    )
    with pytest.raises(C.ConfigError, match=r"parameter 'label_table' holds a text of 300,000"):
        C.make_config({"label_table": {"b" * 300_000: {"mito": 1, "vesicle": 2, "cleft": 3, "cleft2": 4}}})
    assert C.make_config({"weights_path": "w" * 4096}).weights_path == "w" * 4096


@pytest.mark.parametrize("text", ["", "\n\n   \n", "# only a comment\n# and another\n", "---\n"])
def test_empty_parameter_file_is_refused(tmp_path, text):
    path = write(tmp_path / "empty.yaml", text)
    with pytest.raises(C.ConfigError) as exc:
        C.load_config(path)
    assert one_line(exc) == f"{path} is empty: write one 'parameter: value' per line (or '{{}}' to run on the defaults)"


def test_explicit_empty_mapping_runs_on_the_defaults(tmp_path):
    assert C.load_config(write(tmp_path / "defaults.yaml", "{}\n")) == C.Config()


@pytest.mark.parametrize(
    "text, message",
    [
        ("alpha: 0.5\nseed: 3\nalpha: 0.7\n", "key 'alpha' is given twice (lines 1 and 3): keep one of them"),
        ("{seed: 1, seed: 2}\n", "key 'seed' is given twice (both on line 1): keep one of them"),
        ("label_table:\n  bbox9: {mito: 1, vesicle: 2, cleft: 3, cleft2: 4}\n  bbox9: {mito: 1, vesicle: 2, cleft: 3, cleft2: 5}\n",
         "key 'bbox9' is given twice (lines 2 and 3): keep one of them"),
        ("base: {}\ngrid:\n  alpha: [0.5]\n  alpha: [1.0]\n", "key 'alpha' is given twice (lines 3 and 4): keep one of them"),
    ],
)
def test_duplicate_keys_are_refused_with_both_lines(tmp_path, text, message):
    path = write(tmp_path / "dup.yaml", text)
    with pytest.raises(C.ConfigError) as exc:
        C.read_yaml(path)
    assert one_line(exc) == f"{path}: {message}"


def test_seed_is_bounded_to_what_numpy_and_torch_accept():
    assert C.make_config({"seed": 2**32 - 1}).seed == 2**32 - 1
    np.random.default_rng(C.make_config({"seed": 2**32 - 1}).seed)
    np.random.seed(C.make_config({"seed": 2**32 - 1}).seed)  # the legacy seeder is the narrow one
    for bad in (2**32, 10**30, -1):
        with pytest.raises(C.ConfigError, match=r"parameter 'seed': Input should be (less|greater) than or equal to"):
            C.make_config({"seed": bad})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"alpha": float("nan")}, "parameter 'alpha': Input should be a finite number (got nan)"),
        ({"perplexity": float("inf")}, "parameter 'perplexity': Input should be a finite number (got inf)"),
        ({"voxel_size_nm": [float("nan"), 8.0, 8.0]}, "parameter 'voxel_size_nm.0': Input should be a finite number (got nan)"),
    ],
)
def test_non_finite_numbers_are_refused(values, message):
    with pytest.raises(C.ConfigError) as exc:
        C.make_config(values)
    assert str(exc.value).splitlines()[1] == f"  {message}"


def test_keys_that_are_not_names_are_refused(tmp_path):
    with pytest.raises(C.ConfigError) as exc:
        C.make_config({1: 2})
    assert one_line(exc) == "invalid parameters in parameters: 1 (int) is not a parameter name; names are text such as 'alpha'"
    with pytest.raises(C.ConfigError, match=r"parameters must hold a mapping of parameter: value, not list"):
        C.make_config([("alpha", 0.5)])  # type: ignore[arg-type]
    path = write(tmp_path / "num.yaml", "alpha: 0.5\n12: x\n")
    with pytest.raises(C.ConfigError) as exc:
        C.load_config(path)
    assert one_line(exc) == f"{path}: top-level key 12 is not a parameter name; names are text such as 'alpha'"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"alpha: [0.5\n", r"is not valid YAML: while parsing a flow sequence did not find expected ',' or '\]' \(line 2, column 1\)$"),
        (b"alpha: 0.5\n\x00\n", r"is not valid YAML: unacceptable character #x0000 on line 2 \(control characters are not allowed\)$"),
        (b"a:\n  b: 1\n c: 2\n", r"is not valid YAML: .*\(line 3, column 2\)$"),
        (b"bboxes: " + b"[" * 40 + b"]" * 40 + b"\n", r"values nest more than 16 levels deep \(at 'bboxes\[0\]"),
        (b"[" * 5000 + b"]" * 5000, r"(nest|not valid YAML)"),
        (b"? [a, b]\n: 1\n", r"is not valid YAML: .*unhashable"),
    ],
)
def test_malformed_yaml_is_one_line(tmp_path, data, message):
    path = write(tmp_path / "bad.yaml", data)
    with pytest.raises(C.ConfigError, match=message) as exc:
        C.read_yaml(path)
    assert one_line(exc).startswith(str(path))


def test_cli_run_and_sweep_report_a_bad_file_in_one_line(tmp_path, monkeypatch, caplog):
    from synapse_nb.pipeline import cli

    monkeypatch.chdir(PROJECT_ROOT)
    bad = write(tmp_path / "bad.yaml", b"alpha: 0.5\nraw_dir: \xff\xfe\n")
    for command in ("run", "sweep"):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="synapse_nb"):
            assert cli.main([command, str(bad), "--reports-dir", str(tmp_path / "reports")]) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [f"{bad} is not UTF-8 text (byte 20 is 0xff): save it as UTF-8"]
    assert not (tmp_path / "reports").exists()


def test_shipped_parameter_files_pass_the_stricter_reader():
    for path in sorted((PROJECT_ROOT / "parameters").glob("*.yaml")):
        assert C.read_yaml(path) == yaml.safe_load(path.read_text(encoding="utf-8")), path


# --------------------------------------------------------------------------------------
# synapse tables
# --------------------------------------------------------------------------------------
def table_text(n: int = 2) -> str:
    cols = list(L.REQUIRED_TABLE_COLUMNS)
    rows = [",".join([f"syn{i}", "5", "6", "4", "4", "6", "4", "6", "6", "4"]) for i in range(n)]
    return "\n".join([",".join(cols), *rows]) + "\n"


def test_empty_synapse_table_says_so(tmp_path):
    path = write(tmp_path / "bbox1.csv", table_text(0))
    with pytest.raises(DataError) as exc:
        tables.read_synapse_table(path, bbox="bbox1")
    assert one_line(exc) == (
        f"synapse table {path} (bbox bbox1) has no synapse rows (only the header): add one row per synapse, "
        "or drop bbox1 from 'bboxes'"
    )
    pd.DataFrame(columns=list(L.REQUIRED_TABLE_COLUMNS)).to_excel(tmp_path / "bbox2.xlsx", index=False)
    with pytest.raises(DataError, match=r"bbox2.xlsx \(bbox bbox2\) has no synapse rows"):
        tables.read_synapse_table(tmp_path / "bbox2.xlsx", bbox="bbox2")


@pytest.mark.parametrize("name", ["bbox1.csv", "bbox1.xlsx"])
def test_zero_byte_table_says_so(tmp_path, name):
    path = write(tmp_path / name, b"")
    with pytest.raises(DataError) as exc:
        tables.read_synapse_table(path, bbox="bbox1")
    assert one_line(exc) == (
        f"synapse table {path} (bbox bbox1) is an empty file (0 bytes): write a header row and one row per synapse into it"
    )


def test_blank_csv_says_it_has_no_header(tmp_path):
    path = write(tmp_path / "t.csv", "\n\n\n")
    with pytest.raises(DataError) as exc:
        tables.read_synapse_table(path)
    assert one_line(exc) == f"synapse table {path} is empty (no header row): write a header row and one row per synapse into it"


def test_csv_saved_as_xlsx_says_what_it_is(tmp_path):
    path = write(tmp_path / "bbox1.xlsx", table_text())
    with pytest.raises(DataError) as exc:
        tables.read_synapse_table(path, bbox="bbox1")
    assert one_line(exc) == (
        f"synapse table {path} (bbox bbox1) is not an Excel workbook (it holds text, perhaps CSV): "
        "rename it to bbox1.csv if it is CSV, or save it from Excel as .xlsx"
    )
    broken = write(tmp_path / "broken.xlsx", b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"cannot read synapse table .*broken.xlsx: "):
        tables.read_synapse_table(broken)


def test_non_utf8_csv_says_so(tmp_path):
    path = write(tmp_path / "t.csv", table_text().replace("syn1", "caf\xe9").encode("latin-1"))
    with pytest.raises(DataError) as exc:
        tables.read_synapse_table(path)
    assert one_line(exc).startswith(f"synapse table {path} is not UTF-8 text (byte ")


@pytest.mark.parametrize(
    "value, message",
    [
        ("inf", r"column central_coord_1 is empty or not a number in row\(s\) \[3\]"),
        ("True", r"column central_coord_1 is empty or not a number in row\(s\) \[3\]"),
        ("1e300", r"column central_coord_1 holds a value beyond 1e\+09 voxels in row\(s\) \[3\]"),
        ("99999999999999999999999", r"column central_coord_1 holds a value beyond 1e\+09 voxels in row\(s\) \[3\]"),
    ],
)
def test_coordinates_must_be_finite_voxel_positions(tmp_path, value, message):
    text = table_text().replace("syn1,5,", f"syn1,{value},")
    path = write(tmp_path / "t.csv", text)
    for kwargs in ({}, {"allow_missing_sides": True, "integer_coords": False}):
        with pytest.raises(DataError, match=message) as exc:
            tables.read_synapse_table(path, **kwargs)
        one_line(exc)


def test_a_bbox_column_in_the_table_is_named(tmp_path):
    path = write(tmp_path / "t.csv", table_text().replace("side_2_coord_3\n", "side_2_coord_3,bbox\n").replace(",4\n", ",4,x\n"))
    with pytest.raises(DataError) as exc:
        tables.read_synapse_table(path, bbox="bbox1")
    assert one_line(exc) == (
        f"synapse table {path}: it has a column 'bbox', which the reader fills with the bbox name; rename or delete that column"
    )
    assert list(tables.read_synapse_table(path)[L.BBOX_COLUMN]) == ["x", "x"]  # no bbox given: kept as it is


def test_a_table_with_thousands_of_columns_is_named_briefly(tmp_path):
    cols = [f"c{i}" for i in range(5000)]
    path = write(tmp_path / "wide.csv", ",".join(cols) + "\n" + ",".join("1" for _ in cols) + "\n")
    with pytest.raises(DataError) as exc:
        tables.read_synapse_table(path)
    assert "and 4980 more" in one_line(exc)


# --------------------------------------------------------------------------------------
# the seed layout
# --------------------------------------------------------------------------------------
def test_raw_dir_without_bbox_folders_says_what_one_looks_like(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "notes.txt").write_text("x")
    with pytest.raises(DataError) as exc:
        seed_layout.discover_bboxes(raw)
    assert one_line(exc) == (
        f"raw_dir {raw} holds no bbox folder: put one folder of raw slices per bbox in it "
        f"({raw / 'bbox1' / 'slice_000.tif'}, {raw / 'bbox2' / 'slice_000.tif'} ...)"
    )


def test_raw_dir_pointing_at_one_bbox_folder_says_so(tmp_path):
    bbox = tmp_path / "raw" / "bbox1"
    bbox.mkdir(parents=True)
    for z in range(2):
        (bbox / f"slice_{z:03d}.tif").write_bytes(b"")
    with pytest.raises(DataError) as exc:
        seed_layout.discover_bboxes(bbox)
    assert one_line(exc).startswith(
        f"raw_dir {bbox} holds slices but no bbox folder: it looks like one bbox folder itself; set raw_dir to {bbox.parent}"
    )
    file = write(tmp_path / "raw.txt", "x")
    with pytest.raises(DataError, match=r"raw_dir .*raw.txt is a file, not a folder"):
        seed_layout.discover_bboxes(file)


def test_open_dataset_on_an_empty_raw_dir_names_it(tmp_path):
    from synapse_nb.data import datasets

    for kind in ("raw", "seg", "mask", "tables"):
        (tmp_path / kind).mkdir()
    cfg = C.make_config({"raw_dir": str(tmp_path / "raw"), "seg_dir": str(tmp_path / "seg"),
                         "mask_dir": str(tmp_path / "mask"), "table_dir": str(tmp_path / "tables")})
    with pytest.raises(DataError, match=rf"raw_dir {tmp_path / 'raw'} holds no bbox folder") as exc:
        datasets.open_dataset(cfg)
    one_line(exc)
