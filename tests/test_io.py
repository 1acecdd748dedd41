from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from synapse_nb.core import errors as _core_errors
from synapse_nb.core import labels as L
from synapse_nb.data import seed_layout as _data_seed_layout
from synapse_nb.data import slices as _data_slices


def write_stack(folder: Path, vol: np.ndarray, names=None, compress=False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for z, plane in enumerate(vol):
        name = names[z] if names else f"slice_{z:03d}.tif"
        tifffile.imwrite(folder / name, plane, compression="zlib" if compress else None)


def table_frame(n: int = 2) -> pd.DataFrame:
    rows = []
    for i in range(n):
        rows.append({L.NAME_COLUMN: f"syn{i}", **dict(zip(L.CENTER_COLUMNS, (5, 6, 4))),
                     **dict(zip(L.SIDE1_COLUMNS, (4, 6, 4))), **dict(zip(L.SIDE2_COLUMNS, (6, 6, 4)))})
    return pd.DataFrame(rows)


def make_seed_layout(root: Path, name: str = "bbox3", shape=(8, 12, 10), n_mask=None, xlsx=True) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, shape, dtype=np.uint8)
    seg = rng.integers(0, 5, shape, dtype=np.uint16)
    mask = rng.integers(0, 9, shape, dtype=np.uint8)
    write_stack(root / "raw" / name, raw)
    write_stack(root / "seg" / name, seg)
    write_stack(root / "mask" / L.mask_folder_name(name), mask[: n_mask or shape[0]])
    (root / "tables").mkdir(exist_ok=True)
    if xlsx:
        table_frame().to_excel(root / "tables" / f"{name}.xlsx", index=False)
    return {"raw": raw, "seg": seg, "mask": mask}


def dirs(root: Path) -> dict[str, Path]:
    return {"raw_dir": root / "raw", "seg_dir": root / "seg", "mask_dir": root / "mask", "table_dir": root / "tables"}


def test_natural_sort_not_lexicographic(tmp_path: Path):
    vol = np.arange(12, dtype=np.uint8).reshape(12, 1, 1) * np.ones((1, 3, 4), np.uint8)
    names = [f"slice_{z}.tif" for z in range(12)]  # slice_10 sorts before slice_2 lexicographically
    write_stack(tmp_path / "s", vol, names)
    stack = _data_slices.SliceStack(tmp_path / "s")
    assert [p.name for p in stack.files][:3] == ["slice_0.tif", "slice_1.tif", "slice_2.tif"]
    assert stack[:, 0, 0].tolist() == list(range(12))


def test_window_reads_match_numpy(tmp_path: Path):
    vol = np.random.default_rng(1).integers(0, 255, (9, 13, 11), dtype=np.uint8)
    write_stack(tmp_path / "a", vol[:5])
    write_stack(tmp_path / "a", vol[5:], names=[f"slice_{z:03d}.tif" for z in range(5, 9)], compress=True)
    stack = _data_slices.SliceStack(tmp_path / "a")
    assert stack.shape == (9, 13, 11) and stack.dtype == np.uint8
    np.testing.assert_array_equal(stack[2:7, 3:10, 1:4], vol[2:7, 3:10, 1:4])
    np.testing.assert_array_equal(stack[4], vol[4])
    np.testing.assert_array_equal(np.asarray(stack), vol)


