"""Cube building on small hand-made volumes where every right answer is known (rules: docs/cubes.md)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from synapse_nb.core import labels as L
from synapse_nb.core.errors import DataError
from synapse_nb.cubes.build import SynapseError, build_cubes, build_synapse
from synapse_nb.cubes.components import closest_component, dilate6
from synapse_nb.cubes.geometry import CubeGeometry
from synapse_nb.cubes.morphometry import add_physical_units, cleft_area, morphometrics
from synapse_nb.cubes.rendering import RenderSettings, render, segmentation_mask
from synapse_nb.cubes.store import CubeSet
from synapse_nb.data.bbox import BboxData

IDS = L.LabelIds(mito=1, vesicle=3, cleft=2, cleft2=4)  # the seed's bbox2/bbox5 ids
N = 40  # volume edge
S = 16  # cube edge
C = 20  # cleft centre (z = y = x)
CUBE = (slice(C - S // 2, C - S // 2 + S),) * 3  # the cleft-centred cube in volume coordinates
PRE_ID, POST_ID = 10, 20


def encode(z, y, x):
    """Raw value that tells where a voxel came from (uint16)."""
    return z * 1600 + y * 40 + x


def make_volume():
    """40^3 bbox, synapse at (20, 20, 20).

    pre neurite (id 10) x in [10,20), post neurite (id 20) x in [21,30), both z, y in [12,28);
    cleft plane x=20 (z 17-23, y 16-23), cleft2 continues it (y 24-25) plus a far cleft2 voxel;
    a far cleft blob; vesicle cloud A (near, inside pre), B (far, inside pre);
    mitochondrion M1 (near, inside pre) and M2 (far, inside post).
    """
    z, y, x = np.indices((N, N, N))
    raw = encode(z, y, x).astype(np.uint16)
    seg = np.zeros((N, N, N), np.uint32)
    seg[12:28, 12:28, 10:20] = PRE_ID
    seg[12:28, 12:28, 21:30] = POST_ID
    mask = np.zeros((N, N, N), np.uint8)
    parts = {}

    def put(name, label, box):
        mask[box] = label
        p = np.zeros((N, N, N), bool)
        p[box] = True
        parts[name] = p

    put("cleft", IDS.cleft, np.s_[17:24, 16:24, 20:21])
    put("cleft2", IDS.cleft2, np.s_[17:24, 24:26, 20:21])
    put("cleft2_far", IDS.cleft2, np.s_[26:27, 13:14, 22:23])
    put("cleft_far", IDS.cleft, np.s_[13:14, 13:14, 24:27])
    put("ves_a", IDS.vesicle, np.s_[18:22, 18:22, 14:18])
    put("ves_b", IDS.vesicle, np.s_[13:15, 13:15, 13:15])
    put("mito1", IDS.mito, np.s_[20:23, 12:15, 16:19])
    put("mito2", IDS.mito, np.s_[25:27, 25:27, 25:27])
    return raw, seg, mask, parts


SIDE_PRE = (15, 20, 20)  # x, y, z inside the pre neurite
SIDE_POST = (25, 20, 20)
CENTER = (C, C, C)


@pytest.fixture(scope="module")
def volume():
    return make_volume()


@pytest.fixture(scope="module")
def cube(volume):
    raw, seg, mask, _ = volume
    return build_synapse(raw, seg, mask, CENTER, SIDE_PRE, SIDE_POST, IDS, CubeGeometry(size=S))


def expected_masks(seg, parts):
    pre = (seg == PRE_ID)[CUBE]
    post = (seg == POST_ID)[CUBE]
    ves = parts["ves_a"][CUBE]
    cleft = parts["cleft"][CUBE]
    cleft2 = parts["cleft2"][CUBE]
    mito_any = (parts["mito1"] | parts["mito2"])[CUBE]
    return {
        0: np.ones((S, S, S), bool),
        1: pre,
        2: post,
        3: pre | post,
        4: ves | cleft | cleft2,
        5: pre | post | ves | cleft,
        6: ves,
        7: cleft | cleft2,
        8: parts["mito1"][CUBE],
        9: ves | cleft,
        10: cleft | pre,
        11: (cleft | pre) & ~ndimage.binary_dilation(mito_any, iterations=2),
    }


# --- segmentation types -------------------------------------------------------------------
@pytest.mark.parametrize("seg_type", sorted(L.SEGMENTATION_TYPES))
def test_every_segmentation_type_mask_is_exact(volume, cube, seg_type):
    _, seg, _, parts = volume
    expected = expected_masks(seg, parts)[seg_type]
    got = segmentation_mask(cube.bits, seg_type)
    assert got.shape == (S, S, S)
    assert got.any()
    np.testing.assert_array_equal(got, expected)


def test_type11_actually_removes_mitochondria(volume, cube):
    m10 = segmentation_mask(cube.bits, 10)
    m11 = segmentation_mask(cube.bits, 11)
    assert m11.sum() < m10.sum()
    assert not (m11 & ~m10).any()


def test_cube_is_centred_and_raw_is_native(cube):
    assert cube.raw.dtype == np.uint16 and cube.bits.dtype == np.uint8
    assert cube.raw[S // 2, S // 2, S // 2] == encode(C, C, C)
    np.testing.assert_array_equal(cube.raw, make_volume()[0][CUBE])
    assert (cube.info["cube_center_z"], cube.info["cube_center_y"], cube.info["cube_center_x"]) == (C, C, C)
    assert cube.valid_mask().all()
    assert np.isnan(cube.info["pad_value"])


def test_mito_any_bit_holds_every_mitochondrion(volume, cube):
    _, _, _, parts = volume
    got = (cube.bits & L.BIT_MITO_ANY) != 0
    np.testing.assert_array_equal(got, (parts["mito1"] | parts["mito2"])[CUBE])


def test_cleft_and_cleft2_with_the_same_id(volume):
    raw, seg, mask, parts = volume
    ids = L.LabelIds(mito=1, vesicle=3, cleft=2, cleft2=2)
    mask = mask.copy()
    mask[mask == IDS.cleft2] = 2  # the cleft2 pieces become cleft: plane now y 16-25
    c = build_synapse(raw, seg, mask, CENTER, SIDE_PRE, SIDE_POST, ids, CubeGeometry(size=S))
    sheet = (parts["cleft"] | parts["cleft2"])[CUBE]
    np.testing.assert_array_equal((c.bits & L.BIT_CLEFT) != 0, sheet)
    np.testing.assert_array_equal((c.bits & L.BIT_CLEFT2) != 0, sheet)


def test_segmentation_mask_batch_and_bad_type(cube):
    batch = np.stack([cube.bits, np.zeros_like(cube.bits)])
    for t in (0, 5, 11):
        m = segmentation_mask(batch, t)
        np.testing.assert_array_equal(m[0], segmentation_mask(cube.bits, t))
        assert m[1].any() == (t == 0)
    with pytest.raises(ValueError, match="segmentation_type 12"):
        segmentation_mask(cube.bits, 12)


# --- closest component ---------------------------------------------------------------------
def test_closest_component_picks_nearest_and_uses_6_connectivity():
    b = np.zeros((10, 10, 10), bool)
    b[1:3, 1:3, 1:3] = True  # far block
    b[6, 6, 6] = True  # near voxel...
    b[7, 7, 7] = True  # ...diagonal neighbour: a separate 6-connected component
    got = closest_component(b, (5, 5, 5))
    expected = np.zeros_like(b)
    expected[6, 6, 6] = True
    np.testing.assert_array_equal(got, expected)
    far = closest_component(b, (0, 0, 0))
    assert far.sum() == 8 and far[1:3, 1:3, 1:3].all()
    assert not closest_component(np.zeros((4, 4, 4), bool), (1, 1, 1)).any()


def test_closest_component_distance_from_any_voxel_not_centroid():
    b = np.zeros((30, 30, 30), bool)
    b[10, 0:30, 0] = True  # long bar: centroid far, but its end is near the target
    b[15, 20:23, 20:23] = True  # compact block, nearest voxel farther than the bar's end
    target = (12, 2, 2)
    got = closest_component(b, target)
    assert got[10, :, 0].all() and got.sum() == 30


def test_dilate6_equals_scipy():
    rng = np.random.default_rng(1)
    m = rng.random((12, 13, 14)) > 0.97
    for it in (1, 2, 3):
        np.testing.assert_array_equal(dilate6(m, it), ndimage.binary_dilation(m, iterations=it))
    batch = np.stack([m, np.zeros_like(m)])
    got = dilate6(batch, 2)
    np.testing.assert_array_equal(got[0], ndimage.binary_dilation(m, iterations=2))
    assert not got[1].any()  # no leaking across cubes of a batch


# --- pre / post decision ---------------------------------------------------------------------
def test_pre_on_side_1(cube):
    info = cube.info
    assert info["pre_side"] == 1 and info["pre_seg_id"] == PRE_ID and info["post_seg_id"] == POST_ID
    assert (info["overlap_side1"], info["overlap_side2"]) == (64, 0)
    assert info["ambiguous"] is False and info["ambiguity_reason"] == ""


def test_pre_on_side_2(volume):
    raw, seg, mask, _ = volume
    c = build_synapse(raw, seg, mask, CENTER, SIDE_POST, SIDE_PRE, IDS, CubeGeometry(size=S))
    info = c.info
    assert info["pre_side"] == 2 and info["pre_seg_id"] == PRE_ID and info["post_seg_id"] == POST_ID
    assert (info["overlap_side1"], info["overlap_side2"]) == (0, 64)
    assert not info["ambiguous"]
    # same structures whatever the side order
    np.testing.assert_array_equal(segmentation_mask(c.bits, 1), (seg == PRE_ID)[CUBE])


def _with_vesicle(volume, box):
    raw, seg, mask, _ = volume
    mask = mask.copy()
    mask[mask == IDS.vesicle] = 0
    mask[box] = IDS.vesicle
    return raw, seg, mask


def test_tie_is_ambiguous_and_broken_by_convention(volume):
    # vesicle cloud x 18..22: two columns in pre (18, 19), gap at 20, two in post (21, 22)
    raw, seg, mask = _with_vesicle(volume, np.s_[19:21, 19:21, 18:23])
    c = build_synapse(raw, seg, mask, CENTER, SIDE_PRE, SIDE_POST, IDS, CubeGeometry(size=S))
    info = c.info
    assert info["overlap_side1"] == info["overlap_side2"] == 8
    assert info["ambiguous"] is True and "tie" in info["ambiguity_reason"]
    assert info["pre_side"] == 1 and "side 1 by convention" in info["ambiguity_reason"]  # equally near


def test_zero_overlap_is_ambiguous_and_nearest_segment_wins(volume):
    raw, seg, mask = volume[0], volume[1].copy(), volume[2]
    seg[seg == POST_ID] = 0
    seg[12:28, 12:28, 21:25] = POST_ID  # post neurite now ends at x = 24
    # vesicle cloud on background at x = 26..27: 2 voxels from post, 7 from pre
    raw, seg, mask = _with_vesicle((raw, seg, mask, None), np.s_[19:21, 19:21, 26:28])
    c = build_synapse(raw, seg, mask, CENTER, SIDE_PRE, (23, 20, 20), IDS, CubeGeometry(size=S))
    info = c.info
    assert info["overlap_side1"] == info["overlap_side2"] == 0
    assert info["ambiguous"] and "tie" in info["ambiguity_reason"] and "nearer" in info["ambiguity_reason"]
    assert info["pre_side"] == 2 and info["pre_seg_id"] == POST_ID


def test_no_vesicle_cloud_is_ambiguous(volume):
    raw, seg, mask, _ = volume
    mask = np.where(mask == IDS.vesicle, 0, mask).astype(np.uint8)
    c = build_synapse(raw, seg, mask, CENTER, SIDE_PRE, SIDE_POST, IDS, CubeGeometry(size=S))
    assert c.info["ambiguous"] and "no vesicle cloud" in c.info["ambiguity_reason"]
    assert c.info["pre_side"] == 1
    assert not segmentation_mask(c.bits, 6).any()


def test_one_side_on_background_is_ambiguous_not_fatal(volume):
    raw, seg, mask, _ = volume
    c = build_synapse(raw, seg, mask, CENTER, SIDE_PRE, (20, 20, 20), IDS, CubeGeometry(size=S))
    info = c.info
    assert info["ambiguous"] and "side 2" in info["ambiguity_reason"] and "background" in info["ambiguity_reason"]
    assert info["pre_side"] == 1 and info["pre_seg_id"] == PRE_ID and info["post_seg_id"] == 0
    assert not segmentation_mask(c.bits, 2).any()


# --- errors --------------------------------------------------------------------------------------
def _build(volume, center=CENTER, s1=SIDE_PRE, s2=SIDE_POST):
    raw, seg, mask, _ = volume
    return build_synapse(
        raw, seg, mask, center, s1, s2, IDS, CubeGeometry(size=S), bbox="bbox7", synapse="syn_42", table_row=9
    )


def test_error_center_outside_volume(volume):
    with pytest.raises(SynapseError) as err:
        _build(volume, center=(20, 45, 20))
    msg = str(err.value)
    for part in ("bbox7", "syn_42", "table row 9", "central coordinate", "(x=20, y=45, z=20)", "outside the volume", "central_coord"):
        assert part in msg


def test_error_side_outside_volume(volume):
    with pytest.raises(SynapseError, match=r"bbox7.*syn_42.*side 2 point .*outside.*side_2_coord"):
        _build(volume, s2=(-1, 20, 20))


def test_error_both_sides_on_background(volume):
    with pytest.raises(SynapseError) as err:
        _build(volume, s1=(20, 20, 20), s2=(2, 2, 2))
    msg = str(err.value)
    assert "bbox7" in msg and "syn_42" in msg and "table row 9" in msg
    assert "background" in msg and "side_1/side_2" in msg


def test_error_both_sides_same_segment(volume):
    with pytest.raises(SynapseError, match=r"same segment \(id 10\)"):
        _build(volume, s2=(12, 20, 20))


def test_geometry_validation():
    with pytest.raises(ValueError, match="crop_mode"):
        CubeGeometry(crop_mode="centre")
    with pytest.raises(ValueError, match="presynapse_weight"):
        CubeGeometry(presynapse_weight=1.5)
    with pytest.raises(ValueError, match="size"):
        CubeGeometry(size=1)


# --- borders and padding ------------------------------------------------------------------------
BORDER_CASES = [
    (0, 3), (0, 0), (0, N - 3), (0, N - 1),
    (1, 2), (1, N - 2),
    (2, 1), (2, N - 4),
]


@pytest.mark.parametrize("axis,pos", BORDER_CASES)
def test_synapse_near_a_border_stays_at_the_cube_centre(axis, pos):
    z, y, x = np.indices((N, N, N))
    raw = encode(z, y, x).astype(np.uint16)
    centre = [C, C, C]
    centre[axis] = pos  # z, y, x
    seg = np.zeros((N, N, N), np.uint32)
    seg[...] = PRE_ID
    side2 = list(centre)
    other = (axis + 1) % 3  # split the neurites along another axis
    idx = [slice(None)] * 3
    idx[other] = slice(C, None)
    seg[tuple(idx)] = POST_ID
    side1 = list(centre)
    side1[other] = C - 3
    side2[other] = C + 3
    mask = np.zeros((N, N, N), np.uint8)
    mask[tuple(centre)] = IDS.cleft  # one cleft voxel exactly at the synapse
    c = build_synapse(raw, seg, mask, centre[::-1], side1[::-1], side2[::-1], IDS, CubeGeometry(size=S))
    h = S // 2
    assert c.raw[h, h, h] == encode(*centre)
    assert c.bits[h, h, h] & L.BIT_CLEFT
    assert np.count_nonzero(c.bits & L.BIT_CLEFT) == 1
    before = max(0, h - pos)
    after = max(0, pos - h + S - N)
    a = "zyx"[axis]
    assert (c.info[f"pad_{a}_before"], c.info[f"pad_{a}_after"]) == (before, after)
    for b in "zyx".replace(a, ""):
        assert c.info[f"pad_{b}_before"] == c.info[f"pad_{b}_after"] == 0
    valid = c.valid_mask()
    assert valid.sum() == S * S * (S - before - after)
    # padding: raw = mean of the in-volume part, labels = 0
    if before or after:
        mean = int(np.floor(c.raw[valid].astype(np.float64).mean() + 0.5))
        assert c.info["pad_value"] == mean
        assert np.all(c.raw[~valid] == mean)
        assert not c.bits[~valid].any()
    # every in-volume voxel is the right voxel of the volume
    zz, yy, xx = np.nonzero(valid)
    lo = np.array(centre) - h
    np.testing.assert_array_equal(c.raw[valid], encode(zz + lo[0], yy + lo[1], xx + lo[2]))


def test_corner_synapse_pads_three_axes():
    raw = np.full((N, N, N), 50, np.uint8)
    raw[:5, :5, :5] = 150
    seg = np.full((N, N, N), PRE_ID, np.uint32)
    seg[:, :, 2:] = POST_ID
    mask = np.zeros((N, N, N), np.uint8)
    c = build_synapse(raw, seg, mask, (1, 1, 1), (0, 1, 1), (3, 1, 1), IDS, CubeGeometry(size=S))
    for a in "zyx":
        assert c.info[f"pad_{a}_before"] == 7 and c.info[f"pad_{a}_after"] == 0
    valid = c.valid_mask()
    assert valid.sum() == 9**3
    assert c.raw[~valid].min() == c.raw[~valid].max() == c.info["pad_value"]


# --- smart crop ---------------------------------------------------------------------------------
@pytest.mark.parametrize("w,expected_zyx", [(0.5, (20, 20, 18)), (0.7, (20, 20, 17)), (0.0, (20, 20, 20)), (1.0, (20, 20, 16))])
def test_smart_crop_centre_arithmetic(volume, w, expected_zyx):
    raw, seg, mask, _ = volume
    geo = CubeGeometry(size=S, crop_mode="presynapse", presynapse_weight=w)
    c = build_synapse(raw, seg, mask, CENTER, SIDE_PRE, SIDE_POST, IDS, geo)
    # pre neurite inside the cleft-centred 16^3 box: z, y in [12,28), x in [12,20)
    # -> centre of mass (19.5, 19.5, 15.5); centre = round_half_up((1-w)*20 + w*com)
    com = np.array([19.5, 19.5, 15.5])
    want = np.floor((1 - w) * np.array([C, C, C]) + w * com + 0.5).astype(int)
    assert tuple(want) == expected_zyx
    got = (c.info["cube_center_z"], c.info["cube_center_y"], c.info["cube_center_x"])
    assert got == expected_zyx
    h = S // 2
    assert c.raw[h, h, h] == encode(*expected_zyx)
    # structures follow the cube: the pre segment is exactly seg == 10 in the moved box
    box = tuple(slice(v - h, v - h + S) for v in expected_zyx)
    np.testing.assert_array_equal(segmentation_mask(c.bits, 1), (seg == PRE_ID)[box])


def test_smart_crop_near_border_pads_without_shift():
    z, y, x = np.indices((N, N, N))
    raw = encode(z, y, x).astype(np.uint16)
    seg = np.zeros((N, N, N), np.uint32)
    seg[:, :, :4] = PRE_ID  # pre neurite hugs the x = 0 border
    seg[:, :, 5:] = POST_ID
    mask = np.zeros((N, N, N), np.uint8)
    mask[19:22, 19:22, 1:3] = IDS.vesicle
    geo = CubeGeometry(size=S, crop_mode="presynapse", presynapse_weight=0.5)
    c = build_synapse(raw, seg, mask, (4, 20, 20), (1, 20, 20), (8, 20, 20), IDS, geo)
    # CoM of pre in the box (x 0..3 inside the volume) = (19.5, 19.5, 1.5): x centre = round(2 + 0.75) = 3
    assert (c.info["cube_center_z"], c.info["cube_center_y"], c.info["cube_center_x"]) == (20, 20, 3)
    assert c.info["pad_x_before"] == 5 and c.info["pad_x_after"] == 0
    assert c.raw[8, 8, 8] == encode(20, 20, 3)


# --- rendering ---------------------------------------------------------------------------------------
def _render_case():
    raw = np.zeros((4, 4, 4), np.uint8)
    raw[0, 0, 0] = 200  # max, inside the mask
    raw[1, 1, 1] = 100  # x = 0.5, inside
    raw[2, 2, 2] = 100  # x = 0.5, outside
    raw[3, 3, 3] = 0  # min, outside
    bits = np.zeros((4, 4, 4), np.uint8)
    bits[0, 0, 0] = bits[1, 1, 1] = L.BIT_PRE
    return raw, bits


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_blending_formula_exact(alpha):
    raw, bits = _render_case()
    g = 0.6
    out = render(raw, bits, RenderSettings(1, alpha=alpha, gray_value=g))
    assert out.dtype == np.float32 and out.shape == raw.shape
    assert out[0, 0, 0] == pytest.approx(1.0)
    assert out[1, 1, 1] == pytest.approx(0.5)  # inside: raw kept whatever alpha
    assert out[2, 2, 2] == pytest.approx(alpha * g + (1 - alpha) * 0.5, abs=1e-6)
    assert out[3, 3, 3] == pytest.approx(alpha * g, abs=1e-6)


def test_type_0_is_plain_minmax():
    raw, bits = _render_case()
    out = render(raw, bits, RenderSettings(0, alpha=1.0))
    np.testing.assert_allclose(out, raw / 200.0, atol=1e-7)


def test_constant_cube_renders_zeros_and_stays_finite():
    raw = np.full((4, 4, 4), 77, np.uint8)
    out = render(raw, np.zeros_like(raw), RenderSettings(0))
    assert np.all(out == 0)
    out = render(raw, np.zeros_like(raw), RenderSettings(1, alpha=1.0))
    assert np.allclose(out, 0.6)


def test_quantisation_second_minmax_and_input_range():
    raw, bits = _render_case()
    q = render(raw, bits, RenderSettings(1, alpha=0.5, quantize_8bit=True))
    # truncation, as the original's 8-bit conversion: 0.5 -> 127.5 -> 127/255; 0.3 -> 76.5 -> 76/255
    assert q[1, 1, 1] == np.float32(127) / np.float32(255)
    assert q[3, 3, 3] == np.float32(76) / np.float32(255)
    assert np.allclose(q * 255, np.round(q * 255), atol=1e-4)
    # second min-max: mask excludes the minimum -> outside floor 0.6 becomes the new 0
    raw2 = raw.copy()
    raw2[0, 0, 0] = 200
    m = render(raw2, bits, RenderSettings(1, alpha=1.0))
    assert m.min() == pytest.approx(0.5)  # inside voxel 1,1,1 (0.5) is the smallest
    m2 = render(raw2, bits, RenderSettings(1, alpha=1.0, second_minmax=True))
    assert m2.min() == pytest.approx(0.0) and m2.max() == pytest.approx(1.0)
    assert m2[3, 3, 3] == pytest.approx((0.6 - 0.5) / 0.5, abs=1e-6)
    pm = render(raw, bits, RenderSettings(1, alpha=0.5, input_range="-1_1"))
    np.testing.assert_allclose(pm, render(raw, bits, RenderSettings(1, alpha=0.5)) * 2 - 1, atol=1e-6)
    assert pm.dtype == np.float32
    with pytest.raises(ValueError, match="input_range"):
        render(raw, bits, RenderSettings(1, input_range="0_255"))
    with pytest.raises(ValueError, match="alpha"):
        render(raw, bits, RenderSettings(1, alpha=1.5))


def test_quantize_8bit_truncates_exactly():
    """floor(255 x) / 255 on float32: exact values, 1.0 stays 1.0, k/255 stays k/255."""
    f32 = np.float32
    k = np.arange(256, dtype=np.float32)
    exact = k / f32(255)
    below = np.nextafter(exact[1:], f32(0))  # the float32 just below k/255
    clearly_below = (k[1:] - f32(1e-3)) / f32(255)
    vals = {0.5: 127, 1.0: 255, 0.0: 0, 0.3: 76, 0.999: 254, 254.999 / 255: 254, 1 / 255: 1}
    x = np.array(list(vals), dtype=np.float32)
    # a type-0 render of a float cube holding 0 and 1 is the identity before quantisation
    cube = np.concatenate([x, exact, below, clearly_below]).astype(np.float32)
    raw = np.zeros(10**3, np.float32)
    raw[: cube.size] = cube
    raw = raw.reshape(10, 10, 10)
    plain = render(raw, np.zeros(raw.shape, np.uint8), RenderSettings(0))
    assert np.array_equal(plain, raw)
    q = render(raw, np.zeros(raw.shape, np.uint8), RenderSettings(0, quantize_8bit=True)).reshape(-1)
    n = len(vals)
    assert np.array_equal(q[:n], np.array(list(vals.values()), np.float32) / f32(255))
    assert q[1] == f32(1.0)  # x == 1.0 stays 1.0
    assert np.array_equal(q[n : n + 256], exact)  # every k/255 is kept
    # just below k/255 truncates to (k - 1)/255 wherever 255 x lies below k in float32
    drop = np.floor(below * f32(255)) < k[1:]
    assert drop.sum() > 100
    assert np.array_equal(q[n + 256 : n + 511][drop], exact[:-1][drop])
    assert np.array_equal(q[n + 511 : n + 766], exact[:-1])
    assert q.dtype == np.float32 and q.min() >= 0 and q.max() <= 1


def test_render_batch_normalises_per_cube(cube):
    raw2 = (cube.raw // 2).astype(cube.raw.dtype)
    batch_raw = np.stack([cube.raw, raw2])
    batch_bits = np.stack([cube.bits, cube.bits])
    for t in (0, 6, 11):
        out = render(batch_raw, batch_bits, RenderSettings(t, alpha=0.5))
        np.testing.assert_allclose(out[0], render(cube.raw, cube.bits, RenderSettings(t, alpha=0.5)), atol=1e-6)
        np.testing.assert_allclose(out[1], render(raw2, cube.bits, RenderSettings(t, alpha=0.5)), atol=1e-6)


# --- morphometrics ----------------------------------------------------------------------------------
def test_morphometrics_on_hand_made_volume(cube):
    info = cube.info
    assert info["vesicle_volume_vox"] == 64  # near cloud A only
    assert info["cleft_volume_vox"] == 7 * 8 + 7 * 2  # closest cleft + closest cleft2
    assert info["cleft_area_vox"] == pytest.approx(70.0)  # flat sheet, one voxel thick
    assert abs(info["cleft_normal_x"]) == pytest.approx(1.0)
    assert info["pre_volume_vox"] == 16 * 16 * 8
    assert info["post_volume_vox"] == 16 * 16 * 7
    assert info["mito_near_pre_volume_vox"] == 27  # M1 inside pre; M2 is in post
    phys = add_physical_units(pd.DataFrame([info]), (8.0, 8.0, 8.0)).iloc[0]
    assert phys["vesicle_volume_um3"] == pytest.approx(64 * 512 * 1e-9)
    assert phys["cleft_area_um2"] == pytest.approx(70 * 64 * 1e-6)
    assert phys["pre_volume_um3"] == pytest.approx(2048 * 512 * 1e-9)


def test_cleft_area_thick_and_tilted_sheets():
    b = np.zeros((30, 30, 30), bool)
    b[10:13, 5:15, 5:25] = True  # 3 voxels thick, 10 x 20
    area, normal = cleft_area(b)
    assert area == pytest.approx(200.0) and abs(normal[0]) == pytest.approx(1.0)
    t = np.zeros((30, 30, 30), bool)
    z, y, x = np.indices(t.shape)
    t[(y + x >= 25) & (y + x <= 26) & (x >= 8) & (x < 18) & (z >= 5) & (z < 15)] = True
    area, normal = cleft_area(t)
    assert area == pytest.approx(10 * 10 * np.sqrt(2), rel=0.03)  # 45 degree sheet
    assert cleft_area(np.zeros((3, 3, 3), bool))[0] == 0.0


def test_anisotropic_area_uses_the_normal():
    df = pd.DataFrame(
        [{"cleft_area_vox": 10.0, "cleft_normal_z": 1.0, "cleft_normal_y": 0.0, "cleft_normal_x": 0.0}]
    )
    out = add_physical_units(df, (40.0, 4.0, 5.0))
    assert out["cleft_area_um2"].iloc[0] == pytest.approx(10 * 4 * 5 * 1e-6)  # a z-normal sheet lies in y-x


def test_morphometrics_function_matches_info(cube):
    m = morphometrics(cube.bits)
    for k, v in m.items():
        assert cube.info[k] == pytest.approx(v)


# --- dataset level -------------------------------------------------------------------------------------
def _table(rows, bbox):
    recs = []
    for i, (name, center, s1, s2) in enumerate(rows):
        rec = {L.BBOX_COLUMN: bbox, L.NAME_COLUMN: name}
        for cols, p in ((L.CENTER_COLUMNS, center), (L.SIDE1_COLUMNS, s1), (L.SIDE2_COLUMNS, s2)):
            rec.update(dict(zip(cols, p)))
        rec["table_row"] = i + 2
        rec[L.DEMO_CLASS_COLUMN] = f"class_{i % 2}"
        recs.append(rec)
    return pd.DataFrame(recs)


def _bbox(volume, name, rows):
    raw, seg, mask, _ = volume
    return BboxData(name=name, raw=raw, seg=seg, mask=mask, table=_table(rows, name), label_ids=IDS)


@pytest.fixture(scope="module")
def cubeset(volume):
    b1 = _bbox(
        volume,
        "bbox2",
        [
            ("good_a", CENTER, SIDE_PRE, SIDE_POST),
            ("outside", (20, 20, 99), SIDE_PRE, SIDE_POST),
            ("good_b", CENTER, SIDE_POST, SIDE_PRE),
        ],
    )
    b2 = _bbox(
        volume,
        "bbox5",
        [
            ("both_background", CENTER, (20, 20, 20), (2, 2, 2)),
            ("near_border", (20, 20, 2), SIDE_PRE, SIDE_POST),
        ],
    )
    return build_cubes([b1, b2], CubeGeometry(size=S), voxel_size_nm=(8.0, 8.0, 8.0), progress=False)


def test_build_cubes_records_skipped_with_reasons(cubeset):
    assert len(cubeset) == 3
    assert cubeset.table[L.NAME_COLUMN].tolist() == ["good_a", "good_b", "near_border"]
    sk = cubeset.skipped
    assert sk[L.NAME_COLUMN].tolist() == ["outside", "both_background"]
    assert sk[L.BBOX_COLUMN].tolist() == ["bbox2", "bbox5"]
    assert sk["table_row"].tolist() == [3, 2]
    assert "outside the volume" in sk["reason"].iloc[0] and "bbox2" in sk["reason"].iloc[0]
    assert "background" in sk["reason"].iloc[1]


def test_build_cubes_table_columns(cubeset):
    t = cubeset.table
    assert list(t.columns[:3]) == [L.BBOX_COLUMN, L.NAME_COLUMN, "table_row"]
    for col in (
        L.DEMO_CLASS_COLUMN, "pre_side", "pre_seg_id", "overlap_side1", "ambiguous", "ambiguity_reason",
        "cube_center_z", "pad_z_before", "vesicle_volume_vox", "vesicle_volume_um3", "cleft_area_vox",
        "cleft_area_um2", "pre_volume_um3", "post_volume_um3", "mito_near_pre_volume_um3", *L.CENTER_COLUMNS,
    ):
        assert col in t, col
    assert t["pre_side"].tolist() == [1, 2, 1]
    assert cubeset.raw.shape == (3, S, S, S) and cubeset.raw.dtype == np.uint16
    assert cubeset.bits.dtype == np.uint8
    assert t["pad_z_before"].tolist() == [0, 0, 6]


def test_build_cubes_all_fail_is_a_data_error(volume):
    b = _bbox(volume, "bbox2", [("x", (99, 0, 0), SIDE_PRE, SIDE_POST), ("y", CENTER, SIDE_PRE, SIDE_PRE)])
    with pytest.raises(DataError, match="no synapse cube could be built"):
        build_cubes([b], CubeGeometry(size=S), progress=False)
    with pytest.raises(DataError, match="no bboxes"):
        build_cubes([], CubeGeometry(size=S), progress=False)


def test_empty_mask_rows(cubeset):
    # row 2 (near_border, cube z in [-6, 10)) holds no structure at all: only type 0 has a mask
    assert cubeset.empty_mask_rows(0).size == 0
    for t in range(1, 12):
        np.testing.assert_array_equal(cubeset.empty_mask_rows(t), [2])
    bits = np.asarray(cubeset.bits).copy()
    bits[1] &= ~np.uint8(L.BIT_MITO | L.BIT_MITO_ANY)
    bits[0] &= ~np.uint8(L.BIT_PRE | L.BIT_CLEFT)
    cs = CubeSet(cubeset.raw, bits, cubeset.table, cubeset.skipped, cubeset.geometry, cubeset.voxel_size_nm)
    np.testing.assert_array_equal(cs.empty_mask_rows(8), [1, 2])
    np.testing.assert_array_equal(cs.empty_mask_rows(10), [0, 2])
    np.testing.assert_array_equal(cs.empty_mask_rows(11), [0, 2])
    np.testing.assert_array_equal(cs.empty_mask_rows(6), [2])
    rep = cs.empty_mask_report(8)
    assert rep[L.NAME_COLUMN].tolist() == ["good_b", "near_border"] and "empty mask" in rep["reason"].iloc[0]


def test_save_load_round_trip_and_rendered_view(cubeset, tmp_path):
    folder = cubeset.save(tmp_path / "cubes")
    assert sorted(p.name for p in folder.iterdir()) == ["bits.npy", "meta.json", "raw.npy", "skipped.parquet", "table.parquet"]
    loaded = CubeSet.load(folder)
    assert isinstance(loaded.raw, np.memmap) and isinstance(loaded.bits, np.memmap)
    np.testing.assert_array_equal(loaded.raw, cubeset.raw)
    np.testing.assert_array_equal(loaded.bits, cubeset.bits)
    pd.testing.assert_frame_equal(loaded.table, cubeset.table)
    pd.testing.assert_frame_equal(loaded.skipped, cubeset.skipped, check_dtype=False)
    assert loaded.geometry == cubeset.geometry and loaded.voxel_size_nm == cubeset.voxel_size_nm
    view = loaded.rendered(RenderSettings(11, alpha=0.5, input_range="-1_1"))
    assert len(view) == 3 and view.shape == (3, S, S, S)
    whole = render(np.asarray(cubeset.raw), np.asarray(cubeset.bits), RenderSettings(11, alpha=0.5, input_range="-1_1"))
    batches = list(view.batches(2))
    assert [b.shape[0] for b in batches] == [2, 1]
    np.testing.assert_array_equal(np.concatenate(batches), whole)
    np.testing.assert_array_equal(view[1], whole[1])
    np.testing.assert_array_equal(view[-1], whole[2])
    np.testing.assert_array_equal(view[[2, 0]], whole[[2, 0]])
    sub = loaded.rendered(RenderSettings(11, alpha=0.5, input_range="-1_1"), indices=[0, 2])
    np.testing.assert_array_equal(sub[:], whole[[0, 2]])
    with pytest.raises(IndexError):
        view[3]


def test_save_overwrites_atomically_and_load_errors(cubeset, tmp_path):
    folder = tmp_path / "cubes"
    cubeset.save(folder)
    cubeset.save(folder)  # replacing an existing set leaves no temporary folder behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cubes"]
    assert len(CubeSet.load(folder, mmap=False)) == 3
    (folder / "meta.json").unlink()
    with pytest.raises(DataError, match="meta.json"):
        CubeSet.load(folder)


def test_mito_near_pre_matches_full_dilation():
    rng = np.random.default_rng(3)
    for _ in range(5):
        bits = np.zeros((20, 20, 20), np.uint8)
        pre = ndimage.binary_dilation(rng.random(bits.shape) > 0.995, iterations=3)
        mito = ndimage.binary_dilation(rng.random(bits.shape) > 0.997, iterations=2)
        bits[pre] |= L.BIT_PRE
        bits[mito] |= L.BIT_MITO_ANY
        want = np.count_nonzero(mito & ndimage.binary_dilation(pre, iterations=2))
        assert morphometrics(bits)["mito_near_pre_volume_vox"] == want


def test_build_cubes_keeps_table_order_and_matches_build_synapse(volume):
    rows = [
        ("z25", (20, 20, 25), SIDE_PRE, SIDE_POST),
        ("z15", (20, 20, 15), SIDE_PRE, SIDE_POST),
        ("bad", (20, 20, 50), SIDE_PRE, SIDE_POST),
        ("z20", (20, 20, 20), SIDE_POST, SIDE_PRE),
    ]
    b = _bbox(volume, "bbox2", rows)
    cs = build_cubes([b], CubeGeometry(size=S, crop_mode="presynapse"), progress=False)
    assert cs.table[L.NAME_COLUMN].tolist() == ["z25", "z15", "z20"]
    assert cs.table["table_row"].tolist() == [2, 3, 5]
    assert cs.skipped[L.NAME_COLUMN].tolist() == ["bad"]
    raw, seg, mask, _ = volume
    for i, (_, centre, s1, s2) in enumerate([rows[0], rows[1], rows[3]]):
        one = build_synapse(raw, seg, mask, centre, s1, s2, IDS, CubeGeometry(size=S, crop_mode="presynapse"))
        np.testing.assert_array_equal(cs.raw[i], one.raw)
        np.testing.assert_array_equal(cs.bits[i], one.bits)
        assert cs.table["cube_center_z"].iloc[i] == one.info["cube_center_z"]


def test_save_refuses_to_replace_a_foreign_folder(cubeset, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not a saved cube set"):
        cubeset.save(folder)
    assert (folder / "keep.txt").read_text() == "mine"


def test_side_point_outside_the_window_is_read_directly(volume, cube):
    raw, seg, mask, _ = volume
    # x = 11 lies in the pre neurite but outside the 16^3 window [12, 28)
    c = build_synapse(raw, seg, mask, CENTER, (11, 20, 20), SIDE_POST, IDS, CubeGeometry(size=S))
    assert c.info["side1_seg_id"] == PRE_ID and c.info["pre_side"] == 1
    np.testing.assert_array_equal(c.bits, cube.bits)


# --- side points far from the cleft ----------------------------------------------------------------
FAR_POST = (29, 27, 27)  # x, y, z: still inside the post neurite, 13.4 voxels from the cleft centre


def test_far_side_point_is_flagged_and_logged_but_used_as_given(volume, cube, caplog):
    raw, seg, mask, _ = volume
    with caplog.at_level("WARNING", logger="synapse_nb.cubes.prepost"):
        far = build_synapse(raw, seg, mask, CENTER, SIDE_PRE, FAR_POST, IDS, CubeGeometry(size=S),
                            bbox="bbox7", synapse="syn_42", table_row=9)
    info = far.info
    assert info["ambiguous"]
    assert info["ambiguity_reason"] == (
        "side 2 point (x=29, y=27, z=27) lies 13.4 voxels from the cleft centre "
        "(more than half the cube edge, 8): it may be in another neurite"
    )
    (record,) = [r for r in caplog.records if "cleft centre" in r.getMessage()]
    msg = record.getMessage()
    assert record.levelname == "WARNING" and "\n" not in msg
    for part in ("bbox7", "syn_42", "table row 9", "side 2 point (x=29, y=27, z=27)", "13.4 voxels", "side_2_coord"):
        assert part in msg
    # the segment under the point is used exactly as before: same decision, same cube bytes
    for k in ("pre_side", "pre_seg_id", "post_seg_id", "side1_seg_id", "side2_seg_id", "overlap_side1", "overlap_side2"):
        assert info[k] == cube.info[k], k
    assert far.raw.tobytes() == cube.raw.tobytes() and far.bits.tobytes() == cube.bits.tobytes()


def test_side_points_within_half_the_cube_edge_are_not_flagged(volume, caplog):
    raw, seg, mask, _ = volume
    with caplog.at_level("WARNING", logger="synapse_nb.cubes.prepost"):
        edge = build_synapse(raw, seg, mask, CENTER, (12, 20, 20), (28, 20, 20), IDS, CubeGeometry(size=S))
    assert not edge.info["ambiguous"] and edge.info["ambiguity_reason"] == ""  # exactly 8 voxels: fine
    assert not caplog.records


def test_far_side_point_is_noted_in_the_cube_table(volume):
    b = _bbox(volume, "bbox3", [("near", CENTER, SIDE_PRE, SIDE_POST), ("far", CENTER, (11, 13, 13), SIDE_POST)])
    cs = build_cubes([b], CubeGeometry(size=S), voxel_size_nm=(8.0, 8.0, 8.0), progress=False)
    near, far = cs.table.iloc[0], cs.table.iloc[1]
    assert not near["ambiguous"] and near["ambiguity_reason"] == ""
    assert far["ambiguous"] and "side 1 point (x=11, y=13, z=13) lies 13.4 voxels" in far["ambiguity_reason"]
    assert far["pre_side"] == 1 and far["pre_seg_id"] == PRE_ID
    np.testing.assert_array_equal(cs.raw[0], cs.raw[1])
    np.testing.assert_array_equal(cs.bits[0], cs.bits[1])
