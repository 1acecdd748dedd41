"""Parameter sweeps: a base parameter set and a grid, every combination run (README, "Sweeps").

Each combination gets its own run directory named from its parameters inside the sweep
directory. A failing combination is recorded and the others go on; a combination whose run
finished is not run again when the sweep is resumed; cubes and features shared between
combinations come from the cache (synapse_nb.pipeline.cache), so a segmentation-type x alpha sweep
builds its cubes once.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from ..core import atomic
from ..core import config as C
from ..core.progress_bars import progress
from . import artifacts as A
from .report import html_pages, sweep_index
from .runner import (
    RunnerError,
    RunStopped,
    plan_parameters,
    run_pipeline,
    select_steps,
    stop_on_signal,
)
from .runs import Run

logger = logging.getLogger(__name__)

SWEEP_PREFIX = "sweep_"
# the sweep's own files, in the sweep folder beside the combinations' run directories
STATUS_NAME = "status.json"
SUMMARY_NAME = "summary.csv"
SWEEP_FILE_NAME = "sweep.yaml"
LOG_NAME = "sweep.log"
SWEEP_KEYS = ("base", "grid")


@dataclass(frozen=True)
class Combination:
    name: str
    params: dict[str, Any]  # the grid values of this combination
    values: dict[str, Any]  # base + grid values: what the run gets


def read_spec(path: str | Path) -> dict[str, Any]:
    """Read and check a sweep YAML (``base`` mapping, ``grid`` mapping of lists)."""
    data = C.read_yaml(path)
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise C.ConfigError(f"{path}: unknown top-level key(s) {unknown}; a sweep file has only 'base' and 'grid'")
    base, grid = data.get("base") or {}, data.get("grid") or {}
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise C.ConfigError(f"{path}: 'base' and 'grid' must be mappings")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise C.ConfigError(f"{path}: grid key '{key}' must be a non-empty list of values")
    return {"base": base, "grid": grid}


def _token(value: Any) -> str:
    text = str(value).replace(".", "_")
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def combination_name(params: Mapping[str, Any]) -> str:
    """A folder name from the grid values, e.g. ``segmentation_type5__alpha0_5``."""
    return "__".join(f"{k}{_token(v)}" for k, v in params.items()) or "base"


def expand(spec: Mapping[str, Any]) -> list[Combination]:
    """Every combination of the grid on top of the base, in grid order."""
    grid = spec["grid"]
    keys = list(grid)
    combos = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values))
        combos.append(Combination(combination_name(params), params, {**spec["base"], **params}))
    return combos


def validate(combos: list[Combination], steps: list[str], source: str) -> None:
    """Check every combination before anything runs; errors name the key and the combination."""
    for combo in combos:
        try:
            plan_parameters(combo.values, steps, source=f"{source} (combination {combo.name})")
        except C.ConfigError as exc:
            raise C.ConfigError(str(exc)) from None


def _status(run_path: Path) -> dict[str, Any]:
    """The status record of one combination's run (empty before it ran)."""
    run = Run(run_path)
    return run.read(A.STATUS) if run.has(A.STATUS) else {}


def run_sweep(
    spec_path: str | Path,
    sweep_dir: str | Path | None = None,
    runs_root: str | Path = "runs",
    reports_root: str | Path | None = "reports",
    only: list[str] | None = None,
    start: str | None = None,
    stop: threading.Event | None = None,
) -> pd.DataFrame:
    """Run every combination; returns the summary table (also written as ``summary.csv``).

    Passing an existing ``sweep_dir`` resumes it: combinations that finished are kept as
    they are and only the others run. Setting ``stop`` (or the runner's STOP_SIGNAL) stops
    the running combination cleanly and starts no other; ``status.json`` in the sweep
    folder says how far it got.
    """
    if stop is None:
        stop = threading.Event()
        with stop_on_signal(stop):
            return _run_sweep(spec_path, sweep_dir, runs_root, reports_root, only, start, stop)
    return _run_sweep(spec_path, sweep_dir, runs_root, reports_root, only, start, stop)


