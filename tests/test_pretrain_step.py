"""02_pretrain as a pipeline step: skipped unless asked, the one network of a run, feature cache
keys that tell random from pretrained weights, the ``pretrain`` command, and a tiny real run."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from synapse_nb.core import config as C
from synapse_nb.data.datasets import open_dataset
from synapse_nb.features.extract import FeatureResult
from synapse_nb.pipeline import artifacts as A
from synapse_nb.pipeline import cache, runner, steps
from synapse_nb.pipeline.cli import PRETRAIN_STEPS, main
from synapse_nb.pipeline.runs import Run, RunError

from .conftest import copy_project
from .test_runner_faults import FakePapermill

CI = "parameters/ci.yaml"
WITHOUT_02 = [s for s in runner.PIPELINE if s != "02_pretrain"]


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """The project's notebooks and ci.yaml in a throw-away working directory."""
    proj = copy_project(tmp_path)
    monkeypatch.chdir(proj)
    return proj


@pytest.fixture
def fake(monkeypatch) -> FakePapermill:
    import papermill

    executor = FakePapermill()
    monkeypatch.setattr(papermill, "execute_notebook", executor)
    return executor


# ----------------------------------------------------------------------------- the runner
def test_pretrain_is_not_asked_by_default_and_the_run_is_otherwise_unchanged(project, fake):
    result = runner.run_pipeline(CI, run_dir="runs/R")
    assert result.ok and [s for s, _ in fake.calls] == WITHOUT_02 == [s.notebook for s in result.steps]
    assert list(result.not_asked) == ["02_pretrain"] and "pretrain is false" in result.not_asked["02_pretrain"]
    status = runner.read_status(project / "runs" / "R")
    assert status["status"] == "ok" and status["steps"] == WITHOUT_02
    assert list(status["step_status"]) == list(runner.PIPELINE)  # in pipeline order, 02 included
    assert status["step_status"]["02_pretrain"]["status"] == runner.NOT_ASKED == "not asked"
    assert all(status["step_status"][s]["status"] == "ok" for s in WITHOUT_02)
    assert not (project / "runs" / "R" / "html" / "02_pretrain.html").exists()
    # 03 is told pretraining is off, so it takes weights_path (or random weights)
    assert dict(fake.calls)["03_extract"]["pretrain"] is False


def test_pretrain_on_runs_02_between_01_and_03_with_its_settings(project, fake):
    values = {**C.read_yaml(project / CI), "pretrain": True, "pretrain_epochs": 3}
    result = runner.run_pipeline(values, run_dir="runs/R", only=["01_load", "02_pretrain", "03_extract"])
    assert result.ok and not result.not_asked
    assert [s for s, _ in fake.calls] == ["01_load", "02_pretrain", "03_extract"]
    params = dict(fake.calls)
    assert params["02_pretrain"]["pretrain_epochs"] == 3 and params["02_pretrain"]["pretrain"] is True
    assert params["03_extract"]["pretrain"] is True and "pretrain_epochs" not in params["03_extract"]
    assert runner.read_status(project / "runs" / "R")["step_status"]["02_pretrain"]["status"] == "ok"


def test_only_02_without_pretrain_says_what_to_set(project, fake):
    with pytest.raises(runner.RunnerError, match=r"02_pretrain runs only when pretrain is true.*pretrain: true"):
        runner.run_pipeline(CI, run_dir="runs/R", only=["02_pretrain"])
    assert not fake.calls and not (project / "runs" / "R").exists()


def test_the_pretrain_command_forces_pretraining_and_names_the_weights(project, fake, caplog):
    caplog.set_level(logging.INFO, logger="synapse_nb")
    assert main(["pretrain", CI, "--run-dir", "runs/P"]) == 0
    assert [s for s, _ in fake.calls] == list(PRETRAIN_STEPS) == ["01_load", "02_pretrain"]
    assert dict(fake.calls)["02_pretrain"]["pretrain"] is True
    weights = project / "runs" / "P" / A.PRETRAIN_WEIGHTS.path
    assert any(r.getMessage() == f"pretrained weights: {weights}" for r in caplog.records)
    assert "(with pretrain: true)" in runner.read_status(project / "runs" / "P")["source"]
    with pytest.raises(SystemExit):
        main(["pretrain"])  # the parameter file is required


