"""The control panel and the cluster explorer (ipywidgets). A leaf: nothing else in the package imports it."""

from __future__ import annotations

from .explore import Explorer, point_rows
from .fields import Field, field_for, notebook_field
from .form import (
    ConfigForm,
    ParameterFiles,
    config_sections,
    message_html,
    notebook_extras,
    set_options,
)
from .panel import ControlPanel, control_panel, explorer, initial_parameters
from .preview import (
    SynapsePreview,
    cube_keys,
    format_value,
    morphometrics_html,
    plane_png,
    planes_at,
)
from .reports import ReportsList, RunEntry, list_runs, read_entry, report_href
from .runs import (
    RunController,
    StepRow,
    executed_progress,
    finish_status,
    log_html,
    sweep_files,
)

__all__ = [
    "ConfigForm",
    "ControlPanel",
    "Explorer",
    "Field",
    "ParameterFiles",
    "ReportsList",
    "RunController",
    "RunEntry",
    "StepRow",
    "SynapsePreview",
    "config_sections",
    "control_panel",
    "cube_keys",
    "executed_progress",
    "explorer",
    "field_for",
    "finish_status",
    "format_value",
    "initial_parameters",
    "list_runs",
    "log_html",
    "message_html",
    "morphometrics_html",
    "notebook_extras",
    "notebook_field",
    "plane_png",
    "planes_at",
    "point_rows",
    "read_entry",
    "report_href",
    "set_options",
    "sweep_files",
]
