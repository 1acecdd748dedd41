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
    assert re.fullmatch(r"segmentation_type0__alpha0_5-[0-9a-f]{8}", combos[0].name)
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
    # n_clusters 50 > synapses: that combination fails in 05_cluster; the other must finish
    spec = write_spec(tmp_path / "sweep.yaml", {**tiny_params, "n_preview": 1}, {"n_clusters": [2, 50]})
    sweep_dir = tmp_path / "sweep"
    n2, n50 = (c.name for c in sweep.expand(sweep.read_spec(spec)))
    steps = ["01_load", "03_extract", "04_reduce", "05_cluster"]  # what the sweep table reads; keeps the test short
    summary = sweep.run_sweep(spec, sweep_dir=sweep_dir, reports_root=tmp_path / "reports", only=steps)
    assert list(summary["status"]) == ["ok", "failed"]
    assert "k=50" in summary.loc[1, "error"] or "50" in summary.loc[1, "error"]
    assert summary.loc[0, "k"] == 2 and -1 <= summary.loc[0, "ari"] <= 1
    log = (sweep_dir / "sweep.log").read_text()
    assert f"combination {n50} failed" in log and "step 05_cluster ok" in log
    saved = pd.read_csv(sweep_dir / "summary.csv")
    assert list(saved["combination"]) == [n2, n50]
    # the second combination reused the cubes and features of the first (cache record, not timing)
    first, second = (cache.read_record(sweep_dir / name) for name in (n2, n50))
    assert first["cubes"]["hit"] in (True, False) and second["cubes"]["hit"] is True
    assert second["features"]["hit"] is True and second["features"]["key"] == first["features"]["key"]
    # index page: offline, one section, links to every exported page of the finished run
    index = (sweep_dir / "index.html").read_text()
    assert "<script" not in index and f"{n2}/html/05_cluster.html" in index
    for link in re.findall(r'href="([^"]+)"', index):
        assert (sweep_dir / link).is_file(), link
    assert (tmp_path / "reports" / "sweep" / "index.html").is_file()
    # resume: the finished combination is kept, the failed one runs again; exit code 1
    before = (sweep_dir / n2 / "notebooks" / "05_cluster.ipynb").stat().st_mtime_ns
    assert main(["sweep", str(spec), "--sweep-dir", str(sweep_dir), "--reports-dir", str(tmp_path / "reports"), "--only", *steps]) == 1
    assert (sweep_dir / n2 / "notebooks" / "05_cluster.ipynb").stat().st_mtime_ns == before
    status = json.loads((sweep_dir / n50 / "status.json").read_text())
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
    names = [c.name for c in sweep.expand(sweep.read_spec(spec))]
    summary = sweep.run_sweep(spec, sweep_dir=tmp_path / "sw", reports_root=None, stop=stop)
    assert ran == names and summary["status"].tolist() == ["ok", "ok"]
    state = json.loads((tmp_path / "sw" / "status.json").read_text())
    assert state["status"] == "ok" and state["combinations"] == {names[0]: "ok", names[1]: "ok"}


# --------------------------------------------------------------------------------------
# combination folders, resume after an edit, two sweeps at once, atomic writes
# (a fake pipeline: records params.yaml like the runner and one HTML page, no notebooks)
# --------------------------------------------------------------------------------------
def fake_pipeline(monkeypatch, hook=None) -> list[Path]:
    """Replace the runner; returns the list of run folders it was called with, in order."""
    from synapse_nb.pipeline import artifacts as A
    from synapse_nb.pipeline.runs import Run

    ran: list[Path] = []

    def fake_run(values, run_dir, only=None, start=None, **kwargs):
        run = Run(Path(run_dir))
        run.path.mkdir(parents=True, exist_ok=True)
        cfg, _ = runner.plan_parameters(values, runner.select_steps(only, start))
        C.save_config(cfg, run.file(A.PARAMS))
        run.file(A.HTML, step="01_load").parent.mkdir(exist_ok=True)
        run.file(A.HTML, step="01_load").write_text(f"<p>alpha {cfg.alpha}</p>")
        ran.append(run.path)
        if hook is not None:
            hook(run.path)

    monkeypatch.setattr(sweep, "run_pipeline", fake_run)
    return ran


