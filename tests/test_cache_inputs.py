"""The cache keys follow the data on disk, stale entries and temporary folders go, and a run whose
cache entry is gone says so."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
import zarr

from synapse_nb.core import config as C
from synapse_nb.data.datasets import open_dataset
from synapse_nb.features.extract import FeatureResult
from synapse_nb.pipeline import cache, steps
from synapse_nb.pipeline.runs import Run, RunError


def _seed_config(demo: Path, cache_dir: Path, **extra) -> C.Config:
    return C.make_config({
        "raw_dir": str(demo / "raw"), "seg_dir": str(demo / "seg"), "mask_dir": str(demo / "mask"),
        "table_dir": str(demo / "tables"), "cube_size": 32, "cache_dir": str(cache_dir), **extra,
    })


def _rewrite_keeping_size_and_mtime(path: Path, data: np.ndarray) -> None:
    before = path.stat()
    tifffile.imwrite(path, data)
    assert path.stat().st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.fixture()
def demo_copy(tiny_demo, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_demo, tmp_path / "demo"))


# --------------------------------------------------------------------------- fingerprints
def test_inverted_raw_slices_are_a_miss_with_new_cubes(demo_copy, tmp_path):
    cfg = _seed_config(demo_copy, tmp_path / "cache", bboxes=["bbox1"])
    first = steps.build(open_dataset(cfg), cfg, Run(tmp_path / "run1"), progress=False)
    again = steps.build(open_dataset(cfg), cfg, Run(tmp_path / "run2"), progress=False)
    hit = cache.read_record(tmp_path / "run2")["cubes"]
    assert hit["hit"] is True and np.array_equal(np.asarray(first.raw), np.asarray(again.raw))
    old_raw = np.array(first.raw)
    # every raw slice inverted in place: same size, and even the old mtime restored
    for path in sorted((demo_copy / "raw" / "bbox1").glob("*.tif")):
        _rewrite_keeping_size_and_mtime(path, np.iinfo(np.uint8).max - tifffile.imread(path))
    third = steps.build(open_dataset(cfg), cfg, Run(tmp_path / "run3"), progress=False)
    miss = cache.read_record(tmp_path / "run3")["cubes"]
    assert miss["hit"] is False and miss["key"] != hit["key"]
    assert not np.array_equal(np.asarray(third.raw), old_raw)
    assert np.array_equal(np.asarray(steps.load_cubes(Run(tmp_path / "run3")).raw), np.asarray(third.raw))


def test_seed_fingerprint_covers_only_the_bboxes_read_and_the_tables(demo_copy, tmp_path):
    one = _seed_config(demo_copy, tmp_path / "cache", bboxes=["bbox1"])
    every = _seed_config(demo_copy, tmp_path / "cache")
    keys = cache.content_key(one, cache.CUBE_KEYS), cache.content_key(every, cache.CUBE_KEYS)
    seg = sorted((demo_copy / "seg" / "bbox2").glob("*.tif"))[0]
    _rewrite_keeping_size_and_mtime(seg, tifffile.imread(seg) + 1)
    assert cache.content_key(one, cache.CUBE_KEYS) == keys[0]  # bbox2 is not read
    assert cache.content_key(every, cache.CUBE_KEYS) != keys[1]
    table = next((demo_copy / "tables").glob("bbox1.*"))
    os.utime(table, ns=(0, table.stat().st_mtime_ns + 1))
    assert cache.content_key(one, cache.CUBE_KEYS) != keys[0]


def _described(tmp_path: Path) -> tuple[C.Config, Path, Path, Path]:
    data = tmp_path / "data"
    data.mkdir()
    with h5py.File(data / "vol.h5", "w") as f:
        f.create_dataset("raw", data=np.arange(8 * 64 * 64, dtype=np.uint16).reshape(8, 64, 64) % 251)
    group = zarr.open_group(str(data / "labels.zarr"), mode="w")
    for name in ("seg", "mask"):
        group.create_array(name, shape=(8, 64, 64), chunks=(4, 32, 32), dtype="uint8")[...] = 1
    (data / "syn.csv").write_text("Var1,central_coord_1,central_coord_2,central_coord_3\ns1,10,10,4\n")
    desc = tmp_path / "desc.yaml"
    desc.write_text(yaml.safe_dump({
        "voxel_size_nm": [8.0, 8.0, 8.0],
        "bboxes": {"b1": {"raw": {"path": "data/vol.h5", "key": "raw"},
                          "seg": {"path": "data/labels.zarr", "key": "seg"},
                          "mask": {"path": "data/labels.zarr", "key": "mask"}, "table": "data/syn.csv"}},
    }))
    cfg = C.make_config({"dataset": str(desc), "cache_dir": str(tmp_path / "cache")})
    return cfg, data / "vol.h5", data / "labels.zarr", data / "syn.csv"


def test_described_volumes_and_tables_are_fingerprinted(tmp_path):
    cfg, h5, store, table = _described(tmp_path)
    key = cache.content_key(cfg, cache.CUBE_KEYS)
    assert cache.content_key(cfg, cache.CUBE_KEYS) == key
    # HDF5 rewritten in place, size and mtime kept: the sampled bytes tell
    before = h5.stat()
    with h5py.File(h5, "r+") as f:
        f["raw"][...] = 7
    os.utime(h5, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert h5.stat().st_size == before.st_size
    key2 = cache.content_key(cfg, cache.CUBE_KEYS)
    assert key2 != key
    # a zarr chunk rewritten
    zarr.open_group(str(store), mode="r+")["seg"][0:4, 0:32, 0:32] = 2
    key3 = cache.content_key(cfg, cache.CUBE_KEYS)
    assert key3 != key2
    # the table, same size, new content and old mtime
    before = table.stat()
    table.write_text(table.read_text().replace("s1,10", "s2,10"))
    os.utime(table, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert cache.content_key(cfg, cache.CUBE_KEYS) != key3


def test_store_metadata_and_sampled_chunks(tmp_path, monkeypatch):
    store = tmp_path / "vol.n5"
    (store / "raw" / "0" / "0").mkdir(parents=True)
    (store / "attributes.json").write_text('{"n5": "2.0.0"}')
    (store / "raw" / "attributes.json").write_text('{"dimensions": [4, 4, 4], "dataType": "uint8"}')
    for i in range(10):
        (store / "raw" / "0" / "0" / str(i)).write_bytes(bytes([i]) * 16)
    base = cache.volume_fingerprint(store, "raw")
    assert set(base["metadata"]) == {"attributes.json", "raw/attributes.json"} and base["n_chunks"] == 10
    (store / "raw" / "attributes.json").write_text('{"dimensions": [4, 4, 5], "dataType": "uint8"}')
    assert cache.volume_fingerprint(store, "raw")["metadata"] != base["metadata"]
    monkeypatch.setattr(cache, "MAX_CHUNK_STAMPS", 3)
    sampled = cache.volume_fingerprint(store, "raw")
    assert len(sampled["chunks"]) == 3 and sampled["n_chunks"] == 10 and "folders" in sampled
    (store / "raw" / "0" / "0" / "10").write_bytes(b"x")  # a chunk more: the count and a folder's mtime tell
    assert cache.volume_fingerprint(store, "raw")["n_chunks"] == 11


# --------------------------------------------------------------------------- entries
def _fake_store(value, folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "v.txt").write_text(value)


def _fake_load(folder: Path) -> str:
    return (folder / "v.txt").read_text()


def test_entries_of_an_older_layout_are_rebuilt(tmp_path):
    cfg = C.make_config({"cache_dir": str(tmp_path / "cache")})
    target = cache.stage_dir(cfg, "cubes")
    calls = []

    def compute():
        calls.append(1)
        return "new"

    # the first layout: the result straight in the key folder, no entry.json
    target.mkdir(parents=True)
    (target / "meta.json").write_text("{}")
    result, _ = cache.reuse_or_compute(Run(tmp_path / "r"), cfg, "cubes", compute=compute, store=_fake_store, load=_fake_load)
    assert result == "new" and len(calls) == 1 and not (target / "meta.json").exists()
    assert json.loads((target / cache.ENTRY_MARKER).read_text())["layout"] == cache.ENTRY_LAYOUT
    # a marker of another layout version is not trusted either
    (target / cache.ENTRY_MARKER).write_text(json.dumps({"stage": "cubes", "key": target.name}))
    cache.reuse_or_compute(Run(tmp_path / "r"), cfg, "cubes", compute=compute, store=_fake_store, load=_fake_load)
    assert len(calls) == 2
    cache.reuse_or_compute(Run(tmp_path / "r"), cfg, "cubes", compute=compute, store=_fake_store, load=_fake_load)
    assert len(calls) == 2


def test_features_key_follows_the_run_cubes_not_the_03_parameters(tmp_path, monkeypatch):
    """03_extract's parameters hold no cube settings: the run's cubes must decide the features key."""
    cache_dir = tmp_path / "cache"
    runs = []
    for size in (32, 48):  # two cube stores, e.g. two datasets
        cfg01 = C.make_config({"cache_dir": str(cache_dir), "cube_size": size})
        run = Run(tmp_path / f"run{size}")
        _, entry = cache.reuse_or_compute(run, cfg01, "cubes", compute=lambda s=size: f"cubes{s}",
                                          store=_fake_store, load=_fake_load)
        cache.link_into_run(cache.entry_data(entry), run.cubes_dir)
        runs.append(run)
    computed = []

    def fake_features(cubes, model, info, cfg, progress=True, **_):
        computed.append(cubes)
        frame = pd.DataFrame({"bbox": ["b"], "feat_0": [float(len(computed))]})
        return FeatureResult(frame, pd.DataFrame({"bbox": []}), "x.csv", "fake", 0.0)

    monkeypatch.setattr(steps, "compute_features", fake_features)
    cfg02 = C.make_config({"cache_dir": str(cache_dir)})
    first = steps.extract("cubes32", None, None, cfg02, runs[0])
    second = steps.extract("cubes48", None, None, cfg02, runs[1])
    assert computed == ["cubes32", "cubes48"] and first.features["feat_0"][0] != second.features["feat_0"][0]
    again = steps.extract("cubes32", None, None, cfg02, runs[0])
    assert len(computed) == 2 and again.features.equals(first.features)
    assert cache.read_record(runs[0].path)["features"]["hit"] is True


# --------------------------------------------------------------------------- temporary folders
def _writer_in_store(cfg: C.Config, run_path: Path, hold: bool) -> int:
    """Fork a process that starts writing the cubes entry of ``cfg`` and, inside ``store``, dies
    (a crash) or, with ``hold``, keeps writing; returns its pid once its temporary folder exists."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            def store(value, folder):
                folder.mkdir(parents=True)
                os.write(ready_w, b"1")
                if hold:
                    time.sleep(300)
                os._exit(0)

            cache.reuse_or_compute(Run(run_path), cfg, "cubes", compute=lambda: "v", store=store, load=_fake_load)
        finally:
            os._exit(1)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    return pid


