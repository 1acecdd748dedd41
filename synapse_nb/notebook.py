"""The one setup call every notebook starts with (STYLE: the notebook contract)."""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: Renderer that keeps figures interactive in JupyterLab and embeds plotly.js (once per
#: page) in the ``text/html`` output that nbconvert keeps in the exported report.
PLOTLY_RENDERER = "plotly_mimetype+notebook"


def find_project_root(start: str | Path | None = None) -> Path | None:
    """The nearest folder upwards holding ``pyproject.toml`` and ``notebooks/``."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "notebooks").is_dir():
            return folder
    return None


def configure_logging(level: int = logging.WARNING) -> None:
    """Package messages go to stderr at ``level``; a run adds its own log file (runs.Run)."""
    pkg = logging.getLogger("synapse_nb")
    pkg.setLevel(logging.INFO)
    if not any(getattr(h, "_synapse_nb", False) for h in pkg.handlers):
        handler = logging.StreamHandler()
        handler._synapse_nb = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        pkg.addHandler(handler)
    for h in pkg.handlers:
        if getattr(h, "_synapse_nb", False):
            h.setLevel(level)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so a notebook gives the same figures twice."""
    random.seed(seed)
    np.random.seed(seed)
    import torch

    torch.manual_seed(seed)


def setup(seed: int = 42, chdir: bool = True, log_level: int = logging.WARNING) -> Path:
    """Prepare a notebook: project-root working directory, plotly renderer, seeds, threads, logging.

    Relative paths in parameters are relative to the project root whether the notebook runs
    in JupyterLab (cwd ``notebooks/``) or under the runner.
    Returns the working directory.
    """
    root = find_project_root()
    if chdir and root is not None:
        os.chdir(root)
    cwd = Path.cwd()
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cwd / ".numba_cache"))
    import plotly.io as pio
    import torch

    pio.renderers.default = PLOTLY_RENDERER
    torch.set_num_threads(os.cpu_count() or 1)
    seed_everything(seed)
    configure_logging(log_level)
    return cwd
