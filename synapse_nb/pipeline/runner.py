"""Execute the numbered notebooks in order with papermill and export their reports.

The input notebook plus its parameters is the record; the executed copy in the run
directory is the log of what happened (papermill's model, STYLE.md).

A run keeps ``status.json`` up to date (overall state and each step's state), so a control
panel or a person can follow it from outside. A run can be stopped cleanly: set the ``stop``
event, or send the runner process :data:`STOP_SIGNAL` (SIGUSR1; SIGTERM and SIGINT belong to
nbclient while a notebook runs). The running notebook's kernel is then interrupted, the steps
that finished keep their executed notebook and HTML, the kernel is shut down by papermill as
after any error, and the run ends with status ``stopped``.

A run directory is checked before anything is written (:func:`check_run_dir`): a run can
never land on the project, the runs or the reports folder. A rerun of a step that fails
keeps the step's earlier good report and executed notebook, and writes its own beside them
(``html/<step>.failed.html``); ``status.json`` keeps the records of steps not run this time.
Papermill's saves of the executed notebook are atomic, a dead kernel or a full disk is a
failed step with a one-line reason, and a status left "running" by a killed runner reads as
"interrupted" (the run resumes with ``--run-dir`` and ``--from``).
"""
from __future__ import annotations

import contextlib
import errno
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
from ..core.errors import DataError, bounded, shorten, validate_name
from ..core.notebook import find_project_root
from ..core.progress_bars import BATCH_ENV, progress
from . import artifacts as A
from .report import export_html
from .runs import Run, RunError, new_run
from .steps import dataset_refusals, resolve_parameters

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
#: Step state of an optional step the parameters did not ask for (see :func:`asked_steps`).
NOT_ASKED = "not asked"


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
    #: optional steps the parameters did not ask for (step -> why), recorded as "not asked"
    not_asked: dict[str, str] = field(default_factory=dict)

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
    declared in the ``parameters`` cell of any pipeline notebook (so one parameter file serves
    ``--only`` / ``--from`` too; only the selected steps receive them); anything else is an
    error naming the key (papermill itself would only warn).
    """
    every = {step: notebook_parameters(step, root) for step in dict.fromkeys([*PIPELINE, *steps])}
    declared = {step: every[step] for step in steps}  # only the steps that run receive values
    nb_only: dict[str, str] = {}
    for params in every.values():  # a display key of a step not run this time is still known
        for key, meta in params.items():
            if key not in C.Config.model_fields and key not in RUNNER_KEYS:
                nb_only[key] = meta.get("inferred_type_name", "None")
    cfg_values = {k: v for k, v in values.items() if k in C.Config.model_fields}
    problems, unknown = [], []
    for key, value in values.items():
        if key in C.Config.model_fields:
            continue
        if key in RUNNER_KEYS:
            problems.append(f"parameter '{shorten(key, escape=True)}' is set by the runner, not in the parameter file")
        elif key not in nb_only:
            unknown.append(f"unknown parameter '{shorten(key, escape=True)}'")
        elif error := check_notebook_value(value, nb_only[key]):
            problems.append(f"parameter '{shorten(key, escape=True)}' {error}")
    if problems or unknown:
        lines = bounded(problems + unknown)
        if unknown:  # the known keys once, however many keys were misspelt
            lines.append(f"known parameters: {', '.join(sorted({*C.Config.model_fields, *nb_only}))}")
        raise C.ConfigError(f"invalid parameters in {source}:\n  " + "\n  ".join(lines))
    cfg = resolve_parameters(C.make_config(cfg_values, source=source))
    resolved = {**cfg.to_dict(), **{k: v for k, v in values.items() if k in nb_only}}
    per_step = {step: {k: v for k, v in resolved.items() if k in params} for step, params in declared.items()}
    return cfg, per_step


def refuse_unservable(cfg: C.Config, steps: Sequence[str], root: Path | None = None, source: str = "parameters",
                      memo: dict | None = None) -> None:
    """A one-line :class:`ConfigError` when the dataset cannot serve the segmentation type or
    crop mode ``cfg`` asks of the ``steps`` (see :func:`synapse_nb.pipeline.steps.dataset_refusals`);
    called before any run directory exists."""
    refusals = dataset_refusals(cfg, steps=steps, root=root, memo=memo)
    if refusals:
        raise C.ConfigError(f"{source}: " + "; ".join(refusals.values()))


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


def asked_steps(steps: Sequence[str], cfg: C.Config) -> tuple[list[str], dict[str, str]]:
    """The ``steps`` the parameters ask for, and the optional ones they do not ask for with why
    (:data:`synapse_nb.pipeline.artifacts.OPTIONAL_STEPS`: ``02_pretrain`` runs only with
    ``pretrain: true``). The runner, the CLI and the control panel all split steps here."""
    run: list[str] = []
    not_asked: dict[str, str] = {}
    for step in steps:
        key = A.OPTIONAL_STEPS.get(step)
        if key is not None and not getattr(cfg, key):
            not_asked[step] = f"not asked for ({key} is false)"
        else:
            run.append(step)
    return run, not_asked


def run_pipeline(
    values: Mapping[str, Any] | str | Path,
    run_dir: str | Path | None = None,
    runs_root: str | Path = "runs",
    reports_root: str | Path | None = "reports",
    only: Sequence[str] | None = None,
    start: str | None = None,
    cell_timeout: int = 1800,
    stop: threading.Event | None = None,
    *,
    source: str | None = None,
) -> RunResult:
    """Run the pipeline notebooks into a run directory and export each one to HTML.

    ``values`` is a flat parameter mapping or a YAML file of one (``source`` names a mapping's
    origin in messages). Optional steps the parameters do not ask for (:func:`asked_steps`) are
    recorded as "not asked" and skipped. A failing notebook stops the run (later steps need
    its output); its executed copy and HTML are kept. Setting ``stop`` (or
    :data:`STOP_SIGNAL` when none is given) ends the run with :class:`RunStopped` after
    interrupting the running notebook.
    """
    if stop is not None:
        return _run_pipeline(values, run_dir, runs_root, reports_root, only, start, cell_timeout, stop, source)
    stop = threading.Event()
    with stop_on_signal(stop):
        return _run_pipeline(values, run_dir, runs_root, reports_root, only, start, cell_timeout, stop, source)


def _run_pipeline(values, run_dir, runs_root, reports_root, only, start, cell_timeout, stop: threading.Event,
                  source: str | None = None) -> RunResult:
    import papermill

    root = find_project_root()
    if root is None:
        raise RunnerError("cannot find the project folder (with pyproject.toml and notebooks/): run from inside it")
    source = source or (str(values) if isinstance(values, (str, Path)) else "parameters")
    values = C.read_yaml(values) if isinstance(values, (str, Path)) else dict(values)
    selected = select_steps(only, start)
    cfg, per_step = plan_parameters(values, selected, root, source)
    steps, not_asked = asked_steps(selected, cfg)
    if not steps:
        keys = [A.OPTIONAL_STEPS[s] for s in not_asked]
        raise RunnerError(f"nothing to run: {', '.join(not_asked)} runs only when {' and '.join(keys)} is true, and "
                          f"{source} leaves it false; set {keys[0]}: true (or use the command 'python -m synapse_nb pretrain')")
    refuse_unservable(cfg, steps, root, source)
    run, status = _start_run(cfg, steps, source, run_dir, runs_root, reports_root, root, not_asked)
    logger.info("run %s: steps %s with %s", run.path, ", ".join(steps), source)
    for step, why in not_asked.items():
        logger.info("step %s skipped: %s", step, why)
    os.environ[BATCH_ENV] = "1"
    os.environ.setdefault("NUMBA_CACHE_DIR", str(root / ".numba_cache"))
    result = RunResult(run, not_asked=not_asked)
    try:
        bar = progress(steps, desc="pipeline", unit="notebook", file=sys.stderr)
        for step in bar:
            if stop.is_set():
                break
            bar.set_postfix_str(step)
            params = {**per_step[step], "run_dir": str(run.path)}
            outcome = _run_step(papermill, run, step, params, root, status, cell_timeout, stop)
            result.steps.append(outcome)
            if outcome.status != "ok" or stop.is_set():
                break
        not_published = ""
        if reports_root is not None:
            try:
                publish_reports(run, Path(reports_root))
            except OSError as exc:
                not_published = (f"the reports could not be published to {Path(reports_root) / run.name}: {_os_reason(exc)}; "
                                 f"they are in {run.html_dir}")
                logger.error("%s", not_published)
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
        if not_published:
            raise RunnerError(not_published)
    except BaseException as exc:
        status.abort(exc)  # whatever ends the runner, status.json never stays "running"
        if isinstance(exc, OSError):  # one of the runner's own writes (status, report, log)
            raise RunnerError(f"run {run.path} stopped: {_os_reason(exc)}") from None
        raise
    return result


def check_run_dir(
    run_dir: str | Path,
    runs_root: str | Path = "runs",
    project_root: str | Path | None = None,
    reports_root: str | Path | None = None,
) -> Path:
    """``run_dir`` resolved, or a one-line :class:`RunnerError` when a run there could overwrite
    something: its name must be a plain folder name (like a bbox name), it must not be (or
    contain) the project, the runs or the reports folder, inside the project it must lie under
    the runs folder, and its published reports must land inside the reports folder."""
    path = Path(run_dir).expanduser().resolve()
    runs = Path(runs_root).expanduser().resolve()
    hint = f"pass --run-dir a new folder under {runs_root} (e.g. {Path(runs_root) / 'my_run'})"
    shown = f"run directory {str(run_dir)!r}" + ("" if str(path) == str(run_dir) else f" ({path})")
    try:
        validate_name(path.name, "run directory name")
    except DataError:
        raise RunnerError(f"{shown}: its name {path.name!r} may only use letters, digits, '_', '-' or '.'; {hint}") from None
    protected = {"project folder": project_root, "runs folder": runs, "reports folder": reports_root}
    for label, folder in protected.items():
        if folder is None:
            continue
        folder = Path(folder).expanduser().resolve()
        if path == folder or path in folder.parents:
            how = "is" if path == folder else "contains"
            raise RunnerError(f"{shown} {how} the {label} {folder}: a run there would write over it; {hint}")
    if project_root is not None and path.is_relative_to(Path(project_root).resolve()) and not path.is_relative_to(runs):
        raise RunnerError(f"{shown} is inside the project but outside the runs folder {runs}; {hint}")
    if reports_root is not None:
        reports = Path(reports_root).expanduser().resolve()
        target = (reports / path.name).resolve()
        if target.parent != reports:
            raise RunnerError(f"{shown}: its reports would be published to {target}, outside the reports folder {reports}; "
                              "pick another run name or --reports-dir")
    return path


def _start_run(cfg: C.Config, steps: Sequence[str], source: str, run_dir, runs_root, reports_root, root: Path,
               not_asked: Mapping[str, str] | None = None) -> tuple[Run, RunStatus]:
    """Create (or reuse) the run directory and record parameters, versions and status.

    Nothing is written before the run directory is known to be safe; a folder that cannot be
    written is one line naming it."""
    path = check_run_dir(run_dir, runs_root, root, reports_root) if run_dir else None
    try:
        run = Run(path) if path is not None else new_run(runs_root)
        run = Run(run.path.resolve())  # absolute: notebooks run in the project folder
        run.path.mkdir(parents=True, exist_ok=True)
        run.attach_log()
        C.save_config(cfg, run.file(A.PARAMS))
        run.save_versions()
        return run, RunStatus(run.path, steps, source, not_asked=not_asked)
    except RunError as exc:
        raise RunnerError(str(exc)) from None
    except OSError as exc:
        where = path if path is not None else Path(runs_root)
        raise RunnerError(f"cannot write the run directory {where}: {_os_reason(exc)}; "
                          "make it writable or pass --run-dir another folder") from None


def _run_step(papermill, run: Run, step: str, params: dict[str, Any], root: Path, status: RunStatus,
              cell_timeout: int, stop: threading.Event) -> StepResult:
    """Execute one notebook and export its report.

    When the step has a good report from an earlier attempt, a failed (or stopped) attempt
    never replaces it: that report and its executed notebook stay, and this attempt's are
    written beside them as ``<step>.failed.html`` / ``<step>.failed.ipynb``.
    """
    executed = run.file(A.NOTEBOOK, step=step)
    page = run.file(A.HTML, step=step)
    earlier = status.earlier.get(step, {})
    keep = (earlier.get("status") == "ok" or bool(earlier.get("kept"))) and page.is_file() and executed.is_file()
    backup = run.file(A.NOTEBOOK, step=f"{step}.previous")
    if keep:
        with atomic.atomic_path(backup) as tmp:
            shutil.copy2(executed, tmp)
    status.step(step, "running")
    t0 = time.perf_counter()
    error, html = "", None
    try:
        try:
            with interrupt_kernel_on_stop(stop), atomic_notebook_saves(executed.parent):
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
            error = _one_line(f"{exc.ename}: {exc.evalue}")
            if stop.is_set() and not exc.evalue and exc.ename == "CellExecutionError":
                # the interrupt landed where the cell left no error output (papermill then names
                # no exception): the stop that was asked for is the reason
                error = "KeyboardInterrupt: stopped on request"
        except Exception as exc:  # noqa: BLE001 - every way a notebook can end becomes the step's one-line reason
            error = _execution_problem(step, exc, cell_timeout)
        if not error:
            try:
                html = export_html(executed, page, strict=True)
            except Exception as exc:  # noqa: BLE001 - a report that cannot be written fails its step, clearly
                error = f"the report of {step} could not be written: {_problem(exc)}"
    except BaseException:  # interrupted: the earlier good notebook goes back in place
        if keep:
            _keep_earlier(run, step, "interrupted", backup)
            with contextlib.suppress(OSError):  # the interruption is what the caller must see
                status.step(step, "interrupted", seconds=time.perf_counter() - t0, kept=page)
        raise
    seconds = time.perf_counter() - t0
    state = ("stopped" if stop.is_set() else "failed") if error else "ok"
    if error:
        html = _export_attempt(executed, run.file(A.ATTEMPT_HTML, step=step, state=state) if keep else page)
        if keep:
            executed = _keep_earlier(run, step, state, backup)
            logger.warning("step %s %s: kept the earlier report %s; this attempt's page is %s",
                           step, state, page, html or "not written (no executed notebook)")
    else:
        _drop_attempts(run, step, backup)
    status.step(step, state, seconds=seconds, html=html, error=error, kept=page if keep and error else None)
    logger.info("step %s %s in %.1f s%s", step, state, seconds, f": {error}" if error else "")
    return StepResult(step, state, seconds, executed, html, error)


#: States of an attempt whose page and notebook are kept beside an earlier good report.
ATTEMPT_STATES = ("failed", "stopped", "interrupted")


def _keep_earlier(run: Run, step: str, state: str, backup: Path) -> Path:
    """Move this attempt's executed notebook aside and put the earlier good one back."""
    executed = run.file(A.NOTEBOOK, step=step)
    attempt = run.file(A.ATTEMPT_NOTEBOOK, step=step, state=state)
    if executed.is_file():
        os.replace(executed, attempt)
    if backup.is_file():
        os.replace(backup, executed)
    return attempt


