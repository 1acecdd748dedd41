"""Runs and sweeps launched from the control panel, and the list of runs with their reports.

A run is the command line ``python -m synapse_nb run <yaml> --run-dir <dir>`` in a child
process (a sweep: ``sweep <yaml> --sweep-dir <dir>``), so the panel's kernel stays free and a
run can be stopped: Stop sends the runner :data:`synapse_nb.pipeline.runner.STOP_SIGNAL`, the runner
interrupts the running notebook and records ``stopped`` with the finished steps kept. Only if
the runner does not end within ``kill_after_s`` is it killed (and its status file finished by
the panel). Progress per notebook comes from the run's ``status.json`` and the executed
notebook papermill rewrites at every cell; the command's output streams into the log area.
"""
from __future__ import annotations

import contextlib
import html
import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import ipywidgets as W
import yaml

from ..core import atomic
from ..core import config as C
from ..pipeline import runner, sweep
from .form import message_html
from .reports import STATE_ICONS

if TYPE_CHECKING:
    from .panel import ConfigForm

logger = logging.getLogger(__name__)

REQUEST_NAME = "panel_request.yaml"
#: Lines of the command's output shown (the whole log is the run's run.log).
LOG_LINES = 400
FINAL_STATES = ("ok", "failed", "stopped", "interrupted")
BAR_STYLES = {"ok": "success", "failed": "danger", "stopped": "warning", "running": "info"}


def log_html(text: str) -> str:
    """The log's last lines in a box that stays scrolled to the newest line."""
    return ("<div style='height:260px;overflow:auto;display:flex;flex-direction:column-reverse;border:1px solid #ddd;"
            f"padding:4px'><pre style='margin:0;font-size:11px;white-space:pre-wrap'>{html.escape(text)}</pre></div>")


def executed_progress(path: Path) -> tuple[int, int]:
    """(cells finished, cells) of a notebook papermill is executing (0, 0 if not readable yet)."""
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0, 0
    states = [c.get("metadata", {}).get("papermill", {}).get("status") for c in nb.get("cells", [])]
    states = [s for s in states if s]
    return sum(s in ("completed", "failed") for s in states), len(states)


def finish_status(path: Path, state: str, error: str) -> None:
    """Close a status file a runner left unfinished (killed, or stopped before it started)."""
    data = runner.read_status(path)
    if data.get("status") in FINAL_STATES:
        return
    data.setdefault("steps", [])
    for entry in data.get("step_status", {}).values():
        if entry.get("status") in ("pending", "running"):
            entry["status"] = "not run" if entry["status"] == "pending" else state
    data.update(status=state, error=error, finished=datetime.now().isoformat(timespec="seconds"))
    Path(path).mkdir(parents=True, exist_ok=True)
    atomic.write_text(Path(path) / runner.STATUS_NAME, json.dumps(data, indent=2, default=str))


def sweep_files(folder: Path) -> list[str]:
    """Parameter files in ``folder`` that are sweeps (a ``grid`` mapping)."""
    out = []
    for p in sorted(folder.glob("*.y*ml")) if folder.is_dir() else []:
        with contextlib.suppress(C.ConfigError):
            if "grid" in C.read_yaml(p):
                out.append(p.name)
    return out


class StepRow:
    """One notebook: a progress bar over its cells and a status label."""

    def __init__(self, step: str) -> None:
        self.step = step
        self.bar = W.IntProgress(value=0, min=0, max=1, description=step, layout=W.Layout(width="420px"))
        self.bar.add_class(f"snb-step-{step}")
        self.label = W.HTML()
        self.widget = W.HBox([self.bar, self.label])
        self.state = "pending"

    def show(self, state: str, done: int = 0, total: int = 0, seconds: float | None = None) -> None:
        self.state = state
        if total:
            self.bar.max = total
        if state in ("ok",):
            self.bar.value = self.bar.max
        elif state == "running" or (state in ("failed", "stopped") and total):
            self.bar.value = min(done, self.bar.max)
        elif state in ("pending", "not run", runner.NOT_ASKED):
            self.bar.value = 0
        self.bar.bar_style = BAR_STYLES.get(state, "")
        extra = f" {seconds:.1f} s" if seconds is not None else (f" cell {done}/{total}" if state == "running" and total else "")
        self.label.value = f"<span style='font-size:12px'>{STATE_ICONS.get(state, '')} {html.escape(state)}{extra}</span>"


