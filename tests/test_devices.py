"""The ``device`` parameter: resolving it, refusing a device this machine lacks, autocast, and
where extraction records the device it ran on (without it entering the feature cache key)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synapse_nb.core.config import ConfigError, make_config
from synapse_nb.features import devices as D
from synapse_nb.features.checkpoint import build_model
from synapse_nb.features.devices import (
    DeviceError,
    autocast,
    describe_device,
    resolve_device,
)
from synapse_nb.features.extract import FeatureExtractor
from synapse_nb.pipeline import artifacts as A
from synapse_nb.pipeline import cache, steps
from synapse_nb.pipeline.report import run_summary
from synapse_nb.pipeline.runs import Run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def no_gpu(monkeypatch):
    """Torch sees neither a CUDA GPU nor Apple's MPS (what this CPU-only machine has anyway)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "_mps_available", lambda: False)


@pytest.fixture(scope="module")
def model():
    m, _ = build_model(None, seed=5)
    return m


# ----------------------------------------------------------------------------- resolving
def test_auto_is_the_cpu_without_a_gpu_and_the_first_gpu_with_one(no_gpu, monkeypatch):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert describe_device(resolve_device("auto")) == "cpu"
    # a GPU is only resolved, never touched: no allocation, no CUDA initialisation
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match=r"'cuda:3'.*1 CUDA GPU\(s\); use cuda:0 \.\. cuda:0"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("name", ["cuda", "cuda:3", "mps"])
def test_a_device_this_machine_lacks_is_a_one_line_error_saying_what_to_use(no_gpu, name):
    with pytest.raises(DeviceError) as info:
        resolve_device(name)
    message = str(info.value)
    assert f"'{name}'" in message and "use device: auto or cpu" in message and "\n" not in message
    # the step resolves it once, before any work, with the same error
    with pytest.raises(DeviceError, match="use device: auto or cpu"):
        steps.network_device(make_config({"device": name}))


def test_a_bad_device_name_is_refused_naming_the_parameter():
    with pytest.raises(ConfigError, match=r"parameter 'device': .*\(got 'gpu'\)"):
        make_config({"device": "gpu"})
    with pytest.raises(ValueError, match="auto, cpu, cuda, cuda:N or mps"):
        resolve_device("gpu")
    assert make_config({"device": "cuda:1"}).device == "cuda:1"  # valid name; checked against the machine later


def test_the_run_command_refuses_a_missing_device_before_any_run_for_network_steps_only(no_gpu):
    cfg = make_config({"device": "cuda", "raw_dir": "/nonexistent", "seg_dir": "/nonexistent"})
    refused = steps.dataset_refusals(cfg, steps=["03_extract"])
    assert set(refused) == {"device"} and "'cuda'" in refused["device"]
    assert "device" in steps.dataset_refusals(cfg, steps=["06_attention"])
    assert steps.dataset_refusals(cfg, steps=["04_reduce", "05_cluster"]) == {}
    assert steps.dataset_refusals(make_config({"device": "auto"}), steps=["03_extract"]) == {}


# ----------------------------------------------------------------------------- precision
def test_autocast_on_the_cpu_gives_bfloat16_matmuls_for_bfloat16_only():
    cpu = torch.device("cpu")
    a, b = torch.rand(8, 8), torch.rand(8, 8)
    with autocast(cpu, "bfloat16") as dtype:
        assert dtype == torch.bfloat16 and (a @ b).dtype == torch.bfloat16
    with autocast(cpu, "float32") as dtype:
        assert dtype is None and (a @ b).dtype == torch.float32
    assert (a @ b).dtype == torch.float32  # nothing leaks out of the block
    with pytest.raises(ValueError, match="precision"), autocast(cpu, "float16"):
        pass


# ----------------------------------------------------------------------------- extraction
def test_explicit_cpu_and_auto_without_gpu_give_the_default_features_bit_for_bit(no_gpu, model):
    cubes = np.random.default_rng(0).random((2, 16, 16, 16), dtype=np.float32)
    kwargs = {"method": "stage_specific", "layer_num": 20, "progress": False, "num_threads": 1}
    default = FeatureExtractor(model, **kwargs)
    want = default(cubes)
    for device in ("cpu", "auto", torch.device("cpu")):
        ex = FeatureExtractor(model, **kwargs, device=device)
        assert ex.device == torch.device("cpu") and ex.trunk.device == torch.device("cpu")
        got = ex(cubes)
        assert got.dtype == np.float32 and np.array_equal(got, want), device
    assert default.describe().endswith("on cpu") and "float32" in default.describe()
    with pytest.raises(DeviceError, match="'cuda'"):
        FeatureExtractor(model, **kwargs, device="cuda")


