"""Parameter sweeps: a base parameter set and a grid, every combination run (README, "Sweeps").

Each combination gets its own run directory inside the sweep directory, named from its grid
values plus a short hash of them (so two combinations never share a folder). A failing
combination is recorded and the others go on. Resuming a sweep keeps a combination whose run
finished with the parameters the sweep resolves to now; one whose parameters changed (the
``base`` was edited) runs again, its earlier run moved aside to ``.superseded/``. Cubes and
features shared between combinations come from the cache (synapse_nb.pipeline.cache), so a
segmentation-type x alpha sweep builds its cubes once.

A new sweep directory is created exclusively (a suffix when the second is taken) and a
running sweep holds a lock on its directory, so two sweeps never write into one folder.
"""
from __future__ import annotations

import fcntl
import hashlib
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
import yaml

from ..core import atomic
from ..core import config as C
from ..core.errors import bounded, validate_name
from ..core.notebook import find_project_root
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
from .steps import dataset_refusals

logger = logging.getLogger(__name__)

SWEEP_PREFIX = "sweep_"
# the sweep's own files, in the sweep folder beside the combinations' run directories
STATUS_NAME = "status.json"
SUMMARY_NAME = "summary.csv"
SWEEP_FILE_NAME = "sweep.yaml"
LOG_NAME = "sweep.log"
LOCK_NAME = ".sweep.lock"  # held (flock) while a sweep runs in the folder
SUPERSEDED_DIR = ".superseded"  # earlier runs of combinations whose parameters changed
SWEEP_KEYS = ("base", "grid")
HASH_CHARS = 8
READABLE_MAX = 80  # characters of the readable part of a combination's folder name


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
        seen = set()
        for value in values:
            if (canonical := _canonical(value)) in seen:
                raise C.ConfigError(f"{path}: grid key '{key}' lists {value!r} twice; remove the duplicate")
            seen.add(canonical)
    return {"base": base, "grid": grid}


def _token(value: Any) -> str:
    text = str(value).replace(".", "_")
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def _canonical(value: Any) -> str:
    """One text per value: key order does not matter, ``1``, ``1.0``, ``"1"`` and ``true`` differ."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def combination_hash(params: Mapping[str, Any]) -> str:
    """The first :data:`HASH_CHARS` hex digits of sha256 of the grid values' canonical JSON."""
    return hashlib.sha256(_canonical(dict(params)).encode("utf-8")).hexdigest()[:HASH_CHARS]


def combination_name(params: Mapping[str, Any]) -> str:
    """A folder name from the grid values and their hash, e.g. ``segmentation_type5__alpha0_5-1f3a9c2e``.

    The readable part may be the same for different values (``em.v1`` and ``em_v1``) and is
    cut at :data:`READABLE_MAX` characters; the hash keeps every combination's folder its own.
    """
    readable = "__".join(f"{_token(k)}{_token(v)}" for k, v in params.items()) or "base"
    readable = readable[:READABLE_MAX].rstrip("_-")
    if not readable[:1].isalnum():
        readable = f"c{readable}"
    return validate_name(f"{readable}-{combination_hash(params)}", what="combination folder name")


def expand(spec: Mapping[str, Any]) -> list[Combination]:
    """Every combination of the grid on top of the base, in grid order."""
    grid = spec["grid"]
    keys = list(grid)
    combos = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values))
        combos.append(Combination(combination_name(params), params, {**spec["base"], **params}))
    names = [c.name for c in combos]
    if len(set(names)) != len(names):  # a hash collision: never seen, but never share a folder
        twice = sorted({n for n in names if names.count(n) > 1})
        raise C.ConfigError(f"sweep grid: combinations {twice} get the same folder name; change one of their values")
    return combos


def validate(combos: list[Combination], steps: list[str], source: str, *,
             root: Path | None = None) -> dict[str, tuple[C.Config, dict[str, Any]]]:
    """Check every combination before anything runs; errors name the key and the combination.

    Besides the parameters themselves, each combination's segmentation type and crop mode are
    checked against its dataset (opened once per dataset), and every combination the dataset
    cannot serve is named, one line each (relative data paths resolve against ``root``, by
    default the project folder). Returns per combination name what it resolves to:
    the validated ``Config`` and the notebook-only (display) parameters it sets.
    """
    plans = {}
    for combo in combos:
        try:
            cfg, per_step = plan_parameters(combo.values, steps, source=f"{source} (combination {combo.name})")
        except C.ConfigError as exc:
            raise C.ConfigError(str(exc)) from None
        notebook_only = {k: v for values in per_step.values() for k, v in values.items() if k not in C.Config.model_fields}
        plans[combo.name] = (cfg, notebook_only)
    root, memo, refused = root or find_project_root(), {}, []
    for combo in combos:
        refusals = dataset_refusals(plans[combo.name][0], steps=steps, root=root, memo=memo)
        if refusals:
            refused.append(f"combination {combo.name}: " + "; ".join(refusals.values()))
    if refused:
        lines = bounded(refused, what="combination(s)")
        raise C.ConfigError(f"{source}: {len(refused)} of {len(combos)} combination(s) ask for what their dataset cannot serve; "
                            "remove them from the grid:\n  " + "\n  ".join(lines))
    return plans


