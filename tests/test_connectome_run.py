"""Connectome runs through the real pipeline steps: sample, build and extract in partitions,
in this process and on a Dask LocalCluster (resume, a killed worker, stale partitions, bad input,
and one papermill run of 01_load + 03_extract).

One tiny synthetic connectome and one LocalCluster (2 worker processes, 1 thread each) are made
once per module; the steps reach the cluster through ``dask_scheduler: tcp://<its address>``,
which they open as an address and leave running.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import cloudpickle
import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml

import synapse_nb as snb
from synapse_nb.core.config import make_config
from synapse_nb.core.errors import DataError
from synapse_nb.engine import ClusterSpec, PartitionStore, open_client
from synapse_nb.engine.tasks import build_batch
from synapse_nb.pipeline import artifacts as A
from synapse_nb.pipeline import scale
from synapse_nb.pipeline.runs import RunError

from .conftest import copy_project

# the flaky task below travels to the workers by value (they need not import this test module)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

log = logging.getLogger(__name__)

#: Small and fast: random weights, an early layer of the trunk, 32^3 cubes.
BASE = {"sample_policy": "random", "sample_size": 16, "cube_size": 32, "engine_batch_size": 4,
        "segmentation_type": 5, "cache_dir": "", "extraction_method": "stage_specific", "layer_num": 6}


# ---------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def connectome(tmp_path_factory) -> Path:
    """The description YAML of a tiny synthetic connectome (up to 40 synapses: colliding ones are dropped)."""
    from synapse_nb.data.synthetic_connectome import make_synthetic_connectome

    out = tmp_path_factory.mktemp("connectome") / "conn"
    made = make_synthetic_connectome(out, shape_zyx=(96, 192, 192), n_synapses=40, webknossos=False, progress=False)
    assert made.n_synapses >= 20
    return made.description


def _warm_up() -> None:
    """What a worker's first batch imports (the task and the connectome opener)."""
    import importlib

    for name in ("synapse_nb.engine.tasks", "synapse_nb.pipeline.scale"):
        importlib.import_module(name)


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster for the module: (client, scheduler address). The workers import the
    package in the background while the first test works in this process."""
    with open_client(ClusterSpec("local", n_workers=2, threads_per_worker=1)) as client:
        client.wait_for_workers(2, timeout=60)
        warming = [client.submit(_warm_up, pure=False, workers=[w], allow_other_workers=False)
                   for w in client.scheduler_info()["workers"]]
        yield client, client.scheduler.address
        del warming


@pytest.fixture
def dask(cluster):
    """The module's cluster with both workers up (a killed one is back once its nanny restarted it)."""
    cluster[0].wait_for_workers(2, timeout=60)
    return cluster


def config(connectome: Path, **values):
    return snb.pipeline.resolve_parameters(make_config({"connectome": str(connectome), **BASE, **values}))


def on_dask(address: str) -> dict:
    return {"engine": "dask", "dask_scheduler": address, "dask_workers": 2}


class Spy:
    """Wraps :func:`scale.run_partitions`: records every report and calls ``hook(desc, id, path)``
    after each commit (the engine's on-done callback)."""

    def __init__(self, monkeypatch) -> None:
        self.reports: dict[str, list] = {}
        self.hook = None
        original = scale.run_partitions

        def wrapped(client, payloads, task, store, **kw):
            desc = kw.get("desc", "")
            hook = self.hook
            on_done = (lambda i, p: hook(desc, i, p)) if hook is not None else None
            report = original(client, payloads, task, store, on_done=on_done, **kw)
            self.reports.setdefault(desc, []).append(report)
            return report

        monkeypatch.setattr(scale, "run_partitions", wrapped)

    def last(self, desc: str):
        return self.reports[desc][-1]


def names(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["Var1"].astype(str))