def test_combination_names_are_unique_valid_and_bounded():
    from synapse_nb.core.errors import validate_name

    a = sweep.combination_name({"raw_dir": "/data/em.v1/raw"})
    b = sweep.combination_name({"raw_dir": "/data/em_v1/raw"})
    assert a != b and a.startswith("raw_dir") and b.startswith("raw_dir")
    assert sweep.combination_name({"alpha": 1}) != sweep.combination_name({"alpha": 1.0})
    assert sweep.combination_name({"a": 1, "b": 2}).endswith(sweep.combination_hash({"b": 2, "a": 1}))
    long = sweep.combination_name({"raw_dir": "/x/" + "very_long_folder/" * 30, "seg_dir": "/.hidden"})
    assert len(long) <= sweep.READABLE_MAX + 1 + sweep.HASH_CHARS
    for name in (a, b, long, sweep.combination_name({}), sweep.combination_name({"raw_dir": "../.."})):
        assert validate_name(name, "combination") == name


def test_grid_listing_a_value_twice_is_an_error(tmp_path):
    with pytest.raises(C.ConfigError, match=r"s\.yaml: grid key 'alpha' lists 0\.5 twice; remove the duplicate"):
        sweep.read_spec(write_spec(tmp_path / "s.yaml", {}, {"alpha": [0.5, 1.0, 0.5]}))


def test_values_with_the_same_readable_name_each_run_in_their_own_folder(tmp_path, monkeypatch):
    ran = fake_pipeline(monkeypatch)
    raws = [str(tmp_path / "data" / "em.v1" / "raw"), str(tmp_path / "data" / "em_v1" / "raw")]
    spec = write_spec(tmp_path / "s.yaml", {}, {"raw_dir": raws})
    summary = sweep.run_sweep(spec, sweep_dir=tmp_path / "sw", reports_root=None)
    assert len(ran) == 2 and ran[0] != ran[1]
    assert summary["status"].tolist() == ["ok", "ok"] and not summary["reused_run"].any()
    assert summary["combination"].nunique() == 2
    for path, raw in zip(ran, raws):
        assert yaml.safe_load((path / "params.yaml").read_text())["raw_dir"] == raw


def test_resume_reruns_combinations_whose_parameters_changed(tmp_path, monkeypatch, caplog):
    ran = fake_pipeline(monkeypatch)
    spec, sw = tmp_path / "s.yaml", tmp_path / "sw"
    write_spec(spec, {"cube_size": 32}, {"alpha": [0.5, 1.0]})
    names = [c.name for c in sweep.expand(sweep.read_spec(spec))]
    sweep.run_sweep(spec, sweep_dir=sw, reports_root=None)
    assert [p.name for p in ran] == names
    # unchanged: both kept
    summary = sweep.run_sweep(spec, sweep_dir=sw, reports_root=None)
    assert len(ran) == 2 and summary["reused_run"].all()
    # the base edited: both run again, the earlier runs are kept aside, not deleted
    write_spec(spec, {"cube_size": 48}, {"alpha": [0.5, 1.0]})
    with caplog.at_level("WARNING", logger="synapse_nb"):
        summary = sweep.run_sweep(spec, sweep_dir=sw, reports_root=tmp_path / "reports")
    assert [p.name for p in ran[2:]] == names and not summary["reused_run"].any()
    assert summary["status"].tolist() == ["ok", "ok"]
    assert sum("cube_size: 32 -> 48" in r.getMessage() for r in caplog.records) == 2
    for name in names:
        assert yaml.safe_load((sw / name / "params.yaml").read_text())["cube_size"] == 48
    old = sorted((sw / sweep.SUPERSEDED_DIR).iterdir())
    assert len(old) == 2 and all(yaml.safe_load((p / "params.yaml").read_text())["cube_size"] == 32 for p in old)
    assert not (tmp_path / "reports" / "sw" / sweep.SUPERSEDED_DIR).exists()
    # only the combination whose recorded parameters differ runs again; the other is kept
    params = sw / names[1] / "params.yaml"
    recorded = yaml.safe_load(params.read_text())
    batch = recorded["batch_size"]
    params.write_text(yaml.safe_dump({**recorded, "batch_size": batch + 1}, sort_keys=False))
    caplog.clear()
    with caplog.at_level("WARNING", logger="synapse_nb"):
        summary = sweep.run_sweep(spec, sweep_dir=sw, reports_root=None)
    assert [p.name for p in ran[4:]] == [names[1]] and summary["reused_run"].tolist() == [True, False]
    assert any(names[1] in r.getMessage() and f"batch_size: {batch + 1} -> {batch}" in r.getMessage() for r in caplog.records)
    # a display parameter of the notebooks (not in params.yaml) counts too
    write_spec(spec, {"cube_size": 48, "n_preview": 1}, {"alpha": [0.5, 1.0]})
    summary = sweep.run_sweep(spec, sweep_dir=sw, reports_root=None)
    assert [p.name for p in ran[5:]] == names