def _drop_attempts(run: Run, step: str, backup: Path) -> None:
    """After a good attempt: the backup and the pages of earlier failed attempts are stale."""
    backup.unlink(missing_ok=True)
    for state in ATTEMPT_STATES:
        run.file(A.ATTEMPT_HTML, step=step, state=state).unlink(missing_ok=True)
        run.file(A.ATTEMPT_NOTEBOOK, step=step, state=state).unlink(missing_ok=True)


def _export_attempt(executed: Path, html_path: Path) -> Path | None:
    """The HTML of a failed attempt, from whatever executed notebook exists (None if none)."""
    if not executed.is_file():
        return None
    try:
        return export_html(executed, html_path, strict=False)
    except Exception as exc:  # noqa: BLE001 - the step's own error is what matters; this is logged
        logger.warning("no report for %s: %s", executed, _problem(exc))
        return None


def _execution_problem(step: str, exc: Exception, cell_timeout: int) -> str:
    """Why a notebook ended other than by an error in a cell, as one line."""
    from nbclient.exceptions import DeadKernelError

    if isinstance(exc, DeadKernelError):
        return f"the Jupyter kernel died while running {step} ({_problem(exc, bare=True)}: a crash in native code or out of memory)"
    if isinstance(exc, TimeoutError):
        return f"a cell of {step} ran longer than the cell timeout of {cell_timeout} s"
    if isinstance(exc, OSError):
        return f"{step} could not go on: {_os_reason(exc)}"
    logger.debug("%s ended on an unexpected error", step, exc_info=exc)
    return _problem(exc)


