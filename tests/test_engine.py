"""The Dask engine: locality order, cluster specs, the partition store and the resumable executor.

The cluster tests share one LocalCluster (2 worker processes, 1 thread each) made once per module.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

from synapse_nb.engine import (
    ClusterSpec,
    PartitionStore,
    TorchThreads,
    batch_chunk_reads,
    chunks_touched,
    jobqueue_script,
    locality_order,
    morton_codes,
    open_client,
    plan_batches,
    run_partitions,
    worker_cached,
)
from synapse_nb.engine import execute as engine_execute

# the tasks below travel to the workers by value (the workers need not import this test module)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- tasks run by the engine
def _note_call(calls: Path, part_id: int) -> None:
    (calls / f"{part_id:06d}-{os.getpid()}-{uuid.uuid4().hex[:8]}").touch()


def _calls(calls: Path) -> dict[int, int]:
    out: dict[int, int] = {}
    for path in calls.iterdir():
        pid = int(path.name.split("-")[0])
        out[pid] = out.get(pid, 0) + 1
    return out


def torch_task(payload: dict, folder: Path) -> None:
    """A small seeded 3-D convolution: deterministic wherever it runs."""
    import torch

    _note_call(payload["calls"], payload["id"])
    gen = torch.Generator().manual_seed(payload["id"])
    x = torch.randn(1, 2, 12, 12, 12, generator=gen)
    w = torch.randn(3, 2, 3, 3, 3, generator=gen)
    y = torch.nn.functional.conv3d(x, w, padding=1)
    np.save(folder / "y.npy", y.numpy())
    (folder / "threads.txt").write_text(str(torch.get_num_threads()))


def seeded_task(payload: dict, folder: Path) -> None:
    """Random numbers seeded by the partition; fails while the payload's flag file exists,
    sleeps ``payload['sleep']`` seconds (to be killed in the middle)."""
    _note_call(payload["calls"], payload["id"])
    if payload.get("flag") is not None and Path(payload["flag"]).exists():
        raise RuntimeError(f"flag set for partition {payload['id']}")
    time.sleep(payload.get("sleep", 0.0))
    np.save(folder / "x.npy", np.random.default_rng(payload["id"]).normal(size=50))


def _payloads(ids, calls: Path, **extra) -> dict[int, dict]:
    calls.mkdir(parents=True, exist_ok=True)
    return {i: {"id": i, "calls": calls, **{k: (v(i) if callable(v) else v) for k, v in extra.items()}} for i in ids}


def _expected(part_id: int) -> np.ndarray:
    return np.random.default_rng(part_id).normal(size=50)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# ---------------------------------------------------------------- the shared cluster
@pytest.fixture(scope="module")
def client():
    started = time.perf_counter()
    with open_client(ClusterSpec("local", n_workers=2, threads_per_worker=1)) as c:
        c.wait_for_workers(2, timeout=60)
        log.warning("LocalCluster with 2 worker processes started in %.1f s", time.perf_counter() - started)
        yield c


# ---------------------------------------------------------------- locality
def test_locality_order_groups_positions_of_one_chunk():
    rng = np.random.default_rng(1)
    corners = np.array([[0, 0, 0], [0, 64, 0], [64, 0, 64], [128, 128, 128], [0, 0, 64]])
    chunk_of = rng.integers(0, len(corners), size=200)
    pos = corners[chunk_of] + rng.integers(0, 64, size=(200, 3))
    order = locality_order(pos, 64)
    assert sorted(order.tolist()) == list(range(200))
    runs = chunk_of[order]
    # every chunk's synapses form one contiguous run
    assert (np.diff(runs) != 0).sum() == len(corners) - 1
    # inside a run, ties are broken by position (z, y, x)
    first = pos[order][runs == runs[0]]
    assert [tuple(p) for p in first] == sorted(tuple(p) for p in first)
    # Z-order: chunks (0,0,0), (0,0,1), (0,1,0) come before (1,0,1) and (2,2,2)
    assert runs.tolist().index(3) == len(runs) - (chunk_of == 3).sum()
    assert morton_codes(np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 1, 1]])).tolist() == [1, 2, 4, 7]


def test_locality_batches_read_fewer_chunks_than_random_batches():
    rng = np.random.default_rng(0)
    pos = rng.integers([0, 0, 0], [256, 512, 512], size=(600, 3))
    windows = np.stack([pos - 40, pos + 40], axis=1)
    assert chunks_touched(windows[:1], 64) in (8, 12, 18, 27)  # 80 voxels span 2 or 3 chunks per axis
    local = batch_chunk_reads(plan_batches(locality_order(pos, 64), 64), windows, 64)
    shuffled = batch_chunk_reads(plan_batches(rng.permutation(600), 64), windows, 64)
    assert shuffled > 2 * local


def test_plan_batches():
    batches = plan_batches(10, 4)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [b.tolist() for b in plan_batches(np.array([5, 3, 1]), 2)] == [[5, 3], [1]]
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches(10, 0)


# ---------------------------------------------------------------- cluster specs
def test_cluster_spec_validation():
    assert ClusterSpec().kind == "local"
    assert ClusterSpec("tcp://10.1.2.3:8786").kind == "address"
    assert ClusterSpec("tls://scheduler.example.org:8786").kind == "address"
    with pytest.raises(ValueError, match="unknown scheduler 'kubernetes'.*local, slurm, pbs, lsf"):
        ClusterSpec("kubernetes")
    with pytest.raises(ValueError, match="tcp://host:port"):
        ClusterSpec("tcp://nohost")
    with pytest.raises(ValueError, match="tcp://host:port"):
        ClusterSpec("tcp://host:99999")
    with pytest.raises(ValueError, match="n_workers"):
        ClusterSpec(n_workers=0)
    with pytest.raises(ValueError, match="memory_per_worker"):
        ClusterSpec(memory_per_worker="plenty")
    with pytest.raises(ValueError, match=r"unknown slurm jobqueue option\(s\) \['gpus'\]"):
        ClusterSpec("slurm", memory_per_worker="4GiB", jobqueue={"gpus": 1})
    with pytest.raises(ValueError, match="only used with scheduler"):
        ClusterSpec("local", jobqueue={"cores": 2})
    with pytest.raises(ValueError, match="memory"):
        ClusterSpec("slurm").jobqueue_kwargs()


def test_jobqueue_script_for_slurm_shows_the_options(tmp_path):
    spec = ClusterSpec("slurm", n_workers=4, memory_per_worker="16GiB",
                       jobqueue={"cores": 4, "processes": 2, "walltime": "02:30:00", "queue": "gpu",
                                 "account": "lab42", "job_extra_directives": ["--gres=gpu:1"],
                                 "local_directory": str(tmp_path / "scratch")})
    script = jobqueue_script(spec)
    for line in ("#SBATCH -p gpu", "#SBATCH -A lab42", "#SBATCH --cpus-per-task=4", "#SBATCH -t 02:30:00",
                 "#SBATCH --gres=gpu:1", "--nworkers 2", "--nthreads 2", f"--local-directory {tmp_path / 'scratch'}"):
        assert line in script, line
    assert "#SBATCH --mem=16G" in script or "#SBATCH --mem=17G" in script


# ---------------------------------------------------------------- partition store
def test_partition_store_first_writer_wins(tmp_path):
    store = PartitionStore(tmp_path / "parts")
    first, second = store.temporary(7), store.temporary(7)
    (first / "value.txt").write_text("first")
    (second / "value.txt").write_text("second")
    assert not store.is_done(7)
    assert store.commit(7, first) is True
    assert store.commit(7, second) is False
    assert (store.path(7) / "value.txt").read_text() == "first"
    assert not second.exists() and store.leftovers() == []
    assert store.done() == {7} and store.missing([5, 7, 9]) == [5, 9]
    assert store.commits()["partition"].tolist() == [7]
    assert store.path(7).name == "part-000007"

    store.record_failure(5, "ValueError: bad window", attempts=3)
    store.record_failure(5, "ValueError: still bad", attempts=3)
    store.record_failure(9, "OSError: disk")
    failed = store.failures()
    assert failed.to_dict("records") == [{"partition": 5, "reason": "ValueError: still bad", "attempts": 6},
                                         {"partition": 9, "reason": "OSError: disk", "attempts": 1}]
    tmp9 = store.temporary(9)
    assert store.commit(9, tmp9)
    assert store.failures()["partition"].tolist() == [5]  # a part committed later clears its failure


def test_clean_leftovers_removes_only_dead_attempts(tmp_path):
    store = PartitionStore(tmp_path)
    live = store.temporary(1)
    dead_proc = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_proc.wait()
    dead = tmp_path / live.name.replace(f"tmp-{os.getpid()}-", f"tmp-{dead_proc.pid}-")
    dead.mkdir()
    (dead / "half.npy").write_bytes(b"12")
    assert store.clean_leftovers() == [dead]
    assert live.exists() and not dead.exists()


# ---------------------------------------------------------------- executor, in this process
def test_in_process_run_records_failures_and_retries(tmp_path):
    store = PartitionStore(tmp_path / "parts")
    flag = tmp_path / "flag"
    flag.touch()
    payloads = _payloads(range(6), tmp_path / "calls", flag=lambda i: flag if i == 4 else None)
    done = []
    report = run_partitions(None, payloads, seeded_task, store, retries=2, progress=False,
                            on_done=lambda i, path: done.append((i, path)))
    assert report.computed == [0, 1, 2, 3, 5] and report.missing == [4]
    assert report.failures.to_dict("records") == [
        {"partition": 4, "reason": "RuntimeError: flag set for partition 4", "attempts": 3}]
    assert _calls(tmp_path / "calls")[4] == 3  # 1 + retries
    assert done == [(i, store.path(i)) for i in (0, 1, 2, 3, 5)]
    for i in report.done:
        np.testing.assert_array_equal(np.load(store.path(i) / "x.npy"), _expected(i))

    flag.unlink()
    again = run_partitions(None, payloads, seeded_task, store, progress=False)
    assert again.computed == [4] and again.skipped == [0, 1, 2, 3, 5] and again.complete
    assert again.failures.empty and store.failures().empty


def test_worker_cached_builds_once_per_process():
    engine_execute.clear_worker_cache()
    built = []
    for _ in range(3):
        value = worker_cached(("net", 1), lambda: built.append(1) or {"weights": 1})
    assert value == {"weights": 1} and built == [1]
    engine_execute.clear_worker_cache()


# ---------------------------------------------------------------- executor on the cluster
def test_two_workers_give_the_same_parts_as_one_process(client, tmp_path):
    ids = range(6)
    here = run_partitions(None, _payloads(ids, tmp_path / "calls_here"), torch_task, tmp_path / "here", progress=False)
    there = run_partitions(client, _payloads(ids, tmp_path / "calls_there"), torch_task, tmp_path / "there",
                           progress=False)
    assert here.computed == there.computed == list(ids)
    for i in ids:
        a = np.load(tmp_path / "here" / f"part-{i:06d}" / "y.npy")
        b = np.load(tmp_path / "there" / f"part-{i:06d}" / "y.npy")
        np.testing.assert_array_equal(a, b)
        assert (tmp_path / "there" / f"part-{i:06d}" / "threads.txt").read_text() == "1"
    pids = {p.name.split("-")[1] for p in (tmp_path / "calls_there").iterdir()}
    assert str(os.getpid()) not in pids and len(pids) >= 1
    # the plugin sets torch's threads on workers that loaded torch already
    client.register_plugin(TorchThreads(2), name=TorchThreads.name)
    assert set(client.run(_torch_threads).values()) == {2}
    client.register_plugin(TorchThreads(), name=TorchThreads.name)
    assert set(client.run(_torch_threads).values()) == {1}


def test_resume_on_the_cluster_computes_only_missing_parts(client, tmp_path):
    store = PartitionStore(tmp_path / "parts")
    flag = tmp_path / "flag"
    flag.touch()
    calls = tmp_path / "calls"
    payloads = _payloads(range(10), calls, flag=lambda i: flag if i in (2, 7) else None)
    first = run_partitions(client, payloads, seeded_task, store, retries=1, progress=False, in_flight_per_thread=2)
    assert first.computed == [0, 1, 3, 4, 5, 6, 8, 9] and first.missing == [2, 7]
    assert first.failures["reason"].tolist() == ["RuntimeError: flag set for partition 2",
                                                 "RuntimeError: flag set for partition 7"]
    assert first.failures["attempts"].tolist() == [2, 2]
    flag.unlink()
    second = run_partitions(client, payloads, seeded_task, store, progress=False)
    assert second.computed == [2, 7] and second.complete and second.failures.empty
    counts = _calls(calls)
    assert {i: counts[i] for i in range(10) if i not in (2, 7)} == {i: 1 for i in range(10) if i not in (2, 7)}
    assert counts[2] == counts[7] == 3  # two failed tries, then one that succeeded
    for i in range(10):
        np.testing.assert_array_equal(np.load(store.path(i) / "x.npy"), _expected(i))


def test_a_killed_worker_still_yields_every_partition_once(client, tmp_path):
    store = PartitionStore(tmp_path / "parts")
    calls = tmp_path / "calls"
    payloads = _payloads(range(8), calls, sleep=0.6)
    killed = []

    def kill_a_busy_worker(part_id: int, path: Path) -> None:
        if killed:
            return
        busy = [addr for addr, keys in client.processing().items() if keys]
        pids = client.run(os.getpid)
        victim = pids[busy[0]] if busy else next(iter(pids.values()))
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)

    report = run_partitions(client, payloads, seeded_task, store, progress=False, on_done=kill_a_busy_worker)
    assert killed
    assert report.complete and report.computed == list(range(8)) and report.failures.empty
    commits = store.commits()
    assert sorted(commits["partition"]) == list(range(8))  # each committed exactly once
    for i in range(8):
        np.testing.assert_array_equal(np.load(store.path(i) / "x.npy"), _expected(i))
    counts = _calls(calls)
    assert max(counts.values()) >= 2  # the task on the killed worker ran again elsewhere
    # its temporary folder is left behind by the dead process and goes on the next clean-up
    leftovers = store.leftovers()
    assert leftovers and all(f"tmp-{killed[0]}-" in p.name for p in leftovers)
    assert store.clean_leftovers() == leftovers
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker
