"""Figures the notebooks show: one call each, so notebooks hold no plotting code.

Interactive charts are plotly; image montages are matplotlib figures (they embed as
inline PNG in the HTML report, which keeps pages small).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from ..core import labels as L
from .gallery import render_rows

if TYPE_CHECKING:
    import matplotlib.figure
    import plotly.graph_objects as go

    from ..core.config import Config
    from ..cubes.store import CubeSet


def bbox_counts(table: pd.DataFrame, skipped: pd.DataFrame) -> pd.DataFrame:
    """Synapses built and skipped per bbox."""
    built = table.groupby(L.BBOX_COLUMN).size().rename("built")
    lost = (skipped.groupby(L.BBOX_COLUMN).size() if len(skipped) else pd.Series(dtype=int)).rename("skipped")
    out = pd.concat([built, lost], axis=1).fillna(0).astype(int)
    out.index.name = L.BBOX_COLUMN
    return out.reset_index()


#: What a person checks first about each built synapse: where it is and how pre/post was decided.
OVERVIEW_COLUMNS = (
    L.BBOX_COLUMN, L.NAME_COLUMN, "table_row", "pre_side", "pre_seg_id", "post_seg_id",
    "overlap_side1", "overlap_side2", "ambiguous", "ambiguity_reason",
)


def synapse_overview(table: pd.DataFrame, class_column: str | None = None, n: int = 12) -> pd.DataFrame:
    """The first ``n`` synapses with identity and pre/post decision columns only."""
    cols = [c for c in (*OVERVIEW_COLUMNS, class_column) if c and c in table.columns]
    return table[cols].head(n)


def _morph_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.endswith("_vox") or c.endswith("_nm3") or c.endswith("_nm2")]


def morphometrics(table: pd.DataFrame, group: str | None = None, unit: str = "_vox") -> "go.Figure":
    """Box plots of every morphometric, grouped by bbox (or by ``group``, e.g. a class column)."""
    import plotly.express as px

    cols = [c for c in _morph_columns(table) if c.endswith(unit)]
    if not cols:
        raise ValueError(f"the synapse table has no morphometric columns ending in {unit!r}")
    group = group if group in table.columns else L.BBOX_COLUMN
    long = table.melt(id_vars=[group, L.NAME_COLUMN], value_vars=cols, var_name="measure", value_name="value")
    fig = px.box(
        long, x=group, y="value", color=group, facet_col="measure", facet_col_wrap=3, points="all",
        hover_data=[L.NAME_COLUMN], height=260 * ((len(cols) + 2) // 3), title=f"Morphometrics per {group} (voxels)",
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
    """Three orthogonal centre planes of rendered cubes (rows = synapses), as the network sees them."""
    import matplotlib.pyplot as plt

    rows = list(rows)
    rendered = render_rows(cubes, cfg, rows)
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        cube = rendered[r]
        c = cube.shape[0] // 2
        meta = cubes.table.iloc[i]
        planes = {"z (y-x plane)": cube[c], "y (z-x plane)": cube[:, c], "x (z-y plane)": cube[:, :, c]}
        for a, (title, plane) in zip(axes[r], planes.items()):
            a.imshow(plane, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            a.set_xticks([])
            a.set_yticks([])
            a.set_title(f"centre {title}", fontsize=8)
        label = f"{meta[L.BBOX_COLUMN]} / {meta[L.NAME_COLUMN]}"
        if cfg.class_column in cubes.table.columns:
            label += f"\nclass {meta[cfg.class_column]}"
        axes[r][0].set_ylabel(label, fontsize=8)
    fig.suptitle(f"Segmentation type {cfg.segmentation_type}: {L.SEGMENTATION_TYPES[cfg.segmentation_type]}, alpha {cfg.alpha}", fontsize=9)
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