def _problem(exc: BaseException, bare: bool = False) -> str:
    """An exception as one line: ``Type: message`` (``bare``: the message only)."""
    if isinstance(exc, OSError) and exc.strerror:
        return _os_reason(exc)
    text = _one_line(str(exc))
    if bare:
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _os_reason(exc: OSError) -> str:
    """What the system said, on which file, and what to do when the disk is full."""
    text = exc.strerror or _one_line(str(exc)) or type(exc).__name__
    if exc.filename:
        text += f": {exc.filename}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        text += " (free some disk space, then run again)"
    return text


def _one_line(text: str) -> str:
    """Join a multi-line message into one line (``heading: a; b``)."""
    out = ""
    for part in (line.strip() for line in str(text).splitlines()):
        if part:
            out += part if not out else (" " if out.endswith(":") else "; ") + part
    return out


@contextlib.contextmanager
def atomic_notebook_saves(folder: str | Path) -> Iterator[None]:
    """While the block runs, papermill saves executed notebooks under ``folder`` atomically.

    Papermill rewrites the executed notebook after every cell (the control panel follows that
    file) with a plain ``open(..., "w")``; a crash or a full disk then leaves truncated JSON.
    Routed through here, each save goes to a temporary file renamed over the notebook, so the
    file is always the last complete save.
    """
    from papermill.iorw import LocalHandler, papermill_io

    class AtomicLocalHandler(LocalHandler):
        def write(self, buf: str, path: str) -> None:
            try:
                with atomic.atomic_path(path) as tmp:
                    super().write(buf, str(tmp))
            except OSError as exc:  # name the notebook, not the temporary file
                raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc

    entry = (str(Path(folder).resolve()) + os.sep, AtomicLocalHandler())
    papermill_io.register(*entry)  # the handler whose prefix matches a path is used first
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            papermill_io._handlers.remove(entry)  # papermill has no public way to unregister


