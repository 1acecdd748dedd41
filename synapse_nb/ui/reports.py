"""The reports list of the control panel: every run and sweep under ``runs/`` with its status,
its steps and links to its HTML pages, which can also be shown inside the panel."""
from __future__ import annotations

import contextlib
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import ipywidgets as W

from ..pipeline import runner
from ..pipeline.runs import RUN_PREFIX
from .form import message_html, set_options

STATE_ICONS = {"ok": "✔", "failed": "✘", "stopped": "■", "interrupted": "◪", "running": "▶", "pending": "·", "not run": "–",
               "not asked": "○"}
SWEEP_PREFIX = "sweep_"


@dataclass
class RunEntry:
    """A run or sweep folder as the reports list shows it."""

    name: str
    path: Path
    kind: str
    status: str
    started: str = ""
    steps: dict[str, str] = field(default_factory=dict)
    pages: list[Path] = field(default_factory=list)
    error: str = ""


def _alive(pid: Any) -> bool:
    import psutil

    try:
        return bool(pid) and psutil.pid_exists(int(pid))
    except (TypeError, ValueError):
        return False


def read_entry(path: Path) -> RunEntry:
    kind = "sweep" if path.name.startswith(SWEEP_PREFIX) else "run"
    data = runner.read_status(path)
    status = data.get("status", "no status file")
    if status == "running" and not _alive(data.get("pid")):
        status = "interrupted"
    if kind == "sweep":
        steps = dict(data.get("combinations", {}))
        pages = [p for p in [path / "index.html"] if p.is_file()] + sorted(path.glob("*/html/*.html"))
    else:
        steps = {k: v.get("status", "") for k, v in data.get("step_status", {}).items()}
        order = {s: i for i, s in enumerate(data.get("steps", []))}
        pages = sorted((path / "html").glob("*.html"), key=lambda p: (order.get(p.stem, 99), p.name))
    return RunEntry(path.name, path, kind, status, data.get("started", ""), steps, pages, data.get("error", ""))


def list_runs(runs_root: str | Path) -> list[RunEntry]:
    """Run and sweep folders under ``runs_root``, newest first."""
    root = Path(runs_root)
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and p.name.startswith((RUN_PREFIX, SWEEP_PREFIX))]
    return [read_entry(p) for p in sorted(folders, key=lambda p: p.name.split("_", 1)[-1], reverse=True)]


def report_href(path: Path, root: Path) -> str:
    """A URL for an HTML report that works where the panel runs.

    Voila serves files of its root under ``voila/files/`` (the README's command makes the
    project the root and allows ``.html``); Jupyter serves its root under ``files/``, whose
    place is known from the notebook's session path; otherwise a file:// URL.
    """
    path = Path(path).resolve()
    root = Path(root).resolve()
    if "VOILA_BASE_URL" in os.environ:
        with contextlib.suppress(ValueError):
            return f"{os.environ['VOILA_BASE_URL']}voila/files/{quote(path.relative_to(root).as_posix())}"
    session = os.environ.get("JPY_SESSION_NAME", "")
    if session and not Path(session).is_absolute():
        server_root = root / "notebooks" / Path(session).name
        for _ in Path(session).parts:
            server_root = server_root.parent
        with contextlib.suppress(ValueError):
            base = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
            return f"{base.rstrip('/')}/files/{quote(path.relative_to(server_root).as_posix())}"
    return path.as_uri()


class ReportsList:
    """Runs under ``runs/`` with status, per-step states and links; a page can be shown inline."""

    def __init__(self, runs_root: str | Path, root: Path) -> None:
        self.runs_root, self.root = Path(runs_root), Path(root)
        self.entries: list[RunEntry] = []
        self.refresh_button = W.Button(description="Refresh", icon="refresh")
        self.table = W.HTML()
        self.table.add_class("snb-reports")
        self.page = W.Dropdown(description="report", layout=W.Layout(width="560px"))
        self.show_button = W.Button(description="Show here", icon="eye")
        self.viewer = W.HTML()
        self.refresh_button.on_click(lambda _: self.refresh())
        self.show_button.on_click(lambda _: self.show())
        self.widget = W.VBox([self.refresh_button, self.table, W.HBox([self.page, self.show_button]), self.viewer])
        self.refresh()

    def refresh(self) -> None:
        self.entries = list_runs(self.runs_root)
        if not self.entries:
            self.table.value = message_html(f"no runs yet under {self.runs_root}", "info")
            set_options(self.page, [])
            return
        rows = []
        for e in self.entries:
            steps = " ".join(f"<span title='{html.escape(k)}: {html.escape(v)}'>{STATE_ICONS.get(v, '?')}</span>" for k, v in e.steps.items())
            links = " · ".join(f"<a href='{html.escape(report_href(p, self.root), quote=True)}' target='_blank'>"
                               f"{html.escape(self._label(e, p))}</a>" for p in e.pages)
            color = {"ok": "#1b5e20", "failed": "#b00020", "stopped": "#a15c00", "running": "#0d47a1"}.get(e.status, "#555")
            rows.append(f"<tr><td>{html.escape(e.name)}</td><td>{e.kind}</td><td style='color:{color}'>{html.escape(e.status)}</td>"
                        f"<td>{html.escape(e.started)}</td><td>{steps}</td><td>{links or '-'}</td></tr>")
        self.table.value = ("<table style='font-size:12px;border-collapse:collapse' cellpadding='3'>"
                            "<tr><th>run</th><th>kind</th><th>status</th><th>started</th><th>steps</th><th>reports</th></tr>"
                            + "".join(rows) + "</table>")
        set_options(self.page, [(f"{e.name} / {self._label(e, p)}", str(p)) for e in self.entries for p in e.pages])

    @staticmethod
    def _label(entry: RunEntry, page: Path) -> str:
        return "/".join(part for part in page.relative_to(entry.path).with_suffix("").parts if part != "html")

    def show(self, page: str | Path | None = None) -> None:
        """Show a report inside the panel (works wherever the panel runs, no file server needed)."""
        page = Path(page or self.page.value or "")
        if not page.is_file():
            self.viewer.value = message_html(f"report not found: {page}")
            return
        doc = html.escape(page.read_text(encoding="utf-8"), quote=True)
        self.viewer.value = (f"<iframe sandbox='allow-scripts' srcdoc=\"{doc}\" "
                             "style='width:100%;height:700px;border:1px solid #ccc'></iframe>")
