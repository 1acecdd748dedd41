"""Conversion of the real Drosophila VNC ssTEM stack (synapse_nb.data.vnc).

Tests on a small synthetic source folder run everywhere; tests marked ``realdata`` convert the
real stack once per module and skip when ``../shared/realdata`` is absent.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from PIL import Image
from scipy import ndimage

from synapse_nb.core import labels as L
from synapse_nb.core.errors import DataError
from synapse_nb.data import vnc
from synapse_nb.pipeline import artifacts

from .conftest import REALDATA

VNC_SRC = REALDATA / "drosophila_vnc_sstem"
needs_vnc = pytest.mark.skipif(not (VNC_SRC / "stack1").is_dir(), reason=f"real VNC data not found at {VNC_SRC}")
MEMBRANE_OR_OTHER = (*vnc.LABEL_MEMBRANE, vnc.LABEL_GLIA, vnc.LABEL_SYNAPSE)


# --------------------------------------------------------------------------------------
# a tiny synthetic source in the same layout
# --------------------------------------------------------------------------------------
def _synthetic_labels(nz: int = 3, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two neurites left/right of a vertical membrane, a synapse on it, a mito in the left one."""
    lab = np.full((nz, size, size), vnc.LABEL_INTRACELLULAR, dtype=np.uint8)
    lab[:, :, 30:33] = 64  # membrane
    lab[:, 0, :] = lab[:, -1, :] = lab[:, :, 0] = lab[:, :, -1] = 128  # frame
    syn = np.zeros(lab.shape, dtype=bool)
    syn[:2, 20:30, 29:34] = True  # on the membrane, both sections 0 and 1
    lab[syn] = vnc.LABEL_SYNAPSE
    mito = np.zeros(lab.shape, dtype=bool)
    mito[:, 40:50, 8:18] = True
    lab[mito] = vnc.LABEL_MITO
    return lab, syn, mito


def write_source(root: Path, nz: int = 3, size: int = 64) -> Path:
    src = root / "vnc_src"
    lab, syn, mito = _synthetic_labels(nz, size)
    rng = np.random.default_rng(0)
    for name in ("raw", "labels", "synapses", "mitochondria"):
        (src / "stack1" / name).mkdir(parents=True, exist_ok=True)
    for z in range(nz):
        tifffile.imwrite(src / "stack1" / "raw" / f"{z:02d}.tif", rng.integers(0, 256, (size, size), dtype=np.uint8))
        Image.fromarray(lab[z]).save(src / "stack1" / "labels" / f"labels{z:08d}.png")
        # mode "1" and mode "L" masks, as in the real source
        Image.fromarray(syn[z]).convert("1").save(src / "stack1" / "synapses" / f"{z:02d}.png")
        Image.fromarray((mito[z] * 255).astype(np.uint8)).save(src / "stack1" / "mitochondria" / f"{z:02d}.png")
    return src


@pytest.fixture()
def synthetic_src(tmp_path) -> Path:
    return write_source(tmp_path)


def test_synthetic_conversion_writes_every_file(synthetic_src, tmp_path):
    import zarr

    out = tmp_path / "out"
    path = vnc.convert_vnc(synthetic_src, out, progress=False)
    assert path == out / "dataset.yaml"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["vnc.zarr", "synapses.csv", "dataset.yaml", "README.md", "LICENSE_NOTICE.txt", "conversion.json"]
    )
    g = zarr.open_group(str(out / "vnc.zarr"), mode="r")
    lab, syn, mito = _synthetic_labels()
    np.testing.assert_array_equal(g["mask"][:], np.where(syn, 2, np.where(mito, 1, 0)))
    seg = g["seg"][:]
    assert seg.dtype == np.uint32
    # two neurites, linked through all three sections (identical profiles, IoU 1)
    left, right = seg[0, 10, 10], seg[0, 10, 50]
    assert left != right and left > 0 and right > 0
    assert set(np.unique(seg)) == {0, left, right}
    assert np.all(seg[:, 45, 12] == left)  # the mitochondrion belongs to the left neurite
    table = pd.read_csv(out / "synapses.csv")
    assert len(table) == 1
    row = table.iloc[0]
    assert row["Var1"] == "syn01" and row["n_voxels"] == syn.sum()
    assert syn[int(row.central_coord_3), int(row.central_coord_2), int(row.central_coord_1)]
    sides = {seg[int(row.side_1_coord_3), int(row.side_1_coord_2), int(row.side_1_coord_1)],
             seg[int(row.side_2_coord_3), int(row.side_2_coord_2), int(row.side_2_coord_1)]}
    assert sides == {left, right}
    assert row["side_status"] == "ok" and row["n_partners"] == 2