def test_stale_temporary_folders_are_removed_live_ones_kept(tmp_path):
    cache_dir = tmp_path / "cache"
    stage = cache_dir / "cubes"
    two_hours_ago = time.time() - 7200

    def new_folders(before: set[Path]) -> set[Path]:
        return set(stage.iterdir()) - before

    crashed_pid = _writer_in_store(C.make_config({"cache_dir": str(cache_dir), "cube_size": 32}), tmp_path / "a", False)
    os.waitpid(crashed_pid, 0)
    crashed = new_folders(set())
    live_pid = _writer_in_store(C.make_config({"cache_dir": str(cache_dir), "cube_size": 48}), tmp_path / "b", True)
    try:
        live = new_folders(crashed)
        assert len(crashed) == len(live) == 1
        for p in live:  # in progress for two hours: still not touched while its process lives
            os.utime(p, (two_hours_ago, two_hours_ago))

        def make(name: str, old: bool) -> Path:
            folder = stage / name
            (folder / "entry").mkdir(parents=True)
            if old:
                for p in (folder / "entry", folder):
                    os.utime(p, (two_hours_ago, two_hours_ago))
            return folder

        # folders whose owner cannot be checked (an older version, another host) go by age
        unknown_old = {make(".abc.tmp-m3n8b2c1", True), make(".abc.tmp-1-0badf00d-aaaa", True)}
        unknown_new = {make(".abc.tmp-p0o9i8u7", False), make(".abc.old-1-0badf00d-bbbb", False)}
        other = make(".notes", True)
        cfg = C.make_config({"cache_dir": str(cache_dir), "cube_size": 64})
        cache.reuse_or_compute(Run(tmp_path / "r"), cfg, "cubes", compute=lambda: "v", store=_fake_store, load=_fake_load)
        assert not any(p.exists() for p in crashed | unknown_old)
        assert all(p.exists() for p in live | unknown_new | {other})
    finally:
        os.kill(live_pid, 9)
        os.waitpid(live_pid, 0)