def copy_description(connectome: Path, folder: Path, table: pd.DataFrame) -> Path:
    """A description in ``folder`` with its own synapse table and the module connectome's layers."""
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / "synapses.parquet", index=False)
    desc = yaml.safe_load(connectome.read_text())
    for layer in desc["layers"].values():
        layer["path"] = str(connectome.parent / layer["path"])
    desc["agglomerates"]["path"] = str(connectome.parent / desc["agglomerates"]["path"])
    (folder / "connectome.yaml").write_text(yaml.safe_dump(desc))
    return folder / "connectome.yaml"


def run_build(cfg, run_dir: Path):
    run = snb.pipeline.open_run(str(run_dir), create=True)
    data = snb.data.open_dataset(cfg)
    sample = snb.pipeline.sample(data, cfg, run)
    cubes = snb.pipeline.build(data, cfg, run, sample=sample, progress=False)
    return run, sample, cubes


def run_extract(cfg, run, cubes):
    model, info = snb.pipeline.network(run, cfg)
    return snb.pipeline.extract(cubes, model, info, cfg, run)


def assert_once(run, sample) -> None:
    """Every sampled synapse is in the run's cube store exactly once (built or skipped), and
    every partition was committed exactly once."""
    from synapse_nb.cubes.store import CubeSet

    cubes = CubeSet.load(run.cubes_dir)
    got = pd.concat([cubes.table["Var1"], cubes.skipped["Var1"]], ignore_index=True).astype(str)
    assert not got.duplicated().any()
    assert sorted(got) == names(sample.table)
    commits = PartitionStore(run.cubes_dir / "parts").commits()["partition"]
    assert not commits.duplicated().any()
    assert sorted(commits) == sorted(PartitionStore(run.cubes_dir / "parts").done())


# ---------------------------------------------------------------- 1. same result here and on Dask
def test_in_process_and_dask_give_the_same_cubes_and_features(connectome, dask, tmp_path, monkeypatch,
                                                              one_torch_thread):
    spy = Spy(monkeypatch)
    seen: list[tuple] = []

    def sample_before_cubes(desc, part_id, path):
        run_dir = path.parents[2]
        if desc != "cube batches" or any(s[0] == run_dir for s in seen):
            return
        sample_file = run_dir / A.SAMPLE.path
        assert sample_file.is_file(), "the sample is written before the first cube partition"
        assert sample_file.stat().st_mtime_ns <= (path / ".partition.json").stat().st_mtime_ns
        seen.append((run_dir, part_id, names(pd.read_parquet(sample_file))))

    spy.hook = sample_before_cubes
    results = {}
    for where, extra in (("here", {"engine": "in_process"}), ("dask", on_dask(dask[1]))):
        cfg = config(connectome, sample_size=8, engine_batch_size=2, **extra)
        run, sample, cubes = run_build(cfg, tmp_path / where)
        feats = run_extract(cfg, run, cubes)
        results[where] = (sample, cubes, feats)
        assert seen[-1][2] == names(sample.table)  # the file read at the first commit is this sample
    assert len(seen) == 2
    assert spy.last("cube batches").computed == [0, 1, 2, 3]

    (s1, c1, f1), (s2, c2, f2) = results["here"], results["dask"]
    pd.testing.assert_frame_equal(s1.table, s2.table)
    assert len(c1) + len(c1.skipped) == 8 and len(c1) >= 6
    pd.testing.assert_frame_equal(c1.table, c2.table)
    np.testing.assert_array_equal(np.asarray(c1.raw), np.asarray(c2.raw))
    np.testing.assert_array_equal(np.asarray(c1.bits), np.asarray(c2.bits))
    assert np.asarray(c1.raw).std() > 0 and np.asarray(c1.bits).any()
    assert len(f1.features) == len(c1) and f1.features["Var1"].tolist() == c1.table["Var1"].tolist()
    pd.testing.assert_frame_equal(f1.features, f2.features, check_exact=True)
    assert "Dask" in f2.device and "Dask" not in f1.device


