"""The exploration widget of ``05_cluster`` (``interactive=True``): click or lasso points of
the 2-D map and see those synapses' slices and metadata beside it.

The map is the same figure :func:`synapse_nb.figures.maps.embedding_map` draws for the report, made
a plotly ``FigureWidget`` so clicks and selections reach Python. Points are matched back to
table rows by their coordinates, whatever traces the figure was split into. When the frame has
viewer links (a connectome run with a viewer), the chosen synapses' links are shown above the
slices and in the table's ``open`` column (escaped, http(s) only).
"""
from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING, Sequence

import ipywidgets as W
import numpy as np
import pandas as pd

from ..core import labels as L
from ..cubes.prepost import partner_table, polarity_known
from ..figures.gallery import (
    VIEWER_LINK_COLUMN,
    cube_rows,
    has_viewer_links,
    linked_table,
    open_link,
    render_rows,
)
from ..figures.maps import embedding_map
from .form import message_html
from .preview import names_pre_or_post, plane_png

if TYPE_CHECKING:
    from ..core.config import Config
    from ..cubes.store import CubeSet

logger = logging.getLogger(__name__)

MAX_SHOWN = 6
THUMB_PX = 120
#: Columns of the table beside the slices; "side 1" / "side 2" name each partner, "pre" / "post"
#: only where decided (:func:`synapse_nb.cubes.prepost.partner_table`).
META_COLUMNS = (L.BBOX_COLUMN, L.NAME_COLUMN, "cluster", L.DEMO_CLASS_COLUMN, "side 1", "side 2", "ambiguous",
                "vesicle_volume_um3", "cleft_area_um2", "mito_near_pre_volume_um3")


def point_rows(fig, frame: pd.DataFrame, x: str, y: str) -> list[np.ndarray]:
    """For each trace of ``fig``, the ``frame`` row of each of its points."""
    lookup: dict[tuple[float, float], list[int]] = {}
    for i, (a, b) in enumerate(zip(frame[x].to_numpy(float), frame[y].to_numpy(float))):
        lookup.setdefault((a, b), []).append(i)
    used: dict[tuple[float, float], int] = {}
    out = []
    for trace in fig.data:
        rows = []
        for a, b in zip(np.asarray(trace.x, float), np.asarray(trace.y, float)):
            candidates = lookup.get((a, b), [-1])
            k = used.get((a, b), 0)
            rows.append(candidates[min(k, len(candidates) - 1)])
            used[(a, b)] = k + 1
        out.append(np.asarray(rows, dtype=np.int64))
    return out