class RunController:
    """Run button, sweep picker, stop button, per-notebook progress and the streaming log."""

    def __init__(self, form: "ConfigForm", root: Path, runs_root: str | Path = "runs", reports_root: str | Path = "reports",
                 python: str = sys.executable, poll_s: float = 0.5, kill_after_s: float = 60.0) -> None:
        self.form, self.root = form, Path(root)
        self.runs_root = self._abs(runs_root)
        self.reports_root = self._abs(reports_root)
        self.python, self.poll_s, self.kill_after_s = python, poll_s, kill_after_s
        self.proc: subprocess.Popen | None = None
        self.path: Path | None = None  # the run or sweep folder
        self.kind = ""
        self.log_lines: list[str] = []
        self.stop_requested = False
        self.final_status: dict[str, Any] = {}
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._done.set()
        self._callbacks: list[Callable[[dict], None]] = []
        self._rows: dict[str, StepRow] = {}
        self._combo = ""

        self.run_button = W.Button(description="Run pipeline", icon="play", button_style="success")
        self.sweep_choice = W.Dropdown(options=sweep_files(self.root / "parameters"), description="sweep file",
                                       layout=W.Layout(width="360px"))
        self.sweep_button = W.Button(description="Run sweep", icon="forward")
        self.stop_button = W.Button(description="Stop", icon="stop", button_style="danger", disabled=True)
        self.message = W.HTML()
        self.message.add_class("snb-run-message")
        self.blocked = W.HTML()  # why Run is off: the dataset cannot serve the parameters
        self.blocked.add_class("snb-run-blocked")
        self.overall = W.IntProgress(value=0, min=0, max=1, description="combinations", layout=W.Layout(width="420px", display="none"))
        self.overall_label = W.HTML()
        self.steps_box = W.VBox()
        self.log = W.HTML()
        self.log.add_class("snb-log")
        self.run_button.on_click(lambda _: self._guarded(self.start_run))
        self.sweep_button.on_click(lambda _: self._guarded(lambda: self.start_sweep(self.sweep_choice.value)))
        self.stop_button.on_click(lambda _: self.stop())
        self.widget = W.VBox([
            W.HTML(f"<span style='font-size:12px;color:#555'>Runs go to <code>{html.escape(str(self.runs_root))}</code>, "
                   f"reports to <code>{html.escape(str(self.reports_root))}</code>.</span>"),
            W.HBox([self.run_button, self.sweep_choice, self.sweep_button, self.stop_button]),
            self.blocked, self.message, W.HBox([self.overall, self.overall_label]), self.steps_box, self.log,
        ])
        form.on_checked(self._sync_run_button)
        self._sync_run_button()

    def _sync_run_button(self) -> None:
        """Run is off while a run is going, or while the dataset cannot serve the form's parameters."""
        refusals = self.form.refusals()
        why = "; ".join(refusals.values())
        self.run_button.disabled = self.running or bool(refusals)
        self.run_button.tooltip = f"cannot run: {why}" if why else ""
        self.blocked.value = message_html(f"Run is off: {why}") if why else ""

    def _abs(self, p: str | Path) -> Path:
        p = Path(p)
        return p if p.is_absolute() else self.root / p

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def on_finish(self, callback: Callable[[dict], None]) -> None:
        self._callbacks.append(callback)

    def _guarded(self, start: Callable[[], Any]) -> None:
        try:
            start()
        except (C.ConfigError, runner.RunnerError, OSError, ValueError) as exc:
            self.message.value = message_html(str(exc))

    # --- starting ---------------------------------------------------------------------------
    def start_run(self, params: Mapping[str, Any] | None = None) -> Path:
        """Run every pipeline notebook on ``params`` (default: the form's) in a new run folder."""
        self._check_idle()
        if params is None:
            values = self.form.parameters()  # ConfigError naming the bad keys
            blocking = {k: v for k, v in self.form.warnings().items() if not k.endswith("_path")}
            if blocking:
                raise C.ConfigError("fix before running: " + "; ".join(f"{k}: {v}" for k, v in blocking.items()))
        else:
            values = dict(params)
        steps = runner.select_steps()
        source = "the panel's parameters"
        cfg, _ = runner.plan_parameters(values, steps, self.root, source)  # fail here, not in the log
        steps, _ = runner.asked_steps(steps, cfg)  # 02_pretrain only when pretrain is on
        runner.refuse_unservable(cfg, steps, self.root, source, memo=self.form.datasets)  # before any folder exists
        run = self._new_folder("run_")
        request = atomic.write_text(run / REQUEST_NAME, yaml.safe_dump(values, sort_keys=False))
        cmd = [self.python, "-m", "synapse_nb", "run", str(request), "--run-dir", str(run), "--reports-dir", str(self.reports_root)]
        self._launch("run", run, cmd, steps)
        return run

    def start_sweep(self, spec: str | Path | None) -> Path:
        """Run every combination of a sweep file (a name in parameters/ or a path)."""
        self._check_idle()
        if not spec:
            raise C.ConfigError("choose a sweep file (a YAML with base and grid in parameters/)")
        path = Path(spec) if Path(spec).is_absolute() else self.root / "parameters" / spec
        combos = sweep.expand(sweep.read_spec(path))
        steps = runner.select_steps()
        sweep.validate(combos, steps, str(path), root=self.root)  # names every combination the dataset cannot serve
        folder = self._new_folder(sweep.SWEEP_PREFIX)
        cmd = [self.python, "-m", "synapse_nb", "sweep", str(path), "--sweep-dir", str(folder), "--reports-dir", str(self.reports_root)]
        self._launch("sweep", folder, cmd, steps, n_combos=len(combos))
        return folder

    def _check_idle(self) -> None:
        if self.running:
            raise runner.RunnerError(f"a {self.kind} is already running in {self.path}: stop it or wait")

    def _new_folder(self, prefix: str) -> Path:
        stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
        path, n = self.runs_root / f"{prefix}{stamp}", 1
        while path.exists():
            n += 1
            path = self.runs_root / f"{prefix}{stamp}_{n}"
        path.mkdir(parents=True)
        return path

    def _launch(self, kind: str, path: Path, cmd: list[str], steps: list[str], n_combos: int = 0) -> None:
        self.kind, self.path = kind, path
        self.log_lines, self._pending, self.final_status = [], [], {}
        self.stop_requested = False
        self._combo = ""
        self._rows = {s: StepRow(s) for s in steps}
        for row in self._rows.values():
            row.show("pending")
        self.steps_box.children = [r.widget for r in self._rows.values()]
        self.overall.layout.display = "" if kind == "sweep" else "none"
        self.overall.max, self.overall.value, self.overall_label.value = max(n_combos, 1), 0, ""
        self.log.value = ""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, cwd=str(self.root), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, start_new_session=True)
        self._done.clear()  # only once there is a process: a failed start must not leave the panel "running"
        self.message.value = message_html(f"{kind} started in {path} (process {self.proc.pid})", "info")
        self.run_button.disabled = self.sweep_button.disabled = True
        self.stop_button.disabled = False
        reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True, name="snb-panel-log")
        reader.start()
        threading.Thread(target=self._monitor, args=(self.proc, reader), daemon=True, name="snb-panel-monitor").start()

    # --- while it runs ------------------------------------------------------------------------
    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                self.log_lines.append(line)
                self._pending.append(line)

    def _monitor(self, proc: subprocess.Popen, reader: threading.Thread) -> None:
        try:
            while proc.poll() is None:
                self._tick()
                time.sleep(self.poll_s)
            reader.join(timeout=5)  # the last lines; a kernel still holding the pipe must not block the end
            self._finish(proc.returncode)
        except Exception as exc:  # noqa: BLE001 - the panel must not die with its thread
            logger.exception("panel monitor failed")
            self.message.value = message_html(f"lost track of the run: {exc}")
        finally:
            self.sweep_button.disabled = False
            self.run_button.disabled = bool(self.form.refusals())
            self.stop_button.disabled = True
            for callback in list(self._callbacks):  # before wait() returns: callers see their effect
                try:
                    callback(self.final_status)
                except Exception:  # noqa: BLE001 - one failing listener must not keep the panel "running"
                    logger.exception("panel: a run-finished callback failed")
            self._done.set()

    def _tick(self) -> None:
        with self._lock:
            fresh, self._pending = bool(self._pending), []
            tail = "".join(self.log_lines[-LOG_LINES:])
        if fresh:
            self.log.value = log_html(tail)
        run_path = self.path
        if self.kind == "sweep" and self.path is not None:
            state = runner.read_status(self.path)
            combos = state.get("combinations", {})
            done = sum(v in FINAL_STATES for v in combos.values())
            self.overall.value = min(done, self.overall.max)
            current = next((k for k, v in combos.items() if v == "running"), "")
            if current and current != self._combo:
                self._combo = current
                for row in self._rows.values():
                    row.show("pending")
            self.overall_label.value = f"<span style='font-size:12px'>{done}/{len(combos)} {html.escape(self._combo)}</span>"
            run_path = self.path / self._combo if self._combo else None
        if run_path is not None:
            self._show_steps(run_path)

    def _show_steps(self, run_path: Path) -> None:
        state = runner.read_status(run_path).get("step_status", {})
        for step, row in self._rows.items():
            entry = state.get(step, {})
            s = entry.get("status", "pending")
            done, total = executed_progress(run_path / "notebooks" / f"{step}.ipynb") if s in ("running", "failed", "stopped") else (0, 0)
            row.show(s, done, total, entry.get("seconds"))

    def _finish(self, returncode: int) -> None:
        assert self.path is not None
        self._tick()
        if self.stop_requested:
            state, why = "stopped", f"stopped from the panel (runner exit code {returncode})"
        else:
            state, why = "failed", f"the runner ended with exit code {returncode} before finishing"
        finish_status(self.path, state, why)
        if self.kind == "sweep" and self._combo:
            finish_status(self.path / self._combo, state, why)
        self._tick()
        self.final_status = runner.read_status(self.path)
        final = self.final_status.get("status", "unknown")
        kind = {"ok": "ok", "stopped": "warning"}.get(final, "error")
        self.message.value = message_html(f"{self.kind} {final}: {self.path}" + (f" ({self.final_status.get('error')})" if self.final_status.get("error") else ""), kind)

    # --- stopping and waiting ---------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the runner to stop cleanly; kill it if it has not ended after ``kill_after_s``."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            self.message.value = message_html("nothing is running", "info")
            return
        self.stop_requested = True
        self.stop_button.disabled = True
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(runner.STOP_SIGNAL)
        self.message.value = message_html("stopping: the running notebook is interrupted, finished steps are kept", "warning")
        timer = threading.Timer(self.kill_after_s, self._kill, args=(proc,))
        timer.daemon = True
        timer.start()

    def _kill(self, proc: subprocess.Popen) -> None:
        if proc.poll() is not None:
            return
        import psutil

        with contextlib.suppress(psutil.Error):
            family = psutil.Process(proc.pid).children(recursive=True)
            for p in [*family, psutil.Process(proc.pid)]:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        line = f"[panel] the runner did not stop within {self.kill_after_s:.0f} s and was killed\n"
        with self._lock:  # the log shows log_lines; _pending only says there is something new
            self.log_lines.append(line)
            self._pending.append(line)

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the run ends; its final status (TimeoutError if it does not end in time)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the {self.kind} in {self.path} did not end within {timeout} s")
        return self.final_status
