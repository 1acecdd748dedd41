"""Presynapse connectivity: grouping, distance statistics, permutation test, summary page, notebook 06."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from synapse_nb import connectivity as P
from synapse_nb.connectivity import stats as S
from synapse_nb.connectivity import summary_page as _connectivity_summary_page
from synapse_nb.data import datasets as _data_datasets
from synapse_nb.pipeline import artifacts
from synapse_nb.pipeline import steps as _pipeline_steps

#: one call per drawn figure (plotly.js itself only defines the function)
NEWPLOT = re.compile(r"Plotly\.newPlot\(\s*[\"']")


def _table(rows: list[tuple]) -> pd.DataFrame:
    """A cube table: (bbox, Var1, pre_seg_id, ambiguous[, reason])."""
    recs = []
    for r in rows:
        bbox, name, pre, amb, *why = r
        recs.append({"bbox": bbox, "Var1": name, "table_row": len(recs), "pre_seg_id": pre, "ambiguous": amb,
                     "ambiguity_reason": why[0] if why else ""})
    return pd.DataFrame(recs)


BASE_ROWS = [
    ("bbox1", "a", 5, False), ("bbox1", "b", 5, False), ("bbox1", "c", 7, False),
    ("bbox2", "d", 5, False), ("bbox2", "e", 9, False), ("bbox2", "f", 9, False),
]


# --------------------------------------------------------------------------------------
# grouping
# --------------------------------------------------------------------------------------
def test_same_bbox_and_presynaptic_id_make_a_group():
    out = P.assign_groups(_table(BASE_ROWS))
    assert list(out["Var1"]) == ["a", "b", "c", "d", "e", "f"]
    assert list(out["status"]) == ["group", "group", "single", "single", "group", "group"]
    assert list(out["group"]) == ["bbox1/pre5", "bbox1/pre5", "", "", "bbox2/pre9", "bbox2/pre9"]
    # the same id in another bbox is another neurite
    assert out.loc[3, "axon"] == "bbox2/pre5" and out.loc[3, "group"] == ""
    assert list(out["group_size"]) == [2, 2, 0, 0, 2, 2]


def test_ambiguous_and_unknown_are_listed_separately_and_included_when_asked():
    rows = BASE_ROWS + [("bbox1", "g", 5, True, "pre/post tie: both sides overlap the closest vesicle cloud by 0 voxels"),
                        ("bbox1", "h", 0, True, "side 1 point lies on background (seg id 0)"),
                        ("bbox2", "i", None, False)]
    out = P.assign_groups(_table(rows)).set_index("Var1")
    assert out.loc["g", "status"] == "excluded" and out.loc["b", "group_size"] == 2
    assert out.loc["g", "reason"].startswith("ambiguous pre/post decision (pre/post tie")
    assert "set include_ambiguous" in out.loc["g", "reason"]
    assert out.loc["h", "status"] == "excluded" and "unknown (id 0 or missing)" in out.loc["h", "reason"]
    assert out.loc["i", "status"] == "excluded" and "unknown" in out.loc["i", "reason"]
    inc = P.assign_groups(_table(rows), include_ambiguous=True).set_index("Var1")
    assert inc.loc["g", "status"] == "group" and inc.loc["g", "group"] == "bbox1/pre5"
    assert list(inc.loc[["a", "b", "g"], "group_size"]) == [3, 3, 3]
    assert inc.loc["g", "reason"].endswith("included (include_ambiguous)")
    assert inc.loc["h", "status"] == "excluded"  # id 0 never groups
    avail = P.assign_groups(_table(BASE_ROWS), available=[True, False, True, True, True, True], unavailable_reason="no features")
    assert list(avail["status"][:3]) == ["single", "excluded", "single"] and avail.loc[1, "reason"] == "no features"


def test_grouping_errors_name_what_to_fix():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['pre_seg_id'\].*rebuild the cubes"):
        P.assign_groups(_table(BASE_ROWS).drop(columns="pre_seg_id"))
    with pytest.raises(ValueError, match="names synapses more than once: bbox1/a"):
        P.assign_groups(_table(BASE_ROWS + [("bbox1", "a", 3, False)]))


def test_groups_of_the_demo_are_its_true_axons(tiny_params):
    """Cubes of the tiny demo: groups = synapses sharing the generator's axon (true_pre_id)."""
    from synapse_nb.core import config

    cfg = config.make_config({k: v for k, v in tiny_params.items() if k != "cache_dir"})
    cs = _pipeline_steps.make_cubes(_data_datasets.open_dataset(cfg), cfg, progress=False)
    out = P.assign_groups(cs.table)
    choice = P.choose_grouping(cs.table)  # the demo has vesicle labels: polarity is known, grouping presynaptic
    assert choice.mode == "presynaptic" and choice.fraction > 0.5
    sure = ~cs.table["ambiguous"].to_numpy()
    truth = cs.table["bbox"] + "/pre" + cs.table["true_pre_id"].astype(str)
    assert (out["axon"][sure] == truth[sure]).all()
    found = {frozenset(g["Var1"]) for _, g in out[out["status"] == "group"].groupby("group")}
    t = cs.table[sure].assign(truth=truth[sure])
    expected = {frozenset(g["Var1"]) for _, g in t.groupby("truth") if len(g) >= 2}
    assert found == expected and len(found) >= 2


