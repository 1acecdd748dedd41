"""Execute the numbered notebooks in order with papermill and export their reports.

The input notebook plus its parameters is the record; the executed copy in the run
directory is the log of what happened (papermill's model, STYLE.md).

A run keeps ``status.json`` up to date (overall state and each step's state), so a control
panel or a person can follow it from outside. A run can be stopped cleanly: set the ``stop``
event, or send the runner process :data:`STOP_SIGNAL` (SIGUSR1; SIGTERM and SIGINT belong to
nbclient while a notebook runs). The running notebook's kernel is then interrupted, the steps
that finished keep their executed notebook and HTML, the kernel is shut down by papermill as
after any error, and the run ends with status ``stopped``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..core import atomic
from ..core import config as C
from ..core.notebook import find_project_root
from ..core.progress_bars import BATCH_ENV, progress
from . import artifacts as A
from .report import export_html
from .runs import Run, new_run
from .steps import resolve_parameters

logger = logging.getLogger(__name__)

#: Pipeline order. Each name is a notebook ``notebooks/<name>.ipynb``.
PIPELINE: tuple[str, ...] = A.STEPS
KERNEL_NAME = "python3"
RUNNER_KEYS = ("run_dir",)  # injected by the runner, never taken from YAML
#: Python types a value may have for each type name papermill infers for a notebook parameter.
_PY_TYPES = {"int": (int,), "float": (float, int), "str": (str,), "bool": (bool,), "list": (list,), "dict": (dict,)}
#: Per-run state file (read by the control panel's reports list and by sweeps).
STATUS_NAME = A.STATUS.path
#: Signal that asks a runner process to stop cleanly (``kill -USR1 <pid>``).
STOP_SIGNAL = signal.SIGUSR1
#: How often a stop request re-interrupts the kernel (a cell may be between statements).
INTERRUPT_EVERY_S = 1.0


class RunnerError(RuntimeError):
    """A notebook failed or the run could not start; the message names the notebook."""


class RunStopped(RunnerError):
    """The run was stopped on request; finished steps are kept."""


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


def check_notebook_value(value: Any, declared_type: str) -> str | None:
    """Why ``value`` does not fit a notebook parameter of papermill type ``declared_type``
    ("must be int, got 'a'"), or None if it fits. A bool is not accepted as a number, and a
    type papermill could not infer accepts anything."""
    types = _PY_TYPES.get(declared_type)
    if types and (not isinstance(value, types) or (declared_type != "bool" and isinstance(value, bool))):
        return f"must be {declared_type}, got {value!r}"
    return None


def plan_parameters(
    values: Mapping[str, Any], steps: Sequence[str], root: Path | None = None, source: str = "parameters"
) -> tuple[C.Config, dict[str, dict[str, Any]]]:
    """Check every key before anything runs and split the values per notebook.

    Keys are pipeline parameters (:class:`synapse_nb.core.config.Config`) or display parameters
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
        elif error := check_notebook_value(value, nb_only[key]):
            problems.append(f"parameter '{key}' {error}")
    if problems:
        raise C.ConfigError(f"invalid parameters in {source}:\n  " + "\n  ".join(problems))
    cfg = resolve_parameters(C.make_config(cfg_values, source=source))
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
    stop: threading.Event | None = None,
) -> RunResult:
    """Run the pipeline notebooks into a run directory and export each one to HTML.

    ``values`` is a flat parameter mapping or a YAML file of one. A failing notebook stops
    the run (later steps need its output); its executed copy and HTML are kept. Setting
    ``stop`` (or :data:`STOP_SIGNAL` when none is given) ends the run with
    :class:`RunStopped` after interrupting the running notebook.
    """
    if stop is not None:
        return _run_pipeline(values, run_dir, runs_root, reports_root, only, start, cell_timeout, stop)
    stop = threading.Event()
    with stop_on_signal(stop):
        return _run_pipeline(values, run_dir, runs_root, reports_root, only, start, cell_timeout, stop)


