"""k selection, the four methods, stability, representatives and agreement with ground truth."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from synapse_nb.analysis import clustering as C
from synapse_nb.analysis import k_selection as KS
from synapse_nb.analysis.reduce import standardize


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(200, 10, centers=4, random_state=0, cluster_std=1.0)
    Xs, _ = standardize(X)
    return Xs, y


def test_select_k_recovers_four_blobs(blobs):
    Xs, _ = blobs
    table = C.select_k(Xs, (2, 8), seed=0, n_refs=4, n_splits=3, show_progress=False)
    assert table.attrs["criterion"] == "consensus" == KS.DEFAULT_CRITERION
    assert list(table.columns) == ["k", "inertia", "silhouette", "bic", "log_w", "gap", "gap_sd",
                                   "prediction_strength", "prediction_strength_sd", "chosen"]
    assert list(table["k"]) == list(range(2, 9))
    assert table["chosen"].sum() == 1
    assert C.chosen_k(table) == 4 == table.attrs["chosen_k"]
    assert table.attrs["picks"] == {"silhouette": 4, "gap": 4, "stability": 4, "consensus": 4}
    assert table["inertia"].is_monotonic_decreasing
    sil = C.select_k(Xs, (2, 8), seed=0, criterion="silhouette", show_progress=False)
    assert list(sil.columns) == ["k", "inertia", "silhouette", "bic", "chosen"] and C.chosen_k(sil) == 4


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
    res = C.cluster(Xs, "kmeans", k_range=(2, 6), seed=0, k_selection="silhouette", show_progress=False)
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
    with pytest.raises(ValueError, match=r"^NaN/inf in rows \[2\] of the coordinates: rerun 04_reduce$"):
        as_points(X)
    with pytest.raises(ValueError, match=r"expected a 2-D matrix"):
        finite_matrix(np.zeros(3))
    assert finite_matrix([[1, 2]]).dtype == np.float64


# --------------------------------------------------------------------------------------
# choosing k: gap, prediction strength, consensus
# --------------------------------------------------------------------------------------
def planted(k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k well-separated blobs of unequal sizes and spreads in 6 dimensions."""
    sizes = [30, 22, 16, 12][:k]
    X, y = make_blobs(sizes, 6, centers=None, cluster_std=[0.6, 1.0, 0.8, 1.2][:k], center_box=(-12, 12), random_state=seed)
    return X, y


@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("criterion", ["gap", "stability"])
def test_gap_and_prediction_strength_find_planted_blobs(k, criterion):
    X, _ = planted(k, seed=k)
    table = C.select_k(X, (2, 6), seed=0, criterion=criterion, n_refs=5, n_splits=4, show_progress=False)
    assert table.attrs["chosen_k"] == k == C.chosen_k(table) and table.attrs["criterion"] == criterion
    extra = ["log_w", "gap", "gap_sd"] if criterion == "gap" else ["prediction_strength", "prediction_strength_sd"]
    assert list(table.columns) == ["k", "inertia", "silhouette", "bic", *extra, "chosen"]
    assert set(table.attrs["seconds"]) == {"silhouette", criterion} and table.attrs["picks"][criterion] == k
    if criterion == "stability":  # merged blobs stay together, split ones do not
        ps = table.set_index("k")["prediction_strength"]
        assert ps[k] >= 0.8 > ps[k + 1]


def test_selection_is_deterministic_for_a_seed():
    X, _ = planted(3)
    a = C.select_k(X, (2, 5), seed=3, criterion="consensus", n_refs=3, n_splits=2, show_progress=False)
    b = C.select_k(X, (2, 5), seed=3, criterion="consensus", n_refs=3, n_splits=2, show_progress=False)
    pd.testing.assert_frame_equal(a, b)
    other = C.select_k(X, (2, 5), seed=4, criterion="gap", n_refs=3, show_progress=False)
    assert not np.allclose(a["gap"], other["gap"])  # the seed reaches the reference data


def test_k_range_is_capped_by_the_number_of_synapses():
    X, _ = planted(2)
    X = X[::6]  # 9 synapses
    table = C.select_k(X, (2, 12), seed=0, criterion="consensus", n_refs=2, n_splits=2, show_progress=False)
    assert list(table["k"]) == list(range(2, 9)) and table["gap"].notna().all()
    # halves of 4-5 synapses: prediction strength only for k with two synapses per cluster
    assert table.loc[table["k"] == 2, "prediction_strength"].notna().all()
    assert table.loc[table["k"] > 2, "prediction_strength"].isna().all()