# --------------------------------------------------------------------------------------
# status file and clean stop
# --------------------------------------------------------------------------------------
class RunStatus:
    """Writes ``status.json``: the run's state and each step's, rewritten atomically on change.

    Reusing a run directory merges: steps not run this time keep their earlier records (a
    rerun of one step must not make the others look as if they never ran). Optional steps
    the parameters did not ask for (``not_asked``: step -> why) are recorded as "not asked".
    The runner's pid and its start time are recorded so that a killed runner reads as
    "interrupted".
    """

    def __init__(self, run_path: Path, steps: Sequence[str], source: str = "",
                 not_asked: Mapping[str, str] | None = None) -> None:
        self.path = Path(run_path) / STATUS_NAME
        self.run_path = Path(run_path)
        before = read_status(run_path).get("step_status")
        #: each step's record from before this run (read by the runner to keep good reports)
        self.earlier: dict[str, dict[str, Any]] = (
            {k: dict(v) for k, v in before.items() if isinstance(v, dict)} if isinstance(before, dict) else {}
        )
        records: dict[str, dict[str, Any]] = {}
        for name, entry in self.earlier.items():
            if name not in steps:
                if entry.get("status") in ("pending", "running"):  # left by a runner that was killed
                    entry["status"] = "not run" if entry["status"] == "pending" else "interrupted"
                records[name] = entry
        records.update({s: {"status": NOT_ASKED, "reason": why} for s, why in (not_asked or {}).items()})
        records.update({s: {"status": "pending"} for s in steps})
        order = {s: i for i, s in enumerate(PIPELINE)}
        self.data: dict[str, Any] = {
            "status": "running",
            "steps": list(steps),
            "step_status": dict(sorted(records.items(), key=lambda kv: order.get(kv[0], len(order)))),
            "source": source,
            "pid": os.getpid(),
            "pid_started": _process_started(os.getpid()),
            "started": _now(),
            "finished": None,
            "error": "",
        }
        self._write()

    def step(self, name: str, state: str, seconds: float | None = None, html: Path | None = None, error: str = "",
             kept: Path | None = None) -> None:
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
        if kept is not None:  # the good report of an earlier attempt, still in place
            entry["kept"] = os.path.relpath(kept, self.run_path)
        self.data["step_status"][name] = entry
        self._write()

    def finish(self, state: str, error: str = "") -> None:
        for entry in self.data["step_status"].values():
            if entry["status"] == "pending":
                entry["status"] = "not run"
            elif entry["status"] == "running":
                entry["status"] = state
        self.data.update(status=state, finished=_now(), error=error)
        self._write()

    def abort(self, exc: BaseException) -> None:
        """Close a status that the runner leaves through an exception; never raises."""
        if self.data["status"] != "running":
            return
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            state, reason = "interrupted", f"the runner was interrupted ({type(exc).__name__})"
        else:
            state, reason = "failed", f"the runner stopped on an error: {_problem(exc)}"
        try:
            self.finish(state, reason)
        except OSError as err:
            logger.error("could not record the end of the run in %s: %s", self.path, _os_reason(err))

    def _write(self) -> None:
        atomic.write_text(self.path, json.dumps(self.data, indent=2, default=str))


