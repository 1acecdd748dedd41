"""Plotly figures for notebooks 04/05: embedding maps and the analysis figures.

One call per figure. Figures are plain ``go.Figure`` objects (no widgets), so they render
interactively in JupyterLab and statically in the exported HTML.

* Categorical colours (bbox, cluster, class, integer columns with few values) get one trace
  per category (click the legend to hide one); continuous colours one trace with a colour bar.
* Above :data:`SCATTERGL_MIN_N` points 2-D maps use ``go.Scattergl`` (WebGL) to stay responsive.
  3-D has no WebGL switch: above :data:`MAX_3D_POINTS` a seeded random sample is drawn and the
  title says so.
* Marker size coding (``size_col``): marker area grows with the value, clipped at the 2nd
  and 98th percentiles so a few outliers do not flatten the rest.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from ..analysis import clustering as C
from ..analysis import compare
from ..analysis import reduce as R

if TYPE_CHECKING:
    import plotly.graph_objects as go

logger = logging.getLogger(__name__)

SCATTERGL_MIN_N = 10_000
MAX_3D_POINTS = 50_000
MAX_CATEGORIES = 30
NOISE_COLOR = "#BBBBBB"
MISSING_NAME = "n/a"
SIZE_RANGE = (4.0, 18.0)
CHOSEN_COLOR = "#d62728"
HEIGHT = 560


# --------------------------------------------------------------------------------------
# the frame maps draw from
# --------------------------------------------------------------------------------------
def analysis_frame(
    features_df: pd.DataFrame,
    embeddings_df: pd.DataFrame | None = None,
    labels: np.ndarray | pd.Series | None = None,
    prefix: str = R.DEFAULT_PREFIX,
) -> pd.DataFrame:
    """Synapse metadata (no feature columns) + embedding columns + categorical ``cluster``,
    aligned by position."""
    out = R.metadata(features_df, prefix).reset_index(drop=True).copy()
    if embeddings_df is not None:
        if len(embeddings_df) != len(out):
            raise ValueError(f"embeddings have {len(embeddings_df)} rows but the features table {len(out)}")
        emb = embeddings_df.reset_index(drop=True)
        out = pd.concat([out, emb[[c for c in emb.columns if c not in out.columns]]], axis=1)
    if labels is not None:
        if isinstance(labels, C.ClusterResult):
            labels = labels.labels
        lab = labels.to_numpy() if isinstance(labels, pd.Series) else np.asarray(labels)
        if len(lab) != len(out):
            raise ValueError(f"{len(lab)} cluster labels for {len(out)} synapses")
        out[C.CLUSTER_COLUMN] = C.cluster_names(lab) if np.issubdtype(lab.dtype, np.integer) else pd.Categorical(lab)
    return out


def default_hover(df: pd.DataFrame, extra: Sequence[str] = ()) -> list[str]:
    """Synapse name, bbox, cluster, class and the vesicle/cleft/mito measures present."""
    base = [c for c in (R.NAME_COLUMN, R.BBOX_COLUMN, C.CLUSTER_COLUMN, "synapse_class") if c in df.columns]
    morph = compare.guess_size_columns(df, keywords=("vesicle", "cleft", "mito"))[:8]
    out: list[str] = []
    for c in [*base, *extra, *morph]:
        if c is not None and c in df.columns and c not in out:
            out.append(c)
    return out


def is_categorical(s: pd.Series) -> bool:
    """Strings, categories, booleans and integers with few distinct values are categories."""
    if isinstance(s.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
        return True
    if pd.api.types.is_integer_dtype(s):
        return s.nunique() <= MAX_CATEGORIES
    return False


def _palette(n: int) -> list[str]:
    import plotly.colors as pc

    colors = list(pc.qualitative.Plotly) + list(pc.qualitative.D3) + list(pc.qualitative.Alphabet)
    return [colors[i % len(colors)] for i in range(n)]


def _category_order(s: pd.Series) -> list:
    if isinstance(s.dtype, pd.CategoricalDtype):
        return [c for c in s.cat.categories if (s == c).any()]
    vals = pd.unique(s.dropna())
    try:
        return sorted(vals)
    except TypeError:
        return sorted(vals, key=str)


def _marker_sizes(values: pd.Series) -> np.ndarray:
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    lo, hi = SIZE_RANGE
    ok = np.isfinite(v)
    if not ok.any():
        return np.full(len(v), lo)
    a, b = np.nanpercentile(v[ok], [2, 98])
    norm = np.zeros(len(v)) if b <= a else np.clip((v - a) / (b - a), 0, 1)
    return np.where(ok, lo + (hi - lo) * np.sqrt(np.nan_to_num(norm)), lo)


def _hover(df: pd.DataFrame, cols: list[str]) -> tuple[np.ndarray | None, str]:
    if not cols:
        return None, ""
    parts = []
    for i, c in enumerate(cols):
        fmt = ":.4g" if pd.api.types.is_float_dtype(df[c]) else ""
        parts.append(f"{c}: %{{customdata[{i}]{fmt}}}")
    custom = np.empty((len(df), len(cols)), dtype=object)
    for i, c in enumerate(cols):
        custom[:, i] = df[c].astype(object).to_numpy()
    return custom, "<br>".join(parts) + "<extra></extra>"


def _check_cols(df: pd.DataFrame, cols: Sequence[str | None]) -> None:
    missing = [c for c in cols if c is not None and c not in df.columns]
    if missing:
        raise ValueError(f"column(s) {missing} not in the table; available: {list(df.columns)[:25]}")


def _points(df, x, y, z, color, hover_cols, size_col, title, gl, sample_note):
    import plotly.graph_objects as go

    three_d = z is not None
    hover_cols = list(hover_cols) if hover_cols is not None else default_hover(df, [color, size_col])
    _check_cols(df, [x, y, z, color, size_col, *hover_cols])
    if three_d:
        trace_cls = go.Scatter3d
    else:
        trace_cls = go.Scattergl if (gl if gl is not None else len(df) > SCATTERGL_MIN_N) else go.Scatter
    sizes = _marker_sizes(df[size_col]) if size_col else np.full(len(df), 5.0 if three_d else 6.0)
    if len(df) > SCATTERGL_MIN_N and not size_col:
        sizes = sizes * 0.6

    def coords(sub):
        d = {"x": sub[x].to_numpy(), "y": sub[y].to_numpy()}
        if three_d:
            d["z"] = sub[z].to_numpy()
        return d

    traces = []
    if color is not None and is_categorical(df[color]):
        cats = _category_order(df[color])
        colors = _palette(len(cats))
        masks = [(df[color] == cat).to_numpy() for cat in cats]
        missing = df[color].isna().to_numpy()
        if missing.any():
            cats, colors, masks = [*cats, MISSING_NAME], [*colors, NOISE_COLOR], [*masks, missing]
        for cat, col, mask in zip(cats, colors, masks):
            sub = df[mask]
            custom, tmpl = _hover(sub, hover_cols)
            traces.append(trace_cls(
                **coords(sub), mode="markers", name=str(cat),
                marker={"size": sizes[mask], "color": NOISE_COLOR if str(cat) == C.NOISE_NAME else col,
                        "opacity": 0.8, "line": {"width": 0}},
                customdata=custom, hovertemplate=tmpl,
            ))
    else:
        custom, tmpl = _hover(df, hover_cols)
        marker = {"size": sizes, "opacity": 0.8, "line": {"width": 0}}
        if color is not None:
            marker.update(color=pd.to_numeric(df[color], errors="coerce").to_numpy(), colorscale="Viridis",
                          showscale=True, colorbar={"title": {"text": color}})
        traces.append(trace_cls(**coords(df), mode="markers", name=color or "synapses", marker=marker,
                                customdata=custom, hovertemplate=tmpl, showlegend=False))
    fig = go.Figure(traces)
    t = title or f"{x.rsplit('_', 1)[0]} map" + (f", colour: {color}" if color else "") + (f", size: {size_col}" if size_col else "")
    if sample_note:
        t += f" ({sample_note})"
    layout = {"title": {"text": t}, "height": HEIGHT, "template": "plotly_white", "legend": {"title": {"text": color or ""}, "itemsizing": "constant"}}
    if three_d:
        layout["scene"] = {"xaxis_title": x, "yaxis_title": y, "zaxis_title": z}
    else:
        layout.update(xaxis_title=x, yaxis_title=y)
    fig.update_layout(**layout)
    return fig


def embedding_map(
    df: pd.DataFrame,
    x: str = "umap_1",
    y: str = "umap_2",
    color: str | None = C.CLUSTER_COLUMN,
    hover_cols: Sequence[str] | None = None,
    size_col: str | None = None,
    *,
    title: str | None = None,
    gl: bool | None = None,
) -> "go.Figure":
    """2-D map of ``df`` (see :func:`analysis_frame`) coloured by any column.

    ``hover_cols`` default: name, bbox, cluster, class and vesicle/cleft/mito measures.
    ``gl=None`` picks WebGL above SCATTERGL_MIN_N points.
    """
    if color is not None and color not in df.columns and color == C.CLUSTER_COLUMN:
        color = None
    return _points(df, x, y, None, color, hover_cols, size_col, title, gl, None)


def embedding_map_3d(
    df: pd.DataFrame,
    x: str = "umap3d_1",
    y: str = "umap3d_2",
    z: str = "umap3d_3",
    color: str | None = C.CLUSTER_COLUMN,
    hover_cols: Sequence[str] | None = None,
    size_col: str | None = None,
    *,
    title: str | None = None,
    max_points: int = MAX_3D_POINTS,
    seed: int = 0,
) -> "go.Figure":
    """3-D map; above ``max_points`` a seeded random sample is shown (noted in the title)."""
    if color is not None and color not in df.columns and color == C.CLUSTER_COLUMN:
        color = None
    note = None
    if len(df) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(len(df), size=max_points, replace=False))
        note = f"random sample of {max_points:,} of {len(df):,} synapses"
        logger.info("embedding_map_3d: %s", note)
        df = df.iloc[idx]
    return _points(df, x, y, z, color, hover_cols, size_col, title, None, note)


def size_map(
    df: pd.DataFrame,
    size_col: str,
    x: str = "umap_1",
    y: str = "umap_2",
    color: str | None = C.CLUSTER_COLUMN,
    hover_cols: Sequence[str] | None = None,
) -> "go.Figure":
    """Map with marker size coding ``size_col`` (e.g. vesicle-cloud volume), colour by cluster."""
    return embedding_map(df, x, y, color=color, hover_cols=hover_cols, size_col=size_col,
                         title=f"Marker size: {size_col}" + (f", colour: {color}" if color in df.columns else ""))


# --------------------------------------------------------------------------------------
# analysis figures
# --------------------------------------------------------------------------------------
def explained_variance_figure(ratio: Sequence[float], title: str = "PCA explained variance") -> "go.Figure":
    """Variance explained per component (bars) and cumulative (line)."""
    import plotly.graph_objects as go

    r = np.asarray(ratio, dtype=float)
    pcs = np.arange(1, len(r) + 1)
    fig = go.Figure([
        go.Bar(x=pcs, y=r, name="per component"),
        go.Scatter(x=pcs, y=np.cumsum(r), mode="lines+markers", name="cumulative"),
    ])
    total = f", {100 * r.sum():.1f}% kept" if len(r) else ", no PCA"
    fig.update_layout(title={"text": title + total}, xaxis_title="component", yaxis_title="fraction of variance",
                      yaxis_range=[0, 1.02], height=380, template="plotly_white")
    return fig


def _mark_chosen(fig, table, ycol, row, col):
    import plotly.graph_objects as go

    ch = table[table["chosen"]]
    if len(ch):
        fig.add_trace(go.Scatter(x=ch["k"], y=ch[ycol], mode="markers", name=f"chosen k={int(ch['k'].iloc[0])}",
                                 marker={"symbol": "star", "size": 16, "color": CHOSEN_COLOR}, showlegend=row == 1 and col == 1),
                      row=row, col=col)
        fig.add_vline(x=float(ch["k"].iloc[0]), line_dash="dot", line_color=CHOSEN_COLOR, row=row, col=col)


def note_figure(text: str, title: str = "", height: int = 200) -> "go.Figure":
    """An empty figure carrying a sentence, so a notebook cell needs no branch."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 14})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title={"text": title}, height=height, template="plotly_white")
    return fig


