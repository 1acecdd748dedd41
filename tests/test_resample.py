"""Per-window resampling to an isotropic grid: geometry, values and what is read."""
from __future__ import annotations

import numpy as np
import pytest
import zarr
from scipy import ndimage

from synapse_nb.data import volumes as V

NATIVE = (40.0, 4.0, 5.0)  # z, y, x nm
T = 8.0
SHAPE = (9, 70, 50)


def test_voxel_centre_convention_and_inverse():
    # native voxel i sits at (i + 0.5) * v nm; target voxel j at (j + 0.5) * t nm
    j = V.native_to_target([0, 0, 0], NATIVE, T)
    np.testing.assert_allclose(j, [(0.5 * 40) / 8 - 0.5, (0.5 * 4) / 8 - 0.5, (0.5 * 5) / 8 - 0.5])
    np.testing.assert_allclose(V.native_to_target([3, 10, 7], NATIVE, T), [17.0, 4.75, 4.1875])
    p = np.array([2.3, 41.0, 17.5])
    np.testing.assert_allclose(V.target_to_native(V.native_to_target(p, NATIVE, T), NATIVE, T), p)
    assert V.resampled_shape(SHAPE, NATIVE, T) == (45, 35, 31)  # floor(N*v/t + 0.5): 45, 35, 31.25
    assert V.resampled_shape((20, 1024, 1024), (50.0, 4.6, 4.6), 8.0) == (125, 589, 589)
    assert V.needs_resampling(NATIVE, T) and not V.needs_resampling((8.0, 8.0, 8.0), 8.0)
    assert not V.needs_resampling(NATIVE, 0.0)


def test_linear_ramp_is_exact():
    z, y, x = np.indices(SHAPE).astype(np.float64)
    ramp = 3.0 * z - 0.25 * y + 0.5 * x + 7.0
    rv = V.ResampledVolume(ramp, NATIVE, T, order=1)
    out = rv[...]
    assert out.shape == rv.shape == (45, 35, 31) and out.dtype == np.float64
    iz, iy, ix = (
        np.clip(V.target_to_native(np.arange(n, dtype=float), [v], T), 0, s - 1)  # held beyond the end centres
        for n, v, s in zip(rv.shape, NATIVE, SHAPE)
    )
    expected = 3.0 * iz[:, None, None] - 0.25 * iy[None, :, None] + 0.5 * ix[None, None, :] + 7.0
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-9)


def test_linear_equals_scipy_map_coordinates():
    rng = np.random.default_rng(1)
    vol = rng.normal(size=SHAPE).astype(np.float32)
    rv = V.ResampledVolume(vol, NATIVE, T, order=1)
    lo, hi = (3, 10, 4), (40, 30, 29)
    grids = np.meshgrid(
        *(V.target_to_native(np.arange(a, b, dtype=float), [v], T) for a, b, v in zip(lo, hi, NATIVE)), indexing="ij"
    )
    ref = ndimage.map_coordinates(vol.astype(np.float64), grids, order=1, mode="nearest")
    np.testing.assert_allclose(rv.read_window(lo, hi), ref, atol=1e-5)


def test_point_label_lands_at_the_expected_voxels():
    """One labelled native voxel covers exactly the target voxels whose nearest native voxel it is."""
    lab = np.zeros(SHAPE, np.uint16)
    i = (4, 31, 23)  # x 22 would fall between two samples (5 -> 8 nm drops some columns)
    lab[i] = 7
    rv = V.ResampledVolume(lab, NATIVE, T, order=0)
    out = rv[...]
    assert out.dtype == np.uint16 and set(np.unique(out)) == {0, 7}
    got = np.argwhere(out == 7)
    # nearest native index of target j: floor((j + .5) t / v - .5 + .5), ties up
    expect_axes = []
    for ax in range(3):
        j = np.arange(rv.shape[ax])
        near = np.floor(V.target_to_native(j.astype(float), [NATIVE[ax]], T) + 0.5).astype(int)
        expect_axes.append(j[np.clip(near, 0, SHAPE[ax] - 1) == i[ax]])
    assert [sorted(set(got[:, a])) for a in range(3)] == [list(e) for e in expect_axes]
    assert len(got) == np.prod([len(e) for e in expect_axes])
    # z: 40 nm -> 8 nm gives 5 target slices centred on the native one; y: 4 -> 8 nm gives one
    assert len(expect_axes[0]) == 5 and len(expect_axes[1]) == 1
    centre = got.mean(axis=0)
    np.testing.assert_allclose(centre[0], V.native_to_target(i, NATIVE, T)[0], atol=1e-9)


def test_blob_at_a_physical_position():
    """A ball of radius 60 nm around a physical point keeps its place and size."""
    p_nm = np.array([180.0, 150.0, 122.0])
    z, y, x = np.indices(SHAPE)
    centres = np.stack([(z + 0.5) * NATIVE[0], (y + 0.5) * NATIVE[1], (x + 0.5) * NATIVE[2]])
    ball = (((centres - p_nm[:, None, None, None]) ** 2).sum(axis=0) <= 60.0**2).astype(np.uint8) * 3
    out = V.ResampledVolume(ball, NATIVE, T, order=0)[...]
    com_nm = (np.argwhere(out == 3).mean(axis=0) + 0.5) * T
    np.testing.assert_allclose(com_nm, p_nm, atol=4.0)  # within half a target voxel
    vol_nm3 = (out == 3).sum() * T**3
    assert abs(vol_nm3 - 4 / 3 * np.pi * 60.0**3) / (4 / 3 * np.pi * 60.0**3) < 0.15


def test_labels_keep_dtype_and_only_existing_values():
    rng = np.random.default_rng(2)
    lab = rng.choice(np.array([0, 5, 9, 4_000_000_000], dtype=np.uint32), size=SHAPE)
    out = V.ResampledVolume(lab, NATIVE, T, order=0)[...]
    assert out.dtype == np.uint32
    assert set(np.unique(out)) <= {0, 5, 9, 4_000_000_000}


def test_integer_raw_is_rounded_and_clipped():
    raw = np.zeros(SHAPE, np.uint8)
    raw[:, :, 25:] = 255
    out = V.ResampledVolume(raw, NATIVE, T, order=1)[...]
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    ref = V.ResampledVolume(raw.astype(np.float64), NATIVE, T, order=1)[...]
    np.testing.assert_array_equal(out, np.rint(ref).astype(np.uint8))


def test_windows_equal_the_full_grid_and_read_little(tmp_path):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 255, SHAPE, dtype=np.uint8)
    zarr.create_array(str(tmp_path / "r.zarr"), shape=SHAPE, chunks=(3, 16, 16), dtype=np.uint8)[...] = raw
    vol = V.open_volume(tmp_path / "r.zarr")
    for order in (0, 1):
        full = V.ResampledVolume(raw, NATIVE, T, order=order)[...]
        rv = V.ResampledVolume(vol, NATIVE, T, order=order)
        before = vol.voxels_read
        win = rv[10:20, 5:15, 0:8]
        np.testing.assert_array_equal(win, full[10:20, 5:15, 0:8])
        assert vol.voxels_read - before < raw.size / 10  # only the covering native window
        np.testing.assert_array_equal(rv.read_window((-5, 30, 28), (3, 50, 40)), full[0:3, 30:, 28:])
    with pytest.raises(ValueError, match="order must be 0"):
        V.ResampledVolume(raw, NATIVE, T, order=3)
