"""Preview one synapse in the control panel: its cube as three orthogonal slices and its
morphometrics, for the segmentation type and alpha the form holds.

The cube is built exactly as ``01_load`` builds it (:func:`synapse_nb.pipeline.steps.make_cubes`
on a one-row table) and rendered as ``03_extract`` renders it, so what is shown is what the
network will see. Opening the dataset and building the cube are cached on the parameters that
decide them; changing the segmentation type, alpha or depth only re-renders.
"""
from __future__ import annotations

import dataclasses
import html
import io
import json
import logging
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import numpy as np
import pandas as pd

from ..core import labels as L
from ..core.config import Config
from ..core.errors import DataError
from ..cubes.morphometry import MORPHOMETRIC_VOXEL_KEYS
from ..cubes.prepost import partner_table, side_decided
from ..cubes.rendering import RenderSettings
from ..figures.markers import CubeMarker, PlaneMark, cube_markers, marker_note, plane_marks
from ..pipeline import cache, steps
from .form import message_html, set_options

if TYPE_CHECKING:
    from ..core.config import Config
    from ..cubes.store import CubeSet
    from ..data.bbox import BboxData
    from .panel import ConfigForm

logger = logging.getLogger(__name__)

GEOMETRY_KEYS = ("cube_size", "crop_mode", "presynapse_weight")
RENDER_KEYS = ("segmentation_type", "alpha", "gray_value", "quantize_8bit", "second_minmax")
PLANES = {"z": "y-x plane at z", "y": "z-x plane at y", "x": "z-y plane at x"}
IMAGE_PX = 220
SHOWN_COLUMNS = ("side 1", "side 2", "ambiguous", "ambiguity_reason")
#: Marker size on the preview images, in pixels (half the cross / the circle's radius).
MARK_PX = 4


def cube_keys() -> tuple[str, ...]:
    """Parameters that decide a cube (the cache's list, so new data keys are honoured)."""
    extra = tuple(k for k in ("dataset", "target_voxel_nm") if k in Config.model_fields)
    return tuple(dict.fromkeys((*cache.CUBE_KEYS, *extra)))


def _key(cfg: "Config", keys) -> str:
    return json.dumps({k: getattr(cfg, k) for k in keys}, sort_keys=True, default=str)