def test_an_unreadable_combination_status_runs_it_again(tmp_path, monkeypatch):
    ran = fake_pipeline(monkeypatch)
    spec, sw = write_spec(tmp_path / "s.yaml", {}, {"alpha": [0.5]}), tmp_path / "sw"
    sweep.run_sweep(spec, sweep_dir=sw, reports_root=None)
    (ran[0] / "status.json").write_text('{"status": "ok", "ro')
    summary = sweep.run_sweep(spec, sweep_dir=sw, reports_root=None)
    assert len(ran) == 2 and summary["status"].tolist() == ["ok"]
    assert json.loads((ran[0] / "status.json").read_text())["status"] == "ok"


class _FixedNow:
    """Stands in for datetime in the sweep module: every sweep starts in the same second."""

    @staticmethod
    def now():
        from datetime import datetime

        return datetime(2025, 1, 1, 12, 0, 0)


def test_two_sweeps_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(sweep, "datetime", _FixedNow)
    spec = write_spec(tmp_path / "s.yaml", {}, {"alpha": [0.5, 1.0]})
    runs = tmp_path / "runs"
    inner: list[pd.DataFrame] = []
    started = threading.Event()

    def second_sweep(run_path):  # starts while the first sweep runs its first combination
        if not started.is_set():
            started.set()
            inner.append(sweep.run_sweep(spec, runs_root=runs, reports_root=None, stop=threading.Event()))

    ran = fake_pipeline(monkeypatch, hook=second_sweep)
    outer = sweep.run_sweep(spec, runs_root=runs, reports_root=None, stop=threading.Event())
    folders = sorted(p.name for p in runs.iterdir())
    assert folders == ["sweep_20250101_120000", "sweep_20250101_120000_2"]
    assert len(ran) == 4 and len(set(ran)) == 4  # every combination ran once in each sweep
    for summary in (outer, inner[0]):
        assert summary["status"].tolist() == ["ok", "ok"] and not summary["reused_run"].any()
    for folder in folders:
        assert pd.read_csv(runs / folder / "summary.csv")["status"].tolist() == ["ok", "ok"]
        assert json.loads((runs / folder / "status.json").read_text())["status"] == "ok"


def test_a_sweep_directory_in_use_is_refused(tmp_path, monkeypatch):
    spec, sw = write_spec(tmp_path / "s.yaml", {}, {"alpha": [0.5, 1.0]}), tmp_path / "sw"
    refused: list[str] = []

    def resume_meanwhile(run_path):
        if not refused:
            with pytest.raises(runner.RunnerError, match=r"sweep directory .*sw is in use by another running sweep") as exc:
                sweep.run_sweep(spec, sweep_dir=sw, reports_root=None)
            refused.append(str(exc.value))

    ran = fake_pipeline(monkeypatch, hook=resume_meanwhile)
    summary = sweep.run_sweep(spec, sweep_dir=sw, reports_root=None)
    assert refused and len(ran) == 2 and summary["status"].tolist() == ["ok", "ok"]
    # the lock went with the sweep: resuming now works
    assert sweep.run_sweep(spec, sweep_dir=sw, reports_root=None)["reused_run"].all()


