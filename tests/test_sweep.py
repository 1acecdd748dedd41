"""Sweeps: grid expansion, validation before running, failure isolation, reuse, resume."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from synapse_nb.core import config as C
from synapse_nb.pipeline import cache, runner, sweep
from synapse_nb.pipeline.cli import main


def write_spec(path: Path, base: dict, grid: dict) -> Path:
    path.write_text(yaml.safe_dump({"base": base, "grid": grid}, sort_keys=False))
    return path


def test_expand_grid_every_combination(tmp_path):
    spec = sweep.read_spec(write_spec(tmp_path / "s.yaml", {"seed": 1}, {"segmentation_type": [0, 5, 10], "alpha": [0.5, 1.0]}))
    combos = sweep.expand(spec)
    assert len(combos) == 6
    assert combos[0].name == "segmentation_type0__alpha0_5"
    assert combos[-1].values == {"seed": 1, "segmentation_type": 10, "alpha": 1.0}
    assert len({c.name for c in combos}) == 6


def test_spec_errors(tmp_path):
    with pytest.raises(C.ConfigError, match=r"unknown top-level key\(s\) \['grids'\]"):
        (tmp_path / "b.yaml").write_text("base: {}\ngrids: {alpha: [1]}\n")
        sweep.read_spec(tmp_path / "b.yaml")
    with pytest.raises(C.ConfigError, match=r"grid key 'alpha' must be a non-empty list"):
        sweep.read_spec(write_spec(tmp_path / "c.yaml", {}, {"alpha": []}))


def test_grid_value_outside_allowed_set_fails_before_running(tmp_path):
    spec = sweep.read_spec(write_spec(tmp_path / "s.yaml", {}, {"pooling_method": ["avg", "mean"]}))
    with pytest.raises(C.ConfigError, match=r"pooling_method_?mean[\s\S]*'pooling_method': Input should be 'avg', 'max', 'concat_avg_max' or 'spp'"):
        sweep.validate(sweep.expand(spec), list(runner.PIPELINE), "s.yaml")
    with pytest.raises(C.ConfigError, match=r"unknown parameter 'alpah'"):
        sweep.validate(sweep.expand({"base": {}, "grid": {"alpah": [1.0]}}), list(runner.PIPELINE), "s.yaml")


def test_cache_keys_separate_what_matters():
    a = C.make_config({"segmentation_type": 5})
    b = C.make_config({"segmentation_type": 10, "batch_size": 2})
    assert cache.content_key(a, cache.CUBE_KEYS) == cache.content_key(b, cache.CUBE_KEYS)
    assert cache.content_key(a, cache.FEATURE_KEYS) != cache.content_key(b, cache.FEATURE_KEYS)
    c = C.make_config({"segmentation_type": 5, "batch_size": 2})
    assert cache.content_key(a, cache.FEATURE_KEYS) == cache.content_key(c, cache.FEATURE_KEYS)
    assert cache.content_key(a, cache.CUBE_KEYS) != cache.content_key(C.make_config({"cube_size": 64}), cache.CUBE_KEYS)


@pytest.mark.notebooks
def test_sweep_isolates_failures_reuses_work_and_resumes(tiny_params, tmp_path):
    # n_clusters 50 > synapses: that combination fails in 04_cluster; the other must finish
    spec = write_spec(tmp_path / "sweep.yaml", {**tiny_params, "n_preview": 1}, {"n_clusters": [2, 50]})
    sweep_dir = tmp_path / "sweep"
    summary = sweep.run_sweep(spec, sweep_dir=sweep_dir, reports_root=tmp_path / "reports")
    assert list(summary["status"]) == ["ok", "failed"]
    assert "k=50" in summary.loc[1, "error"] or "50" in summary.loc[1, "error"]
    assert summary.loc[0, "k"] == 2 and -1 <= summary.loc[0, "ari"] <= 1
    log = (sweep_dir / "sweep.log").read_text()
    assert "combination n_clusters50 failed" in log and "step 04_cluster ok" in log
    saved = pd.read_csv(sweep_dir / "summary.csv")
    assert list(saved["combination"]) == ["n_clusters2", "n_clusters50"]
    # the second combination reused the cubes and features of the first (cache record, not timing)
    first, second = (cache.read_record(sweep_dir / name) for name in ("n_clusters2", "n_clusters50"))
    assert first["cubes"]["hit"] in (True, False) and second["cubes"]["hit"] is True
    assert second["features"]["hit"] is True and second["features"]["key"] == first["features"]["key"]
    # index page: offline, one section, links to every exported page of the finished run
    index = (sweep_dir / "index.html").read_text()
    assert "<script" not in index and "n_clusters2/html/04_cluster.html" in index
    for link in re.findall(r'href="([^"]+)"', index):
        assert (sweep_dir / link).is_file(), link
    assert (tmp_path / "reports" / "sweep" / "index.html").is_file()
    # resume: the finished combination is kept, the failed one runs again; exit code 1
    before = (sweep_dir / "n_clusters2" / "notebooks" / "04_cluster.ipynb").stat().st_mtime_ns
    assert main(["sweep", str(spec), "--sweep-dir", str(sweep_dir), "--reports-dir", str(tmp_path / "reports")]) == 1
    assert (sweep_dir / "n_clusters2" / "notebooks" / "04_cluster.ipynb").stat().st_mtime_ns == before
    status = json.loads((sweep_dir / "n_clusters50" / "status.json").read_text())
    assert status["status"] == "failed"


def test_a_stop_after_the_last_combination_does_not_mark_the_sweep_stopped(tmp_path, monkeypatch):
    import threading

    stop = threading.Event()
    ran = []

    def fake_run(values, run_dir, **kwargs):  # finishes, then the stop request arrives
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        ran.append(Path(run_dir).name)
        if len(ran) == 2:
            stop.set()

    monkeypatch.setattr(sweep, "run_pipeline", fake_run)
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"base": {}, "grid": {"alpha": [0.5, 1.0]}}))
    summary = sweep.run_sweep(spec, sweep_dir=tmp_path / "sw", reports_root=None, stop=stop)
    assert ran == ["alpha0_5", "alpha1_0"] and summary["status"].tolist() == ["ok", "ok"]
    state = json.loads((tmp_path / "sw" / "status.json").read_text())
    assert state["status"] == "ok" and state["combinations"] == {"alpha0_5": "ok", "alpha1_0": "ok"}
