"""What is clustered: deep features, descriptors or both, with the hybrid block weights."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from synapse_nb.analysis import feature_sets as FS
from synapse_nb.analysis import reduce as R

DESCRIPTORS = ["vesicle_volume_um3", "cleft_area_um2", "cleft_flatness"]


def planted(n: int = 90, d: int = 400, seed: int = 0) -> pd.DataFrame:
    """Three shape classes visible in the descriptors only; the deep block is noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], n // 3)
    meta = pd.DataFrame({
        "bbox": [f"bbox{1 + i % 2}" for i in range(n)],
        "Var1": [f"syn_{i}" for i in range(n)],
        "synapse_class": y,
        "vesicle_volume_um3": rng.lognormal(np.log(np.array([0.02, 0.05, 0.02])[y]), 0.15),
        "cleft_area_um2": rng.normal(np.array([0.10, 0.10, 0.25])[y], 0.015),
        "cleft_flatness": rng.normal(np.array([0.9, 0.5, 0.5])[y], 0.05),
    })
    feats = pd.DataFrame(rng.normal(3.0, 2.0, size=(n, d)), columns=[f"feat_{i:04d}" for i in range(d)])
    feats["feat_0007"] = 1.5  # a dead unit: constant, stays at 0
    return pd.concat([meta, feats], axis=1)


def test_deep_is_the_standardised_feature_columns():
    df = planted()
    fm = FS.assemble(df, feature_set="deep")
    Xs, scaler = R.standardize(df)
    np.testing.assert_allclose(fm.values, Xs)
    assert fm.block_counts() == {"deep": 400} and fm.n_constant == 1 == scaler.n_constant
    assert list(fm.matrix.index) == list(df.index) and fm.descriptor_weight is None
    assert any("1 of 400 deep features are constant" in n for n in fm.notes)


@pytest.mark.parametrize("weight", [0.0, 0.2, 0.5, 0.9, 1.0])
def test_hybrid_descriptor_block_holds_the_weight_of_the_variance(weight):
    df = planted()
    fm = FS.assemble(df, feature_set="hybrid", descriptor_weight=weight, descriptors=DESCRIPTORS)
    assert fm.block_counts() == {"deep": 400, "descriptors": 3}
    share = fm.variance_share()
    assert share["descriptors"] == pytest.approx(weight, abs=1e-9)
    assert share["deep"] == pytest.approx(1.0 - weight, abs=1e-9)
    # total variance is what plain z-scoring of the 402 non-constant columns gives
    assert fm.matrix.var(axis=0, ddof=0).sum() == pytest.approx(402.0)
    assert (fm.matrix["feat_0007"] == 0).all()
    assert fm.info()["feature_set"] == "hybrid" and fm.info()["descriptor_weight"] == weight


def test_hybrid_lets_few_descriptors_be_heard_over_many_deep_columns():
    df = planted()
    y = df["synapse_class"]

    def ari(fm: FS.FeatureMatrix) -> float:
        return adjusted_rand_score(y, KMeans(3, n_init=10, random_state=0).fit_predict(fm.values))

    # plain z-scoring of everything: 3 informative columns among 403 -> noise wins
    assert ari(FS.assemble(df, feature_set="hybrid", descriptor_weight=3 / 402, descriptors=DESCRIPTORS)) < 0.3
    assert ari(FS.assemble(df, feature_set="hybrid", descriptor_weight=0.6, descriptors=DESCRIPTORS)) > 0.9
    assert ari(FS.assemble(df, feature_set="descriptors", descriptors=DESCRIPTORS)) > 0.9


def test_descriptors_drop_empty_and_constant_columns_and_impute_with_notes():
    df = planted(n=30)
    df["mito_volume_um3"] = np.nan  # not annotated in this dataset
    df["cleft_count"] = 1.0
    df.loc[[3, 17], "cleft_flatness"] = np.nan
    cols = DESCRIPTORS + ["mito_volume_um3", "cleft_count"]
    fm = FS.assemble(df, feature_set="descriptors", descriptors=cols)
    assert list(fm.matrix.columns) == DESCRIPTORS
    notes = " | ".join(fm.notes)
    assert "without a value for any synapse (not annotated, or absent from every cube): mito_volume_um3" in notes
    assert "same value for every synapse: cleft_count" in notes
    assert "cleft_flatness: 2 of 30 synapses without a value: not annotated, or the structure is absent from the cube (bbox2/syn_3, bbox2/syn_17)" in notes
    med = df["cleft_flatness"].median()
    assert f"{med:.4g}" in notes
    # imputed rows sit at the median, every column is z-scored
    z = (med - df["cleft_flatness"].fillna(med).mean()) / df["cleft_flatness"].fillna(med).std(ddof=0)
    assert fm.matrix.loc[3, "cleft_flatness"] == pytest.approx(z)
    np.testing.assert_allclose(fm.matrix.std(axis=0, ddof=0), 1.0)
    assert fm.block_counts() == {"descriptors": 3} and fm.info()["descriptor_columns"] == DESCRIPTORS


