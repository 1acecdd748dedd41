"""Shared fixtures: a tiny demo dataset and one pipeline run of it, each made once per test session."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def copy_project(folder: Path) -> Path:
    """The project's notebooks and ci.yaml in ``folder/proj`` (a pyproject marks it a project):
    a working directory where a test can run or break steps without touching the repository."""
    import shutil

    from synapse_nb.pipeline import runner

    proj = folder / "proj"
    (proj / "notebooks").mkdir(parents=True)
    (proj / "parameters").mkdir()
    for step in runner.PIPELINE:
        shutil.copy(PROJECT_ROOT / "notebooks" / f"{step}.ipynb", proj / "notebooks")
    shutil.copy(PROJECT_ROOT / "parameters" / "ci.yaml", proj / "parameters")
    (proj / "pyproject.toml").write_text("[project]\nname = 'copy'\n")
    return proj
REALDATA = PROJECT_ROOT.parent / "shared" / "realdata"
# numba kernels (UMAP, pynndescent) compiled by tests in this process are kept where the runner
# and the notebooks keep theirs (before numba is imported, which reads it once)
os.environ.setdefault("NUMBA_CACHE_DIR", str(PROJECT_ROOT / ".numba_cache"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors: one thread avoids OpenMP barrier stalls when the cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """Two small bboxes in the seed layout (a few synapses each)."""
    from synapse_nb.data.demo import DemoSpec, make_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    make_demo_dataset(out, DemoSpec(n_bboxes=2, shape=(96, 160, 160), synapses_per_bbox=6, seed=3), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_params(tiny_demo: Path, tmp_path_factory) -> dict:
    """Parameters that point the pipeline at the tiny demo with small cubes."""
    return {
        "raw_dir": str(tiny_demo / "raw"),
        "seg_dir": str(tiny_demo / "seg"),
        "mask_dir": str(tiny_demo / "mask"),
        "table_dir": str(tiny_demo / "tables"),
        "cube_size": 32,
        "batch_size": 4,
        "cache_dir": str(tmp_path_factory.mktemp("cache")),
    }


#: How long the shared run may take (seconds) before the tests depending on it give up.
PIPELINE_TIMEOUT_S = 600
#: What the shared run sets on top of parameters/ci.yaml: the counts the notebook tests check
#: (one Grad-CAM sample per cluster, two GIFs) and a short permutation test.
SHARED_RUN_VALUES = {"attention_per_cluster": 1, "n_gifs": 2, "n_permutations": 200}


@pytest.fixture(scope="session")
def ci_values(tiny_params) -> dict:
    """parameters/ci.yaml pointed at the tiny demo."""
    import yaml

    return {**yaml.safe_load((PROJECT_ROOT / "parameters" / "ci.yaml").read_text()), **tiny_params}


@dataclass
class PanelRun:
    """The shared run as the control panel started it, and what the panel showed on the way."""

    panel: Any
    run: Path
    status: dict
    at_start: dict
    base: Path


@pytest.fixture(scope="session")
def panel_run(ci_values, tmp_path_factory) -> PanelRun:
    """One run of every pipeline notebook on the tiny demo, started from the control panel.

    The panel runs the pipeline in a child process (``python -m synapse_nb run``); this one run
    serves both the panel test (test_widgets) and every test of the notebooks' output
    (:func:`pipeline_run`), so the pipeline runs once per session, not twice."""
    from synapse_nb.pipeline import runner
    from synapse_nb.ui import panel as widgets

    base = tmp_path_factory.mktemp("pipeline")
    values = {**ci_values, **SHARED_RUN_VALUES}
    panel = widgets.ControlPanel(values, runs_root=base / "runs", reports_root=base / "reports", params_dir=base)
    run = panel.runs.start_run()
    at_start = {"running": panel.runs.running, "stop_disabled": panel.runs.stop_button.disabled,
                "run_disabled": panel.runs.run_button.disabled, "second_start": ""}
    try:  # a second start while the first runs must be refused
        panel.runs.start_run()
    except runner.RunnerError as exc:
        at_start["second_start"] = str(exc)
    status = panel.runs.wait(PIPELINE_TIMEOUT_S)
    return PanelRun(panel, run, status, at_start, base)


@pytest.fixture(scope="session")
def pipeline_run(panel_run: PanelRun):
    """The shared run as a :class:`RunResult` (read back from its ``status.json``) and its base folder."""
    from synapse_nb.core import config as C
    from synapse_nb.pipeline import runner
    from synapse_nb.pipeline.runs import Run

    run = Run(panel_run.run)
    status = runner.read_status(run.path)
    cfg = C.load_config(run.path / "params.yaml")
    _, not_asked = runner.asked_steps(runner.select_steps(), cfg)
    steps = []
    for name in status.get("steps", []):
        entry = status["step_status"][name]
        if entry["status"] in ("pending", "not run"):  # as run_pipeline: only the steps it started
            continue
        html = run.path / entry["html"] if entry.get("html") else None
        steps.append(runner.StepResult(name, entry["status"], float(entry.get("seconds", 0.0)),
                                       run.notebooks_dir / f"{name}.ipynb", html, entry.get("error", "")))
    return runner.RunResult(run, steps, not_asked=not_asked), panel_run.base
