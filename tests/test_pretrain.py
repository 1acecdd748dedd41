"""Self-supervised pretraining (synapse_nb.training): augmentations, loss, resume, weights files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from synapse_nb.core.errors import DataError
from synapse_nb.features import FeatureExtractor, VGG3D, build_model
from synapse_nb.features.checkpoint import CheckpointError, ModelInfo
from synapse_nb.training import (
    STATE_FILE,
    AugmentSettings,
    ContrastiveEncoder,
    PretrainSettings,
    augmentation_examples,
    nt_xent_loss,
    pretrain,
    read_history,
    resample_cubes,
    two_views,
    upto_for,
    view_agreement,
)

SIZE = 16
UPTO = 13  # first conv of block 2: cheap at 16^3, and the BatchNorms before it are trained
NO_AUGMENT = AugmentSettings(
    rotate90=False, flip=False, affine_prob=0.0, contrast_prob=0.0, intensity_prob=0.0,
    noise_prob=0.0, blur_prob=0.0, dropout_prob=0.0,
)
#: brightness, contrast and pose change, no occlusion: random features follow the brightness
PLANTED_AUGMENT = AugmentSettings(dropout_prob=0.0, blur_prob=0.0, affine_prob=0.0)


def planted(n: int = 8, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """n cubes of distinct planted shapes (ball, disc, rod, shell, cross, dumbbell, box, speckle)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:size, :size, :size].astype(np.float32) - (size - 1) / 2
    r = np.sqrt(z**2 + y**2 + x**2)
    h = size / 16
    shapes = [
        r < 5 * h, (np.abs(z) < 1.5 * h) & (r < 6.5 * h), (np.abs(y) < 1.5 * h) & (np.abs(x) < 1.5 * h),
        (r < 6 * h) & (r > 3.5 * h), (np.abs(z) < 1.5 * h) | (np.abs(y) < 1.5 * h),
        (np.sqrt((z - 3.5 * h) ** 2 + y**2 + x**2) < 3 * h) | (np.sqrt((z + 3.5 * h) ** 2 + y**2 + x**2) < 3 * h),
        (np.abs(z) < 4 * h) & (np.abs(y) < 4 * h) & (np.abs(x) < 4 * h), (r < 7 * h) & (rng.random((size,) * 3) < 0.3),
    ]
    out = np.empty((n, size, size, size), np.float32)
    for i in range(n):
        out[i] = np.clip(0.3 + 0.5 * shapes[i % len(shapes)] + rng.normal(0, 0.03, (size,) * 3), 0, 1)
    return out


def settings(**kw) -> PretrainSettings:
    base = dict(epochs=3, batch_size=4, learning_rate=1e-3, upto=UPTO, seed=1, augment=PLANTED_AUGMENT)
    return PretrainSettings(**{**base, **kw})


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny tensors: one thread is fastest and keeps results identical between runs."""


# ----------------------------------------------------------------------------- augmentations
def test_views_are_deterministic_per_seed_and_keep_shape_and_range():
    x = planted(4)
    a1, a2 = two_views(x, AugmentSettings(), seed=3, epoch=2, batch=1)
    b1, b2 = two_views(x, AugmentSettings(), seed=3, epoch=2, batch=1)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert a1.shape == a2.shape == x.shape and a1.dtype == torch.float32
    assert float(a1.min()) >= 0.0 and float(a1.max()) <= 1.0
    assert not torch.equal(a1, a2)  # the two views differ
    c1, _ = two_views(x, AugmentSettings(), seed=3, epoch=3, batch=1)
    d1, _ = two_views(x, AugmentSettings(), seed=4, epoch=2, batch=1)
    assert not torch.equal(a1, c1) and not torch.equal(a1, d1)
    # without augmentations a view is the cube itself
    p1, p2 = two_views(x, NO_AUGMENT, seed=0, epoch=0, batch=0)
    assert torch.equal(p1, torch.from_numpy(x)) and torch.equal(p2, p1)


def test_rotations_keep_the_voxels():
    """Turns and flips only (no resampling): every view holds the cube's own voxel values."""
    x = planted(2)
    only_pose = AugmentSettings(affine_prob=0, contrast_prob=0, intensity_prob=0, noise_prob=0, blur_prob=0, dropout_prob=0)
    v, _ = two_views(x, only_pose, seed=1, epoch=0, batch=0)
    for i in range(2):
        assert np.array_equal(np.sort(v[i].numpy().ravel()), np.sort(x[i].ravel()))


