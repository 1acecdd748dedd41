"""synapse-nb: notebook-first clustering of 3-D synapse morphology from volume EM.

The subpackages follow the pipeline (see docs/architecture.md):

``core``         parameters, labels, errors, atomic writes, notebook setup
``data``         volumes, synapse tables, dataset and connectome descriptions, demo data
``sampling``     which synapses of a connectome a run builds (seeded policies)
``cubes``        one cube per synapse, rendering, morphometrics
``features``     the VGG3D network and feature extraction
``engine``       Dask: batches of synapses as tasks, each written as its own partition
``training``     self-supervised pretraining
``analysis``     reduce, cluster, compare, export
``explain``      3-D Grad-CAM
``connectivity`` synapses sharing a presynaptic neurite
``figures``      maps, plots, galleries
``pipeline``     run directories, cache, steps, runner, sweeps, reports
``ui``           the control panel and explorer (a leaf: nothing imports it)

They are imported on first use, so ``import synapse_nb`` stays quick.
"""
from __future__ import annotations

import importlib
from typing import Any

from .core.notebook import say, setup

__version__ = "0.1.0"
SUBPACKAGES = ("core", "data", "sampling", "cubes", "features", "engine", "training", "analysis", "explain", "connectivity", "figures", "pipeline", "ui")
__all__ = [*SUBPACKAGES, "say", "setup", "__version__"]


def __getattr__(name: str) -> Any:
    if name in SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
