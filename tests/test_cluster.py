"""k selection, the four methods, stability, representatives and agreement with ground truth."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from synapse_nb.analysis import clustering as C
from synapse_nb.analysis.reduce import standardize


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(200, 10, centers=4, random_state=0, cluster_std=1.0)
    Xs, _ = standardize(X)
    return Xs, y


def test_select_k_recovers_four_blobs(blobs):
    Xs, _ = blobs
    table = C.select_k(Xs, (2, 8), seed=0, show_progress=False)
    assert list(table.columns) == ["k", "inertia", "silhouette", "bic", "chosen"]
    assert list(table["k"]) == list(range(2, 9))
    assert table["chosen"].sum() == 1
    assert C.chosen_k(table) == 4 == table.attrs["chosen_k"]
    assert table["inertia"].is_monotonic_decreasing


@pytest.mark.parametrize("method", ["kmeans", "gmm", "ward", "hdbscan"])
def test_every_method_finds_the_blobs(blobs, method):
    Xs, y = blobs
    res = C.cluster(Xs, method, k_range=(2, 8), seed=0, show_progress=False)
    assert res.k == 4 and res.method == method
    assert adjusted_rand_score(y, res.labels) == pytest.approx(1.0)
    if method == "gmm":
        assert res.selection["bic"].notna().all()
        assert res.selection.loc[res.selection["chosen"], "bic"].iloc[0] == res.selection["bic"].min()
    if method == "hdbscan":
        assert res.selection is None and res.info["min_cluster_size"] == 5


def test_hdbscan_noise_is_its_own_group(blobs):
    Xs, _ = blobs
    X = np.vstack([Xs, np.full((1, Xs.shape[1]), 40.0)])  # one far outlier
    res = C.cluster(X, "hdbscan", show_progress=False)
    assert res.labels[-1] == C.NOISE and res.n_noise >= 1
    cat = res.categorical()
    assert cat.iloc[-1] == "noise" and list(cat.cat.categories)[-1] == "noise"
    assert res.sizes()["noise"] == res.n_noise


def test_labels_are_numbered_by_size():
    labels = C.relabel_by_size(np.array([5, 5, 7, 7, 7, -1, 9]))
    assert labels.tolist() == [1, 1, 0, 0, 0, -1, 2]


def test_k_larger_than_the_number_of_synapses_is_a_clear_error():
    X = np.random.default_rng(0).normal(size=(5, 3))
    with pytest.raises(ValueError, match=r"k=8 clusters asked but there are only n=5 synapses"):
        C.cluster(X, "kmeans", k=8, show_progress=False)
    with pytest.raises(ValueError, match=r"k_range starts at k=6 but there are only n=5"):
        C.select_k(X, (6, 9), show_progress=False)
    with pytest.raises(ValueError, match="k=8"):
        C.stability(X, "kmeans", k=8, k_range=None, show_progress=False)
    # a range reaching past n - 1 is capped, not an error
    assert C.select_k(X, (2, 10), show_progress=False)["k"].max() == 4


def test_nan_and_bad_method_are_refused():
    X = np.ones((10, 2))
    X[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"rows \[3\]"):
        C.cluster(X, show_progress=False)
    with pytest.raises(ValueError, match="unknown clustering method"):
        C.cluster(np.ones((10, 2)), "spectral", show_progress=False)


def test_large_data_paths_minibatch_sampled_silhouette_and_ward_limit(blobs, monkeypatch):
    Xs, y = blobs
    monkeypatch.setattr(C, "MINIBATCH_MIN_N", 50)
    monkeypatch.setattr(C, "SILHOUETTE_SAMPLE", 80)
    res = C.cluster(Xs, "kmeans", k_range=(2, 6), seed=0, show_progress=False)
    assert res.info["minibatch"] and res.k == 4
    assert adjusted_rand_score(y, res.labels) == pytest.approx(1.0)
    monkeypatch.setattr(C, "WARD_MAX_N", 100)
    with pytest.raises(ValueError, match="n=200 synapses is above the limit of 100"):
        C.cluster(Xs, "ward", k=4, show_progress=False)


def test_stability_is_high_for_clean_blobs(blobs):
    Xs, _ = blobs
    table = C.stability(Xs, "kmeans", k=4, n_boot=6, frac=0.8, seed=0, k_range=(3, 6), show_progress=False)
    assert list(table["k"]) == [3, 4, 5, 6]
    row = table[table["chosen"]].iloc[0]
    assert row["k"] == 4 and row["ari_mean"] > 0.99 and row["n_boot"] == 6
    assert table.loc[table["k"] == 6, "ari_mean"].iloc[0] < row["ari_mean"]
    hd = C.stability(Xs, "hdbscan", n_boot=4, seed=0, show_progress=False)
    assert len(hd) == 1 and hd["k"].iloc[0] == 4 and hd["ari_mean"].iloc[0] > 0.95
    ward = C.stability(Xs, "ward", k=4, n_boot=4, seed=0, k_range=None, show_progress=False)
    assert ward["ari_mean"].iloc[0] > 0.99


def test_representatives_are_closest_to_the_centroid():
    X = np.array([[0.0, 0], [1, 0], [-1, 0], [0, 3], [0, -3.5],  # cluster 0, centroid (0, -0.1)
                  [10, 10], [11, 10], [13, 10]])  # cluster 1, centroid (11.33, 10)
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    reps = C.representatives(X, labels, n=3)
    assert reps[0] == [0, 1, 2]
    assert reps[1] == [6, 5, 7]
    assert C.representatives(X, np.array([0, 0, 0, 0, 0, -1, -1, -1]), n=2) == {0: [0, 1]}


def test_random_members_are_members_and_reproducible():
    labels = np.array([0] * 10 + [1] * 2 + [-1] * 3)
    a = C.random_members(labels, n=3, seed=1)
    assert a == C.random_members(labels, n=3, seed=1)
    assert list(a) == [0, 1, -1]
    assert len(a[0]) == 3 and len(a[1]) == 2
    assert all(labels[i] == k for k, rows in a.items() for i in rows)


def test_agreement_ari_and_nmi():
    truth = np.array(["a", "a", "b", "b", "c", "c"])
    perfect = C.agreement(np.array([2, 2, 0, 0, 1, 1]), truth)
    assert perfect["ari"] == pytest.approx(1.0) and perfect["nmi"] == pytest.approx(1.0)
    crossed = C.agreement(np.array([0, 1, 0, 1]), np.array(["a", "a", "b", "b"]))
    assert crossed["ari"] == pytest.approx(-0.5) and crossed["nmi"] == pytest.approx(0.0, abs=1e-12)
    partial = C.agreement(np.array([1, 0, 0, 1, 1]), [None, "x", "x", "y", "y"])  # missing truth left out
    assert partial["n"] == 4 and partial["ari"] == pytest.approx(1.0)
    table = C.contingency(np.array([0, 0, 1, -1]), ["a", "a", "b", "b"])
    assert table.loc["0", "a"] == 2 and table.loc["noise", "b"] == 1


def test_finite_matrix_names_bad_rows_and_the_fix():
    from synapse_nb.analysis.clustering import finite_matrix
    from synapse_nb.connectivity.stats import as_points

    X = np.zeros((4, 2))
    X[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"^NaN/inf in rows \[2\] of the matrix: standardise with reduce.standardize first$"):
        finite_matrix(X)
    with pytest.raises(ValueError, match=r"^NaN/inf in rows \[2\] of the coordinates: rerun 03_reduce$"):
        as_points(X)
    with pytest.raises(ValueError, match=r"expected a 2-D matrix"):
        finite_matrix(np.zeros(3))
    assert finite_matrix([[1, 2]]).dtype == np.float64
