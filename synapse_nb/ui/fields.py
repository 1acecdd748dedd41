"""One parameter of the control panel's form: the widget its type asks for, and how a value
goes into the widget and comes back out (lists as comma-separated text, mappings as YAML).

:func:`field_for` picks the widget from a pydantic field alone (``Literal`` -> dropdown,
``bool`` -> checkbox, bounded numbers -> sliders, other numbers -> text boxes, lists and
mappings -> text), with the specific widgets the panel promises (segmentation types with their
description, bboxes as a multi-select).
"""
from __future__ import annotations

import html
import typing
from typing import Any, Mapping

import ipywidgets as W
import yaml

from ..core import labels as L

SLIDER_STEPS = {"cube_size": 16}
MAX_SLIDER_RANGE = 300
WIDE = W.Layout(width="430px")
DESC_STYLE = {"description_width": "170px"}


def _bounds(info) -> tuple[float | None, float | None]:
    lo = hi = None
    for m in info.metadata:
        lo = getattr(m, "ge", getattr(m, "gt", lo))
        hi = getattr(m, "le", getattr(m, "lt", hi))
    return lo, hi


class Field:
    """One parameter: its widget, how values go in and out, and its message area."""

    def __init__(self, key: str, kind: str, widget: W.Widget, help_text: str, elem: type | None = None) -> None:
        self.key, self.kind, self.widget, self.elem = key, kind, widget, elem
        self.help = W.HTML(f'<span style="color:#777;font-size:12px">{html.escape(help_text)}</span>',
                           layout=W.Layout(width="360px"))
        self.message = W.HTML(layout=W.Layout(min_width="200px"))
        self.message.add_class(f"snb-msg-{key}")
        widget.add_class(f"snb-field-{key}")
        self.row = W.HBox([widget, self.help, self.message])

    def get(self) -> Any:
        """The widget's value as a parameter value; ValueError with a message if unreadable."""
        v = self.widget.value
        if self.kind == "list":
            text = str(v).strip().strip("[]")
            if not text:
                return []
            parts = [p.strip().strip("'\"") for p in text.split(",") if p.strip()]
            try:
                return [self.elem(p) for p in parts] if self.elem in (int, float) else parts
            except ValueError:
                raise ValueError(f"give comma-separated {self.elem.__name__} values, e.g. 1, 2, 3") from None
        if self.kind in ("dict", "yaml"):
            text = str(v).strip()
            if not text:
                return {} if self.kind == "dict" else None
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ValueError(f"not valid YAML: {str(exc).splitlines()[0]}") from None
            if self.kind == "dict" and not isinstance(value, dict):
                raise ValueError("give a mapping, e.g. {bbox9: {mito: 1, vesicle: 2, cleft: 3, cleft2: 4}}")
            return value
        if self.kind == "multi":
            return list(v)
        return v

    def set(self, value: Any) -> None:
        if self.kind == "list":
            self.widget.value = ", ".join(str(x) for x in (value or []))
        elif self.kind in ("dict", "yaml"):
            self.widget.value = "" if value in (None, {}) else yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()
        elif self.kind == "multi":
            wanted = [str(x) for x in (value or [])]
            options = list(self.widget.options)
            self.widget.options = options + [x for x in wanted if x not in options]
            self.widget.value = tuple(wanted)
        elif self.kind == "float":
            self.widget.value = float(value)
        elif self.kind == "str":
            self.widget.value = "" if value is None else str(value)
        else:
            self.widget.value = value


def field_for(key: str, info) -> Field:
    """The widget Config's type and bounds ask for (specific widgets where people click)."""
    ann, desc = info.annotation, info.description or ""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    common = {"description": key, "style": DESC_STYLE, "layout": WIDE}
    lo, hi = _bounds(info)
    if key == "segmentation_type":
        options = [(f"{k}: {v}", k) for k, v in L.SEGMENTATION_TYPES.items()]
        return Field(key, "int", W.Dropdown(options=options, **common), desc)
    if key == "bboxes":
        return Field(key, "multi", W.SelectMultiple(options=[], rows=4, **common), desc + " (ctrl-click several)")
    if origin is typing.Literal:
        return Field(key, "choice", W.Dropdown(options=list(args), **common), desc)
    if ann is bool:
        return Field(key, "bool", W.Checkbox(indent=True, **common), desc)
    if ann is int:
        if lo is not None and hi is not None and hi - lo <= MAX_SLIDER_RANGE:
            return Field(key, "int", W.IntSlider(min=int(lo), max=int(hi), step=SLIDER_STEPS.get(key, 1), **common), desc)
        return Field(key, "int", W.IntText(**common), desc)
    if ann is float:
        default = info.default if isinstance(info.default, (int, float)) else None
        # a slider snaps to its 0.01 step: a default finer than that (a learning rate of 0.001)
        # would be moved to another value (or to an invalid 0) the first time it is shown
        on_step = default is None or abs(round(default / 0.01) * 0.01 - default) < 1e-12
        if lo is not None and hi is not None and on_step:
            return Field(key, "float", W.FloatSlider(min=float(lo), max=float(hi), step=0.01, readout_format=".2f", **common), desc)
        return Field(key, "float", W.FloatText(**common), desc)
    if origin is list:
        elem = args[0] if args else str
        return Field(key, "list", W.Text(placeholder="comma-separated", **common), desc, elem=elem)
    if origin is dict:
        return Field(key, "dict", W.Textarea(placeholder="{}", rows=2, **common), desc)
    if ann is str:
        return Field(key, "str", W.Text(**common), desc)
    return Field(key, "yaml", W.Text(**common), desc)


def notebook_field(key: str, meta: Mapping[str, Any]) -> Field:
    common = {"description": key, "style": DESC_STYLE, "layout": WIDE}
    help_text = f"{meta['help']} (used by {', '.join(meta['steps'])})"
    kind = meta["type"]
    widget = {
        "int": lambda: W.IntText(**common), "float": lambda: W.FloatText(**common),
        "bool": lambda: W.Checkbox(indent=True, **common),
    }.get(kind, lambda: W.Text(**common))()
    return Field(key, {"list": "yaml", "dict": "dict"}.get(kind, kind if kind in ("int", "float", "bool") else "str"), widget, help_text)