def test_a_combination_folder_made_by_someone_else_is_not_touched(tmp_path, monkeypatch):
    spec, sw = write_spec(tmp_path / "s.yaml", {}, {"alpha": [0.5, 1.0]}), tmp_path / "sw"
    first, second = (c.name for c in sweep.expand(sweep.read_spec(spec)))

    def intruder(run_path):  # another process takes the second combination's folder
        (sw / second).mkdir(exist_ok=True)
        (sw / second / "theirs.txt").write_text("not yours")

    ran = fake_pipeline(monkeypatch, hook=intruder)
    summary = sweep.run_sweep(spec, sweep_dir=sw, reports_root=None)
    assert [p.name for p in ran] == [first]
    assert summary["status"].tolist() == ["ok", "failed"]
    assert "created by another process" in summary.loc[1, "error"]
    assert sorted(p.name for p in (sw / second).iterdir()) == ["theirs.txt"]
    assert json.loads((sw / "status.json").read_text())["combinations"][second] == "failed"


def test_publishing_a_sweep_never_leaves_half_a_page(tmp_path, monkeypatch):
    import shutil

    fake_pipeline(monkeypatch)
    spec, sw = write_spec(tmp_path / "s.yaml", {}, {"alpha": [0.5]}), tmp_path / "sw"
    sweep.run_sweep(spec, sweep_dir=sw, reports_root=tmp_path / "reports")
    published = tmp_path / "reports" / "sw" / "index.html"
    good = published.read_text()
    assert good

    def broken_copy(src, dst, *args, **kwargs):
        Path(dst).write_text("<p>half")
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copy2", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        sweep.publish_sweep(sw, tmp_path / "reports")
    assert published.read_text() == good
    assert not [p for p in published.parent.iterdir() if p.name.startswith(".")]


def test_a_failed_sweep_write_keeps_the_previous_summary(tmp_path, monkeypatch):
    fake_pipeline(monkeypatch)
    spec, sw = write_spec(tmp_path / "s.yaml", {}, {"alpha": [0.5]}), tmp_path / "sw"
    sweep.run_sweep(spec, sweep_dir=sw, reports_root=None)
    good = (sw / "summary.csv").read_text()

    def broken_to_csv(self, path, *args, **kwargs):
        Path(path).write_text("combination,sta")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    with pytest.raises(OSError, match="disk full"):
        sweep.run_sweep(spec, sweep_dir=sw, reports_root=None)
    assert (sw / "summary.csv").read_text() == good
    assert json.loads((sw / "status.json").read_text())["status"] == "ok"


def test_a_grid_type_the_dataset_cannot_serve_names_its_combinations_before_anything_runs(tiny_params, tmp_path, monkeypatch):
    ran = fake_pipeline(monkeypatch)
    labels = {b: {"mito": 5, "vesicle": 0, "cleft": 7, "cleft2": 7} for b in ("bbox1", "bbox2")}
    spec = write_spec(tmp_path / "s.yaml", {**tiny_params, "label_table": labels},
                      {"segmentation_type": [7, 6, 9], "alpha": [0.5, 1.0]})
    with pytest.raises(C.ConfigError) as exc:
        sweep.run_sweep(spec, runs_root=tmp_path / "runs", reports_root=None)
    lines = str(exc.value).splitlines()
    assert lines[0].startswith(f"{spec}: 4 of 6 combination(s) ask for what their dataset cannot serve")
    bad = [c.name for c in sweep.expand(sweep.read_spec(spec)) if c.params["segmentation_type"] in (6, 9)]
    assert [ln.split(":")[0].strip() for ln in lines[1:]] == [f"combination {n}" for n in bad]
    assert "segmentation type 9 (vesicle + cleft) needs a vesicle-cloud label" in str(exc.value)
    assert "Types this dataset supports: 0, 3, 7, 8" in lines[1]
    assert ran == [] and not (tmp_path / "runs").exists()