def test_rgb_raw_becomes_luma_gray_and_label_takes_first_channel(tmp_path: Path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    (tmp_path / "r").mkdir()
    (tmp_path / "l").mkdir()
    for z in range(2):
        Image.fromarray(rgb).save(tmp_path / "r" / f"s_{z}.png")
        tifffile.imwrite(tmp_path / "l" / f"s_{z}.tif", np.dstack([np.full((4, 5), 7, np.uint8), np.full((4, 5), 9, np.uint8)]), photometric="minisblack", planarconfig="contig")
    raw = _data_slices.SliceStack(tmp_path / "r", kind="raw")
    assert raw.shape == (2, 4, 5)
    assert raw[0, 0, 0] == round(0.299 * 100 + 0.587 * 200 + 0.114 * 50)
    lab = _data_slices.SliceStack(tmp_path / "l", kind="label")
    assert lab[1, 2, 3] == 7


def test_open_seed_bbox(tmp_path: Path):
    vols = make_seed_layout(tmp_path)
    b = _data_seed_layout.open_seed_bbox("bbox3", **dirs(tmp_path))
    assert b.shape == (8, 12, 10)
    assert b.label_ids == L.LabelIds(mito=6, vesicle=7, cleft=9, cleft2=8)
    assert b.sources["mask"].name == "bbox_3"
    np.testing.assert_array_equal(b.mask[1:3, 2:5, 0:2], vols["mask"][1:3, 2:5, 0:2])
    assert list(b.table[L.BBOX_COLUMN]) == ["bbox3", "bbox3"]
    assert list(b.table["table_row"]) == [2, 3]


def test_missing_bbox_folder_is_named(tmp_path: Path):
    make_seed_layout(tmp_path)
    with pytest.raises(_core_errors.DataError, match=r"bbox bbox4: raw folder not found: .*bbox4"):
        _data_seed_layout.open_seed_bbox("bbox4", **dirs(tmp_path))


def test_mismatched_slice_counts_are_an_error(tmp_path: Path):
    make_seed_layout(tmp_path, n_mask=7)
    with pytest.raises(_core_errors.DataError, match=r"bbox bbox3: raw, seg and mask volumes differ.*mask: 7 slices"):
        _data_seed_layout.open_seed_bbox("bbox3", **dirs(tmp_path))


def test_mismatched_slice_shape_names_the_file(tmp_path: Path):
    make_seed_layout(tmp_path)
    odd = tmp_path / "raw" / "bbox3" / "slice_005.tif"
    tifffile.imwrite(odd, np.zeros((12, 9), np.uint8))
    b = _data_seed_layout.open_seed_bbox("bbox3", **dirs(tmp_path))
    with pytest.raises(_core_errors.DataError, match=r"slice_005.tif has shape \(12, 9\)"):
        b.raw[4:7, :, :]


def test_missing_table_column_is_named(tmp_path: Path):
    make_seed_layout(tmp_path, xlsx=False)
    table_frame().drop(columns=["side_2_coord_3"]).to_csv(tmp_path / "tables" / "bbox3.csv", index=False)
    with pytest.raises(_core_errors.DataError, match=r"bbox3.csv lacks column\(s\) \['side_2_coord_3'\]"):
        _data_seed_layout.open_seed_bbox("bbox3", **dirs(tmp_path))


def test_non_numeric_coordinate_names_the_row(tmp_path: Path):
    make_seed_layout(tmp_path, xlsx=False)
    df = table_frame(3).astype({"central_coord_2": object})
    df.loc[2, "central_coord_2"] = "n/a"
    df.to_csv(tmp_path / "tables" / "bbox3.csv", index=False)
    with pytest.raises(_core_errors.DataError, match=r"central_coord_2 is empty or not a number in row\(s\) \[4\]"):
        _data_seed_layout.open_seed_bbox("bbox3", **dirs(tmp_path))


def test_missing_table_and_bad_names(tmp_path: Path):
    make_seed_layout(tmp_path, xlsx=False)
    with pytest.raises(_core_errors.DataError, match=r"no synapse table bbox3.xlsx or bbox3.csv"):
        _data_seed_layout.open_seed_bbox("bbox3", **dirs(tmp_path))
    with pytest.raises(_core_errors.DataError, match="invalid bbox name"):
        _data_seed_layout.open_seed_bbox("../bbox3", **dirs(tmp_path))
    with pytest.raises(_core_errors.DataError, match="no bboxes selected"):
        _data_seed_layout.open_seed_dataset([], **dirs(tmp_path))


def test_discover_bboxes_natural_order(tmp_path: Path):
    for name in ["bbox10", "bbox2", "bbox1"]:
        (tmp_path / name).mkdir()
    assert _data_seed_layout.discover_bboxes(tmp_path) == ["bbox1", "bbox2", "bbox10"]


@pytest.mark.parametrize("dtype, byteorder", [(np.uint8, "<"), (np.uint16, "<"), (np.uint16, ">"), (np.float32, "<")])
def test_uncompressed_tiff_slices_take_the_memory_mapped_fast_path(tmp_path: Path, monkeypatch, dtype, byteorder):
    vol = (np.random.default_rng(2).random((6, 14, 9)) * 250).astype(dtype)
    folder = tmp_path / "fast"
    folder.mkdir()
    for z, plane in enumerate(vol):
        tifffile.imwrite(folder / f"slice_{z:03d}.tif", plane, byteorder=byteorder)
    layout = _data_slices._tiff_layout(folder / "slice_000.tif")
    assert layout is not None and layout.shape == (14, 9) and layout.dtype.newbyteorder("=") == np.dtype(dtype)
    stack = _data_slices.SliceStack(folder)
    assert stack._layout == layout
    expected = np.stack([tifffile.imread(p) for p in stack.files])

    def no_tiff_parsing(*args, **kwargs):
        raise AssertionError("the fast path must not parse TIFF headers")

    # after opening, every slice is mapped from the first slice's layout: no TIFF parsing at all
    monkeypatch.setattr(_data_slices.tifffile, "memmap", no_tiff_parsing)
    monkeypatch.setattr(_data_slices.tifffile, "imread", no_tiff_parsing)
    monkeypatch.setattr(_data_slices.tifffile, "TiffFile", no_tiff_parsing)
    got = np.asarray(stack)
    assert got.dtype.newbyteorder("=") == np.dtype(dtype)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(stack[1:5, 2:11, 3:8], vol[1:5, 2:11, 3:8])


def test_compressed_or_odd_tiffs_fall_back_to_tifffile(tmp_path: Path):
    vol = np.random.default_rng(3).integers(0, 255, (3, 32, 32), dtype=np.uint8)
    write_stack(tmp_path / "z", vol, compress=True)
    assert _data_slices._tiff_layout(tmp_path / "z" / "slice_000.tif") is None
    stack = _data_slices.SliceStack(tmp_path / "z")
    assert stack._layout is None
    np.testing.assert_array_equal(np.asarray(stack), vol)
    (tmp_path / "m").mkdir()
    tifffile.imwrite(tmp_path / "m" / "slice_000.tif", vol[:2])  # two pages: not a 2-D slice
    assert _data_slices._tiff_layout(tmp_path / "m" / "slice_000.tif") is None
    (tmp_path / "p").mkdir()
    tifffile.imwrite(tmp_path / "p" / "slice_000.tif", vol[0], tile=(16, 16))  # uncompressed but tiled
    assert _data_slices._tiff_layout(tmp_path / "p" / "slice_000.tif") is None


def test_old_tifffile_contiguous_tuple_is_understood():
    class OldPage:  # tifffile < 2022 reported (offset, bytecount)
        is_contiguous = (1234, 99)
        dataoffsets = (1,)

    class NewPage:
        is_contiguous = True
        dataoffsets = (256,)

    class NotContiguous:
        is_contiguous = False
        dataoffsets = (8, 900)

    assert _data_slices._contiguous_offset(OldPage()) == 1234
    assert _data_slices._contiguous_offset(NewPage()) == 256
    assert _data_slices._contiguous_offset(NotContiguous()) is None


def test_a_layout_that_does_not_match_tifffile_is_not_trusted(tmp_path: Path, monkeypatch, caplog):
    vol = np.random.default_rng(4).integers(0, 255, (2, 10, 12), dtype=np.uint8)
    write_stack(tmp_path / "w", vol)
    good = _data_slices._tiff_layout(tmp_path / "w" / "slice_000.tif")
    monkeypatch.setattr(_data_slices, "_tiff_layout", lambda path: _data_slices._TiffLayout(
        good.offset - 1, good.shape, good.dtype, good.file_size))
    with caplog.at_level("WARNING", logger="synapse_nb.data.slices"):
        stack = _data_slices.SliceStack(tmp_path / "w")
    assert stack._layout is None and "does not match tifffile" in caplog.text
    np.testing.assert_array_equal(np.asarray(stack), vol)
