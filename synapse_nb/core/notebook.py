"""The one setup call every notebook starts with (STYLE: the notebook contract)."""
from __future__ import annotations

import html
import logging
import os
import random
import re
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: Renderer pair: the mime bundle keeps figures interactive in JupyterLab, the offline
#: notebook renderer puts plotly.js once per page (at setup) plus each figure's ``text/html``
#: into the notebook, which is what nbconvert keeps in the exported report.
OFFLINE_RENDERER = "synapse_offline"
PLOTLY_RENDERER = f"plotly_mimetype+{OFFLINE_RENDERER}"


def _register_offline_renderer() -> None:
    """Plotly's own notebook renderer links MathJax from a CDN in every figure; reports must
    open offline, so ours leaves MathJax out (figures use no LaTeX)."""
    import plotly.io as pio
    from plotly.io._base_renderers import NotebookRenderer

    class OfflineNotebookRenderer(NotebookRenderer):
        def to_mimebundle(self, fig_dict):
            html = pio.to_html(
                fig_dict,
                config=self.config,
                auto_play=self.auto_play,
                include_plotlyjs=False,
                include_mathjax=False,
                full_html=False,
                animation_opts=self.animation_opts,
                default_width="100%",
                default_height=525,
                validate=False,
            )
            return {"text/html": html}

    if OFFLINE_RENDERER not in pio.renderers:
        pio.renderers[OFFLINE_RENDERER] = OfflineNotebookRenderer()


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


def markdown_safe(text: str) -> str:
    """Escape HTML outside `code spans`: user strings (paths, names) never become markup."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(p if p.startswith("`") else html.escape(p, quote=False) for p in parts)


def say(text: str) -> None:
    """Show a sentence as formatted text in the notebook (and its HTML report)."""
    from IPython.display import Markdown, display

    display(Markdown(markdown_safe(text)))


def setup(seed: int = 42, chdir: bool = True, log_level: int = logging.WARNING) -> None:
    """Prepare a notebook: project-root working directory, plotly renderer, seeds, threads, logging.

    Relative paths in parameters are relative to the project root whether the notebook runs
    in JupyterLab (cwd ``notebooks/``) or under the runner.
    """
    root = find_project_root()
    if chdir and root is not None:
        os.chdir(root)
    cwd = Path.cwd()
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cwd / ".numba_cache"))
    import plotly.io as pio
    import torch

    _register_offline_renderer()
    pio.renderers.default = PLOTLY_RENDERER
    torch.set_num_threads(os.cpu_count() or 1)
    seed_everything(seed)
    configure_logging(log_level)
    logger.info("notebook set up in %s (seed %d)", cwd, seed)