def test_a_bbox_dataset_on_dask_gives_the_cubes_and_features_of_one_process(tiny_params, dask, tmp_path,
                                                                            one_torch_thread):
    """The bbox pipeline uses the same engine when asked (engine: dask) and gets what the simple
    one-process path gets: the same cubes in the table's order and the same features."""
    values = {**tiny_params, "cache_dir": "", "segmentation_type": 5, "extraction_method": "stage_specific",
              "layer_num": 6}
    plain = snb.pipeline.resolve_parameters(make_config(values))
    on_engine = snb.pipeline.resolve_parameters(make_config({**values, **on_dask(dask[1]), "engine_batch_size": 4}))
    data = snb.data.open_dataset(plain)
    runs = {name: snb.pipeline.open_run(str(tmp_path / name), create=True) for name in ("plain", "dask")}
    c1 = snb.pipeline.build(data, plain, runs["plain"], progress=False)
    c2 = snb.pipeline.build(data, on_engine, runs["dask"], progress=False)
    assert (runs["dask"].cubes_dir / "parts").is_dir() and not (runs["plain"].cubes_dir / "parts").exists()
    assert snb.pipeline.sample(data, on_engine, runs["dask"]) is None  # bbox runs build every synapse
    order = [c for c in c1.table.columns if c in c2.table.columns]
    key = ["bbox", "Var1"]
    t1 = c1.table[order].sort_values(key).reset_index(drop=True)
    t2 = c2.table[order].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(t1, t2)
    i1 = c1.table.sort_values(key).index.to_numpy()
    i2 = c2.table.sort_values(key).index.to_numpy()
    np.testing.assert_array_equal(np.asarray(c1.raw)[i1], np.asarray(c2.raw)[i2])
    np.testing.assert_array_equal(np.asarray(c1.bits)[i1], np.asarray(c2.bits)[i2])
    f1 = run_extract(plain, runs["plain"], c1).features.sort_values(key).reset_index(drop=True)
    f2 = run_extract(on_engine, runs["dask"], c2).features.sort_values(key).reset_index(drop=True)
    feats = [c for c in f1.columns if c.startswith("feat_")]
    np.testing.assert_array_equal(f1[feats].to_numpy(), f2[feats].to_numpy())