def plane_png(plane: np.ndarray, size: int = IMAGE_PX, marks: "list[PlaneMark] | None" = None) -> bytes:
    """A [0, 1] plane as a gray PNG, enlarged without smoothing (voxels stay visible), with
    ``marks`` drawn in colour: a cross at the cleft centre, a labelled dot per side point
    (hollow when projected from another depth)."""
    from PIL import Image

    img = Image.fromarray(np.clip(np.round(plane * 255.0), 0, 255).astype(np.uint8), mode="L")
    scale = max(1, size // max(plane.shape))
    img = img.resize((plane.shape[1] * scale, plane.shape[0] * scale), Image.NEAREST)
    if marks:
        img = _draw_marks(img.convert("RGB"), marks, scale)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def mark_pixel(mark: "PlaneMark", scale: int) -> tuple[int, int]:
    """Pixel (x, y) of a mark's voxel centre on a plane enlarged ``scale`` times."""
    return int((mark.col + 0.5) * scale), int((mark.row + 0.5) * scale)


def _draw_marks(img, marks: "list[PlaneMark]", scale: int):
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    r = MARK_PX
    for m in marks:
        x, y = mark_pixel(m, scale)
        if m.kind == "cleft":
            draw.line([(x - r - 1, y), (x + r + 1, y)], fill=m.color, width=2)
            draw.line([(x, y - r - 1), (x, y + r + 1)], fill=m.color, width=2)
            continue
        draw.ellipse([x - r, y - r, x + r, y + r], outline=m.color, width=2, fill=m.color if m.in_slice else None)
        draw.text((x + r + 1, y - 2 * r - 2), m.label, fill=m.color)
    return img


def planes_at(cube: np.ndarray, depth: int) -> dict[str, np.ndarray]:
    """Three orthogonal planes through voxel ``depth`` of each axis of a (z, y, x) cube."""
    d = int(np.clip(depth, 0, cube.shape[0] - 1))
    return {"z": cube[d], "y": cube[:, d], "x": cube[:, :, d]}


def format_value(v: Any) -> str:
    """Readable numbers: counts with thousands separators, large floats without exponents."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def names_pre_or_post(key: str) -> bool:
    """Whether a column name speaks of the pre- or postsynaptic side (``pre_volume_vox``, ``mito_near_pre_...``)."""
    return any(part in ("pre", "post") for part in key.split("_"))


def morphometrics_html(row: Any) -> str:
    """Morphometrics and the pre/post decision of one built synapse as a small table; its
    partners are "side 1" / "side 2" (with "pre" / "post" only where decided), and measures
    of the pre- or postsynaptic segment are left out where no side was decided."""
    if "pre_side" in row.index:
        row = pd.concat([row, partner_table(pd.DataFrame([row])).iloc[0]])
    keys = [*SHOWN_COLUMNS, *MORPHOMETRIC_VOXEL_KEYS]
    keys += [k for k in row.index if (k.endswith("_um3") or k.endswith("_um2")) and k not in keys]
    if not side_decided(row):
        keys = [k for k in keys if not names_pre_or_post(k)]
    cells = []
    for k in keys:
        if k not in row.index:
            continue
        text = format_value(row[k])
        cells.append(f"<tr><td>{html.escape(k)}</td><td style='text-align:right'>{html.escape(text)}</td></tr>")
    return "<table class='snb-morph' style='font-size:12px'>" + "".join(cells) + "</table>"


class SynapsePreview:
    """Pick bbox and synapse; see its rendered cube as three slices with a depth slider."""

    def __init__(self, form: "ConfigForm") -> None:
        self.form = form
        wide = W.Layout(width="360px")
        self.bbox = W.Dropdown(description="bbox", layout=wide)
        self.synapse = W.Dropdown(description="synapse", layout=wide)
        self.depth = W.IntSlider(description="depth", min=0, max=1, value=0, continuous_update=False, layout=wide)
        self.message = W.HTML()
        self.message.add_class("snb-preview-message")
        self.title = W.HTML()
        self.images = {a: W.Image(format="png", layout=W.Layout(width=f"{IMAGE_PX}px", height=f"{IMAGE_PX}px")) for a in PLANES}
        self.captions = {a: W.HTML(f"<span style='font-size:12px'>{t}</span>") for a, t in PLANES.items()}
        for a, img in self.images.items():
            img.add_class(f"snb-preview-{a}")
        self.morph = W.HTML()
        self.cubes: "CubeSet | None" = None  # the one-synapse cube set being shown
        self.rendered: np.ndarray | None = None  # (S, S, S) float32 in [0, 1]
        self.planes: dict[str, np.ndarray] = {}
        self.markers: list[CubeMarker] = []  # cleft centre and side points in the shown cube
        self.marks: dict[str, list[PlaneMark]] = {}  # the markers drawn on each plane
        self._dataset: list["BboxData"] | None = None
        self._dataset_key = self._cube_key = None
        self._cfg: "Config | None" = None
        self._quiet = False
        self.bbox.observe(self._bbox_changed, names="value")
        self.synapse.observe(lambda _: self._quiet or self.refresh(), names="value")
        self.depth.observe(lambda _: self._quiet or self.show_planes(), names="value")
        form.on_change(self.update)
        slices = W.HBox([W.VBox([self.images[a], self.captions[a]]) for a in PLANES])
        self.widget = W.VBox([
            W.HBox([self.bbox, self.synapse]), self.depth, self.message, self.title,
            W.HBox([slices, self.morph]),
        ])
        self.widget.add_class("snb-preview")
        self.update(form.config_or_none())

    # --- data ---------------------------------------------------------------------------
    def update(self, cfg: "Config | None") -> None:
        """New parameters from the form: reopen, rebuild or re-render as little as needed."""
        if cfg is None:
            self.message.value = message_html("fix the parameters marked in the Parameters tab to see a preview")
            return
        self._cfg = cfg
        data_keys = [k for k in cube_keys() if k not in GEOMETRY_KEYS]
        key = _key(cfg, data_keys)
        if key != self._dataset_key:
            self._dataset_key, self._cube_key = key, None
            if not self._open(cfg):
                return
        self.refresh()

    def _open(self, cfg: "Config") -> bool:
        self._dataset = None
        try:
            self._dataset = self.form.open_dataset(cfg)  # opened once, shared with the form's dataset check
        except (DataError, OSError, ValueError) as exc:
            hint = " Run `make demo-data` to create the demo dataset." if "data/demo" in str(exc) else ""
            self._set_options([], [])
            self._clear(f"cannot open the dataset: {exc}.{hint}")
            return False
        self._set_options([b.name for b in self._dataset], None)
        return True

    def _set_options(self, bboxes: list[str], synapses: list | None) -> None:
        self._quiet = True
        try:
            set_options(self.bbox, bboxes)
            self._synapse_options()
        finally:
            self._quiet = False

    def _synapse_options(self) -> None:
        b = self._bbox_data()
        if b is None:
            set_options(self.synapse, [])
            return
        names = b.table[L.NAME_COLUMN].astype(str).tolist()
        cls = self._cfg.class_column if self._cfg is not None else None
        labels = b.table[cls].astype(str).tolist() if cls and cls in b.table.columns else [""] * len(names)
        set_options(self.synapse, [(f"{n}  ({c})" if c else n, n) for n, c in zip(names, labels)])

    def _bbox_data(self) -> "BboxData | None":
        return next((b for b in self._dataset or [] if b.name == self.bbox.value), None)

    def _bbox_changed(self, _change) -> None:
        if self._quiet:
            return
        self._quiet = True
        try:
            self._synapse_options()
        finally:
            self._quiet = False
        self.refresh()

    # --- cube and images --------------------------------------------------------------------
    def select(self, bbox: str, synapse: str) -> None:
        """Show ``synapse`` of ``bbox`` (what picking both in the dropdowns does)."""
        self._quiet = True
        try:
            self.bbox.value = bbox
            self._synapse_options()
            self.synapse.value = synapse
        finally:
            self._quiet = False
        self.refresh()

    def refresh(self) -> None:
        """Build the chosen synapse's cube if needed, then render and show it."""
        b, cfg = self._bbox_data(), self._cfg
        if b is None or cfg is None or self.synapse.value is None:
            self._clear("no synapse to show: the dataset has no bbox or the bbox no synapse" if self._dataset is not None else self.message.value)
            return
        key = _key(cfg, cube_keys()) + f"|{b.name}|{self.synapse.value}"
        if key != self._cube_key:
            one = b.table[b.table[L.NAME_COLUMN].astype(str) == str(self.synapse.value)]
            try:
                one_bbox = [dataclasses.replace(b, table=one)]
                steps.check_dataset(one_bbox, cfg)
                self.cubes = steps.make_cubes(one_bbox, cfg, progress=False)
            except (DataError, ValueError, OSError) as exc:
                self._cube_key = None
                self._clear(f"synapse {self.synapse.value} of {b.name} has no cube: {exc}")
                return
            self._cube_key = key
            size = cfg.cube_size
            if self.depth.max != size - 1:  # new cube size: start at the centre
                self._quiet = True
                try:
                    self.depth.max = size - 1
                    self.depth.value = size // 2
                finally:
                    self._quiet = False
        self.render()

    def render(self) -> None:
        if self.cubes is None or self._cfg is None:
            return
        cfg = self._cfg
        t = cfg.segmentation_type
        try:
            self.cubes.require_type(t)  # as 01_load / 03_extract would refuse it
        except DataError as exc:
            self.rendered, self.planes, self.marks = None, {}, {}
            for img in self.images.values():
                img.value = b""
            self.message.value = message_html(str(exc), "error")
            return
        view = self.cubes.rendered(RenderSettings.from_config(cfg))
        self.rendered = view[0]
        empty = len(self.cubes.empty_mask_rows(t)) > 0
        self.message.value = message_html(
            f"the mask of segmentation type {t} is empty for this synapse: extraction would skip it", "warning") if empty else ""
        row = self.cubes.table.iloc[0]
        self.markers = cube_markers(row, self.rendered.shape[0])
        self.title.value = (f"<b>{html.escape(str(row[L.BBOX_COLUMN]))} / {html.escape(str(row[L.NAME_COLUMN]))}</b>"
                            f" &middot; type {t}: {html.escape(L.SEGMENTATION_TYPES[t])} &middot; alpha {cfg.alpha:g}"
                            f"<br><span style='font-size:11px;color:#555'>{html.escape(marker_note(side_decided(row)))}</span>")
        self.morph.value = morphometrics_html(row)
        self.show_planes()

    def show_planes(self) -> None:
        if self.rendered is None:
            return
        self.planes = planes_at(self.rendered, self.depth.value)
        size = self.rendered.shape[0]
        depth = int(np.clip(self.depth.value, 0, size - 1))
        self.marks = {a: plane_marks(self.markers, a, depth, size) for a in self.planes}
        for a, plane in self.planes.items():
            self.images[a].value = plane_png(plane, marks=self.marks[a])

    def _clear(self, text: str) -> None:
        self.cubes = self.rendered = None
        self.planes, self.markers, self.marks = {}, [], {}
        for img in self.images.values():
            img.value = b""
        self.title.value = self.morph.value = ""
        self.message.value = message_html(text) if text and "snb-msg" not in text else text