def read_status(run_path: str | Path) -> dict[str, Any]:
    """A run's ``status.json`` (empty when it has none or it cannot be read).

    A status still "running" whose runner process is gone (killed, or the machine restarted)
    reads as "interrupted", with its running step: nothing is going on there any more, and
    the run can be resumed with ``--run-dir`` and ``--from``.
    """
    path = Path(run_path) / STATUS_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    if data.get("status") == "running" and not _runner_alive(data):
        data["status"] = "interrupted"
        data["error"] = data.get("error") or f"the runner (pid {data.get('pid')}) ended without finishing the run"
        for entry in (data.get("step_status") or {}).values():
            if isinstance(entry, dict) and entry.get("status") == "running":
                entry["status"] = "interrupted"
    return data


def _runner_alive(data: Mapping[str, Any]) -> bool:
    """Whether the runner that wrote a status is still running (True when it cannot tell)."""
    import psutil

    pid = data.get("pid")
    if not pid:
        return True  # written without a pid: nothing to check against
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = data.get("pid_started")
        return started is None or abs(proc.create_time() - float(started)) < 1.0  # else: the pid was reused
    except (psutil.NoSuchProcess, TypeError, ValueError):
        return False
    except psutil.Error:
        return True


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started (to tell it from a later process with the same pid)."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


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
    """Copy the run's HTML under ``reports/<run name>/`` where users look for reports.

    Each page is copied atomically; a failed attempt's page that the run no longer has is
    removed, so the published folder shows what the run shows.
    """
    reports_root = Path(reports_root)
    target = reports_root / run.name
    if target.resolve().parent != reports_root.resolve():
        raise RunnerError(f"run {run.path}: its reports would be published to {target.resolve()}, outside {reports_root}; "
                          "pick another run name or reports folder")
    if run.html_dir.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        for html in run.html_dir.glob("*.html"):
            if html.name.startswith("."):  # a temporary file of a write under way
                continue
            with atomic.atomic_path(target / html.name) as tmp:
                shutil.copy2(html, tmp)
        for page in target.glob("*.html"):
            attempt = page.name.rsplit(".", 2)
            if len(attempt) == 3 and attempt[1] in ATTEMPT_STATES and not (run.html_dir / page.name).exists():
                page.unlink()
    return target