def _run_sweep(spec_path, sweep_dir, runs_root, reports_root, only, start, stop: threading.Event) -> pd.DataFrame:
    spec = read_spec(spec_path)
    combos = expand(spec)
    steps = select_steps(only, start)
    validate(combos, steps, str(spec_path))
    if sweep_dir is None:
        sweep_dir = Path(runs_root) / f"{SWEEP_PREFIX}{datetime.now():%Y%m%d_%H%M%S}"
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(sweep_dir / SWEEP_FILE_NAME, Path(spec_path).read_text())
    sweep_log = _attach_sweep_log(sweep_dir)
    logger.info("sweep %s: %d combinations x steps %s", sweep_dir, len(combos), ", ".join(steps))
    rows = []
    state = {"kind": "sweep", "status": "running", "combinations": {c.name: "pending" for c in combos},
             "pid": os.getpid(), "started": datetime.now().isoformat(timespec="seconds"), "finished": None}
    _write_sweep_status(sweep_dir, state)
    bar = progress(combos, desc="sweep", unit="combination", file=sys.stderr)
    for combo in bar:
        if stop.is_set():
            break
        bar.set_postfix_str(combo.name)
        run_path = sweep_dir / combo.name
        done = _status(run_path)
        state["combinations"][combo.name] = "running"
        _write_sweep_status(sweep_dir, state)
        if done.get("status") == "ok" and done.get("steps") == steps and "row" in done:
            logger.info("combination %s finished earlier: kept", combo.name)
            rows.append({**done["row"], "reused_run": True})
            state["combinations"][combo.name] = "ok"
            continue
        t0 = time.perf_counter()
        status, error = "ok", ""
        try:
            run_pipeline(combo.values, run_dir=run_path, reports_root=None, only=only, start=start, stop=stop)
        except RunStopped as exc:
            status, error = "stopped", str(exc)
            logger.warning("combination %s stopped: %s", combo.name, exc)
        except (RunnerError, C.ConfigError, OSError) as exc:
            status, error = "failed", str(exc)
            logger.error("combination %s failed: %s", combo.name, exc)
        row = {"combination": combo.name, **combo.params, "status": status, "seconds": round(time.perf_counter() - t0, 1), "error": error}
        row.update(run_metrics(run_path))
        # the runner's per-step record stays; the sweep adds its row (and its verdict)
        record = {**_status(run_path), "status": status, "steps": steps, "row": row}
        atomic.write_text(Run(run_path).file(A.STATUS), json.dumps(record, indent=2, default=str))
        rows.append({**row, "reused_run": False})
        state["combinations"][combo.name] = status
        _write_sweep_status(sweep_dir, state)
    # a stop request that came after the last combination ended stopped nothing
    stopped = any(r["status"] == "stopped" for r in rows) or (stop.is_set() and len(rows) < len(combos))
    state["status"] = "stopped" if stopped else ("ok" if all(r["status"] == "ok" for r in rows) else "failed")
    state["finished"] = datetime.now().isoformat(timespec="seconds")
    state["combinations"] = {k: ("not run" if v in ("pending", "running") else v) for k, v in state["combinations"].items()}
    _write_sweep_status(sweep_dir, state)
    if not rows:
        rows.append({"combination": combos[0].name, **combos[0].params, "status": "not run", "seconds": 0.0, "error": "sweep stopped before it started"})
    summary = pd.DataFrame(rows)
    logger.info("sweep %s done: %d ok, %d failed", sweep_dir, int((summary["status"] == "ok").sum()), int((summary["status"] != "ok").sum()))
    logging.getLogger("synapse_nb").removeHandler(sweep_log)
    sweep_log.close()
    with atomic.atomic_path(sweep_dir / SUMMARY_NAME) as tmp:
        summary.to_csv(tmp, index=False)
    sweep_index(sweep_dir, summary, spec)
    if reports_root is not None:
        publish_sweep(sweep_dir, Path(reports_root))
    return summary


def _write_sweep_status(sweep_dir: Path, state: dict[str, Any]) -> None:
    atomic.write_text(sweep_dir / STATUS_NAME, json.dumps(state, indent=2, default=str))


def _attach_sweep_log(sweep_dir: Path) -> logging.Handler:
    """:data:`LOG_NAME`: what every combination did, next to the per-run logs."""
    pkg = logging.getLogger("synapse_nb")
    pkg.setLevel(logging.INFO)
    handler = logging.FileHandler(sweep_dir / LOG_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    pkg.addHandler(handler)
    return handler


def run_metrics(run_path: Path) -> dict[str, Any]:
    """Comparable numbers of one finished run: synapses, k, silhouette, ARI/NMI where known."""
    out: dict[str, Any] = {}
    run = Run(Path(run_path))
    if run.has(A.FEATURES):  # one column is enough to count the rows
        out["synapses"] = len(pd.read_parquet(run.file(A.FEATURES), columns=["Var1"]))
    if run.has(A.CLUSTERS):
        clusters = run.read(A.CLUSTERS)
        sizes = clusters["cluster"].value_counts().sort_index()
        out["k"] = int((sizes.index != "noise").sum())
        out["cluster_sizes"] = " ".join(f"{k}:{v}" for k, v in sizes.items())
    if run.has(A.CLUSTER_QUALITY):
        out.update(run.read(A.CLUSTER_QUALITY))
    if run.has(A.AGREEMENT):
        agreement = run.read(A.AGREEMENT)
        if len(agreement):
            out["ari"] = round(float(agreement.loc[0, "ari"]), 3)
            out["nmi"] = round(float(agreement.loc[0, "nmi"]), 3)
    return out


def publish_sweep(sweep_dir: Path, reports_root: Path) -> Path:
    """Copy the sweep's index and every combination's HTML under ``reports/<sweep name>/``."""
    import shutil

    target = reports_root / sweep_dir.name
    target.mkdir(parents=True, exist_ok=True)
    for html in sweep_dir.glob("*.html"):
        shutil.copy2(html, target / html.name)
    for run_path in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        run = Run(run_path)
        for _, rel in html_pages(run):
            dest = target / run_path.name / rel  # same relative paths, so the index links still work
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run.path / rel, dest)
    return target

