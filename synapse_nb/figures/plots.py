"""Figures the notebooks show: one call each, so notebooks hold no plotting code.

Interactive charts are plotly; image montages are matplotlib figures (they embed as
inline PNG in the HTML report, which keeps pages small).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from ..core import labels as L
from ..cubes.prepost import partner_table, polarity_known, sides_decided
from .gallery import render_rows
from .markers import cube_markers, draw_marks, marker_note, plane_marks

if TYPE_CHECKING:
    import matplotlib.figure
    import plotly.graph_objects as go

    from ..core.config import Config
    from ..cubes.store import CubeSet


def bbox_counts(table: pd.DataFrame, skipped: pd.DataFrame) -> pd.DataFrame:
    """Synapses built and skipped per bbox, and how many of the built ones have a decided
    presynaptic side (``sides decided``; the others are shown as side 1 / side 2)."""
    built = table.groupby(L.BBOX_COLUMN).size().rename("built")
    lost = (skipped.groupby(L.BBOX_COLUMN).size() if len(skipped) else pd.Series(dtype=int)).rename("skipped")
    parts = [built, lost]
    if "pre_side" in table.columns:
        parts.append(sides_decided(table).groupby(table[L.BBOX_COLUMN]).sum().rename("sides decided"))
    out = pd.concat(parts, axis=1).fillna(0).astype(int)
    out.index.name = L.BBOX_COLUMN
    return out.reset_index()


#: What a person checks first about each built synapse: where it is, its two partners ("side 1"
#: and "side 2", see :func:`synapse_nb.cubes.prepost.partner_table`) and how pre/post was decided.
OVERVIEW_COLUMNS = (
    L.BBOX_COLUMN, L.NAME_COLUMN, "table_row", "side 1", "side 2",
    "overlap_side1", "overlap_side2", "ambiguous", "ambiguity_reason",
)


def synapse_overview(table: pd.DataFrame, class_column: str | None = None, n: int = 12) -> pd.DataFrame:
    """The first ``n`` synapses: identity, partners and the pre/post decision. A partner is
    called "pre" / "post" only where its synapse's side was decided, else just side 1 / side 2."""
    head = table.head(n)
    if "pre_side" in head.columns:
        head = pd.concat([head, partner_table(head)], axis=1)
    cols = [c for c in (*OVERVIEW_COLUMNS, class_column) if c and c in head.columns]
    return head[cols]


