"""Links that open one synapse in the viewer the lab already uses (webKnossos or Neuroglancer).

The viewer is set up once in a connectome description (``viewer:`` section) and checked by
:func:`check_viewer`. A link carries nothing but what the user configured there (the URL
template, the viewer's address, the layer sources) plus the synapse position and the voxel
size: never a local path, a table value or another column, so sharing a report leaks nothing.

- webKnossos: ``{webknossos: "https://host/.../{dataset}/view#{x},{y},{z},0,1.3"}``, a template
  whose only placeholders are ``{dataset}``, ``{x}``, ``{y}``, ``{z}``;
- Neuroglancer: ``{neuroglancer: {base_url: "https://host/", layers: {name: source}}}``; a
  layer is an image layer unless its name contains ``seg`` or it is given as
  ``{source: ..., type: segmentation}``. The state is built with the ``neuroglancer`` package
  (imported on first use: reading data never needs it).
"""
from __future__ import annotations

import html
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
import pandas as pd

from synapse_nb.core import labels as L

#: Placeholders a webKnossos URL template may use.
WEBKNOSSOS_FIELDS = ("dataset", "x", "y", "z")
VIEWER_KINDS = ("webknossos", "neuroglancer")
NEUROGLANCER_KEYS = ("base_url", "layers")
LAYER_TYPES = ("image", "segmentation")
#: What a Neuroglancer link shows across a cross-section panel, and the panel width assumed
#: (a four-panel layout on a laptop screen): the scale is nm per screen pixel in voxels.
FIELD_OF_VIEW_NM = 1000.0
PANEL_PIXELS = 500
_LAYER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HOST_PREFIX = re.compile(r"^https?://[^/?#{}\s]+", re.IGNORECASE)
_BAD_CHARS = re.compile(r"[\s\x00-\x1f\x7f\"<>\\^`|]")
#: Sources may hold neuroglancer's "|" pipelines (zarr://...|zarr2:), nothing else odd.
_BAD_SOURCE_CHARS = re.compile(r"[\s\x00-\x1f\x7f\"<>\\`]")