class Explorer:
    """A clickable UMAP (or any 2-D map) next to the slices of the chosen synapses."""

    def __init__(self, frame: pd.DataFrame, cubes: "CubeSet", cfg: "Config", x: str = "umap_1", y: str = "umap_2",
                 color: str | None = "cluster", max_shown: int = MAX_SHOWN) -> None:
        import plotly.graph_objects as go

        self.frame, self.cubes, self.cfg, self.max_shown = frame.reset_index(drop=True), cubes, cfg, max_shown
        try:
            self.cube_index = cube_rows(cubes, self.frame)
        except KeyError:  # some synapses have no cube: those show a message when picked
            key = [L.BBOX_COLUMN, L.NAME_COLUMN]
            index = pd.MultiIndex.from_frame(cubes.table[key].astype(str))
            self.cube_index = index.get_indexer(pd.MultiIndex.from_frame(self.frame[key].astype(str)))
        #: whether any synapse has a decided pre side; if none, no column speaks of pre or post
        self.polarity_known = polarity_known(self.frame)
        color = color if color in self.frame.columns else None
        fig = embedding_map(self.frame, x, y, color=color, title="Click a synapse, or lasso / box-select several")
        fig.update_layout(height=480, dragmode="lasso", clickmode="event+select")
        self.fig = go.FigureWidget(fig)
        self.rows_by_trace = point_rows(self.fig, self.frame, x, y)
        self._by_trace: dict[int, list[int]] = {}
        for trace in self.fig.data:
            trace.on_click(self._on_click)
            trace.on_selection(self._on_selection)
        self.selected: list[int] = []
        self.images = W.Image(format="png")
        self.images.add_class("snb-explore-slices")
        self.table = W.HTML()
        self.message = W.HTML(message_html("Pick points on the map to see their slices here.", "info"))
        #: the chosen synapses' "open in viewer" links; in the layout only when the frame has links
        self.links = W.HTML()
        self.links.add_class("snb-explore-links")
        self.has_links = has_viewer_links(self.frame)
        shown = [self.message, self.links, self.images, self.table] if self.has_links else [self.message, self.images, self.table]
        side = W.VBox(shown, layout=W.Layout(width="460px"))
        self.widget = W.HBox([self.fig, side])

    def _rows(self, trace, points) -> tuple[int, list[int]]:
        index = list(self.fig.data).index(trace)
        rows = self.rows_by_trace[index][list(points.point_inds)]
        return index, [int(r) for r in rows if r >= 0]

    def _on_click(self, trace, points, _state=None) -> None:
        index, rows = self._rows(trace, points)
        if rows:
            self._by_trace = {index: rows}
            self.select(rows)

    def _on_selection(self, trace, points, _selector=None) -> None:
        # plotly calls every trace once per selection gesture: keep each trace's part
        index, rows = self._rows(trace, points)
        self._by_trace[index] = rows
        self.select([r for i in sorted(self._by_trace) for r in self._by_trace[i]])

    def select(self, rows: Sequence[int]) -> None:
        """Show the synapses at ``rows`` of the frame (what a click or a lasso does)."""
        self.selected = list(dict.fromkeys(int(r) for r in rows))
        if not self.selected:
            self.images.value, self.table.value, self.links.value = b"", "", ""
            self.message.value = message_html("Pick points on the map to see their slices here.", "info")
            return
        shown = self.selected[: self.max_shown]
        more = len(self.selected) - len(shown)
        cube_rows = self.cube_index[shown]
        missing = [self.frame.loc[r, L.NAME_COLUMN] for r, c in zip(shown, cube_rows) if c < 0]
        ok = [(r, int(c)) for r, c in zip(shown, cube_rows) if c >= 0]
        note = f"{len(self.selected)} synapse(s) selected" + (f", first {len(shown)} shown" if more else "")
        if missing:
            note += f"; no cube stored for {', '.join(map(str, missing))}"
        self.message.value = message_html(note, "warning" if missing else "info")
        self.images.value = self.montage([c for _, c in ok]) if ok else b""
        meta = self.frame.loc[shown]
        if "pre_side" in meta.columns:
            meta = pd.concat([meta, partner_table(meta)], axis=1)
        cols = [c for c in META_COLUMNS if c in meta.columns and (self.polarity_known or not names_pre_or_post(c))]
        self.links.value = self.links_html(shown) if self.has_links else ""
        # a Styler with an "open" column when these synapses have links, else the plain table
        styled = linked_table(meta, columns=cols, float_format=lambda v: f"{v:,.4g}") if self.has_links else None
        if styled is not None and not isinstance(styled, pd.DataFrame):
            self.table.value = styled.set_table_attributes('class="snb-explore-table" border="0"').to_html()
        else:
            self.table.value = meta[cols].to_html(index=False, float_format=lambda v: f"{v:,.4g}", escape=True,
                                                  classes="snb-explore-table", border=0)

    def links_html(self, rows: Sequence[int]) -> str:
        """"Open in viewer" links of the synapses at ``rows`` (each named by its synapse), or ""."""
        links = [open_link(self.frame.loc[r, VIEWER_LINK_COLUMN], str(self.frame.loc[r, L.NAME_COLUMN])) for r in rows]
        links = [a for a in links if a]
        if not links:
            return ""
        return f"<div><b>{html.escape('Open in viewer')}:</b> " + " · ".join(links) + "</div>"

    def montage(self, cube_rows: Sequence[int]) -> bytes:
        """Centre planes z, y, x of each chosen cube, one row per synapse, as a PNG."""
        cfg = self.cfg
        rows = []
        for cube in render_rows(self.cubes, cfg, cube_rows):
            c = cube.shape[0] // 2
            gap = np.ones((cube.shape[0], 2), dtype=np.float32)
            rows.append(np.hstack([cube[c], gap, cube[:, c], gap, cube[:, :, c]]))
            rows.append(np.ones((2, rows[-1].shape[1]), dtype=np.float32))
        self.montage_array = np.vstack(rows[:-1])
        return plane_png(self.montage_array, size=THUMB_PX * 3)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"Explorer({len(self.frame)} synapses, selected={self.selected[:5]})"

