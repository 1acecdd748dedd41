"""The control panel (notebook ``00_control_panel``), built with ipywidgets.

One widget with four tabs: the parameter form with save / load / reset
(:mod:`synapse_nb.widgets_form`, fields in :mod:`synapse_nb.widgets_fields`), the preview of one synapse (:mod:`synapse_nb.widgets_preview`),
runs and sweeps with progress, log and stop (:mod:`synapse_nb.widgets_runs`) and the reports
list (:mod:`synapse_nb.widgets_reports`). ``05_cluster`` uses :func:`explorer`
(:mod:`synapse_nb.widgets_explore`). Everything is a plain attribute, so the logic is tested
without a browser: ``panel.form.widgets["alpha"].value = 0.5; panel.config()``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import ipywidgets as W

from ..core import config as C
from ..core.notebook import find_project_root
from .explore import Explorer
from .form import ConfigForm, ParameterFiles, message_html
from .preview import SynapsePreview
from .reports import ReportsList
from .runs import RunController

__all__ = ["ConfigForm", "ControlPanel", "ParameterFiles", "control_panel", "explorer", "message_html"]

logger = logging.getLogger(__name__)

PARAMS_ENV = "SYNAPSE_NB_PARAMS"
RUNS_ENV = "SYNAPSE_NB_RUNS"
DEFAULT_PARAMS = "parameters/demo.yaml"


def initial_parameters(params: str | Path | Mapping[str, Any] | None, root: Path) -> tuple[dict[str, Any], str]:
    """Values the panel starts from and where they come from: the argument, $SYNAPSE_NB_PARAMS,
    parameters/demo.yaml, or the defaults."""
    if isinstance(params, Mapping):
        return dict(params), "the parameters given to the panel"
    source = str(params or os.environ.get(PARAMS_ENV, "") or "")
    if not source and (root / DEFAULT_PARAMS).is_file():
        source = DEFAULT_PARAMS
    if not source:
        return {}, "the default parameters"
    path = Path(source) if Path(source).is_absolute() else root / source
    return C.read_yaml(path), str(path)


class ControlPanel:
    """Configuration, synapse preview, runs and reports in one widget (notebook 00)."""

    def __init__(self, params: str | Path | Mapping[str, Any] | None = None, runs_root: str | Path = "runs",
                 reports_root: str | Path = "reports", root: Path | None = None, params_dir: str | Path | None = None) -> None:
        self.root = Path(root or find_project_root() or Path.cwd())
        runs_root = Path(runs_root) if Path(runs_root).is_absolute() else self.root / runs_root
        self.header = W.HTML()
        self.form = ConfigForm(root=self.root, params_dir=params_dir)
        try:
            values, source = initial_parameters(params, self.root)
            self.form.set_values(values, source=source)
            self.header.value = message_html(f"Started from {source}.", "info")
        except C.ConfigError as exc:
            self.header.value = message_html(f"Could not start from the given parameters (defaults shown): {exc}")
        self.files = ParameterFiles(self.form)
        self.preview = SynapsePreview(self.form)
        self.runs = RunController(self.form, root=self.root, runs_root=runs_root, reports_root=reports_root)
        self.reports = ReportsList(runs_root, root=self.root)
        self.runs.on_finish(lambda _: self.reports.refresh())
        tabs = W.Tab(children=[
            W.VBox([self.files.widget, self.form.widget]), self.preview.widget, self.runs.widget, self.reports.widget,
        ])
        for i, title in enumerate(("Parameters", "Preview", "Run", "Reports")):
            tabs.set_title(i, title)
        tabs.observe(self._tab_changed, names="selected_index")
        self.tabs = tabs
        title = W.HTML("<h2 style='margin:4px 0'>synapse-nb control panel</h2>")
        self.widget = W.VBox([title, self.header, tabs])
        self.widget.add_class("snb-panel")

    def _tab_changed(self, change) -> None:
        if change["new"] == 3:
            self.reports.refresh()

    def config(self) -> C.Config:
        return self.form.config()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def control_panel(params: str | Path | Mapping[str, Any] | None = None, runs_root: str | Path = "runs",
                  reports_root: str | Path = "reports") -> ControlPanel:
    """The panel of ``00_control_panel``.

    ``params`` (or $SYNAPSE_NB_PARAMS) is a YAML to start from; $SYNAPSE_NB_RUNS, when set,
    replaces the default runs folder (how a served page is pointed elsewhere, e.g. in tests).
    """
    if str(runs_root) == "runs" and os.environ.get(RUNS_ENV):
        runs_root = os.environ[RUNS_ENV]
    return ControlPanel(params or None, runs_root=runs_root, reports_root=reports_root)


def explorer(frame, cubes, cfg, **kwargs):
    """Clickable 2-D map of ``05_cluster`` (see :mod:`synapse_nb.widgets_explore`)."""
    return Explorer(frame, cubes, cfg, **kwargs)