def _selection_panels(table: pd.DataFrame) -> list[tuple[str, str | None, str]]:
    """(column, error column, subplot title) for every criterion ``table`` holds; the title
    names the k each criterion alone would choose (``attrs['picks']``)."""
    picks = table.attrs.get("picks", {})

    def title(text: str, crit: str) -> str:
        return f"{text}: k={picks[crit]}" if crit in picks else text

    panels: list[tuple[str, str | None, str]] = [
        ("inertia", None, "elbow: within-cluster sum of squares"),
        ("silhouette", None, title("silhouette (highest)", "silhouette")),
    ]
    if "gap" in table:
        panels.append(("gap", "gap_sd", title("gap (first k with Gap(k) >= Gap(k+1) - s)", "gap")))
    if "prediction_strength" in table:
        panels.append(("prediction_strength", "prediction_strength_sd", title("prediction strength (largest k over the line)", "stability")))
    return panels


def k_selection_figure(table: pd.DataFrame | None) -> "go.Figure":
    """Every criterion :func:`~synapse_nb.analysis.clustering.select_k` computed against k
    (elbow, silhouette, gap with s(k), prediction strength with its threshold), the chosen k
    starred in each and the rule that chose it in the title (a note when k was not selected,
    e.g. given or found by hdbscan)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if table is None or len(table) == 0:
        return note_figure("k was not selected here (given as a parameter, or found by hdbscan).", "Choosing k")
    panels = _selection_panels(table)
    ncol = 2 if len(panels) == 4 else len(panels)
    nrow = (len(panels) + ncol - 1) // ncol
    where = [(i // ncol + 1, i % ncol + 1) for i in range(len(panels))]
    fig = make_subplots(rows=nrow, cols=ncol, subplot_titles=[p[2] for p in panels])
    for (column, err, _), (r, c) in zip(panels, where):
        error = {"type": "data", "array": table[err].to_numpy()} if err else None
        fig.add_trace(go.Scatter(x=table["k"], y=table[column], mode="lines+markers", name=column, error_y=error), row=r, col=c)
    for (column, _, _), (r, c) in zip(panels, where):
        _mark_chosen(fig, table, column, r, c)
    if "prediction_strength" in table:
        r, c = where[[p[0] for p in panels].index("prediction_strength")]
        fig.add_hline(y=float(table.attrs.get("threshold", 0.8)), line_dash="dash", line_color="gray", row=r, col=c)
    method = table.attrs.get("method", "")
    crit = table.attrs.get("criterion", "silhouette")
    rule = table.attrs.get("rule", "highest silhouette" if crit == "silhouette" else "")
    chosen = table.loc[table["chosen"], "k"]
    head = f"Choosing k ({method}): k={int(chosen.iloc[0])} by {crit}" if len(chosen) else f"Choosing k ({method}, by {crit})"
    fig.update_xaxes(title_text="k", dtick=1)
    fig.update_layout(title={"text": f"{head}, {rule}" if rule else head}, height=360 * nrow + 20, template="plotly_white")
    return fig


def bic_figure(table: pd.DataFrame | None) -> "go.Figure":
    """Gaussian-mixture BIC against k (lower is better), chosen k starred; a note for other
    methods (BIC comes from ``select_k(..., method='gmm')``)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if table is None or "bic" not in table or table["bic"].isna().all():
        return note_figure("No BIC: it is computed when k is selected with method='gmm'.", "Gaussian mixture: BIC")
    fig = make_subplots(rows=1, cols=1)
    fig.add_trace(go.Scatter(x=table["k"], y=table["bic"], mode="lines+markers", name="BIC"), row=1, col=1)
    _mark_chosen(fig, table, "bic", 1, 1)
    fig.update_xaxes(title_text="k", dtick=1)
    fig.update_yaxes(title_text="BIC (lower is better)")
    fig.update_layout(title={"text": "Gaussian mixture: BIC"}, height=360, template="plotly_white")
    return fig


