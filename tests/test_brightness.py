"""The brightness check: fires when clusters follow brightness, silent when they follow shape."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans

from synapse_nb.analysis import brightness as B
from synapse_nb.analysis import feature_sets as FS
from synapse_nb.analysis import reduce as R

DESCRIPTORS = ["vesicle_volume_um3", "cleft_area_um2", "cleft_flatness"]
INTENSITY = B.INTENSITY_COLUMNS[0]


def volume(kind: str, n: int = 72, d: int = 64, seed: int = 0) -> pd.DataFrame:
    """Four bboxes. ``brightness``: bbox brightness differs, every synapse has the same shape
    distribution, and the deep features (like random weights) mostly encode brightness.
    ``shape``: three shape classes, brightness random per bbox and unrelated to class, deep
    features encode the class. ``composition``: the shape classes, and the mean intensity
    follows class 1 (no brightness nuisance)."""
    rng = np.random.default_rng(seed)
    bbox = np.arange(n) % 4
    y = np.repeat([0, 1, 2], n // 3)
    if kind == "brightness":
        level = np.array([0.25, 0.4, 0.55, 0.7])[bbox]
        cls_shift = np.zeros((n, 3))
    else:
        level = rng.uniform(0.25, 0.7, size=4)[bbox]
        cls_shift = np.array([[0.0, 0.0, 0.4], [0.03, 0.0, 0.0], [0.0, 0.15, 0.0]])[y]
    intensity = level + rng.normal(0.0, 0.02, n)
    if kind == "composition":  # shape classes differ in mean intensity (a dark vesicle cloud), no nuisance
        intensity = 0.5 - 0.15 * (y == 1) + rng.normal(0.0, 0.02, n)
    meta = pd.DataFrame({
        "bbox": [f"bbox{b + 1}" for b in bbox],
        "Var1": [f"syn_{i}" for i in range(n)],
        "synapse_class": y,
        INTENSITY: intensity,
        "vesicle_volume_um3": 0.02 + cls_shift[:, 0] + rng.normal(0, 0.004, n),
        "cleft_area_um2": 0.10 + cls_shift[:, 1] + rng.normal(0, 0.015, n),
        "cleft_flatness": 0.5 + cls_shift[:, 2] + rng.normal(0, 0.05, n),
    })
    loading = rng.normal(size=d)
    signal = np.outer(intensity - intensity.mean(), loading) * 20.0 if kind == "brightness" else np.eye(3)[y] @ rng.normal(size=(3, d)) * 2.0
    feats = pd.DataFrame(signal + rng.normal(0.0, 1.0, (n, d)), columns=[f"feat_{i:04d}" for i in range(d)])
    return pd.concat([meta, feats], axis=1)


def clustered(df: pd.DataFrame, feature_set: str, k: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    fm = FS.assemble(df, feature_set=feature_set, descriptors=DESCRIPTORS)
    emb = R.reduce_features(df, pca_components=10, methods=(), matrix=fm, show_progress=False)
    labels = KMeans(k, n_init=10, random_state=0).fit_predict(emb[R.pca_columns(emb)].to_numpy())
    return emb, labels


def test_the_intensity_column_is_a_brightness_descriptor_of_the_cube_table():
    from synapse_nb.cubes.descriptors import DESCRIPTORS, descriptor_columns

    assert INTENSITY in DESCRIPTORS and not DESCRIPTORS[INTENSITY].clustered
    assert INTENSITY not in descriptor_columns(volume("shape", n=12))


def test_fires_when_the_clusters_follow_brightness():
    df = volume("brightness")
    emb, labels = clustered(df, "deep")
    check = B.brightness_check(df, emb, labels=labels)
    assert check.measurable and check.warn
    assert check.intensity_column == INTENSITY and check.n == 72 and check.n_clusters == 3
    assert abs(check.pc1_r) > 0.85 and check.eta2 > 0.8 and check.ari_bins > 0.4
    assert check.message.startswith("The clusters mostly follow brightness")
    md = check.markdown()
    assert md.startswith("> **Warning: brightness, not synapse shape.**")
    assert "intensity_normalization" in md and "feature_set" in md


def test_silent_when_the_clusters_follow_shape():
    df = volume("shape")
    for feature_set in ("deep", "descriptors"):
        emb, labels = clustered(df, feature_set)
        check = B.brightness_check(df, emb, labels=labels)
        assert check.measurable and not check.warn, check.message
        assert abs(check.pc1_r) < 0.3 and check.eta2 < 0.15
        assert check.markdown().startswith("*Brightness does not drive the result")


def test_intensity_that_follows_shape_is_not_brightness():
    """Shape classes that differ in mean intensity (like the demo's) do not trigger the warning:
    the part of the intensity the descriptors predict is taken out first."""
    df = volume("composition")
    emb, labels = clustered(df, "descriptors")
    check = B.brightness_check(df, emb, labels=labels)
    assert check.adjusted and check.shape_r2 > 0.8 and not check.warn, check.message
    assert "not explained by shape" in check.message
    assert any("follow from shape" in n for n in check.notes)
    raw = B.brightness_check(df, emb, labels=labels, adjust_for_shape=False)
    assert raw.warn and raw.eta2 > 0.5 and not raw.adjusted
    # brightness that shape cannot predict stays brightness
    df = volume("brightness")
    bright = B.brightness_check(df, clustered(df, "deep")[0])
    assert bright.warn and not bright.adjusted and bright.shape_r2 <= 0


def test_pc1_alone_warns_and_says_so():
    """Brightness on the main axis is worth a warning even before clustering."""
    df = volume("brightness")
    fm = FS.assemble(df, feature_set="deep")
    check = B.brightness_check(df, fm)
    assert check.warn and np.isnan(check.eta2) and check.n_clusters == 0
    assert check.message.startswith("The main axis of variation (PC1) follows brightness")
    # the same PC1 from the matrix, the embeddings' pca_1 and the features table
    emb = R.reduce_features(df, pca_components=5, methods=(), show_progress=False)
    r_emb = B.brightness_check(df, emb).pc1_r
    r_tab = B.brightness_check(df, df).pc1_r
    assert abs(r_emb) == pytest.approx(abs(check.pc1_r), abs=1e-4) == pytest.approx(abs(r_tab), abs=1e-4)
    assert check.pc1_variance == pytest.approx(emb.attrs["reduce"]["explained_variance_ratio"][0], abs=1e-4)


def test_few_synapses_with_chance_correlation_do_not_warn():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({INTENSITY: [0.1, 0.2, 0.3, 0.4, 0.5], "feat_0000": [0.0, 0.3, 0.1, 0.5, 0.4]})
    X = df[["feat_0000"]].to_numpy() + rng.normal(0, 1e-6, (5, 1))
    check = B.brightness_check(df, X)
    assert abs(check.pc1_r) >= B.R_WARN and check.pc1_p >= B.P_WARN and not check.warn


def test_noise_missing_values_and_result_objects():
    from synapse_nb.analysis.clustering import ClusterResult

    df = volume("brightness")
    emb, labels = clustered(df, "deep")
    labels[:4] = -1
    df.loc[[5, 6], INTENSITY] = np.nan
    check = B.brightness_check(df, emb, labels=ClusterResult(labels=labels, k=3, method="kmeans"))
    assert check.warn and check.n == 70
    assert any("2 synapse(s) without a finite" in n for n in check.notes)
    assert any("4 noise synapse(s)" in n for n in check.notes)
    assert check.to_dict()["warn"] is True


def test_not_measurable_without_an_intensity_column_and_clear_errors():
    df = volume("shape", n=12).drop(columns=[INTENSITY])
    check = B.brightness_check(df, np.ones((12, 2)))
    assert not check.measurable and not check.warn
    assert "not measurable" in check.message and INTENSITY in check.message
    assert "not measurable" in check.markdown()
    renamed = volume("shape", n=12).rename(columns={INTENSITY: "mean_intensity_inside"})
    assert B.intensity_column(renamed) == "mean_intensity_inside"
    assert B.intensity_column(renamed.assign(raw_mean_post=1.0)) == "raw_mean_post"
    with pytest.raises(ValueError, match="has 5 rows but the features table 12"):
        B.brightness_check(renamed, np.ones((5, 2)))
    with pytest.raises(ValueError, match="3 cluster labels for 12"):
        B.brightness_check(renamed, np.ones((12, 2)), labels=[0, 1, 2])
    with pytest.raises(ValueError, match="pca_\\* columns"):
        B.brightness_check(renamed, renamed[["bbox"]])


# --------------------------------------------------------------------------------------
# end to end: the brightness preset of the demo through the real cube and feature steps
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def brightness_features(tmp_path_factory):
    """Deep features (random weights, per-cube min-max) of the brightness preset: one shape
    class, brightness and contrast varying by bbox."""
    from synapse_nb.core.config import make_config
    from synapse_nb.data.datasets import open_dataset
    from synapse_nb.data.demo import demo_spec, make_demo_dataset
    from synapse_nb.features.checkpoint import build_model
    from synapse_nb.pipeline.steps import compute_features, make_cubes

    out = tmp_path_factory.mktemp("brightness_preset")
    make_demo_dataset(out, demo_spec("brightness"), progress=False)
    cfg = make_config({"raw_dir": str(out / "raw"), "seg_dir": str(out / "seg"), "mask_dir": str(out / "mask"),
                       "table_dir": str(out / "tables"), "cube_size": 32, "segmentation_type": 0,
                       "extraction_method": "stage_specific", "layer_num": 20})
    cubes = make_cubes(open_dataset(cfg), cfg, progress=False)
    model, info = build_model(None, seed=42)
    return compute_features(cubes, model, info, cfg, progress=False).features


def _check(features: pd.DataFrame, feature_set: str) -> B.BrightnessCheck:
    from synapse_nb.analysis import clustering as C

    Z, _ = R.pca(FS.assemble(features, feature_set=feature_set).values, n_components=min(20, len(features) - 1))
    result = C.cluster(Z, method="kmeans", k=None, k_range=(2, 5), k_selection="silhouette", show_progress=False)
    return B.brightness_check(features, Z, labels=result.labels)


def test_fires_on_the_brightness_preset_and_not_on_its_descriptors(brightness_features):
    """Random-weight deep features of one shape class split by bbox brightness: the warning
    fires; the descriptors of the same cubes do not follow brightness, and it stays silent."""
    deep = _check(brightness_features, "deep")
    assert deep.measurable and deep.warn, deep.message
    assert abs(deep.pc1_r) >= 0.5
    shape = _check(brightness_features, "descriptors")
    assert shape.measurable and not shape.warn, shape.message
