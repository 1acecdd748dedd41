"""Figures of Grad-CAM results (:mod:`synapse_nb.explain.attention`), one call each.

Slice montages are matplotlib figures (inline PNG in the report, small pages); GIFs are data
URIs (offline); the 3-D view and the overlap chart are plotly. Every overlay is the input
slice in gray with the map on top in ``inferno`` (perceptually uniform), the map's value
also setting its opacity, so unattended voxels show the plain input. Every title names the
weights (random weights are said loudly).
"""
from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from .attention import weights_tag

if TYPE_CHECKING:
    import matplotlib.figure
    import plotly.graph_objects as go
    from IPython.display import HTML

    from .attention import AttentionResult

CMAP = "inferno"
MAX_ALPHA = 0.65
MAX_3D_SIZE = 24
"""Edge of the grid the 3-D view is drawn on (keeps the report small)."""


def overlay_rgb(gray: np.ndarray, att: np.ndarray, max_alpha: float = MAX_ALPHA, cmap: str = CMAP) -> np.ndarray:
    """uint8 RGB of a gray slice in [0, 1] with a map in [0, 1] blended on top (opacity = value)."""
    import matplotlib

    gray = np.clip(np.asarray(gray, dtype=np.float32), 0, 1)
    att = np.clip(np.asarray(att, dtype=np.float32), 0, 1)
    color = matplotlib.colormaps[cmap](att)[..., :3].astype(np.float32)
    a = (max_alpha * att)[..., None]
    rgb = (1 - a) * gray[..., None] + a * color
    return (rgb * 255 + 0.5).astype(np.uint8)


def default_depths(size: int, n: int = 5) -> list[int]:
    """``n`` z slices evenly spaced through the inner part of the cube (centre included when odd)."""
    return sorted({int(round(v)) for v in np.linspace(size * 0.2, size * 0.8 - 1, n)})


def _check_depths(depths: Sequence[int], size: int) -> list[int]:
    depths = [int(d) for d in depths] or default_depths(size)
    bad = [d for d in depths if not 0 <= d < size]
    if bad:
        raise ValueError(f"depths {bad} are outside the cube (0..{size - 1}); change the 'depths' parameter")
    return depths


