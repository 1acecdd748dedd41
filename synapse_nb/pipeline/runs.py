"""Run directories: one folder per invocation holding everything the run did (see docs/architecture.md)."""
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

from ..core import atomic
from ..core.config import Config
from . import artifacts as A

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

RUNS_ROOT = Path("runs")
RUN_PREFIX = "run_"
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
        return self.file(A.CUBES)

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
        return self.file(A.LOG)

    def file(self, artifact: A.Artifact, **fields: str) -> Path:
        """Where ``artifact`` lives in this run (``fields`` fill ``{step}`` / ``{name}``)."""
        return self.path / artifact.at(**fields)

    def write(self, artifact: A.Artifact, data: "pd.DataFrame | dict[str, Any]", **fields: str) -> Path:
        """Write a table (parquet, plus CSV when the artifact says so) or a JSON record, atomically."""
        path = self.file(artifact, **fields)
        if artifact.format == "json":
            return atomic.write_text(path, json.dumps(data, indent=2))
        if artifact.format != "parquet":
            raise TypeError(f"{artifact.name} is {artifact.format}: write it with its own writer at run.file(...)")
        with atomic.atomic_path(path) as tmp:
            data.to_parquet(tmp, index=False)
        if artifact.csv:
            with atomic.atomic_path(path.with_suffix(".csv")) as tmp:
                data.to_csv(tmp, index=False)
        return path

    def read(self, artifact: A.Artifact, **fields: str) -> Any:
        """Read what an earlier step wrote; a clear error naming that step if it has not run."""
        path = self.require(artifact, **fields)
        if artifact.format == "json":
            return json.loads(path.read_text())
        if artifact.format == "yaml":
            return yaml.safe_load(path.read_text()) or {}
        import pandas as pd

        return pd.read_parquet(path)

    def has(self, artifact: A.Artifact, **fields: str) -> bool:
        return self.file(artifact, **fields).exists()

    def require(self, artifact: A.Artifact, **fields: str) -> Path:
        """The artifact's path; fails clearly when the step that writes it has not run."""
        path = self.file(artifact, **fields)
        if not path.exists():
            step = artifact.step.format(**fields) if fields else artifact.step
            raise RunError(f"{path} not found in run {self.path}: run step {step} first (or pick another run_dir)")
        return path

    def save_params(self, cfg: Config, step: str, extra: dict[str, Any] | None = None) -> Path:
        """Record the resolved parameters a step used (``params_<step>.yaml``)."""
        data = {**cfg.to_dict(), **(extra or {})}
        return atomic.write_text(self.file(A.STEP_PARAMS, step=step), yaml.safe_dump(data, sort_keys=False))

    def save_versions(self) -> Path:
        """Record python and main package versions, so a result can be reproduced."""
        versions = {"python": sys.version.split()[0], "platform": platform.platform()}
        for pkg in MAIN_PACKAGES:
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                versions[pkg] = None
        return self.write(A.VERSIONS, versions)

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
    """Create ``root/run_YYYYMMDD_HHMMSS`` (with a suffix if that second is taken).

    A folder that cannot be written (read-only, full disk) is a :class:`RunError` naming it,
    not a traceback in the first notebook.
    """
    root = Path(root)
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    path = root / f"{RUN_PREFIX}{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{RUN_PREFIX}{stamp}_{n}"
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise RunError(
            f"cannot create a run directory in {root}: {why}; make {root} writable or choose another folder (--run-dir / run_dir)"
        ) from None
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
