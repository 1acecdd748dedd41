"""Features that see shape, not brightness: per-cube intensity normalisation and rotation averaging."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from synapse_nb.core.config import Config
from synapse_nb.cubes.geometry import CubeGeometry
from synapse_nb.cubes.rendering import (
    MIN_MASK_VOXELS,
    ZSCORE_SPAN,
    RenderSettings,
    cleft_normal_axes,
    render,
    segmentation_mask,
)
from synapse_nb.cubes.store import CubeSet
from synapse_nb.features.checkpoint import build_model
from synapse_nb.features.extract import FeatureExtractor, describe
from synapse_nb.pipeline import steps

pytestmark = pytest.mark.usefixtures("one_torch_thread")

S = 16
PLANES = {0: (1, 2), 1: (0, 2), 2: (0, 1)}  # rotation axis -> plane of one (Z, Y, X) cube


@pytest.fixture(scope="module")
def model():
    m, _ = build_model(None, seed=7)
    return m


def blobs(n: int, seed: int = 0) -> np.ndarray:
    """Smoothed noise cubes as uint8-like floats in [20, 230]: EM-looking, not symmetric."""
    rng = np.random.default_rng(seed)
    x = ndimage.uniform_filter(rng.random((n, S, S, S)), size=(1, 4, 4, 4))
    x = (x - x.min()) / (x.max() - x.min())
    return (20 + 210 * x).astype(np.float32)


def box_bits(lo: int = 4, hi: int = 12) -> np.ndarray:
    """Bits with BIT 1 (type 1's bit) set in a central box."""
    bits = np.zeros((S, S, S), np.uint8)
    bits[lo:hi, lo:hi, lo:hi] = 1
    return bits


def rotated(cubes: np.ndarray, axis: int, turns: int = 1) -> np.ndarray:
    a, b = PLANES[axis]
    return np.ascontiguousarray(np.rot90(cubes, turns, axes=(a + 1, b + 1)))


# ----------------------------------------------------------------------------- rendering
def test_minmax_is_the_rendering_default_and_unchanged():
    raw = blobs(1)[0].round().astype(np.uint8)
    bits = box_bits()
    assert RenderSettings(1).intensity_normalization == "minmax"
    assert RenderSettings.from_config(Config(intensity_normalization="minmax")).intensity_normalization == "minmax"
    assert RenderSettings.from_config(Config()).intensity_normalization == Config().intensity_normalization == "mask"
    # today's formula, written out: min-max in float32, then the gray blend outside the mask
    mn = np.float32(raw.min())
    x = (raw.astype(np.float32) - mn) / (np.float32(raw.max()) - mn)
    a, g = np.float32(0.5), np.float32(0.6)
    expect = np.where(bits == 1, x, a * g + (np.float32(1) - a) * x)
    got = render(raw, bits, RenderSettings(1, alpha=0.5))
    assert got.dtype == np.float32 and np.array_equal(got, expect)
    # a valid mask is ignored by min-max (padding holds the in-volume mean)
    valid = np.zeros(raw.shape, bool)
    valid[2:] = True
    assert np.array_equal(render(raw, bits, RenderSettings(1, alpha=0.5), valid=valid), expect)


def test_from_config_carries_the_normalization_and_refuses_unknown():
    for how in ("cube", "mask"):
        cfg = Config(intensity_normalization=how, segmentation_type=5, alpha=0.3)
        s = RenderSettings.from_config(cfg)
        assert (s.intensity_normalization, s.segmentation_type, s.alpha) == (how, 5, 0.3)
    with pytest.raises(ValueError, match="intensity_normalization must be one of"):
        RenderSettings(1, intensity_normalization="zscore")


@pytest.mark.parametrize("segmentation_type, alpha", [(0, 1.0), (1, 0.5), (1, 1.0)])
def test_cube_normalization_ignores_affine_brightness(segmentation_type, alpha):
    raw = blobs(1, seed=2)[0].astype(np.float64)
    bits = box_bits()
    s = RenderSettings(segmentation_type, alpha=alpha, intensity_normalization="cube")
    base = render(raw, bits, s)
    for a, b in ((0.7, 40.0), (1.9, -13.0), (0.05, 200.0)):
        np.testing.assert_allclose(render(a * raw + b, bits, s), base, rtol=0, atol=2e-6)
    # the documented transform: clip(0.5 + z / 6, 0, 1) with z over the whole cube
    z = (raw - raw.mean()) / raw.std()
    expect = np.clip(0.5 + z / ZSCORE_SPAN, 0, 1)
    if segmentation_type != 0:
        expect = np.where(bits == 1, expect, alpha * 0.6 + (1 - alpha) * expect)
    np.testing.assert_allclose(base, expect, atol=1e-6)
    # a constant cube is the mean everywhere: 0.5
    assert np.all(render(np.full((S, S, S), 7.0), bits, RenderSettings(0, intensity_normalization="cube")) == 0.5)


def test_mask_normalization_uses_the_mask_statistics():
    raw = blobs(1, seed=3)[0].astype(np.float64)
    bits = box_bits()  # 8^3 = 512 voxels >= MIN_MASK_VOXELS
    m = segmentation_mask(bits, 1)
    s_mask = RenderSettings(1, alpha=0.0, intensity_normalization="mask")
    s_cube = RenderSettings(1, alpha=0.0, intensity_normalization="cube")
    got = render(raw, bits, s_mask)
    z = (raw - raw[m].mean()) / raw[m].std()
    np.testing.assert_allclose(got, np.clip(0.5 + z / ZSCORE_SPAN, 0, 1), atol=1e-6)
    assert abs(float(got[m].mean()) - 0.5) < 0.02  # mask mean -> 0.5 (little clipping inside)
    # brightening only the outside changes the cube's statistics but not the mask's
    outside = raw.copy()
    outside[~m] = outside[~m] * 1.5 + 30
    np.testing.assert_allclose(render(outside, bits, s_mask)[m], got[m], atol=1e-6)
    assert np.abs(render(outside, bits, s_cube)[m] - render(raw, bits, s_cube)[m]).max() > 0.05
    # a mask smaller than MIN_MASK_VOXELS falls back to the cube; type 0 is the whole cube
    tiny = box_bits(7, 9)
    assert np.count_nonzero(tiny) < MIN_MASK_VOXELS
    np.testing.assert_array_equal(render(raw, tiny, s_mask), render(raw, tiny, s_cube))
    np.testing.assert_array_equal(
        render(raw, bits, RenderSettings(0, intensity_normalization="mask")),
        render(raw, bits, RenderSettings(0, intensity_normalization="cube")),
    )


def _padded_cubeset(pad_value_ok: bool = True) -> tuple[CubeSet, np.ndarray]:
    """Two cubes; the first padded over z < 5 with its in-volume mean, as the builder does."""
    raw = blobs(2, seed=4).round()
    fill = float(raw[0, 5:].mean().round())
    raw[0, :5] = fill
    table = pd.DataFrame({f"pad_{a}_{s}": 0 for a in "zyx" for s in ("before", "after")}, index=[0, 1])
    table["pad_z_before"] = [5, 0]
    table["pad_value"] = [fill if pad_value_ok else fill + 1, np.nan]
    cubes = CubeSet(raw=raw, bits=np.zeros(raw.shape, np.uint8), table=table, skipped=pd.DataFrame(),
                    geometry=CubeGeometry(size=S))
    return cubes, raw


def test_padding_does_not_bias_the_statistics():
    cubes, raw = _padded_cubeset()
    view = cubes.rendered(RenderSettings(0, intensity_normalization="cube"))
    inside = raw[0, 5:].astype(np.float64)
    z = (raw[0].astype(np.float64) - inside.mean()) / inside.std()
    np.testing.assert_allclose(view[0], np.clip(0.5 + z / ZSCORE_SPAN, 0, 1), atol=1e-6)
    whole = (raw[0] - raw[0].mean()) / raw[0].std()  # padding shrinks the std: a different cube
    assert np.abs(view[0] - np.clip(0.5 + whole / ZSCORE_SPAN, 0, 1)).max() > 0.01
    np.testing.assert_allclose(view[1], render(raw[1], cubes.bits[1], view.settings), atol=0)
    # pads that do not describe the stored voxels are not trusted: whole-cube statistics
    bad, _ = _padded_cubeset(pad_value_ok=False)
    np.testing.assert_array_equal(bad.rendered(view.settings)[0], render(raw[0], bad.bits[0], view.settings))


def test_cleft_normal_axes():
    table = pd.DataFrame({
        "cleft_normal_z": [0.1, 0.0, np.nan, 0.9, 0.2],
        "cleft_normal_y": [0.9, 0.3, np.nan, 0.1, 0.9],
        "cleft_normal_x": [0.2, -0.95, np.nan, 0.0, 0.1],
        "oriented": [False, False, False, False, True],
    })
    assert cleft_normal_axes(table).tolist() == [1, 2, 0, 0, 0]  # NaN normal and oriented cube: z
    assert cleft_normal_axes(table.drop(columns=["cleft_normal_x"])).tolist() == [0] * 5


# ----------------------------------------------------------------------------- rotations
def test_rotation_averaging_is_invariant_to_quarter_turns_about_its_axis(model):
    cubes = blobs(2, seed=5) / 255.0
    plain = FeatureExtractor(model, "stage_specific", 20, progress=False, num_threads=1)
    four = FeatureExtractor(model, "stage_specific", 20, progress=False, num_threads=1, rotations=4)
    for axis in (0, 1, 2):
        axes = [axis, axis]
        f = four(cubes, rotation_axes=axes)
        assert np.array_equal(f, four(rotated(cubes, axis), rotation_axes=axes))  # to the bit
        assert not np.allclose(plain(cubes), plain(rotated(cubes, axis)), rtol=1e-3)  # plain features are not
        # it is the mean of the plain features of the four turns
        turns = np.stack([plain(rotated(cubes, axis, k)) for k in range(4)])
        np.testing.assert_allclose(f, turns.mean(axis=0), rtol=1e-5, atol=1e-6 * np.abs(f).max())
    # per-synapse axes: each cube turned about its own axis
    mixed = np.stack([rotated(cubes[:1], 0)[0], rotated(cubes[1:], 2)[0]])
    assert np.array_equal(four(cubes, rotation_axes=[0, 2]), four(mixed, rotation_axes=[0, 2]))
    # two rotations: invariant to half turns (not to quarter turns)
    two = FeatureExtractor(model, "stage_specific", 20, progress=False, num_threads=1, rotations=2)
    assert np.array_equal(two(cubes, rotation_axes=[1, 1]), two(rotated(cubes, 1, 2), rotation_axes=[1, 1]))
    assert "averaged over 4 rotations of 90 degrees" in four.describe()
    assert "rotations" not in plain.describe()


def test_one_rotation_is_the_plain_extraction_and_bad_options_are_refused(model):
    cubes = blobs(3, seed=6) / 255.0
    plain = FeatureExtractor(model, "stage_specific", 20, batch_size=2, progress=False, num_threads=1)
    one = FeatureExtractor(model, "stage_specific", 20, batch_size=2, progress=False, num_threads=1, rotations=1)
    assert np.array_equal(plain(cubes), one(cubes, rotation_axes=[2, 1, 0]))
    for bad in (3, 0, True, 8):
        with pytest.raises(ValueError, match="rotations must be one of"):
            FeatureExtractor(model, progress=False, rotations=bad)
    four = FeatureExtractor(model, "stage_specific", 20, progress=False, num_threads=1, rotations=4)
    with pytest.raises(ValueError, match="rotation_axes has 2 entries for 3 cubes"):
        four(cubes, rotation_axes=[0, 1])
    with pytest.raises(ValueError, match="rotation_axes must be integers 0"):
        four(cubes, rotation_axes=[0, 3, 1])
    flat = np.zeros((1, S, S + 8, S + 8), np.float32)
    with pytest.raises(ValueError, match="needs equal sizes"):
        four(flat, rotation_axes=[1])
    four(flat, rotation_axes=[0])  # turning about z keeps a (16, 24, 24) cube's shape


def test_compute_features_passes_rotations_normal_axes_and_normalization(model):
    """Through the pipeline step: a synapse whose stored cube is turned about its cleft normal
    and brightened keeps its features with cube normalisation and 4 rotations."""
    _, info = build_model(None, seed=7)
    raw = blobs(2, seed=8)
    turned = raw.copy()
    turned[1] = rotated(raw[1:], 1)[0] * 0.7 + 40  # synapse 1's normal lies along y
    table = pd.DataFrame({"bbox": ["b", "b"], "Var1": ["s0", "s1"], "cleft_normal_z": [1.0, 0.1],
                          "cleft_normal_y": [0.0, 0.99], "cleft_normal_x": [0.0, 0.0]})

    def feats(r: np.ndarray, **kw) -> tuple[np.ndarray, str]:
        cubes = CubeSet(raw=r, bits=np.zeros(r.shape, np.uint8), table=table, skipped=pd.DataFrame(),
                        geometry=CubeGeometry(size=S))
        cfg = Config(cube_size=S, segmentation_type=0, extraction_method="stage_specific", layer_num=20, cache_dir="", **kw)
        res = steps.compute_features(cubes, model, info, cfg, progress=False)
        assert res.description == describe(info, cfg)
        return res.matrix, res.description

    a, text = feats(raw, rotation_averaging=4, intensity_normalization="cube")
    b, _ = feats(turned, rotation_averaging=4, intensity_normalization="cube")
    assert "averaged over 4 rotations" in text and "z-scored over the cube" in text
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(b[1], a[1], rtol=1e-5, atol=1e-5 * np.abs(a).max())
    p, _ = feats(raw)
    q, _ = feats(turned)
    assert np.abs(q[1] - p[1]).max() > 1e-3 * np.abs(p).max()  # the plain features do move
    assert np.abs(a[0] - p[0]).max() > 1e-3 * np.abs(p).max()  # and the z-score reached the network