def morphometrics(table: pd.DataFrame, group: str | None = None, columns: Sequence[str] | None = None) -> "go.Figure":
    """Box plots of the measured descriptors (default: those clustered, in their units), grouped
    by bbox (or by ``group``, e.g. a class column). A structure the dataset does not annotate
    has no values and no box."""
    import plotly.express as px

    from ..cubes.descriptors import DESCRIPTORS, descriptor_columns

    cols = list(columns) if columns is not None else descriptor_columns(table, clustered_only=True)
    cols = [c for c in cols if c in table.columns and table[c].notna().any()]
    if not cols:
        raise ValueError("the synapse table has no measured descriptor columns: rebuild the cubes (01_load) with this version")
    group = group if group in table.columns else L.BBOX_COLUMN
    labels = {c: DESCRIPTORS[c].label if c in DESCRIPTORS else c for c in cols}
    long = table.melt(id_vars=[group, L.NAME_COLUMN], value_vars=cols, var_name="measure", value_name="value")
    long["measure"] = long["measure"].map(labels)
    fig = px.box(
        long, x=group, y="value", color=group, facet_col="measure", facet_col_wrap=3, points="all",
        hover_data=[L.NAME_COLUMN], height=220 * ((len(cols) + 2) // 3), facet_row_spacing=0.25 / max(1, (len(cols) + 2) // 3),
        title=f"Measured morphology per {group}",
    )
    fig.update_yaxes(matches=None, showticklabels=True)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    return fig


def preview_rows(table: pd.DataFrame, n: int, class_column: str | None = None) -> list[int]:
    """A few rows to look at: one per class first (when known), then evenly spaced."""
    n = max(0, min(n, len(table)))
    rows: list[int] = []
    if class_column and class_column in table.columns:
        for _, idx in table.reset_index(drop=True).groupby(class_column).groups.items():
            rows.append(int(idx[0]))
    for i in np.linspace(0, len(table) - 1, num=max(n, 1)).round().astype(int):
        if int(i) not in rows:
            rows.append(int(i))
    return rows[:n]


def cube_slices(cubes: "CubeSet", cfg: "Config", rows: Sequence[int]) -> "matplotlib.figure.Figure":
    """Three orthogonal centre planes of rendered cubes (rows = synapses), as the network sees them,
    with the cleft centre and the side points marked (:mod:`.markers`)."""
    import matplotlib.pyplot as plt

    rows = list(rows)
    rendered = render_rows(cubes, cfg, rows)
    known = polarity_known(cubes.table)
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        cube = rendered[r]
        c = cube.shape[0] // 2
        meta = cubes.table.iloc[i]
        planes = {"z (y-x plane)": cube[c], "y (z-x plane)": cube[:, c], "x (z-y plane)": cube[:, :, c]}
        markers = cube_markers(meta, cube.shape[0], known=known)
        for a, axis, (title, plane) in zip(axes[r], "zyx", planes.items()):
            a.imshow(plane, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            draw_marks(a, plane_marks(markers, axis, c, cube.shape[0]))
            a.set_xticks([])
            a.set_yticks([])
            a.set_title(f"centre {title}", fontsize=8)
        label = f"{meta[L.BBOX_COLUMN]} / {meta[L.NAME_COLUMN]}"
        if cfg.class_column in cubes.table.columns:
            label += f"\nclass {meta[cfg.class_column]}"
        axes[r][0].set_ylabel(label, fontsize=8)
    fig.suptitle(f"Segmentation type {cfg.segmentation_type}: {L.SEGMENTATION_TYPES[cfg.segmentation_type]}, alpha {cfg.alpha}\n"
                 + marker_note(known), fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def feature_overview(features: np.ndarray, title: str = "Feature statistics") -> "go.Figure":
    """Per-feature mean and spread, plus the distribution of all values: dead or exploding
    features show up at a glance."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    mean = features.mean(axis=0)
    std = features.std(axis=0)
    order = np.argsort(-std)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("per-feature std (sorted) and mean", "all feature values"))
    fig.add_trace(go.Scatter(y=std[order], mode="lines", name="std"), row=1, col=1)
    fig.add_trace(go.Scatter(y=mean[order], mode="lines", name="mean"), row=1, col=1)
    fig.add_trace(go.Histogram(x=features.ravel()[:200_000], nbinsx=80, name="values"), row=1, col=2)
    fig.update_xaxes(title_text="feature (sorted by std)", row=1, col=1)
    fig.update_layout(title=title, height=360)
    return fig


if TYPE_CHECKING:
    from ..analysis.compare import DescriptorAnalysis

#: Readable units of descriptor columns, by name ending (longest first wins).
UNIT_SUFFIXES = (
    ("_um3", "µm³"), ("_um2", "µm²"), ("_um", "µm"), ("_nm3", "nm³"), ("_nm2", "nm²"), ("_nm", "nm"),
    ("_vox", "voxels"), ("_deg", "°"), ("_fraction", ""), ("_ratio", ""),
)
#: The heatmap colour saturates at this robust z-score.
HEATMAP_ZMAX = 3.0


def _pretty_unit(unit: str) -> str:
    return unit.replace("um", "µm").replace("^3", "³").replace("^2", "²")


def descriptor_unit(column: str) -> str:
    """The readable unit of a descriptor column (``vesicle_volume_um3`` -> ``µm³``): from the
    descriptor registry, else from the name ending."""
    from ..cubes.descriptors import DESCRIPTORS

    if column in DESCRIPTORS:
        return _pretty_unit(DESCRIPTORS[column].unit)
    for suffix, unit in UNIT_SUFFIXES:
        if column.endswith(suffix):
            return unit
    return ""


def descriptor_label(column: str) -> str:
    """Axis label of a descriptor: ``vesicle volume (µm³)`` for registry names, else the name and unit."""
    from ..cubes.descriptors import DESCRIPTORS

    unit = descriptor_unit(column)
    if column in DESCRIPTORS:
        d = DESCRIPTORS[column]
        base = d.label[: -len(f" ({d.unit})")] if d.unit else d.label
        return f"{base} ({unit})" if unit else base
    return f"{column} ({unit})" if unit else column


def descriptor_heatmap(analysis: DescriptorAnalysis, *, title: str = "What separates the clusters") -> go.Figure:
    """Clusters x descriptors; colour = cluster median as a robust z-score over all synapses
    (so descriptors in different units share one scale), descriptors ordered by effect size
    (largest pairwise |Cliff's delta| first); hover shows the median in its unit and the test."""
    import plotly.graph_objects as go

    z = analysis.robust_z()
    if z.empty:
        raise ValueError("no clusters or descriptors to show; run compare.descriptor_analysis on clustered synapses")
    stats = analysis.table.set_index("descriptor")
    medians = analysis.medians[z.columns]
    text = []
    for cluster in z.index:
        row = []
        for col in z.columns:
            unit = descriptor_unit(col)
            s = stats.loc[col]
            row.append(
                f"cluster {cluster}<br>{col}<br>median {medians.loc[cluster, col]:.4g} {unit}".rstrip()
                + f"<br>robust z {z.loc[cluster, col]:+.2f}<br>largest |Cliff's delta| {s['max_abs_delta']:.2f}"
                f" ({s['pair']})<br>Kruskal-Wallis p (Holm) {s['p_holm']:.2g}"
            )
        text.append(row)
    labels = [descriptor_label(c) for c in z.columns]
    fig = go.Figure(go.Heatmap(
        z=z.to_numpy(dtype=float), x=labels, y=[f"cluster {c}" for c in z.index], text=text,
        hovertemplate="%{text}<extra></extra>", colorscale="RdBu_r", zmid=0.0, zmin=-HEATMAP_ZMAX, zmax=HEATMAP_ZMAX,
        colorbar={"title": "robust z"},
    ))
    fig.update_layout(
        title=title, xaxis_title="descriptor (largest effect first)", yaxis_autorange="reversed",
        height=max(280, 60 + 40 * len(z.index)), width=max(520, 160 + 48 * len(z.columns)),
    )
    return fig
