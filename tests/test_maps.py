"""Figure builders return plain plotly figures with the expected traces."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from synapse_nb.analysis import clustering as C
from synapse_nb.figures import maps as M


def frame(n: int = 90, seed: int = 0) -> pd.DataFrame:
    """What analysis_frame returns: metadata, embedding columns, categorical cluster."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    labels[:4] = -1
    meta = pd.DataFrame({
        "bbox": [f"bbox{1 + i % 2}" for i in range(n)],
        "Var1": [f"syn_{i}" for i in range(n)],
        "vesicle_cloud_vox": rng.gamma(2.0, 100.0, n),
        "cleft_vox": rng.gamma(2.0, 30.0, n),
        "feat_0000": rng.normal(size=n),
    })
    emb = pd.DataFrame(rng.normal(size=(n, 5)), columns=["umap_1", "umap_2", "umap3d_1", "umap3d_2", "umap3d_3"])
    return M.analysis_frame(meta, emb, labels)


def test_analysis_frame_joins_metadata_embeddings_and_clusters():
    df = frame()
    assert "feat_0000" not in df.columns
    assert {"Var1", "bbox", "umap_1", "umap3d_3", "cluster"} <= set(df.columns)
    assert list(df["cluster"].cat.categories) == ["0", "1", "2", "noise"]
    with pytest.raises(ValueError, match="labels"):
        M.analysis_frame(df, None, np.zeros(3, dtype=int))


def test_map_by_cluster_has_one_trace_per_cluster_and_full_hover():
    fig = M.embedding_map(frame())
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == ["0", "1", "2", "noise"]
    assert all(isinstance(t, go.Scatter) for t in fig.data)
    assert fig.data[3].marker.color == M.NOISE_COLOR
    tmpl = fig.data[0].hovertemplate
    for col in ("Var1", "bbox", "cluster", "vesicle_cloud_vox", "cleft_vox"):
        assert col in tmpl
    assert sum(len(t.x) for t in fig.data) == 90
    json.loads(fig.to_json())  # static-safe: serialisable, no widget state


def test_map_by_bbox_and_by_a_morphometric():
    df = frame()
    assert [t.name for t in M.embedding_map(df, color="bbox").data] == ["bbox1", "bbox2"]
    gaps = df.assign(synapse_class=[None if i % 10 == 0 else f"c{i % 2}" for i in range(len(df))])
    fig = M.embedding_map(gaps, color="synapse_class")
    assert [t.name for t in fig.data] == ["c0", "c1", "n/a"] and sum(len(t.x) for t in fig.data) == len(df)
    cont = M.embedding_map(df, color="vesicle_cloud_vox")
    assert len(cont.data) == 1 and cont.data[0].marker.showscale
    assert np.allclose(cont.data[0].marker.color, df["vesicle_cloud_vox"])
    with pytest.raises(ValueError, match="not in the table"):
        M.embedding_map(df, color="nope")


def test_webgl_above_threshold():
    df = frame(n=M.SCATTERGL_MIN_N + 1)
    fig = M.embedding_map(df)
    assert all(isinstance(t, go.Scattergl) for t in fig.data)
    assert all(isinstance(t, go.Scatter) for t in M.embedding_map(frame(50)).data)


def test_3d_map_and_subsampling():
    df = frame(n=120)
    fig = M.embedding_map_3d(df)
    assert all(isinstance(t, go.Scatter3d) for t in fig.data) and len(fig.data) == 4
    small = M.embedding_map_3d(df, color="cleft_vox", max_points=50)
    assert len(small.data) == 1 and len(small.data[0].x) == 50
    assert "random sample of 50 of 120" in small.layout.title.text


def test_size_map_marker_area_follows_the_value():
    df = frame()
    fig = M.size_map(df, "vesicle_cloud_vox")
    assert "vesicle_cloud_vox" in fig.layout.title.text
    sizes = np.concatenate([np.asarray(t.marker.size) for t in fig.data])
    values = np.concatenate([t.customdata[:, list(M.default_hover(df, ["cluster", "vesicle_cloud_vox"])).index("vesicle_cloud_vox")] for t in fig.data]).astype(float)
    order = np.argsort(values)
    assert np.all(np.diff(sizes[order]) >= -1e-9)
    assert sizes.min() >= M.SIZE_RANGE[0] and sizes.max() <= M.SIZE_RANGE[1]


def test_k_selection_bic_and_stability_figures():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(c, 0.3, size=(30, 4)) for c in (0, 5, 10)])
    table = C.select_k(X, (2, 5), criterion="silhouette", show_progress=False)
    fig = M.k_selection_figure(table)
    assert len(fig.data) == 4 and fig.data[2].name == "chosen k=3"
    assert list(fig.data[2].x) == [3]
    assert len(M.bic_figure(table).data) == 0 and "No BIC" in M.bic_figure(table).layout.annotations[0].text
    assert len(M.k_selection_figure(None).data) == 0  # hdbscan / given k: a note, no branch in the notebook
    gmm = C.select_k(X, (2, 5), method="gmm", show_progress=False)
    bic = M.bic_figure(gmm)
    assert len(bic.data) == 2 and list(bic.data[1].x) == [3]
    stab = C.stability(X, "kmeans", k=3, n_boot=3, k_range=(2, 4), show_progress=False)
    sfig = M.stability_figure(stab)
    assert len(sfig.data) == 2 and sfig.data[0].error_y.array is not None
    assert "3 subsamples of 80%" in sfig.layout.title.text


def test_explained_variance_and_distributions_and_contingency():
    ev = M.explained_variance_figure([0.5, 0.3, 0.1])
    assert [type(t) for t in ev.data] == [go.Bar, go.Scatter]
    assert np.allclose(ev.data[1].y, [0.5, 0.8, 0.9]) and "90.0% kept" in ev.layout.title.text
    df = frame()
    box = M.size_distributions(df, "cluster", ["vesicle_cloud_vox", "cleft_vox"])
    assert len(box.data) == 2 * 4 and all(isinstance(t, go.Box) for t in box.data)
    assert sum(t.showlegend for t in box.data) == 4
    vio = M.size_distributions(df, "cluster", ["vesicle_cloud_vox"], kind="violin", include_noise=False)
    assert len(vio.data) == 3 and all(isinstance(t, go.Violin) for t in vio.data)
    cont = M.contingency_figure(np.array([0, 0, 1, 1]), ["a", "a", "b", "b"])
    assert isinstance(cont.data[0], go.Heatmap) and "ARI 1.000" in cont.layout.title.text


def test_selection_figure_follows_the_criterion():
    import pandas as pd

    from synapse_nb.figures import maps

    km = pd.DataFrame({"k": [2, 3], "inertia": [5.0, 3.0], "silhouette": [0.4, 0.6], "bic": [float("nan")] * 2, "chosen": [False, True]})
    gm = km.assign(bic=[10.0, 8.0])
    assert "silhouette" in maps.selection_figure(km).layout.annotations[1].text
    assert "BIC" in maps.selection_figure(gm).layout.title.text
