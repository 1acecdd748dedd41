"""Cluster galleries: what the representative synapses of each cluster look like.

Montages show three orthogonal centre planes per synapse (matplotlib, inline PNG in the
report); GIFs step through depth and are embedded as data URIs so the HTML stays offline.

When the run's tables carry a ``viewer_link`` column (connectome runs whose description sets a
viewer), synapses shown as captions or table rows get an "open in viewer" link: made with
:func:`synapse_nb.data.viewers.link_html`, so it is escaped and only http(s) URLs become links
(a value edited to anything else is dropped, with a warning). Without links nothing changes.
"""
from __future__ import annotations

import base64
import html
import io
import logging
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..core import labels as L
from ..cubes.prepost import polarity_known
from ..cubes.rendering import RenderSettings
from ..data.viewers import link_html
from .markers import cube_markers, draw_marks, marker_note, plane_marks

if TYPE_CHECKING:
    import matplotlib.figure
    from IPython.display import HTML
    from pandas.io.formats.style import Styler

    from ..core.config import Config
    from ..cubes.store import CubeSet

logger = logging.getLogger(__name__)

#: The column of a run's tables holding each synapse's viewer URL (connectome runs with a viewer).
VIEWER_LINK_COLUMN = "viewer_link"
#: The column a shown table gets for it, and the text of each link.
OPEN_COLUMN = "open"
OPEN_TEXT = "open in viewer"


# --------------------------------------------------------------------------------------
# viewer links
# --------------------------------------------------------------------------------------
def _url(value: Any) -> str | None:
    """A link value as a non-empty string, None for missing (None, NaN, pd.NA, "")."""
    if isinstance(value, str):
        return value.strip() or None
    return None


def has_viewer_links(df: pd.DataFrame | None) -> bool:
    """Whether ``df`` has a ``viewer_link`` column with at least one value (a viewer is set up)."""
    return df is not None and VIEWER_LINK_COLUMN in df.columns and any(_url(v) for v in df[VIEWER_LINK_COLUMN])


def open_link(url: Any, text: str = OPEN_TEXT) -> str:
    """An escaped ``<a>`` opening ``url`` in a new tab; "" when there is no link or the value is
    not a plain http(s) URL (never a dead or script link)."""
    url = _url(url)
    if url is None:
        return ""
    try:
        return link_html(url, text)
    except ValueError:
        return ""


def _warn_refused(values: Sequence[Any], where: str) -> None:
    refused = [v for v in values if _url(v) is not None and not open_link(v)]
    if refused:
        logger.warning("%d viewer link(s) in %s are not plain http(s) URLs and are not shown (e.g. %r): "
                       "rerun 01_load to remake them from the connectome description", len(refused), where, str(refused[0])[:60])


def with_viewer_links(df: pd.DataFrame, links_from: pd.DataFrame | None = None) -> pd.DataFrame:
    """``df`` with the ``viewer_link`` of ``links_from`` (e.g. the features or cube table)
    matched on bbox and synapse name; ``df`` itself when it has links already or there are none."""
    if VIEWER_LINK_COLUMN in df.columns or not has_viewer_links(links_from):
        return df
    key = [c for c in (L.BBOX_COLUMN, L.NAME_COLUMN) if c in df.columns and c in links_from.columns]
    if L.NAME_COLUMN not in key:
        return df
    source = links_from.drop_duplicates(key)
    index = pd.MultiIndex.from_frame(source[key].astype(str))
    pos = index.get_indexer(pd.MultiIndex.from_frame(df[key].astype(str)))
    values = source[VIEWER_LINK_COLUMN].to_numpy(dtype=object)
    out = df.copy()
    out[VIEWER_LINK_COLUMN] = [values[p] if p >= 0 else None for p in pos]
    return out


