"""Execute the numbered notebooks in order with papermill and export their reports.

The input notebook plus its parameters is the record; the executed copy in the run
directory is the log of what happened (papermill's model, STYLE.md).
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import config as C
from .notebook import find_project_root
from .progress import BATCH_ENV, progress
from .report import export_html
from .runs import Run, new_run

logger = logging.getLogger(__name__)

#: Pipeline order. Each name is a notebook ``notebooks/<name>.ipynb``.
PIPELINE: tuple[str, ...] = ("01_load", "02_extract", "03_reduce", "04_cluster", "07_report")
KERNEL_NAME = "python3"
RUNNER_KEYS = ("run_dir",)  # injected by the runner, never taken from YAML
_PY_TYPES = {"int": (int,), "float": (float, int), "str": (str,), "bool": (bool,), "list": (list,), "dict": (dict,)}


class RunnerError(RuntimeError):
    """A notebook failed or the run could not start; the message names the notebook."""


@dataclass
class StepResult:
    notebook: str
    status: str
    seconds: float
    executed: Path
    html: Path | None = None
    error: str = ""


@dataclass
class RunResult:
    run: Run
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.status == "ok" for s in self.steps)


def notebooks_dir(root: Path | None = None) -> Path:
    root = root or find_project_root()
    if root is None:
        raise RunnerError("cannot find the project folder (with pyproject.toml and notebooks/): run from inside it")
    return root / "notebooks"


def notebook_parameters(name: str, root: Path | None = None) -> dict[str, dict[str, Any]]:
    """The ``parameters`` cell of a notebook as papermill sees it."""
    import papermill

    path = notebooks_dir(root) / f"{name}.ipynb"
    if not path.is_file():
        raise RunnerError(f"notebook {path} not found; known steps: {', '.join(PIPELINE)}")
    return papermill.inspect_notebook(str(path))


def plan_parameters(
    values: Mapping[str, Any], steps: Sequence[str], root: Path | None = None, source: str = "parameters"
) -> tuple[C.Config, dict[str, dict[str, Any]]]:
    """Check every key before anything runs and split the values per notebook.

    Keys are pipeline parameters (:class:`synapse_nb.config.Config`) or display parameters
    declared in a notebook's ``parameters`` cell; anything else is an error naming the key
    (papermill itself would only warn).
    """
    declared = {step: notebook_parameters(step, root) for step in steps}
    nb_only: dict[str, str] = {}
    for params in declared.values():
        for key, meta in params.items():
            if key not in C.Config.model_fields and key not in RUNNER_KEYS:
                nb_only[key] = meta.get("inferred_type_name", "None")
    cfg_values = {k: v for k, v in values.items() if k in C.Config.model_fields}
    problems = []
    for key, value in values.items():
        if key in C.Config.model_fields:
            continue
        if key in RUNNER_KEYS:
            problems.append(f"parameter '{key}' is set by the runner, not in the parameter file")
        elif key not in nb_only:
            known = sorted({*C.Config.model_fields, *nb_only})
            problems.append(f"unknown parameter '{key}'; known parameters: {', '.join(known)}")
        else:
            want = nb_only[key]
            types = _PY_TYPES.get(want)
            if types and (not isinstance(value, types) or (want != "bool" and isinstance(value, bool))):
                problems.append(f"parameter '{key}' must be {want}, got {value!r}")
    if problems:
        raise C.ConfigError(f"invalid parameters in {source}:\n  " + "\n  ".join(problems))
    cfg = C.make_config(cfg_values, source=source)
    resolved = {**cfg.to_dict(), **{k: v for k, v in values.items() if k in nb_only}}
    per_step = {step: {k: v for k, v in resolved.items() if k in params} for step, params in declared.items()}
    return cfg, per_step


def select_steps(only: Sequence[str] | None = None, start: str | None = None) -> list[str]:
    """Steps to run: all, ``only`` some, or everything ``from`` one on."""
    steps = list(PIPELINE)
    for name in [*(only or []), *([start] if start else [])]:
        if name not in steps:
            raise RunnerError(f"unknown step {name!r}; steps are {', '.join(steps)}")
    if only:
        steps = [s for s in steps if s in only]
    if start:
        steps = steps[steps.index(start):]
    return steps


def run_pipeline(
    values: Mapping[str, Any] | str | Path,
    run_dir: str | Path | None = None,
    runs_root: str | Path = "runs",
    reports_root: str | Path | None = "reports",
    only: Sequence[str] | None = None,
    start: str | None = None,
    cell_timeout: int = 1800,
) -> RunResult:
    """Run the pipeline notebooks into a run directory and export each one to HTML.

    ``values`` is a flat parameter mapping or a YAML file of one. A failing notebook stops
    the run (later steps need its output); its executed copy and HTML are kept.
    """
    import papermill

    root = find_project_root()
    if root is None:
        raise RunnerError("cannot find the project folder (with pyproject.toml and notebooks/): run from inside it")
    source = str(values) if isinstance(values, (str, Path)) else "parameters"
    values = C.read_yaml(values) if isinstance(values, (str, Path)) else dict(values)
    steps = select_steps(only, start)
    cfg, per_step = plan_parameters(values, steps, root, source)

    run = Run(Path(run_dir)) if run_dir else new_run(runs_root)
    run.path.mkdir(parents=True, exist_ok=True)
    run.attach_log()
    C.save_config(cfg, run.path / "params.yaml")
    run.save_versions()
    logger.info("run %s: steps %s with %s", run.path, ", ".join(steps), source)
    os.environ[BATCH_ENV] = "1"
    os.environ.setdefault("NUMBA_CACHE_DIR", str(root / ".numba_cache"))
    result = RunResult(run)
    bar = progress(steps, desc="pipeline", unit="notebook", file=sys.stderr)
    for step in bar:
        bar.set_postfix_str(step)
        executed = run.notebooks_dir / f"{step}.ipynb"
        executed.parent.mkdir(parents=True, exist_ok=True)
        params = {**per_step[step], "run_dir": str(run.path.resolve())}
        t0 = time.perf_counter()
        error = ""
        try:
            papermill.execute_notebook(
                str(root / "notebooks" / f"{step}.ipynb"),
                str(executed),
                parameters=params,
                kernel_name=KERNEL_NAME,
                cwd=str(root),
                progress_bar=False,
                start_timeout=180,
                execution_timeout=cell_timeout,
            )
        except papermill.PapermillExecutionError as exc:
            error = f"{exc.ename}: {exc.evalue}"
        seconds = time.perf_counter() - t0
        html = export_html(executed, run.html_dir / f"{step}.html", strict=not error) if executed.exists() else None
        status = "failed" if error else "ok"
        result.steps.append(StepResult(step, status, seconds, executed, html, error))
        logger.info("step %s %s in %.1f s%s", step, status, seconds, f": {error}" if error else "")
        if error:
            break
    if reports_root is not None:
        publish_reports(run, Path(reports_root))
    if not result.ok:
        failed = result.steps[-1]
        raise RunnerError(f"notebook {failed.notebook} failed ({failed.error}); see {failed.executed} and {run.log_path}")
    return result


def publish_reports(run: Run, reports_root: Path) -> Path:
    """Copy the run's HTML under ``reports/<run name>/`` where users look for reports."""
    target = reports_root / run.name
    if run.html_dir.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        for html in run.html_dir.glob("*.html"):
            shutil.copy2(html, target / html.name)
    return target
