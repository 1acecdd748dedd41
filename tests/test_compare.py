"""Vesicle/cleft size against clusters: Kruskal-Wallis, Cliff's delta, Holm."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from synapse_nb.analysis import compare as K


@pytest.fixture(scope="module")
def sizes():
    """Three clusters of 60: vesicle size planted (cluster 2 twice as large), cleft null."""
    rng = np.random.default_rng(11)
    labels = np.repeat([0, 1, 2], 60)
    df = pd.DataFrame({
        "Var1": [f"s{i}" for i in range(180)],
        "vesicle_cloud_vox": rng.lognormal(np.log(np.array([100.0, 100.0, 200.0])[labels]), 0.3),
        "cleft_vox": rng.lognormal(np.log(50.0), 0.3, size=180),
        "mito_vox": rng.normal(size=180),
        "feat_0000": rng.normal(size=180),
    })
    return df, labels


def test_guess_size_columns(sizes):
    df, _ = sizes
    assert K.guess_size_columns(df) == ["vesicle_cloud_vox", "cleft_vox"]
    assert K.guess_size_columns(df, suffix="_nm3") == []


def test_kruskal_detects_the_planted_difference_and_not_the_null(sizes):
    df, labels = sizes
    kw = K.kruskal_tests(df, labels, ["vesicle_cloud_vox", "cleft_vox"]).set_index("measure")
    assert kw.loc["vesicle_cloud_vox", "p_holm"] < 1e-6
    assert kw.loc["vesicle_cloud_vox", "epsilon2"] > 0.2
    assert kw.loc["cleft_vox", "p"] > 0.05
    assert kw.loc["cleft_vox", "dof"] == 2 and kw.loc["cleft_vox", "n"] == 180


def test_cliffs_delta_sign_and_magnitude():
    a, b = np.arange(10, 20), np.arange(0, 10)
    assert K.cliffs_delta(a, b) == 1.0
    assert K.cliffs_delta(b, a) == -1.0
    assert K.cliffs_delta(a, a) == 0.0
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 30), rng.integers(1, 6, 25)  # with ties
    brute = (np.sign(x[:, None] - y[None, :])).mean()
    assert K.cliffs_delta(x, y) == pytest.approx(brute)
    assert [K.delta_magnitude(d) for d in (0.1, -0.2, 0.4, -0.9)] == ["negligible", "small", "medium", "large"]


def test_pairwise_effects_point_the_right_way(sizes):
    df, labels = sizes
    pw = K.pairwise_effects(df, labels, ["vesicle_cloud_vox"])
    assert len(pw) == 3
    row = pw[(pw["cluster_a"] == "0") & (pw["cluster_b"] == "2")].iloc[0]
    assert row["cliffs_delta"] < -0.8 and row["magnitude"] == "large" and row["p_holm"] < 1e-6
    same = pw[(pw["cluster_a"] == "0") & (pw["cluster_b"] == "1")].iloc[0]
    assert abs(same["cliffs_delta"]) < 0.3 and same["p_holm"] > 0.05
    assert (pw["p_holm"] >= pw["p"]).all()


def test_holm_matches_the_definition():
    p = [0.01, 0.04, 0.03, np.nan, 0.5]
    # sorted 0.01, 0.03, 0.04, 0.5 with m = 4: 0.04, 0.09, 0.09 (monotone), 0.5
    np.testing.assert_allclose(K.holm(p), [0.04, 0.09, 0.09, np.nan, 0.5])


def test_noise_is_left_out_of_tests_but_shown_in_summary(sizes):
    df, labels = sizes
    lab = labels.copy()
    lab[:5] = -1
    res = K.size_analysis(df, lab)
    assert res.columns == ["vesicle_cloud_vox", "cleft_vox"]
    assert "noise" in set(res.summary["cluster"].astype(str))
    assert "noise" not in set(res.pairwise["cluster_a"]) | set(res.pairwise["cluster_b"])
    assert res.kruskal["n"].iloc[0] == 175
    assert set(res.significant()["measure"]) == {"vesicle_cloud_vox"}


def test_labels_as_column_and_clear_errors(sizes):
    df, labels = sizes
    d = df.assign(cluster=pd.Categorical(labels.astype(str)))
    assert len(K.kruskal_tests(d, "cluster", ["cleft_vox"])) == 1
    with pytest.raises(ValueError, match="not in the table"):
        K.kruskal_tests(d, "cluster", ["vesicle_nm3"])
    with pytest.raises(ValueError, match="no cluster column"):
        K.kruskal_tests(d, "leiden", ["cleft_vox"])
    with pytest.raises(ValueError, match="3 cluster labels for 180"):
        K.kruskal_tests(d, np.array([0, 1, 2]), ["cleft_vox"])
    constant = d.assign(cleft_vox=1.0)
    assert K.kruskal_tests(constant, "cluster", ["cleft_vox"])["p"].iloc[0] == 1.0


# --------------------------------------------------------------------------------------
# every clustered descriptor
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def descriptors():
    """Three clusters of 40: vesicle volume separates 2 from the rest, cleft flatness 0 from the
    rest (weaker), cleft area is null; one synapse's flatness is not annotated."""
    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1, 2], 40)
    df = pd.DataFrame({
        "Var1": [f"s{i}" for i in range(120)],
        "vesicle_volume_um3": rng.lognormal(np.log(np.array([0.02, 0.02, 0.06])[labels]), 0.2),
        "cleft_area_um2": rng.normal(0.1, 0.02, 120),
        "cleft_flatness": rng.normal(np.array([0.8, 0.6, 0.6])[labels], 0.12),
        "raw_mean_cube": rng.normal(120, 10, 120),  # brightness: not a clustered descriptor
        "feat_0000": rng.normal(size=120),
    })
    df.loc[7, "cleft_flatness"] = np.nan
    return df, labels


