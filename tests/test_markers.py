"""Side 1 / side 2 naming where pre/post is undecided, and the markers montages draw."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from synapse_nb.core import config as C
from synapse_nb.core import labels as L
from synapse_nb.cubes.prepost import partner_labels, partner_table, polarity_known, side_decided, sides_decided
from synapse_nb.data.datasets import open_dataset
from synapse_nb.figures import cluster_montage, cube_markers, cube_slices, plane_marks, synapse_overview
from synapse_nb.figures.plots import bbox_counts
from synapse_nb.pipeline import steps

NO_VESICLE = {"bbox1": {"mito": 5, "vesicle": 0, "cleft": 7, "cleft2": 7}}


def synapse_row(**extra) -> dict:
    row = {
        L.BBOX_COLUMN: "b", L.NAME_COLUMN: "s", "pre_side": 2, "side1_seg_id": 12, "side2_seg_id": 34,
        "ambiguity_reason": "", "crop_mode": "cleft", "cube_center_z": 50, "cube_center_y": 60, "cube_center_x": 70,
        # table points are x, y, z
        **dict(zip(L.CENTER_COLUMNS, (70, 60, 50))), **dict(zip(L.SIDE1_COLUMNS, (72, 61, 50))),
        **dict(zip(L.SIDE2_COLUMNS, (66, 60, 53))),
    }
    return {**row, **extra}


# --------------------------------------------------------------------------------------
# naming the partners
# --------------------------------------------------------------------------------------
def test_partner_names_say_pre_post_only_where_the_side_was_decided():
    table = pd.DataFrame([
        synapse_row(),
        synapse_row(pre_side=0, side1_seg_id=0, side2_seg_id=0, ambiguity_reason="no side points: pre/post empty"),
        synapse_row(pre_side=1, ambiguity_reason="pre/post tie: ...; chose side 1 by convention"),
        synapse_row(pre_side=1, ambiguity_reason="no vesicle-cloud label in this dataset; chose side 2, the only side on a neurite"),
        synapse_row(pre_side=1, ambiguity_reason=np.nan),
    ])
    assert sides_decided(table).tolist() == [True, False, False, False, True]
    assert polarity_known(table) and not polarity_known(table.iloc[1:4]) and not polarity_known(table.iloc[:0])
    assert [partner_labels(r) for r in table.to_dict("records")] == [
        ("post", "pre"), ("side 1", "side 2"), ("side 1", "side 2"), ("side 1", "side 2"), ("pre", "post")]
    assert partner_labels(table.iloc[1], short=True) == ("1", "2") and partner_labels(table.iloc[0], known=False) == ("side 1", "side 2")
    assert side_decided(table.iloc[4]) and side_decided({"pre_side": 1}) and not side_decided({"pre_side": 0})
    names = partner_table(table)
    assert names["side 1"].tolist() == ["post · seg 12", "no segment", "seg 12", "seg 12", "pre · seg 12"]
    assert names["side 2"].tolist() == ["pre · seg 34", "no segment", "seg 34", "seg 34", "post · seg 34"]
    # the 01_load overview: sides named, no pre/post columns, pre/post words only on decided rows
    overview = synapse_overview(table)
    assert {"side 1", "side 2"} <= set(overview.columns)
    assert not {"pre_side", "pre_seg_id", "post_seg_id"} & set(overview.columns)
    undecided = overview.iloc[1:4][["side 1", "side 2"]].to_numpy().ravel()
    assert not any("pre" in v or "post" in v for v in undecided)


# --------------------------------------------------------------------------------------
# where the points fall in the cube
# --------------------------------------------------------------------------------------
def test_markers_map_table_points_into_the_cube():
    row = synapse_row()
    marks = {m.kind: m for m in cube_markers(row, 32)}
    np.testing.assert_array_equal(marks["cleft"].zyx, [16, 16, 16])
    np.testing.assert_array_equal(marks["side1"].zyx, [16, 17, 18])  # (z, y, x) - centre + 16
    np.testing.assert_array_equal(marks["side2"].zyx, [19, 16, 12])
    assert (marks["side1"].label, marks["side2"].label) == ("post", "pre")
    # a smart crop moved the cube: the cleft centre is off the cube centre
    moved = {m.kind: m for m in cube_markers(synapse_row(crop_mode="presynapse", cube_center_x=74), 32)}
    np.testing.assert_array_equal(moved["cleft"].zyx, [16, 16, 12])
    # resampled grids: native points go through the same mapping as the build (2x coarser z here)
    grid = {"resampled": True, "native_voxel_z_nm": 16.0, "native_voxel_y_nm": 8.0, "native_voxel_x_nm": 8.0,
            "cube_voxel_z_nm": 8.0, "cube_voxel_y_nm": 8.0, "cube_voxel_x_nm": 8.0}
    res = {m.kind: m for m in cube_markers(synapse_row(**grid, cube_center_z=101), 32)}  # z 50 -> (50.5) * 2 - 0.5, rounded: 101
    np.testing.assert_array_equal(res["cleft"].zyx, [16, 16, 16])
    np.testing.assert_array_equal(res["side2"].zyx, [22, 16, 12])  # z 53 -> 106.5, rounded half up: 107
    # missing side point: no marker; no table centre in a cleft crop: the cube centre
    partial = synapse_row(pre_side=0, **dict.fromkeys(L.SIDE2_COLUMNS, np.nan))
    for c in L.CENTER_COLUMNS:
        partial.pop(c)
    kinds = {m.kind: m for m in cube_markers(partial, 32)}
    assert set(kinds) == {"cleft", "side1"} and kinds["side1"].label == "1"
    np.testing.assert_array_equal(kinds["cleft"].zyx, [16, 16, 16])
    # on the z plane through the centre: the cleft is in the slice, side 2 (z 19) is projected
    on_z = {m.kind: m for m in plane_marks(cube_markers(row, 32), "z", 16, 32)}
    assert on_z["cleft"].in_slice and on_z["side1"].in_slice and not on_z["side2"].in_slice
    assert (on_z["side2"].row, on_z["side2"].col) == (16, 12)
    on_y = {m.kind: m for m in plane_marks(cube_markers(row, 32), "y", 16, 32)}
    assert (on_y["side2"].row, on_y["side2"].col) == (19, 12)  # z rows, x columns
    assert plane_marks(cube_markers(synapse_row(**dict(zip(L.SIDE1_COLUMNS, (200, 61, 50)))), 32), "z", 16, 32)[1].kind == "side2"


# --------------------------------------------------------------------------------------
# the figures carry the markers
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_cubes(tiny_params):
    """Three synapses of the tiny demo, with and without a vesicle label (pre/post undecided)."""
    out = {}
    for name, labels in (("decided", {}), ("undecided", NO_VESICLE)):
        cfg = C.make_config({**tiny_params, "bboxes": ["bbox1"], "label_table": labels, "segmentation_type": 0})
        [b] = open_dataset(cfg)
        b.table = b.table.head(3)
        out[name] = (steps.make_cubes([b], cfg, progress=False), cfg)
    return out


def mark_lines(ax) -> dict[str, object]:
    return {line.get_gid(): line for line in ax.lines if str(line.get_gid()).startswith("snb-mark-")}


@pytest.mark.parametrize("which, labels", [("decided", {"pre", "post"}), ("undecided", {"1", "2"})])
def test_cube_slices_and_montage_mark_the_cleft_and_the_sides(small_cubes, which, labels):
    cubes, cfg = small_cubes[which]
    table = cubes.table
    assert polarity_known(table) == (which == "decided")
    fig = cube_slices(cubes, cfg, [0, 1])
    centre = cfg.cube_size // 2
    for ax in fig.axes:
        lines = mark_lines(ax)
        cleft = lines["snb-mark-cleft"]
        assert (cleft.get_xdata()[0], cleft.get_ydata()[0]) == (centre, centre)
        sides = {lines[k].get_label() for k in ("snb-mark-side1", "snb-mark-side2") if k in lines}
        assert sides and sides <= labels
        assert {t.get_text() for t in ax.texts} == sides
    row0 = table.iloc[0]
    z_marks = mark_lines(fig.axes[0])
    expected = dict(zip(("snb-mark-side1", "snb-mark-side2"), partner_labels(row0, short=True)))
    assert {k: z_marks[k].get_label() for k in expected if k in z_marks} == {k: v for k, v in expected.items() if k in z_marks}
    note = fig._suptitle.get_text()
    assert "+ cleft centre" in note and ("pre / post" in note) == (which == "decided")
    montage = cluster_montage(cubes, table, {0: [0, 1], 1: [2]}, cfg)
    drawn = [mark_lines(ax) for ax in montage.axes]
    assert sum("snb-mark-cleft" in d for d in drawn) == 9  # 3 synapses x 3 planes
    assert {d[k].get_label() for d in drawn for k in d if k != "snb-mark-cleft"} <= labels
    assert "+ cleft centre" in montage._suptitle.get_text()


def test_bbox_counts_count_decided_sides(small_cubes):
    for which, n in (("decided", 3), ("undecided", 0)):
        cubes, _ = small_cubes[which]
        assert bbox_counts(cubes.table, cubes.skipped)["sides decided"].tolist() == [n]
