"""Canonical orientation of cubes: a synthetic synapse in several poses gives the same oriented cube."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from synapse_nb.core import labels as L
from synapse_nb.core.config import Config
from synapse_nb.core.errors import DataError
from synapse_nb.cubes.build import build_cubes, build_synapse
from synapse_nb.cubes.geometry import CubeGeometry, orient_window_edge, valid_mask_from_pads
from synapse_nb.cubes.orientation import (
    BASIS_NO_CLEFT,
    BASIS_PREPOST,
    BASIS_SIDES,
    cleft_frame,
    cube_to_volume,
    orient_cube,
    rotation_from_info,
    volume_to_cube,
)
from synapse_nb.cubes.store import CubeSet
from synapse_nb.data.bbox import BboxData

IDS = L.LabelIds(mito=1, vesicle=3, cleft=2, cleft2=4)
PRE_ID, POST_ID = 10, 20
S = 32  # cube edge
N = 72  # volume edge: the synapse's oriented source window (58^3) lies inside
C = np.array([36.0, 36.0, 36.0])  # synapse centre (z, y, x)


def _frame(normal, long_axis):
    n = np.asarray(normal, float)
    n /= np.linalg.norm(n)
    u = np.asarray(long_axis, float)
    u -= (u @ n) * n
    u /= np.linalg.norm(u)
    return n, u, np.cross(u, n)


def make_synapse(normal=(0.55, 0.35, 0.76), long_axis=(0.0, 1.0, 0.0), centre=C, shape=(N, N, N), seed=0):
    """Raw, seg, mask and (x, y, z) table points of one synapse with cleft normal ``normal`` (pre -> post).

    Elliptic cleft disk (semi-axes 9 and 4 voxels along ``long_axis`` and across), pre and post
    neurites on either side, a vesicle cloud in pre shifted along the long axis, a mitochondrion
    in pre, and a smooth texture in raw so intensities have structure everywhere.
    """
    n, u, v = _frame(normal, long_axis)
    zyx = np.indices(shape, dtype=np.float64).reshape(3, -1).T - centre
    tn, tu, tv = zyx @ n, zyx @ u, zyx @ v
    r = np.linalg.norm(zyx, axis=1)

    def grid(sel):
        return sel.reshape(shape)

    seg = np.zeros(shape, np.uint32)
    seg[grid((tn < -1.0) & (tn > -22) & (np.abs(tu) < 20) & (np.abs(tv) < 20))] = PRE_ID
    seg[grid((tn > 1.0) & (tn < 22) & (np.abs(tu) < 20) & (np.abs(tv) < 20))] = POST_ID
    mask = np.zeros(shape, np.uint8)
    mask[grid((np.abs(tn) <= 1.0) & ((tu / 9) ** 2 + (tv / 4) ** 2 <= 1))] = IDS.cleft
    ves_c = -7 * n + 3 * u
    mask[grid(np.linalg.norm(zyx - ves_c, axis=1) <= 4)] = IDS.vesicle
    mito_c = -14 * n - 5 * v
    mask[grid(np.linalg.norm(zyx - mito_c, axis=1) <= 3)] = IDS.mito
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    raw = 100 + 400 * texture / texture.std()
    raw += np.where(seg == PRE_ID, 30, 0) + np.where(seg == POST_ID, -20, 0)
    raw += np.where(mask == IDS.cleft, -60, 0) + np.where(mask == IDS.vesicle, 50, 0)
    raw += 5 * grid(r) / r.max()
    raw = np.clip(raw + 1000, 0, 65535).astype(np.uint16)
    cz = centre
    points = {
        "center": tuple(cz[::-1]),
        "side1": tuple(np.round(cz - 5 * n)[::-1]),
        "side2": tuple(np.round(cz + 5 * n)[::-1]),
    }
    return raw, seg, mask, points


def rotate(volumes, points, k, axes):
    """``np.rot90`` of every volume and the (x, y, z) points mapped the same way."""
    shape = volumes[0].shape
    out = [np.ascontiguousarray(np.rot90(v, k, axes)) for v in volumes]
    # where a marker voxel lands tells how indices move (checked, not derived)
    def move(p_xyz):
        p = np.asarray(p_xyz, float)[::-1].astype(int)
        marker = np.zeros(shape, bool)
        marker[tuple(p)] = True
        return tuple(np.argwhere(np.rot90(marker, k, axes))[0][::-1].astype(float))

    return out, {key: move(p) for key, p in points.items()}


def build(volumes, points, orient, size=S):
    raw, seg, mask = volumes
    return build_synapse(
        raw, seg, mask, points["center"], points["side1"], points["side2"], IDS, CubeGeometry(size=size, orient=orient)
    )


def iou(a, b):
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


def corr(a, b):
    return float(np.corrcoef(a.astype(float).ravel(), b.astype(float).ravel())[0, 1])


@pytest.fixture(scope="module")
def synapse():
    raw, seg, mask, points = make_synapse()
    return (raw, seg, mask), points


@pytest.fixture(scope="module")
def oriented(synapse):
    return build(*synapse, orient=True)


@pytest.fixture(scope="module")
def plain(synapse):
    return build(*synapse, orient=False)


# --- the same synapse in another pose ---------------------------------------------------------------
@pytest.mark.parametrize("k, axes", [(1, (0, 1)), (1, (0, 2)), (1, (1, 2)), (3, (1, 2))])
def test_oriented_cubes_agree_across_poses_plain_ones_do_not(synapse, oriented, plain, k, axes):
    volumes, points = synapse
    rvol, rpts = rotate(volumes, points, k, axes)
    r_or = build(rvol, rpts, orient=True)
    r_pl = build(rvol, rpts, orient=False)
    for bit in (L.BIT_PRE, L.BIT_POST, L.BIT_CLEFT, L.BIT_VESICLE):
        a, b = (oriented.bits & bit) != 0, (r_or.bits & bit) != 0
        assert iou(a, b) > 0.95, bit
    assert corr(oriented.raw, r_or.raw) > 0.98
    assert iou((plain.bits & L.BIT_CLEFT) != 0, (r_pl.bits & L.BIT_CLEFT) != 0) < 0.5
    assert corr(plain.raw, r_pl.raw) < 0.5
    assert r_or.info["orientation_basis"] == BASIS_PREPOST
    # the frame turned with the volume: R' = R Q^T for the rotation Q that maps the poses
    q = np.rint(rotation_from_info(r_or.info).T @ rotation_from_info(oriented.info))
    assert abs(np.linalg.det(q)) == pytest.approx(1.0)


def test_oriented_cube_puts_pre_at_low_z_and_the_cleft_flat(oriented):
    bits = oriented.bits
    zc = S // 2
    z_of = {b: np.argwhere((bits & b) != 0)[:, 0] for b in (L.BIT_PRE, L.BIT_POST, L.BIT_CLEFT, L.BIT_VESICLE)}
    assert z_of[L.BIT_PRE].mean() < zc - 3 and z_of[L.BIT_POST].mean() > zc + 3
    assert z_of[L.BIT_VESICLE].mean() < zc
    assert np.ptp(z_of[L.BIT_CLEFT]) <= 3  # a 3-voxel thick sheet, now in an xy plane
    cleft = np.argwhere((bits & L.BIT_CLEFT) != 0)
    assert np.ptp(cleft[:, 2]) > np.ptp(cleft[:, 1]) + 4  # long axis along x
    rot = rotation_from_info(oriented.info)
    assert np.allclose(rot @ rot.T, np.eye(3)) and np.linalg.det(rot) == pytest.approx(1.0)
    assert rot[0] @ _frame((0.55, 0.35, 0.76), (0, 1, 0))[0] > 0.99  # z axis = the true normal


def test_no_empty_corner_far_from_the_border(oriented, synapse):
    assert oriented.valid_mask().all()
    raw = synapse[0][0]
    for corner in np.ndindex(2, 2, 2):
        idx = np.array([c * (S - 1) for c in corner])
        src = cube_to_volume(idx, oriented.info, S)[0]
        assert np.all(src >= 0) and np.all(src <= N - 1)
        expected = ndimage.map_coordinates(raw.astype(float), src[:, None], order=1)[0]
        assert abs(float(oriented.raw[tuple(idx)]) - expected) <= 0.5  # the volume's own voxels, not padding
    assert oriented.info["orient_window"] == orient_window_edge(S)
    assert all(oriented.info[f"orient_pad_{a}_{s}"] == 0 for a in "zyx" for s in ("before", "after"))


def test_oriented_bits_are_only_valid_combinations(oriented, synapse):
    volumes, points = synapse
    big = build(volumes, points, orient=False, size=orient_window_edge(S))  # the source cube itself
    assert set(np.unique(oriented.bits)) <= set(np.unique(big.bits))
    b = oriented.bits
    assert not np.any(((b & L.BIT_PRE) != 0) & ((b & L.BIT_POST) != 0))
    assert np.all((b & L.BIT_MITO_ANY)[(b & L.BIT_MITO) != 0])


def test_measurements_come_from_the_plain_cube(oriented, plain):
    shared = [k for k in plain.info if k in oriented.info]
    assert len(shared) == len(plain.info)
    for k in shared:
        a, b = plain.info[k], oriented.info[k]
        assert a == b or (isinstance(a, float) and np.isnan(a) and np.isnan(b)), k


def test_points_map_back_to_the_volume(oriented, synapse):
    _, points = synapse
    side1_zyx = np.asarray(points["side1"])[::-1]
    q = volume_to_cube(side1_zyx, oriented.info, S)[0]
    assert q[0] < S // 2 - 3  # the presynaptic side point lies at low z
    assert np.allclose(cube_to_volume(q, oriented.info, S)[0], side1_zyx)
    # the oriented cube's cleft voxels map onto cleft voxels of the volume
    _, _, mask = synapse[0]
    cleft_cube = np.argwhere((oriented.bits & L.BIT_CLEFT) != 0)
    back = np.rint(cube_to_volume(cleft_cube, oriented.info, S)).astype(int)
    assert np.mean(mask[tuple(back.T)] == IDS.cleft) > 0.95


# --- orient off and axis-aligned synapses -----------------------------------------------------------
def test_orient_false_is_the_plain_cube_byte_for_byte(synapse, plain):
    volumes, points = synapse
    raw, seg, mask = volumes
    default = build_synapse(raw, seg, mask, points["center"], points["side1"], points["side2"], IDS, CubeGeometry(size=S))
    assert np.array_equal(default.raw, plain.raw) and np.array_equal(default.bits, plain.bits)
    assert default.info.keys() == plain.info.keys() and "oriented" not in plain.info


def test_an_already_canonical_synapse_is_not_resampled(tmp_path):
    """Normal +z, long axis x, vesicle shifted to +x: the identity frame, the plain cube exactly."""
    raw, seg, mask, points = make_synapse(normal=(1, 0, 0), long_axis=(0, 0, 1))
    vols = (raw, seg, mask)
    o, p = build(vols, points, orient=True), build(vols, points, orient=False)
    assert np.array_equal(rotation_from_info(o.info), np.eye(3))
    assert np.array_equal(o.raw, p.raw) and np.array_equal(o.bits, p.bits)


# --- the border -------------------------------------------------------------------------------------
def test_valid_mask_of_a_cube_near_the_border():
    centre = np.array([14.0, 36.0, 30.0])
    raw, seg, mask, points = make_synapse(centre=centre, shape=(N, N, N))
    cube = build((raw, seg, mask), points, orient=True)
    valid = cube.valid_mask()
    assert 0.2 < valid.mean() < 1.0
    assert np.all(valid[cube.bits != 0])  # labels exist only where the source was inside the volume
    pad = cube.info["orient_pad_value"]
    assert np.mean(cube.raw[~valid] == pad) > 0.7
    # same as resampling the source cube's valid region by the nearest voxel
    E = cube.info["orient_window"]
    src = np.zeros((E,) * 3, bool)
    src[tuple(slice(cube.info[f"orient_pad_{a}_before"], E - cube.info[f"orient_pad_{a}_after"]) for a in "zyx")] = True
    _, resampled = orient_cube(np.zeros((E,) * 3, np.uint8), src.astype(np.uint8), rotation_from_info(cube.info), size=S)
    assert np.mean(resampled.astype(bool) == valid) > 0.999
    # a table row (as Grad-CAM reads it) gives the same mask
    row = pd.DataFrame([cube.info]).iloc[0]
    assert np.array_equal(valid_mask_from_pads(S, row), valid)


# --- the frame's fallbacks --------------------------------------------------------------------------
def _disk_bits(with_cleft=True, with_prepost=True):
    E = 24
    bits = np.zeros((E,) * 3, np.uint8)
    c = E // 2
    if with_cleft:
        bits[c, c - 6 : c + 7, c - 3 : c + 4] = L.BIT_CLEFT  # normal along z, long axis along y
    if with_prepost:
        bits[c + 2 : c + 8, c - 5 : c + 6, c - 5 : c + 6] = L.BIT_PRE  # pre at high z
        bits[c - 8 : c - 2, c - 5 : c + 6, c - 5 : c + 6] = L.BIT_POST
    return bits


def test_frame_from_the_pre_and_post_bits():
    f = cleft_frame(_disk_bits(), size=16)
    assert f.basis == BASIS_PREPOST
    assert np.allclose(f.rotation[0], [-1, 0, 0])  # pre at high z: the normal flips
    assert abs(f.rotation[2][1]) == pytest.approx(1.0)  # long axis (y) becomes x


def test_frame_from_side_points_when_pre_post_undecided():
    f = cleft_frame(_disk_bits(with_prepost=False), size=16, pre_side=0, side1=np.array([3, 0, 0]), side2=np.array([-3, 0, 0]))
    assert f.basis == BASIS_SIDES and np.allclose(f.rotation[0], [-1, 0, 0])


def test_frame_without_cleft_uses_the_side_points():
    d = np.array([1.0, 2.0, -2.0])
    f = cleft_frame(_disk_bits(with_cleft=False, with_prepost=False), size=16, side1=-d, side2=d)
    assert f.basis == BASIS_NO_CLEFT and np.allclose(f.rotation[0], d / 3)
    assert np.allclose(f.rotation @ f.rotation.T, np.eye(3)) and np.linalg.det(f.rotation) == pytest.approx(1.0)


# --- geometry, store and pipeline -------------------------------------------------------------------
def test_geometry_meta_round_trip_and_old_meta():
    g = CubeGeometry(size=S, orient=True)
    assert CubeGeometry(**g.as_dict()) == g and g.source_edge == orient_window_edge(S) >= S * 3**0.5
    old = {"size": S, "crop_mode": "cleft", "presynapse_weight": 0.7}
    assert CubeGeometry(**old).orient is False
    with pytest.raises(ValueError, match="orient"):
        CubeGeometry(orient="yes")  # type: ignore[arg-type]


def test_the_pipeline_passes_orient_cubes():
    from synapse_nb.pipeline.steps import geometry  # imports the whole pipeline: only here

    assert geometry(Config(cube_size=S, orient_cubes=True)).orient is True
    assert geometry(Config(cube_size=S)).orient is False


def _bbox(volumes, points, voxel=None):
    raw, seg, mask = volumes
    rec = {L.BBOX_COLUMN: "b", L.NAME_COLUMN: "syn", "table_row": 2}
    for cols, key in ((L.CENTER_COLUMNS, "center"), (L.SIDE1_COLUMNS, "side1"), (L.SIDE2_COLUMNS, "side2")):
        rec.update(dict(zip(cols, points[key])))
    return BboxData(name="b", raw=raw, seg=seg, mask=mask, table=pd.DataFrame([rec]), label_ids=IDS, voxel_size_nm=voxel)


def test_cube_set_keeps_the_orientation(synapse, oriented, tmp_path):
    cs = build_cubes([_bbox(*synapse)], CubeGeometry(size=S, orient=True), progress=False)
    assert np.array_equal(cs.raw[0], oriented.raw) and np.array_equal(cs.bits[0], oriented.bits)
    loaded = CubeSet.load(cs.save(tmp_path / "cubes"))
    assert loaded.geometry.orient is True
    row = loaded.table.iloc[0]
    assert np.allclose(rotation_from_info(row), rotation_from_info(oriented.info))
    assert np.array_equal(valid_mask_from_pads(S, row), oriented.valid_mask())


def test_anisotropic_voxels_are_refused(synapse):
    with pytest.raises(DataError, match="isotropic"):
        build_cubes([_bbox(*synapse, voxel=(40.0, 8.0, 8.0))], CubeGeometry(size=S, orient=True), progress=False)