# ---------------------------------------------------------------- 2. resume
def test_build_stopped_on_dask_resumes_with_only_the_missing_partitions(connectome, dask, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    cfg = config(connectome, engine_batch_size=2, **on_dask(dask[1]))  # 8 partitions
    committed: list[int] = []

    def stop_after_two(desc, part_id, path):
        committed.append(part_id)
        if len(committed) == 2:
            raise KeyboardInterrupt  # the user stops the cell: the client closes

    spy.hook = stop_after_two
    with pytest.raises(KeyboardInterrupt):
        run_build(cfg, tmp_path / "run")
    store = PartitionStore(tmp_path / "run" / "cubes" / "parts")
    time.sleep(0.5)  # a batch already running on a worker finishes (and commits) after the stop
    deadline = time.time() + 30
    while store.leftovers() and time.time() < deadline:
        time.sleep(0.1)
    before = store.done()
    assert set(committed) <= before and len(before) < 8
    assert not (tmp_path / "run" / "cubes" / "meta.json").exists()  # an unfinished store is not opened

    spy.hook = None
    run, sample, cubes = run_build(cfg, tmp_path / "run")
    report = spy.last("cube batches")
    assert report.complete and report.computed and set(report.computed).isdisjoint(before)
    assert set(report.skipped) >= before
    assert len(cubes) + len(cubes.skipped) == 16
    assert_once(run, sample)


def flaky_build_batch(batch, out: Path, *, flag: str, victims: tuple[str, ...]) -> None:
    """The real task, failing for batches holding a victim while the flag file exists."""
    if Path(flag).exists() and set(batch.rows["Var1"].astype(str)) & set(victims):
        raise RuntimeError(f"injected failure in {sorted(set(batch.rows['Var1'].astype(str)) & set(victims))}")
    build_batch(batch, out)


def test_failed_partitions_are_named_and_a_rerun_computes_only_them(connectome, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    cfg = config(connectome, engine="in_process", engine_batch_size=2)
    run = snb.pipeline.open_run(str(tmp_path / "run"), create=True)
    data = snb.data.open_dataset(cfg)
    sample = snb.pipeline.sample(data, cfg, run)
    victims = tuple(sample.table["Var1"].astype(str).iloc[[0, -1]])
    flag = tmp_path / "flag"
    flag.touch()
    monkeypatch.setattr(scale, "build_batch", functools.partial(flaky_build_batch, flag=str(flag), victims=victims))
    with pytest.raises(RunError) as err:
        snb.pipeline.build(data, cfg, run, sample=sample, progress=False)
    first = spy.last("cube batches")
    assert len(first.missing) in (1, 2) and len(first.done) == 8 - len(first.missing)
    message = str(err.value)
    assert "\n" not in message and "injected failure" in message and "01_load" in message
    assert f"{len(first.missing)} of 8 cube batches did not finish" in message

    flag.unlink()
    cubes = snb.pipeline.build(data, cfg, run, sample=sample, progress=False)
    second = spy.last("cube batches")
    assert second.computed == first.missing and second.skipped == first.done
    assert set(victims) <= set(names(pd.concat([cubes.table, cubes.skipped])))
    assert_once(run, sample)
    assert PartitionStore(run.cubes_dir / "parts").failures().empty


# ---------------------------------------------------------------- 3. a killed worker
def test_a_worker_killed_mid_build_still_gives_every_synapse_once(connectome, dask, tmp_path, monkeypatch):
    client, address = dask
    spy = Spy(monkeypatch)
    cfg = config(connectome, engine_batch_size=2, **on_dask(address))  # 8 batches of 2
    killed: list[tuple[int, float]] = []

    def kill_a_busy_worker(desc, part_id, path):
        if killed:
            return
        busy = {addr: keys for addr, keys in client.processing().items() if keys}
        pids = client.run(os.getpid)
        victim = next(iter(busy), None)
        if victim is None:  # nothing running any more: too late to kill mid-build
            return
        os.kill(pids[victim], signal.SIGKILL)
        killed.append((pids[victim], time.time()))

    spy.hook = kill_a_busy_worker
    run, sample, cubes = run_build(cfg, tmp_path / "run")  # the nanny restarts the worker meanwhile
    assert killed, "no worker was busy after the first commit"
    report = spy.last("cube batches")
    assert report.complete and report.requested == list(range(8)) and report.failures.empty
    assert len(sample.table) == 16 and len(cubes) + len(cubes.skipped) == 16
    assert_once(run, sample)
    commits = PartitionStore(run.cubes_dir / "parts").commits()
    pid, when = killed[0]
    assert (commits.loc[commits["pid"] == pid, "time"] <= when).all()  # the rest was done by the others
    log.info("killed worker %s; commits by pid %s; leftovers %s", pid, commits["pid"].value_counts().to_dict(),
             [p.name for p in PartitionStore(run.cubes_dir / "parts").leftovers()])


# ---------------------------------------------------------------- 4. nothing stale
def test_other_sample_or_parameters_clear_the_old_partitions(connectome, tmp_path, monkeypatch, one_torch_thread):
    spy = Spy(monkeypatch)
    where = tmp_path / "run"

    def build(**values):
        cfg = config(connectome, **{"engine": "in_process", "sample_size": 8, "engine_batch_size": 2, **values})
        run, sample, cubes = run_build(cfg, where)
        assert sorted(names(cubes.table) + names(cubes.skipped)) == names(sample.table)
        assert names(pd.read_parquet(where / A.SAMPLE.path)) == names(sample.table)
        return cfg, run, sample, cubes

    def cube_report():
        return spy.last("cube batches")

    def feature_report():
        return spy.last("feature batches")

    _, _, first, _ = build(seed=1)
    _, _, second, _ = build(seed=2)
    assert names(first.table) != names(second.table)
    assert cube_report().skipped == []  # nothing of seed 1 was reused
    _, _, third, _ = build(seed=2, sample_size=4)
    assert len(third.table) == 4 and cube_report().skipped == []
    assert len(PartitionStore(where / "cubes" / "parts").commits()) == 2  # the old partitions' log went with them
    cfg, run, _, cubes = build(seed=2, sample_size=4)  # unchanged: everything reused
    assert cube_report().computed == [] and cube_report().skipped == [0, 1]

    avg = run_extract(cfg, run, cubes)
    assert feature_report().computed == [0, 1]
    again = run_extract(cfg, run, cubes)  # unchanged: reused
    assert feature_report().computed == [] and again.features.equals(avg.features)
    cfg, run, _, cubes = build(seed=2, sample_size=4)  # 01_load again (a resume --from 01_load)
    assert cube_report().computed == []
    again = run_extract(cfg, run, cubes)  # the same cube parts: their features are kept
    assert feature_report().computed == [] and again.features.equals(avg.features)

    cfg_max = cfg.model_copy(update={"pooling_method": "max"})
    stamp = time.time()
    mx = run_extract(cfg_max, run, cubes)
    assert feature_report().computed == [0, 1] and feature_report().skipped == []
    features = PartitionStore(where / A.FEATURE_PARTS.path)
    assert (features.commits()["time"] >= stamp).all() and len(features.commits()) == 2
    assert json.loads((where / A.FEATURE_PARTS.path / "engine.json").read_text())["pooling_method"] == "max"
    feat = [c for c in avg.features.columns if c.startswith("feat_")]
    assert mx.features["Var1"].tolist() == avg.features["Var1"].tolist()
    assert not np.allclose(mx.features[feat].to_numpy(), avg.features[feat].to_numpy())

    # another cube parameter: the cubes are built again, and so are their features
    cfg, run, _, cubes = build(seed=2, sample_size=4, cube_size=48)
    assert cube_report().skipped == [] and np.asarray(cubes.raw).shape[1:] == (48, 48, 48)
    run_extract(cfg.model_copy(update={"pooling_method": "max"}), run, cubes)
    assert feature_report().computed == [0, 1] and feature_report().skipped == []


def test_an_edited_synapse_table_clears_the_cube_partitions(connectome, tmp_path, monkeypatch):
    """Same ids, same rows, other positions: the old cubes were cut elsewhere and are not reused."""
    spy = Spy(monkeypatch)
    table = pd.read_parquet(connectome.parent / "synapses.parquet")
    desc = copy_description(connectome, tmp_path / "conn", table)
    cfg = config(desc, engine="in_process", sample_size=8)
    _, sample, cubes = run_build(cfg, tmp_path / "run")
    table["x"] = table["x"] - 3
    table.to_parquet(tmp_path / "conn" / "synapses.parquet", index=False)
    _, again, moved = run_build(cfg, tmp_path / "run")
    assert names(again.table) == names(sample.table)
    assert spy.last("cube batches").skipped == [], "cubes of the old positions were reused"
    old = cubes.table.set_index("Var1")["central_coord_1"]
    new = moved.table.set_index("Var1")["central_coord_1"]
    assert (new == old.loc[new.index] - 3).all()


# ---------------------------------------------------------------- 5. bad input
def test_bad_input_is_named_at_the_sample_step(connectome, tmp_path):
    table = pd.read_parquet(connectome.parent / "synapses.parquet")
    outside = table["synapse_id"].iat[3]
    table.loc[3, "x"] = 5000  # the volume is 192 voxels wide
    moved = copy_description(connectome, tmp_path / "moved", table)

    cfg = config(moved, engine="in_process", sample_policy="all")
    run = snb.pipeline.open_run(str(tmp_path / "run"), create=True)
    data = snb.data.open_dataset(cfg)
    sample = snb.pipeline.sample(data, cfg, run)
    rejected = run.read(A.REJECTED)
    assert rejected["Var1"].astype(str).tolist() == [str(outside)]
    assert rejected["table_row"].tolist() == [3]
    assert "outside the raw layer" in rejected["reason"].iat[0] and "5000" in rejected["reason"].iat[0]
    assert str(outside) not in set(sample.table["Var1"].astype(str))
    assert len(sample.table) == len(table) - 1 and sample.available == len(table) - 1
    assert "1 rows of the synapse table cannot be used" in sample.text()

    empty = config(connectome, engine="in_process", sample_roi={"corner": [0, 0, 0, 2, 2, 2]})
    data = snb.data.open_dataset(empty)
    with pytest.raises(DataError) as err:
        snb.pipeline.sample(data, empty, snb.pipeline.open_run(str(tmp_path / "empty"), create=True))
    message = str(err.value)
    assert "\n" not in message and str(connectome) in message and "empty" in message
    assert "0 of" in message and message.endswith("widen sample_roi, choose another policy or fix the synapse table")
    assert not (tmp_path / "empty" / A.SAMPLE.path).exists()

    table["x"] = table["x"] + 1000  # every position outside: nothing usable, and the reasons are kept
    nowhere = config(copy_description(connectome, tmp_path / "nowhere", table), engine="in_process")
    run = snb.pipeline.open_run(str(tmp_path / "nowhere_run"), create=True)
    with pytest.raises(DataError) as err:
        snb.pipeline.sample(snb.data.open_dataset(nowhere), nowhere, run)
    message = str(err.value)
    assert "\n" not in message and f"{len(table)} rows of its synapse table cannot be used" in message
    assert str(run.file(A.REJECTED)) in message
    assert len(run.read(A.REJECTED)) == len(table)

    strata = config(connectome, engine="in_process", sample_policy="stratified", sample_strata_column="cell_type")
    with pytest.raises(DataError) as err:
        snb.pipeline.sample(data, strata, snb.pipeline.open_run(str(tmp_path / "strata"), create=True))
    message = str(err.value)
    assert "\n" not in message and "cell_type" in message and str(connectome) in message


# ---------------------------------------------------------------- 6. the notebooks at scale
@pytest.mark.notebooks
def test_notebooks_run_a_connectome_on_dask(connectome, dask, tmp_path, monkeypatch):
    from synapse_nb.pipeline import runner

    proj = copy_project(tmp_path)
    monkeypatch.chdir(proj)
    # the module's LocalCluster (2 local workers, warm); each notebook connects to it by address
    values = {**BASE, "connectome": str(connectome), "sample_size": 12, "n_preview": 2, **on_dask(dask[1])}
    result = runner.run_pipeline(values, run_dir=tmp_path / "run", reports_root=tmp_path / "reports",
                                 only=["01_load", "03_extract"])
    assert result.ok, [(s.notebook, s.status, s.error) for s in result.steps]
    run = result.run
    nb = nbformat.read(str(run.notebooks_dir / "01_load.ipynb"), as_version=4)
    shown = json.dumps([c.get("outputs", []) for c in nb.cells if c.cell_type == "code"])
    assert "12 of" in shown and "sampled (policy `random`, seed 42)" in shown
    assert "Dask: 2 worker(s)" in shown
    sample = run.read(A.SAMPLE)
    cubes = snb.pipeline.load_cubes(run)
    features = pd.read_parquet(run.tables_dir / "features.parquet")
    assert len(sample) == 12 and len(cubes) + len(cubes.skipped) == 12
    assert len(features) == len(cubes) and not features["Var1"].duplicated().any()
    assert set(features["Var1"].astype(str)) == set(cubes.table["Var1"].astype(str))
    assert features["viewer_link"].str.startswith("http://localhost:9000/datasets/").all()
    assert (run.path / "features_parts").is_dir() and len(list((run.cubes_dir / "parts").glob("part-*"))) == 3
