"""Cluster galleries: what the representative synapses of each cluster look like.

Montages show three orthogonal centre planes per synapse (matplotlib, inline PNG in the
report); GIFs step through depth and are embedded as data URIs so the HTML stays offline.
"""
from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd

from ..core import labels as L
from ..cubes.prepost import polarity_known
from ..cubes.rendering import RenderSettings
from .markers import cube_markers, draw_marks, marker_note, plane_marks

if TYPE_CHECKING:
    import matplotlib.figure
    from IPython.display import HTML

    from ..core.config import Config
    from ..cubes.store import CubeSet


def cube_rows(cubes: "CubeSet", df: pd.DataFrame) -> np.ndarray:
    """Row of ``cubes`` for each row of ``df`` (matched on bbox and synapse name)."""
    key = [L.BBOX_COLUMN, L.NAME_COLUMN]
    index = pd.MultiIndex.from_frame(cubes.table[key].astype(str))
    pos = index.get_indexer(pd.MultiIndex.from_frame(df[key].astype(str)))
    if (pos < 0).any():
        missing = df.loc[pos < 0, key].head(3).to_dict("records")
        raise KeyError(f"{int((pos < 0).sum())} synapses have no stored cube (e.g. {missing}); rerun 01_load")
    return pos


def render_rows(cubes: "CubeSet", cfg: "Config", rows: Sequence[int]) -> np.ndarray:
    """Cubes at ``rows`` as the run renders them (its segmentation type, alpha, gray), in [0, 1]."""
    view = cubes.rendered(RenderSettings.from_config(cfg), indices=np.asarray(rows, dtype=np.int64))
    return view[0 : len(rows)]


def cluster_montage(
    cubes: "CubeSet", df: pd.DataFrame, groups: Mapping[object, Sequence[int]], cfg: "Config"
) -> "matplotlib.figure.Figure":
    """Rows = clusters, columns = members x (z, y, x centre planes). ``groups`` maps a cluster
    to row positions in ``df`` (e.g. :func:`synapse_nb.analysis.clustering.representatives`).
    Each plane marks the cleft centre and the side points (:mod:`.markers`)."""
    import matplotlib.pyplot as plt

    groups = {k: list(v) for k, v in groups.items() if len(v)}
    if not groups:
        raise ValueError("no cluster has members to show")
    n_cols = max(len(v) for v in groups.values())
    fig, axes = plt.subplots(len(groups), 3 * n_cols, figsize=(1.35 * 3 * n_cols, 1.6 * len(groups)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    known = polarity_known(cubes.table)
    for r, (name, members) in enumerate(groups.items()):
        rows = cube_rows(cubes, df.iloc[members])
        cubes_r = render_rows(cubes, cfg, rows)
        for j, (member, cube, row) in enumerate(zip(members, cubes_r, rows)):
            c = cube.shape[0] // 2
            markers = cube_markers(cubes.table.iloc[int(row)], cube.shape[0], known=known)
            for p, (axis, plane) in enumerate(zip("zyx", (cube[c], cube[:, c], cube[:, :, c]))):
                ax = axes[r][3 * j + p]
                ax.imshow(plane, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                draw_marks(ax, plane_marks(markers, axis, c, cube.shape[0]), fontsize=5, size=3)
                if p == 0:
                    ax.set_title(str(df.iloc[member][L.NAME_COLUMN]), fontsize=6, loc="left")
        axes[r][0].text(-0.15, 0.5, f"cluster {name}", transform=axes[r][0].transAxes, rotation=90,
                        va="center", ha="right", fontsize=8)
    fig.suptitle("Representative synapses per cluster (closest to the centroid); planes z, y, x through the centre\n"
                 + marker_note(known), fontsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig


def depth_gif(cube: np.ndarray, step: int = 2, duration_ms: int = 80, scale: int = 2) -> bytes:
    """An animated GIF through the depth (z) of one cube in [0, 1]."""
    import imageio.v3 as iio

    frames = (np.clip(cube[::step], 0, 1) * 255).astype(np.uint8)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    buf = io.BytesIO()
    iio.imwrite(buf, frames, extension=".gif", duration=duration_ms, loop=0)
    return buf.getvalue()


def gif_gallery(
    cubes: "CubeSet", df: pd.DataFrame, groups: Mapping[object, Sequence[int]], cfg: "Config"
) -> "HTML":
    """GIFs through depth, one row per cluster, embedded inline (works offline)."""
    from IPython.display import HTML

    rows_html = []
    for name, members in groups.items():
        members = list(members)
        if not members:
            continue
        cells = []
        for member, cube in zip(members, render_rows(cubes, cfg, cube_rows(cubes, df.iloc[members]))):
            data = base64.b64encode(depth_gif(cube)).decode("ascii")
            label = html.escape(str(df.iloc[member][L.NAME_COLUMN]))
            cells.append(
                f'<figure style="display:inline-block;margin:4px"><img src="data:image/gif;base64,{data}" '
                f'alt="synapse {label} through depth"/><figcaption style="font-size:11px">{label}</figcaption></figure>'
            )
        rows_html.append(f"<div><b>cluster {html.escape(str(name))}</b><br/>{''.join(cells)}</div>")
    return HTML("".join(rows_html))