def test_descriptor_analysis_ranks_the_separating_descriptors(descriptors):
    df, labels = descriptors
    res = K.descriptor_analysis(df, labels)
    assert res.columns == ["vesicle_volume_um3", "cleft_area_um2", "cleft_flatness"]  # registry order, clustered only
    t = res.table.set_index("descriptor")
    assert res.order == ["vesicle_volume_um3", "cleft_flatness", "cleft_area_um2"]
    assert t.loc["vesicle_volume_um3", "max_abs_delta"] > 0.9 and t.loc["vesicle_volume_um3", "larger"] == "2"
    assert t.loc["vesicle_volume_um3", "pair"] in {"0 vs 2", "1 vs 2"} and t.loc["vesicle_volume_um3", "magnitude"] == "large"
    assert t.loc["cleft_flatness", "p_holm"] < 1e-4 and t.loc["cleft_flatness", "larger"] == "0"
    assert t.loc["cleft_flatness", "n"] == 119  # the unannotated synapse is left out
    assert t.loc["cleft_area_um2", "p_holm"] > 0.05 and t.loc["cleft_area_um2", "max_abs_delta"] < 0.33
    assert (t["p_holm"] >= t["p"]).all()
    assert list(res.separating()["descriptor"]) == ["vesicle_volume_um3", "cleft_flatness"]
    # medians per cluster, and robust z-scores against all synapses
    assert list(res.medians.index) == ["0", "1", "2"]
    assert res.medians.loc["2", "vesicle_volume_um3"] == pytest.approx(df["vesicle_volume_um3"][labels == 2].median())
    z = res.robust_z()
    assert list(z.columns) == res.order
    assert z.loc["2", "vesicle_volume_um3"] > 2 and z.loc["0", "vesicle_volume_um3"] < 0
    assert abs(z.loc["1", "cleft_area_um2"]) < 0.5


def test_descriptor_analysis_explicit_columns_noise_and_errors(descriptors):
    df, labels = descriptors
    lab = labels.copy()
    lab[:3] = -1
    res = K.descriptor_analysis(df, lab, ["cleft_area_um2"])
    assert res.columns == ["cleft_area_um2"] and "noise" not in res.medians.index
    assert res.table["n"].iloc[0] == 117
    with pytest.raises(ValueError, match="no descriptor columns"):
        K.descriptor_analysis(df[["Var1", "feat_0000"]], labels)
    with pytest.raises(ValueError, match="not in the table"):
        K.descriptor_analysis(df, labels, ["cleft_holes"])


def test_robust_scale_ignores_outliers_and_falls_back():
    x = np.r_[np.random.default_rng(0).normal(0, 2, 500), 1e6]
    assert K.robust_scale(x) == pytest.approx(2.0, rel=0.15)
    assert K.robust_scale(np.r_[np.zeros(10), 5.0]) > 0  # MAD 0 -> IQR/std fallback
    assert K.robust_scale(np.ones(5)) == 1.0 and np.isnan(K.robust_scale([np.nan]))


def test_descriptor_heatmap_orders_by_effect_and_shows_units(descriptors):
    from synapse_nb.figures import descriptor_heatmap

    df, labels = descriptors
    res = K.descriptor_analysis(df, labels)
    fig = descriptor_heatmap(res)
    hm = fig.data[0]
    assert list(hm.x) == ["vesicle volume (µm³)", "cleft flatness", "cleft area (µm²)"]
    assert list(hm.y) == ["cluster 0", "cluster 1", "cluster 2"]
    np.testing.assert_allclose(np.asarray(hm.z, dtype=float), res.robust_z().to_numpy())
    med = res.medians.loc["2", "vesicle_volume_um3"]
    assert f"median {med:.4g} µm³" in hm.text[2][0] and "Cliff's delta" in hm.text[2][0]
    assert hm.zmid == 0