def linked_table(
    df: pd.DataFrame,
    *,
    links_from: pd.DataFrame | None = None,
    columns: Sequence[str] | None = None,
    float_format: Callable[[float], str] | None = None,
) -> "pd.DataFrame | Styler":
    """A table of synapses as shown in a notebook or report, with an ``open`` column of links
    to the viewer when the run has them (from ``df`` or, matched on bbox and name, from
    ``links_from``). Every other cell and header is HTML-escaped. Without links: ``df`` (only
    ``columns`` when given, never an empty ``viewer_link`` column), so bbox runs look as before."""
    df = with_viewer_links(df, links_from)
    keep = [c for c in (columns if columns is not None else df.columns) if c in df.columns and c != VIEWER_LINK_COLUMN]
    if not has_viewer_links(df):
        return df[keep] if columns is not None or VIEWER_LINK_COLUMN in df.columns else df
    urls = df[VIEWER_LINK_COLUMN].tolist()
    _warn_refused(urls, "the table")
    out = df[keep].reset_index(drop=True)
    open_column = OPEN_COLUMN if OPEN_COLUMN not in out.columns else OPEN_TEXT
    out[open_column] = [open_link(u) for u in urls]
    others = [c for c in out.columns if c != open_column]

    def cell(value: Any) -> Any:
        if float_format is not None and isinstance(value, (float, np.floating)):
            return float_format(float(value))
        return value

    styler = out.style.format(cell, escape="html", na_rep="", subset=others)
    styler = styler.format(lambda v: v, subset=[open_column], escape=None, na_rep="")
    return styler.format_index(escape="html", axis=1).hide(axis="index")


def representatives_table(df: pd.DataFrame, groups: Mapping[object, Sequence[int]], *,
                          links_from: pd.DataFrame | None = None) -> "Styler | None":
    """Each cluster's representatives (``groups``: cluster -> row positions in ``df``, as for
    :func:`cluster_montage`) with a link that opens each in the viewer; None when the run has
    no viewer links (nothing to add to the montage)."""
    df = with_viewer_links(df, links_from)
    if not has_viewer_links(df):
        return None
    parts = []
    for name, members in groups.items():
        members = list(members)
        if members:
            sub = df.iloc[members]
            parts.append(sub.assign(cluster=str(name), rank=np.arange(1, len(members) + 1)))
    if not parts:
        return None
    rows = pd.concat(parts, ignore_index=True)
    if not has_viewer_links(rows):
        return None
    cols = ["cluster", "rank", *(c for c in (L.BBOX_COLUMN, L.NAME_COLUMN, L.DEMO_CLASS_COLUMN) if c in rows.columns)]
    return linked_table(rows, columns=cols)  # type: ignore[return-value]


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
    """GIFs through depth, one row per cluster, embedded inline (works offline); each caption
    links the synapse to the viewer when the run has viewer links."""
    from IPython.display import HTML

    linked = has_viewer_links(df)
    if linked:
        _warn_refused([df.iloc[m][VIEWER_LINK_COLUMN] for members in groups.values() for m in members], "the gallery")
    rows_html = []
    for name, members in groups.items():
        members = list(members)
        if not members:
            continue
        cells = []
        for member, cube in zip(members, render_rows(cubes, cfg, cube_rows(cubes, df.iloc[members]))):
            data = base64.b64encode(depth_gif(cube)).decode("ascii")
            label = html.escape(str(df.iloc[member][L.NAME_COLUMN]))
            link = open_link(df.iloc[member][VIEWER_LINK_COLUMN]) if linked else ""
            caption = f"{label}<br/>{link}" if link else label
            cells.append(
                f'<figure style="display:inline-block;margin:4px"><img src="data:image/gif;base64,{data}" '
                f'alt="synapse {label} through depth"/><figcaption style="font-size:11px">{caption}</figcaption></figure>'
            )
        rows_html.append(f"<div><b>cluster {html.escape(str(name))}</b><br/>{''.join(cells)}</div>")
    return HTML("".join(rows_html))