def _run_pipeline(values, run_dir, runs_root, reports_root, only, start, cell_timeout, stop: threading.Event) -> RunResult:
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
    C.save_config(cfg, run.file(A.PARAMS))
    run.save_versions()
    logger.info("run %s: steps %s with %s", run.path, ", ".join(steps), source)
    os.environ[BATCH_ENV] = "1"
    os.environ.setdefault("NUMBA_CACHE_DIR", str(root / ".numba_cache"))
    result = RunResult(run)
    status = RunStatus(run.path, steps, source)
    bar = progress(steps, desc="pipeline", unit="notebook", file=sys.stderr)
    for step in bar:
        if stop.is_set():
            break
        bar.set_postfix_str(step)
        executed = run.file(A.NOTEBOOK, step=step)
        executed.parent.mkdir(parents=True, exist_ok=True)
        params = {**per_step[step], "run_dir": str(run.path.resolve())}
        status.step(step, "running")
        t0 = time.perf_counter()
        error = ""
        try:
            with interrupt_kernel_on_stop(stop):
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
        except Exception as exc:
            if not stop.is_set():
                status.step(step, "failed", seconds=time.perf_counter() - t0, error=repr(exc))
                status.finish("failed", repr(exc))
                raise
            error = repr(exc)
        seconds = time.perf_counter() - t0
        state = ("stopped" if stop.is_set() else "failed") if error else "ok"
        html = export_html(executed, run.file(A.HTML, step=step), strict=not error) if executed.exists() else None
        result.steps.append(StepResult(step, state, seconds, executed, html, error))
        status.step(step, state, seconds=seconds, html=html, error=error)
        logger.info("step %s %s in %.1f s%s", step, state, seconds, f": {error}" if error else "")
        if error or stop.is_set():
            break
    if reports_root is not None:
        publish_reports(run, Path(reports_root))
    if stop.is_set() and not (result.ok and len(result.steps) == len(steps)):
        done = [s.notebook for s in result.steps if s.status == "ok"]
        message = f"run stopped on request; finished steps kept: {', '.join(done) or 'none'} (in {run.path})"
        status.finish("stopped", message)
        logger.warning("%s", message)
        raise RunStopped(message)
    if not result.ok:
        failed = result.steps[-1]
        status.finish("failed", f"{failed.notebook}: {failed.error}")
        raise RunnerError(f"notebook {failed.notebook} failed ({failed.error}); see {failed.executed} and {run.log_path}")
    status.finish("ok")
    return result


# --------------------------------------------------------------------------------------
# status file and clean stop
# --------------------------------------------------------------------------------------
class RunStatus:
    """Writes ``status.json``: the run's state and each step's, rewritten atomically on change."""

    def __init__(self, run_path: Path, steps: Sequence[str], source: str = "") -> None:
        self.path = Path(run_path) / STATUS_NAME
        self.run_path = Path(run_path)
        self.data: dict[str, Any] = {
            "status": "running",
            "steps": list(steps),
            "step_status": {s: {"status": "pending"} for s in steps},
            "source": source,
            "pid": os.getpid(),
            "started": _now(),
            "finished": None,
            "error": "",
        }
        self._write()

    def step(self, name: str, state: str, seconds: float | None = None, html: Path | None = None, error: str = "") -> None:
        entry: dict[str, Any] = {"status": state}
        if state == "running":
            entry["started"] = _now()
        else:
            entry.update(self.data["step_status"].get(name, {}))
            entry["status"] = state
        if seconds is not None:
            entry["seconds"] = round(float(seconds), 1)
        if html is not None:
            entry["html"] = os.path.relpath(html, self.run_path)
        if error:
            entry["error"] = error
        self.data["step_status"][name] = entry
        self._write()

    def finish(self, state: str, error: str = "") -> None:
        for entry in self.data["step_status"].values():
            if entry["status"] in ("pending", "running"):
                entry["status"] = "not run"
        self.data.update(status=state, finished=_now(), error=error)
        self._write()

    def _write(self) -> None:
        atomic.write_text(self.path, json.dumps(self.data, indent=2, default=str))


def read_status(run_path: str | Path) -> dict[str, Any]:
    """A run's ``status.json`` (empty when it has none or it cannot be read)."""
    path = Path(run_path) / STATUS_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


@contextlib.contextmanager
def stop_on_signal(stop: threading.Event, signum: int = STOP_SIGNAL) -> Iterator[threading.Event]:
    """Turn ``signum`` into ``stop.set()`` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signum, lambda *_: stop.set())
    try:
        yield stop
    finally:
        # None: the previous handler was not set from Python (signal.signal refuses None)
        signal.signal(signum, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def interrupt_kernel_on_stop(stop: threading.Event) -> Iterator[None]:
    """While the block runs, a set ``stop`` interrupts the kernels this process started in it.

    A KeyboardInterrupt in the running cell makes papermill end the notebook as after any
    error (its kernel is shut down, the executed copy written); the interrupt is repeated
    because between two cells there is nothing to interrupt.
    """
    import psutil

    since = time.time() - 1.0  # process start times have a coarse resolution
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            if not stop.is_set():
                continue
            logger.warning("stop requested: interrupting the running notebook")
            while not done.is_set():
                for kernel in _kernels_since(psutil, since):
                    with contextlib.suppress(psutil.Error):
                        kernel.send_signal(signal.SIGINT)
                done.wait(INTERRUPT_EVERY_S)

    thread = threading.Thread(target=watch, name="synapse-nb-stop", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)


def _kernels_since(psutil, since: float) -> list:
    out = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.create_time() >= since and any("ipykernel" in part for part in child.cmdline()):
                out.append(child)
    return out


def publish_reports(run: Run, reports_root: Path) -> Path:
    """Copy the run's HTML under ``reports/<run name>/`` where users look for reports."""
    target = reports_root / run.name
    if run.html_dir.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        for html in run.html_dir.glob("*.html"):
            shutil.copy2(html, target / html.name)
    return target