def _http_url(value: Any, key: str, *, template: bool = False) -> str:
    """``value`` as an http(s) URL with a host written out (a template's host is literal too)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"viewer.{key}: {value!r} is not a URL: give an http(s) address")
    if _BAD_CHARS.search(value):
        raise ValueError(f"viewer.{key}: {value!r} holds a blank, quote or control character: give a plain http(s) URL")
    scheme = urlsplit(value).scheme.lower()
    if scheme not in ("http", "https") or not _HOST_PREFIX.match(value):
        what = "template" if template else "URL"
        raise ValueError(f"viewer.{key}: {value!r} is not an http(s) {what}: start it with https://<host>/")
    return value


def _check_template(template: Any) -> str:
    if not isinstance(template, str) or not template:
        raise ValueError(f"viewer.webknossos: {template!r} is not a URL template: give an http(s) address with {{dataset}}, {{x}}, {{y}}, {{z}}")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"viewer.webknossos: template {template!r} cannot be read ({exc}): write braces only around dataset, x, y, z") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in WEBKNOSSOS_FIELDS:
            raise ValueError(f"viewer.webknossos: placeholder {{{name}}} is not allowed: use only {{dataset}}, {{x}}, {{y}}, {{z}}")
        if spec or conversion:
            raise ValueError(f"viewer.webknossos: placeholder {{{name}}} has a format spec or conversion: write it bare, as {{{name}}}")
    return _http_url(template, "webknossos", template=True)


def _layer(name: Any, value: Any) -> tuple[str, str, str]:
    """(name, source, type) of one configured Neuroglancer layer."""
    key = "viewer.neuroglancer.layers"
    if not isinstance(name, str) or not _LAYER_NAME.match(name) or ".." in name:
        raise ValueError(f"{key}: layer name {name!r} is not a plain name: use letters, digits, '_', '-' or '.'")
    kind = "segmentation" if "seg" in name.lower() else "image"
    if isinstance(value, Mapping):
        unknown = sorted(str(k) for k in value if k not in ("source", "type"))
        if unknown:
            raise ValueError(f"{key}.{name}: unknown key(s) {', '.join(unknown)}: give source and optionally type")
        if "type" in value:
            if value["type"] not in LAYER_TYPES:
                raise ValueError(f"{key}.{name}.type {value['type']!r} is unknown: use image or segmentation")
            kind = value["type"]
        source = value.get("source")
    else:
        source = value
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"{key}.{name}: the source {source!r} is not a string: give the layer's source, e.g. precomputed://gs://bucket/raw")
    if _BAD_SOURCE_CHARS.search(source):
        raise ValueError(f"{key}.{name}: the source {source!r} holds a blank, quote or control character: give a plain source URL")
    return name, source, kind


def _neuroglancer_layers(section: Mapping) -> list[tuple[str, str, str]]:
    layers = section.get("layers")
    if not isinstance(layers, Mapping) or not layers:
        raise ValueError("viewer.neuroglancer.layers: give at least one layer as {name: source}")
    return [_layer(name, value) for name, value in layers.items()]


def check_viewer(viewer: Mapping | None) -> None:
    """Validate a ``viewer`` section (``None``: no viewer); a ``ValueError`` names the bad key."""
    if viewer is None:
        return
    if not isinstance(viewer, Mapping):
        raise ValueError(f"viewer: {type(viewer).__name__} given: give a mapping with webknossos or neuroglancer")  # noqa: TRY004
    unknown = sorted(str(k) for k in viewer if k not in VIEWER_KINDS)
    if unknown:
        raise ValueError(f"viewer: unknown key(s) {', '.join(unknown)}: use webknossos or neuroglancer")
    given = [k for k in VIEWER_KINDS if k in viewer]
    if len(given) != 1:
        raise ValueError("viewer: give exactly one of webknossos or neuroglancer")
    if "webknossos" in viewer:
        _check_template(viewer["webknossos"])
        return
    section = viewer["neuroglancer"]
    if not isinstance(section, Mapping):
        raise ValueError("viewer.neuroglancer: give a mapping {base_url: https://..., layers: {name: source}}")  # noqa: TRY004
    unknown = sorted(str(k) for k in section if k not in NEUROGLANCER_KEYS)
    if unknown:
        raise ValueError(f"viewer.neuroglancer: unknown key(s) {', '.join(unknown)}: use base_url and layers")
    base = _http_url(section.get("base_url"), "neuroglancer.base_url")
    if "#" in base:
        raise ValueError(f"viewer.neuroglancer.base_url {base!r} holds a '#': give the viewer's address without a state")
    _neuroglancer_layers(section)


def _voxel(position_xyz: Sequence[float], where: str = "") -> tuple[int, int, int]:
    """The voxel (x, y, z) a position falls on (nearest integer)."""
    values = np.asarray(position_xyz, dtype=np.float64).reshape(-1)
    if values.shape != (3,) or not np.all(np.isfinite(values)):
        raise ValueError(f"viewer link{where}: position {tuple(position_xyz)!r} is not three finite voxel coordinates x, y, z")
    return tuple(int(v) for v in np.rint(values))  # type: ignore[return-value]


def _voxel_size(voxel_size_nm_zyx: Sequence[float]) -> tuple[float, float, float]:
    values = np.asarray(voxel_size_nm_zyx, dtype=np.float64).reshape(-1)
    if values.shape != (3,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"viewer link: voxel size {tuple(voxel_size_nm_zyx)!r} nm is not three positive numbers (z, y, x)")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


class _Linker:
    """Builds links for one checked viewer; the Neuroglancer state is made once and moved."""

    def __init__(self, viewer: Mapping, *, dataset: str, voxel_size_nm_zyx: Sequence[float]) -> None:
        check_viewer(viewer)
        if not isinstance(dataset, str) or not dataset:
            raise ValueError(f"viewer link: dataset {dataset!r} is not a name: give the dataset name the viewer knows")
        self.template = viewer.get("webknossos")
        self.dataset = quote(dataset, safe="")
        self.state = None
        if self.template is None:
            import neuroglancer

            section = viewer["neuroglancer"]
            self.neuroglancer = neuroglancer
            self.base_url = section["base_url"]
            vz, vy, vx = _voxel_size(voxel_size_nm_zyx)
            state = neuroglancer.ViewerState()
            state.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm", scales=[vx, vy, vz])
            # neuroglancer's zoom is in canonical voxels (the smallest voxel side) per screen pixel
            state.cross_section_scale = FIELD_OF_VIEW_NM / PANEL_PIXELS / min(vx, vy, vz)
            for name, source, kind in _neuroglancer_layers(section):
                layer_class = neuroglancer.SegmentationLayer if kind == "segmentation" else neuroglancer.ImageLayer
                state.layers[name] = layer_class(source=source)
            self.state = state

    def __call__(self, position_xyz: Sequence[float], where: str = "") -> str:
        x, y, z = _voxel(position_xyz, where)
        if self.template is not None:
            return self.template.format(dataset=self.dataset, x=x, y=y, z=z)
        # the centre of the voxel: neuroglancer puts voxel i between i and i + 1
        self.state.position = [x + 0.5, y + 0.5, z + 0.5]
        return self.neuroglancer.to_url(self.state, prefix=self.base_url)


def viewer_link(viewer: Mapping | None, *, dataset: str, position_xyz: Sequence[float], voxel_size_nm_zyx: Sequence[float]) -> str | None:
    """The URL opening ``viewer`` at ``position_xyz`` (global voxels x, y, z); ``None`` without a viewer."""
    if viewer is None:
        return None
    return _Linker(viewer, dataset=dataset, voxel_size_nm_zyx=voxel_size_nm_zyx)(position_xyz)


def viewer_links(table: pd.DataFrame, viewer: Mapping | None, *, dataset: str, voxel_size_nm: Sequence[float]) -> pd.Series:
    """One URL per row of ``table`` (from its centre columns x, y, z), indexed like the table.

    Without a viewer every entry is ``None``. ``voxel_size_nm`` is (z, y, x) like everywhere
    in the package.
    """
    if viewer is None:
        return pd.Series([None] * len(table), index=table.index, dtype=object, name="viewer_link")
    missing = [c for c in L.CENTER_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"viewer links: the synapse table has no column(s) {', '.join(missing)}: links need the synapse positions x, y, z")
    linker = _Linker(viewer, dataset=dataset, voxel_size_nm_zyx=voxel_size_nm)
    xyz = np.stack([table[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in L.CENTER_COLUMNS], axis=1)
    bad = ~np.all(np.isfinite(xyz), axis=1)
    if bad.any():
        row = table.index[int(np.flatnonzero(bad)[0])]
        raise ValueError(f"viewer links: row {row} has no finite position x, y, z: fix or drop it before making links")
    links = [linker(p) for p in xyz]
    return pd.Series(links, index=table.index, dtype=object, name="viewer_link")


def link_html(url: str | None, text: str) -> str:
    """An escaped ``<a>`` opening ``url`` in a new tab, for HTML reports; ``None`` gives the text only."""
    label = html.escape(str(text), quote=True)
    if url is None:
        return label
    if not isinstance(url, str) or urlsplit(url).scheme.lower() not in ("http", "https") or _BAD_CHARS.search(url):
        raise ValueError(f"link_html: {str(url)[:80]!r} is not a plain http(s) URL: links open only http(s) addresses")
    return f'<a href="{html.escape(url, quote=True)}" target="_blank" rel="noopener">{label}</a>'