def test_no_linking_keeps_ids_per_section(synthetic_src, tmp_path):
    import zarr

    vnc.convert_vnc(synthetic_src, tmp_path / "out", progress=False, settings=vnc.VncSettings(link_min_iou=None))
    seg = zarr.open_group(str(tmp_path / "out" / "vnc.zarr"), mode="r")["seg"][:]
    per_section = [set(np.unique(seg[z])) - {0} for z in range(3)]
    assert [len(s) for s in per_section] == [2, 2, 2]
    assert not (per_section[0] & per_section[1]) and not (per_section[1] & per_section[2])
    assert seg.max() == 6


def test_centre_of_curved_component_lies_inside_it():
    comp = np.zeros((1, 21, 21), dtype=np.int32)
    yy, xx = np.mgrid[:21, :21]
    ring = (np.hypot(yy - 10, xx - 10) <= 9) & (np.hypot(yy - 10, xx - 10) >= 7) & (xx <= 12)  # a "C"
    comp[0][ring] = 1
    c = vnc.component_centres(comp, 1).iloc[0]
    cy, cx = int(c.center_y), int(c.center_x)
    assert comp[0, cy, cx] == 1
    assert comp[0, round(c.centroid_y), round(c.centroid_x)] == 0  # the centroid itself is outside
    d2 = (yy - c.centroid_y) ** 2 + (xx - c.centroid_x) ** 2
    assert d2[cy, cx] == d2[ring].min()


def test_centre_distance_is_measured_in_nm():
    comp = np.zeros((3, 1, 13), dtype=np.int32)
    comp[0, 0, 0] = comp[2, 0, 0] = comp[1, 0, 12] = 1  # centroid (z=1, x=4)
    # in voxels (0, 0) is nearer (17 vs 64); in nm (50 nm sections, 4.6 nm pixels) (1, 12) is
    c = vnc.component_centres(comp, 1, voxel_size_nm=(50.0, 4.6, 4.6)).iloc[0]
    assert (c.center_z, c.center_x) == (1, 12)
    c = vnc.component_centres(comp, 1, voxel_size_nm=(1.0, 1.0, 1.0)).iloc[0]
    assert (c.center_z, c.center_x) == (0, 0)


def test_mutual_links_need_mutual_best_and_iou():
    a = np.zeros((10, 30), dtype=np.int64)
    b = np.zeros_like(a)
    a[:, 0:10] = 1
    b[:, 0:10] = 1  # IoU 1 -> linked
    a[:, 12:20] = 2
    b[:, 12:16] = 2  # IoU 0.5 exactly -> linked at 0.5
    b[:, 16:20] = 3  # IoU 0.5 too, but a's 2 already matched: no fan-out
    a[:, 22:30] = 3
    b[:, 25:30] = 4  # IoU 5/8 -> linked
    links = vnc._mutual_links(a, b, 0.5)
    assert sorted(links) == [(1, 1), (2, 2), (3, 4)]
    assert sorted(vnc._mutual_links(a, b, 0.7)) == [(1, 1)]


