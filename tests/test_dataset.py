"""Dataset description YAML, segmentation-type refusal and a full cube build on anisotropic data."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr

from synapse_nb.core import config as C
from synapse_nb.core import labels as L
from synapse_nb.core.errors import DataError
from synapse_nb.cubes import build as _cubes_build
from synapse_nb.cubes import geometry as _cubes_geometry
from synapse_nb.cubes import store as _cubes_store
from synapse_nb.data import bbox as _data_bbox
from synapse_nb.data import datasets as _data_datasets
from synapse_nb.data import description as D
from synapse_nb.data import tables as _data_tables
from synapse_nb.pipeline import cache
from synapse_nb.pipeline import steps as _pipeline_steps

NATIVE = (40.0, 4.0, 4.0)  # z, y, x nm
SHAPE = (12, 200, 200)  # 480 x 800 x 800 nm -> 60 x 100 x 100 voxels of 8 nm
IDS = {"mito": 1, "vesicle": 3, "cleft": 2, "cleft2": 2}
CUSTOM = {"name": "syn", "center": ["cx", "cy", "cz"], "side1": ["ax", "ay", "az"], "side2": ["bx", "by", "bz"]}
# synapse A in the middle, B at the first section (padded in z), C with unknown partners
ROWS = [
    ("A", (99, 100, 6), (60, 100, 6), (140, 100, 6)),
    ("B", (99, 60, 0), (60, 60, 0), (140, 60, 0)),
    ("C", (99, 100, 6), (np.nan,) * 3, (np.nan,) * 3),
]


def ramp(z_nm, y_nm, x_nm):
    """Raw intensity: linear in physical position, so resampled values are known exactly."""
    return 0.01 * z_nm + 0.002 * y_nm + 0.001 * x_nm


def make_volumes() -> dict[str, np.ndarray]:
    z, y, x = (np.indices(SHAPE, dtype=np.float64) + 0.5) * np.array(NATIVE)[:, None, None, None]
    raw = ramp(z, y, x).astype(np.float32)
    seg = np.zeros(SHAPE, np.uint32)
    seg[x < 396] = 1  # presynaptic neurite (holds the vesicle cloud)
    seg[x > 404] = 2
    mask = np.zeros(SHAPE, np.uint8)
    slab = (x >= 396) & (x <= 404)
    disk_a = (z - 260) ** 2 + (y - 402) ** 2 <= 150**2
    disk_b = (z - 20) ** 2 + (y - 242) ** 2 <= 100**2
    mask[slab & (disk_a | disk_b)] = IDS["cleft"]
    mask[(z - 260) ** 2 + (y - 402) ** 2 + (x - 300) ** 2 <= 80**2] = IDS["vesicle"]
    mask[(z - 260) ** 2 + (y - 250) ** 2 + (x - 250) ** 2 <= 60**2] = IDS["mito"]
    return {"raw": raw, "seg": seg, "mask": mask}


def table_frame(custom: bool = True) -> pd.DataFrame:
    cols = CUSTOM if custom else {"name": L.NAME_COLUMN, "center": L.CENTER_COLUMNS, "side1": L.SIDE1_COLUMNS, "side2": L.SIDE2_COLUMNS}
    recs = []
    for name, c, s1, s2 in ROWS:
        rec = {cols["name"]: name}
        for key, p in (("center", c), ("side1", s1), ("side2", s2)):
            rec.update(dict(zip(cols[key], p)))
        rec["comment"] = f"synapse {name}"
        recs.append(rec)
    return pd.DataFrame(recs)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("aniso")
    vols = make_volumes()
    g = zarr.open_group(str(root / "data" / "vol.zarr"), mode="w")
    for name, arr in vols.items():
        g.create_array(name, shape=arr.shape, chunks=(4, 64, 64), dtype=arr.dtype)[...] = arr
    table_frame().to_csv(root / "data" / "synapses.csv", index=False)
    return root


def description(**changes) -> dict:
    bbox = {
        "raw": {"path": "../data/vol.zarr", "key": "raw"},
        "seg": {"path": "../data/vol.zarr", "key": "seg"},
        "mask": {"path": "../data/vol.zarr", "key": "mask", "format": "zarr"},
        "table": "../data/synapses.csv",
        "labels": dict(IDS),
    }
    bbox.update(changes.pop("bbox", {}))
    bbox = {k: v for k, v in bbox.items() if v is not None}
    out = {"name": "aniso", "voxel_size_nm": list(NATIVE), "columns": CUSTOM, "bboxes": {"block1": bbox}}
    out.update(changes)
    return out


def write_desc(root: Path, content: dict, name: str = "aniso.yaml") -> Path:
    folder = root / "desc"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def desc_path(data_dir) -> Path:
    return write_desc(data_dir, description())


# --------------------------------------------------------------------------------------
# loading and validation
# --------------------------------------------------------------------------------------
def test_valid_description_opens_lazily_with_relative_paths(desc_path, data_dir):
    loaded = D.load_dataset_description(desc_path)
    assert loaded.name == "aniso" and loaded.spec.voxel_size_nm == list(NATIVE)
    [b] = D.open_dataset_description(desc_path)
    assert b.name == "block1" and b.dataset == "aniso" and b.voxel_size_nm == NATIVE
    assert b.shape == SHAPE and b.seg.shape == SHAPE and b.mask.dtype == np.uint8
    assert b.sources["raw"].resolve() == (data_dir / "data" / "vol.zarr").resolve()
    assert b.label_ids == L.LabelIds(**IDS)
    assert b.raw.voxels_read == 0  # nothing but metadata read
    t = b.table
    assert t[L.NAME_COLUMN].tolist() == ["A", "B", "C"] and t["table_row"].tolist() == [2, 3, 4]
    assert t[list(L.CENTER_COLUMNS)].iloc[0].tolist() == [99.0, 100.0, 6.0]
    assert t[list(L.SIDE1_COLUMNS)].iloc[2].isna().all() and "comment" in t
    assert _data_tables.has_side_points(t)


def test_plain_path_string_and_excel_table(data_dir):
    arr = make_volumes()["raw"]
    zarr.create_array(str(data_dir / "data" / "raw_only.zarr"), shape=SHAPE, chunks=(4, 64, 64), dtype=arr.dtype, overwrite=True)[...] = arr
    table_frame(custom=False).to_excel(data_dir / "data" / "table.xlsx", index=False)
    content = description(bbox={"raw": "../data/raw_only.zarr", "seg": None, "mask": None, "labels": None, "table": "../data/table.xlsx"})
    del content["columns"]
    [b] = D.open_dataset_description(write_desc(data_dir, content, "plain.yaml"))
    assert b.seg is None and b.mask is None and b.label_ids == L.LabelIds(0, 0, 0, 0)
    assert b.table[L.NAME_COLUMN].tolist() == ["A", "B", "C"]
    assert D.supported_types([b]) == [0]


@pytest.mark.parametrize(
    "content, pattern",
    [
        (dict(description(), colour="red"), r"unknown key 'colour'"),
        (description(bbox={"raw": {"path": "../data/vol.zarr", "kee": "raw"}}), r"unknown key 'bboxes.block1.raw.kee'"),
        (description(bbox={"labels": {"mito": 1, "synapse": 2}}), r"unknown key 'bboxes.block1.labels.synapse'"),
        (description(voxel_size_nm=[40.0, 4.0]), r"key 'voxel_size_nm': give three positive voxel sizes"),
        (description(bbox={"labels": {"mito": -1}}), r"key 'bboxes.block1.labels.mito'"),
        (description(bbox={"mask": {"path": "x", "format": "nrrd"}}), r"unknown format 'nrrd'"),
        (description(columns={"center": ["x", "y"]}), r"key 'columns.center': give three column names"),
        ({"name": "x", "bboxes": {}}, r"missing key 'voxel_size_nm'"),
        (description(bboxes={"../up": {"raw": "a", "table": "t.csv"}}), r"invalid bbox name '../up'"),
    ],
)
def test_bad_descriptions_name_the_key_and_file(data_dir, content, pattern):
    path = write_desc(data_dir, content, "bad.yaml")
    with pytest.raises(DataError, match=r"invalid dataset description .*bad.yaml") as exc:
        D.load_dataset_description(path)
    assert re.search(pattern, str(exc.value)), str(exc.value)


def test_missing_files_are_named(data_dir, tmp_path):
    with pytest.raises(DataError, match=r"dataset description not found: .*nope.yaml"):
        D.open_dataset_description(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(DataError, match=r"list.yaml must hold a mapping"):
        D.load_dataset_description(tmp_path / "list.yaml")
    path = write_desc(data_dir, description(bbox={"seg": {"path": "../data/missing.zarr"}}), "missing.yaml")
    with pytest.raises(DataError, match=r"dataset 'aniso' \(.*missing.yaml\), bbox block1, seg: volume not found: .*missing.zarr"):
        D.open_dataset_description(path)
    path = write_desc(data_dir, description(bbox={"seg": {"path": "../data/vol.zarr", "key": "neurites"}}), "badkey.yaml")
    with pytest.raises(DataError, match=r"bbox block1, seg: zarr .*vol.zarr has no array 'neurites'; arrays present: 'mask', 'raw', 'seg'"):
        D.open_dataset_description(path)
    path = write_desc(data_dir, description(bbox={"table": "../data/none.csv"}), "notable.yaml")
    with pytest.raises(DataError, match=r"synapse table not found: .*none.csv \(bbox block1\)"):
        D.open_dataset_description(path)
    with pytest.raises(DataError, match=r"has no bbox \['block9'\]; it has \['block1'\]"):
        D.open_dataset_description(write_desc(data_dir, description(), "ok.yaml"), ["block9"])


def test_mismatched_shapes_and_labels_without_mask(data_dir):
    small = np.zeros((12, 200, 199), np.uint8)
    zarr.create_array(str(data_dir / "data" / "small.zarr"), shape=small.shape, chunks=(4, 64, 64), dtype=np.uint8, overwrite=True)[...] = small
    path = write_desc(data_dir, description(bbox={"mask": {"path": "../data/small.zarr"}}), "shapes.yaml")
    with pytest.raises(
        DataError, match=r"bbox block1: raw, seg and mask shapes differ \(raw \(12, 200, 200\), seg \(12, 200, 200\), mask \(12, 200, 199\)\)"
    ):
        D.open_dataset_description(path)
    path = write_desc(data_dir, description(bbox={"mask": None}), "nomask.yaml")
    with pytest.raises(DataError, match=r"bbox block1: labels \{'mito': 1, 'vesicle': 3, 'cleft': 2, 'cleft2': 2\} are set but the bbox has no mask"):
        D.open_dataset_description(path)
    path = write_desc(data_dir, description(bbox={"seg": {"path": "../data/vol.zarr", "key": "raw"}}), "floatseg.yaml")
    with pytest.raises(DataError, match=r"the seg volume .*vol.zarr has dtype float32; label volumes must hold integers"):
        D.open_dataset_description(path)


def test_voxel_size_differing_from_ome_metadata_is_warned(tmp_path, caplog):
    g = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=2)
    g.create_array("0", shape=(4, 8, 8), chunks=(2, 8, 8), dtype=np.uint8)[...] = 1
    axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    scale = [{"type": "scale", "scale": [40.0, 4.0, 4.0]}]
    g.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": scale}]}]
    table_frame(custom=False).to_csv(tmp_path / "t.csv", index=False)
    for voxel, warned in (([40.0, 4.0, 4.0], False), ([50.0, 4.0, 4.0], True)):
        desc = {"voxel_size_nm": voxel, "bboxes": {"b": {"raw": "img.ome.zarr", "table": "t.csv"}}}
        (tmp_path / "d.yaml").write_text(yaml.safe_dump(desc))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="synapse_nb"):
            [b] = D.open_dataset_description(tmp_path / "d.yaml")
        assert b.raw.voxel_size_hint_nm == (40.0, 4.0, 4.0)
        assert ("differs from [40.0, 4.0, 4.0] nm stated in the raw volume's own metadata" in caplog.text) == warned, caplog.text


def test_table_side_rules(tmp_path):
    df = table_frame(custom=False)
    df.loc[1, L.SIDE1_COLUMNS[1]] = np.nan  # one of three coordinates missing: an error
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"t.csv: column side_1_coord_2 is empty or not a number in row\(s\) \[3\] \(leave all three"):
        _data_tables.read_synapse_table(tmp_path / "t.csv", allow_missing_sides=True)
    table_frame(custom=False).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"t.csv: column side_1_coord_1 is empty or not a number in row\(s\) \[4\]$"):
        _data_tables.read_synapse_table(tmp_path / "t.csv")  # the seed layout keeps requiring sides
    df = table_frame(custom=False).astype({L.CENTER_COLUMNS[2]: object})
    df.loc[0, L.CENTER_COLUMNS[2]] = "top"
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"column central_coord_3 is empty or not a number in row\(s\) \[2\]"):
        _data_tables.read_synapse_table(tmp_path / "t.csv", allow_missing_sides=True)
    table_frame(custom=True).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(DataError, match=r"c.csv lacks column\(s\) \['Var1', 'central_coord_1'"):
        _data_tables.read_synapse_table(tmp_path / "c.csv")


# --------------------------------------------------------------------------------------
# which segmentation types a dataset can serve
# --------------------------------------------------------------------------------------
def test_refusal_message_and_supported_types(data_dir):
    path = write_desc(data_dir, description(bbox={"labels": {"mito": 1, "vesicle": 0, "cleft": 2, "cleft2": 2}}), "novesicle.yaml")
    bboxes = D.open_dataset_description(path)
    assert D.supported_types(bboxes) == [0, 3, 7, 8]
    with pytest.raises(DataError) as exc:
        D.require_segmentation_type(bboxes, 5)
    assert str(exc.value) == (
        "segmentation type 5 (pre + post + vesicle + cleft) needs a vesicle-cloud label; dataset 'aniso' has none "
        "(labels.vesicle: 0). Types this dataset supports: 0, 3, 7, 8"
    )
    with pytest.raises(DataError, match=r"type 10 \(cleft \+ pre\) needs a vesicle-cloud label"):
        D.require_segmentation_type(bboxes, 10)
    D.require_segmentation_type(bboxes, 7)  # supported: no error
    caps = D.capabilities_table(bboxes)
    assert caps["supported"].tolist() == [t in (0, 3, 7, 8) for t in range(12)]
    # no seg: the partner types go too, and the reason says why
    path = write_desc(data_dir, description(bbox={"seg": None}), "noseg.yaml")
    noseg = D.open_dataset_description(path)
    assert D.supported_types(noseg) == [0, 4, 6, 7, 8, 9]
    with pytest.raises(DataError, match=r"type 3 \(pre \+ post\) needs a neurite segmentation \(seg\); dataset 'aniso' has none \(no seg volume\)"):
        D.require_segmentation_type(noseg, 3)


def test_label_needs_table_is_complete():
    assert set(L.SEGTYPE_NEEDS) == set(L.SEGMENTATION_TYPES) == set(L.SEGMENTATION_TYPE_SHORT)
    full = L.DataCapabilities(L.LabelIds(1, 2, 3, 4))
    assert L.supported_types(full) == list(range(12))
    no_sides = L.DataCapabilities(L.LabelIds(1, 2, 3, 4), has_sides=False)
    assert L.supported_types(no_sides) == [0, 4, 6, 7, 8, 9]
    assert L.missing_for_type(11, L.DataCapabilities(L.LabelIds(0, 2, 3, 3))) == [("a mitochondria label", "labels.mito: 0")]
    no_mask = L.DataCapabilities(L.LabelIds(0, 0, 0, 0), has_mask=False)
    assert L.missing_for_type(6, no_mask) == [("a vesicle-cloud label", "no mask volume")]


def test_build_refuses_before_any_work(data_dir, tmp_path, monkeypatch):
    path = write_desc(data_dir, description(bbox={"labels": {"mito": 1, "vesicle": 0, "cleft": 2, "cleft2": 2}}), "novesicle.yaml")
    bboxes = D.open_dataset_description(path)
    cfg = C.make_config({"dataset": str(path), "segmentation_type": 1, "cube_size": 32, "cache_dir": str(tmp_path / "cache")})
    monkeypatch.setattr(_pipeline_steps, "build_cubes", lambda *a, **k: pytest.fail("cube building started"))
    with pytest.raises(DataError, match=r"segmentation type 1 \(pre\) needs a vesicle-cloud label"):
        _pipeline_steps.check_dataset(bboxes, cfg)
    with pytest.raises(DataError, match=r"segmentation type 1 \(pre\)"):
        _pipeline_steps.build(bboxes, cfg, run=None, progress=False)  # type: ignore[arg-type]
    assert not (tmp_path / "cache").exists()
    # the smart crop needs the presynaptic side too: refused, even for a type that is served
    cfg = C.make_config({"dataset": str(path), "segmentation_type": 7, "crop_mode": "presynapse", "cube_size": 32,
                         "cache_dir": str(tmp_path / "cache")})
    for build in (_pipeline_steps.check_dataset, lambda b, c: _pipeline_steps.build(b, c, run=None, progress=False)):
        with pytest.raises(DataError) as exc:
            build(bboxes, cfg)
        assert str(exc.value) == (
            "crop_mode 'presynapse' centres cubes on the presynaptic segment, which needs a vesicle-cloud label; "
            "dataset 'aniso' has none (labels.vesicle: 0); use crop_mode 'cleft' for this dataset"
        )
    D.require_crop_mode(bboxes, "presynapse", 0.0)  # weight 0 = the cleft centre: fine
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------------------
# the full cube build on anisotropic data
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def aniso_cubes(desc_path):
    cfg = C.make_config({"dataset": str(desc_path), "cube_size": 48, "segmentation_type": 10, "target_voxel_nm": 8.0})
    bboxes = _data_datasets.open_dataset(cfg)
    return _pipeline_steps.make_cubes(bboxes, cfg, progress=False), bboxes


def test_open_dataset_uses_the_description(desc_path, caplog):
    cfg = C.make_config({"dataset": str(desc_path), "voxel_size_nm": [1.0, 1.0, 1.0], "raw_dir": "/nowhere"})
    with caplog.at_level(logging.INFO, logger="synapse_nb"):
        [b] = _data_datasets.open_dataset(cfg)
    assert b.voxel_size_nm == NATIVE
    assert "its voxel size [40.0, 4.0, 4.0] nm and label ids are used" in caplog.text
    summary = _data_datasets.dataset_summary([b])
    assert summary.loc[0, "voxel (z, y, x) nm"] == "40, 4, 4" and summary.loc[0, "shape (z, y, x)"] == "12x200x200"
    assert summary.loc[0, "source"].startswith("zarr: ") and summary.loc[0, "source"].endswith("[raw]")


def test_anisotropic_cubes_are_isotropic_and_centred(aniso_cubes):
    cs, [b] = aniso_cubes
    S = 48  # 384 nm: holds the whole cleft disk (300 nm across) and the vesicle cloud
    assert cs.voxel_size_nm == (8.0, 8.0, 8.0) and len(cs) == 3 and cs.skipped.empty
    t = cs.table.set_index(L.NAME_COLUMN)
    assert t["resampled"].all()
    assert t.loc["A", ["native_voxel_z_nm", "native_voxel_y_nm", "native_voxel_x_nm"]].tolist() == list(NATIVE)
    assert t.loc["A", ["cube_voxel_z_nm", "cube_voxel_y_nm", "cube_voxel_x_nm"]].tolist() == [8.0, 8.0, 8.0]
    # A: native (z6, y100, x99) sits at (260, 402, 398) nm -> 8 nm index (32, 49.75, 49.25) -> (32, 50, 49)
    assert t.loc["A", ["cube_center_z", "cube_center_y", "cube_center_x"]].tolist() == [32, 50, 49]
    a = int(np.flatnonzero(cs.table[L.NAME_COLUMN] == "A")[0])
    # raw is a physical ramp: every cube voxel holds the ramp at its 8 nm voxel centre
    jz, jy, jx = np.indices((S, S, S)) + (np.array([32, 50, 49]) - S // 2)[:, None, None, None]
    expected = ramp((jz + 0.5) * 8, (jy + 0.5) * 8, (jx + 0.5) * 8)
    np.testing.assert_allclose(cs.raw[a], expected, atol=2e-4)
    # the cleft is a 8 nm thick sheet through the cube centre; pre is side 1 (holds the vesicles)
    bits = cs.bits[a]
    assert bits[S // 2, S // 2, S // 2] & L.BIT_CLEFT
    assert t.loc["A", "pre_side"] == 1 and not t.loc["A", "ambiguous"]
    native_um3 = 874 * 640.0 * 1e-9  # cleft voxels of disk A in the native volume x native voxel volume
    assert abs(t.loc["A", "cleft_volume_um3"] - native_um3) / native_um3 < 0.05
    cleft_um3 = np.pi * 150**2 * 8 * 1e-9  # the ideal disk of radius 150 nm, 8 nm thick
    assert abs(t.loc["A", "cleft_volume_um3"] - cleft_um3) / cleft_um3 < 0.1
    assert t.loc["A", "cleft_volume_um3"] == pytest.approx(t.loc["A", "cleft_volume_vox"] * 512.0 * 1e-9)  # target voxel^3
    assert abs(t.loc["A", "cleft_area_um2"] - np.pi * 0.150**2) / (np.pi * 0.150**2) < 0.1
    ves_um3 = 4 / 3 * np.pi * 0.080**3
    assert abs(t.loc["A", "vesicle_volume_um3"] - ves_um3) / ves_um3 < 0.15


def test_border_synapse_is_padded_and_stays_centred(aniso_cubes):
    cs, _ = aniso_cubes
    t = cs.table.set_index(L.NAME_COLUMN)
    # B: native z 0 -> 20 nm -> 8 nm index 2: 22 slices of padding before, cleft still at the centre
    assert t.loc["B", "cube_center_z"] == 2 and t.loc["B", "pad_z_before"] == 22 and t.loc["B", "pad_z_after"] == 0
    b = int(np.flatnonzero(cs.table[L.NAME_COLUMN] == "B")[0])
    assert cs.bits[b][24, 24, 24] & L.BIT_CLEFT
    assert not cs.bits[b][:22].any() and cs.bits[b][22:].any()


def test_unknown_partners_still_build(aniso_cubes):
    cs, _ = aniso_cubes
    t = cs.table.set_index(L.NAME_COLUMN)
    assert t.loc["C", "pre_side"] == 0 and t.loc["C", "pre_seg_id"] == 0 and t.loc["C", "post_seg_id"] == 0
    assert t.loc["C", "ambiguous"] and "no side points" in t.loc["C", "ambiguity_reason"]
    c = int(np.flatnonzero(cs.table[L.NAME_COLUMN] == "C")[0])
    assert not (cs.bits[c] & (L.BIT_PRE | L.BIT_POST)).any()
    assert cs.bits[c][24, 24, 24] & L.BIT_CLEFT  # types without sides (7) still render
    assert cs.empty_mask_rows(3).tolist() == [c]  # and pre + post is empty for it, so it is excluded


def test_no_resampling_keeps_native_voxels(desc_path):
    cfg = C.make_config({"dataset": str(desc_path), "cube_size": 16, "segmentation_type": 0, "target_voxel_nm": 0.0})
    cs = _pipeline_steps.make_cubes(_data_datasets.open_dataset(cfg), cfg, progress=False)
    assert cs.voxel_size_nm == NATIVE and not cs.table["resampled"].any()
    assert cs.table["cube_center_z"].tolist() == [6, 0, 6]


def test_table_xyz_maps_to_the_zyx_grid_per_axis_and_stays_on_it():
    """x, y, z table columns land on the z, y, x grid, each axis with its own voxel size (y != x
    here, so a swap shows), and a point in the last native voxel stays on the grid, which can
    end half a target voxel short of the native extent."""
    native = (40.0, 4.6, 5.0)  # z, y, x
    shape = (3, 4, 40)  # y: 4 x 4.6 nm -> 2 grid voxels of 8 nm; native y 3 maps to 1.51 -> rounds to 2
    seg = np.zeros(shape, np.uint32)
    seg[:, :, :20], seg[:, :, 20:] = 1, 2
    mask = np.zeros(shape, np.uint8)
    mask[:, :, 19:21] = 2
    recs = []
    for name, c, s1, s2 in (("edge", (20, 3, 1), (10, 3, 1), (30, 3, 1)), ("mid", (19, 1, 0), (5, 1, 0), (35, 1, 0))):
        rec = {L.NAME_COLUMN: name, "table_row": len(recs) + 2}
        for cols, p in ((L.CENTER_COLUMNS, c), (L.SIDE1_COLUMNS, s1), (L.SIDE2_COLUMNS, s2)):
            rec.update(dict(zip(cols, map(float, p))))
        recs.append(rec)
    b = _data_bbox.BboxData(name="tiny", raw=np.zeros(shape, np.uint8), seg=seg, mask=mask, table=pd.DataFrame(recs),
                     label_ids=L.LabelIds(mito=0, vesicle=0, cleft=2, cleft2=2), voxel_size_nm=native)
    cs = _cubes_build.build_cubes([b], _cubes_geometry.CubeGeometry(size=8), progress=False, target_voxel_nm=8.0)
    assert cs.skipped.empty, cs.skipped.to_dict("records")
    t = cs.table.set_index(L.NAME_COLUMN)
    # edge: z (1.5*40)/8-.5 = 7; y (3.5*4.6)/8-.5 = 1.51 -> held on the last of 2 rows (1); x (20.5*5)/8-.5 = 12.31 -> 12
    assert t.loc["edge", ["cube_center_z", "cube_center_y", "cube_center_x"]].tolist() == [7, 1, 12]
    # mid: z 2; y (1.5*4.6)/8-.5 = 0.36 -> 0; x (19.5*5)/8-.5 = 11.69 -> 12 (with y's 4.6 nm it would be 11)
    assert t.loc["mid", ["cube_center_z", "cube_center_y", "cube_center_x"]].tolist() == [2, 0, 12]


def test_zero_label_never_matches_background():
    raw = np.zeros((20, 20, 20), np.uint8)
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[:, :, :10], seg[:, :, 11:] = 1, 2
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[8:12, 8:12, 10] = 2
    ids = L.LabelIds(mito=0, vesicle=0, cleft=2, cleft2=0)
    cube = _cubes_build.build_synapse(raw, seg, mask, (10, 10, 10), (5, 10, 10), (15, 10, 10), ids, _cubes_geometry.CubeGeometry(size=8))
    for bit in (L.BIT_VESICLE, L.BIT_CLEFT2, L.BIT_MITO, L.BIT_MITO_ANY):
        assert not (cube.bits & bit).any()
    assert np.count_nonzero(cube.bits & L.BIT_CLEFT) == 16
    assert "no vesicle-cloud label in this dataset" in cube.info["ambiguity_reason"]
    # no seg at all: pre/post empty, recorded
    cube = _cubes_build.build_synapse(raw, None, mask, (10, 10, 10), (5, 10, 10), (15, 10, 10), ids, _cubes_geometry.CubeGeometry(size=8))
    assert cube.info["pre_side"] == 0 and "no neurite segmentation" in cube.info["ambiguity_reason"]


def test_cache_key_follows_the_description_and_target(data_dir, tmp_path):
    path = write_desc(data_dir, description(), "cachekey.yaml")
    cfg = C.make_config({"dataset": str(path)})
    k1 = cache.content_key(cfg, cache.CUBE_KEYS)
    assert cache.content_key(cfg, cache.CUBE_KEYS) == k1
    assert cache.content_key(C.make_config({"dataset": str(path), "target_voxel_nm": 10.0}), cache.CUBE_KEYS) != k1
    write_desc(data_dir, description(bbox={"labels": {**IDS, "mito": 4}}), "cachekey.yaml")
    assert cache.content_key(cfg, cache.CUBE_KEYS) != k1


@pytest.mark.notebooks
def test_01_load_notebook_on_a_described_dataset(desc_path, tmp_path):
    """The runner passes dataset / target_voxel_nm to 01_load, which shows source, voxel and types."""
    from synapse_nb.pipeline import runner

    params = {"dataset": str(desc_path), "target_voxel_nm": 8.0, "cube_size": 48, "segmentation_type": 7,
              "n_preview": 2, "cache_dir": ""}
    result = runner.run_pipeline(params, runs_root=tmp_path / "runs", reports_root=None, only=["01_load"])
    assert result.ok
    cs = _cubes_store.CubeSet.load(result.run.cubes_dir)
    assert len(cs) == 3 and cs.voxel_size_nm == (8.0, 8.0, 8.0)
    text = result.steps[0].executed.read_text(encoding="utf-8")
    assert "Dataset 'aniso' from the description" in text
    assert "voxel size 40 x 4 x 4 nm (z, y, x); cubes are resampled per synapse to 8 nm isotropic voxels" in text
    assert "Segmentation types it supports: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11." in text


def test_shipped_example_description_is_valid():
    from .conftest import PROJECT_ROOT

    loaded = D.load_dataset_description(PROJECT_ROOT / "parameters" / "dataset_example.yaml")
    assert loaded.name == "vnc_stack1" and loaded.spec.voxel_size_nm == [50.0, 4.6, 4.6]
    spec = loaded.spec.bboxes["stack1"]
    assert loaded.resolve(spec.raw.path) == PROJECT_ROOT / "parameters" / ".." / "data" / "vnc" / "vnc.zarr"
    assert spec.raw.key == "raw" and spec.labels.vesicle == 0 and spec.labels.cleft2 == 2


def test_descriptions_are_told_apart_from_run_parameters():
    from .conftest import PROJECT_ROOT

    assert D.is_description(yaml.safe_load((PROJECT_ROOT / "parameters" / "dataset_example.yaml").read_text()))
    assert not D.is_description(yaml.safe_load((PROJECT_ROOT / "parameters" / "ci.yaml").read_text()))
    assert not D.is_description({"bboxes": ["bbox1"], "voxel_size_nm": [8.0, 8.0, 8.0]})


def test_cubes_remember_what_their_dataset_cannot_serve(data_dir, tmp_path):
    """03_extract run on its own with a type 01_load would refuse: refused from the cube store."""

    path = write_desc(data_dir, description(bbox={"labels": {"mito": 1, "vesicle": 0, "cleft": 2, "cleft2": 2}}), "novesicle2.yaml")
    bboxes = D.open_dataset_description(path)
    cfg = C.make_config({"dataset": str(path), "segmentation_type": 7, "cube_size": 32})
    cubes = _pipeline_steps.make_cubes(bboxes, cfg, progress=False)
    assert set(cubes.refused_types) == set(D.refused_types(bboxes)) and 5 in cubes.refused_types and 7 not in cubes.refused_types
    loaded = _cubes_store.CubeSet.load(cubes.save(tmp_path / "cubes"))
    assert loaded.refused_types == cubes.refused_types
    five = cfg.model_copy(update={"segmentation_type": 5})
    with pytest.raises(DataError) as exc:
        _pipeline_steps.compute_features(loaded, None, None, five, progress=False)  # type: ignore[arg-type]
    assert str(exc.value).startswith("segmentation type 5 (pre + post + vesicle + cleft) needs a vesicle-cloud label")
    assert str(exc.value).endswith("Types these cubes support: " + ", ".join(map(str, D.supported_types(bboxes))))
    loaded.require_type(7)  # served: no error
