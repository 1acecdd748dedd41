"""Grad-CAM (synapse_nb.explain): known answers, shapes, targets, alignment."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import ndimage
from torch import nn

from synapse_nb.analysis import reduce as R
from synapse_nb.core import config as C
from synapse_nb.core import labels as L
from synapse_nb.cubes.geometry import CubeGeometry
from synapse_nb.cubes.rendering import RenderSettings, render
from synapse_nb.cubes.store import CubeSet
from synapse_nb.explain import attention as A
from synapse_nb.explain import figures as P
from synapse_nb.features.checkpoint import build_model
from synapse_nb.pipeline import artifacts
from synapse_nb.pipeline import steps as _pipeline_steps
from synapse_nb.pipeline.runs import Run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------
# a hand-built network whose right answer is known
# --------------------------------------------------------------------------------------
def two_detector_net() -> nn.Sequential:
    """features.0: channel 0 = x, channel 1 = -x (1x1 conv); ReLU; pool; features.3: a per-channel
    3^3 box mean. Channel 0 sees bright blobs, channel 1 dark ones, nothing else."""
    conv0 = nn.Conv3d(1, 2, kernel_size=1)
    conv3 = nn.Conv3d(2, 2, kernel_size=3, padding=1)
    with torch.no_grad():
        conv0.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1, 1))
        conv0.bias.zero_()
        conv3.weight.zero_()
        conv3.weight[0, 0] = 1 / 27
        conv3.weight[1, 1] = 1 / 27
        conv3.bias.zero_()
    return nn.Sequential(conv0, nn.ReLU(inplace=True), nn.MaxPool3d(2), conv3).eval()


def two_blob_input(size: int = 16) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    x = torch.zeros(1, 1, size, size, size)
    bright = np.zeros((size,) * 3, bool)
    dark = np.zeros((size,) * 3, bool)
    bright[2:6, 2:6, 2:6] = True
    dark[10:14, 10:14, 10:14] = True
    x[0, 0][torch.from_numpy(bright)] = 1.0
    x[0, 0][torch.from_numpy(dark)] = -1.0
    return x, bright, dark


@pytest.mark.parametrize("channel", [0, 1])
def test_map_peaks_where_the_target_is_decided(channel):
    net = two_detector_net()
    x, bright, dark = two_blob_input()
    target_region, other = (bright, dark) if channel == 0 else (dark, bright)
    scores, maps, peaks = A.gradcam(net, x, [0, 3], lambda a: a[:, channel].mean(dim=(1, 2, 3)), upto=3)
    assert scores.shape == (1,) and scores[0] > 0
    assert (peaks > 0).all()
    for layer in (0, 3):
        m = maps[layer][0]
        assert m.shape == (16, 16, 16) and m.max() == pytest.approx(1.0)
        peak = np.unravel_index(np.argmax(m), m.shape)
        assert target_region[peak], f"layer {layer} peaks at {peak}, outside the region that decides the target"
        # the blob that does not change the target gets (almost) no attention
        assert m[other].max() < 0.05 * m[target_region].max()
    # layer 0 is at full resolution: the map is exactly the deciding blob
    assert np.array_equal(maps[0][0] > 0, target_region)


def test_map_of_a_real_vgg3d_stays_where_the_input_is():
    """Zero input except a blob, zero biases: activations of features.3 (receptive field 5^3)
    are zero more than 2 voxels from the blob, so the map must be zero there too."""
    model, _ = build_model(None, seed=1)
    x, bright, _ = two_blob_input(32)
    x[x < 0] = 0
    scores, maps, peaks = A.gradcam(model.features, x, [3], lambda a: a.mean(dim=(1, 2, 3, 4)), upto=33)
    m = maps[3][0]
    near = ndimage.binary_dilation(bright, np.ones((3, 3, 3), bool), iterations=2)  # two 3^3 convolutions
    assert peaks[0, 0] > 0 and m.max() == pytest.approx(1.0)
    assert m[~near].max() == 0.0
    assert near[np.unravel_index(np.argmax(m), m.shape)]


# --------------------------------------------------------------------------------------
# shapes, normalisation, small cubes
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vgg():
    model, info = build_model(None, seed=7)
    return model, info


@pytest.mark.parametrize("size", [32, 16])
def test_vgg3d_maps_have_the_input_shape_and_are_normalised(vgg, size):
    model, _ = vgg
    x = torch.rand(2, 1, size, size, size, generator=torch.Generator().manual_seed(0))
    target = A.NormTarget(33, "avg")
    scores, maps, peaks = A.gradcam(model.features, x, [3, 20, 27], lambda a: target.score(a, [0, 1]), upto=33)
    assert scores.shape == (2,) and np.all(scores > 0)
    assert set(maps) == {3, 20, 27} and peaks.shape == (2, 3)
    for layer, m in maps.items():
        assert m.shape == (2, size, size, size) and m.dtype == np.float32
        assert m.min() >= 0
        for i in range(2):
            assert m[i].max() == pytest.approx(1.0 if peaks[i, [3, 20, 27].index(layer)] > 0 else 0.0)
    assert target.last_pooled.shape == (2, 192)
    assert not any(p.requires_grad is False for p in model.parameters()), "parameters restored"


def test_upsampling_puts_a_coarse_cell_on_the_centre_of_its_block():
    """A map that lives in one cell of a 4x-pooled grid must be centred on that cell's 4^3 block
    of the input (voxels 4..7, centre 5.5): align_corners=False; True would put it at 5."""
    net = nn.Sequential(nn.AvgPool3d(4), nn.Conv3d(1, 1, kernel_size=1, bias=False)).eval()
    with torch.no_grad():
        net[1].weight.fill_(1.0)
    x = torch.zeros(1, 1, 16, 16, 16)
    x[0, 0, 4:8, 4:8, 4:8] = 1.0
    _, maps, _ = A.gradcam(net, x, [1], lambda a: a[:, 0, 1, 1, 1], upto=1)
    m = maps[1][0]
    for axis_line in (m[:, 5, 5], m[5, :, 5], m[5, 5, :]):
        assert np.allclose(axis_line[:12], axis_line[11::-1], atol=1e-6), "symmetric about 5.5"
        assert axis_line[5] == pytest.approx(1.0) and axis_line[6] == pytest.approx(1.0)
        assert axis_line[4] < 1.0 and axis_line[0] == 0.0


def test_normalise_keeps_empty_maps_zero():
    cam = torch.tensor([[0.0, 2.0, 4.0], [0.0, 0.0, 0.0]])
    out, peak = A.normalize_maps(cam)
    assert out.tolist() == [[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]] and peak.tolist() == [4.0, 0.0]


def test_layers_after_the_target_have_no_map(vgg):
    model, _ = vgg
    with pytest.raises(ValueError, match=r"layers \[27\] come after features.20"):
        A.gradcam(model.features, torch.rand(1, 1, 16, 16, 16), [3, 27], lambda a: a.mean(dim=(1, 2, 3, 4)), upto=20)
    ok, skipped = _pipeline_steps._explained_layers([3, 20, 27], 20, "cluster")
    assert ok == [3, 20] and list(skipped) == [27]
    assert "no gradient" in skipped[27] and "attention_layers up to 20" in skipped[27]


# --------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------
def synthetic_clusters(n: int = 24, d: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    feats = rng.gamma(2.0, 1.0, size=(n, d))
    feats[:, 3] = 1.5  # a constant feature stays at 0 after standardising
    df = pd.DataFrame(feats, columns=[f"feat_{i:04d}" for i in range(d)])
    Xs, _ = R.standardize(df)
    Z, _ = R.pca(Xs, 5)
    emb = pd.DataFrame(Z.astype(np.float32), columns=[f"pca_{i}" for i in range(1, 6)])
    labels = (Z[:, 0] > 0).astype(int)
    labels[0] = -1
    return df, emb, labels


def test_cluster_space_reproduces_the_stored_pca_scores():
    df, emb, labels = synthetic_clusters()
    space = A.cluster_space(df, emb, labels)
    assert space.residual < 1e-5 and set(space.centroids) == {0, 1}
    z = space.project(torch.as_tensor(df.to_numpy())).numpy()
    assert np.allclose(z, emb.to_numpy(), atol=1e-4)
    assert np.allclose(space.centroids[1], emb.to_numpy()[labels == 1].mean(axis=0))


def test_cluster_space_refuses_scores_from_other_features():
    df, emb, labels = synthetic_clusters()
    other = pd.DataFrame(np.random.default_rng(5).normal(size=emb.shape), columns=emb.columns)
    with pytest.raises(A.AttentionError, match="not a linear projection of the standardised features"):
        A.cluster_space(df, other, labels)
    with pytest.raises(A.AttentionError, match="do not line up"):
        A.cluster_space(df, emb.iloc[:-1], labels)


def test_cluster_target_is_cosine_to_the_own_centroid():
    df, emb, labels = synthetic_clusters()
    space = A.cluster_space(df, emb, labels)
    target = A.ClusterTarget(3, "avg", space, labels)
    rows = [1, 2, 5]
    # an "activation" whose average pooling gives exactly the stored features of these rows
    act = torch.as_tensor(df.to_numpy()[rows], dtype=torch.float32)[:, :, None, None, None].expand(-1, -1, 2, 2, 2)
    got = target.score(act, rows).numpy()
    Z = emb.to_numpy(np.float64)
    want = [Z[r] @ space.centroids[labels[r]] / np.linalg.norm(Z[r]) / np.linalg.norm(space.centroids[labels[r]]) for r in rows]
    assert np.allclose(got, want, atol=1e-4)


def test_cluster_target_refuses_noise_rows():
    df, emb, labels = synthetic_clusters()
    target = A.ClusterTarget(3, "avg", A.cluster_space(df, emb, labels), labels)
    act = torch.as_tensor(df.to_numpy()[[0, 1]], dtype=torch.float32)[:, :, None, None, None]
    with pytest.raises(A.AttentionError, match=r"feature rows \[0\] have no cluster centroid \(label -1 = noise\)"):
        target.score(act, [0, 1])


EXPLAINS_DEEP = "the maps explain what makes the network's features of a synapse resemble those of its cluster, not the descriptors"


def planted_descriptor_run(feature_set: str, n: int = 24, d: int = 12, seed: int = 1):
    """Features with descriptor columns, clustered (PCA scores + labels) on ``feature_set`` as 04/05 do."""
    from synapse_nb.analysis import feature_sets as FS

    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.gamma(2.0, 1.0, size=(n, d)), columns=[f"feat_{i:04d}" for i in range(d)])
    df["vesicle_volume_um3"] = rng.uniform(0.01, 0.2, n)
    df["cleft_area_um2"] = rng.uniform(0.02, 0.1, n)
    matrix = FS.assemble(df, feature_set=feature_set, descriptor_weight=0.5)
    Z, _ = R.pca(matrix.values, 50)
    emb = pd.DataFrame(Z.astype(np.float32), columns=[f"pca_{i}" for i in range(1, Z.shape[1] + 1)])
    labels = (df["vesicle_volume_um3"] > df["vesicle_volume_um3"].median()).to_numpy(int)  # clusters of the descriptors
    labels[0] = -1
    return df, emb, labels


@pytest.mark.parametrize("feature_set", ["descriptors", "hybrid"])
def test_cluster_space_of_a_descriptor_or_hybrid_run_is_the_network_features_own(feature_set):
    df, emb, labels = planted_descriptor_run(feature_set)
    with pytest.raises(A.AttentionError, match="not a linear projection"):  # what a deep-only recovery would say
        A.cluster_space(df, emb, labels)
    space = A.cluster_space(df, emb, labels, feature_set=feature_set, pca_components=50, seed=42, descriptor_weight=0.5)
    assert space.feature_set == feature_set and space.residual < 1e-8
    # the deep features alone: standardised, PCA with min(50, n - 1, d) components, 05's labels
    Xs, _ = R.standardize(df)
    Z, _ = R.pca(Xs, 12, 42)
    z = space.project(torch.as_tensor(df[[c for c in df.columns if c.startswith("feat_")]].to_numpy())).numpy()
    assert z.shape == (24, 12) and np.allclose(z, Z, atol=1e-8)
    assert set(space.centroids) == {0, 1} and np.allclose(space.centroids[1], Z[labels == 1].mean(axis=0))
    # the score is the cosine to the own cluster's deep-feature centroid
    target = A.ClusterTarget(3, "avg", space, labels)
    rows = [1, 2, 7]
    act = torch.as_tensor(df.iloc[rows, :12].to_numpy(), dtype=torch.float32)[:, :, None, None, None].expand(-1, -1, 2, 2, 2)
    want = [Z[r] @ space.centroids[labels[r]] / np.linalg.norm(Z[r]) / np.linalg.norm(space.centroids[labels[r]]) for r in rows]
    assert np.allclose(target.score(act, rows).numpy(), want, atol=1e-4)
    (note,) = space.notes
    assert EXPLAINS_DEEP in note and f"**{feature_set}** feature set" in note and "silhouette of" in note
    assert ("played no part in the clustering" in note) == (feature_set == "descriptors")
    assert ("50% of the variance" in note) == (feature_set == "hybrid")
    assert space.meaning == A.DEEP_PROXY_MEANING
    with pytest.raises(A.AttentionError, match="has no feat_\\* columns"):
        A.cluster_space(df.drop(columns=[c for c in df.columns if c.startswith("feat_")]), emb, labels, feature_set=feature_set)


def small_head_model(n_classes: int = 3, size: int = 32):
    model, info = build_model(None, seed=3)
    torch.manual_seed(0)
    model.classifier = nn.Sequential(nn.Linear(192 * (size // 16) ** 3, n_classes))
    model.num_classes = n_classes
    return model, info


def test_logit_target_explains_one_class():
    model, info = small_head_model()
    x = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
    target = A.logit_target(model, info, -1)
    scores, maps, _ = A.gradcam(model.features, x, [20, 27], lambda a: target.score(a, [0, 1]), upto=target.upto)
    pred = logits.argmax(1)
    assert np.allclose(scores, logits.gather(1, pred[:, None])[:, 0].numpy(), atol=1e-5)
    assert target.last_extra["predicted_class"].tolist() == pred.tolist()
    assert maps[20].shape == (2, 32, 32, 32)
    fixed = A.logit_target(model, info, 2)
    s2, _, _ = A.gradcam(model.features, x, [27], lambda a: fixed.score(a, [0, 1]), upto=33)
    assert np.allclose(s2, logits[:, 2].numpy(), atol=1e-5) and fixed.last_extra["class"].tolist() == [2, 2]


def test_logit_target_runs_the_head_without_dropout():
    model, info = small_head_model()
    model.classifier = nn.Sequential(nn.Dropout(0.5), *model.classifier)
    x = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    model.classifier.eval()
    with torch.no_grad():
        logits = model(x)
    model.classifier.train()  # as a freshly attached head would be
    target = A.logit_target(model, info, 1)
    scores, _, _ = A.gradcam(model.features, x, [27], lambda a: target.score(a, [0, 1]), upto=33)
    assert np.allclose(scores, logits[:, 1].numpy(), atol=1e-5)
    assert model.classifier.training, "the head's mode is restored"


def test_logit_target_errors_name_the_key():
    model, info = build_model(None, seed=3)
    with pytest.raises(A.AttentionError, match=r"attention_target 'logit' needs a classifier head.*weights_path.*'cluster' or 'norm'"):
        A.logit_target(model, info, -1)
    model, info = small_head_model()
    with pytest.raises(A.AttentionError, match=r"attention_class 3 is out of range: the head has 3 classes"):
        A.logit_target(model, info, 3)
    target = A.logit_target(model, info, 0)
    with pytest.raises(A.AttentionError, match=r"expects 1536 trunk outputs.*set cube_size 80"):
        A.gradcam(model.features, torch.rand(1, 1, 16, 16, 16), [27], lambda a: target.score(a, [0]), upto=33)


# --------------------------------------------------------------------------------------
# a tiny study: alignment of maps, inputs and masks
# --------------------------------------------------------------------------------------
S = 16


def synthetic_cubeset(n: int = 4) -> CubeSet:
    rng = np.random.default_rng(2)
    raw = rng.integers(10, 250, size=(n, S, S, S)).astype(np.uint8)
    bits = np.zeros((n, S, S, S), np.uint8)
    for i in range(n):
        bits[i, :, : S // 2] |= L.BIT_PRE
        bits[i, :, S // 2 :] |= L.BIT_POST
        bits[i, 6 + i : 9 + i, 7:9, 4:12] |= L.BIT_CLEFT  # a different place in every cube
        bits[i, 2:5, 2:5, 2:5] |= L.BIT_VESICLE
    table = pd.DataFrame({"bbox": ["bbox1"] * n, "Var1": [f"syn{i}" for i in range(n)]})
    for a in "zyx":
        table[f"pad_{a}_before"] = 0
        table[f"pad_{a}_after"] = 0
    table.loc[1, "pad_z_before"] = 3  # cube 1 leaves the volume: its first 3 slices are padding
    return CubeSet(raw=raw, bits=bits, table=table, skipped=pd.DataFrame(columns=["bbox", "Var1", "table_row", "reason"]),
                   geometry=CubeGeometry(size=S))


def tiny_study(target: str = "norm") -> A.Study:
    cubes = synthetic_cubeset()
    features = cubes.table[["bbox", "Var1"]].iloc[::-1].reset_index(drop=True)  # another order than the cubes
    for i in range(4):
        features[f"feat_{i:04d}"] = 0.0
    model, info = build_model(None, seed=4)
    cfg = C.make_config({"cube_size": S, "segmentation_type": 5, "attention_layers": [3, 20], "attention_target": target})
    return A.Study(cfg, features, np.array([0, 0, 1, 1]), None, None, cubes, model, info, "0_1",
                   A.NormTarget(33, "avg"), [3, 20], {})


def test_maps_inputs_and_masks_share_the_cube_of_the_same_synapse():
    study = tiny_study()
    result = A.explain(study, {"cluster 0": [0], "cluster 1": [2, 3]}, batch_size=2, show_progress=False)
    cubes = study.cubes
    assert result.samples["Var1"].tolist() == ["syn3", "syn1", "syn0"]
    assert result.samples["cube_row"].tolist() == [3, 1, 0]
    assert result.samples["group"].tolist() == ["cluster 0", "cluster 1", "cluster 1"]
    want = cubes.rendered(RenderSettings(segmentation_type=5, alpha=1.0, intensity_normalization="mask"), indices=[3, 1, 0])[0:3]
    assert np.array_equal(result.inputs, want)
    assert np.array_equal(result.bits, cubes.bits[[3, 1, 0]])
    assert result.maps.shape == (3, 2, S, S, S)
    assert result.valid[1, :3].sum() == 0 and result.valid[1, 3:].all() and result.valid[0].all()
    # the cleft mask is exactly where a type-7 rendering keeps the raw intensities
    for i, row in enumerate([3, 1, 0]):
        cleft = A.structure_masks(result.bits[i])["cleft"]
        seven = render(cubes.raw[row], cubes.bits[row], RenderSettings(7, alpha=1.0, gray_value=0.6))
        x = cubes.raw[row].astype(np.float32)
        x = (x - x.min()) / (x.max() - x.min())
        assert np.allclose(seven[cleft], x[cleft]) and np.all(seven[~cleft] == np.float32(0.6))
        assert cleft[6 + row, 7, 4] and not cleft[5 + row, 7, 4]
    assert (result.samples["weights"] == "RANDOM weights (seed 4)").all()
    assert "RANDOM weights" in result.notes()


def test_overlap_metrics_exact_values():
    att = np.zeros((4, 4, 4), np.float32)
    att[0, 0, :] = [1.0, 0.8, 0.2, 0.0]
    mask = np.zeros((4, 4, 4), bool)
    mask[0, 0, 1:3] = True
    valid = np.ones((4, 4, 4), bool)
    got = A.overlap_metrics(att, mask, valid, 0.5)
    # attended = {(0,0,0), (0,0,1)}; mask = {(0,0,1), (0,0,2)}; one voxel in common
    assert got["dice"] == pytest.approx(2 * 1 / 4) and got["iou"] == pytest.approx(1 / 3)
    assert got["inside"] == pytest.approx(0.5) and got["outside"] == pytest.approx(1.0 / 62)
    assert got["inside_outside_ratio"] == pytest.approx(0.5 * 62)
    assert got["mask_fraction"] == pytest.approx(2 / 64) and got["attended_fraction"] == pytest.approx(2 / 64)
    valid[0, 0, 0] = False  # padding does not count
    assert A.overlap_metrics(att, mask, valid, 0.5)["dice"] == pytest.approx(2 * 1 / 3)
    empty = A.overlap_metrics(att, np.zeros_like(mask), valid, 0.5)
    assert empty["mask_voxels"] == 0 and np.isnan(empty["dice"])


def fake_result(n: int = 3, layers=(3, 20)) -> A.AttentionResult:
    cubes = synthetic_cubeset(n)
    maps = np.zeros((n, len(layers), S, S, S), np.float32)
    maps[:, :, 10:13, 7:9, 4:12] = 1.0  # a slab at z 10..12 (the cleft of cube i is at z 6+i..8+i)
    maps[:, 1] *= 0.5  # layer 20: the same slab at half strength with one peak voxel
    maps[:, 1, 10, 8, 8] = 1.0
    samples = pd.DataFrame({"feature_row": range(n), "bbox": "bbox1", "Var1": [f"<b>syn{i}</b>" for i in range(n)],
                            "cube_row": range(n), "group": ["cluster 0"] * n, "cluster": "0"})
    for layer in layers:
        samples[f"empty_map_{layer}"] = False
    inputs = np.stack([render(cubes.raw[i], cubes.bits[i], RenderSettings(0)) for i in range(n)])
    return A.AttentionResult(samples, list(layers), maps, inputs, cubes.bits, np.ones((n, S, S, S), bool), "cluster",
                             "RANDOM weights (seed 42) — features are not from a trained network", 0.5)


def test_overlap_table_and_summary():
    result = fake_result()
    overlap = A.overlap_table(result)
    assert len(overlap) == 3 * 2 * len(A.STRUCTURES)
    cleft = overlap[(overlap["structure"] == "cleft") & (overlap["layer"] == 3)].set_index("feature_row")
    # cube i has its cleft at z 6+i..8+i; attention sits at z 10..12: overlap only for cube 2 (z 8..10)
    assert cleft.loc[0, "dice"] == 0 and cleft.loc[2, "dice"] > 0
    assert (overlap.loc[overlap["structure"] == "mito", "mask_voxels"] == 0).all()
    summary = A.overlap_summary(overlap, result.weights)
    assert list(summary["structure"][:5]) == list(A.STRUCTURES) and len(summary) == 10
    mito = summary[summary["structure"] == "mito"]
    assert (mito["n_synapses"] == 0).all() and mito["dice"].isna().all()
    assert (summary["weights"] == "RANDOM weights (seed 42)").all()


def test_top_regions_find_where_attention_concentrates():
    result = fake_result()
    regions = A.top_regions(result)
    first = regions[(regions["layer"] == 3) & (regions["region"] == 1)].iloc[0]
    assert first["voxels"] == 3 * 2 * 8 and first["share_of_attention"] == pytest.approx(1.0)
    assert (first["center_z"], first["center_y"], first["center_x"]) == pytest.approx((11.0, 7.5, 7.5))
    assert first["offset_z_nm"] == pytest.approx((11 - 8) * 8.0) and first["offset_y_nm"] == pytest.approx(-0.5 * 8)
    late = regions[regions["layer"] == 20]
    assert len(late) == 1 and late["voxels"].iloc[0] == 3 * 2 * 8 and late["peak"].iloc[0] == pytest.approx(1.0)


def test_border_ring_scales_with_the_cube_size():
    assert [A.border_ring_width(s) for s in (16, 32, 64, 80, 160)] == [1, 2, 3, 4, 8]
    assert A.border_ring_width(80) == A.BORDER_RING_VOXELS and A.border_ring_width(3) == 0
    counted = A.counted_voxels(np.ones((8, 8, 8), bool), 2)
    assert counted.sum() == 4**3 and counted[2:6, 2:6, 2:6].all()
    assert A.inside_volume(4, {"bbox": "b"}).all()  # a row without pad_* entries: all inside
    row = {f"pad_{a}_{side}": 0 for a in "zyx" for side in ("before", "after")} | {"pad_x_after": 1}
    assert A.inside_volume(4, row)[:, :, 3].sum() == 0 and A.inside_volume(4, row)[:, :, :3].all()


def _padded_result() -> A.AttentionResult:
    """Cube 1 of :func:`synthetic_cubeset` has 3 padding slices (z 0..2); every structure of every
    cube is planted so that the maps are hot only in the padding and in the 1-voxel border ring."""
    result = fake_result(3)
    result.valid = np.ones_like(result.valid)
    result.valid[1, :3] = False
    result.bits[:] = 0
    result.bits[:, :8] |= L.BIT_PRE  # structures reach the border and the padding too
    result.bits[:, 8:] |= L.BIT_POST
    result.bits[:, 1:4, 5:9, 5:9] |= L.BIT_VESICLE
    result.bits[:, 6:10, 0:16, 0:2] |= L.BIT_CLEFT
    maps = np.zeros_like(result.maps)
    maps[:, :, 0] = 1.0  # first z slice: the border ring (and, for cube 1, padding)
    maps[:, :, :, :, 0] = 1.0  # x = 0: border ring, inside the cleft
    maps[1, :, 1:3] = 1.0  # padding of cube 1, inside its vesicle cloud
    result.maps = maps
    return result


def test_hot_voxels_only_in_padding_and_border_ring_name_no_structure():
    result = _padded_result()
    assert result.ring == 1 and result.counted(1)[:3].sum() == 0 and result.counted(0)[1:15, 1:15, 1:15].all()
    assert "(1 of 3 cubes reach outside it" in result.notes() and "1-voxel ring at the cube border" in result.notes()
    overlap = A.overlap_table(result)
    assert (overlap["attended_fraction"] == 0).all() and (overlap["border_ring_voxels"] == 1).all()
    assert (overlap.loc[overlap["mask_voxels"] > 0, "inside"] == 0).all()
    summary = A.overlap_summary(overlap, result.weights)
    verdict = A.most_attended(summary)
    assert verdict["layer"].tolist() == [3, 20] and verdict["structure"].tolist() == ["", ""]
    text = A.summary_markdown(summary)
    assert "features.3: no structure attended more than its surroundings" in text and "1-voxel ring" in text
    assert "features.20: no structure attended more than its surroundings" in text
    assert A.top_regions(result).empty  # nothing left once padding and the ring are out
    # counted the old way (padding out, ring in), the cleft would win: its x = 0 face is hot
    ring_in = A.AttentionResult(**{**result.__dict__, "border_ring": 0})
    assert A.most_attended(A.overlap_summary(A.overlap_table(ring_in)))["structure"].tolist() == ["cleft", "cleft"]


def test_a_ratio_below_one_is_never_named():
    summary = pd.DataFrame({
        "layer": [3, 3, 3, 20, 20, 27],
        "structure": ["pre", "cleft", "mito", "pre", "cleft", "cleft"],
        "inside_outside_ratio": [0.8, 0.95, np.nan, 1.4, 3.0, 1.0],
        "n_synapses": [4, 4, 0, 4, 4, 4],
    })
    verdict = A.most_attended(summary).set_index("layer")
    assert verdict.loc[3, "structure"] == "" and verdict.loc[3, "inside_outside_ratio"] == pytest.approx(0.95)
    assert verdict.loc[20, "structure"] == "cleft" and verdict.loc[27, "structure"] == ""  # 1 is no preference
    text = A.most_attended_text(summary)
    assert text == ("features.3: no structure attended more than its surroundings (best ratio 0.95); "
                    "features.20: cleft (3.00x inside vs outside); "
                    "features.27: no structure attended more than its surroundings (best ratio 1.00)")
    assert "pre" not in text
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['inside_outside_ratio'\]"):
        A.most_attended(summary.drop(columns="inside_outside_ratio"))


def test_select_rows_representatives_and_random():
    study = tiny_study()
    study.points = np.array([[0.0], [1.0], [10.0], [10.5]])
    assert A.select_rows(study) == {"cluster 0": [0, 1], "cluster 1": [2, 3]}
    study.cfg.attention_per_cluster = 1
    assert A.select_rows(study) == {"cluster 0": [0], "cluster 1": [2]}
    picked = A.select_rows(study, n_samples=3)["sample"]
    assert len(picked) == 3 and picked == sorted(set(picked))
    study.points = None
    with pytest.raises(A.AttentionError, match="give n_samples > 0"):
        A.select_rows(study)


def test_feature_config_uses_the_settings_of_03_extract(tmp_path: Path):
    run = Run(tmp_path)
    cfg = C.make_config({"attention_target": "norm", "segmentation_type": 10})
    with pytest.raises(FileNotFoundError, match="run step 03_extract first"):
        _pipeline_steps.feature_config(run, cfg)
    recorded = C.make_config({"segmentation_type": 5, "alpha": 0.5, "extraction_method": "stage_specific", "layer_num": 20,
                              "weights_path": "/w/a.ckpt", "attention_target": "cluster"}).to_dict()
    (tmp_path / "params_03_extract.yaml").write_text(yaml.safe_dump(recorded))
    got = _pipeline_steps.feature_config(run, cfg)
    assert (got.segmentation_type, got.alpha, got.extraction_method, got.layer_num) == (5, 0.5, "stage_specific", 20)
    assert got.attention_target == "norm" and got.weights_path == "/w/a.ckpt"
    assert _pipeline_steps.feature_config(run, cfg.model_copy(update={"weights_path": "/w/b.ckpt"})).weights_path == "/w/b.ckpt"


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------
def test_figures_show_every_layer_and_say_random_weights():
    result = fake_result()
    fig = P.overlay_figure(result, depths=[2, 8, 11])
    assert len(fig.axes) == 3 * 3 and "RANDOM weights" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match=r"depths \[16\] are outside the cube"):
        P.overlay_figure(result, 0, [16])
    assert len(P.layer_comparison(result).axes) == 3 * 3
    assert len(P.mean_map_figure(result).axes) == 2 * 6
    frames = P.depth_frames(result, 0)
    assert frames.shape == (16, 64, (3 * 16 + 2 * 2) * 4, 3) and frames.dtype == np.uint8
    gifs = P.depth_gifs(result, 2).data
    assert gifs.count("data:image/gif;base64,") == 2 and "&lt;b&gt;syn0&lt;/b&gt;" in gifs and "<b>syn0" not in gifs
    fig3d = P.mean_map_3d(result)
    assert len(fig3d.data) == 2 and "RANDOM weights" in fig3d.layout.title.text
    summary = A.overlap_summary(A.overlap_table(result), result.weights)
    bars = P.overlap_figure(summary, result.weights)
    assert len(bars.data) == 4 and "RANDOM weights" in bars.layout.title.text


def test_overlay_rgb_blends_by_attention():
    gray = np.full((2, 2), 0.5, np.float32)
    att = np.array([[0.0, 1.0], [0.5, 0.0]], np.float32)
    rgb = P.overlay_rgb(gray, att)
    assert rgb.shape == (2, 2, 3) and (rgb[0, 0] == 128).all() and not (rgb[0, 1] == 128).all()


# --------------------------------------------------------------------------------------
# the notebook
# --------------------------------------------------------------------------------------
@pytest.mark.notebooks
def test_attention_notebook_in_the_pipeline_run(pipeline_run):
    """06_attention ran in the pipeline (conftest: attention_per_cluster 1, n_gifs 2, default layers)."""
    import nbformat

    result, _ = pipeline_run
    run = result.run
    executed = run.notebooks_dir / "06_attention.ipynb"
    samples = run.read(artifacts.ATTENTION_SAMPLES)
    clusters = run.read(artifacts.CLUSTERS)
    assert len(samples) == clusters.loc[clusters["cluster_label"] >= 0, "cluster_label"].nunique()
    assert (samples["target"] == "cluster").all() and samples["feature_match"].min() > 0.99
    assert (samples["weights"] == "RANDOM weights (seed 42)").all()
    # the recorded parameters are those the maps were made with (03_extract's), not the defaults
    params_02 = yaml.safe_load((run.path / "params_03_extract.yaml").read_text())
    params_05 = yaml.safe_load((run.path / "params_06_attention.yaml").read_text())
    same = [k for k in A.FEATURE_KEYS if k != "cube_size"]  # 03 does not set cube_size (01_load does)
    assert params_05["cube_size"] == 32 and {k: params_05[k] for k in same} == {k: params_02[k] for k in same}
    summary = run.read(artifacts.ATTENTION_OVERLAP_SUMMARY)
    assert set(summary["layer"]) == {3, 20, 27} and set(summary["structure"]) == set(A.STRUCTURES)
    assert summary["dice"].dropna().between(0, 1).all()
    overlap = run.read(artifacts.ATTENTION_OVERLAP)
    assert len(overlap) == len(samples) * 3 * len(A.STRUCTURES)
    with np.load(run.path / "attention" / "maps.npz") as npz:
        assert npz["maps"].shape == (len(samples), 3, 32, 32, 32) and npz["layers"].tolist() == [3, 20, 27]
    nb = nbformat.read(str(executed), as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    html = (run.html_dir / "06_attention.html").read_text()
    assert html.count("data:image/gif;base64,") == 2 and html.count("data:image/png;base64,") >= 3
    assert html.count("Plotly.newPlot") >= 2 and "RANDOM weights" in html
    assert not re.search(r"<script[^>]+src=[\"']https?://", html) and "import synapse_nb" not in html


def test_load_study_from_a_run_without_clusters(tmp_path: Path):
    run = Run(tmp_path)
    cubes = synthetic_cubeset()
    cubes.save(run.cubes_dir)
    # 03_extract records the default cube_size 80 (01_load sets the size); the cubes are 16^3
    recorded = C.make_config({"extraction_method": "stage_specific", "layer_num": 20, "pooling_method": "max"})
    (tmp_path / "params_03_extract.yaml").write_text(yaml.safe_dump(recorded.to_dict()))
    features = cubes.table[["bbox", "Var1"]].copy()
    for i in range(96):
        features[f"feat_{i:04d}"] = 1.0
    run.write(artifacts.FEATURES, features)
    with pytest.raises(A.AttentionError, match=r"attention_target 'cluster' needs the clusters of 05_cluster"):
        _pipeline_steps.load_study(run, C.make_config({"attention_target": "cluster"}))
    with pytest.raises(A.AttentionError, match=r"none of attention_layers \[27\] can be explained"):
        _pipeline_steps.load_study(run, C.make_config({"attention_target": "norm", "attention_layers": [27]}))
    study = _pipeline_steps.load_study(run, C.make_config({"attention_target": "norm"}))
    assert study.layers == [3, 20] and list(study.skipped_layers) == [27] and study.target.upto == 20
    # the resolved settings (what 06 records): 03_extract's, at the size of the stored cubes
    assert (study.cfg.cube_size, study.cfg.layer_num, study.cfg.pooling_method) == (S, 20, "max")
    text = study.describe()
    assert "RANDOM weights (seed 42)" in text and "max pooling of features.20" in text and "at 4^3" in text
    assert "features.27 is skipped" in text and "cubes of 16^3" in text
    with pytest.raises(A.AttentionError, match="give n_samples > 0"):
        A.select_rows(study)
    result = A.explain(study, A.select_rows(study, n_samples=2), show_progress=False)
    assert result.maps.shape == (2, 2, S, S, S) and result.skipped_layers == study.skipped_layers
    assert "features.27 is skipped" in result.notes()
    # features recomputed with the network of 03_extract: the stored constant ones do not match, and the notes say so
    assert "recomputed features differ from 03_extract's" in result.notes()


@pytest.mark.parametrize(("feature_set", "turns"), [("hybrid", 2), ("descriptors", 1)])
def test_load_study_of_a_descriptor_run_says_what_is_explained(tmp_path: Path, feature_set: str, turns: int):
    """A run clustered on descriptors/hybrid (04_reduce's recorded feature_set) loads, the target lives in the
    network's features, and the notes say so; with rotation averaging the stored features are checked against
    rotation-averaged ones recomputed here, not against the unrotated cube Grad-CAM explains."""
    from synapse_nb.analysis import feature_sets as FS

    run = Run(tmp_path)
    cubes = synthetic_cubeset()
    cubes.save(run.cubes_dir)
    recorded = C.make_config({"cube_size": S, "extraction_method": "stage_specific", "layer_num": 20,
                              "pooling_method": "max", "rotation_averaging": turns})
    (tmp_path / "params_03_extract.yaml").write_text(yaml.safe_dump(recorded.to_dict()))
    model, info = build_model(None, seed=recorded.seed)
    features = _pipeline_steps.compute_features(cubes, model, info, recorded, progress=False).features  # 03_extract's own
    features["vesicle_volume_um3"] = [0.05, 0.06, 0.15, 0.16]
    features["cleft_area_um2"] = [0.03, 0.02, 0.08, 0.07]
    run.write(artifacts.FEATURES, features)
    reduce_cfg = C.make_config({"feature_set": feature_set, "descriptor_weight": 0.5})
    (tmp_path / "params_04_reduce.yaml").write_text(yaml.safe_dump(reduce_cfg.to_dict()))
    Z, _ = R.pca(FS.assemble(features, feature_set=feature_set, descriptor_weight=0.5).values, 50)
    run.write(artifacts.EMBEDDINGS, pd.DataFrame(Z.astype(np.float32), columns=[f"pca_{i}" for i in range(1, Z.shape[1] + 1)]))
    run.write(artifacts.CLUSTERS, features[["bbox", "Var1"]].assign(cluster=["0", "0", "1", "1"], cluster_label=[0, 0, 1, 1]))

    study = _pipeline_steps.load_study(run, C.make_config({"attention_target": "cluster", "attention_layers": [3, 20]}))
    assert study.space.feature_set == feature_set and study.space.projection.shape == (96, 3)  # min(50, n - 1) components
    text = study.describe()
    assert A.DEEP_PROXY_MEANING in text and EXPLAINS_DEEP in text
    assert ("played no part in the clustering" in text) == (feature_set == "descriptors")
    assert ("Grad-CAM explains the unrotated cube" in text) == (turns > 1)
    result = A.explain(study, A.select_rows(study), show_progress=False)
    assert (result.samples["clustered_on"] == feature_set).all()
    notes = result.notes()
    assert f"clusters were made on the {feature_set} feature set" in notes
    # same cubes, same network: the stored features match what is recomputed (rotation-averaged when 03 averaged)
    assert result.samples["feature_match"].min() > 0.9999 and "recomputed features differ" not in notes
    if turns > 1:
        unrotated = result.samples["unrotated_match"]
        assert unrotated.between(-1, 1).all() and (unrotated < result.samples["feature_match"]).all()
        assert "unrotated" in notes
    else:
        assert "unrotated_match" not in result.samples