# ----------------------------------------------------------------------------- the network of a run
def _save_trunk(path: Path, seed: int) -> Path:
    """Weights as 02_pretrain writes them: the trunk under model_state_dict."""
    from synapse_nb.features.checkpoint import build_model

    model, _ = build_model(None, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": model.state_dict()}, path)
    return path


def test_network_takes_the_runs_pretrained_weights_and_names_02_when_they_are_missing(tmp_path):
    run = Run(tmp_path / "run")
    on, off = C.make_config({"pretrain": True}), C.make_config({"pretrain": False})
    with pytest.raises(RunError, match=r"holds no pretrained weights.*Run step 02_pretrain first"):
        steps.network(run, on)
    _, info = steps.network(run, off)
    assert not info.pretrained  # pretraining off: the seeded random weights, even with weights in the run
    weights = _save_trunk(run.file(A.PRETRAIN_WEIGHTS), seed=7)
    model, info = steps.network(run, on)
    assert info.pretrained and Path(info.source) == weights
    assert "RANDOM" not in info.description()
    saved = torch.load(weights, weights_only=True)["model_state_dict"]
    assert torch.equal(model.state_dict()["features.0.weight"], saved["features.0.weight"])
    # a run folder that links to a cleared cache entry says so
    shutil.rmtree(run.file(A.PRETRAIN_DIR))
    run.file(A.PRETRAIN_DIR).symlink_to(tmp_path / "gone", target_is_directory=True)
    with pytest.raises(RunError, match=r"cache entry that no longer exists.*02_pretrain"):
        steps.network(run, on)


def test_feature_cache_keys_tell_random_from_pretrained_weights(tmp_path, monkeypatch):
    run = Run(tmp_path / "run")
    run.cubes_dir.mkdir(parents=True)
    (run.cubes_dir / "table.parquet").write_bytes(b"cubes")
    calls: list[bool] = []

    def fake_compute(cubes, model, info, cfg, device=None):
        calls.append(cfg.pretrain)
        return FeatureResult(pd.DataFrame({"feat_0": [float(len(calls))]}), pd.DataFrame(), "f.csv", "d", 0.0)

    monkeypatch.setattr(steps, "compute_features", fake_compute)
    base = {"cache_dir": str(tmp_path / "cache"), "device": "cpu"}
    random_cfg, pre_cfg = C.make_config(base), C.make_config({**base, "pretrain": True})
    keys = []
    for cfg in (random_cfg, random_cfg):
        steps.extract(None, None, None, cfg, run)
        keys.append(run.read(A.CACHE_RECORD)["features"])
    assert len(calls) == 1 and keys[1]["hit"]  # the same network: reused
    _save_trunk(run.file(A.PRETRAIN_WEIGHTS), seed=1)
    first = steps.extract(None, None, None, pre_cfg, run)
    record = run.read(A.CACHE_RECORD)["features"]
    assert len(calls) == 2 and not record["hit"] and record["key"] != keys[0]["key"], "pretrained reused random features"
    assert float(first.features["feat_0"].iloc[0]) == 2.0
    steps.extract(None, None, None, pre_cfg, run)
    assert len(calls) == 2 and run.read(A.CACHE_RECORD)["features"] == {"key": record["key"], "hit": True}
    _save_trunk(run.file(A.PRETRAIN_WEIGHTS), seed=2)  # another training: other weights, other features
    steps.extract(None, None, None, pre_cfg, run)
    assert len(calls) == 3 and run.read(A.CACHE_RECORD)["features"]["key"] not in (record["key"], keys[0]["key"])


def test_attention_explains_the_network_03_used(tmp_path):
    run = Run(tmp_path / "run")
    run.save_params(C.make_config({"pretrain": True, "weights_path": "init.pt"}), "03_extract")
    # the runner passes 06 the same weights_path as 03: 03's network (the pretrained one) is kept
    fcfg = steps.feature_config(run, C.make_config({"weights_path": "init.pt"}))
    assert fcfg.pretrain and fcfg.weights_path == "init.pt"
    assert steps.feature_config(run, C.make_config()).pretrain
    # other weights given to 06 replace 03's network
    other = steps.feature_config(run, C.make_config({"weights_path": "other.pt"}))
    assert not other.pretrain and other.weights_path == "other.pt"


# ----------------------------------------------------------------------------- the step itself
def test_with_pretraining_off_the_notebook_helpers_do_nothing(tmp_path):
    run, off = Run(tmp_path / "run"), C.make_config({"pretrain": False, "weights_path": "w.pt"})
    assert "**Pretraining is off**" in steps.pretrain_intro(off) and "`w.pt`" in steps.pretrain_intro(off)
    assert steps.pretrain_cubes(run, off) is None  # no cubes needed: nothing is read
    assert steps.pretrain_views(None, off) is None and steps.pretrain(None, off, run) is None
    assert steps.pretrain_outcome(None, run) == "" and steps.loss_figure(None) is None and steps.epoch_table(None) is None
    assert not run.path.exists()
    on = C.make_config({"pretrain": True, "extraction_method": "stage_specific", "layer_num": 13, "pretrain_cube_size": 0})
    assert "up to features.13" in steps.pretrain_intro(on) and "their stored size" in steps.pretrain_intro(on)
    settings = steps.pretrain_settings(on, 80, "0_1")
    assert settings.upto == 13 and settings.cube_size == 80 and settings.epochs == on.pretrain_epochs
    assert steps.pretrain_settings(C.make_config({"pretrain_cube_size": 32}), 80, "-1_1").upto is None  # whole trunk


def test_a_training_of_other_settings_is_started_over_and_one_of_the_same_resumes(tmp_path):
    run = Run(tmp_path / "run")
    folder = run.file(A.PRETRAIN_DIR)
    folder.mkdir(parents=True)
    (folder / "training_state.pt").write_bytes(b"state")
    run.write(A.PRETRAIN_RECORD, {"key": "k1", "finished": False})
    steps._clear_other_training(run, folder, "k1")
    assert (folder / "training_state.pt").is_file()  # same settings: kept, the training resumes from it
    steps._clear_other_training(run, folder, "k2")
    assert not folder.exists()
    # a link into the cache is never trained into: it is removed, the entry stays
    entry = tmp_path / "cache" / "entry"
    entry.mkdir(parents=True)
    folder.symlink_to(entry, target_is_directory=True)
    steps._clear_other_training(run, folder, "k1")
    assert not folder.exists() and not folder.is_symlink() and entry.is_dir()


def test_a_second_run_with_the_same_cubes_and_settings_links_the_cached_weights(tiny_params, tmp_path, one_torch_thread):
    values = {**tiny_params, "cache_dir": str(tmp_path / "cache"), "pretrain": True, "pretrain_cube_size": 16,
              "pretrain_epochs": 1, "pretrain_batch_size": 4, "extraction_method": "stage_specific", "layer_num": 13,
              "device": "cpu"}
    cfg = C.make_config(values)
    data = open_dataset(cfg)
    first, second = Run(tmp_path / "r1"), Run(tmp_path / "r2")
    epochs: list[int] = []
    result = steps.pretrain(steps.build(data, cfg, first, progress=False), cfg, first, progress=False,
                            on_epoch=lambda e, loss, s: epochs.append(e))
    assert epochs == [1] and len(result.history) == 1 and not first.file(A.PRETRAIN_DIR).is_symlink()
    assert first.read(A.PRETRAIN_RECORD)["reused_from_cache"] is False
    again = steps.pretrain(steps.build(data, cfg, second, progress=False), cfg, second, progress=False,
                           on_epoch=lambda e, loss, s: epochs.append(e))
    assert epochs == [1], "the second run trained again"
    assert second.file(A.PRETRAIN_DIR).is_symlink() and second.read(A.PRETRAIN_RECORD)["reused_from_cache"]
    assert again.weights_path == second.file(A.PRETRAIN_WEIGHTS)
    pd.testing.assert_frame_equal(again.history, result.history, check_exact=False, rtol=1e-9, check_dtype=False)
    assert steps.network_identity(second, cfg) == steps.network_identity(first, cfg)  # its features are reused too
    # anything that decides the weights gives another entry
    upstream = {"cubes": cache.stored_identity(first.cubes_dir)}
    other = C.make_config({**values, "pretrain_temperature": 0.5})
    assert cache.stage_dir(cfg, "pretrain", upstream) != cache.stage_dir(other, "pretrain", upstream)


# ----------------------------------------------------------------------------- a tiny real run
@pytest.mark.notebooks
def test_a_tiny_run_pretrains_and_extracts_with_the_trained_weights(tiny_params, tmp_path):
    values = {**tiny_params, "cache_dir": str(tmp_path / "cache"), "pretrain": True, "pretrain_cube_size": 16,
              "pretrain_epochs": 2, "pretrain_batch_size": 4, "extraction_method": "stage_specific", "layer_num": 20,
              "n_preview": 1, "n_examples": 2, "device": "cpu"}
    # 01_load in this process (its notebook is tested elsewhere): one kernel less to start
    cfg, _ = runner.plan_parameters(values, ["01_load"])
    run = Run(tmp_path / "runs" / "tiny")
    run.path.mkdir(parents=True)
    steps.build(open_dataset(cfg), cfg, run, progress=False)
    run.save_params(cfg, "01_load")
    result = runner.run_pipeline(values, run_dir=run.path, runs_root=tmp_path / "runs", reports_root=tmp_path / "reports",
                                 only=["02_pretrain", "03_extract"])
    assert result.ok and [s.notebook for s in result.steps] == ["02_pretrain", "03_extract"]
    record = run.read(A.PRETRAIN_RECORD)
    assert record["finished"] and record["epochs_run"] == 2 and len(record["seconds_per_epoch"]) == 2
    assert record["settings"]["cube_size"] == 16 and record["settings"]["upto"] == 20 and record["device"] == "cpu"
    assert run.file(A.PRETRAIN_WEIGHTS).is_file() and run.file(A.PRETRAIN_HISTORY).is_file()
    description = run.read(A.EXTRACTION)["description"]
    assert description.startswith("self-supervised weights") and "RANDOM" not in description
    assert str(run.file(A.PRETRAIN_WEIGHTS)) in description
    page = (run.path / "html" / "02_pretrain.html").read_text()
    assert "Plotly.newPlot" in page and "data:image/png;base64," in page  # loss curve, augmented views
    assert "all 2 epochs run" in page and str(run.file(A.PRETRAIN_WEIGHTS)) in page
    assert "self-supervised weights" in (run.path / "html" / "03_extract.html").read_text()
    assert set(json.loads((run.path / A.CACHE_RECORD.path).read_text())) == {"cubes", "pretrain", "features"}
