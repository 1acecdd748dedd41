"""VGG3D layout, checkpoint loading and the fast inference trunk."""
from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from torch import nn

from synapse_nb.core import layers as _core_layers
from synapse_nb.core.layers import (
    BLOCK_REPEATS,
    CHANNELS,
    CONV_INDICES,
    N_FEATURE_MODULES,
    POOL_INDICES,
)
from synapse_nb.features import checkpoint as _features_checkpoint
from synapse_nb.features import inference as _features_inference
from synapse_nb.features.checkpoint import (
    CheckpointError,
    ModelInfo,
    build_model,
    load_checkpoint,
)
from synapse_nb.features.inference import InferenceTrunk
from synapse_nb.features.vgg3d import VGG3D, count_parameters

TRUNK_PARAMS = sum(
    cin * cout * 27 + cout + 2 * cout
    for cin, cout in zip((1, 24, 24, 24, 24, 48, 48, 96, 96, 192), (24, 24, 24, 24, 48, 48, 96, 96, 192, 192))
)


def head_params(n_classes: int) -> int:
    return 24000 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * n_classes + n_classes


def randomise_bn(model: VGG3D, seed: int = 0) -> VGG3D:
    """Give every BatchNorm non-trivial statistics so that folding / 'before BN' is tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.features:
            if isinstance(m, nn.BatchNorm3d):
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.weight.copy_(0.8 + 0.4 * torch.rand(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
    return model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trunk() -> VGG3D:
    model, _ = build_model(None, seed=3)
    return randomise_bn(model)


# ----------------------------------------------------------------------------- layout
def test_constants_are_consistent():
    assert BLOCK_REPEATS == (4, 2, 2, 2)
    assert CHANNELS == (24, 48, 96, 192)
    assert N_FEATURE_MODULES == 34
    assert CONV_INDICES == (0, 3, 6, 9, 13, 16, 20, 23, 27, 30)
    assert POOL_INDICES == (12, 19, 26, 33)
    assert _core_layers.TRUNK_OUTPUT_SHAPE == (192, 5, 5, 5)
    assert _core_layers.HEAD_INPUT == 24000


def test_module_types_and_channels_at_every_index():
    model = VGG3D()
    feats = model.features
    assert isinstance(feats, nn.Sequential) and len(feats) == 34
    cin = 1
    for i, mod in enumerate(feats):
        if i in CONV_INDICES:
            assert isinstance(mod, nn.Conv3d), i
            assert mod.kernel_size == (3, 3, 3) and mod.padding == (1, 1, 1) and mod.stride == (1, 1, 1)
            assert mod.in_channels == cin
            cin = mod.out_channels
            assert isinstance(feats[i + 1], nn.BatchNorm3d) and feats[i + 1].num_features == cin
            assert isinstance(feats[i + 2], nn.ReLU)
        elif i in POOL_INDICES:
            assert isinstance(mod, nn.MaxPool3d) and mod.kernel_size == 2, i
        else:
            assert isinstance(mod, (nn.BatchNorm3d, nn.ReLU)), i
        assert _core_layers.MODULE_CHANNELS[i] == cin
    assert [feats[i].out_channels for i in CONV_INDICES] == [24] * 4 + [48] * 2 + [96] * 2 + [192] * 2
    assert feats[20].in_channels == 48 and feats[20].out_channels == 96
    assert _core_layers.layer_output_size(20) == 20 and _core_layers.layer_output_size(33) == 5
    assert model.classifier is None


def test_state_dict_key_names():
    keys = list(VGG3D().state_dict())
    assert keys[:7] == [
        "features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
        "features.1.running_mean", "features.1.running_var", "features.1.num_batches_tracked",
    ]
    weight_idx = sorted({int(k.split(".")[1]) for k in keys if k.endswith(".weight")})
    assert weight_idx == sorted(CONV_INDICES + _core_layers.BN_INDICES)
    assert not any(k.startswith("classifier") for k in keys)
    with torch.device("meta"):  # keys only, no 100M-parameter allocation
        head_keys = [k for k in VGG3D(num_classes=3).state_dict() if k.startswith("classifier")]
    assert head_keys == [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]


def test_trunk_output_shape_at_80(trunk):
    with torch.inference_mode():
        out = trunk.forward_features(torch.rand(1, 1, 80, 80, 80))
    assert tuple(out.shape) == (1, 192, 5, 5, 5)


def test_trunk_parameter_count():
    assert count_parameters(VGG3D()) == TRUNK_PARAMS
    assert 1.9e6 < TRUNK_PARAMS < 2.1e6


def test_layer_validation():
    for bad in (-1, 34, 2.5, "20", True, None):
        with pytest.raises(ValueError):
            _core_layers.validate_layer(bad)
    assert _core_layers.validate_layer(20) == 20
    assert _core_layers.layer_channels(20) == 96 and _core_layers.layer_channels(21) == 96 and _core_layers.layer_channels(33) == 192
    assert "before BatchNorm" in _core_layers.layer_description(20)


# ----------------------------------------------------------------------------- init
def test_seeded_init_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, info = build_model(None, seed=7)
    b, _ = build_model(None, seed=7)
    c, _ = build_model(None, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(va, vb), k
        if k.endswith("weight") and k.split(".")[1] in {str(i) for i in CONV_INDICES}:
            assert not torch.equal(va, vc), k
    assert info == ModelInfo("random", 7, False, None, False, "0_1")
    assert info.description().startswith("RANDOM weights (seed 7)")
    assert not a.training and a.info is info


def test_no_head_without_checkpoint():
    model, info = build_model(None)
    assert model.classifier is None and not info.has_head and info.num_classes is None
    with pytest.raises(RuntimeError, match="no classifier head"):
        model(torch.rand(1, 1, 16, 16, 16))


# ----------------------------------------------------------------------------- checkpoints
def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_checkpoint_round_trip(tmp_path, trunk):
    sd = trunk.state_dict()
    path = _save({"model_state_dict": sd, "epoch": 12, "note": "x"}, tmp_path / "ckpt.pt")
    loaded, info = build_model(path)
    assert info.pretrained and info.source == str(path) and not info.has_head and info.num_classes is None
    assert info.default_input_range == "-1_1" and str(path) in info.description()
    assert not loaded.training
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.inference_mode():
        assert torch.equal(trunk.forward_features(x), loaded.forward_features(x))
    # plain state dict, 'state_dict' wrapper, DataParallel prefix, missing BN counters
    variants = {
        "plain": sd,
        "wrapped": {"state_dict": sd},
        "dataparallel": {"module." + k: v for k, v in sd.items()},
        "no_counters": {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
    }
    for name, obj in variants.items():
        state = load_checkpoint(_save(obj, tmp_path / f"{name}.pt"))
        assert set(state) >= {k for k in sd if not k.endswith("num_batches_tracked")}, name
        build_model(tmp_path / f"{name}.pt")


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nope.checkpoint"
    with pytest.raises(FileNotFoundError, match="nope.checkpoint") as err:
        build_model(path)
    assert "weights_path=None" in str(err.value)


def test_mismatched_checkpoint_lists_keys(tmp_path, trunk):
    sd = dict(trunk.state_dict())
    sd["features.0.w"] = sd.pop("features.0.weight")
    path = _save(sd, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointError) as err:
        build_model(path)
    msg = str(err.value)
    assert str(path) in msg and "features.0.weight" in msg and "features.0.w" in msg
    assert "missing" in msg and "unexpected" in msg

    sd = dict(trunk.state_dict())
    sd["features.3.weight"] = torch.zeros(24, 24, 3, 3, 1)
    with pytest.raises(CheckpointError, match=r"features\.3\.weight.*\(24, 24, 3, 3, 1\)"):
        build_model(_save(sd, tmp_path / "shape.pt"))

    many = {f"encoder.{i}.weight": torch.zeros(1) for i in range(40)}
    with pytest.raises(CheckpointError, match="more") as err:
        build_model(_save(many, tmp_path / "other_net.pt"))
    assert len(str(err.value)) < 3000


class _Evil:
    """Pickles into a call that would create a marker file if the loader executed it."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_weights_only_refuses_pickled_objects(tmp_path):
    evil = _Evil()
    evil.marker = str(tmp_path / "pwned")
    _Evil.marker = evil.marker
    path = _save({"model_state_dict": evil}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        build_model(path)
    assert not (tmp_path / "pwned").exists()
    path = _save({"model_state_dict": {"features.0.weight": [1, 2]}}, tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a tensor"):
        load_checkpoint(path)


def test_head_built_from_checkpoint_and_class_count_detected(tmp_path, trunk):
    with torch.device("meta"):
        assert count_parameters(VGG3D(num_classes=7)) == TRUNK_PARAMS + head_params(7)
    assert 116e6 < TRUNK_PARAMS + head_params(7) < 118e6
    # zeros are cheap to make (the values do not matter, only that they arrive)
    sd = dict(trunk.state_dict())
    for i, (n_out, n_in) in zip((0, 3, 6), ((4096, 24000), (4096, 4096), (7, 4096))):
        sd[f"classifier.{i}.weight"] = torch.zeros(n_out, n_in)
        sd[f"classifier.{i}.bias"] = torch.zeros(n_out)
    sd["classifier.0.weight"][0, :5] = torch.arange(1.0, 6.0)
    sd["classifier.6.bias"][:] = torch.arange(7.0)
    path7 = _save({"model_state_dict": sd}, tmp_path / "seven.pt")
    loaded, info = build_model(path7)
    assert info.has_head and info.num_classes == 7 and loaded.num_classes == 7
    assert count_parameters(loaded) == TRUNK_PARAMS + head_params(7)
    assert torch.equal(loaded.classifier[0].weight[0, :5], torch.arange(1.0, 6.0))
    with torch.inference_mode():
        logits = loaded.classifier(torch.rand(1, 24000))
    assert torch.equal(logits, torch.arange(7.0)[None])  # zero weights: logits are the bias
    del loaded
    with pytest.raises(CheckpointError, match="7-class head"):
        build_model(path7, num_classes=6)
    path7.unlink()
    sd["classifier.6.weight"] = sd["classifier.6.weight"][:6].clone()
    sd["classifier.6.bias"] = sd["classifier.6.bias"][:6].clone()
    loaded, info = build_model(_save(sd, tmp_path / "six.pt"))
    assert info.num_classes == 6 and "6-class head" in info.description()
    assert loaded.classifier[6].out_features == 6
    del loaded, sd
    gc.collect()
    assert _features_checkpoint._num_classes_from_state({"features.0.weight": torch.zeros(1)}) is None


# ----------------------------------------------------------------------------- forward paths
def test_layer20_is_conv_output_before_bn(trunk):
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.inference_mode():
        h = x
        for i in range(20):
            h = trunk.features[i](h)
        manual = torch.nn.functional.conv3d(h, trunk.features[20].weight, trunk.features[20].bias, padding=1)
        got = trunk.forward_features(x, upto=20)
        after_bn = trunk.forward_features(x, upto=21)
        fast = InferenceTrunk(trunk, upto=20)(x)
    assert tuple(got.shape) == (1, 96, 4, 4, 4)
    assert torch.equal(got, manual)
    assert not torch.allclose(got, after_bn)
    torch.testing.assert_close(fast, manual, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("upto", [None, 0, 1, 2, 12, 20, 21, 22, 26, 31])
@pytest.mark.parametrize("channels_last", [True, False])
def test_inference_trunk_matches_eager(trunk, upto, channels_last):
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.inference_mode():
        ref = trunk.forward_features(x, upto)
        got = InferenceTrunk(trunk, upto, channels_last=channels_last)(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_unfused_trunk_and_bf16_leave_model_untouched(trunk):
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.inference_mode():
        ref = trunk.forward_features(x, 22)
        plain = InferenceTrunk(trunk, 22, fuse=False)(x)
        InferenceTrunk(trunk, 22, torch.bfloat16, fuse=False)(x)
        InferenceTrunk(trunk, None, torch.bfloat16)(x)
    torch.testing.assert_close(plain, ref)
    for k, v in trunk.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    with pytest.raises(ValueError):
        InferenceTrunk(trunk, None, torch.float16)


def test_channels_last_from_the_first_conv(trunk):
    """A 1-channel input must still yield channels-last activations (else a 49 MB reorder).

    bfloat16 is checked only where oneDNN has bf16 kernels: elsewhere torch takes its own
    (NCDHW) convolution path whatever the input layout, so there is no reorder to avoid."""
    dtypes = [torch.float32] + ([torch.bfloat16] if torch.ops.mkldnn._is_mkldnn_bf16_supported() else [])
    with torch.inference_mode():
        for dtype in dtypes:
            out = InferenceTrunk(trunk, 0, dtype)(torch.rand(2, 1, 16, 16, 16))
            assert out.is_contiguous(memory_format=torch.channels_last_3d)


def test_fast_pool_matches_and_odd_sizes_fall_back(trunk):
    """20^3 input: even volumes use the pairwise-maximum pool, 5^3 needs the ATen kernel."""
    x = torch.rand(1, 1, 20, 20, 20)
    with torch.inference_mode():
        ref = trunk.forward_features(x)
        got = InferenceTrunk(trunk)(x)
        y = torch.rand(2, 8, 6, 4, 10).contiguous(memory_format=torch.channels_last_3d)
        y[0, 3, 1, 1, 1] = float("nan")
        fast = _features_inference._max_pool(y, 2, 2, 0, 1, False)
    assert tuple(got.shape) == (1, 192, 1, 1, 1)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    torch.testing.assert_close(fast, torch.nn.functional.max_pool3d(y, 2), equal_nan=True)
    assert fast.is_contiguous(memory_format=torch.channels_last_3d)


def test_reuse_large_allocations_is_reference_counted():
    """The malloc tuning is entered once, nests, and is undone on exit (its speed is measured
    in benchmarks/bench_network.py, not asserted here: page-fault counts depend on the host)."""
    with _features_inference.reuse_large_allocations() as active:
        assert _features_inference._alloc_depth == (1 if active else 0)
        with _features_inference.reuse_large_allocations():
            assert _features_inference._alloc_depth == (2 if active else 0)
            assert float(torch.ones(48 << 18).sum()) == 48 << 18
        assert _features_inference._alloc_depth == (1 if active else 0)
    assert _features_inference._alloc_depth == 0


# ----------------------------------------------------------------------------- bad checkpoint files
@pytest.mark.parametrize("key", ["features.0.weight", "features.1.running_var"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_file_and_key(tmp_path, trunk, key, bad):
    sd = {k: v.clone() for k, v in trunk.state_dict().items()}
    sd[key].view(-1)[3] = bad
    path = _save({"model_state_dict": sd}, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError) as err:
        build_model(path)
    msg = str(err.value)
    assert msg == f"{path}: weight {key} holds NaN/inf values; the checkpoint is corrupt, use another one"
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_checkpoint(path)


def test_non_finite_check_reads_large_tensors_in_chunks(monkeypatch):
    monkeypatch.setattr(_features_checkpoint, "_FINITE_CHUNK", 7)
    t = torch.zeros(50)
    _features_checkpoint.check_finite({"a": t, "n": torch.tensor(3)}, "x")  # all finite: no error
    t[49] = float("-inf")  # in the last, short chunk
    with pytest.raises(CheckpointError, match="x: weight a holds NaN/inf"):
        _features_checkpoint.check_finite({"a": t}, "x")


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "is empty (0 bytes)"),
        (b"hemibrain weights are on the shared drive\n", "a text file"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n", "Git LFS pointer"),
        (b"\n  <!DOCTYPE html>\n<html><head><title>Dropbox</title></head></html>\n", "an HTML page"),
        (b"\x00\x01\x02garbage\xff", "unknown format"),
    ],
)
def test_empty_or_text_checkpoint_gets_one_clear_line(tmp_path, content, expected):
    path = tmp_path / "hemibrain_production.checkpoint"
    path.write_bytes(content)
    for load in (build_model, load_checkpoint):
        with pytest.raises(CheckpointError) as err:
            load(path)
        msg = str(err.value)
        assert expected in msg and str(path) in msg and "\n" not in msg
        assert "torch checkpoint" in msg and "101" not in msg and '""' not in msg


def test_legacy_torch_format_is_still_accepted(tmp_path, trunk):
    path = tmp_path / "legacy.pt"
    torch.save(trunk.state_dict(), path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"
    assert set(load_checkpoint(path)) == set(trunk.state_dict())


def test_truncated_checkpoint_gets_one_line(tmp_path, trunk):
    path = _save(trunk.state_dict(), tmp_path / "full.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError) as err:
        build_model(cut)
    msg = str(err.value)
    assert str(cut) in msg and "\n" not in msg and "truncated" in msg
