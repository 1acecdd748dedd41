"""The parameter form of the control panel: every pipeline parameter as a widget.

The form is generated from :class:`synapse_nb.core.config.Config` (type, ``Literal`` choices,
``ge``/``le`` bounds, description; sections from :data:`synapse_nb.core.config.SECTIONS`)
plus the display parameters the pipeline notebooks declare in their ``parameters`` cells, so
a key added anywhere appears here without a change to this file. Every change is validated at
once and the error is shown next to the field; files are written atomically and only when
every value is valid.
"""
from __future__ import annotations

import ast
import html
import logging
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import ipywidgets as W
import yaml
from pydantic import ValidationError

from ..core import atomic
from ..core import config as C
from ..core.errors import bounded, shorten, validation_problems
from ..core.notebook import find_project_root
from ..data.seed_layout import discover_bboxes
from ..pipeline import runner
from ..pipeline import steps as pipeline_steps
from .fields import DESC_STYLE, Field, field_for, notebook_field

logger = logging.getLogger(__name__)

PARAMETERS_DIR = "parameters"
#: Notebook parameters the panel does not offer: set by the runner, or interactive-only.
HIDDEN_NOTEBOOK_KEYS = ("run_dir", "interactive")
NOTEBOOK_SECTION = "notebook display"
#: Folders the pipeline writes (need not exist yet); other ``*_dir`` keys are inputs.
OUTPUT_DIRS = ("cache_dir",)
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.ya?ml$")
#: Parameter files shipped with the project: Save never replaces them (compared ignoring case).
SHIPPED_FILES = ("demo.yaml", "demo_hard.yaml", "ci.yaml", "vnc.yaml", "sweep_segtypes.yaml", "dataset_example.yaml",
                 "demo_pretrain.yaml", "connectome_demo.yaml", "connectome_example.yaml")


def message_html(text: str, kind: str = "error") -> str:
    """A short coloured message (user text escaped)."""
    if not text:
        return ""
    color = {"error": "#b00020", "warning": "#a15c00", "ok": "#1b5e20", "info": "#555"}[kind]
    body = html.escape(text, quote=False).replace("\n", "<br>")  # element text: quotes are harmless
    return f'<span class="snb-msg snb-{kind}" style="color:{color};font-size:12px">{body}</span>'


def set_options(dropdown: W.Dropdown, options: list) -> None:
    """New choices for a dropdown, keeping its value when still offered, else the first
    (ipywidgets 8 leaves the value empty when the options change)."""
    keep = dropdown.value
    dropdown.options = options
    values = [o[1] if isinstance(o, tuple) else o for o in options]
    dropdown.value = keep if keep in values else (values[0] if values else None)


def config_sections() -> dict[str, str]:
    """Key -> section title from :data:`synapse_nb.core.config.SECTIONS`, in section order
    (a key missing there, which a test forbids, would land in "other")."""
    out = {key: title for title, keys in C.SECTIONS.items() for key in keys if key in C.Config.model_fields}
    out.update({k: "other" for k in C.Config.model_fields if k not in out})
    return out


def notebook_extras(root: Path | None = None) -> dict[str, dict[str, Any]]:
    """Display parameters of the pipeline notebooks (not Config keys): name -> type, default, help, steps."""
    out: dict[str, dict[str, Any]] = {}
    for step in runner.PIPELINE:
        try:
            declared = runner.notebook_parameters(step, root)
        except Exception as exc:  # noqa: BLE001 - a missing notebook must not break the panel
            logger.warning("cannot read the parameters of %s: %s", step, exc)
            continue
        for key, meta in declared.items():
            if key in C.Config.model_fields or key in HIDDEN_NOTEBOOK_KEYS or key in runner.RUNNER_KEYS:
                continue
            try:
                default = ast.literal_eval(meta.get("default", "None"))
            except (ValueError, SyntaxError):
                default = None
            entry = out.setdefault(key, {"type": meta.get("inferred_type_name", "str"), "default": default,
                                         "help": meta.get("help", ""), "steps": []})
            entry["steps"].append(step)
    return out