# --------------------------------------------------------------------------- a cleared cache
def test_load_cubes_says_the_cache_entry_is_gone(tmp_path):
    cache_dir = tmp_path / "cache"
    cfg = C.make_config({"cache_dir": str(cache_dir)})
    run = Run(tmp_path / "run_1")
    _, entry = cache.reuse_or_compute(run, cfg, "cubes", compute=lambda: "v", store=_fake_store, load=_fake_load)
    cache.link_into_run(cache.entry_data(entry), run.cubes_dir)
    shutil.rmtree(cache_dir)
    with pytest.raises(RunError) as info:
        steps.load_cubes(run)
    message = str(info.value)
    assert message == (
        f"the cubes of run {run.path} lived in the cache entry {entry}, which no longer exists "
        "(the cache was moved or cleared): rerun 01_load for this run"
    )


def test_features_of_cubes_the_run_does_not_hold_are_not_cached(tmp_path, monkeypatch):
    calls = []

    def fake_features(cubes, model, info, cfg, progress=True, **_):
        calls.append(cubes)
        return FeatureResult(pd.DataFrame({"feat_0": [1.0]}), pd.DataFrame({"bbox": []}), "x.csv", "fake", 0.0)

    monkeypatch.setattr(steps, "compute_features", fake_features)
    cfg = C.make_config({"cache_dir": str(tmp_path / "cache")})
    for cubes in ("a", "b"):
        steps.extract(cubes, None, None, cfg, Run(tmp_path / "no_cubes"))
    assert calls == ["a", "b"] and not (tmp_path / "cache" / "features").exists()