def test_resample_cubes_keeps_field_of_view():
    x = np.zeros((2, 32, 32, 32), np.float32)
    x[:, :16] = 1.0  # upper half bright
    y = resample_cubes(x, 16)
    assert y.shape == (2, 16, 16, 16)
    assert torch.allclose(y[:, :8], torch.ones(1)) and torch.allclose(y[:, 8:], torch.zeros(1))
    assert resample_cubes(x, None).shape == (2, 32, 32, 32)
    assert resample_cubes(x, 40).shape == (2, 40, 40, 40)
    with pytest.raises(ValueError, match="B, Z, Y, X"):
        resample_cubes(x[0], 16)


def test_augmentation_examples_and_figures():
    from synapse_nb.figures import augmentation_figure, loss_curve

    ex = augmentation_examples(planted(3), [0, 2], n_views=2, seed=1)
    assert [e["index"] for e in ex] == [0, 2] and len(ex[0]["views"]) == 2
    assert ex[0]["original"].shape == (SIZE, SIZE)
    again = augmentation_examples(planted(3), [0, 2], n_views=2, seed=1)
    assert np.array_equal(ex[1]["views"][1], again[1]["views"][1])
    fig = augmentation_figure(ex)
    assert len(fig.axes) == 2 * 3
    hist = pd.DataFrame({"epoch": [1, 2], "loss": [2.0, 1.5], "seconds": [1.0, 1.1], "lr": [1e-3, 5e-4]})
    chart = loss_curve(hist, batch_size=4)
    assert list(chart.data[0].y) == [2.0, 1.5]
    with pytest.raises(ValueError, match="lacks column"):
        loss_curve(hist.drop(columns="loss"))


# ----------------------------------------------------------------------------- loss and learning
def test_nt_xent_prefers_matching_views():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 16, generator=g)
    matched = nt_xent_loss(z, z + 0.01 * torch.randn(6, 16, generator=g), 0.1)
    shuffled = nt_xent_loss(z, z[torch.tensor([1, 2, 3, 4, 5, 0])], 0.1)
    assert float(matched) < 0.05 < float(shuffled)
    with pytest.raises(ValueError, match="at least 2"):
        nt_xent_loss(z[:1], z[:1], 0.1)


