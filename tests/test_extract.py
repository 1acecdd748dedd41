"""Feature extraction, poolings, bf16 agreement and the feature files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from synapse_nb.core.errors import DataError
from synapse_nb.core.layers import layer_channels
from synapse_nb.cubes.geometry import CubeGeometry
from synapse_nb.cubes.rendering import RenderSettings
from synapse_nb.cubes.store import CubeSet
from synapse_nb.features import extract as E
from synapse_nb.features.checkpoint import ModelInfo, build_model
from synapse_nb.features.extract import (
    EXTRACTION_METHODS,
    FEATURE_PREFIX,
    POOLINGS,
    FeatureExtractor,
    FeatureResult,
    feature_columns,
    feature_dim,
    features_frame,
    pool_features,
    seed_csv_name,
)
from synapse_nb.features.inference import InferenceTrunk
from synapse_nb.pipeline.runs import Run
from synapse_nb.pipeline.steps import save_features

EXPECTED_DIMS = {
    ("standard", "avg"): 192, ("standard", "max"): 192, ("standard", "concat_avg_max"): 384, ("standard", "spp"): 14016,
    ("stage_specific", "avg"): 96, ("stage_specific", "max"): 96, ("stage_specific", "concat_avg_max"): 192,
    ("stage_specific", "spp"): 7008,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    m, _ = build_model(None, seed=11)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BatchNorm so that folding is exercised
        for mod in m.features:
            if isinstance(mod, nn.BatchNorm3d):
                c = mod.num_features
                mod.running_mean.copy_(0.05 * torch.randn(c, generator=gen))
                mod.running_var.copy_(0.6 + 0.8 * torch.rand(c, generator=gen))
                mod.weight.copy_(0.8 + 0.4 * torch.rand(c, generator=gen))
                mod.bias.copy_(0.05 * torch.randn(c, generator=gen))
    return m


def realistic(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smoothed noise in [0, 1]: blob-like, like min-max scaled EM more than white noise."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, size, generator=gen)
    x = F.avg_pool3d(F.avg_pool3d(x, 5, 1, 2, count_include_pad=False), 5, 1, 2, count_include_pad=False)
    x = x + 0.05 * torch.rand(x.shape, generator=gen)
    lo = x.amin(dim=(1, 2, 3, 4), keepdim=True)
    hi = x.amax(dim=(1, 2, 3, 4), keepdim=True)
    return ((x - lo) / (hi - lo))[:, 0].numpy().astype(np.float32)


class LazyCubes:
    """A cube source like the cube store's lazy view; records every read."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr
        self.reads: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.arr)

    def __getitem__(self, item: slice) -> np.ndarray:
        assert isinstance(item, slice)
        self.reads.append((item.start, item.stop))
        return self.arr[item].copy()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ----------------------------------------------------------------------------- dimensions
def test_constants_and_helpers():
    assert POOLINGS == ("avg", "max", "concat_avg_max", "spp")
    assert EXTRACTION_METHODS == ("standard", "stage_specific")
    assert layer_channels(20) == 96
    for (method, pooling), dim in EXPECTED_DIMS.items():
        assert feature_dim(pooling, 192 if method == "standard" else 96) == dim
    with pytest.raises(ValueError, match="pooling"):
        feature_dim("median", 10)


@pytest.fixture(scope="module")
def cubes80() -> np.ndarray:
    return realistic(2, 80, seed=5)


@pytest.fixture(scope="module")
def acts80(model, cubes80) -> dict[str, torch.Tensor]:
    """float32 activations of two realistic 80^3 cubes: whole trunk and layer 20."""
    x = torch.from_numpy(cubes80).unsqueeze(1)
    with torch.inference_mode():
        return {"standard": InferenceTrunk(model)(x), "stage_specific": InferenceTrunk(model, 20)(x)}


def test_every_pooling_dimension_at_80(model, acts80):
    assert tuple(acts80["standard"].shape) == (2, 192, 5, 5, 5)
    assert tuple(acts80["stage_specific"].shape) == (2, 96, 20, 20, 20)
    for (method, pooling), dim in EXPECTED_DIMS.items():
        assert tuple(pool_features(acts80[method], pooling).shape) == (2, dim), (method, pooling)
        ex = FeatureExtractor(model, method=method, layer_num=20, pooling=pooling, progress=False)
        assert ex.dim == dim
    act = acts80["stage_specific"]
    spp = pool_features(act, "spp")[0]
    torch.testing.assert_close(spp[:96], act[0].mean(dim=(1, 2, 3)))  # level 1 = global average
    cat = pool_features(act, "concat_avg_max")[0]
    torch.testing.assert_close(cat[96:], act[0].amax(dim=(1, 2, 3)))