def test_impossible_sets_fail_clearly():
    df = planted(n=12, d=5)
    with pytest.raises(ValueError, match="unknown feature_set 'shape'"):
        FS.assemble(df, feature_set="shape")
    with pytest.raises(ValueError, match="descriptor_weight must be between 0 and 1"):
        FS.assemble(df, feature_set="hybrid", descriptor_weight=1.5, descriptors=DESCRIPTORS)
    with pytest.raises(ValueError, match="needs morphometric descriptor columns.*rebuild the cubes.*feature_set='deep'"):
        FS.assemble(df, feature_set="descriptors", descriptors=[])
    with pytest.raises(ValueError, match=r"\['cleft_curvature'\] are not in the features table"):
        FS.assemble(df, feature_set="hybrid", descriptors=["cleft_curvature"])
    empty = df.assign(vesicle_volume_um3=np.nan)
    with pytest.raises(ValueError, match="none of the descriptor columns .* is usable"):
        FS.assemble(empty, feature_set="descriptors", descriptors=["vesicle_volume_um3"])
    no_deep = df.drop(columns=R.feature_columns(df))
    with pytest.raises(ValueError, match="needs deep feature columns .* use feature_set='descriptors'"):
        FS.assemble(no_deep, feature_set="hybrid", descriptors=DESCRIPTORS)
    text = df.assign(cleft_flatness="flat")
    with pytest.raises(ValueError, match="'cleft_flatness' is not numeric"):
        FS.assemble(text, feature_set="descriptors", descriptors=DESCRIPTORS)


def test_default_descriptor_columns_come_from_the_cube_descriptor_registry():
    from synapse_nb.cubes.descriptors import descriptor_columns

    df = planted(n=12, d=5)
    expected = descriptor_columns(df, clustered_only=True)
    assert expected, "the registry should know vesicle_volume_um3 / cleft_area_um2 / cleft_flatness"
    fm = FS.assemble(df, feature_set="descriptors")
    assert fm.columns("descriptors") == expected
    with pytest.raises(ValueError, match="has none"):
        FS.assemble(df.drop(columns=DESCRIPTORS), feature_set="descriptors")


def test_reduce_runs_on_the_assembled_matrix_without_restandardising():
    df = planted(n=60, d=40)
    fm = FS.assemble(df, feature_set="hybrid", descriptor_weight=0.7, descriptors=DESCRIPTORS)
    emb = R.reduce_features(df, pca_components=None, methods=(), matrix=fm, show_progress=False)
    # no PCA: the reduced space is the weighted matrix itself, block weights intact
    np.testing.assert_allclose(emb[R.pca_columns(emb)].to_numpy(), fm.values, rtol=1e-5, atol=1e-5)
    info = emb.attrs["reduce"]
    assert info["feature_set"] == "hybrid" and info["descriptor_weight"] == 0.7
    assert info["n_columns"] == {"deep": 40, "descriptors": 3} and info["n_features"] == 43
    assert info["n_constant_features"] == 1 and info["descriptor_columns"] == DESCRIPTORS
    assert any("hybrid: 3 descriptor(s) hold 70%" in n for n in info["notes"])
    assert "feature set hybrid (40 deep, 3 descriptors, descriptors hold 70% of the variance)" in R.summary(emb)
    plain = R.reduce_features(df, pca_components=5, methods=(), show_progress=False)
    assert plain.attrs["reduce"]["feature_set"] == "deep" and plain.attrs["reduce"]["n_columns"] == {"deep": 40}
    with pytest.raises(ValueError, match="assemble it from this table"):
        R.reduce_features(df.iloc[:50], pca_components=5, methods=(), matrix=fm, show_progress=False)


def test_pipeline_reduce_uses_the_configured_feature_set(monkeypatch):
    from synapse_nb.core.config import make_config
    from synapse_nb.pipeline import steps

    df = planted(n=30, d=20)
    cfg = make_config({"feature_set": "descriptors", "descriptor_weight": 0.3, "pca_components": 2})
    seen: dict = {}
    real = FS.assemble

    def spy(features, **kw):
        seen.update(kw)
        return real(features, descriptors=DESCRIPTORS, **kw)

    real_reduce = R.reduce_features

    def no_embeddings(features, **kw):  # UMAP/t-SNE are tested in test_reduce; keep this fast
        return real_reduce(features, **{**kw, "show_progress": False}, methods=())

    monkeypatch.setattr(steps.FS, "assemble", spy)
    monkeypatch.setattr(steps.R, "reduce_features", no_embeddings)
    emb = steps.reduce(df, cfg)
    assert seen == {"feature_set": "descriptors", "descriptor_weight": 0.3}
    assert emb.attrs["reduce"]["n_columns"] == {"descriptors": 3}