def test_loss_falls_in_a_few_steps():
    model, _ = build_model(None, seed=0)
    enc = ContrastiveEncoder(model, UPTO, seed=0).train()
    opt = torch.optim.AdamW(enc.trained_parameters(), lr=1e-3)
    v1, v2 = two_views(planted(8), PLANTED_AUGMENT, seed=0, epoch=0, batch=0)
    views = torch.cat([v1, v2]).unsqueeze(1)
    losses = []
    for _ in range(8):
        z = enc(views)
        loss = nt_xent_loss(z[:8], z[8:], 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_training_brings_views_of_one_synapse_together(tmp_path):
    cubes = planted(8)
    s = settings(epochs=8, augment=PLANTED_AUGMENT)
    before, _ = build_model(None, seed=s.seed)
    agree0 = view_agreement(before, cubes, upto=UPTO, augment=PLANTED_AUGMENT, seed=5)
    result = pretrain(cubes, settings=s, out_dir=tmp_path, device="cpu", progress=False)
    after, _ = build_model(result.weights_path)
    agree1 = view_agreement(after, cubes, upto=UPTO, augment=PLANTED_AUGMENT, seed=5)
    assert agree1["positive"] > agree1["negative"]
    assert agree1["margin"] > agree0["margin"] + 0.05, (agree0, agree1)


# ----------------------------------------------------------------------------- files and resume
def test_weights_load_strictly_and_extract(tmp_path):
    cubes = planted(6)
    result = pretrain(cubes, settings=settings(epochs=1), out_dir=tmp_path, progress=False,
                      describe_data={"name": "planted shapes"})
    raw = torch.load(result.weights_path, map_location="cpu", weights_only=True)
    assert set(raw["model_state_dict"]) == set(VGG3D().state_dict())
    meta = raw["synapse_nb_pretraining"]
    assert meta["method"] == "SimCLR (NT-Xent)" and meta["n_synapses"] == 6 and meta["upto"] == UPTO
    assert meta["cube_size"] == SIZE and len(meta["loss_per_epoch"]) == 1 and meta["input_range"] == "0_1"
    model, info = build_model(result.weights_path)
    assert info.pretrained and info.default_input_range == "0_1" and info.pretraining["epochs_run"] == 1
    text = info.description()
    assert text.startswith("self-supervised weights (SimCLR, 1 epochs on 6 synapses of planted shapes, loss")
    assert f"features.{UPTO}" in text
    ex = FeatureExtractor(model, method="stage_specific", layer_num=UPTO, progress=False)
    assert ex.input_range == "0_1"
    feats = ex(cubes)
    with torch.no_grad():
        ref = model.forward_features(torch.from_numpy(cubes).unsqueeze(1), UPTO).mean(dim=(2, 3, 4)).numpy()
    assert feats.shape == (6, 48) and np.allclose(feats, ref, rtol=1e-3, atol=1e-4)
    assert list(read_history(tmp_path).columns) == ["epoch", "loss", "seconds", "lr"]
    # an ordinary checkpoint keeps the HemiBrain defaults
    plain = tmp_path / "plain.pt"
    torch.save(VGG3D().state_dict(), plain)
    _, plain_info = build_model(plain)
    assert plain_info.pretraining is None and plain_info.default_input_range == "-1_1"
    assert ModelInfo("random", 7, False, None, False, "0_1").pretraining is None


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    cubes = planted(6)
    s = settings(epochs=3)
    full = pretrain(cubes, settings=s, out_dir=tmp_path / "full", progress=False)

    def stop_after_two(epoch, loss, seconds):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(cubes, settings=s, out_dir=tmp_path / "cut", progress=False, on_epoch=stop_after_two)
    assert len(read_history(tmp_path / "cut")) == 2
    resumed = pretrain(cubes, settings=s, out_dir=tmp_path / "cut", progress=False)
    assert resumed.resumed_from == 2 and len(resumed.history) == 3
    assert np.array_equal(resumed.history["loss"].to_numpy(), full.history["loss"].to_numpy())
    a = torch.load(full.weights_path, weights_only=True)["model_state_dict"]
    b = torch.load(resumed.weights_path, weights_only=True)["model_state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished run called again trains nothing more
    again = pretrain(cubes, settings=s, out_dir=tmp_path / "cut", progress=False)
    assert again.resumed_from == 3 and len(again.history) == 3


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    cubes = planted(4)
    pretrain(cubes, settings=settings(epochs=1), out_dir=tmp_path, progress=False)
    with pytest.raises(DataError, match=rf"{STATE_FILE} belongs to a pretraining run with other settings \(learning_rate"):
        pretrain(cubes, settings=settings(epochs=1, learning_rate=5e-4), out_dir=tmp_path, progress=False)


def test_early_stopping_on_a_flat_loss(tmp_path):
    # no augmentation and a vanishing learning rate: every epoch sees the same views and weights
    s = settings(epochs=10, learning_rate=1e-12, augment=NO_AUGMENT, patience=2, min_delta=0.01)
    result = pretrain(planted(4), settings=s, out_dir=tmp_path, progress=False)
    assert result.stopped_early and len(result.history) == 3
    assert "stopped early after epoch 3" in result.stop_reason
    assert result.metadata["stop_reason"] == result.stop_reason


def test_bad_initial_weights_give_clear_errors(tmp_path):
    cubes = planted(4)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        pretrain(cubes, settings=settings(epochs=1), out_dir=tmp_path / "a", init_weights=tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), other)
    with pytest.raises(CheckpointError, match="does not fit the VGG3D layout"):
        pretrain(cubes, settings=settings(epochs=1), out_dir=tmp_path / "b", init_weights=other)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        PretrainSettings(batch_size=1)
    with pytest.raises(ValueError, match="precision"):
        PretrainSettings(precision="float16")
    with pytest.raises(ValueError, match="probability"):
        AugmentSettings(noise_prob=2.0)
    assert PretrainSettings.from_dict(settings().as_dict()) == settings()
    assert upto_for("stage_specific", 20) == 20 and upto_for("standard", 20) is None
    with pytest.raises(DataError, match="at least 2 synapses"):
        pretrain(planted(1), settings=settings(), out_dir=Path("/nonexistent-never-written"))


def test_resampled_cubes_feed_the_extractor():
    from synapse_nb.training import ResampledCubes

    src = ResampledCubes(planted(3, size=24), SIZE)
    assert len(src) == 3 and src[0:2].shape == (2, SIZE, SIZE, SIZE) and src[0:2].dtype == np.float32
    model, _ = build_model(None, seed=0)
    assert FeatureExtractor(model, method="stage_specific", layer_num=UPTO, progress=False)(src).shape == (3, 48)