# --------------------------------------------------------------------------------------
# the form
# --------------------------------------------------------------------------------------
class ConfigForm:
    """Every pipeline parameter as a widget, validated on each change."""

    def __init__(self, cfg: C.Config | None = None, extras: Mapping[str, Any] | None = None, root: Path | None = None,
                 params_dir: str | Path | None = None) -> None:
        self.root = Path(root or find_project_root() or Path.cwd())
        self.parameters_dir = Path(params_dir) if params_dir else self.root / PARAMETERS_DIR
        self.fields: dict[str, Field] = {k: field_for(k, info) for k, info in C.Config.model_fields.items()}
        self.extra_meta = notebook_extras(self.root)
        self.fields.update({k: notebook_field(k, m) for k, m in self.extra_meta.items()})
        self.widgets: dict[str, W.Widget] = {k: f.widget for k, f in self.fields.items()}
        self.status = W.HTML()
        self.status.add_class("snb-form-status")
        self._errors: dict[str, str] = {}
        self._warnings: dict[str, str] = {}
        self._refusals: dict[str, str] = {}  # key -> why the dataset cannot serve it
        #: opened datasets by :func:`synapse_nb.pipeline.steps.dataset_key` (shared with the preview)
        self.datasets: dict[str, list] = {}
        self._checked: list[Callable[[], None]] = []
        self._listeners: list[Callable[[C.Config], None]] = []
        self._quiet = False
        self._config: C.Config | None = None
        self.source: Path | None = None  # the file last loaded
        self.skipped_files: dict[str, str] = {}  # file name -> why parameter_files() left it out
        self.set_values(cfg.to_dict() if cfg else {}, extras or {})
        for f in self.fields.values():
            f.widget.observe(self._changed, names="value")
        self.widget = self._layout()

    # --- values -----------------------------------------------------------------------
    def set_values(self, values: Mapping[str, Any], extras: Mapping[str, Any] | None = None, source: str = "parameters") -> None:
        """Show ``values`` (defaults for keys not given) and validate once; ConfigError naming ``source`` if invalid."""
        cfg = C.make_config({k: v for k, v in values.items() if k in C.Config.model_fields}, source=source)
        given = {**{k: v for k, v in values.items() if k in self.extra_meta}, **(extras or {})}
        problems = [f"parameter '{k}': {e}" for k, v in given.items() if (e := self._type_error(k, v))]
        if problems:  # checked before any widget changes: a widget would refuse the value half-way
            raise C.ConfigError(f"invalid parameters in {source}:\n  " + "\n  ".join(problems))
        self._quiet = True
        try:
            self._refresh_bboxes(cfg.raw_dir, getattr(cfg, "dataset", ""))
            for key, value in cfg.to_dict().items():
                self.fields[key].set(value)
            for key, meta in self.extra_meta.items():
                self.fields[key].set(given.get(key, meta["default"]))
        finally:
            self._quiet = False
        self.validate()
        self._notify()

    def _parsed(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
        cfg_values, extras, errors = {}, {}, {}
        for key, f in self.fields.items():
            try:
                value = f.get()
            except ValueError as exc:
                errors[key] = str(exc)
                continue
            (cfg_values if key in C.Config.model_fields else extras)[key] = value
        return cfg_values, extras, errors

    def validate(self) -> dict[str, str]:
        """Check every field; show errors next to them; returns key -> error ("" = the form)."""
        cfg_values, extras, errors = self._parsed()
        self._config = None
        try:
            self._config = C.Config(**cfg_values)
        except ValidationError as exc:
            for problem in validation_problems(exc):
                msg = problem.message
                if problem.field:
                    errors.setdefault(problem.field, msg)
                else:
                    named = [k for k in C.Config.model_fields if re.search(rf"\b{k}\b", msg)]
                    for k in named or [""]:
                        errors.setdefault(k, msg)
        for key, value in extras.items():
            if error := self._type_error(key, value):
                errors[key] = error
        self._errors = errors
        self._warnings = self._path_warnings(cfg_values)
        self._refusals = self._dataset_refusals() if not errors else {}
        for key, f in self.fields.items():
            if key in errors:
                text, kind = errors[key], "error"
            elif key in self._refusals:
                text, kind = self._refusals[key], "error"
            else:
                text, kind = self._warnings.get(key, ""), "warning"
            f.message.value = message_html(text, kind)
        if errors:
            names = ", ".join(k or "form" for k in errors)
            self.status.value = message_html(f"{len(errors)} parameter(s) need fixing: {names}" + (f" ({errors['']})" if "" in errors else ""))
        elif self._refusals:
            self.status.value = message_html("cannot run on this dataset: " + "; ".join(self._refusals.values()))
        elif self._warnings:
            self.status.value = message_html(f"all parameters valid; check {', '.join(self._warnings)} (marked in orange)", "warning")
        else:
            self.status.value = message_html("all parameters valid", "ok")
        for callback in list(self._checked):
            callback()
        return dict(errors)

    def _dataset_refusals(self) -> dict[str, str]:
        """What the run command would refuse of these parameters on their dataset (the same check)."""
        if self._config is None:
            return {}
        if len(self.datasets) > 4:  # paths changed often: keep the memo small
            self.datasets.clear()
        return pipeline_steps.dataset_refusals(self._config, root=self.root, memo=self.datasets)

    def refusals(self) -> dict[str, str]:
        """Key -> why the dataset cannot serve that value (a run would be refused); empty when it can."""
        return dict(self._refusals)

    def open_dataset(self, cfg: C.Config) -> list:
        """The bboxes ``cfg`` names (paths relative to the project), opened lazily once per dataset."""
        resolved = pipeline_steps.with_data_paths(cfg, self.root)
        key = pipeline_steps.dataset_key(resolved)
        if key not in self.datasets:
            from ..data.datasets import open_dataset

            self.datasets[key] = open_dataset(resolved)
        return self.datasets[key]

    def on_checked(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every validation, valid or not (e.g. to enable a Run button)."""
        self._checked.append(callback)

    def _type_error(self, key: str, value: Any) -> str:
        """Why a notebook display parameter's value has the wrong type ("" if it is fine), as the runner checks it."""
        return runner.check_notebook_value(value, self.extra_meta[key]["type"]) or ""

    def _path_warnings(self, values: Mapping[str, Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        replaced_by_dataset = bool(values.get("dataset"))
        for key, value in values.items():
            if not isinstance(value, str) or not value or key in OUTPUT_DIRS:
                continue
            path = self.resolve(value)
            if key.endswith("_dir") and not replaced_by_dataset and not path.is_dir():
                out[key] = f"folder not found: {path}"
            elif (key.endswith("_path") or key == "dataset") and not path.is_file():
                out[key] = f"file not found: {path}"
        bboxes = values.get("bboxes") or []
        raw = self.resolve(str(values.get("raw_dir", "")))
        missing = [b for b in bboxes if raw.is_dir() and not (raw / b).is_dir()]
        if missing:
            out["bboxes"] = f"not in raw_dir: {', '.join(missing)}"
        return out

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.root / p

    def errors(self) -> dict[str, str]:
        return dict(self._errors)

    def warnings(self) -> dict[str, str]:
        return dict(self._warnings)

    def config(self) -> C.Config:
        """The validated config; ConfigError naming every bad key otherwise."""
        if self._errors or self._config is None:
            lines = [f"parameter '{k}': {v}" if k else v for k, v in self._errors.items()]
            raise C.ConfigError("invalid parameters in the panel:\n  " + "\n  ".join(lines))
        return self._config

    def config_or_none(self) -> C.Config | None:
        return None if self._errors else self._config

    def parameters(self) -> dict[str, Any]:
        """Config keys plus the notebook display parameters: what a run or a YAML gets."""
        cfg = self.config()
        _, extras, _ = self._parsed()
        return {**cfg.to_dict(), **extras}

    def on_change(self, callback: Callable[[C.Config], None]) -> None:
        """Call ``callback(config)`` after every change that leaves the form valid."""
        self._listeners.append(callback)

    def _changed(self, change) -> None:
        if self._quiet:
            return
        if change["owner"] in (self.widgets["raw_dir"], self.widgets.get("dataset")):
            self._quiet = True
            try:
                self._refresh_bboxes(str(self.widgets["raw_dir"].value), str(getattr(self.widgets.get("dataset"), "value", "")))
            finally:
                self._quiet = False
        self.validate()
        self._notify()

    def _notify(self) -> None:
        cfg = self.config_or_none()
        if cfg is not None:
            for callback in list(self._listeners):
                try:
                    callback(cfg)
                except Exception as exc:  # noqa: BLE001 - shown, never a traceback in the page
                    logger.exception("panel update failed")
                    self.status.value = message_html(f"update failed: {exc}")

    def _refresh_bboxes(self, raw_dir: str, dataset: str = "") -> None:
        """bbox choices = the dataset description's bboxes, or the folders under raw_dir
        (plus any selected one, flagged if missing)."""
        try:
            if dataset:
                from ..data.description import load_dataset_description

                found = list(load_dataset_description(self.resolve(dataset)).spec.bboxes)
            else:
                found = discover_bboxes(self.resolve(raw_dir)) if raw_dir else []
        except Exception:  # noqa: BLE001 - a bad path or file is reported by validation, not here
            found = []
        box = self.widgets["bboxes"]
        selected = [b for b in box.value]
        box.options = found + [b for b in selected if b not in found]
        box.value = tuple(selected)

    # --- files ------------------------------------------------------------------------
    def params_dir(self) -> Path:
        return self.parameters_dir

    def save(self, name: str, overwrite: bool = False) -> Path:
        """Write the parameters to ``parameters/<name>`` atomically; nothing is written if a value
        is invalid, if the file exists and ``overwrite`` is false, or if it is a shipped file."""
        if not FILE_NAME.match(name or "") or ".." in name:
            raise C.ConfigError(f"invalid file name {shorten(repr(name))}: use letters, digits, '_', '-', '.' and end in .yaml")
        if name.lower() in SHIPPED_FILES:
            raise C.ConfigError(f"{name} is shipped with synapse-nb and is never overwritten: save under another name")
        values = self.parameters()
        target = self.params_dir() / name
        if target.exists() and not overwrite:
            raise C.ConfigError(f"{target} exists: tick 'overwrite' to replace it, or choose another name")
        text = "# saved from the control panel (notebooks/00_control_panel.ipynb)\n" + yaml.safe_dump(values, sort_keys=False)
        return atomic.write_text(target, text)

    def load(self, path: str | Path) -> None:
        """Load a flat parameter YAML (a relative name is in parameters/); on any error the form is left as it was."""
        path = Path(path)
        path = path if path.is_absolute() else self.params_dir() / path
        data = C.read_yaml(path)
        if set(data) & {"base", "grid"}:
            raise C.ConfigError(f"{path} is a sweep file (base + grid): start it from the Run tab")
        if _is_dataset_description(data):
            raise C.ConfigError(f"{path} is a dataset description: put its path in the 'dataset' parameter instead")
        unknown = sorted(k for k in data if k not in C.Config.model_fields and k not in self.extra_meta)
        if unknown:
            named = ", ".join(bounded([shorten(repr(k), 60) for k in unknown], what="unknown"))
            raise C.ConfigError(f"{path}: unknown parameter(s) [{named}]; known: {', '.join([*C.Config.model_fields, *self.extra_meta])}")
        self.set_values(data, source=str(path))  # validates everything before changing a widget
        self.source = path

    def reset(self) -> None:
        """Back to the defaults of every parameter."""
        self.set_values({})

    def parameter_files(self) -> list[str]:
        """Run parameter files in parameters/ (sweeps and dataset descriptions are left out).

        A file with bad YAML or values is listed, so that loading it says what is wrong; one
        that cannot be read as text at all (not UTF-8, too large) is left out and noted in
        :attr:`skipped_files`, so one such file never keeps the panel from opening.
        """
        folder = self.params_dir()
        out: list[str] = []
        self.skipped_files = {}
        for p in sorted(folder.glob("*.y*ml")) if folder.is_dir() else []:
            if not p.is_file():
                continue
            try:
                C.read_text(p)
            except C.ConfigError as exc:
                logger.warning("parameter file left out of the panel: %s", exc)
                self.skipped_files[p.name] = str(exc)
                continue
            try:
                data = C.read_yaml(p)
            except C.ConfigError:
                out.append(p.name)  # listed, so that loading it says what is wrong
                continue
            if not (set(data) & {"base", "grid"}) and not _is_dataset_description(data):
                out.append(p.name)
        return out

    # --- layout -----------------------------------------------------------------------
    def _layout(self) -> W.Widget:
        sections: dict[str, list[W.Widget]] = {}
        for key, section in config_sections().items():
            sections.setdefault(section, []).append(self.fields[key].row)
        for key in self.extra_meta:
            sections.setdefault(NOTEBOOK_SECTION, []).append(self.fields[key].row)
        acc = W.Accordion(children=[W.VBox(rows) for rows in sections.values()])
        for i, title in enumerate(sections):
            acc.set_title(i, title)
        acc.selected_index = 0
        return W.VBox([self.status, acc])


def _is_dataset_description(data: Mapping[str, Any]) -> bool:
    """Whether a YAML holds a dataset or connectome description (not run parameters)."""
    from ..data.connectome import is_connectome_description
    from ..data.description import is_description

    return bool(is_description(data)) or bool(is_connectome_description(data))


class ParameterFiles:
    """Save / load / reset buttons for a form; messages instead of tracebacks."""

    def __init__(self, form: ConfigForm) -> None:
        self.form = form
        self.name = W.Text(value="my_parameters.yaml", description="save as", style=DESC_STYLE, layout=W.Layout(width="360px"))
        self.save_button = W.Button(description="Save", icon="save", button_style="primary")
        self.overwrite = W.Checkbox(value=False, description="overwrite", indent=False, layout=W.Layout(width="110px"))
        self.overwrite.add_class("snb-files-overwrite")
        self.choice = W.Dropdown(options=form.parameter_files(), description="load", style=DESC_STYLE, layout=W.Layout(width="360px"))
        self.load_button = W.Button(description="Load", icon="folder-open")
        self.reset_button = W.Button(description="Reset to defaults", icon="undo")
        self.message = W.HTML()
        self.message.add_class("snb-files-message")
        self.skipped = W.HTML()  # parameter files left out of the load list, and why
        self.skipped.add_class("snb-files-skipped")
        self._show_skipped()
        self.save_button.on_click(lambda _: self.save())
        self.load_button.on_click(lambda _: self.load())
        self.reset_button.on_click(lambda _: self.reset())
        self.widget = W.VBox([
            W.HBox([self.name, self.save_button, self.overwrite]),
            W.HBox([self.choice, self.load_button, self.reset_button]),
            self.skipped,
            self.message,
        ])

    def _show_skipped(self) -> None:
        notes = [f"{name} left out: {why}" for name, why in self.form.skipped_files.items()]
        self.skipped.value = message_html("\n".join(bounded(notes, what="file(s) left out")), "warning")

    def save(self) -> Path | None:
        """Save under the name typed; an existing file is replaced only with 'overwrite' ticked
        (unticked again after each save, so every replacement is asked for)."""
        try:
            path = self.form.save(self.name.value.strip(), overwrite=self.overwrite.value)
        except (C.ConfigError, OSError) as exc:
            self.message.value = message_html(f"not saved: {exc}")
            return None
        self.overwrite.value = False
        set_options(self.choice, self.form.parameter_files())
        self._show_skipped()
        self.message.value = message_html(f"saved {path}", "ok")
        return path

    def load(self, name: str | None = None) -> bool:
        name = name or self.choice.value
        if not name:
            self.message.value = message_html(f"no parameter file in {self.form.params_dir()}")
            return False
        try:
            self.form.load(name)
        except (C.ConfigError, OSError) as exc:
            self.message.value = message_html(f"not loaded (parameters unchanged): {exc}")
            return False
        self.message.value = message_html(f"loaded {name}", "ok")
        return True

    def reset(self) -> None:
        self.form.reset()
        self.message.value = message_html("all parameters back to their defaults", "ok")
