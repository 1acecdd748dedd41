"""synapse-nb: notebook-first clustering of 3-D synapse morphology from volume EM.

Stages are modules (``io``, ``cubes``, ``model``, ``extract``, ``plots``, ``runs``,
``runner``, ...); they are imported on first use so ``import synapse_nb`` stays quick.
"""
from __future__ import annotations

import importlib
from typing import Any

from .notebook import say, setup

__version__ = "0.1.0"
__all__ = ["say", "setup", "__version__"]

_SUBMODULES = {
    "atomic", "config", "cubes", "demo", "extract", "io", "labels", "model", "notebook",
    "gallery", "plots", "progress", "report", "runner", "runs", "reduce", "cluster", "compare", "maps", "export",
    "volumes", "dataset", "vnc", "attention", "attention_plots", "presynapse", "presynapse_stats",
    "presynapse_report", "widgets",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