def stability_figure(table: pd.DataFrame) -> "go.Figure":
    """Mean subsample ARI per k with one standard deviation, chosen k starred."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=1)
    fig.add_trace(go.Scatter(x=table["k"], y=table["ari_mean"], mode="lines+markers", name="mean ARI",
                             error_y={"type": "data", "array": table["ari_std"].to_numpy()}), row=1, col=1)
    _mark_chosen(fig, table, "ari_mean", 1, 1)
    frac = table.attrs.get("frac")
    sub = f" ({int(table['n_boot'].max())} subsamples of {frac:.0%})" if frac else ""
    fig.update_xaxes(title_text="k", dtick=1)
    fig.update_yaxes(title_text="ARI vs full-data clustering", range=[min(0.0, float(np.nanmin(table["ari_mean"] - table["ari_std"]))), 1.05])
    fig.update_layout(title={"text": f"Cluster stability{sub}"}, height=360, template="plotly_white")
    return fig


def size_distributions(
    df: pd.DataFrame,
    labels: np.ndarray | pd.Series | str,
    columns: Sequence[str],
    kind: str = "box",
    include_noise: bool = True,
) -> "go.Figure":
    """Per-cluster box or violin plots, one panel per size measure."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if kind not in ("box", "violin"):
        raise ValueError(f"kind must be 'box' or 'violin', got {kind!r}")
    long = compare.size_long(df, labels, columns, include_noise)
    cats = list(long[C.CLUSTER_COLUMN].cat.categories)
    colors = dict(zip(cats, _palette(len(cats))))
    colors[C.NOISE_NAME] = NOISE_COLOR
    columns = list(columns)
    ncol = min(3, len(columns))
    nrow = (len(columns) + ncol - 1) // ncol
    fig = make_subplots(rows=nrow, cols=ncol, subplot_titles=columns)
    for i, measure in enumerate(columns):
        sub = long[long["measure"] == measure]
        for cat in cats:
            v = sub.loc[sub[C.CLUSTER_COLUMN] == cat, "value"].to_numpy()
            common = {"y": v, "name": str(cat), "legendgroup": str(cat), "showlegend": i == 0,
                      "marker": {"color": colors[cat]}, "x": np.full(len(v), str(cat))}
            trace = go.Box(**common, boxpoints="outliers") if kind == "box" else go.Violin(**common, box_visible=True, points="outliers")
            fig.add_trace(trace, row=i // ncol + 1, col=i % ncol + 1)
    fig.update_xaxes(title_text="cluster")
    fig.update_layout(title={"text": "Size per cluster"}, height=320 * nrow + 60, template="plotly_white",
                      legend={"title": {"text": "cluster"}})
    return fig


def contingency_figure(labels: np.ndarray, truth: Sequence | pd.Series, title: str | None = None) -> "go.Figure":
    """Heatmap of clusters against ground-truth classes, with ARI/NMI in the title."""
    import plotly.graph_objects as go

    table = C.contingency(labels, truth)
    scores = C.agreement(labels, truth)
    fig = go.Figure(go.Heatmap(z=table.to_numpy(), x=[str(c) for c in table.columns], y=[str(i) for i in table.index],
                               colorscale="Blues", text=table.to_numpy(), texttemplate="%{text}", showscale=False))
    fig.update_layout(title={"text": title or f"Clusters vs classes: ARI {scores['ari']:.3f}, NMI {scores['nmi']:.3f}"},
                      xaxis_title="ground-truth class", yaxis_title="cluster", yaxis_autorange="reversed",
                      height=120 + 40 * len(table), template="plotly_white")
    return fig


def selection_figure(table: pd.DataFrame | None) -> "go.Figure":
    """How k was chosen: the BIC curve for a Gaussian mixture, elbow and silhouette otherwise."""
    if table is not None and "bic" in table and table["bic"].notna().any():
        return bic_figure(table)
    return k_selection_figure(table)
