"""Standardisation, PCA, UMAP/t-SNE and the AnnData export."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs

from synapse_nb.analysis import reduce as R


def blobs_table(n: int = 120, d: int = 24, centers: int = 4, seed: int = 0, index=None) -> pd.DataFrame:
    X, y = make_blobs(n, d, centers=centers, random_state=seed, cluster_std=1.0)
    meta = pd.DataFrame({
        "bbox": [f"bbox{1 + i % 3}" for i in range(n)],
        "Var1": [f"syn_{i}" for i in range(n)],
        "synapse_class": [f"class_{c}" for c in y],
        "vesicle_cloud_vox": np.random.default_rng(seed).gamma(2.0, 100.0 + 80.0 * y),
    })
    feats = pd.DataFrame(X, columns=[f"feat_{i:04d}" for i in range(d)])
    df = pd.concat([meta, feats], axis=1)
    if index is not None:
        df.index = index
    return df


# --------------------------------------------------------------------------------------
# standardisation
# --------------------------------------------------------------------------------------
def test_standardize_zscores_and_keeps_constant_features_at_zero():
    rng = np.random.default_rng(1)
    X = rng.normal(5.0, 3.0, size=(50, 6))
    X[:, 2] = 7.0  # constant
    Xs, scaler = R.standardize(X)
    assert np.allclose(Xs.mean(axis=0), 0.0)
    assert np.allclose(np.delete(Xs.std(axis=0), 2), 1.0)
    assert np.all(Xs[:, 2] == 0.0)
    assert scaler.n_constant == 1
    assert np.allclose(scaler.transform(X), Xs)


def test_standardize_accepts_the_features_table():
    df = blobs_table()
    Xs, scaler = R.standardize(df)
    assert Xs.shape == (120, 24)
    assert scaler.feature_names[0] == "feat_0000"


def test_nan_features_error_names_the_synapse_and_says_what_to_do():
    df = blobs_table(n=20)
    df.loc[7, "feat_0003"] = np.nan
    df.loc[11, "feat_0000"] = np.inf
    with pytest.raises(ValueError) as err:
        R.standardize(df)
    msg = str(err.value)
    assert "bbox2/syn_7 (row 7)" in msg and "syn_11" in msg
    assert "2 synapse(s)" in msg and "drop" in msg


def test_feature_matrix_needs_feature_columns():
    with pytest.raises(ValueError, match="no feature columns"):
        R.feature_matrix(pd.DataFrame({"Var1": ["a"], "x": [1.0]}))
    df = blobs_table(n=10, d=3)
    assert R.feature_matrix(df).shape == (10, 3)
    assert "feat_0000" not in R.metadata(df).columns


# --------------------------------------------------------------------------------------
# PCA and the small-data rules
# --------------------------------------------------------------------------------------
def test_pca_int_float_none():
    Xs, _ = R.standardize(blobs_table())
    Z, evr = R.pca(Xs, 5, seed=0)
    assert Z.shape == (120, 5) and len(evr) == 5 and np.all(np.diff(evr) <= 1e-12)
    Z, evr = R.pca(Xs, 0.9, seed=0)
    assert evr.sum() >= 0.9 and Z.shape[1] == len(evr)
    Z, evr = R.pca(Xs, 500, seed=0)  # capped at min(n, d)
    assert Z.shape[1] == 24
    Z, evr = R.pca(Xs, None)
    assert Z is Xs and len(evr) == 0
    with pytest.raises(ValueError):
        R.pca(Xs, 0)


def test_perplexity_and_neighbour_caps():
    assert R.perplexity_for(1000, 30) == 30
    assert R.perplexity_for(10, 30) == pytest.approx(3.0)  # (n - 1) / 3
    assert R.perplexity_for(4, 30) == 1.0
    assert R.perplexity_for(50, 30) < 50
    assert R.neighbors_for(1000, 15) == 15
    assert R.neighbors_for(8, 15) == 7
    assert R.neighbors_for(3, 15) == 2


# --------------------------------------------------------------------------------------
# embeddings
# --------------------------------------------------------------------------------------
def test_umap_is_deterministic_with_a_seed():
    Xs, _ = R.standardize(blobs_table())
    a = R.umap_embed(Xs, 2, seed=7)
    b = R.umap_embed(Xs, 2, seed=7)
    assert a.shape == (120, 2)
    np.testing.assert_array_equal(a, b)


def test_tsne_is_deterministic_and_adapts_perplexity():
    Xs, _ = R.standardize(blobs_table(n=40))
    info: dict = {}
    a = R.tsne_embed(Xs, 2, perplexity=30, seed=3, info=info)
    b = R.tsne_embed(Xs, 2, perplexity=30, seed=3)
    np.testing.assert_array_equal(a, b)
    assert info["perplexity"] == pytest.approx(13.0) and not info["sampled"]


def test_tsne_3d_from_fewer_input_dimensions():
    """Two PCA components (e.g. few descriptors) still give a 3-D t-SNE map (random init)."""
    Z, _ = R.pca(R.standardize(blobs_table(n=30, d=4))[0], 2)
    Y = R.tsne_embed(Z, 3, seed=0, max_iter=250)
    assert Y.shape == (30, 3) and np.isfinite(Y).all()


def test_tsne_above_max_n_fits_a_sample_and_places_the_rest():
    df = blobs_table(n=240, d=8, centers=3)
    Xs, _ = R.standardize(df)
    info: dict = {}
    Y = R.tsne_embed(Xs, 2, seed=0, max_n=120, max_iter=250, info=info)
    assert Y.shape == (240, 2) and np.isfinite(Y).all()
    assert info["sampled"] and info["n_fit"] == 120
    # placed rows land with their own blob: nearest-centroid in the map recovers the classes
    y = df["synapse_class"].to_numpy()
    cents = {c: Y[y == c].mean(axis=0) for c in np.unique(y)}
    pred = np.array([min(cents, key=lambda c: np.linalg.norm(p - cents[c])) for p in Y])
    assert (pred == y).mean() > 0.95


def test_reduce_features_columns_index_and_info():
    idx = pd.Index([f"r{i}" for i in range(120)])
    df = blobs_table(index=idx)
    emb = R.reduce_features(df, pca_components=10, methods=("umap", "tsne"), dims=(2, 3), seed=1, show_progress=False)
    assert list(emb.index) == list(idx)
    expected = [f"pca_{i}" for i in range(1, 11)] + ["umap_1", "umap_2", "umap3d_1", "umap3d_2", "umap3d_3",
                                                      "tsne_1", "tsne_2", "tsne3d_1", "tsne3d_2", "tsne3d_3"]
    assert list(emb.columns) == expected
    info = emb.attrs["reduce"]
    assert len(info["explained_variance_ratio"]) == 10
    assert {"standardize", "pca", "umap_2d", "tsne_3d"} <= set(info["timings"])
    assert R.embedding_columns("tsne", 3) == ["tsne3d_1", "tsne3d_2", "tsne3d_3"]
    again = R.reduce_features(df, pca_components=10, methods=("umap",), dims=(2,), seed=1, show_progress=False)
    np.testing.assert_array_equal(emb[["umap_1", "umap_2"]].to_numpy(), again[["umap_1", "umap_2"]].to_numpy())


def test_reduce_features_rejects_too_few_synapses_and_bad_options():
    with pytest.raises(ValueError, match="at least 4 synapses, got 3"):
        R.reduce_features(blobs_table(n=3), show_progress=False)
    with pytest.raises(ValueError, match="unknown reduction"):
        R.reduce_features(blobs_table(), methods=("pca2",), show_progress=False)
    with pytest.raises(ValueError, match="dims"):
        R.reduce_features(blobs_table(), dims=(4,), show_progress=False)


def test_reduce_features_works_on_a_handful_of_synapses():
    emb = R.reduce_features(blobs_table(n=6, d=30), pca_components=50, seed=0, show_progress=False)
    assert emb.shape == (6, 6 + 10) and np.isfinite(emb.to_numpy()).all()


# --------------------------------------------------------------------------------------
# AnnData export
# --------------------------------------------------------------------------------------
def test_anndata_round_trip(tmp_path):
    import anndata as ad

    from synapse_nb.analysis import clustering as C
    from synapse_nb.analysis.export import to_anndata

    df = blobs_table(n=60, d=12)
    df.loc[0, ["bbox", "Var1"]] = ["bbox2", "syn_1"]  # same bbox and name as row 1: gets a suffix
    emb = R.reduce_features(df, pca_components=5, methods=("umap",), dims=(2, 3), seed=0, show_progress=False)
    labels = np.array([0, 1, 2, -1] * 15)
    path = to_anndata(df, emb, labels, tmp_path / "out" / "synapses.h5ad", params={"seed": 0, "unset": None, "k_range": (2, 10)})
    assert path.exists() and not list(path.parent.glob(".*tmp*"))
    a = ad.read_h5ad(path)
    assert a.shape == (60, 12)
    assert a.obs_names[2] == "bbox3/syn_2" and a.obs_names.is_unique and "bbox2/syn_1-1" in set(a.obs_names)
    assert list(a.var_names[:2]) == ["feat_0000", "feat_0001"]
    assert a.obsm["X_umap"].shape == (60, 2) and a.obsm["X_umap_3d"].shape == (60, 3) and a.obsm["X_pca"].shape == (60, 5)
    assert "X_tsne" not in a.obsm
    assert list(a.obs["cluster"].cat.categories) == ["0", "1", "2", "noise"]
    assert a.obs["cluster"].iloc[3] == "noise"
    assert {"Var1", "bbox", "synapse_class", "vesicle_cloud_vox"} <= set(a.obs.columns)
    np.testing.assert_allclose(a.X, R.feature_matrix(df), rtol=1e-6)
    assert len(a.uns["pca"]["variance_ratio"]) == 5
    assert a.uns["synapse_nb"]["params"]["seed"] == 0

    # a ClusterResult works too, and a wrong suffix is refused
    res = C.cluster(emb[R.pca_columns(emb)].to_numpy(), "kmeans", k=3, show_progress=False)
    to_anndata(df, emb, res, path)
    assert ad.read_h5ad(path).uns["synapse_nb"]["cluster"]["method"] == "kmeans"
    with pytest.raises(ValueError, match=".h5ad"):
        to_anndata(df, emb, res, tmp_path / "x.h5")