def test_hdbscan_unknown_criterion_and_gmm_keep_their_rules():
    X, _ = planted(3)
    with pytest.raises(ValueError, match="hdbscan finds the number of clusters itself"):
        C.select_k(X, (2, 5), method="hdbscan", criterion="gap", show_progress=False)
    with pytest.raises(ValueError, match="unknown k_selection criterion 'elbow'"):
        C.select_k(X, (2, 5), criterion="elbow", show_progress=False)
    gm = C.select_k(X, (2, 5), method="gmm", criterion="gap", show_progress=False)
    assert gm.attrs["criterion"] == "bic" and "gap" not in gm
    assert C.chosen_k(gm) == int(gm.loc[gm["bic"].idxmin(), "k"])


def test_consensus_follows_its_rule_on_a_constructed_table():
    table = pd.DataFrame({
        "k": [2, 3, 4, 5, 6],
        "silhouette": [0.7, 0.6, 0.5, 0.4, 0.3],  # -> 2
        "gap": [0.5, 0.6, 0.9, 1.0, 1.0], "gap_sd": [0.05] * 5,  # 4 < 5 - 0.05, 5 >= 6 - 0.05 -> 5
        "prediction_strength": [1.0, 0.95, 0.7, 0.82, 0.5],  # largest k >= 0.8 -> 5
    })
    assert KS.picks(table) == {"silhouette": 2, "gap": 5, "stability": 5, "consensus": 5}  # two agree
    assert KS.pick_stability(table, threshold=0.9) == 3
    assert KS.consensus_k({"silhouette": 2, "gap": 6, "stability": 3}) == 3  # all differ: the middle one
    with pytest.raises(ValueError, match=r"missing \['gap'\]"):
        KS.consensus_k({"silhouette": 2, "stability": 3})
    rising = table.assign(gap=[0.1, 0.2, 0.3, 0.4, 0.5], gap_sd=[0.01] * 5)
    assert KS.pick_gap(rising) == 6  # still rising: the largest k tried
    weak = table.assign(prediction_strength=[0.5, 0.6, 0.4, 0.3, 0.2])
    assert KS.pick_stability(weak) == 3  # none reaches the threshold: the most stable k
    assert KS.pick_stability(table.assign(prediction_strength=float("nan"))) == 2  # too few synapses: smallest k


def test_uniform_reference_fills_the_principal_box():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 2)) @ np.array([[3.0, 0.0], [0.0, 0.5]]) @ np.array([[0.6, 0.8], [-0.8, 0.6]])
    Z = KS.uniform_reference(X, np.random.default_rng(1))
    _, _, vt = np.linalg.svd(X - X.mean(axis=0), full_matrices=False)
    sx, sz = (X - X.mean(axis=0)) @ vt.T, (Z - X.mean(axis=0)) @ vt.T
    assert Z.shape == X.shape
    assert np.all(sz.min(axis=0) >= sx.min(axis=0) - 1e-9) and np.all(sz.max(axis=0) <= sx.max(axis=0) + 1e-9)
    assert abs(np.corrcoef(sz.T)[0, 1]) < 0.1  # uniform in the box: no structure left


def test_cluster_passes_k_selection_and_a_fixed_k_skips_it():
    X, y = planted(3)
    res = C.cluster(X, "ward", k_range=(2, 6), seed=0, k_selection="stability", show_progress=False)
    assert res.selection.attrs["criterion"] == "stability" and res.k == 3
    assert adjusted_rand_score(y, res.labels) == pytest.approx(1.0)
    fixed = C.cluster(X, "kmeans", k=2, k_selection="consensus", show_progress=False)
    assert fixed.selection is None and fixed.k == 2


def test_selection_figure_shows_every_criterion_and_the_rule():
    from synapse_nb.figures.maps import selection_figure

    X, _ = planted(3)
    table = C.select_k(X, (2, 5), seed=0, method="ward", criterion="consensus", n_refs=3, n_splits=2, show_progress=False)
    fig = selection_figure(table)
    lines = [t.name for t in fig.data if t.mode == "lines+markers"]
    assert lines == ["inertia", "silhouette", "gap", "prediction_strength"]
    stars = [t for t in fig.data if t.name and t.name.startswith("chosen k=")]
    assert len(stars) == 4 and all(list(t.x) == [3] for t in stars)
    assert "k=3 by consensus, median of silhouette, gap and stability" in fig.layout.title.text
    assert "gap (first k with Gap(k) >= Gap(k+1) - s): k=3" in [a.text for a in fig.layout.annotations]