def test_the_extraction_record_holds_the_device_and_the_cache_key_does_not(tmp_path, model):
    from synapse_nb.data.datasets import open_dataset
    from synapse_nb.data.demo import DemoSpec, make_demo_dataset

    make_demo_dataset(tmp_path / "demo", DemoSpec(n_bboxes=1, shape=(64, 96, 96), synapses_per_bbox=3, seed=3),
                      progress=False)
    demo = tmp_path / "demo"
    cfg = make_config({
        "raw_dir": str(demo / "raw"), "seg_dir": str(demo / "seg"), "mask_dir": str(demo / "mask"),
        "table_dir": str(demo / "tables"), "cube_size": 32, "extraction_method": "stage_specific", "layer_num": 2,
        "cache_dir": str(tmp_path / "cache"), "device": "cpu",
    })
    run = Run(tmp_path / "run")
    cubes = steps.build(open_dataset(cfg), cfg, run, progress=False)
    info = build_model(None, seed=5)[1]
    result = steps.extract(cubes, model, info, cfg, run)
    assert result.device == "cpu" and result.meta()["device"] == "cpu"
    steps.save_features(result, run)
    assert run.read(A.EXTRACTION)["device"] == "cpu"
    assert json.loads((run.path / "tables" / "extraction.json").read_text())["device"] == "cpu"
    summary = run_summary(run.path)  # what 08_report shows under "Network and features"
    assert summary.extraction_device == "cpu" and summary.extraction.endswith("Features computed on **cpu**.")

    # the device decides nothing about the features: no key holds it, so another device hits the entry
    assert "device" not in cache.FEATURE_KEYS and "device" not in cache.EXTRACTION_KEYS
    upstream = {"cubes": cache.stored_identity(run.cubes_dir)}
    on_gpu = cfg.model_copy(update={"device": "cuda:1"})
    assert cache.stage_dir(on_gpu, "features", upstream) == cache.stage_dir(cfg, "features", upstream)
    assert cache.stage_dir(cfg.model_copy(update={"precision": "bfloat16"}), "features", upstream) != cache.stage_dir(
        cfg, "features", upstream)
    # a reused entry says where its features were made, not where this step would have run
    entry = cache.stage_dir(cfg, "features", upstream)
    meta_path = cache.entry_data(entry) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "device": "cuda:0 (some GPU)"}))
    again = steps.extract(cubes, model, info, cfg, run)
    assert cache.read_record(run.path)["features"]["hit"] and again.device == "cuda:0 (some GPU)"
    np.testing.assert_array_equal(again.matrix, result.matrix)
    del meta["device"]  # an entry written before the parameter existed was made on the CPU
    meta_path.write_text(json.dumps(meta))
    assert steps.extract(cubes, model, info, cfg, run).device == "cpu"


# ----------------------------------------------------------------------------- Grad-CAM
def test_gradcam_returns_cpu_arrays_and_the_attention_record_holds_its_device(tmp_path):
    import pandas as pd

    from synapse_nb.explain import attention as X

    trunk = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.ReLU())
    x = torch.rand(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    scores, maps, peaks = X.gradcam(trunk, x, [0], lambda a: a.mean(dim=(1, 2, 3, 4)), upto=1)
    assert isinstance(scores, np.ndarray) and maps[0].shape == (1, 8, 8, 8) and peaks.shape == (1, 1)
    samples = pd.DataFrame({"feature_row": [0], "cube_row": [0], "empty_map_0": [False]})
    result = X.AttentionResult(samples, [0], maps[0][:, None], x[:, 0].numpy(), np.zeros((1, 8, 8, 8), np.uint8),
                               np.ones((1, 8, 8, 8), bool), "norm", "RANDOM weights", 0.5, device="cpu")
    assert "explained in 0.0 s on cpu" in result.notes()
    empty = pd.DataFrame({"layer": [0]})
    run = Run(tmp_path / "run")
    steps.save_attention(run, result, empty, empty, empty)
    assert run.read(A.ATTENTION_META)["device"] == "cpu"