def test_sides_nan_when_fewer_than_two_partners():
    seg = np.zeros((1, 40, 40), dtype=np.uint32)
    seg[0, :, :18] = 7
    comp = np.zeros((1, 40, 40), dtype=np.int32)
    comp[0, 10:20, 19:22] = 1  # touches only neurite 7
    centres = vnc.component_centres(comp, 1)
    sides = vnc.estimate_sides(seg, comp, centres)
    row = sides.iloc[0]
    assert all(math.isnan(row[f"side_{k}_coord_{i}"]) for k in (1, 2) for i in (1, 2, 3))
    assert row["n_partners"] == 1 and row["side1_contact_px"] > 0
    assert row["side_status"] == "1 neurite(s) touch the synapse on section z=0: sides unknown"


def test_missing_source_folder_is_named(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"VNC source folder not found: {tmp_path / 'nope'}")):
        vnc.convert_vnc(tmp_path / "nope", tmp_path / "out", progress=False)


@pytest.fixture()
def synapse_src_missing_labels(synthetic_src) -> Path:
    shutil.rmtree(synthetic_src / "stack1" / "labels")
    return synthetic_src


def test_missing_subfolder_is_named(synapse_src_missing_labels, tmp_path):
    folder = synapse_src_missing_labels / "stack1" / "labels"
    with pytest.raises(DataError, match=re.escape(f"VNC source is missing the folder {folder}")):
        vnc.convert_vnc(synapse_src_missing_labels, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_section_counts_must_agree(synthetic_src, tmp_path):
    (synthetic_src / "stack1" / "mitochondria" / "02.png").unlink()
    with pytest.raises(DataError, match=r"different numbers of sections .*mitochondria: 2"):
        vnc.convert_vnc(synthetic_src, tmp_path / "out", progress=False)


def test_bad_section_shape_names_the_file(synthetic_src, tmp_path):
    bad = synthetic_src / "stack1" / "synapses" / "01.png"
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(bad)
    with pytest.raises(DataError, match=re.escape(f"{bad} has shape (10, 10) but")):
        vnc.convert_vnc(synthetic_src, tmp_path / "out", progress=False)


def test_refuses_to_overwrite_a_foreign_folder_but_replaces_a_conversion(synthetic_src, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing to overwrite .*foreign.*no conversion.json"):
        vnc.convert_vnc(synthetic_src, foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    out = tmp_path / "out"
    vnc.convert_vnc(synthetic_src, out, progress=False)
    (out / "stale.txt").write_text("old")
    vnc.convert_vnc(synthetic_src, out, progress=False)
    assert not (out / "stale.txt").exists() and (out / "dataset.yaml").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_cli_convert_vnc(synthetic_src, tmp_path, caplog):
    from synapse_nb.pipeline.cli import main

    assert main(["convert-vnc", "--src", str(synthetic_src), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "dataset.yaml").is_file()
    assert main(["convert-vnc", "--src", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert f"VNC source folder not found: {tmp_path / 'missing'}" in caplog.text
    assert main(["convert-vnc", "--src", str(synthetic_src), "--out", str(tmp_path / "x"), "--link-min-iou", "0"]) == 2
    assert "link_min_iou must be in (0, 1]" in caplog.text


def test_dataset_yaml_follows_the_contract(synthetic_src, tmp_path):
    path = vnc.convert_vnc(synthetic_src, tmp_path / "out", progress=False)
    text = path.read_text()
    assert "CC BY-NC-SA 3.0" in text and "doi:10.6084/m9.figshare.856713" in text
    desc = yaml.safe_load(text)
    assert desc == {
        "name": "vnc_stack1",
        "voxel_size_nm": [50.0, 4.6, 4.6],
        "columns": {
            "name": "Var1",
            "center": ["central_coord_1", "central_coord_2", "central_coord_3"],
            "side1": ["side_1_coord_1", "side_1_coord_2", "side_1_coord_3"],
            "side2": ["side_2_coord_1", "side_2_coord_2", "side_2_coord_3"],
        },
        "bboxes": {
            "stack1": {
                "raw": {"path": "vnc.zarr", "key": "raw"},
                "seg": {"path": "vnc.zarr", "key": "seg"},
                "mask": {"path": "vnc.zarr", "key": "mask"},
                "table": "synapses.csv",
                "labels": {"mito": 1, "vesicle": 0, "cleft": 2, "cleft2": 2},
            }
        },
    }
    for name in ("README.md", "LICENSE_NOTICE.txt"):
        body = (tmp_path / "out" / name).read_text()
        assert "CC BY-NC-SA 3.0" in body and vnc.CITATION in body and "Non-commercial" in body


# --------------------------------------------------------------------------------------
# the real stack, converted once per module
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    if not (VNC_SRC / "stack1").is_dir():
        pytest.skip(f"real VNC data not found at {VNC_SRC}")
    out = tmp_path_factory.mktemp("vnc") / "vnc"
    path = vnc.convert_vnc(VNC_SRC, out, progress=False)
    return path


@pytest.fixture(scope="module")
def arrays(converted):
    import zarr

    g = zarr.open_group(str(converted.parent / "vnc.zarr"), mode="r")
    return {k: g[k][:] for k in ("raw", "seg", "mask")}


@pytest.fixture(scope="module")
def source(converted):
    return vnc.read_stack(VNC_SRC, progress=False)


@pytest.fixture(scope="module")
def table(converted):
    return pd.read_csv(converted.parent / "synapses.csv")


@pytest.mark.realdata
@needs_vnc
def test_zarr_arrays(converted, arrays, source):
    import zarr

    g = zarr.open_group(str(converted.parent / "vnc.zarr"), mode="r")
    assert g.metadata.zarr_format == 3
    assert dict(g.attrs)["voxel_size_nm"] == [50.0, 4.6, 4.6]
    assert {k: (a.shape, a.dtype) for k, a in arrays.items()} == {
        "raw": ((20, 1024, 1024), np.uint8),
        "seg": ((20, 1024, 1024), np.uint32),
        "mask": ((20, 1024, 1024), np.uint8),
    }
    assert g["raw"].chunks == (4, 256, 256)
    np.testing.assert_array_equal(arrays["raw"], source.raw)
    np.testing.assert_array_equal(arrays["raw"][7], tifffile.imread(VNC_SRC / "stack1" / "raw" / "07.tif"))


@pytest.mark.realdata
@needs_vnc
def test_fifty_synapses_equal_the_components_csv(table):
    ref = pd.read_csv(VNC_SRC / "synapse_components_stack1.csv")
    assert len(table) == len(ref) == 50
    assert table["Var1"].tolist() == [f"syn{i:02d}" for i in range(1, 51)]
    np.testing.assert_array_equal(table["synapse_id"], ref["synapse_id"])
    np.testing.assert_array_equal(table["n_voxels"], ref["n_voxels"])
    for col in ("z0", "z1", "y0", "y1", "x0", "x1"):
        np.testing.assert_array_equal(table[col], ref[col], err_msg=col)
    for col in ("centroid_z", "centroid_y", "centroid_x"):
        np.testing.assert_allclose(table[col], ref[col], atol=0.051, err_msg=col)  # the CSV rounds to 0.1


@pytest.mark.realdata
@needs_vnc
def test_centres_lie_inside_their_component_nearest_the_centroid(table, source):
    comp, n = ndimage.label(source.synapse, structure=np.ones((3, 3, 3)))
    assert n == 50
    spacing = np.array([50.0, 4.6, 4.6])
    for row in table.itertuples():
        c = (row.central_coord_3, row.central_coord_2, row.central_coord_1)  # z, y, x
        assert comp[c] == row.synapse_id, row.Var1
        zyx = np.argwhere(comp == row.synapse_id)
        centroid = np.array([row.centroid_z, row.centroid_y, row.centroid_x])
        d = np.sqrt((((zyx - centroid) * spacing) ** 2).sum(axis=1))
        assert np.sqrt((((np.array(c) - centroid) * spacing) ** 2).sum()) == pytest.approx(d.min()), row.Var1


@pytest.mark.realdata
@needs_vnc
def test_cleft_and_mito_labels_equal_the_masks(arrays, source, converted):
    mask = arrays["mask"]
    assert set(np.unique(mask)) == {0, 1, 2}
    assert not (source.synapse & source.mito).any()  # so no voxel had to be given to one of them
    np.testing.assert_array_equal(mask == 2, source.synapse)
    np.testing.assert_array_equal(mask == 1, source.mito)
    assert int((mask == 2).sum()) == 117147 and int((mask == 1).sum()) == 1130084
    stats = json.loads((converted.parent / "conversion.json").read_text())
    assert (stats["cleft_voxels"], stats["mito_voxels"]) == (117147, 1130084)


@pytest.mark.realdata
@needs_vnc
def test_neurite_ids(arrays, source):
    seg, lab = arrays["seg"], source.labels
    assert not seg[np.isin(lab, MEMBRANE_OR_OTHER)].any()  # 0 on membranes, glia, synapses
    assert (seg[lab == vnc.LABEL_INTRACELLULAR] > 0).all()
    assert (seg[lab == vnc.LABEL_MITO] > 0).mean() > 0.99  # mitochondria inside their neurite
    for z in range(seg.shape[0]):
        comp, n = ndimage.label(lab[z] == vnc.LABEL_INTRACELLULAR)
        inside = comp > 0
        pairs = np.unique(comp[inside].astype(np.int64) * (int(seg.max()) + 1) + seg[z][inside])
        assert len(pairs) == n, f"z={z}: an intracellular component holds several ids"
        assert len(np.unique(pairs % (int(seg.max()) + 1))) == n, f"z={z}: two components share one id"
    # an id on two neighbouring sections was linked: its profiles overlap with IoU >= 0.5
    for z in (0, 9, 18):
        shared = np.intersect1d(np.unique(seg[z]), np.unique(seg[z + 1]))
        shared = shared[shared > 0]
        assert len(shared) > 50
        for i in shared:
            a, b = seg[z] == i, seg[z + 1] == i
            assert (a & b).sum() / (a | b).sum() >= 0.5, (z, i)


@pytest.mark.realdata
@needs_vnc
def test_side_points_lie_in_distinct_neurites_next_to_the_synapse(table, arrays, converted):
    seg, mask = arrays["seg"], arrays["mask"]
    comp, _ = ndimage.label(mask == 2, structure=np.ones((3, 3, 3)))
    settings = vnc.VncSettings()
    has = table[L.SIDE1_COLUMNS[0]].notna()
    pad = settings.side_radius_px + 1
    for row in table[has].itertuples():
        z = row.central_coord_3
        y0, x0 = max(row.y0 - pad, 0), max(row.x0 - pad, 0)
        win = (slice(y0, row.y1 + pad), slice(x0, row.x1 + pad))
        prof = comp[z][win] == row.synapse_id
        ring = ndimage.binary_dilation(prof, structure=vnc._disk(settings.contact_radius_px))
        near = ndimage.binary_dilation(prof, structure=vnc._disk(settings.side_radius_px))
        ids = []
        for k in (1, 2):
            x, y, zz = (int(getattr(row, f"side_{k}_coord_{i}")) for i in (1, 2, 3))
            assert zz == z
            assert near[y - y0, x - x0], f"{row.Var1}: side {k} is not next to the synapse"
            sid = seg[z, y, x]
            assert sid > 0 and (seg[z][win][ring] == sid).any(), f"{row.Var1}: side {k} neurite does not touch the synapse"
            ids.append(sid)
        assert ids[0] != ids[1], row.Var1
        assert row.side1_contact_px >= row.side2_contact_px
    n_nan = int((~has).sum())
    stats = json.loads((converted.parent / "conversion.json").read_text())
    assert stats["n_sides_nan"] == n_nan == int(table[L.SIDE2_COLUMNS[0]].isna().sum())
    assert f"{n_nan} of 50 synapses have fewer than" in (converted.parent / "README.md").read_text()
    assert (table["side_status"].str.startswith("ok")).sum() == 50 - n_nan


@pytest.mark.realdata
@needs_vnc
def test_written_yaml_loads_with_the_dataset_reader(converted):
    from synapse_nb.data import description as dataset
    (b,) = dataset.open_dataset_description(converted)
    assert b.name == "stack1" and b.dataset == "vnc_stack1"
    assert tuple(b.raw.shape) == tuple(b.seg.shape) == tuple(b.mask.shape) == (20, 1024, 1024)
    assert (np.dtype(b.raw.dtype), np.dtype(b.seg.dtype), np.dtype(b.mask.dtype)) == (np.uint8, np.uint32, np.uint8)
    assert b.label_ids == L.LabelIds(mito=1, vesicle=0, cleft=2, cleft2=2)
    assert tuple(b.voxel_size_nm) == (50.0, 4.6, 4.6)
    assert len(b.table) == 50 and b.table[L.SIDE1_COLUMNS[0]].notna().sum() == 50 - int(
        json.loads((converted.parent / "conversion.json").read_text())["n_sides_nan"]
    )
    assert dataset.supported_types([b]) == list(vnc.SUPPORTED_TYPES)
    window = np.asarray(b.mask[5:7, 300:340, 200:260])
    assert window.shape == (2, 40, 60)


@pytest.mark.realdata
@pytest.mark.notebooks
@needs_vnc
def test_pipeline_runs_on_the_converted_stack(converted, tmp_path):
    from synapse_nb.core import config as C
    from synapse_nb.pipeline import runner

    params = C.read_yaml(Path(__file__).resolve().parents[1] / "parameters" / "vnc.yaml")
    params.update({"dataset": str(converted), "cache_dir": str(tmp_path / "cache"), "cube_size": 32, "n_bootstrap": 5})
    assert params["segmentation_type"] == 7
    steps = ["01_load", "03_extract", "04_reduce", "05_cluster"]
    result = runner.run_pipeline(params, runs_root=tmp_path / "runs", reports_root=tmp_path / "reports", only=steps)
    assert [s.status for s in result.steps] == ["ok"] * 4
    run = result.run
    built = pd.read_parquet(run.path / "cubes" / "table.parquet")
    skipped = pd.read_parquet(run.path / "cubes" / "skipped.parquet")
    assert len(built) == 50 and len(skipped) == 0  # every synapse has a cleft; sides are not needed for type 7
    assert set(built["resampled"]) == {True} and set(built["cube_voxel_z_nm"]) == {8.0}
    assert (built["cleft_volume_vox"] > 0).all()
    features = run.read(artifacts.FEATURES)
    clusters = run.read(artifacts.CLUSTERS)
    assert len(features) == len(clusters) == 50
    quality = json.loads((run.tables_dir / "cluster_quality.json").read_text())
    assert 2 <= quality["k"] <= params["k_max"]
    assert clusters["cluster"].nunique() == quality["k"]
    for step in steps:
        html = (run.html_dir / f"{step}.html").read_text()
        assert "Traceback" not in html and len(html) > 10_000
        assert (tmp_path / "reports" / run.name / f"{step}.html").is_file()
    assert "vnc_stack1" in (run.html_dir / "01_load.html").read_text()

    # refused before any run directory exists
    with pytest.raises(C.ConfigError, match=r"segmentation type 5 .*needs a vesicle-cloud label.*Types this dataset supports: 0, 3, 7, 8"):
        runner.run_pipeline(
            {**params, "segmentation_type": 5}, runs_root=tmp_path / "runs5", reports_root=None, only=["01_load"]
        )
    assert not (tmp_path / "runs5").exists()
