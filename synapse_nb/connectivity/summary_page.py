"""Figures, group galleries and the summary page of presynapse connectivity (notebook 07).

Figures are plain plotly ``go.Figure`` objects (one call each, as the notebook shows them);
:func:`synapse_nb.connectivity.groups` re-exports them. The summary page opens offline on its own: plotly.js is embedded once in the head, every figure is a
``div`` drawn by it, gallery images are PNG data URIs and every string that comes from the
data (bbox and synapse names, reasons) is HTML-escaped. It is written atomically to
``<run>/html/presynapse_summary.html``, where the sweep index links it. When the run has viewer
links (a connectome run with a viewer), each group's section lists its synapses with a link
that opens each in the viewer (escaped, http(s) only); hover labels of the maps cannot open
links, so the links are in that table, not in the figures.
"""
from __future__ import annotations

import base64
import html
import io
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from ..core import atomic
from ..core import labels as L
from ..core.progress_bars import progress
from ..figures.gallery import (
    OPEN_COLUMN,
    VIEWER_LINK_COLUMN,
    cube_rows,
    has_viewer_links,
    linked_table,
    open_link,
    render_rows,
    with_viewer_links,
)
from ..figures.maps import note_figure
from .stats import GROUP_COLUMN

if TYPE_CHECKING:
    import matplotlib.figure
    import plotly.graph_objects as go
    from pandas.io.formats.style import Styler

    from ..core.config import Config
    from ..cubes.store import CubeSet
    from .groups import PresynapseAnalysis

logger = logging.getLogger(__name__)