def test_extractor_end_to_end_at_80(model, cubes80, acts80):
    ex = FeatureExtractor(model, method="stage_specific", layer_num=20, pooling="spp", progress=False)
    feats = ex(cubes80[:1])
    assert feats.shape == (1, 7008) and feats.dtype == np.float32 and np.isfinite(feats).all()
    np.testing.assert_allclose(feats, pool_features(acts80["stage_specific"][:1], "spp").numpy(), rtol=1e-5, atol=1e-6)


def test_matches_eager_model_and_is_batch_independent(model):
    cubes = realistic(5, 16, seed=1)
    x = torch.from_numpy(cubes).unsqueeze(1)
    for method, layer, pooling in (("stage_specific", 20, "concat_avg_max"), ("standard", 20, "avg"), ("stage_specific", 14, "max")):
        with torch.inference_mode():
            ref = pool_features(model.forward_features(x, layer if method == "stage_specific" else None), pooling).numpy()
        got1 = FeatureExtractor(model, method, layer, pooling, batch_size=1, progress=False, num_threads=1)(cubes)
        got3 = FeatureExtractor(model, method, layer, pooling, batch_size=3, progress=False, num_threads=1,
                                channels_last=False)(cubes)
        np.testing.assert_allclose(got1, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
        np.testing.assert_allclose(got3, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_reads_lazily_batch_by_batch(model):
    src = LazyCubes(realistic(5, 16))
    out = FeatureExtractor(model, "stage_specific", 22, batch_size=2, progress=False, num_threads=1)(src)
    assert out.shape == (5, 96)
    assert src.reads == [(0, 2), (2, 4), (4, 5)]
    assert FeatureExtractor(model, progress=False)(np.zeros((0, 16, 16, 16), np.float32)).shape == (0, 192)


def test_bad_inputs_name_the_batch(model):
    ex = FeatureExtractor(model, "stage_specific", 20, batch_size=2, progress=False, num_threads=1)
    cubes = realistic(5, 16)
    cubes[3, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"cubes\[2:4\].*NaN.*\[3\]"):
        ex(cubes)
    with pytest.raises(ValueError, match=r"cubes\[0:2\] has shape \(2, 16, 16\)"):
        ex(np.zeros((4, 16, 16), np.float32))
    with pytest.raises(ValueError, match="too small"):
        ex(np.zeros((2, 3, 16, 16), np.float32))

    class Ragged(LazyCubes):
        def __getitem__(self, item):
            return np.zeros((item.stop - item.start, 16, 16, 16 if item.start == 0 else 24), np.float32)

    with pytest.raises(ValueError, match=r"cubes\[2:3\] has cube shape"):
        ex(Ragged(np.zeros((3, 1))))


def test_invalid_settings():
    m, _ = build_model(None)
    for kwargs in ({"layer_num": 34}, {"layer_num": -1}, {"layer_num": 2.5}, {"method": "deep"},
                   {"pooling": "sum"}, {"precision": "float16"}, {"batch_size": 0}, {"input_range": "0_255"}):
        with pytest.raises(ValueError):
            FeatureExtractor(m, **kwargs)


def test_stage_specific_stops_at_layer(model):
    ex = FeatureExtractor(model, "stage_specific", 20, progress=False)
    assert ex.trunk.upto == 20 and ex.channels == 96
    n_convs = sum(op[0] == "conv" for op in ex.trunk.ops)
    assert n_convs == 7  # 0, 3, 6, 9, 13, 16, 20 and nothing after
    assert ex.trunk.ops[-1][0] == "conv" and not ex.trunk.ops[-1][-1]  # conv 20: no BN, no ReLU
    assert "features.20" in ex.describe() and "before BatchNorm" in ex.describe()


def test_input_range_and_default_follows_weights(model):
    cubes = realistic(2, 16)
    a = FeatureExtractor(model, "stage_specific", 20, input_range="-1_1", progress=False, num_threads=1)(cubes)
    b = FeatureExtractor(model, "stage_specific", 20, input_range="0_1", progress=False, num_threads=1)(cubes * 2 - 1)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert FeatureExtractor(model, progress=False).input_range == "0_1"  # random weights
    m, _ = build_model(None)
    m.info = ModelInfo("/x/hemibrain.checkpoint", None, False, None, True, "-1_1")
    assert FeatureExtractor(m, progress=False).input_range == "-1_1"


def test_threads_restored(model):
    before = torch.get_num_threads()
    ex = FeatureExtractor(model, "stage_specific", 2, progress=False, num_threads=2)
    ex(realistic(1, 16))
    assert torch.get_num_threads() == before
    assert ex.last_seconds is not None
    assert FeatureExtractor(model, progress=False).num_threads == E.available_cores()


def test_bf16_agrees_with_float32(model, cubes80, acts80):
    """Cosine >= 0.999 per synapse on realistic inputs, both methods, every pooling.

    Without native bf16 instructions torch emulates bf16 convolutions (about 100x slower than
    float32): there the central 32^3 of one synapse is checked instead of two whole 80^3 cubes
    (the smallest crop whose whole-trunk output still has 2^3 positions, so max and spp differ
    from avg)."""
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    x = torch.from_numpy(cubes80).unsqueeze(1)
    if not native:
        x = x[:1, :, 24:56, 24:56, 24:56].contiguous()
    with torch.inference_mode():
        for method, upto in (("standard", None), ("stage_specific", 20)):
            ref = acts80[method] if native else InferenceTrunk(model, upto)(x)
            low = InferenceTrunk(model, upto, torch.bfloat16)(x)
            for pooling in POOLINGS:
                cos = cosine(pool_features(low, pooling).numpy(), pool_features(ref, pooling).numpy())
                assert cos.min() >= 0.999, (method, pooling, cos)
    ex = FeatureExtractor(model, "stage_specific", 20, precision="bfloat16", progress=False, num_threads=1)
    assert ex(realistic(1, 16)).dtype == np.float32


# ----------------------------------------------------------------------------- tables and files
def test_seed_csv_name_examples():
    assert seed_csv_name("standard", 20, "avg", 10, 1.0) == "features_avg_seg10_alpha1_0.csv"
    assert seed_csv_name("standard", 20, "avg", 10, 1) == "features_avg_seg10_alpha1_0.csv"
    assert seed_csv_name("stage_specific", 20, "spp", 10, 0.5) == "features_layer20_spp_seg10_alpha0_5.csv"
    assert seed_csv_name("stage_specific", 9, "concat_avg_max", 0, 0.25) == (
        "features_layer9_concat_avg_max_seg0_alpha0_25.csv"
    )
    with pytest.raises(ValueError):
        seed_csv_name("stage_specific", 40, "avg", 10, 1.0)


def test_features_frame_layout():
    meta = pd.DataFrame({"bbox": ["b1", "b1", "b2"], "x": [1, 2, 3]}, index=pd.Index([7, 8, 9], name="synapse_id"))
    feats = np.arange(6, dtype=np.float32).reshape(3, 2)
    df = features_frame(feats, meta)
    assert list(df.columns) == ["synapse_id", "bbox", "x", "feat_0000", "feat_0001"]
    assert feature_columns(df) == ["feat_0000", "feat_0001"] and FEATURE_PREFIX == "feat_"
    np.testing.assert_array_equal(df[feature_columns(df)].to_numpy(), feats)
    anon = features_frame(feats, meta.reset_index(drop=True).iloc[[2, 0, 1]])
    assert list(anon.columns) == ["bbox", "x", "feat_0000", "feat_0001"] and list(anon.x) == [3, 1, 2]
    assert E.feature_name(14015) == "feat_14015"
    with pytest.raises(ValueError, match="rows"):
        features_frame(feats[:2], meta)


def test_save_features_writes_both_files_atomically(tmp_path):
    meta = pd.DataFrame({"bbox": ["b1", "b2"], "syn": [1, 2]})
    df = features_frame(np.random.default_rng(0).random((2, 3), dtype=np.float32), meta)
    name = seed_csv_name("stage_specific", 20, "avg", 10, 1.0)
    run = Run(tmp_path / "run")
    result = FeatureResult(df, pd.DataFrame({"bbox": [], "Var1": [], "reason": []}), name, "random weights", 1.5)
    out = save_features(result, run)
    tables = tmp_path / "run" / "tables"
    assert out["parquet"] == tables / "features.parquet" and out["csv"] == tables / name
    assert sorted(p.name for p in tables.iterdir()) == sorted(
        ["features.parquet", name, "skipped_features.parquet", "skipped_features.csv", "extraction.json"])
    back = pd.read_parquet(out["parquet"])
    pd.testing.assert_frame_equal(back, df)
    csv = pd.read_csv(out["csv"])
    assert list(csv.columns) == ["bbox", "syn", "feat_0000", "feat_0001", "feat_0002"]
    np.testing.assert_allclose(csv[feature_columns(csv)].to_numpy(), df[feature_columns(df)].to_numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="bare file name"):
        save_features(FeatureResult(df, result.skipped, "../x.csv", "", 0.0), run)


# ----------------------------------------------------------------------------- non-finite weights / features
def _nan_in(model, key: str):
    bad, _ = build_model(None, seed=11)
    bad.load_state_dict(model.state_dict())
    with torch.no_grad():
        bad.state_dict()[key].view(-1)[0] = float("nan")
    return bad


def test_nan_weights_are_refused_before_they_give_zero_features(model):
    # the fused conv + ReLU turns NaN into 0: without the check these weights give all-zero
    # features that look like a success
    bad = _nan_in(model, "features.0.weight")
    with pytest.raises(DataError) as err:
        FeatureExtractor(bad, "stage_specific", 20, progress=False, num_threads=1)
    msg = str(err.value)
    assert "the model: weight features.0.weight holds NaN/inf values" in msg and "build_model" in msg
    assert "\n" not in msg
    # weights after the requested layer are never run, so they do not matter
    late = _nan_in(model, "features.30.weight")
    out = FeatureExtractor(late, "stage_specific", 20, progress=False, num_threads=1)(realistic(1, 16))
    assert np.isfinite(out).all()
    with pytest.raises(DataError, match=r"features\.30\.weight"):
        FeatureExtractor(late, "standard", progress=False, num_threads=1)


def test_non_finite_features_name_the_cube(model):
    ex = FeatureExtractor(model, "stage_specific", 20, batch_size=2, progress=False, num_threads=1)
    cubes = realistic(4, 16)
    cubes[3] *= np.float32(3e38)  # finite input, but the convolutions overflow to inf
    with pytest.raises(DataError) as err:
        ex(cubes)
    msg = str(err.value)
    assert "features of cube 3 (row 3 of the input) are NaN/inf" in msg and "cubes[2:4]" in msg
    assert "\n" not in msg


def test_non_finite_features_name_the_synapse_of_the_cube_store(model, monkeypatch):
    S = 16
    table = pd.DataFrame({"bbox": ["bbox1", "bbox1", "bbox4"], "Var1": ["syn_a", "syn_b", "syn_c"], "table_row": [0, 1, 7]})
    raw = (np.random.default_rng(0).random((3, S, S, S)) * 255).astype(np.uint8)
    cubes = CubeSet(raw=raw, bits=np.zeros_like(raw), table=table, skipped=pd.DataFrame(), geometry=CubeGeometry(size=S))
    view = cubes.rendered(RenderSettings(0), indices=[0, 2])
    ex = FeatureExtractor(model, "stage_specific", 20, batch_size=1, progress=False, num_threads=1)
    trunk, calls = ex.trunk, []

    def broken(x):  # a network that fails on the second batch: the view's second cube (bbox4 / syn_c)
        calls.append(len(x))
        out = trunk(x)
        return out * np.nan if len(calls) == 2 else out

    monkeypatch.setattr(ex, "trunk", broken)
    with pytest.raises(DataError, match=r"features of bbox bbox4, synapse syn_c, table row 7 are NaN/inf"):
        ex(view)
    assert view.synapse_where(0) == "bbox bbox1, synapse syn_a, table row 0"


def test_features_frame_refuses_non_finite_rows_naming_the_synapse():
    meta = pd.DataFrame({"bbox": ["b1", "b2", "b2"], "Var1": ["s1", "s2", "s3"], "table_row": [4, 11, 12]})
    feats = np.ones((3, 4), np.float32)
    feats[2, 1] = np.nan
    feats[1, 3] = np.inf
    with pytest.raises(DataError) as err:
        features_frame(feats, meta)
    msg = str(err.value)
    assert msg.startswith("features of bbox b2, synapse s2, table row 11 (row 1; 2 of 3 rows) are NaN/inf")
    assert "\n" not in msg
    with pytest.raises(DataError, match=r"features of row 0 \(row 0; 1 of 1 rows\)"):
        features_frame(np.array([[np.nan]], np.float32), pd.DataFrame({"x": [1]}))
