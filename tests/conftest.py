"""Shared fixtures: a tiny demo dataset made once per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REALDATA = PROJECT_ROOT.parent / "shared" / "realdata"


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


@pytest.fixture(scope="session")
def pipeline_run(tiny_params, tmp_path_factory):
    """One papermill run of every pipeline notebook on the tiny demo (shared by the tests)."""
    from synapse_nb.pipeline import runner

    base = tmp_path_factory.mktemp("pipeline")
    values = {**tiny_params, "n_preview": 2, "attention_per_cluster": 1, "n_gifs": 2, "n_permutations": 200}
    result = runner.run_pipeline(values, runs_root=base / "runs", reports_root=base / "reports")
    return result, base
