"""Figures of self-supervised pretraining: the loss per epoch and what the augmentations do.

The loss curve is a plotly chart (interactive, small in HTML); the augmentation montage is a
matplotlib figure of image slices, like the other cube montages.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import matplotlib.figure
    import plotly.graph_objects as go

#: NT-Xent of 2B views with random embeddings is about ln(2B - 1); shown as the chance level.
_CHANCE_NOTE = "chance level ln(2B-1) for batch size B"


def loss_curve(history: pd.DataFrame, *, batch_size: int | None = None, title: str = "Pretraining loss (SimCLR, NT-Xent)") -> "go.Figure":
    """Loss per epoch (left axis) and learning rate (right axis) of a pretraining history.

    ``batch_size`` draws the loss of embeddings that know nothing (ln(2B - 1)), so a reader
    sees how far training got below it.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    missing = [c for c in ("epoch", "loss") if c not in history.columns]
    if missing:
        raise ValueError(f"history lacks column(s) {missing}; pass PretrainResult.history or read_history(out_dir)")
    if history.empty:
        raise ValueError("history is empty: no epoch has finished yet")
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    hover = "epoch %{x}<br>loss %{y:.4f}"
    if "seconds" in history.columns:
        hover += "<br>%{customdata:.1f} s"
    fig.add_trace(go.Scatter(
        x=history["epoch"], y=history["loss"], mode="lines+markers", name="loss",
        customdata=history["seconds"] if "seconds" in history.columns else None, hovertemplate=hover + "<extra></extra>",
    ), secondary_y=False)
    if "lr" in history.columns:
        fig.add_trace(go.Scatter(x=history["epoch"], y=history["lr"], mode="lines", name="learning rate",
                                 line={"dash": "dot", "color": "grey"}), secondary_y=True)
        fig.update_yaxes(title_text="learning rate", secondary_y=True, showgrid=False)
    if batch_size:
        chance = math.log(2 * int(batch_size) - 1)
        fig.add_hline(y=chance, line_dash="dash", line_color="firebrick", annotation_text=f"{_CHANCE_NOTE}={batch_size}")
    best = history.loc[history["loss"].idxmin()]
    fig.add_trace(go.Scatter(x=[best["epoch"]], y=[best["loss"]], mode="markers", name="best",
                             marker={"size": 11, "symbol": "star"}), secondary_y=False)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="NT-Xent loss", secondary_y=False)
    fig.update_layout(title=title, height=360)
    return fig


def augmentation_figure(examples: Sequence[dict[str, Any]], *, title: str = "What pretraining teaches the network to ignore") -> "matplotlib.figure.Figure":
    """Central z slices: each row a synapse as trained on, then its augmented views.

    ``examples`` comes from :func:`synapse_nb.training.augmentation_examples`.
    """
    import matplotlib.pyplot as plt

    if not examples:
        raise ValueError("no examples to show: pass augmentation_examples(cubes, indices) with at least one index")
    n_views = max(len(e["views"]) for e in examples)
    fig, axes = plt.subplots(len(examples), n_views + 1, figsize=(1.9 * (n_views + 1), 2.0 * len(examples)), squeeze=False)
    for r, example in enumerate(examples):
        planes = [np.asarray(example["original"])] + [np.asarray(v) for v in example["views"]]
        for c, a in enumerate(axes[r]):
            a.set_xticks([])
            a.set_yticks([])
            if c >= len(planes):
                a.axis("off")
                continue
            a.imshow(planes[c], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if r == 0:
                a.set_title("original" if c == 0 else f"view {c}", fontsize=8)
        axes[r][0].set_ylabel(f"synapse {example.get('index', r)}", fontsize=8)
    fig.suptitle(title + "\n(centre z slice; views differ in pose, contrast, noise, blur and masked boxes)", fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig
