"""Viewer links where a user looks at synapses: tables, galleries, the explorer, the presynapse
summary page and the 08 run report. Links are escaped, only http(s) opens, and without a viewer
nothing changes (no empty column, no dead link)."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from synapse_nb import connectivity as P
from synapse_nb.connectivity import summary_page as SP
from synapse_nb.core import config as C
from synapse_nb.cubes.geometry import CubeGeometry
from synapse_nb.cubes.store import CubeSet
from synapse_nb.figures import gallery as G
from synapse_nb.figures import maps
from synapse_nb.pipeline import report

GOOD = "https://wk.example.org/datasets/lab/conn/view#10,20,30,0,1.3"
GOOD2 = "https://wk.example.org/datasets/lab/conn/view#40,50,60,0,1.3"
HOSTILE = ["javascript:alert(1)", 'https://x.org/" onmouseover="alert(1)', "data:text/html,<script>alert(1)</script>"]
ANCHOR = re.compile(r'<a href="([^"]*)" target="_blank" rel="noopener">')
S = 16


def _no_script(page: str) -> None:
    """Nothing a hostile table value holds reached the HTML unescaped."""
    assert not re.search(r"<script>\w", page), "a synapse name came out as a script tag"  # plotly's own start with blanks
    assert "javascript:" not in page and "onmouseover" not in page.replace("onmouseover=&quot;", "")
    assert all(href in (GOOD, GOOD2) for href in ANCHOR.findall(page))


def _table() -> pd.DataFrame:
    """Four synapses of one connectome: two good links, one hostile, one missing; a hostile name."""
    return pd.DataFrame({
        "bbox": ["conn"] * 4,
        "Var1": ["<script>alert(1)</script>", "s2", "s3", "s4"],
        "size": [1.23456, 2.0, float("nan"), 4.5],
        "viewer_link": [GOOD, HOSTILE[0], None, GOOD2],
    })


@pytest.fixture(scope="module")
def cubes_cfg() -> tuple[CubeSet, C.Config]:
    raw = np.random.default_rng(0).integers(10, 250, size=(4, S, S, S)).astype(np.uint8)
    cubes = CubeSet(raw=raw, bits=np.zeros_like(raw), table=_table(), skipped=pd.DataFrame(), geometry=CubeGeometry(size=S))
    return cubes, C.make_config({"cube_size": S, "segmentation_type": 0})


# --------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------
def test_open_link_opens_only_plain_http_urls():
    assert G.open_link(GOOD) == f'<a href="{GOOD}" target="_blank" rel="noopener">open in viewer</a>'
    assert G.open_link(GOOD, "<b>s1</b>").endswith(">&lt;b&gt;s1&lt;/b&gt;</a>")
    for bad in [*HOSTILE, None, float("nan"), pd.NA, "", "   ", 3]:
        assert G.open_link(bad) == ""


def test_linked_table_links_http_and_escapes_everything_else(caplog):
    df = _table().rename(columns={"size": "<i>size</i>"})
    for i, bad in enumerate(HOSTILE[1:]):
        df.loc[len(df)] = ["conn", f"h{i}", 0.0, bad]
    with caplog.at_level(logging.WARNING, logger="synapse_nb.figures.gallery"):
        page = G.linked_table(df, float_format=lambda v: f"{v:,.4g}").to_html()
    _no_script(page)
    assert ANCHOR.findall(page) == [GOOD, GOOD2]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;i&gt;size&lt;/i&gt;" in page
    assert ">1.235<" in page and ">open<" in page and "viewer_link" not in page
    assert "3 viewer link(s) in the table are not plain http(s) URLs" in caplog.text


def test_links_are_matched_from_another_table_on_bbox_and_name():
    df = pd.DataFrame({"bbox": ["conn", "conn", "other"], "Var1": ["s4", "<script>alert(1)</script>", "s4"], "score": [1, 2, 3]})
    linked = G.with_viewer_links(df, _table())
    assert linked["viewer_link"].tolist() == [GOOD2, GOOD, None]
    page = G.linked_table(df, links_from=_table()).to_html()
    assert ANCHOR.findall(page) == [GOOD2, GOOD]
    _no_script(page)


def test_without_a_viewer_tables_are_unchanged():
    plain = _table().drop(columns="viewer_link")
    assert G.linked_table(plain) is plain
    empty = _table().assign(viewer_link=None)  # a connectome without a viewer: the column holds nothing
    assert not G.has_viewer_links(empty) and not G.has_viewer_links(_table().assign(viewer_link=np.nan))
    pd.testing.assert_frame_equal(G.linked_table(empty), plain)
    pd.testing.assert_frame_equal(G.linked_table(plain, links_from=empty, columns=["Var1"]), plain[["Var1"]])
    assert G.representatives_table(empty, {0: [0, 1]}) is None and G.representatives_table(plain, {0: [0]}) is None
    assert SP.table_html(empty) == SP.table_html(plain) and "open" not in SP.table_html(empty)


def test_representatives_table_lists_each_cluster_with_links():
    page = G.representatives_table(_table(), {"A": [3, 0], "B": [1], "C": []}).to_html()
    rows = re.findall(r"<tr>(.*?)</tr>", page, flags=re.DOTALL)[1:]
    assert len(rows) == 3
    assert ANCHOR.findall(rows[0]) == [GOOD2] and ">A<" in rows[0] and ">s4<" in rows[0]
    assert ANCHOR.findall(rows[2]) == [] and ">B<" in rows[2]  # the hostile link is refused, not shown
    assert G.representatives_table(_table(), {"C": [2]}) is None  # none of those shown has a link
    _no_script(page)


# --------------------------------------------------------------------------------------
# galleries and the explorer
# --------------------------------------------------------------------------------------
def test_gif_gallery_captions_link_each_synapse(cubes_cfg):
    cubes, cfg = cubes_cfg
    groups = {0: [0, 1], 1: [2, 3]}
    page = G.gif_gallery(cubes, cubes.table, groups, cfg).data
    assert ANCHOR.findall(page) == [GOOD, GOOD2] and page.count("<figcaption") == 4
    _no_script(page)
    plain = cubes.table.drop(columns="viewer_link")
    before = G.gif_gallery(cubes, plain, groups, cfg).data
    assert G.gif_gallery(cubes, plain.assign(viewer_link=None), groups, cfg).data == before
    assert "<a " not in before


def test_explorer_shows_the_chosen_synapses_links(cubes_cfg):
    from synapse_nb.ui.explore import Explorer

    cubes, cfg = cubes_cfg
    emb = pd.DataFrame({"umap_1": [0.0, 1.0, 2.0, 3.0], "umap_2": [0.0, 1.0, 0.0, 1.0]})
    frame = maps.analysis_frame(cubes.table, emb, np.array([0, 0, 1, 1]))
    ex = Explorer(frame, cubes, cfg)
    assert ex.links in ex.widget.children[1].children
    ex.select([0, 1, 2])
    assert ANCHOR.findall(ex.links.value) == [GOOD] and ">&lt;script&gt;alert(1)&lt;/script&gt;</a>" in ex.links.value
    assert ANCHOR.findall(ex.table.value) == [GOOD] and 'class="snb-explore-table"' in ex.table.value
    _no_script(ex.links.value + ex.table.value)
    for rows in ([1, 2], [2]):  # no usable link among them: no widget text, no dead link
        ex.select(rows)
        assert ex.links.value == "" and "<a " not in ex.table.value and "s3" in ex.table.value
    ex.select([])
    assert ex.links.value == ""
    plain = Explorer(frame.drop(columns="viewer_link"), cubes, cfg)
    assert plain.links not in plain.widget.children[1].children
    plain.select([0, 3])
    assert "<a " not in plain.table.value and "open" not in plain.table.value and plain.links.value == ""


# --------------------------------------------------------------------------------------
# the presynapse summary page (07)
# --------------------------------------------------------------------------------------
def _presynapse():
    cube = pd.DataFrame({"bbox": ["conn"] * 5, "Var1": ["<script>a</script>", "b", "c", "d", "e"], "table_row": range(5),
                         "pre_seg_id": [5, 5, 7, 7, 9], "ambiguous": [False] * 5, "ambiguity_reason": [""] * 5,
                         "viewer_link": [GOOD, GOOD2, HOSTILE[0], None, GOOD]})
    pca = np.array([[0, 0], [0, 1], [5, 5], [5, 6], [9, 9]], dtype=float)
    emb = pd.DataFrame({"pca_1": pca[:, 0], "pca_2": pca[:, 1], "umap_1": pca[:, 0], "umap_2": pca[:, 1]})
    clusters = cube[["bbox", "Var1"]].assign(cluster=["0", "0", "1", "1", "1"])
    return P.analyze(cube, emb, clusters, cube, n_permutations=10), cube


def test_presynapse_summary_lists_each_groups_synapses_with_links(tmp_path: Path):
    analysis, cube = _presynapse()
    page = P.write_summary(tmp_path / "summary.html", analysis, links_from=cube).read_text()
    sections = re.findall(r'<section id="group-\d+" class="group">(.*?)</section>', page, flags=re.DOTALL)
    assert len(sections) == 2
    assert [ANCHOR.findall(s) for s in sections] == [[GOOD, GOOD2], []]
    assert "&lt;script&gt;a&lt;/script&gt;" in sections[0]
    _no_script(page.split("</head>", 1)[1])  # the head holds plotly.js itself
    table = SP.group_links_table(analysis, cube).to_html()
    assert ANCHOR.findall(table) == [GOOD, GOOD2]
    plain = cube.drop(columns="viewer_link")
    before = P.write_summary(tmp_path / "plain.html", analysis, links_from=plain).read_text()
    assert SP.group_links_table(analysis, plain) is None and SP.group_links_table(analysis, None) is None
    body = before.split("</head>", 1)[1]
    assert "open in viewer" not in body and "<th>open</th>" not in body


# --------------------------------------------------------------------------------------
# the run report (08) and the clusters table (05)
# --------------------------------------------------------------------------------------
def _connectome_run(tmp_path: Path, links: list | None) -> Path:
    tables = tmp_path / "tables"
    tables.mkdir(parents=True)
    features = _table().drop(columns="size")
    if links is None:
        features = features.drop(columns="viewer_link")
    else:
        features["viewer_link"] = links
    features["feat_0000"] = [0.0, 0.1, 5.0, 5.2]
    features.to_parquet(tables / "features.parquet")
    pd.DataFrame({"pca_1": [0.0, 0.2, 5.0, 5.1], "pca_2": [0.0, 0.0, 1.0, 1.0], "umap_1": [0.0, 1, 2, 3],
                  "umap_2": [0.0, 1, 0, 1]}).to_parquet(tables / "embeddings.parquet")
    features[["bbox", "Var1"]].assign(cluster=["0", "0", "1", "1"], cluster_label=[0, 0, 1, 1]).to_parquet(tables / "clusters.parquet")
    (tmp_path / "params_05_cluster.yaml").write_text(yaml.safe_dump({"n_representatives": 1}))
    return tmp_path


def test_run_report_names_the_sample_and_links_representatives(tmp_path: Path):
    run = _connectome_run(tmp_path / "linked", [GOOD, HOSTILE[0], None, GOOD2])
    record = {"connectome": "/home/lab/secret/conn.yaml", "plan": {"policy": "random", "seed": 7}, "sampled": 4,
              "usable": 3000, "rejected": 12, "notes": ["A note."]}
    (run / "tables" / "sample.json").write_text(json.dumps(record))
    s = report.run_summary(run)
    assert s.headline().startswith("**4 synapses** sampled from connectome `conn`")
    line = s.data_markdown()
    assert line.startswith("Data: connectome `conn` (description `conn.yaml`): **4 of 3,000** usable synapses sampled "
                           "(policy `random`, seed 7). 12 rows of the synapse table could not be used")
    assert line.endswith("A note.") and "/home/lab" not in line
    reps = s.representatives
    assert reps[["cluster", "rank", "Var1"]].values.tolist() == [["0", 1, "<script>alert(1)</script>"], ["1", 1, "s3"]]
    page = s.representatives_table().to_html()
    assert ANCHOR.findall(page) == [GOOD]
    _no_script(page)


def test_run_report_of_a_bbox_run_is_unchanged(tmp_path: Path):
    for name, links in (("bbox", None), ("no_viewer", [None] * 4)):
        s = report.run_summary(_connectome_run(tmp_path / name, links))
        assert s.data_markdown() == "" and s.representatives is None and s.representatives_table() is None
        assert s.headline().startswith("**4 synapses** from 1 bboxes")


def test_save_clusters_keeps_the_links_of_a_connectome_run(tmp_path: Path):
    from synapse_nb.analysis import clustering as CL
    from synapse_nb.pipeline import steps
    from synapse_nb.pipeline.runs import Run

    X = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    result = CL.cluster(X, method="kmeans", k=2, seed=0)
    emb = pd.DataFrame({"pca_1": X[:, 0], "pca_2": X[:, 1]})
    cfg = C.make_config({"cube_size": S})
    linked = _table().assign(feat_0000=X[:, 0], feat_0001=X[:, 1])
    for name, features in (("linked", linked), ("plain", linked.drop(columns="viewer_link"))):
        run = Run(tmp_path / name)
        (run.path / "tables").mkdir(parents=True)
        steps.save_clusters(run, features, emb, result, pd.DataFrame(), pd.DataFrame(), cfg)
        written = pd.read_parquet(run.path / "tables" / "clusters.parquet")
        csv = pd.read_csv(run.path / "tables" / "clusters.csv")
        if name == "linked":
            assert written["viewer_link"].tolist()[::3] == [GOOD, GOOD2] and csv["viewer_link"].iloc[0] == GOOD
        else:
            assert "viewer_link" not in written.columns and "viewer_link" not in csv.columns
