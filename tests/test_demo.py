"""Tests of the synthetic demo dataset (synapse_nb.data.demo, written in the original tool's folder layout)."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi

from synapse_nb.core.labels import (
    CENTER_COLUMNS,
    DEMO_CLASS_COLUMN,
    NAME_COLUMN,
    REQUIRED_TABLE_COLUMNS,
    SIDE1_COLUMNS,
    SIDE2_COLUMNS,
    label_ids_for,
    mask_folder_name,
)
from synapse_nb.data.demo import (
    CLASS_NAMES,
    DEMO_MARKER_FILE,
    DEMO_PRESETS,
    GROUND_TRUTH_FILE,
    HARD_CLASS_NAMES,
    DemoSpec,
    _plan_bbox,
    _plan_rows,
    bbox_nuisance,
    demo_spec,
    make_demo_dataset,
    plan_demo_table,
    preset_class_names,
)
from synapse_nb.pipeline import cli

TINY = DemoSpec(n_bboxes=2, shape=(64, 96, 96), synapses_per_bbox=4, seed=2)
BBOXES = ("bbox1", "bbox2")


def _read_stack(folder: Path) -> np.ndarray:
    files = sorted(folder.glob("slice_*.tif"), key=lambda p: int(p.stem.split("_")[1]))
    return np.stack([tifffile.imread(f) for f in files])


def _zyx(row: pd.Series, cols: tuple[str, str, str]) -> tuple[int, int, int]:
    x, y, z = (int(row[c]) for c in cols)
    return z, y, x


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    gt = make_demo_dataset(out, TINY, progress=False)
    vols = {
        b: {
            "raw": _read_stack(out / "raw" / b),
            "seg": _read_stack(out / "seg" / b),
            "mask": _read_stack(out / "mask" / mask_folder_name(b)),
        }
        for b in BBOXES
    }
    return out, gt, vols


def test_layout_and_file_names(demo):
    out, _, _ = demo
    assert sorted(p.name for p in (out / "raw").iterdir()) == list(BBOXES)
    assert sorted(p.name for p in (out / "seg").iterdir()) == list(BBOXES)
    assert sorted(p.name for p in (out / "mask").iterdir()) == ["bbox_1", "bbox_2"]
    assert sorted(p.name for p in (out / "tables").iterdir()) == ["bbox1.xlsx", "bbox2.xlsx"]
    expected = [f"slice_{z:03d}.tif" for z in range(TINY.shape[0])]
    for b in BBOXES:
        for folder in (out / "raw" / b, out / "seg" / b, out / "mask" / mask_folder_name(b)):
            assert sorted(p.name for p in folder.iterdir()) == expected
    # no temporary leftovers anywhere
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]
    meta = json.loads((out / DEMO_MARKER_FILE).read_text())
    assert meta["bboxes"] == list(BBOXES)
    assert (out / GROUND_TRUTH_FILE).is_file()


def test_slices_are_2d_uncompressed_with_expected_dtypes(demo):
    out, _, vols = demo
    for b in BBOXES:
        for kind, dtype in (("raw", np.uint8), ("seg", np.uint16), ("mask", np.uint8)):
            vol = vols[b][kind]
            assert vol.dtype == dtype, (b, kind)
            assert vol.shape == TINY.shape, (b, kind)
        with tifffile.TiffFile(out / "raw" / b / "slice_000.tif") as tif:
            page = tif.pages[0]
            assert page.shape == TINY.shape[1:]
            assert page.compression == tifffile.COMPRESSION.NONE


def test_raw_looks_like_em(demo):
    _, _, vols = demo
    raw, seg = vols["bbox1"]["raw"].astype(float), vols["bbox1"]["seg"]
    cyto = raw[seg > 0]
    assert 130 < np.median(cyto) < 175
    assert raw.std() > 15  # membranes, organelles, noise: not a flat image
    # membranes: seg-0 voxels between two different neurites are dark
    big = np.iinfo(seg.dtype).max
    hi = ndi.maximum_filter(seg, size=3)
    lo = ndi.minimum_filter(np.where(seg == 0, big, seg), size=3)
    between = (seg == 0) & (lo != big) & (hi != lo)
    assert between.sum() > 1000
    assert np.median(raw[between]) < np.median(cyto) - 40


def test_table_columns_and_names(demo):
    out, gt, _ = demo
    assert len(gt) >= 4
    for col in (*REQUIRED_TABLE_COLUMNS, DEMO_CLASS_COLUMN, "bbox", "true_pre_side", "true_pre_id"):
        assert col in gt.columns, col
    assert gt[NAME_COLUMN].is_unique
    for b in BBOXES:
        table = pd.read_excel(out / "tables" / f"{b}.xlsx")
        for col in (*REQUIRED_TABLE_COLUMNS, DEMO_CLASS_COLUMN, "true_pre_side", "true_pre_id"):
            assert col in table.columns, col
        for col in (*CENTER_COLUMNS, *SIDE1_COLUMNS, *SIDE2_COLUMNS):
            assert pd.api.types.is_integer_dtype(table[col]), col
        part = gt[gt["bbox"] == b].reset_index(drop=True)
        assert table[NAME_COLUMN].tolist() == part[NAME_COLUMN].tolist()
        assert all(name.startswith(f"{b}_syn") for name in table[NAME_COLUMN])
        pd.testing.assert_frame_equal(table[list(REQUIRED_TABLE_COLUMNS)], part[list(REQUIRED_TABLE_COLUMNS)],
                                      check_dtype=False)
    on_disk = pd.read_csv(out / GROUND_TRUTH_FILE)
    assert on_disk[NAME_COLUMN].tolist() == gt[NAME_COLUMN].tolist()
    assert set(gt[DEMO_CLASS_COLUMN]) <= set(CLASS_NAMES)
    assert set(gt["true_pre_side"]) <= {1, 2}


def test_centres_carry_the_cleft_label_and_stay_off_the_border(demo):
    _, gt, vols = demo
    shape = np.array(TINY.shape)
    for _, row in gt.iterrows():
        zyx = _zyx(row, CENTER_COLUMNS)
        assert vols[row["bbox"]]["mask"][zyx] == label_ids_for(row["bbox"]).cleft, row[NAME_COLUMN]
        assert np.all(np.array(zyx) >= TINY.border_margin)
        assert np.all(np.array(zyx) <= shape - 1 - TINY.border_margin)


def test_side_points_lie_on_the_partner_segments(demo):
    _, gt, vols = demo
    for _, row in gt.iterrows():
        seg = vols[row["bbox"]]["seg"]
        s1, s2 = seg[_zyx(row, SIDE1_COLUMNS)], seg[_zyx(row, SIDE2_COLUMNS)]
        assert s1 != 0 and s2 != 0, row[NAME_COLUMN]
        assert s1 != s2, row[NAME_COLUMN]
        pre = s1 if row["true_pre_side"] == 1 else s2
        post = s2 if row["true_pre_side"] == 1 else s1
        assert pre == row["true_pre_id"]
        assert post == row["true_post_id"]
        # a few voxels from the cleft centre
        c = np.array(_zyx(row, CENTER_COLUMNS))
        for cols in (SIDE1_COLUMNS, SIDE2_COLUMNS):
            assert 2 <= np.linalg.norm(np.array(_zyx(row, cols)) - c) <= 15


def test_presynaptic_side_overlaps_the_vesicle_cloud_more(demo):
    _, gt, vols = demo
    for _, row in gt.iterrows():
        v = vols[row["bbox"]]
        ves = v["mask"] == label_ids_for(row["bbox"]).vesicle
        seg = v["seg"]
        s1, s2 = seg[_zyx(row, SIDE1_COLUMNS)], seg[_zyx(row, SIDE2_COLUMNS)]
        o1, o2 = int((ves & (seg == s1)).sum()), int((ves & (seg == s2)).sum())
        if row["true_pre_side"] == 1:
            assert o1 > o2, row[NAME_COLUMN]
        else:
            assert o2 > o1, row[NAME_COLUMN]


def test_label_ids_follow_the_per_bbox_table(demo):
    _, _, vols = demo
    assert label_ids_for("bbox2") != label_ids_for("bbox1")  # the demo exercises the table
    for b in BBOXES:
        ids = label_ids_for(b)
        present = set(np.unique(vols[b]["mask"]).tolist())
        assert present <= {0, ids.mito, ids.vesicle, ids.cleft, ids.cleft2}, (b, present)
        assert {ids.vesicle, ids.cleft} <= present, (b, present)
    # bbox2 uses mito=1, vesicle=3, cleft=2: cleft voxels are 2 there, never 7
    assert 7 not in set(np.unique(vols["bbox2"]["mask"]).tolist())


def test_structures_are_inside_their_neurites(demo):
    _, gt, vols = demo
    for b in BBOXES:
        ids = label_ids_for(b)
        seg, mask = vols[b]["seg"], vols[b]["mask"]
        assert np.all(seg[mask == ids.vesicle] > 0)
        assert np.all(seg[mask == ids.mito] > 0)
        # every vesicle voxel belongs to a presynaptic axon of the table or of a dropped synapse
        pre_ids = set(gt.loc[gt["bbox"] == b, "true_pre_id"])
        ves_ids = set(np.unique(seg[mask == ids.vesicle]).tolist())
        assert pre_ids <= ves_ids


def test_deterministic_for_a_seed(demo, tmp_path):
    out, gt, vols = demo
    gt2 = make_demo_dataset(tmp_path / "again", TINY, progress=False)
    pd.testing.assert_frame_equal(gt, gt2)
    for b in BBOXES:
        folders = {"raw": f"raw/{b}", "seg": f"seg/{b}", "mask": f"mask/{mask_folder_name(b)}"}
        for kind, folder in folders.items():
            np.testing.assert_array_equal(vols[b][kind], _read_stack(tmp_path / "again" / folder))
    other = DemoSpec(n_bboxes=1, shape=TINY.shape, synapses_per_bbox=TINY.synapses_per_bbox,
                     seed=TINY.seed + 1)
    gt3 = make_demo_dataset(tmp_path / "other", other, progress=False)
    assert not np.array_equal(_read_stack(tmp_path / "other" / "raw" / "bbox1"), vols["bbox1"]["raw"])
    assert gt3[NAME_COLUMN].str.startswith("bbox1_").all()


def test_plan_matches_the_written_dataset(demo):
    _, gt, _ = demo
    plan = plan_demo_table(TINY).set_index(NAME_COLUMN)
    for _, row in gt.iterrows():
        p = plan.loc[row[NAME_COLUMN]]
        assert p[DEMO_CLASS_COLUMN] == row[DEMO_CLASS_COLUMN]
        assert p["true_pre_id"] == row["true_pre_id"]
        assert [p[c] for c in CENTER_COLUMNS] == [row[c] for c in CENTER_COLUMNS]


def test_default_spec_plan_classes_groups_and_spacing():
    spec = DemoSpec()
    plan = plan_demo_table(spec)
    assert plan["bbox"].nunique() == spec.n_bboxes
    # at least 3 known classes, reasonably balanced, in every bbox
    counts = plan[DEMO_CLASS_COLUMN].value_counts()
    assert len(counts) >= 3 and set(counts.index) == set(CLASS_NAMES)
    assert counts.min() >= 0.5 * counts.max()
    for _, part in plan.groupby("bbox"):
        assert part[DEMO_CLASS_COLUMN].nunique() >= 3
        assert abs(len(part) - spec.synapses_per_bbox) <= 3
    # axons with several synapses exist; all synapses of an axon share its class
    per_axon = plan.groupby(["bbox", "true_pre_id"])
    sizes = per_axon.size()
    assert (sizes >= 2).sum() >= 4 and sizes.max() <= 5
    assert (per_axon[DEMO_CLASS_COLUMN].nunique() == 1).all()
    # presynaptic side in column 1 or 2 about half each
    assert 0.25 < (plan["true_pre_side"] == 1).mean() < 0.75
    # centres: >= border_margin from the border, a few within 40 voxels, spaced apart
    shape = np.array(spec.shape)
    zyx = plan[list(CENTER_COLUMNS)].to_numpy()[:, ::-1]
    dist_border = np.minimum(zyx, shape - 1 - zyx).min(axis=1)
    assert dist_border.min() >= spec.border_margin
    assert 1 <= (dist_border < 40).sum() <= 0.2 * len(plan)
    for _, part in plan.groupby("bbox"):
        c = part[list(CENTER_COLUMNS)].to_numpy(float)
        d = np.linalg.norm(c[:, None] - c[None], axis=2) + np.eye(len(c)) * 1e9
        assert d.min() >= 40  # an 80^3 cube never has a neighbour's cleft near its centre


def test_refuses_to_write_into_a_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("real data")
    with pytest.raises(FileExistsError, match="demo"):
        make_demo_dataset(tmp_path, TINY, progress=False)
    assert (tmp_path / "precious.txt").read_text() == "real data"


def test_rerun_with_fewer_bboxes_removes_stale_ones(tmp_path):
    small = DemoSpec(n_bboxes=2, shape=(48, 64, 64), synapses_per_bbox=2, seed=5)
    make_demo_dataset(tmp_path, small, progress=False)
    make_demo_dataset(tmp_path, DemoSpec(n_bboxes=1, shape=(48, 64, 64), synapses_per_bbox=2, seed=5),
                      progress=False)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["bbox1"]
    assert sorted(p.name for p in (tmp_path / "mask").iterdir()) == ["bbox_1"]
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["bbox1.xlsx"]


def test_class_names_describe_each_class():
    assert len(CLASS_NAMES) >= 3
    for key, text in CLASS_NAMES.items():
        assert isinstance(text, str) and len(text) > 20, key


def test_spec_validation():
    with pytest.raises(ValueError, match="shape"):
        DemoSpec(shape=(10, 96, 96))
    with pytest.raises(ValueError, match="n_bboxes"):
        DemoSpec(n_bboxes=0)
    with pytest.raises(ValueError, match="preset"):
        DemoSpec(preset="easy")
    with pytest.raises(ValueError, match="classes"):
        DemoSpec(classes=("E_small",))  # a hard class in the default table
    with pytest.raises(ValueError, match="contrast_range"):
        DemoSpec(contrast_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="brightness_range"):
        DemoSpec(brightness_range=(10.0, -10.0))
    with pytest.raises(ValueError, match="max_axon_group"):
        DemoSpec(max_axon_group=0)
    with pytest.raises(ValueError, match="unknown demo preset"):
        demo_spec("easy")


# ----------------------------------------------------------------------------------------
# Presets: the default stays as it was; hard and brightness add nuisance
# ----------------------------------------------------------------------------------------
def test_default_preset_output_is_unchanged(demo):
    """The volumes of the default demo must not change when presets are added or tuned."""
    _, _, vols = demo
    assert demo_spec() == DemoSpec() and demo_spec(seed=2).seed == 2
    digest = hashlib.sha256()
    for b in BBOXES:
        for kind in ("raw", "seg", "mask"):
            digest.update(np.ascontiguousarray(vols[b][kind]).tobytes())
    assert digest.hexdigest() == "9084e80a9f435386a13bff26d3b1ada52f8acd96b89180e3ac57958716048995", (
        "the default demo volumes changed; keep them byte-identical (new options must default to off)")
    assert bbox_nuisance(TINY) == [(0.0, 1.0)] * TINY.n_bboxes


@pytest.fixture(scope="module")
def hard_plan():
    spec = demo_spec("hard")
    plans = [_plan_bbox(spec, i) for i in range(spec.n_bboxes)]
    table = pd.DataFrame([row for plan in plans for row in _plan_rows(plan)])
    normals = np.array([s.normal for plan in plans for s in plan.synapses])
    return spec, table, normals


def test_hard_preset_balances_classes_of_equal_size_in_every_bbox(hard_plan):
    _, plan, _ = hard_plan
    assert set(DEMO_PRESETS) >= {"default", "hard", "brightness"}
    assert preset_class_names("hard") is HARD_CLASS_NAMES and len(HARD_CLASS_NAMES) >= 4
    assert 80 <= len(plan) <= 100
    counts = pd.crosstab(plan["bbox"], plan[DEMO_CLASS_COLUMN])
    assert list(counts.columns) == list(HARD_CLASS_NAMES)  # every class in every bbox ...
    assert (counts.max(axis=1) - counts.min(axis=1)).max() <= 2  # ... about equally often
    assert (counts > 0).all().all()
    # four classes share one size distribution: their cleft and cloud radii overlap
    same_size = plan[plan[DEMO_CLASS_COLUMN] != "E_small"].groupby(DEMO_CLASS_COLUMN)
    for col in ("cleft_radius", "vesicle_cloud_radius", "bouton_radius"):
        lo, hi = same_size[col].min(), same_size[col].max()
        assert lo.max() < hi.min(), col
    small = plan[plan[DEMO_CLASS_COLUMN] == "E_small"]
    assert small["vesicle_cloud_radius"].max() < same_size["vesicle_cloud_radius"].min().min()


def test_hard_preset_spreads_cleft_normals_over_the_sphere(hard_plan):
    _, _, normals = hard_plan
    # uniform on the sphere: each |component| is uniform on [0, 1] (mean 0.5, a fifth above 0.8)
    mean_abs = np.abs(normals).mean(axis=0)
    assert np.all(np.abs(mean_abs - 0.5) < 0.06), mean_abs
    above = (np.abs(normals) > 0.8).mean(axis=0)
    assert np.all((above > 0.1) & (above < 0.3)), above


@pytest.fixture(scope="module")
def brightness_demo(tmp_path_factory):
    """The brightness preset, written through the command line."""
    out = tmp_path_factory.mktemp("brightness")
    assert cli.main(["demo-data", "--preset", "brightness", "--out", str(out)]) == 0
    return out, pd.read_csv(out / GROUND_TRUTH_FILE), json.loads((out / DEMO_MARKER_FILE).read_text())


def test_brightness_preset_varies_brightness_per_bbox_only(brightness_demo):
    out, gt, meta = brightness_demo
    spec = demo_spec("brightness")
    assert meta["preset"] == "brightness" and meta["spec"]["preset"] == "brightness"
    assert list(meta["classes"]) == ["E_small"] and set(gt[DEMO_CLASS_COLUMN]) == {"E_small"}
    assert sorted(gt["bbox"].unique()) == [f"bbox{i + 1}" for i in range(spec.n_bboxes)]
    assert gt.groupby("bbox").size().min() >= 6
    cyto, cube_means = {}, []
    for b, part in gt.groupby("bbox"):
        raw = _read_stack(out / "raw" / b).astype(float)
        seg = _read_stack(out / "seg" / b)
        cyto[b] = float(np.median(raw[seg > 0]))
        for _, row in part.iterrows():
            z, y, x = _zyx(row, CENTER_COLUMNS)
            cube_means.append((b, raw[max(z - 16, 0):z + 16, max(y - 16, 0):y + 16, max(x - 16, 0):x + 16].mean()))
    # undoing the recorded offset and gain gives the same cytoplasm level in every bbox
    base = {b: 128 + (cyto[b] - 128 - o) / g for b, (o, g) in meta["bbox_brightness_offset_gain"].items()}
    assert max(base.values()) - min(base.values()) < 4, (base, cyto)
    levels = sorted(cyto.values())
    assert min(np.diff(levels)) > 15, levels
    # per synapse: the bbox explains the brightness (a clustering on it would split by bbox)
    cubes = pd.DataFrame(cube_means, columns=["bbox", "mean"])
    assert cubes.groupby("bbox")["mean"].mean().std() > 3 * cubes.groupby("bbox")["mean"].std().max()


def test_cli_demo_data_refuses_a_bad_shape_in_one_line(tmp_path, caplog):
    assert cli.main(["demo-data", "--out", str(tmp_path / "d"), "--shape", "8", "64", "64"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "shape" in errors[0] and "\n" not in errors[0]
    assert not (tmp_path / "d").exists()


def test_dense_core_and_clear_vesicles_differ_in_texture_not_volume(tmp_path):
    spec = demo_spec("hard", n_bboxes=1, shape=(80, 128, 128), synapses_per_bbox=4, seed=4,
                     classes=("A_clear_flat", "B_dense_core"), max_axon_group=1)
    gt = make_demo_dataset(tmp_path, spec, progress=False)
    assert set(gt[DEMO_CLASS_COLUMN]) == {"A_clear_flat", "B_dense_core"}
    raw = _read_stack(tmp_path / "raw" / "bbox1").astype(float)
    mask = _read_stack(tmp_path / "mask" / "bbox_1")
    seg = _read_stack(tmp_path / "seg" / "bbox1")
    raw = (raw - raw.mean()) / raw.std()
    ves = label_ids_for("bbox1").vesicle
    texture = {}
    for _, row in gt.iterrows():
        box = tuple(slice(max(c - 24, 0), c + 24) for c in _zyx(row, CENTER_COLUMNS))
        cloud = (mask[box] == ves) & (seg[box] == row["true_pre_id"])
        texture.setdefault(row[DEMO_CLASS_COLUMN], []).append(raw[box][cloud].std())
    assert min(texture["B_dense_core"]) > max(texture["A_clear_flat"]) + 0.1, texture
    volumes = gt.groupby(DEMO_CLASS_COLUMN)["true_vesicle_voxels"].median()
    assert 0.6 < volumes["B_dense_core"] / volumes["A_clear_flat"] < 1.6, volumes