MONTAGE_DPI = 80
HEIGHT = 520
SINGLE_COLOR = "#BBBBBB"
#: Other synapses drawn behind one group on its own map (a random sample above this).
GROUP_MAP_BACKGROUND = 2000
#: Groups above which writing the summary page shows a progress bar.
SUMMARY_PROGRESS_MIN_GROUPS = 5
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1250px;color:#222;padding:0 1em}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}section{margin:2em 0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}
.headline{font-size:15px;background:#f6f8fa;padding:.7em 1em;border-left:4px solid #1f77b4}
.stats{font-size:14px}img.montage{max-width:100%;border:1px solid #eee}nav a{margin-right:.6em}
"""


# --------------------------------------------------------------------------------------
# figures (plotly)
# --------------------------------------------------------------------------------------
def _palette(n: int) -> list[str]:
    import plotly.colors as pc

    colors = list(pc.qualitative.Dark24)
    return [colors[i % len(colors)] for i in range(n)]


def _no_groups_figure(analysis: "PresynapseAnalysis", title: str) -> "go.Figure":
    return note_figure(analysis.words()["no_groups"], title)


def distance_scale(analysis: "PresynapseAnalysis") -> float:
    """Upper end of the heatmap colour scale: the 95th percentile of all pair distances, so
    every group is drawn on the same scale."""
    both = np.concatenate([analysis.intra, analysis.inter])
    return float(np.percentile(both, 95)) if len(both) else 1.0


def _heatmap_trace(analysis: "PresynapseAnalysis", group: str, zmax: float, **kw) -> "go.Heatmap":
    import plotly.graph_objects as go

    D = analysis.distance_matrix(group)
    return go.Heatmap(z=D.to_numpy(), x=list(D.columns), y=list(D.index), zmin=0.0, zmax=zmax, colorscale="Viridis",
                      text=np.round(D.to_numpy(), 2), texttemplate="%{text}", hovertemplate="%{y} - %{x}: %{z:.3g}<extra></extra>", **kw)


def distance_heatmap(analysis: "PresynapseAnalysis", group: str) -> "go.Figure":
    """Pairwise feature distances among one group's synapses (shared colour scale)."""
    import plotly.graph_objects as go

    row = analysis.groups.set_index(GROUP_COLUMN).loc[group]
    k = int(row["n"])
    fig = go.Figure(_heatmap_trace(analysis, group, distance_scale(analysis), colorbar={"title": {"text": "distance"}}))
    fig.update_layout(title={"text": f"{group}: mean distance {row['mean_intra']:.3g}, ratio to other neurites {row['ratio']:.2f}"},
                      height=200 + 60 * k, width=min(1000, 380 + 110 * k), template="plotly_white", yaxis_autorange="reversed")
    return fig


def group_heatmaps(analysis: "PresynapseAnalysis", max_groups: int = 12, cols: int = 4) -> "go.Figure":
    """Distance heatmaps of the first ``max_groups`` groups side by side, one colour scale."""
    from plotly.subplots import make_subplots

    title = "Pairwise distances within each group"
    if not analysis.n_groups:
        return _no_groups_figure(analysis, title)
    names = analysis.groups[GROUP_COLUMN].head(max_groups).tolist()
    cols = min(cols, len(names))
    rows = (len(names) + cols - 1) // cols
    v_space = min(0.08 + 0.18 / rows, 0.9 / (rows - 1)) if rows > 1 else 0.1
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, horizontal_spacing=0.12, vertical_spacing=v_space)
    zmax = distance_scale(analysis)
    for i, g in enumerate(names):
        fig.add_trace(_heatmap_trace(analysis, g, zmax, coloraxis="coloraxis"), row=i // cols + 1, col=i % cols + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=45, tickfont={"size": 9})
    fig.update_yaxes(tickfont={"size": 9})
    more = f" (first {len(names)} of {analysis.n_groups}; all in the presynapse summary)" if analysis.n_groups > len(names) else ""
    fig.update_layout(title={"text": title + more}, height=320 * rows + 80, template="plotly_white",
                      coloraxis={"colorscale": "Viridis", "cmin": 0.0, "cmax": zmax, "colorbar": {"title": {"text": "distance"}}})
    return fig


def distance_distributions(analysis: "PresynapseAnalysis") -> "go.Figure":
    """Intra-group against inter-neurite pair distances (densities, means dashed)."""
    import plotly.graph_objects as go

    title = "Distances within groups and between neurites"
    if not len(analysis.intra):
        return _no_groups_figure(analysis, title)
    where = "same bbox" if analysis.scope == "bbox" else "any bbox"
    fig = go.Figure()
    for name, vals, color in ((f"same neurite ({len(analysis.intra)} pairs)", analysis.intra, "#d62728"),
                              (f"different neurites, {where} ({len(analysis.inter)} pairs{', sampled' if analysis.inter_sampled else ''})",
                               analysis.inter, "#1f77b4")):
        if len(vals):
            fig.add_trace(go.Histogram(x=vals, name=name, histnorm="probability density", opacity=0.6,
                                       marker={"color": color}, nbinsx=40))
            fig.add_vline(x=float(vals.mean()), line_dash="dash", line_color=color)
    fig.update_layout(barmode="overlay", title={"text": f"{title}: ratio of means {analysis.ratio:.2f}"},
                      xaxis_title="distance (PCA space)", yaxis_title="density", height=420, template="plotly_white",
                      legend={"orientation": "h", "y": -0.2})
    return fig


def null_figure(analysis: "PresynapseAnalysis") -> "go.Figure":
    """The permutation null of the mean intra-group distance, with the observed value."""
    import plotly.graph_objects as go

    t = analysis.test
    title = "Permutation test: mean distance within groups"
    if not t.n_groups:
        return _no_groups_figure(analysis, title)
    fig = go.Figure(go.Histogram(x=t.null, name="shuffled neurite labels", nbinsx=40, marker={"color": "#7f7f7f"}))
    fig.add_vline(x=t.statistic, line_color="#d62728", line_width=3, annotation_text="observed", annotation_position="top")
    fig.update_layout(title={"text": f"{title}: observed {t.statistic:.3g}, p = {t.p_value:.3g} ({t.n_permutations} permutations)"},
                      xaxis_title="mean intra-group distance", yaxis_title="permutations", height=380,
                      template="plotly_white", showlegend=False)
    return fig


def _ring(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Member order around their centroid, closed (a polygon for 3+, a segment for 2)."""
    order = np.argsort(np.arctan2(y - y.mean(), x - x.mean()), kind="stable")
    return np.concatenate([order, order[:1]]) if len(order) > 2 else order


def group_map(
    analysis: "PresynapseAnalysis",
    groups: Sequence[str] | None = None,
    max_background: int = 5000,
    max_legend: int = 30,
    seed: int = 0,
) -> "go.Figure":
    """2-D map (UMAP) of the analysed synapses, each group's members joined by lines."""
    import plotly.graph_objects as go

    x, y = analysis.map_columns
    syn = analysis.synapses
    names = list(groups) if groups is not None else analysis.groups[GROUP_COLUMN].tolist()
    in_groups = syn[GROUP_COLUMN].isin(set(names))
    bg = syn[~in_groups]
    note = ""
    if len(bg) > max_background:
        bg = bg.iloc[np.sort(np.random.default_rng(seed).choice(len(bg), max_background, replace=False))]
        note = f" (random {max_background:,} of the other synapses)"
    hover_cols = [c for c in (L.NAME_COLUMN, L.BBOX_COLUMN, analysis.label_column, "cluster", analysis.class_column)
                  if c and c in syn.columns]

    def custom(df: pd.DataFrame) -> np.ndarray:
        return df[hover_cols].astype(str).to_numpy()

    tmpl = "<br>".join(f"{c}: %{{customdata[{i}]}}" for i, c in enumerate(hover_cols)) + "<extra></extra>"
    fig = go.Figure(go.Scatter(x=bg[x], y=bg[y], mode="markers", name="other synapses", customdata=custom(bg),
                               hovertemplate=tmpl, marker={"color": SINGLE_COLOR, "size": 6, "opacity": 0.7}))
    rings = []
    for g in names:
        sub = analysis.members(g)
        rings.append((g, sub.iloc[_ring(sub[x].to_numpy(), sub[y].to_numpy())]))
    if len(names) <= max_legend:  # one coloured, clickable trace per group
        for (g, sub), color in zip(rings, _palette(len(names))):
            fig.add_trace(go.Scatter(x=sub[x].to_numpy(), y=sub[y].to_numpy(), mode="lines+markers", name=g,
                                     customdata=custom(sub), hovertemplate=tmpl, line={"color": color, "width": 2},
                                     marker={"color": color, "size": 9}))
    elif rings:  # many groups: one trace, rings separated by gaps, so the browser stays responsive
        def with_gaps(values: list[np.ndarray], fill: object) -> np.ndarray:
            return np.concatenate([np.concatenate([v, np.full((1, *v.shape[1:]), fill, dtype=v.dtype)]) for v in values])

        xs = with_gaps([sub[x].to_numpy(float) for _, sub in rings], np.nan)
        ys = with_gaps([sub[y].to_numpy(float) for _, sub in rings], np.nan)
        cd = with_gaps([custom(sub).astype(object) for _, sub in rings], "")
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"{len(names)} groups",
                                 customdata=cd, hovertemplate=tmpl, connectgaps=False,
                                 line={"color": "#d62728", "width": 1.5}, marker={"color": "#d62728", "size": 7}))
    title = analysis.words()["map_title"] if len(names) != 1 else f"{names[0]} on the map"
    fig.update_layout(title={"text": title + note}, xaxis_title=x, yaxis_title=y, height=HEIGHT, template="plotly_white",
                      legend={"title": {"text": "neurite"}})
    return fig


# --------------------------------------------------------------------------------------
# gallery
# --------------------------------------------------------------------------------------
def group_montage(
    cubes: "CubeSet",
    analysis: "PresynapseAnalysis",
    cfg: "Config",
    groups: Sequence[str] | None = None,
    max_groups: int = 12,
    max_members: int = 6,
) -> "matplotlib.figure.Figure":
    """Centre planes (z, y, x) of each group's synapses as the network saw them; one row per
    group (the first ``max_groups``), at most ``max_members`` synapses per row."""
    import matplotlib.pyplot as plt

    names = list(groups) if groups is not None else analysis.groups[GROUP_COLUMN].head(max_groups).tolist()
    if not names:
        fig, ax = plt.subplots(figsize=(6, 0.8))
        ax.axis("off")
        ax.text(0.5, 0.5, analysis.words()["no_groups"], ha="center", va="center")
        plt.close(fig)
        return fig
    members = {g: analysis.members(g).head(max_members) for g in names}
    n_cols = 3 * max(len(m) for m in members.values())
    fig, axes = plt.subplots(len(names), n_cols, figsize=(1.3 * n_cols, 1.55 * len(names) + 0.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (g, sub) in enumerate(members.items()):
        for j, cube in enumerate(render_rows(cubes, cfg, cube_rows(cubes, sub))):
            c = cube.shape[0] // 2
            for p, plane in enumerate((cube[c], cube[:, c], cube[:, :, c])):
                ax = axes[r][3 * j + p]
                ax.imshow(plane, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                if p == 0:
                    ax.set_title(str(sub[L.NAME_COLUMN].iloc[j]), fontsize=6, loc="left")
        axes[r][0].text(-0.15, 0.5, str(g), transform=axes[r][0].transAxes, rotation=90, va="center", ha="right", fontsize=7)
    fig.suptitle(f"{analysis.words()['group_of']}; planes z, y, x through the centre (segmentation type "
                 f"{cfg.segmentation_type}, alpha {cfg.alpha})", fontsize=8)
    height = fig.get_figheight()
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / height))  # leave the suptitle its own line
    plt.close(fig)
    return fig


def figure_data_uri(fig: "matplotlib.figure.Figure", dpi: int = MONTAGE_DPI) -> str:
    """A matplotlib figure as an inline PNG (``data:image/png;base64,...``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------------------
# HTML pieces
# --------------------------------------------------------------------------------------
def markdown_to_html(text: str) -> str:
    """Escape, then turn ``**bold**`` and ```code``` of our sentences into tags."""
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", out)


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.3g}"
    return str(v)


def table_html(df: pd.DataFrame, anchors: dict[str, str] | None = None, link_column: str | None = None) -> str:
    """A plain table; every cell escaped; cells of ``link_column`` link to ``#anchors[value]``.
    A ``viewer_link`` column with values becomes an ``open`` column of viewer links (http(s)
    only; an empty column is left out)."""
    if df.empty:
        return "<p>None.</p>"
    urls = df[VIEWER_LINK_COLUMN].tolist() if has_viewer_links(df) else None
    df = df.drop(columns=[VIEWER_LINK_COLUMN], errors="ignore")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    if urls is not None:
        head += f"<th>{OPEN_COLUMN}</th>"
    rows = []
    for i, rec in enumerate(df.itertuples(index=False)):
        cells = []
        for c, v in zip(df.columns, rec):
            text = html.escape(_fmt(v))
            if anchors and c == link_column and str(v) in anchors:
                text = f'<a href="#{anchors[str(v)]}">{text}</a>'
            cells.append(f"<td>{text}</td>")
        if urls is not None:
            cells.append(f"<td>{open_link(urls[i])}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


#: Columns of a group's synapse list (with the viewer link when the run has one).
MEMBER_COLUMNS = (GROUP_COLUMN, L.BBOX_COLUMN, L.NAME_COLUMN, "cluster")


def group_members(analysis: "PresynapseAnalysis", links_from: pd.DataFrame | None = None,
                  groups: Sequence[str] | None = None, max_groups: int | None = None) -> pd.DataFrame:
    """The synapses of each group (all groups, or ``groups``, or the first ``max_groups``), with
    their ``viewer_link`` matched from ``links_from`` (the cube or features table) when it has one."""
    names = list(groups) if groups is not None else analysis.groups[GROUP_COLUMN].astype(str).tolist()
    names = names[:max_groups] if max_groups is not None else names
    parts = [analysis.members(g).assign(**{GROUP_COLUMN: g}) for g in names]
    members = pd.concat(parts, ignore_index=True) if parts else analysis.synapses.iloc[:0].assign(**{GROUP_COLUMN: ""})
    members = with_viewer_links(members, links_from)
    cols = [c for c in (*MEMBER_COLUMNS, VIEWER_LINK_COLUMN) if c in members.columns]
    return members[cols]


def group_links_table(analysis: "PresynapseAnalysis", links_from: pd.DataFrame | None,
                      max_groups: int = 12) -> "Styler | None":
    """For 07_presynapse: the synapses of the first ``max_groups`` groups with a link that opens
    each in the viewer; None when the run has no viewer links (nothing to show)."""
    members = group_members(analysis, links_from, max_groups=max_groups)
    if not has_viewer_links(members):
        return None
    return linked_table(members)  # type: ignore[return-value]


def figure_html(fig: "go.Figure") -> str:
    """A plotly figure as a div drawn by the page's single copy of plotly.js."""
    import plotly.io as pio

    return pio.to_html(fig, full_html=False, include_plotlyjs=False, include_mathjax=False, default_width="100%",
                       config={"displaylogo": False, "responsive": True}, validate=False)


def _group_section(analysis: "PresynapseAnalysis", row: pd.Series, anchor: str, index: int,
                   cubes: "CubeSet | None", cfg: "Config | None", links_from: pd.DataFrame | None = None) -> str:
    g = str(row[GROUP_COLUMN])
    stats = [f"{int(row['n'])} synapses: {row['synapses']}",
             f"mean distance within the group {_fmt(row['mean_intra'])}, to other neurites of its "
             f"{'bbox' if analysis.scope == 'bbox' else 'data'} {_fmt(row['mean_inter'])}, ratio {_fmt(row['ratio'])}"]
    if "dominant_cluster" in row:
        stats.append(f"dominant cluster {row['dominant_cluster']} ({100 * float(row['cluster_share']):.0f}% of the group; clusters {row['clusters']})")
    if analysis.class_column and analysis.class_column in row:
        stats.append(f"{analysis.class_column}: {row[analysis.class_column]}")
    if int(row.get("n_ambiguous", 0)):
        stats.append(f"{int(row['n_ambiguous'])} with an ambiguous pre/post decision")
    parts = [f'<section id="{anchor}" class="group"><h2>{index} · {html.escape(g)}</h2>',
             "<ul class=\"stats\">" + "".join(f"<li>{html.escape(s)}</li>" for s in stats) + "</ul>",
             figure_html(distance_heatmap(analysis, g)),
             figure_html(group_map(analysis, [g], max_background=GROUP_MAP_BACKGROUND))]
    if cubes is not None and cfg is not None:
        uri = figure_data_uri(group_montage(cubes, analysis, cfg, [g]))
        parts.append(f'<img class="montage" src="{uri}" alt="centre planes of the synapses of {html.escape(g)}"/>')
    if has_viewer_links(links_from):
        members = group_members(analysis, links_from, groups=[g])
        if has_viewer_links(members):
            parts.append(table_html(members.drop(columns=[GROUP_COLUMN])))
    parts.append('<p><a href="#overview">back to the overview</a></p></section>')
    return "\n".join(parts)


def summary_html(analysis: "PresynapseAnalysis", cubes: "CubeSet | None" = None, cfg: "Config | None" = None,
                 title: str = "Presynapse connectivity", *, links_from: pd.DataFrame | None = None) -> str:
    """The whole page as a string: overview (headline, test, group table, distributions, map)
    and one section per group (heatmap, map, gallery, and its synapses with viewer links when
    ``links_from``, by default the cube table, has them)."""
    from plotly.offline import get_plotlyjs

    if links_from is None and cubes is not None:
        links_from = cubes.table

    names = analysis.groups[GROUP_COLUMN].astype(str).tolist()
    anchors = {g: f"group-{i + 1}" for i, g in enumerate(names)}
    overview = [
        f'<section id="overview"><h1>{html.escape(title)}</h1>',
        f'<p class="headline">{markdown_to_html(analysis.headline())}</p>',
        f"<p>{markdown_to_html(analysis.grouping_sentence())}</p>",
        f"<h2>{html.escape(analysis.words()['question'])}</h2>",
        f"<p>{markdown_to_html(analysis.test_sentence())}</p>",
        figure_html(distance_distributions(analysis)),
        figure_html(null_figure(analysis)),
        f"<h2>Groups ({len(names)})</h2>",
        table_html(analysis.groups, anchors, GROUP_COLUMN),
        figure_html(group_map(analysis)),
        "<h2>Excluded synapses</h2>",
        f"<p>{html.escape(analysis.words()['excluded'])}</p>",
        table_html(analysis.excluded),
        "<h2>Ambiguous pre/post decisions</h2>",
        table_html(analysis.ambiguous),
        "</section>",
    ]
    if names:
        overview.insert(1, "<nav>Groups: " + " ".join(f'<a href="#{anchors[g]}">{html.escape(g)}</a>' for g in names) + "</nav>")
    rows = [row for _, row in analysis.groups.iterrows()]
    # two figures and a rendered gallery per group: seconds for a few dozen groups
    bar = progress(rows, desc="presynapse summary", enabled=len(rows) > SUMMARY_PROGRESS_MIN_GROUPS)
    sections = [_group_section(analysis, row, anchors[str(row[GROUP_COLUMN])], i + 1, cubes, cfg, links_from)
                for i, row in enumerate(bar)]
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"/>
<title>{html.escape(title)}</title><style>{_STYLE}</style>
<script type="text/javascript">{get_plotlyjs()}</script></head><body>
{''.join(overview)}
{''.join(sections)}
</body></html>"""


def write_summary(path: str | Path, analysis: "PresynapseAnalysis", cubes: "CubeSet | None" = None,
                  cfg: "Config | None" = None, title: str = "Presynapse connectivity", *,
                  links_from: pd.DataFrame | None = None) -> Path:
    """Write :func:`summary_html` atomically to ``path``."""
    page = summary_html(analysis, cubes, cfg, title, links_from=links_from)
    out = atomic.write_text(path, page)
    logger.info("presynapse summary (%d groups) written to %s", analysis.n_groups, out)
    return out
