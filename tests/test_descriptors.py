"""Descriptors of one cube (synapse_nb.cubes.descriptors) on planted shapes with known answers."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from synapse_nb.core import labels as L
from synapse_nb.cubes import SIZE_COLUMNS, morphometrics
from synapse_nb.cubes.descriptors import (
    DESCRIPTORS,
    NOT_ANNOTATED,
    Annotated,
    descriptor_columns,
    measure_cube,
    readable_table,
)

S = 48
ISO = (8.0, 8.0, 8.0)
ALL = Annotated()


def grid(shape=(S, S, S), voxel=ISO, centre=None):
    """Voxel-centre coordinates in nm, relative to ``centre`` (nm; default the cube centre)."""
    z, y, x = np.indices(shape).astype(float)
    c = np.array(shape) / 2 * np.array(voxel) if centre is None else np.asarray(centre, float)
    return z * voxel[0] - c[0], y * voxel[1] - c[1], x * voxel[2] - c[2]


def paint(*pairs, shape=(S, S, S)) -> np.ndarray:
    bits = np.zeros(shape, np.uint8)
    for mask, bit in pairs:
        bits[mask] |= np.uint8(bit)
    return bits


def measure(bits, raw=None, voxel=ISO, annotated=ALL):
    raw = np.full(bits.shape, 100, np.uint8) if raw is None else raw
    return measure_cube(raw, bits, voxel_nm=voxel, annotated=annotated)


def disk(voxel=ISO, radius=120.0, half_thick=4.0, shape=(S, S, S)):
    z, y, x = grid(shape, voxel)
    return (np.abs(z) <= half_thick) & (y**2 + x**2 <= radius**2)


# --- cleft shape ------------------------------------------------------------------------------
def test_flat_disk_is_flat_uncurved_one_piece_without_holes():
    m = measure(paint((disk(), L.BIT_CLEFT)))
    assert m["cleft_flatness"] == pytest.approx(1.0, abs=1e-9)  # one voxel thick: no variance across
    assert m["cleft_curvature_per_um"] == pytest.approx(0.0, abs=1e-6)
    assert m["cleft_components"] == 1 and m["cleft_holes"] == 0
    assert m["cleft_extent_nm"] == pytest.approx(240.0, abs=16.0)  # diameter between voxel centres
    assert m["cleft_area_um2"] == pytest.approx(math.pi * 0.120**2, rel=0.05)
    assert m["cleft_volume_um3"] == pytest.approx(m["cleft_volume_vox"] * 512e-9)


def test_curved_cap_has_the_planted_curvature():
    R = 320.0  # nm: mean curvature 1/R = 3.125 per um
    z, y, x = grid()
    r = np.sqrt((z - R) ** 2 + y**2 + x**2)  # sphere centred R above the cube centre
    cap = (np.abs(r - R) <= 6.0) & (y**2 + x**2 <= 150.0**2) & (z < R)
    m = measure(paint((cap, L.BIT_CLEFT)))
    assert m["cleft_curvature_per_um"] == pytest.approx(1000 / R, rel=0.1)
    assert m["cleft_flatness"] < 0.9  # the cap bulges out of its plane


def test_two_pieces_and_perforations_are_counted():
    z, y, x = grid()
    left = (np.abs(z) <= 4) & ((y + 60) ** 2 + x**2 <= 40.0**2)
    right = (np.abs(z) <= 4) & ((y - 60) ** 2 + x**2 <= 40.0**2)
    assert measure(paint((left, L.BIT_CLEFT), (right, L.BIT_CLEFT2)))["cleft_components"] == 2
    holes = (((y - 50) ** 2 + x**2) <= 24.0**2) | (((y + 50) ** 2 + x**2) <= 24.0**2)
    m = measure(paint((disk(radius=160.0) & ~holes, L.BIT_CLEFT)))
    assert m["cleft_holes"] == 2 and m["cleft_components"] == 1


def test_tilted_disk_still_measures_flat_and_has_no_false_holes():
    z, y, x = grid()
    n = np.array([1.0, 1.0, 0.5]) / 1.5
    s = z * n[0] + y * n[1] + x * n[2]
    tilted = (np.abs(s) <= 6.0) & (z**2 + y**2 + x**2 - s**2 <= 130.0**2)
    m = measure(paint((tilted, L.BIT_CLEFT)))
    assert m["cleft_holes"] == 0
    assert m["cleft_curvature_per_um"] < 0.3
    assert m["cleft_area_um2"] == pytest.approx(math.pi * 0.130**2, rel=0.1)


# --- vesicle cloud, mitochondria, sizes ----------------------------------------------------------
def test_vesicle_cloud_spread_and_distance_to_the_cleft():
    z, y, x = grid()
    cloud = (z + 100) ** 2 + y**2 + x**2 <= 56.0**2  # centroid 100 nm below the cleft plane
    m = measure(paint((disk(), L.BIT_CLEFT), (cloud, L.BIT_VESICLE)))
    assert m["vesicle_cleft_distance_nm"] == pytest.approx(100.0, abs=1e-6)  # straight down onto the disk
    assert m["vesicle_spread_nm"] == pytest.approx(math.sqrt(3 / 5) * 56.0, rel=0.05)
    assert m["vesicle_volume_um3"] == pytest.approx(4 / 3 * math.pi * 0.056**3, rel=0.05)


def test_mitochondrion_distance_to_the_cleft():
    z, y, x = grid()
    mito = (z + 120) ** 2 + y**2 + x**2 <= 40.0**2  # nearest voxel centre at z = -80
    bits = paint((disk(), L.BIT_CLEFT), (mito, L.BIT_MITO | L.BIT_MITO_ANY))
    m = measure(bits)
    assert m["mito_cleft_distance_nm"] == pytest.approx(80.0, abs=1e-6)
    assert m["mito_volume_um3"] == pytest.approx(np.count_nonzero(mito) * 512e-9)


def test_voxel_counts_match_morphometrics():
    z, y, x = grid()
    pre = z < -8
    bits = paint((pre, L.BIT_PRE), (z > 8, L.BIT_POST), (disk(), L.BIT_CLEFT),
                 ((z + 120) ** 2 + y**2 + x**2 <= 40.0**2, L.BIT_MITO | L.BIT_MITO_ANY))
    m = measure(bits)
    for k, v in morphometrics(bits).items():
        assert m[k] == pytest.approx(v, nan_ok=True), k


# --- partners -------------------------------------------------------------------------------------
def test_contact_area_of_facing_slabs():
    z, y, x = grid()
    face = (np.abs(y) <= 80) & (np.abs(x) <= 80)
    pre = (z < -12) & (z >= -60) & face  # 3-voxel gap (24 nm) between the partners
    post = (z > 12) & (z <= 60) & face
    m = measure(paint((pre, L.BIT_PRE), (post, L.BIT_POST)))
    assert m["contact_area_um2"] == pytest.approx(0.168**2, rel=0.15)  # 21 x 21 voxels of 8 nm
    far = paint((pre, L.BIT_PRE), (post & (z > 120), L.BIT_POST))
    assert measure(far)["contact_area_um2"] == 0.0


def test_post_shape_tells_a_spine_head_from_a_shaft():
    z, y, x = grid()
    cleft = (np.abs(z) <= 4) & (y**2 + x**2 <= 40.0**2)
    head = (z - 90) ** 2 + y**2 + x**2 <= 80.0**2  # a ball resting on the cleft
    m_head = measure(paint((cleft, L.BIT_CLEFT), (head & (z > 8), L.BIT_POST)))
    assert m_head["post_convexity"] == pytest.approx(1.0, abs=0.06)
    assert m_head["post_open_fraction"] < 0.02  # closed: does not reach the ball's surface
    assert m_head["post_volume_um3"] == pytest.approx(np.count_nonzero(head & (z > 8)) * 512e-9)
    shaft = ((z - 110) ** 2 + y**2 <= 100.0**2) & (z > 8)  # a dendrite along x through the cube
    m_shaft = measure(paint((cleft, L.BIT_CLEFT), (shaft, L.BIT_POST)))
    assert m_shaft["post_open_fraction"] > 0.1
    assert m_shaft["post_convexity"] == pytest.approx(1.0, abs=0.06)
    neck = (y**2 + x**2 <= 12.0**2) & (z > 8) & (z < 130)
    dendrite = (z - 150) ** 2 + x**2 <= 30.0**2
    spine = ((z - 40) ** 2 + y**2 + x**2 <= 36.0**2) | neck | dendrite
    m_spine = measure(paint((cleft, L.BIT_CLEFT), (spine & (z > 8), L.BIT_POST)))
    assert m_spine["post_convexity"] < 0.7  # head, thin neck and a dendrite: far from convex


# --- missing data ---------------------------------------------------------------------------------
def test_not_annotated_is_nan_and_annotated_but_absent_is_zero():
    bits = paint((disk(), L.BIT_CLEFT))
    absent = measure(bits)
    assert absent["vesicle_volume_um3"] == 0.0 and absent["mito_volume_um3"] == 0.0
    assert math.isnan(absent["vesicle_spread_nm"]) and math.isnan(absent["mito_cleft_distance_nm"])
    assert absent["pre_volume_um3"] == 0.0 and absent["contact_area_um2"] == 0.0
    missing = measure(bits, annotated=Annotated(vesicle=False, mito=False, partners=False))
    for name, d in DESCRIPTORS.items():
        if set(d.needs) & {"vesicle", "mito", "partners"}:
            assert math.isnan(missing[name]), name
    assert missing["cleft_volume_um3"] > 0 and not math.isnan(missing["cleft_flatness"])
    assert missing["vesicle_volume_vox"] == 0  # voxel counts stay as counted


def test_annotated_follows_label_ids_and_volumes():
    ids = L.LabelIds(mito=0, vesicle=3, cleft=0, cleft2=4)
    a = Annotated.from_ids(ids, has_seg=False)
    assert (a.vesicle, a.cleft, a.mito, a.partners) == (True, True, False, False)
    assert not Annotated.from_ids(ids, has_seg=True, has_mask=False).vesicle


# --- anisotropic voxels ---------------------------------------------------------------------------
def test_anisotropic_voxels_measure_the_same_physical_shapes():
    shape, voxel = (S // 2, S, S), (16.0, 8.0, 8.0)
    z, y, x = grid(shape, voxel)
    cleft = (np.abs(z) <= 8) & (y**2 + x**2 <= 120.0**2)  # one 16 nm voxel thick
    cloud = (z + 112) ** 2 + y**2 + x**2 <= 64.0**2
    m = measure(paint((cleft, L.BIT_CLEFT), (cloud, L.BIT_VESICLE), shape=shape), voxel=voxel)
    assert m["cleft_area_um2"] == pytest.approx(math.pi * 0.120**2, rel=0.05)
    assert m["cleft_extent_nm"] == pytest.approx(240.0, abs=16.0)
    assert m["cleft_flatness"] == pytest.approx(1.0, abs=1e-9)
    assert m["vesicle_cleft_distance_nm"] == pytest.approx(112.0, abs=1e-6)
    assert m["vesicle_volume_um3"] == pytest.approx(4 / 3 * math.pi * 0.064**3, rel=0.08)
    R = 320.0
    r = np.sqrt((z - R) ** 2 + y**2 + x**2)
    cap = (np.abs(r - R) <= 8.0) & (y**2 + x**2 <= 150.0**2) & (z < R)
    assert measure(paint((cap, L.BIT_CLEFT), shape=shape), voxel=voxel)["cleft_curvature_per_um"] == pytest.approx(
        1000 / R, rel=0.15
    )


# --- intensity ------------------------------------------------------------------------------------
def test_contrasts_do_not_follow_brightness_but_raw_statistics_do():
    rng = np.random.default_rng(0)
    z, y, x = grid()
    cloud = (z + 100) ** 2 + y**2 + x**2 <= 56.0**2
    post = z > 4
    bits = paint((disk(), L.BIT_CLEFT), (cloud, L.BIT_VESICLE), (post, L.BIT_POST), (z < -4, L.BIT_PRE))
    raw = rng.normal(120, 10, bits.shape)
    raw[(z > 4) & (z < 30)] -= 50  # a dark PSD next to the cleft
    raw[cloud] += 30
    a = measure(bits, raw=raw.astype(np.float32))
    b = measure(bits, raw=(0.5 * raw + 20).astype(np.float32))
    assert b["raw_mean_cube"] == pytest.approx(0.5 * a["raw_mean_cube"] + 20, rel=1e-4)
    for name, d in DESCRIPTORS.items():
        if name.startswith(("contrast_", "psd_", "vesicle_texture")):
            assert d.clustered and b[name] == pytest.approx(a[name], rel=1e-3, abs=1e-4, nan_ok=True), name
        if name.startswith("raw_"):
            assert not d.clustered
    assert a["contrast_vesicle"] > 0.3 and a["psd_darkness"] > 1.0


# --- registry and tables --------------------------------------------------------------------------
def test_registry_columns_and_docs():
    assert set(SIZE_COLUMNS) <= set(DESCRIPTORS)
    table = pd.DataFrame([measure(paint((disk(), L.BIT_CLEFT)))])
    cols = descriptor_columns(table)
    assert cols == [n for n in DESCRIPTORS if DESCRIPTORS[n].clustered]
    assert "raw_mean_cube" in descriptor_columns(table, clustered_only=False) and "raw_mean_cube" not in cols
    assert descriptor_columns(table[["cleft_flatness", "vesicle_volume_vox"]]) == ["cleft_flatness"]
    doc = (Path(__file__).resolve().parents[1] / "docs" / "cubes.md").read_text()
    undocumented = [n for n in DESCRIPTORS if f"`{n}`" not in doc]
    assert not undocumented, f"docs/cubes.md lacks {undocumented}"


def test_readable_table_units_rounding_and_not_annotated():
    bits = paint((disk(), L.BIT_CLEFT))
    rows = [measure(bits), measure(bits, annotated=Annotated(vesicle=False))]
    out = readable_table(pd.DataFrame(rows).assign(Var1=["a", "b"]))
    assert "vesicle volume (um^3)" in out.columns and "cleft curvature (1/um)" in out.columns
    assert "cleft flatness" in out.columns and "Var1" in out.columns
    assert out["vesicle volume (um^3)"].tolist()[1] == NOT_ANNOTATED
    assert out["vesicle volume (um^3)"].tolist()[0] == 0.0
    assert math.isnan(out["vesicle spread (nm)"].tolist()[0])  # annotated but absent: NaN, not "not annotated"
    area = out["cleft area (um^2)"].tolist()[0]
    assert area == float(f"{rows[0]['cleft_area_um2']:.3g}")