def parameter_changes(run_path: Path, cfg: C.Config, notebook_only: Mapping[str, Any], record: Mapping[str, Any]) -> list[str]:
    """What differs between a finished run of a combination and what it resolves to now.

    Compares the run's ``params.yaml`` with ``cfg`` (and the display parameters the sweep
    recorded with it); one entry per changed key, e.g. ``"cube_size: 32 -> 48"``. An empty
    list means the run is still what the sweep asks for.
    """
    run = Run(run_path)
    if not run.has(A.PARAMS):
        return [f"{A.PARAMS.path} missing"]
    try:
        before = run.read(A.PARAMS)
    except (yaml.YAMLError, OSError) as exc:
        return [f"{A.PARAMS.path} unreadable ({type(exc).__name__})"]
    now = yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # as the runner writes it
    if not isinstance(before, dict):
        return [f"{A.PARAMS.path} is not a mapping"]
    changes = _differences(before, now)
    recorded = record.get("notebook_parameters")
    if isinstance(recorded, dict):
        changes += _differences(recorded, notebook_only)
    return changes


def _differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    def show(values: Mapping[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "unset"

    return [f"{k}: {show(before, k)} -> {show(now, k)}" for k in sorted(set(before) | set(now))
            if k not in before or k not in now or before[k] != now[k]]


def _status(run_path: Path) -> dict[str, Any]:
    """The status record of one combination's run (empty before it ran, or when unreadable)."""
    run = Run(run_path)
    if not run.has(A.STATUS):
        return {}
    try:
        record = run.read(A.STATUS)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        logger.warning("%s unreadable (%s): the combination runs again", run.file(A.STATUS), exc)
        return {}
    return record if isinstance(record, dict) else {}


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

    Without ``sweep_dir`` a new ``runs_root/sweep_<timestamp>`` is created (never one that
    exists). Passing an existing ``sweep_dir`` resumes it: combinations that finished with
    the parameters the spec resolves to now are kept as they are and only the others run.
    Setting ``stop`` (or the runner's STOP_SIGNAL) stops the running combination cleanly and
    starts no other; ``status.json`` in the sweep folder says how far it got.
    """
    if stop is None:
        stop = threading.Event()
        with stop_on_signal(stop):
            return _run_sweep(spec_path, sweep_dir, runs_root, reports_root, only, start, stop)
    return _run_sweep(spec_path, sweep_dir, runs_root, reports_root, only, start, stop)


def new_sweep_dir(runs_root: str | Path, now: datetime | None = None) -> Path:
    """Create ``runs_root/sweep_YYYYMMDD_HHMMSS`` exclusively (a suffix when that second is taken)."""
    root = Path(runs_root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    path, n = root / f"{SWEEP_PREFIX}{stamp}", 1
    while True:
        try:
            path.mkdir()  # no exist_ok: another sweep started this second gets its own folder
            return path
        except FileExistsError:
            n += 1
            path = root / f"{SWEEP_PREFIX}{stamp}_{n}"


def _lock_sweep_dir(sweep_dir: Path) -> int:
    """Hold :data:`LOCK_NAME` in ``sweep_dir`` while the sweep runs; released when the process ends."""
    fd = os.open(sweep_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunnerError(
            f"sweep directory {sweep_dir} is in use by another running sweep: wait for it to end or pass another --sweep-dir"
        ) from None
    return fd


def _supersede(sweep_dir: Path, run_path: Path) -> Path:
    """Move a combination's earlier run to ``.superseded/<name>_<timestamp>`` (kept, not deleted)."""
    folder = sweep_dir / SUPERSEDED_DIR
    folder.mkdir(exist_ok=True)
    stamp = f"{datetime.now():%Y%m%d_%H%M%S}"
    target, n = folder / f"{run_path.name}_{stamp}", 1
    while target.exists():
        n += 1
        target = folder / f"{run_path.name}_{stamp}_{n}"
    os.rename(run_path, target)
    return target


def _run_sweep(spec_path, sweep_dir, runs_root, reports_root, only, start, stop: threading.Event) -> pd.DataFrame:
    spec = read_spec(spec_path)
    combos = expand(spec)
    steps = select_steps(only, start)
    plans = validate(combos, steps, str(spec_path))
    if sweep_dir is None:
        sweep_dir = new_sweep_dir(runs_root)
    else:  # resume (or a folder the control panel made for this sweep)
        sweep_dir = Path(sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_sweep_dir(sweep_dir)
    try:
        # folders that are there now are this sweep's earlier runs; any other is claimed new
        present = {p.name for p in sweep_dir.iterdir() if p.is_dir()}
        atomic.write_text(sweep_dir / SWEEP_FILE_NAME, Path(spec_path).read_text())
        sweep_log = _attach_sweep_log(sweep_dir)
        try:
            rows = _run_combinations(sweep_dir, combos, plans, present, steps, only, start, stop)
        finally:
            logging.getLogger("synapse_nb").removeHandler(sweep_log)
            sweep_log.close()
        summary = pd.DataFrame(rows)
        with atomic.atomic_path(sweep_dir / SUMMARY_NAME) as tmp:
            summary.to_csv(tmp, index=False)
        sweep_index(sweep_dir, summary, spec)
        if reports_root is not None:
            publish_sweep(sweep_dir, Path(reports_root))
    finally:
        os.close(lock)
    return summary


def _run_combinations(sweep_dir: Path, combos: list[Combination], plans, present: set[str], steps: list[str],
                      only, start, stop: threading.Event) -> list[dict[str, Any]]:
    """Run (or keep) every combination in turn; the summary rows, the sweep's status.json kept current."""
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
        cfg, notebook_only = plans[combo.name]
        state["combinations"][combo.name] = "running"
        _write_sweep_status(sweep_dir, state)
        claim = combo.name not in present
        if not claim:
            done = _status(run_path)
            finished = done.get("status") == "ok" and done.get("steps") == steps and "row" in done
            changes = parameter_changes(run_path, cfg, notebook_only, done) if finished or Run(run_path).has(A.PARAMS) else []
            if finished and not changes:
                logger.info("combination %s finished earlier: kept", combo.name)
                rows.append({**done["row"], "reused_run": True})
                state["combinations"][combo.name] = "ok"
                continue
            if changes:
                moved = _supersede(sweep_dir, run_path)
                logger.warning("combination %s: parameters changed since it ran (%s): running it again; the earlier run is kept in %s",
                               combo.name, "; ".join(changes), moved)
                claim = True
        t0 = time.perf_counter()
        status, error = "ok", ""
        try:
            if claim:
                run_path.mkdir()  # no exist_ok: a combination's folder is this sweep's alone
        except FileExistsError:
            status = "failed"
            error = f"combination folder {run_path} was created by another process while this sweep ran; left untouched (give each sweep its own folder)"
            logger.error("combination %s not run: %s", combo.name, error)
            rows.append({"combination": combo.name, **combo.params, "status": status, "seconds": 0.0, "error": error, "reused_run": False})
            state["combinations"][combo.name] = status
            _write_sweep_status(sweep_dir, state)
            continue
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
        # the runner's per-step record stays; the sweep adds its row (and its verdict) and the
        # display parameters (params.yaml has only the pipeline's) so a resume can compare them
        record = {**_status(run_path), "status": status, "steps": steps, "row": row, "notebook_parameters": notebook_only}
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
    ok = sum(r["status"] == "ok" for r in rows)
    logger.info("sweep %s done: %d ok, %d failed", sweep_dir, ok, len(rows) - ok)
    return rows


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
    """Copy the sweep's index and every combination's HTML under ``reports/<sweep name>/``.

    Each page is copied atomically: a failed copy leaves the page published earlier as it was.
    Earlier runs moved to ``.superseded/`` are not published.
    """
    target = reports_root / sweep_dir.name
    target.mkdir(parents=True, exist_ok=True)
    for html in sweep_dir.glob("*.html"):
        _copy_atomic(html, target / html.name)
    for run_path in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        run = Run(run_path)
        for _, rel in html_pages(run):
            _copy_atomic(run.path / rel, target / run_path.name / rel)  # same relative paths: the index links work
    return target


def _copy_atomic(src: Path, dest: Path) -> None:
    import shutil

    with atomic.atomic_path(dest) as tmp:
        shutil.copy2(src, tmp)