def _title(result: "AttentionResult", what: str) -> str:
    return f"{what} — target '{result.target}', {weights_tag(result.weights)}"


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def overlay_figure(result: "AttentionResult", sample: int | None = None, depths: Sequence[int] = ()) -> "matplotlib.figure.Figure":
    """One synapse (default: :meth:`AttentionResult.clearest`): rows = input then each layer,
    columns = z slices (``depths``; empty = 5 evenly spaced)."""
    import matplotlib.pyplot as plt

    sample = result.clearest() if sample is None else int(sample)
    if not 0 <= sample < len(result.samples):
        raise IndexError(f"sample {sample} out of range: {len(result.samples)} synapses were explained")
    cube = result.inputs[sample]
    depths = _check_depths(depths, cube.shape[0])
    nrow = 1 + len(result.layers)
    fig, axes = plt.subplots(nrow, len(depths), figsize=(1.7 * len(depths) + 0.6, 1.75 * nrow), squeeze=False)
    for c, z in enumerate(depths):
        axes[0][c].imshow(cube[z], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[0][c].set_title(f"z = {z}", fontsize=8)
        for r, layer in enumerate(result.layers, start=1):
            axes[r][c].imshow(overlay_rgb(cube[z], result.maps[sample, r - 1, z]), interpolation="nearest")
    for r in range(nrow):
        for c in range(len(depths)):
            _off(axes[r][c])
        axes[r][0].set_ylabel("input" if r == 0 else f"features.{result.layers[r - 1]}", fontsize=8)
    fig.suptitle(_title(result, f"Grad-CAM of {result.label(sample)}"), fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def layer_comparison(result: "AttentionResult", depth: int | None = None, max_rows: int = 24) -> "matplotlib.figure.Figure":
    """Early / middle / late layers side by side: rows = synapses (grouped as explained), z slice ``depth`` (default centre)."""
    import matplotlib.pyplot as plt

    n = min(len(result.samples), max_rows)
    S = result.inputs.shape[1]
    z = S // 2 if depth is None or depth < 0 else _check_depths([depth], S)[0]
    ncol = 1 + len(result.layers)
    fig, axes = plt.subplots(n, ncol, figsize=(1.6 * ncol + 1.4, 1.6 * n + 0.4), squeeze=False)
    for i in range(n):
        cube = result.inputs[i]
        axes[i][0].imshow(cube[z], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        for j in range(len(result.layers)):
            axes[i][j + 1].imshow(overlay_rgb(cube[z], result.maps[i, j, z]), interpolation="nearest")
        for ax in axes[i]:
            _off(ax)
        axes[i][0].set_ylabel(result.label(i).replace(" · ", "\n"), fontsize=6)
    for j, name in enumerate(["input"] + [f"features.{layer}" for layer in result.layers]):
        axes[0][j].set_title(name, fontsize=8)
    more = f" (first {n} of {len(result.samples)})" if n < len(result.samples) else ""
    fig.suptitle(_title(result, f"Layers compared at z = {z}{more}"), fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def depth_frames(result: "AttentionResult", sample: int, step: int | None = None, scale: int | None = None) -> np.ndarray:
    """RGB frames (T, H, W*(1+layers), 3) through depth: the input, then each layer's overlay."""
    cube = result.inputs[sample]
    S = cube.shape[0]
    step = step or max(1, S // 40)
    scale = scale or max(1, 64 // S)
    frames = []
    for z in range(0, S, step):
        gray = (np.clip(cube[z], 0, 1) * 255 + 0.5).astype(np.uint8)
        panels = [np.repeat(gray[..., None], 3, axis=2)]
        panels += [overlay_rgb(cube[z], result.maps[sample, j, z]) for j in range(len(result.layers))]
        sep = np.full((S, 2, 3), 255, dtype=np.uint8)
        row = np.concatenate([p for panel in panels for p in (panel, sep)][:-1], axis=1)
        frames.append(row.repeat(scale, axis=0).repeat(scale, axis=1))
    return np.stack(frames)


def depth_gif(result: "AttentionResult", sample: int, duration_ms: int = 90) -> bytes:
    """An animated GIF through depth for one synapse (input and every layer side by side)."""
    import imageio.v3 as iio

    buf = io.BytesIO()
    iio.imwrite(buf, depth_frames(result, sample), extension=".gif", duration=duration_ms, loop=0)
    return buf.getvalue()


def depth_gifs(result: "AttentionResult", samples: Sequence[int] | int = 4) -> "HTML":
    """GIFs through depth embedded inline (offline), captioned with synapse, layers and weights.
    ``samples``: indices, or a count (the first synapse of each group first)."""
    from IPython.display import HTML

    if isinstance(samples, (int, np.integer)):
        first = result.samples.reset_index(drop=True).groupby("group", sort=False).head(1).index.tolist()
        rest = [i for i in range(len(result.samples)) if i not in first]
        samples = (first + rest)[: int(samples)]
    panels = " | ".join(["input"] + [f"features.{layer}" for layer in result.layers])
    cells = []
    for i in samples:
        data = base64.b64encode(depth_gif(result, int(i))).decode("ascii")
        label = html.escape(result.label(int(i)))
        cells.append(
            f'<figure style="display:inline-block;margin:4px"><img src="data:image/gif;base64,{data}" '
            f'alt="Grad-CAM of {label} through depth"/><figcaption style="font-size:11px">{label}</figcaption></figure>'
        )
    head = html.escape(f"Through depth (z): {panels} — target '{result.target}', {weights_tag(result.weights)}")
    return HTML(f"<div><p style='font-size:12px'>{head}</p>{''.join(cells)}</div>")


def mean_map_figure(result: "AttentionResult") -> "matplotlib.figure.Figure":
    """Where attention concentrates across the explained synapses: per layer, the mean map on
    the mean input through the cube centre (z, y, x planes) and its maximum projections."""
    import matplotlib.pyplot as plt

    mean = result.mean_maps()
    gray = result.inputs.mean(axis=0)
    S = gray.shape[0]
    c = S // 2
    titles = ["centre z (y-x)", "centre y (z-x)", "centre x (z-y)", "max over z", "max over y", "max over x"]
    fig, axes = plt.subplots(len(result.layers), 6, figsize=(10.5, 1.85 * len(result.layers) + 0.5), squeeze=False)
    for r, layer in enumerate(result.layers):
        m = mean[r]
        peak = m.max() if m.max() > 0 else 1.0
        planes = [(gray[c], m[c]), (gray[:, c], m[:, c]), (gray[:, :, c], m[:, :, c])]
        for k, (g, a) in enumerate(planes):
            axes[r][k].imshow(overlay_rgb(g, a / peak), interpolation="nearest")
        for k, axis in enumerate((0, 1, 2)):
            axes[r][3 + k].imshow(m.max(axis=axis) / peak, cmap=CMAP, vmin=0, vmax=1, interpolation="nearest")
        for ax in axes[r]:
            _off(ax)
        axes[r][0].set_ylabel(f"features.{layer}", fontsize=8)
    for k, t in enumerate(titles):
        axes[0][k].set_title(t, fontsize=8)
    fig.suptitle(_title(result, f"Mean attention over {len(result.samples)} synapses (cube centre = crop centre)"), fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def _downsample(vol: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    f = max(1, int(np.ceil(vol.shape[0] / size)))
    S = (vol.shape[0] // f) * f
    v = vol[:S, :S, :S].reshape(S // f, f, S // f, f, S // f, f).mean(axis=(1, 3, 5))
    return v, f


def mean_map_3d(result: "AttentionResult", max_size: int = MAX_3D_SIZE) -> "go.Figure":
    """The mean map of each layer as nested isosurfaces (drag to rotate); axes in voxels of the cube."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    mean = result.mean_maps()
    n = len(result.layers)
    fig = make_subplots(rows=1, cols=n, specs=[[{"type": "scene"}] * n],
                        subplot_titles=[f"features.{layer}" for layer in result.layers])
    for j in range(n):
        v, f = _downsample(mean[j], max_size)
        peak = float(v.max())
        if peak <= 0:
            continue
        z, y, x = np.meshgrid(*(np.arange(s) * f + (f - 1) / 2 for s in v.shape), indexing="ij")
        fig.add_trace(go.Isosurface(
            x=x.ravel(), y=y.ravel(), z=z.ravel(), value=(v / peak).ravel().astype(np.float32),
            isomin=max(result.threshold, 0.3), isomax=0.95, surface_count=3, opacity=0.35, colorscale=CMAP.capitalize(),
            caps={"x_show": False, "y_show": False, "z_show": False}, showscale=(j == n - 1),
            name=f"features.{result.layers[j]}",
        ), row=1, col=j + 1)
    fig.update_scenes(xaxis_title="x", yaxis_title="y", zaxis_title="z", aspectmode="cube")
    fig.update_layout(title={"text": _title(result, f"Mean attention in 3-D ({len(result.samples)} synapses, relative to each layer's maximum)")},
                      height=460, template="plotly_white", margin={"l": 10, "r": 10, "b": 10})
    return fig


def overlap_figure(summary: pd.DataFrame, weights: str = "") -> "go.Figure":
    """Per structure and layer: Dice of the attended region with the mask, and mean attention
    inside / outside the mask (1 = no preference), over the voxels the summary counted (the
    title says which were left out)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Dice (attended region vs structure)", "mean attention inside / outside"))
    palette = ["#fcb045", "#d7301f", "#7f0000", "#4575b4", "#1a9850"]
    for k, (layer, rows) in enumerate(summary.groupby("layer", sort=True)):
        color = palette[k % len(palette)]
        hover = rows["n_synapses"].astype(str).to_numpy()
        fig.add_trace(go.Bar(x=rows["structure"], y=rows["dice"], name=f"features.{layer}", marker_color=color,
                             legendgroup=str(layer), customdata=hover,
                             hovertemplate="%{x}: Dice %{y:.3f} (%{customdata} synapses)<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Bar(x=rows["structure"], y=rows["inside_outside_ratio"], name=f"features.{layer}", marker_color=color,
                             legendgroup=str(layer), showlegend=False, customdata=hover,
                             hovertemplate="%{x}: ratio %{y:.2f} (%{customdata} synapses)<extra></extra>"), row=1, col=2)
    fig.add_hline(y=1.0, line_dash="dot", line_color="gray", row=1, col=2)
    tag = f" — {weights_tag(weights)}" if weights else ""
    if "border_ring_voxels" in summary.columns and len(summary):
        tag = f" (padding and a {int(summary['border_ring_voxels'].iloc[0])}-voxel border ring left out){tag}"
    fig.update_layout(barmode="group", height=380, template="plotly_white", title={"text": f"Attention vs structure{tag}"},
                      legend={"title": {"text": "layer"}})
    return fig
