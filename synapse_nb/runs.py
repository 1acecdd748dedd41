"""Run directories: one folder per invocation holding everything the run did (SPEC 10)."""
from __future__ import annotations

import json
import logging
import platform
import sys
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import atomic
from .config import Config

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

RUNS_ROOT = Path("runs")
RUN_PREFIX = "run_"
LOG_NAME = "run.log"
MAIN_PACKAGES = ("synapse-nb", "torch", "numpy", "scipy", "pandas", "scikit-learn", "umap-learn", "plotly", "papermill", "nbconvert")


class RunError(FileNotFoundError):
    """A run directory is missing or lacks what a step needs."""


@dataclass(frozen=True)
class Run:
    """Paths inside one run directory; every step reads and writes through these names."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def cubes_dir(self) -> Path:
        return self.path / "cubes"

    @property
    def tables_dir(self) -> Path:
        return self.path / "tables"

    @property
    def figures_dir(self) -> Path:
        return self.path / "figures"

    @property
    def notebooks_dir(self) -> Path:
        return self.path / "notebooks"

    @property
    def html_dir(self) -> Path:
        return self.path / "html"

    @property
    def log_path(self) -> Path:
        return self.path / LOG_NAME

    def table(self, name: str) -> Path:
        """Path of a named table (parquet) in this run."""
        return self.tables_dir / f"{name}.parquet"

    def write_table(self, df: "pd.DataFrame", name: str, csv: bool = False) -> Path:
        """Write a named table as parquet (and CSV for people opening it in a spreadsheet)."""
        path = self.table(name)
        with atomic.atomic_path(path) as tmp:
            df.to_parquet(tmp, index=False)
        if csv:
            with atomic.atomic_path(path.with_suffix(".csv")) as tmp:
                df.to_csv(tmp, index=False)
        return path

    def read_table(self, name: str, step: str) -> "pd.DataFrame":
        """Read a table an earlier ``step`` wrote; a clear error if that step has not run."""
        import pandas as pd

        return pd.read_parquet(self.require(self.table(name), step))

    def require(self, path: Path, step: str) -> Path:
        """Fail clearly when an earlier step's output is missing."""
        if not path.exists():
            raise RunError(f"{path} not found in run {self.path}: run step {step} first (or pick another run_dir)")
        return path

    def save_params(self, cfg: Config, step: str, extra: dict[str, Any] | None = None) -> Path:
        """Record the resolved parameters a step used (``params_<step>.yaml``)."""
        data = {**cfg.to_dict(), **(extra or {})}
        return atomic.write_text(self.path / f"params_{step}.yaml", yaml.safe_dump(data, sort_keys=False))

    def save_versions(self) -> Path:
        """Record python and main package versions, so a result can be reproduced."""
        versions = {"python": sys.version.split()[0], "platform": platform.platform()}
        for pkg in MAIN_PACKAGES:
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                versions[pkg] = None
        return atomic.write_text(self.path / "versions.json", json.dumps(versions, indent=2))

    def attach_log(self) -> logging.Handler:
        """Append everything the package logs to this run's log file."""
        pkg = logging.getLogger("synapse_nb")
        pkg.setLevel(logging.INFO)
        target = str(self.log_path.resolve())
        for h in pkg.handlers:
            if isinstance(h, logging.FileHandler) and h.baseFilename == target:
                return h
        for h in [h for h in pkg.handlers if getattr(h, "_synapse_run", False)]:
            pkg.removeHandler(h)  # one run log at a time; other file handlers (a sweep's) stay
            h.close()
        self.path.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(target)
        handler._synapse_run = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        pkg.addHandler(handler)
        return handler


def new_run(root: str | Path = RUNS_ROOT, now: datetime | None = None) -> Run:
    """Create ``root/run_YYYYMMDD_HHMMSS`` (with a suffix if that second is taken)."""
    root = Path(root)
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    path = root / f"{RUN_PREFIX}{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{RUN_PREFIX}{stamp}_{n}"
    path.mkdir(parents=True)
    return Run(path)


def latest_run(root: str | Path = RUNS_ROOT) -> Run:
    """The most recent run under ``root``."""
    root = Path(root)
    runs = sorted(p for p in root.glob(f"{RUN_PREFIX}*") if p.is_dir()) if root.is_dir() else []
    if not runs:
        raise RunError(f"no run directory under {root}: run 01_load first or set run_dir")
    return Run(runs[-1])


def open_run(run_dir: str | Path = "", create: bool = False, root: str | Path = RUNS_ROOT) -> Run:
    """The run a notebook works in.

    An empty ``run_dir`` means a new run (``create=True``, the first step) or the latest run
    (later steps, so a notebook opened on its own continues the last run).
    """
    if not str(run_dir):
        run = new_run(root) if create else latest_run(root)
    else:
        path = Path(run_dir)
        if not path.is_dir():
            if not create:
                raise RunError(f"run directory not found: {path}")
            path.mkdir(parents=True)
        run = Run(path)
    run.attach_log()
    logger.info("using run directory %s", run.path)
    return run