# --------------------------------------------------------------------------------------
# distance statistics on hand-made points
# --------------------------------------------------------------------------------------
SQRT10 = math.sqrt(10.0)
HAND_X = np.array([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 1.0], [0.0, 5.0]])
HAND_AXON = ["A", "A", "B", "B", "C"]


def test_intra_and_inter_pairs_have_the_known_values():
    intra, inter, sampled = S.distance_pairs(HAND_X, HAND_AXON, ["s1"] * 4 + ["s2"])
    assert not sampled
    np.testing.assert_allclose(np.sort(intra), [1.0, 1.0])
    np.testing.assert_allclose(np.sort(inter), [3.0, 3.0, SQRT10, SQRT10])  # C is alone in its stratum
    _, pooled, _ = S.distance_pairs(HAND_X, HAND_AXON)
    np.testing.assert_allclose(np.sort(pooled), np.sort([3, 3, SQRT10, SQRT10, 5, 4, math.sqrt(34), 5]))
    g = S.group_distances(HAND_X, HAND_AXON, ["s1"] * 4 + ["s2"]).set_index("axon")
    assert list(g.index) == ["A", "B"] and list(g["n"]) == [2, 2]
    np.testing.assert_allclose(g.loc["A", "mean_intra"], 1.0)
    np.testing.assert_allclose(g.loc["A", "mean_inter"], (6 + 2 * SQRT10) / 4)
    np.testing.assert_allclose(g.loc["A", "ratio"], 4 / (6 + 2 * SQRT10))
    pooled_g = S.group_distances(HAND_X, HAND_AXON).set_index("axon")
    np.testing.assert_allclose(pooled_g.loc["A", "mean_inter"], (3 + SQRT10 + 5 + SQRT10 + 3 + 4) / 6)


def test_inter_pairs_are_sampled_above_the_cap_reproducibly():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    axon = np.repeat(np.arange(100), 3)
    _, exact, sampled = S.distance_pairs(X, axon)
    assert not sampled and len(exact) == 300 * 299 // 2 - 100 * 3
    _, inter, sampled = S.distance_pairs(X, axon, max_inter_pairs=5000, seed=1)
    _, again, _ = S.distance_pairs(X, axon, max_inter_pairs=5000, seed=1)
    assert sampled and len(inter) == 5000 and np.array_equal(inter, again)
    assert abs(inter.mean() / exact.mean() - 1) < 0.03


def test_label_spanning_two_bboxes_is_an_error():
    with pytest.raises(ValueError, match="more than one stratum"):
        S.distance_pairs(HAND_X, ["A", "A", "B", "B", "A"], ["s1"] * 4 + ["s2"])


# --------------------------------------------------------------------------------------
# permutation test
# --------------------------------------------------------------------------------------
def test_permutation_null_on_a_case_small_enough_to_enumerate():
    """One group of 2 among 4 synapses: the null takes the 6 pair distances equally often."""
    X = np.array([[0.0], [1.0], [3.0], [7.0]])
    res = S.permutation_test(X, ["g", "g", "x", "y"], n_permutations=3000, seed=0)
    pairs = np.abs(X[:, None, 0] - X[None, :, 0])[np.triu_indices(4, 1)]  # 1 3 7 2 6 4
    assert res.statistic == 1.0 and res.n_groups == 1 and res.n_pairs == 1
    assert set(np.round(res.null, 9)) == set(pairs)
    assert abs(res.null_mean - pairs.mean()) < 0.15
    assert abs(res.p_value - 1 / 6) < 0.03  # only the observed pair itself is as close
    assert res.p_value == (1 + np.sum(res.null <= 1.0)) / 3001


def _planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3 bboxes x 30 synapses; per bbox groups of 2-5 whose members sit close to a centre."""
    rng = np.random.default_rng(seed)
    X, axon, bbox = [], [], []
    for b in range(3):
        n_left = 30
        for gi, k in enumerate((2, 3, 4, 5)):
            c = rng.normal(size=10)
            X.extend(c + 0.1 * rng.normal(size=(k, 10)))
            axon += [f"b{b}/g{gi}"] * k
            n_left -= k
        X.extend(rng.normal(size=(n_left, 10)))
        axon += [f"b{b}/s{i}" for i in range(n_left)]
        bbox += [f"bbox{b}"] * 30
    return np.array(X), np.array(axon), np.array(bbox)


def test_planted_groups_are_found_and_shuffled_groups_are_not():
    X, axon, bbox = _planted()
    res = S.permutation_test(X, axon, bbox, n_permutations=199, seed=1)
    assert res.p_value == 1 / 200 and res.effect < 0.2 and res.n_groups == 12 and res.n_grouped == 42
    rng = np.random.default_rng(5)
    shuffled = axon.copy()
    for b in np.unique(bbox):
        m = bbox == b
        shuffled[m] = rng.permutation(axon[m])
    null = S.permutation_test(X, shuffled, bbox, n_permutations=199, seed=1)
    assert null.p_value > 0.2 and 0.8 < null.effect < 1.2


def test_permutation_test_is_reproducible_with_its_seed():
    X, axon, bbox = _planted(3)
    a = S.permutation_test(X, axon, bbox, n_permutations=50, seed=7)
    b = S.permutation_test(X, axon, bbox, n_permutations=50, seed=7)
    c = S.permutation_test(X, axon, bbox, n_permutations=50, seed=8)
    assert np.array_equal(a.null, b.null) and not np.array_equal(a.null, c.null)
    assert a.as_dict()["p_value"] == b.p_value and a.as_dict()["n_permutations"] == 50


def test_shuffling_within_bbox_ignores_differences_between_bboxes():
    """No same-axon effect, but bboxes far apart: only pooling across bboxes 'finds' one."""
    rng = np.random.default_rng(2)
    X = np.vstack([rng.normal(size=(20, 3)), 100 + rng.normal(size=(20, 3))])
    bbox = np.repeat(["bbox1", "bbox2"], 20)
    axon = np.array([f"{b}/{i // 2 if i < 10 else i}" for b, i in zip(bbox, list(range(20)) * 2)])
    within = S.permutation_test(X, axon, bbox, n_permutations=199, seed=0)
    pooled = S.permutation_test(X, axon, None, n_permutations=199, seed=0)
    assert within.p_value > 0.1 and 0.8 < within.effect < 1.3
    assert pooled.p_value < 0.05 and pooled.effect < 0.1


def test_nothing_to_test_without_groups():
    res = S.permutation_test(np.eye(3), ["a", "b", "c"], n_permutations=20)
    assert res.n_groups == 0 and math.isnan(res.p_value) and res.as_dict()["p_value"] is None
    with pytest.raises(ValueError, match="n_permutations must be >= 1"):
        S.permutation_test(np.eye(3), ["a", "a", "c"], n_permutations=0)
    with pytest.raises(ValueError, match=r"NaN/inf in rows \[1\]"):
        S.permutation_test(np.array([[0.0], [np.nan]]), ["a", "a"])


def test_the_demo_generator_makes_axons_alike_and_the_test_finds_it():
    """Default demo plan: every axon's synapses share a class on purpose, so their planned
    geometry (bouton, cleft, vesicle-cloud radii, mitochondria) is alike; with the true axons
    shuffled within each bbox the test finds nothing."""
    from synapse_nb.analysis.reduce import standardize
    from synapse_nb.data.demo import plan_demo_table

    plan = plan_demo_table()
    Xs, _ = standardize(plan[["bouton_radius", "cleft_radius", "vesicle_cloud_radius", "has_mito"]].astype(float).to_numpy())
    axon = (plan["bbox"] + "/" + plan["true_pre_id"].astype(str)).to_numpy()
    sizes = pd.Series(axon).value_counts()
    assert sizes.max() >= 4 and (sizes >= 2).sum() >= 10
    res = S.permutation_test(Xs, axon, plan["bbox"], n_permutations=499, seed=0)
    assert res.p_value == 1 / 500 and res.effect < 0.5
    shuffled = plan.groupby("bbox")["true_pre_id"].transform(lambda s: s.sample(frac=1, random_state=4).to_numpy())
    fake = (plan["bbox"] + "/" + shuffled.astype(str)).to_numpy()
    assert (fake != axon).any()
    assert S.permutation_test(Xs, fake, plan["bbox"], n_permutations=499, seed=0).p_value > 0.05


# --------------------------------------------------------------------------------------
# the analysis of tables and the summary page
# --------------------------------------------------------------------------------------
def _run_tables():
    """Features/embeddings/clusters for 8 synapses plus a cube table with 2 more."""
    cube = _table([
        ("bbox1", "s<1>", 5, False), ("bbox1", "s2", 5, False), ("bbox1", "s3", 5, False), ("bbox1", "s4", 8, False),
        ("bbox1", "s5", 8, True, "pre/post tie"), ("bbox1", "s6", 0, True, "side 2 on background"),
        ("bbox2", "t1", 5, False), ("bbox2", "t2", 5, False), ("bbox2", "t3", 6, False), ("bbox2", "t4", 6, False),
    ])
    keep = [0, 1, 2, 3, 4, 6, 7, 8]  # t4 has no features (e.g. an empty mask)
    feats = cube.iloc[keep].reset_index(drop=True).assign(synapse_class=list("AAABBCCD"))
    pca = np.array([[0, 0], [0, 1], [1, 0], [10, 10], [10, 11], [20, 0], [20, 2], [40, 40]], dtype=float)
    emb = pd.DataFrame({"pca_1": pca[:, 0], "pca_2": pca[:, 1], "umap_1": pca[:, 0] / 10, "umap_2": pca[:, 1] / 10})
    clusters = feats[["bbox", "Var1"]].assign(cluster=["0", "0", "1", "1", "1", "2", "2", "2"])
    return cube, feats, emb, clusters


def test_analyze_groups_measures_and_lists_the_excluded():
    cube, feats, emb, clusters = _run_tables()
    a = P.analyze(feats, emb, clusters, cube, n_permutations=50, seed=0)
    assert list(a.groups["group"]) == ["bbox1/pre5", "bbox2/pre5"]
    g = a.groups.set_index("group")
    assert g.loc["bbox1/pre5", "synapses"] == "s<1>, s2, s3" and g.loc["bbox1/pre5", "n"] == 3
    assert g.loc["bbox1/pre5", "dominant_cluster"] == "0" and g.loc["bbox1/pre5", "cluster_share"] == pytest.approx(2 / 3)
    assert g.loc["bbox1/pre5", "clusters"] == "0 x2, 1 x1" and g.loc["bbox1/pre5", "synapse_class"] == "A x3"
    np.testing.assert_allclose(g.loc["bbox1/pre5", "mean_intra"], (1 + 1 + math.sqrt(2)) / 3)
    np.testing.assert_allclose(g.loc["bbox2/pre5", "mean_intra"], 2.0)
    # bbox2's other neurite is t3 at (40, 40); bbox1/pre8 (s4) is a single since s5 is ambiguous
    np.testing.assert_allclose(g.loc["bbox2/pre5", "mean_inter"], (math.hypot(20, 40) + math.hypot(20, 38)) / 2)
    assert set(a.synapses["Var1"]) == {"s<1>", "s2", "s3", "s4", "t1", "t2", "t3"}
    ex = a.excluded.set_index("Var1")
    assert set(ex.index) == {"s5", "s6", "t4"}
    assert ex.loc["t4", "reason"].startswith("no features") and "include_ambiguous" in ex.loc["s5", "reason"]
    assert list(a.ambiguous["Var1"]) == ["s5", "s6"] and not a.ambiguous["used"].any()
    assert len(a.intra) == 4 and a.ratio == pytest.approx(np.mean(a.intra) / np.mean(a.inter))
    assert a.headline().startswith("**7 synapses** analysed: **2 presynaptic neurites** make more than one synapse "
                                   "(1 group of 2, 1 of 3 synapses), 2 synapses are the only one of their neurite; 3 excluded.")
    inc = P.analyze(feats, emb, clusters, cube, include_ambiguous=True, n_permutations=20)
    assert "bbox1/pre8" in set(inc.groups["group"]) and inc.ambiguous.set_index("Var1").loc["s5", "used"]
    assert inc.groups.set_index("group").loc["bbox1/pre8", "n_ambiguous"] == 1


def test_analyze_refuses_tables_that_do_not_belong_together():
    cube, feats, emb, clusters = _run_tables()
    with pytest.raises(ValueError, match="embeddings have 7 rows but the features table 8"):
        P.analyze(feats, emb.iloc[:7], clusters, cube)
    with pytest.raises(ValueError, match=r"not in the synapse table of 01_load \(e.g. bbox2/t3\)"):
        P.analyze(feats, emb, clusters, cube[cube["Var1"] != "t3"])
    with pytest.raises(ValueError, match="no pca_\\* columns"):
        P.analyze(feats, emb[["umap_1", "umap_2"]], clusters, cube)


def test_analyze_names_repeated_synapses_and_missing_columns_of_either_table():
    """Checked before matching on (bbox, Var1), not left to a pandas indexing error."""
    cube, feats, emb, clusters = _run_tables()
    with pytest.raises(ValueError, match=r"the synapse table of 01_load names synapses more than once: bbox1/s<1>"):
        P.analyze(feats, emb, clusters, pd.concat([cube, cube.iloc[[0]]], ignore_index=True))
    with pytest.raises(ValueError, match=r"the synapse table of 01_load lacks column\(s\) \['Var1'\]"):
        P.analyze(feats, emb, clusters, cube.drop(columns="Var1"))
    with pytest.raises(ValueError, match=r"the features table names synapses more than once: bbox2/t3; rerun 03_extract"):
        twice = pd.concat([feats, feats.iloc[[7]]], ignore_index=True)
        P.analyze(twice, pd.concat([emb, emb.iloc[[7]]], ignore_index=True), None, cube)


def test_summary_page_shows_progress_over_many_groups(tmp_path: Path, monkeypatch):
    from synapse_nb.connectivity import summary_page as R

    seen = []

    def fake_progress(iterable, **kw):
        seen.append(kw)
        return iterable

    monkeypatch.setattr(_connectivity_summary_page, "progress", fake_progress)
    monkeypatch.setattr(_connectivity_summary_page, "SUMMARY_PROGRESS_MIN_GROUPS", 1)
    cube, feats, emb, clusters = _run_tables()
    a = P.analyze(feats, emb, clusters, cube, n_permutations=20)
    R.write_summary(tmp_path / "s.html", a)
    assert seen == [{"desc": "presynapse summary", "enabled": True}]


def test_figures_draw_groups_lines_heatmaps_and_distributions():
    cube, feats, emb, clusters = _run_tables()
    a = P.analyze(feats, emb, clusters, cube, n_permutations=30)
    m = P.group_map(a)
    assert [t.name for t in m.data] == ["other synapses", "bbox1/pre5", "bbox2/pre5"]
    assert len(m.data[1].x) == 4 and m.data[1].x[0] == m.data[1].x[-1]  # a closed ring of 3
    assert len(m.data[2].x) == 2 and m.data[2].mode == "lines+markers"
    many = P.group_map(a, max_legend=1)  # beyond the legend limit: one trace, rings split by gaps
    assert len(many.data) == 2 and many.data[1].name == "2 groups"
    assert len(many.data[1].x) == 4 + 1 + 2 + 1 and int(np.isnan(np.asarray(many.data[1].x, float)).sum()) == 2
    h = P.distance_heatmap(a, "bbox2/pre5")
    np.testing.assert_allclose(np.asarray(h.data[0].z), [[0, 2], [2, 0]])
    assert list(h.data[0].x) == ["t1", "t2"]
    assert len(P.group_heatmaps(a).data) == 2
    d = P.distance_distributions(a)
    assert len(d.data) == 2 and len(d.data[0].x) == len(a.intra)
    assert len(P.null_figure(a).data[0].x) == 30


def test_summary_page_is_offline_escaped_and_has_a_section_per_group(tmp_path: Path):
    cube, feats, emb, clusters = _run_tables()
    a = P.analyze(feats, emb, clusters, cube, n_permutations=30)
    path = P.write_summary(tmp_path / "html" / "presynapse_summary.html", a, title="Presynapse <demo>")
    page = path.read_text()
    assert page.count("* plotly.js v") == 1 and page.count('<script type="text/javascript">/**') == 1
    assert len(re.findall(r'<section id="group-\d+" class="group">', page)) == 2
    assert 'href="#group-1">bbox1/pre5</a>' in page
    assert "s&lt;1&gt;" in page and "s<1>" not in page.replace("s&lt;1&gt;", "")
    assert "Presynapse &lt;demo&gt;" in page
    assert not re.search(r"<script[^>]+src=[\"']https?://", page)
    assert not re.search(r"<link[^>]+href=[\"']https?://", page)
    assert len(NEWPLOT.findall(page)) == 3 + 2 * 2  # overview: distributions, null, map; per group: heatmap, map
    assert not list(path.parent.glob(".*tmp*")), "written atomically, nothing left behind"


def test_summary_without_groups_says_so(tmp_path: Path):
    cube, feats, emb, clusters = _run_tables()
    lonely = cube.assign(pre_seg_id=range(1, len(cube) + 1))
    a = P.analyze(feats, emb, clusters, lonely, n_permutations=20)
    assert a.n_groups == 0 and "nothing to test" in a.test_sentence()
    page = P.write_summary(tmp_path / "s.html", a).read_text()
    assert "No presynaptic neurite makes two or more analysed synapses" in page and 'class="group"' not in page


# --------------------------------------------------------------------------------------
# unknown polarity: grouping by a neurite shared on either side
# --------------------------------------------------------------------------------------
NO_VESICLES = "no vesicle-cloud label in this dataset; pre/post tie: both sides overlap the closest vesicle cloud by 0 voxels"


def _sided(rows: list[tuple]) -> pd.DataFrame:
    """A cube table from (bbox, Var1, side1, side2, pre_side, ambiguous): pre/post ids follow pre_side."""
    recs = []
    for bbox, name, s1, s2, side, amb in rows:
        pre, post = {1: (s1, s2), 2: (s2, s1)}.get(side, (0, 0))
        recs.append({"bbox": bbox, "Var1": name, "table_row": len(recs), "pre_side": side, "pre_seg_id": pre,
                     "post_seg_id": post, "side1_seg_id": s1, "side2_seg_id": s2, "ambiguous": amb,
                     "ambiguity_reason": NO_VESICLES if amb else ""})
    return pd.DataFrame(recs)


UNKNOWN_ROWS = [  # a volume without vesicle labels: every decision is a tie-break
    ("bbox1", "s1", 5, 9, 1, True), ("bbox1", "s2", 9, 12, 2, True), ("bbox1", "s3", 12, 20, 1, True),
    ("bbox1", "s4", 30, 31, 1, True), ("bbox1", "s5", 0, 0, 0, False),
    ("bbox2", "t1", 9, 50, 1, True), ("bbox2", "t2", 50, 9, 1, True), ("bbox2", "t3", 9, 0, 1, True),
    ("bbox2", "t4", 60, 61, 1, True), ("bbox2", "t5", 70, 71, 2, True),
]


def test_either_side_groups_are_connected_components_of_shared_ids():
    out = P.assign_groups_either_side(_sided(UNKNOWN_ROWS)).set_index("Var1")
    # s1-s2 share 9, s2-s3 share 12: one chain; id 9 of bbox2 is another neurite
    assert set(out.index[out["group"] == "bbox1/seg9+12"]) == {"s1", "s2", "s3"}
    assert set(out.index[out["group"] == "bbox2/seg9+50"]) == {"t1", "t2", "t3"}
    assert out.loc["s1", "shared_seg_ids"] == "9+12" and out.loc["t3", "group_size"] == 3
    assert out.loc["s4", "status"] == "single" and out.loc["s4", "neurite"] == "bbox1/syn:s4" and out.loc["s4", "group"] == ""
    assert out.loc["s5", "status"] == "excluded" and "neither side lies on a known neurite" in out.loc["s5", "reason"]
    # ambiguous pre/post decisions are used: the grouping does not depend on them
    assert out.loc["s1", "status"] == "group" and "used: grouping by either side" in out.loc["s1", "reason"]
    assert "axon" not in out.columns
    # the pre/post ids are the same pair as the sides: tables without side columns group the same way
    old = P.assign_groups_either_side(_sided(UNKNOWN_ROWS).drop(columns=["side1_seg_id", "side2_seg_id"]))
    assert old["group"].tolist() == out["group"].tolist()
    many = _sided([("b", f"x{i}", i + 1, 99, 1, True) for i in range(6)])  # six axons onto one dendrite
    assert set(P.assign_groups_either_side(many)["group"]) == {"b/seg99"}


def test_the_grouping_mode_follows_the_share_of_decided_polarities():
    unknown = _sided(UNKNOWN_ROWS)
    assert P.polarity_decided(unknown).sum() == 0  # s5 has pre_side 0, the others are ambiguous
    choice = P.choose_grouping(unknown)
    assert (choice.mode, choice.n_decided, choice.n_synapses) == ("either_side", 0, 10)
    assert "fewer than 50%" in choice.rule() and "by a shared neurite on either side (polarity unknown)" in choice.rule()
    half = unknown.assign(ambiguous=[False] * 4 + [False] + [True] * 5)  # 4 decided of 10 (s5 has no side)
    assert P.choose_grouping(half).mode == "either_side"
    assert P.choose_grouping(half, available=[True] * 5 + [False] * 5).mode == "presynaptic"  # 4 of 5
    assert P.choose_grouping(unknown.assign(ambiguous=False)).mode == "presynaptic"  # 9 of 10
    forced = P.choose_grouping(unknown, "presynaptic")
    assert forced.mode == "presynaptic" and "as requested (presynapse_grouping 'presynaptic')" in forced.rule()
    with pytest.raises(ValueError, match="presynapse_grouping must be one of auto, presynaptic, either_side, got 'axon'"):
        P.choose_grouping(unknown, "axon")


def _unknown_run_tables():
    cube = _sided(UNKNOWN_ROWS)
    keep = [0, 1, 2, 3, 4, 5, 6, 7, 9]  # t4 has no features
    feats = cube.iloc[keep].reset_index(drop=True)
    pca = np.array([[0, 0], [0, 1], [1, 0], [10, 10], [10, 11], [20, 0], [20, 2], [21, 1], [40, 40]], dtype=float)
    emb = pd.DataFrame({"pca_1": pca[:, 0], "pca_2": pca[:, 1], "umap_1": pca[:, 0] / 10, "umap_2": pca[:, 1] / 10})
    clusters = feats[["bbox", "Var1"]].assign(cluster=["0", "0", "0", "1", "1", "2", "2", "2", "3"])
    return cube, feats, emb, clusters


def test_unknown_polarity_groups_by_either_side_and_says_so(tmp_path: Path):
    cube, feats, emb, clusters = _unknown_run_tables()
    a = P.analyze(feats, emb, clusters, cube, n_permutations=50, seed=0)
    assert a.mode == "either_side" and a.label_column == "neurite"
    assert list(a.groups["group"]) == ["bbox1/seg9+12", "bbox2/seg9+50"]
    g = a.groups.set_index("group")
    assert g.loc["bbox1/seg9+12", "synapses"] == "s1, s2, s3" and g.loc["bbox2/seg9+50", "shared_seg_ids"] == "9+50"
    assert "pre_seg_id" not in a.groups.columns and (a.groups["grouping"] == "either_side").all()
    np.testing.assert_allclose(g.loc["bbox1/seg9+12", "mean_intra"], (1 + 1 + math.sqrt(2)) / 3)
    np.testing.assert_allclose(g.loc["bbox2/seg9+50", "mean_inter"],
                               np.mean([math.hypot(40 - x, 40 - y) for x, y in [(20, 0), (20, 2), (21, 1)]]))
    assert a.test.n_groups == 2 and a.test.n_grouped == 6 and len(a.intra) == 6
    assert set(a.excluded["Var1"]) == {"s5", "t4"} and list(a.excluded.columns[2:4]) == ["side1_seg_id", "side2_seg_id"]
    assert a.ambiguous.set_index("Var1")["used"].drop("t4").all()  # only the synapse without features is unused
    text = a.markdown() + a.test_sentence()
    assert "grouped **by a shared neurite on either side (polarity unknown)**" in text
    assert "0 of 9 analysable synapses have a decided pre side, fewer than 50%" in text
    assert a.test_sentence().startswith("Synapses that share a neurite (on either side, polarity unknown) are **")
    assert "axon" not in text.lower() and "presynaptic" not in text.lower()
    summary = a.summary()
    assert summary["grouping"] == "either_side" and summary["n_polarity_decided"] == 0
    assert summary["grouping_text"] == "by a shared neurite on either side (polarity unknown)"
    sentence = P.summary_sentence(json.loads(json.dumps(summary)))
    assert sentence.startswith("**2 groups of synapses sharing a neurite on either side** (polarity unknown; 6 synapses)")
    assert "presynaptic" not in sentence
    page = P.write_summary(tmp_path / "s.html", a).read_text()
    body = page.split("</head>", 1)[1]  # plotly.js itself is in the head
    assert "by a shared neurite on either side (polarity unknown)" in body
    assert "axon" not in body.lower() and "presynaptic" not in body.lower()
    assert [t.name for t in P.group_map(a).data][1:] == ["bbox1/seg9+12", "bbox2/seg9+50"]
    # what forcing the tie-broken pre sides would have grouped: ids chosen by a coin flip
    forced = P.analyze(feats, emb, clusters, cube, grouping="presynaptic", include_ambiguous=True, n_permutations=20)
    assert list(forced.groups["group"]) == ["bbox1/pre12", "bbox2/pre9"] and forced.summary()["grouping"] == "presynaptic"


def test_known_polarity_keeps_the_presynaptic_grouping():
    cube, feats, emb, clusters = _run_tables()
    sided = cube.assign(pre_side=np.where(cube["pre_seg_id"] > 0, 1, 0), post_seg_id=100,
                        side1_seg_id=cube["pre_seg_id"], side2_seg_id=100)  # every synapse onto dendrite 100
    before = P.analyze(feats, emb, clusters, cube, n_permutations=30, seed=0)
    a = P.analyze(feats, emb, clusters, sided, n_permutations=30, seed=0)
    assert a.mode == "presynaptic" and a.label_column == "axon" and a.summary()["grouping"] == "presynaptic"
    assert a.summary()["n_polarity_decided"] == 7 and "at least 50%" in a.grouping_sentence()
    pd.testing.assert_frame_equal(a.groups, before.groups)
    assert a.test.p_value == before.test.p_value and (a.groups["grouping"] == "presynaptic").all()
    assert "**2 presynaptic neurites** make more than one synapse" in a.headline()
    assert P.summary_sentence(a.summary()).startswith("**2 presynaptic neurites** make more than one synapse")
    both = P.analyze(feats, emb, clusters, sided, grouping="either_side", n_permutations=30)
    assert list(both.groups["group"]) == ["bbox1/seg5+8+100", "bbox2/seg5+100"]  # the shared dendrite joins them all


# --------------------------------------------------------------------------------------
# notebook 07 in the pipeline's run
# --------------------------------------------------------------------------------------
@pytest.mark.notebooks
def test_notebook_06_in_the_pipeline_run(pipeline_run):
    """07_presynapse ran in the pipeline (conftest: n_permutations 200)."""
    result, _ = pipeline_run
    run = result.run
    groups = pd.read_csv(run.tables_dir / "presynapse_groups.csv")
    features = run.read(artifacts.FEATURES)
    sure = features[~features["ambiguous"]]
    truth = sure.groupby(["bbox", "true_pre_id"])["Var1"].apply(lambda s: ", ".join(s))
    assert set(groups["synapses"]) == set(truth[truth.str.contains(",")])
    assert set(groups.columns) >= {"group", "bbox", "pre_seg_id", "n", "dominant_cluster", "cluster_share", "mean_intra", "ratio"}
    test = json.loads((run.tables_dir / "presynapse_test.json").read_text())
    assert test["n_groups"] == len(groups) and test["n_permutations"] == 200 and 0 < test["p_value"] <= 1
    assert test["scope"] == "bbox" and test["space"].startswith("Euclidean distance in the pca_* space")
    page = (run.html_dir / "presynapse_summary.html").read_text()
    assert len(re.findall(r'<section id="group-\d+" class="group">', page)) == len(groups)
    assert page.count('<img class="montage" src="data:image/png;base64,') == len(groups)
    text = (run.html_dir / "07_presynapse.html").read_text()
    assert "p = " in text and len(NEWPLOT.findall(text)) == 4 and 'src="data:image/png;base64,' in text
