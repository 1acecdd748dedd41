"""How fast, how busy and how big is a connectome run on Dask, and what would a million synapses cost?

On the synthetic connectome (:func:`synapse_nb.data.synthetic_connectome.make_synthetic_connectome`,
default 512 x 1024 x 1024 voxels, 3000 synapses; generated once into ``--conn`` and timed, then
reused), with the settings of ``parameters/demo.yaml`` (cube 80, stage_specific layer 20, avg
pooling, segmentation type 5), each part printed as a table:

* ``throughput``: synapses/s of cubes + features for one process (client None) vs a LocalCluster
  (``--workers`` x 1 thread), split into build and extract, with the share of the CPUs that was
  busy: ``machine`` = psutil.cpu_times of the whole machine (other users included), ``ours`` =
  CPU time of this process and its children (the Dask workers) over wall x cores. float32 on
  ``--n`` synapses; bfloat16 on ``--bf16-n`` cubes only (extract, one process), beside float32
  on the same cubes: on a CPU without native bf16 it is emulated and slow, which is said.
* ``slow``: the same build with every chunk read of the raw / seg / cleft / mask layers slowed by
  ``--slow-ms`` (a sleep per storage chunk a read touches, one after another, as an object store
  without request concurrency would; a benchmark-only wrapper of the layers opened through a
  :class:`~synapse_nb.engine.tasks.DataSource` whose opener wraps them), for 1 and more threads
  per worker (``--threads``). Build alone (the step that reads) and a fused task (build then
  extract of the same batch in one task, so one thread's reads overlap another's compute);
  "hidden" = how much of the added sleep did not show up in the wall time.
* ``memory``: peak RSS (ru_maxrss) of each worker and of the driver for ``--mem-sizes`` synapses
  (each size in a fresh child process with a fresh cluster; sizes past the table's rows repeat
  its rows under new names). ``--mem-extract`` also extracts (else cube build only).
* ``estimate``: wall time and node count for ``--target`` synapses on a SLURM cluster of GPU
  nodes, from the figures above and stated assumptions (printed).

Loads (``os.getloadavg``) are printed beside every figure: the machine is shared, so figures
taken at a load above the core count are pessimistic.

Usage: python benchmarks/bench_connectome.py [--conn DIR] [--work DIR] [--n 200] [--bf16-n 4]
       [--workers 2] [--batch 32] [--slow-ms 30] [--slow-n 64] [--threads 1,2,4]
       [--mem-sizes 1000,10000] [--mem-extract] [--target 1000000]
       [--skip throughput,slow,memory,estimate]
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from synapse_nb.core import labels as L
from synapse_nb.core.config import make_config
from synapse_nb.cubes.geometry import CubeGeometry, label_window
from synapse_nb.cubes.rendering import RenderSettings
from synapse_nb.data.connectome import open_connectome
from synapse_nb.data.synthetic_connectome import make_synthetic_connectome
from synapse_nb.data.volumes import Volume
from synapse_nb.engine import (
    ClusterSpec,
    PartitionStore,
    batch_chunk_reads,
    open_client,
    run_partitions,
    worker_cached,
)
from synapse_nb.engine.tasks import (
    BuildBatch,
    DataSource,
    ExtractBatch,
    NetworkSpec,
    build_batch,
    extract_batch,
)
from synapse_nb.features.devices import cpu_has_native_bf16
from synapse_nb.features.extract import ExtractionSettings
from synapse_nb.pipeline.scale import build_batches
from synapse_nb.sampling import SamplePlan, sample_synapses

SETTINGS = {"cube_size": 80, "segmentation_type": 5, "alpha": 1.0, "crop_mode": "cleft",
            "extraction_method": "stage_specific", "layer_num": 20, "pooling_method": "avg", "seed": 42}


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


# --------------------------------------------------------------------------- slowed reads
class SlowSource:
    """A layer's array whose reads cost ``delay_s`` per storage chunk touched (and are counted)."""

    def __init__(self, source, chunk_zyx, lead: int, delay_s: float, name: str) -> None:
        self._source, self.chunk, self.lead, self.delay_s, self.name = source, np.asarray(chunk_zyx), lead, delay_s, name
        self.shape, self.dtype = source.shape, source.dtype
        self.chunks = getattr(source, "chunks", None)
        self.reads = self.chunk_reads = self.voxels = 0
        self.slept = 0.0

    def __getitem__(self, sel):
        spatial = sel[self.lead:self.lead + 3]
        lo = np.array([s.start or 0 for s in spatial])
        hi = np.array([s.stop for s in spatial])
        n = int(np.prod(np.maximum((hi - 1) // self.chunk - lo // self.chunk + 1, 0)))
        if self.delay_s > 0:
            time.sleep(self.delay_s * n)
        self.reads += 1
        self.chunk_reads += n
        self.voxels += int(np.prod(hi - lo))
        self.slept += self.delay_s * n
        return self._source[sel]


def _volumes(obj, seen: set[int], found: dict[str, Volume], name: str = "") -> None:
    """Every :class:`Volume` under a layer (a mapped seg or a virtual mask wraps others)."""
    if obj is None or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Volume):
        found[name] = obj
        return
    for attr in ("volume", "mask", "cleft", "seg", "raw"):
        child = getattr(obj, attr, None)
        if child is not None and not isinstance(child, (int, float, str)):
            _volumes(child, seen, found, attr if not name else f"{name}.{attr}")


def open_slow(path: str, delay_s: float) -> list:
    """The connectome as one bbox whose raw / seg / cleft / mask chunk reads are slowed and counted."""
    conn = open_connectome(path)
    found: dict[str, Volume] = {}
    seen: set[int] = set()
    for role in ("raw", "seg", "cleft", "mask"):
        _volumes(getattr(conn, role), seen, found, role)
    for name, vol in found.items():
        vol._source = SlowSource(vol._source, vol.chunk_shape or (64, 64, 64), vol._lead, delay_s, name)
    return [conn.as_bbox()]


def read_counts(key: str) -> dict:
    """This process's counters of the slowed layers opened under ``key`` (run on each worker)."""
    bboxes = worker_cached(("data", key), dict)
    out: dict[str, float] = {"reads": 0, "chunk_reads": 0, "voxels": 0, "slept": 0.0}
    for b in bboxes.values():
        found: dict[str, Volume] = {}
        for role in ("raw", "seg", "mask"):
            _volumes(getattr(b, role), set(), found, role)
        for vol in {id(v): v for v in found.values()}.values():
            src = vol._source
            if isinstance(getattr(src, "chunk_reads", None), int):
                for k in out:
                    out[k] += getattr(src, k)
    return out


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- CPU accounting
class CpuMeter:
    """CPU busy share over a span: the machine's (psutil.cpu_times) and our process tree's."""

    def __enter__(self):
        self.t0, self.m0, self.p0 = time.perf_counter(), psutil.cpu_times(), self._tree()
        self.load0 = os.getloadavg()[0]
        return self

    @staticmethod
    def _tree() -> dict[int, float]:
        procs = [psutil.Process()] + psutil.Process().children(recursive=True)
        out = {}
        for p in procs:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        return out

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        m1, p1 = psutil.cpu_times(), self._tree()
        busy = lambda t: t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)
        total = lambda t: busy(t) + t.idle + getattr(t, "iowait", 0.0)
        self.machine = (busy(m1) - busy(self.m0)) / max(total(m1) - total(self.m0), 1e-9)
        self.cpu_s = sum(v - self.p0.get(pid, 0.0) for pid, v in p1.items())
        self.ours = self.cpu_s / (self.wall * psutil.cpu_count())
        self.load = (self.load0 + os.getloadavg()[0]) / 2
        return False


# --------------------------------------------------------------------------- runs
def config(conn_yaml: Path, **over):
    return make_config({"connectome": str(conn_yaml), "cache_dir": "", "engine": "dask", **SETTINGS, **over})


def geometry_of(cfg) -> CubeGeometry:
    return CubeGeometry(size=cfg.cube_size, crop_mode=cfg.crop_mode, presynapse_weight=cfg.presynapse_weight,
                        orient=bool(cfg.orient_cubes))


def sample_table(conn, n: int, seed: int) -> pd.DataFrame:
    """``n`` synapses: a seeded random sample, or the table's rows repeated under new names past its size."""
    table = conn.table
    if n <= len(table):
        return sample_synapses(table, SamplePlan(policy="random", n=n, seed=seed)).table
    reps = [table.assign(**{L.NAME_COLUMN: table[L.NAME_COLUMN].astype(str) + f"_r{k}"}) for k in range(-(-n // len(table)))]
    return pd.concat(reps, ignore_index=True).iloc[:n].reset_index(drop=True)


def slow_payloads(payloads: dict[int, BuildBatch], conn_yaml: Path, delay_s: float,
                  tag: str = "") -> tuple[dict[int, BuildBatch], str]:
    """The batches opened through the slowed layers (``tag``: fresh counters per run on the same cluster)."""
    key = f"slow:{conn_yaml.resolve()}:{delay_s}:{tag}"
    source = DataSource(key, open_slow, (str(conn_yaml.resolve()), delay_s))
    return {i: dataclasses.replace(p, source=source) for i, p in payloads.items()}, key


def extract_payloads(parts: Path, ids, cfg, precision: str = "float32", threads: int | None = None,
                     rows=None) -> dict[int, ExtractBatch]:
    settings = ExtractionSettings(method=cfg.extraction_method, layer_num=cfg.layer_num, pooling=cfg.pooling_method,
                                  batch_size=cfg.batch_size, precision=precision, input_range="0_1")
    net = NetworkSpec(None, cfg.seed)
    return {i: ExtractBatch(str(parts / f"part-{i:06d}"), net, settings, RenderSettings.from_config(cfg), "cpu",
                            rows, threads) for i in ids}


@dataclasses.dataclass(frozen=True)
class Fused:
    """Build a batch then extract it, in one task (so a thread's reads overlap another's compute)."""

    build: BuildBatch
    extract: ExtractBatch


def fused_task(payload: Fused, out: Path) -> None:
    build_batch(payload.build, out / "cubes")
    extract_batch(dataclasses.replace(payload.extract, cubes=str(out / "cubes")), out / "features")


def cube_bytes(parts: Path) -> int:
    return sum(f.stat().st_size for f in parts.rglob("*") if f.is_file())


def run_phase(client, payloads, task, folder: Path, desc: str) -> CpuMeter:
    shutil.rmtree(folder, ignore_errors=True)
    with CpuMeter() as meter:
        report = run_partitions(client, payloads, task, PartitionStore(folder), progress=False, desc=desc)
    if not report.complete:
        raise RuntimeError(f"{desc}: {report.summary()}")
    return meter


def throughput(conn_yaml: Path, work: Path, args) -> tuple[pd.DataFrame, dict]:
    cfg = config(conn_yaml, engine_batch_size=args.batch)
    conn = open_connectome(conn_yaml)
    table = sample_table(conn, args.n, cfg.seed)
    geometry = geometry_of(cfg)
    payloads, key = slow_payloads(build_batches([conn.as_bbox()], cfg, geometry, table), conn_yaml, 0.0)
    rows, facts = [], {}
    for mode in ("one process", f"LocalCluster {args.workers}x1"):
        base = work / ("here" if mode == "one process" else "dask")
        t0 = time.perf_counter()
        ctx = open_client(ClusterSpec(n_workers=args.workers, threads_per_worker=1)) if mode != "one process" else None
        client = ctx.__enter__() if ctx is not None else None
        start = time.perf_counter() - t0
        try:
            b = run_phase(client, payloads, build_batch, base / "parts", "build")
            counts = client.run(read_counts, key) if client is not None else {"here": read_counts(key)}
            ex = extract_payloads(base / "parts", sorted(payloads), cfg, threads=1 if client is not None else None)
            e = run_phase(client, ex, extract_batch, base / "features", "extract")
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
        n_feat = sum(len(pd.read_parquet(p)) for p in (base / "features").rglob("features.parquet"))
        wall = b.wall + e.wall
        rows.append({"mode": mode, "precision": "float32", "synapses": len(table), "featured": n_feat,
                     "cluster_start_s": round(start, 1), "build_s": round(b.wall, 1), "extract_s": round(e.wall, 1),
                     "syn_per_s": round(len(table) / wall, 3),
                     "build_cpu_ours": f"{b.ours:.0%}", "extract_cpu_ours": f"{e.ours:.0%}",
                     "cpu_s_per_syn": round((b.cpu_s + e.cpu_s) / len(table), 2),
                     "cpu_machine": f"{(b.machine * b.wall + e.machine * e.wall) / wall:.0%}",
                     "load": f"{b.load:.1f}/{e.load:.1f}"})
        if mode == "one process":
            total = {k: sum(c[k] for c in counts.values()) for k in ("reads", "chunk_reads", "voxels")}
            facts.update(build_cpu_s_per_syn=b.cpu_s / len(table), extract_cpu_s_per_syn=e.cpu_s / len(table),
                         cube_bytes_per_syn=cube_bytes(base / "parts") / len(table), reads=total,
                         build_wall_per_syn=b.wall / len(table), extract_wall_per_syn=e.wall / len(table),
                         featured=n_feat)
    # bfloat16: a few cubes of --bf16-cube (emulated bf16 is ~100x slower here), extract only, one process,
    # beside float32 on the same cubes; the cube-80 bf16 figure is float32's times the measured ratio
    small = config(conn_yaml, engine_batch_size=args.bf16_n, cube_size=args.bf16_cube)
    first = {0: dataclasses.replace(payloads[min(payloads)], rows=payloads[min(payloads)].rows.iloc[:args.bf16_n],
                                    geometry=geometry_of(small))}
    run_phase(None, first, build_batch, work / "bf16_parts", "build")
    secs = {}
    for precision in ("float32", "bfloat16"):
        ex = extract_payloads(work / "bf16_parts", [0], small, precision=precision)
        with CpuMeter() as m:
            run_phase(None, ex, extract_batch, work / f"bf16_{precision}", precision)
        secs[precision] = m.wall
        rows.append({"mode": f"one process, extract only, cube {args.bf16_cube}", "precision": precision,
                     "synapses": args.bf16_n, "extract_s": round(m.wall, 1), "syn_per_s": round(args.bf16_n / m.wall, 3),
                     "extract_cpu_ours": f"{m.ours:.0%}", "cpu_s_per_syn": round(m.cpu_s / args.bf16_n, 2),
                     "cpu_machine": f"{m.machine:.0%}", "load": f"{m.load:.1f}"})
    facts["bf16_ratio"] = secs["bfloat16"] / secs["float32"]
    facts["bf16_native"] = bool(cpu_has_native_bf16())
    ordered = pd.concat([p.rows for p in payloads.values()], ignore_index=True)  # in locality batches
    facts["windows"] = windows_of(ordered, geometry, conn.shape)
    sizes = np.cumsum([0] + [len(p.rows) for p in payloads.values()])
    facts["batches"] = [np.arange(a, b) for a, b in itertools.pairwise(sizes)]
    return pd.DataFrame(rows), facts


def windows_of(table: pd.DataFrame, geometry: CubeGeometry, shape) -> np.ndarray:
    """Each synapse's label window (z, y, x start / stop): the seg + mask read of its build."""
    centers = np.rint(table[list(L.CENTER_COLUMNS)].to_numpy(np.float64)[:, ::-1]).astype(np.int64)
    return np.stack([np.stack([w.lo, w.hi]) for w in (label_window(c, geometry, shape) for c in centers)])


def slow(conn_yaml: Path, work: Path, args) -> pd.DataFrame:
    cfg = config(conn_yaml, engine_batch_size=args.slow_batch)
    conn = open_connectome(conn_yaml)
    table = sample_table(conn, args.slow_n, cfg.seed)
    plain = build_batches([conn.as_bbox()], cfg, geometry_of(cfg), table)
    fused_plain = build_batches([conn.as_bbox()], cfg, geometry_of(cfg), table.iloc[:args.fused_n])
    rows = []
    for threads in args.threads:
        with open_client(ClusterSpec(n_workers=args.workers, threads_per_worker=threads)) as client:
            for kind in ("build", "fused"):
                if kind == "fused" and (args.fused_n <= 0 or threads not in args.fused_threads):
                    continue
                for delay in (0.0, args.slow_ms / 1000):
                    payloads, key = slow_payloads(plain if kind == "build" else fused_plain, conn_yaml, delay, kind)
                    folder = work / f"slow_t{threads}_{kind}_{int(delay * 1000)}"
                    if kind == "fused":
                        ex = extract_payloads(folder, sorted(payloads), cfg, threads=1)
                        payloads = {i: Fused(p, ex[i]) for i, p in payloads.items()}
                    m = run_phase(client, payloads, build_batch if kind == "build" else fused_task, folder, kind)
                    counts = client.run(read_counts, key)
                    slept = sum(c["slept"] for c in counts.values())
                    chunks = sum(c["chunk_reads"] for c in counts.values())
                    rows.append({"threads/worker": threads, "task": kind, "ms/chunk": int(delay * 1000),
                                 "synapses": sum(len(p.rows) for p in plain.values()) if kind == "build" else args.fused_n, "chunk_reads": int(chunks), "sleep_s": round(slept, 1),
                                 "wall_s": round(m.wall, 1), "syn_per_s": round(rows_n(payloads) / m.wall, 3),
                                 "cpu_s": round(m.cpu_s, 1),
                                 "cpu_ours": f"{m.ours:.0%}", "cpu_machine": f"{m.machine:.0%}", "load": f"{m.load:.1f}"})
    out = pd.DataFrame(rows)
    base = out[out["ms/chunk"] == 0].set_index(["threads/worker", "task"])["wall_s"]
    added = out.apply(lambda r: r["wall_s"] - base[(r["threads/worker"], r["task"])], axis=1)
    out["wall_added_s"] = added.round(1)
    # unhidden, each worker's share of the sleep would add to the wall: sleep / workers
    out["hidden"] = [("" if r["ms/chunk"] == 0 else f"{1 - a / max(r['sleep_s'] / args.workers, 1e-9):.0%}")
                     for (_, r), a in zip(out.iterrows(), added)]
    return out


def read_model(table: pd.DataFrame, facts: dict, args) -> str:
    """What the slowed runs should show on an idle machine, from the one-process CPU figures.

    A worker owns one core; its T threads overlap reads (sleep, no CPU) with compute. Per
    synapse, with compute c and read latency r: wall ~ max(c, (c + r) / T). Two-phase (build
    then extract, as scale.py runs them): the build phase alone has c = c_build, so reads hide
    only when T >= (c_build + r) / c_build; fused (extract right after build in the same
    worker): c = c_build + c_extract.
    """
    cb, ce = facts["build_cpu_s_per_syn"], facts["extract_cpu_s_per_syn"]
    slowed = table[(table["ms/chunk"] > 0) & (table["task"] == "build")]
    r = float((slowed["sleep_s"] / slowed["synapses"]).mean()) if len(slowed) else 0.0
    lines = [(f"  model (idle machine, 1 core per worker): build {cb:.2f} core-s, extract {ce:.2f} core-s, "
              f"read sleep {r:.2f} s per synapse at {args.slow_ms:g} ms/chunk")]
    for t in sorted(set(args.threads) | {1, 2, 4, 8}):
        two = max(cb, (cb + r) / t) + ce
        fused = max(cb + ce, (cb + ce + r) / t)
        lines.append(f"    T={t}: two-phase {two:.2f} s/syn per worker (reads cost {two - cb - ce:+.2f}); "
                     f"fused {fused:.2f} s/syn (reads cost {fused - cb - ce:+.2f})")
    return "\n".join(lines)


def rows_n(payloads) -> int:
    return sum(len(getattr(p, "build", p).rows) for p in payloads.values())


def memory_child(conn_yaml: Path, work: Path, n: int, args) -> dict:
    """One sample size in this (fresh) process with a fresh cluster: peak RSS of workers and driver."""
    cfg = config(conn_yaml, engine_batch_size=args.batch)
    conn = open_connectome(conn_yaml)
    table = sample_table(conn, n, cfg.seed)
    payloads = build_batches([conn.as_bbox()], cfg, geometry_of(cfg), table)
    folder = work / f"mem_{n}"
    with open_client(ClusterSpec(n_workers=args.workers, threads_per_worker=1)) as client:
        start = client.run(maxrss_mb)
        b = run_phase(client, payloads, build_batch, folder / "parts", "build")
        after_build = client.run(maxrss_mb)
        e = None
        if args.mem_extract:
            ex = extract_payloads(folder / "parts", sorted(payloads), cfg, threads=1)
            e = run_phase(client, ex, extract_batch, folder / "features", "extract")
        end = client.run(maxrss_mb)
    size = cube_bytes(folder / "parts")
    shutil.rmtree(folder, ignore_errors=True)
    return {"synapses": n, "batches": len(payloads), "worker_start_MB": [round(v) for v in start.values()],
            "worker_peak_build_MB": [round(v) for v in after_build.values()],
            "worker_peak_MB": [round(v) for v in end.values()], "driver_peak_MB": round(maxrss_mb()),
            "build_s": round(b.wall, 1), "extract_s": round(e.wall, 1) if e else None,
            "cube_store_GB": round(size / 1e9, 2), "load": f"{b.load:.1f}"}


def memory(conn_yaml: Path, work: Path, args) -> pd.DataFrame:
    rows = []
    for n in args.mem_sizes:
        cmd = [sys.executable, __file__, "--conn", str(args.conn), "--work", str(work), "--workers", str(args.workers),
               "--batch", str(args.batch), "--memory-child", str(n)] + (["--mem-extract"] if args.mem_extract else [])
        print("  $", " ".join(cmd), flush=True)
        res = subprocess.run(cmd, check=False, capture_output=True, text=True)
        line = [x for x in res.stdout.splitlines() if x.startswith("MEMORY ")]
        if res.returncode or not line:
            raise RuntimeError(f"memory child {n} failed: {res.stderr[-2000:]}")
        rows.append(json.loads(line[-1][7:]))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- estimate
def trunk_gflop(cfg) -> float:
    """Multiply-adds x 2 of the trunk up to ``layer_num`` on one ``cube_size`` cube (the convolutions)."""
    import torch

    from synapse_nb.features.checkpoint import build_model

    model, _ = build_model(None, seed=0, warn_random=False)
    flops = 0.0

    def hook(mod, inp, out):
        nonlocal flops
        k = int(np.prod(mod.kernel_size))
        flops += 2.0 * mod.in_channels * k * out.numel()

    feats = model.features
    handles = [m.register_forward_hook(hook) for m in feats[: cfg.layer_num + 1] if isinstance(m, torch.nn.Conv3d)]
    with torch.no_grad():
        x = torch.zeros(1, 1, cfg.cube_size, cfg.cube_size, cfg.cube_size)
        for m in feats[: cfg.layer_num + 1]:
            x = m(x)
    for h in handles:
        h.remove()
    return flops / 1e9


def estimate(facts: dict, conn, cfg, args) -> str:
    """The written estimate for ``args.target`` synapses (every assumption printed with it)."""
    n = args.target
    gflop = trunk_gflop(cfg)
    cpu_gflops = gflop / facts["extract_cpu_s_per_syn"]  # per core-second
    gpu_tflops = args.gpu_tflops
    gpu_syn_s = gpu_tflops * 1e3 / gflop
    build_core_s = facts["build_cpu_s_per_syn"]
    cores = args.node_cores
    build_syn_s = cores * args.build_efficiency / build_core_s
    # reads: chunks per synapse from the locality batches, on the raw (label window grows by nothing for raw:
    # the raw read is the cube, inside the label window) and seg + cleft + mask windows
    chunk = np.asarray(conn.chunk_shape)
    win, batches = facts["windows"], facts["batches"]
    chunks_batch = batch_chunk_reads(batches, win, chunk) / len(win)
    chunks_single = batch_chunk_reads([np.array([i]) for i in range(len(win))], win, chunk) / len(win)
    chunk_vox = float(np.prod(chunk))
    bytes_per_vox = 1 + 4 + 1 + 1  # raw uint8, seg uint32, cleft uint8, mask uint8
    measured = facts["reads"]
    chunks_now = measured["chunk_reads"] / max(facts["n"], 1) / 4  # 4 layers, each read fetches whole chunks
    ratio = args.compression_ratio
    mb_syn = chunks_now * chunk_vox * bytes_per_vox / 1e6 / ratio  # what the code reads today (no chunk cache)
    mb_cached = chunks_batch * chunk_vox * bytes_per_vox / 1e6 / ratio  # with a per-worker chunk cache over a batch
    node_bw = args.node_gbps * 1e3  # MB/s
    read_syn_s = node_bw / mb_syn
    node_rate = min(gpu_syn_s * args.gpus_per_node, build_syn_s, read_syn_s)
    limit = {gpu_syn_s * args.gpus_per_node: "GPU", build_syn_s: "CPU cube building", read_syn_s: "node network"}[node_rate]
    storage_rate = args.storage_gbps * 1e3 / mb_syn  # synapses/s the shared storage can feed
    nodes_for_hours = n / (node_rate * args.hours * 3600)
    nodes_storage_cap = storage_rate / node_rate
    nodes = int(np.ceil(min(max(nodes_for_hours, 1), max(nodes_storage_cap, 1))))
    rate = min(nodes * node_rate, storage_rate)
    tasks = 2 * n / args.batch
    sched_s = tasks * args.task_overhead_ms / 1e3
    feat_dim = 96
    feat_gb = n * (feat_dim * 4 + 200) / 1e9
    cube_tb = n * facts["cube_bytes_per_syn"] / 1e12
    wall_h = (n / rate + sched_s) / 3600 + args.consolidate_min / 60
    lines = [
        f"ESTIMATE for {n:,} synapses (cube {cfg.cube_size}, {cfg.extraction_method} layer {cfg.layer_num}, batches of {args.batch}):",
        (f"- network: {gflop:.1f} GFLOP per cube (convolutions up to layer {cfg.layer_num}); this CPU did "
            f"{facts['extract_cpu_s_per_syn']:.2f} core-s per synapse = {cpu_gflops:.1f} GFLOP/s per core. Assumed GPU: "
            f"{gpu_tflops:.0f} TFLOP/s sustained on 3-D convs (A100-class, bf16/TF32 cuDNN, ~10-30 % of peak as "
            f"published VGG-like 3-D conv throughput suggests) -> {gpu_syn_s:,.0f} synapses/s per GPU."),
        (f"- cube building: {build_core_s:.2f} core-s per synapse here (CPU-bound Python/numpy/scipy) -> "
            f"{build_syn_s:,.0f} synapses/s on {cores} cores per node at {args.build_efficiency:.0%} efficiency."),
        (f"- reads: measured {chunks_now:.2f} chunk reads per synapse per layer (each window read fetches its whole "
            f"chunks; each layer's chunk cache shares them between synapses of a batch) x chunk {tuple(int(c) for c in chunk)} x 7 B (raw, seg uint32, "
            f"cleft, mask) / compression {ratio:g} = {mb_syn:.1f} MB per synapse; batch_chunk_reads says locality batches of "
            f"{max(len(b) for b in batches)} (the throughput run's) touch {chunks_batch:.2f} chunks per synapse per layer ({chunks_single:.2f} one by one), i.e. "
            f"{mb_cached:.1f} MB for a dense sample (a sparse sample shares fewer). Node network {args.node_gbps:.1f} GB/s -> "
            f"{read_syn_s:,.0f} synapses/s per node."),
        f"- per node ({args.gpus_per_node} GPU(s), {cores} cores): {node_rate:,.0f} synapses/s, limited by {limit}.",
        (f"- shared storage at {args.storage_gbps:.0f} GB/s aggregate feeds at most {storage_rate:,.0f} synapses/s "
            f"(= {nodes_storage_cap:.1f} nodes' worth)."),
        (f"- nodes: {nodes} = enough to finish in {args.hours:g} h (more than {max(nodes_storage_cap, 1):.0f} would only wait "
            f"on storage) -> {rate:,.0f} synapses/s "
            f"-> compute {n / rate / 3600:.2f} h."),
        (f"- scheduler: {tasks:,.0f} tasks (build + extract) x {args.task_overhead_ms:g} ms = {sched_s / 60:.1f} min "
            f"on the scheduler (a few hundred tasks/s is routine for Dask; fewer, larger batches if not)."),
        (f"- cube store: {facts['cube_bytes_per_syn'] / 1e6:.2f} MB per synapse written and read back = {cube_tb:.2f} TB "
            "(written per partition; a fused build+extract task that keeps cubes in memory would avoid the round trip)."),
        (f"- consolidation of features.parquet on one machine: {feat_gb:.2f} GB ({feat_dim} floats + metadata per "
            f"synapse) from {n // args.batch:,} partition files, assumed {args.consolidate_min:g} min (reading many small "
            "files dominates; pyarrow dataset reading in parallel)."),
        (f"- WALL TIME ~ {wall_h:.1f} h on {nodes} node(s). What limits: "
            + ("shared storage bandwidth (add nodes no further)" if rate >= storage_rate - 1e-9 else f"the {limit} per node")
            + f"; next the cube-store round trip ({cube_tb:.1f} TB) and the one-machine consolidation."),
        f"  Compare the original tool: 0.67 s per synapse on one 64-CPU node -> {0.67 * n / 86400:.1f} days.",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def ensure_connectome(conn: Path) -> Path:
    yaml = conn / "connectome.yaml"
    if yaml.exists():
        print(f"connectome: reusing {conn}")
        return yaml
    t0 = time.perf_counter()
    load0 = load()
    made = make_synthetic_connectome(conn, webknossos=True, progress=False)
    size = subprocess.run(["du", "-sh", str(conn)], check=False, capture_output=True, text=True).stdout.split()[0]
    print(f"connectome generated in {time.perf_counter() - t0:.0f} s (load {load0} -> {load()}), {size} on disk: {made}")
    return yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conn", type=Path, default=Path("/tmp/bench_connectome/conn"))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: beside --conn)")
    ap.add_argument("--n", type=int, default=200, help="synapses of the throughput runs")
    ap.add_argument("--bf16-n", type=int, default=1, help="cubes of the bfloat16 / float32 extract comparison")
    ap.add_argument("--bf16-cube", type=int, default=32, help="cube size of the bfloat16 / float32 comparison")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32, help="engine_batch_size")
    ap.add_argument("--slow-ms", type=float, default=30.0, help="sleep per chunk read in the slowed runs")
    ap.add_argument("--slow-n", type=int, default=64, help="synapses of the slowed runs")
    ap.add_argument("--slow-batch", type=int, default=8, help="engine_batch_size of the slowed runs (more tasks to overlap)")
    ap.add_argument("--threads", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4])
    ap.add_argument("--fused-n", type=int, default=16, help="synapses of the fused build+extract slowed runs (0: none)")
    ap.add_argument("--fused-threads", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2])
    ap.add_argument("--mem-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1000, 10000])
    ap.add_argument("--mem-extract", action="store_true", help="memory runs extract too (else build only)")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--target", type=int, default=1_000_000)
    ap.add_argument("--gpu-tflops", type=float, default=30.0, help="sustained 3-D conv TFLOP/s per GPU (assumption)")
    ap.add_argument("--gpus-per-node", type=int, default=4)
    ap.add_argument("--node-cores", type=int, default=64)
    ap.add_argument("--build-efficiency", type=float, default=0.8)
    ap.add_argument("--node-gbps", type=float, default=2.5, help="GB/s one node reads (25 GbE ~ 2.5 GB/s)")
    ap.add_argument("--compression-ratio", type=float, default=1.0,
                    help="stored / decoded size of a chunk set (1: reads counted uncompressed)")
    ap.add_argument("--storage-gbps", type=float, default=20.0, help="aggregate GB/s of the shared storage")
    ap.add_argument("--hours", type=float, default=2.0, help="aim: nodes enough to finish in this many hours")
    ap.add_argument("--task-overhead-ms", type=float, default=5.0)
    ap.add_argument("--consolidate-min", type=float, default=10.0)
    ap.add_argument("--skip", default="", help="comma list of throughput,slow,memory,estimate")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in ("distributed", "synapse_nb"):
        logging.getLogger(name).setLevel(logging.ERROR)
    work = args.work or args.conn.parent / "bench_work"
    work.mkdir(parents=True, exist_ok=True)
    if args.memory_child is not None:
        print("MEMORY " + json.dumps(memory_child(args.conn / "connectome.yaml", work, args.memory_child, args)))
        return
    skip = set(filter(None, args.skip.split(",")))
    print(f"machine: {psutil.cpu_count()} cores, load {load()}, python {sys.version.split()[0]}")
    conn_yaml = ensure_connectome(args.conn)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    facts = None
    if "throughput" not in skip:
        t0 = time.perf_counter()
        table, facts = throughput(conn_yaml, work, args)
        facts["n"] = args.n
        (work / "facts.pkl").write_bytes(pickle.dumps(facts))
        print(f"\nTHROUGHPUT (cubes + features, {args.n} synapses, batches of {args.batch}; "
              f"cpu_ours = our process tree / all cores; cpu_machine = whole machine; load 1-min avg; "
              f"{time.perf_counter() - t0:.0f} s)")
        print(table.fillna("").to_string(index=False))
        print(f"  bfloat16 / float32 time on the same {args.bf16_n} cube(s) of {args.bf16_cube}: {facts['bf16_ratio']:.0f}x"
              + ("" if facts["bf16_native"] else " (this CPU has no native bf16: it is emulated; on GPUs and AMX CPUs "
                 "bf16 is the faster one)")
              + f" -> bfloat16 at cube {SETTINGS['cube_size']} here ~ {facts['extract_cpu_s_per_syn'] * facts['bf16_ratio']:.0f} core-s per synapse.")
        print(f"  per synapse (one process): build {facts['build_cpu_s_per_syn']:.2f} core-s, extract "
              f"{facts['extract_cpu_s_per_syn']:.2f} core-s; cube store {facts['cube_bytes_per_syn'] / 1e6:.2f} MB; "
              f"reads {facts['reads']}")
    if facts is None and (work / "facts.pkl").exists():
        facts = pickle.loads((work / "facts.pkl").read_bytes())
    if "slow" not in skip:
        t0 = time.perf_counter()
        table = slow(conn_yaml, work, args)
        print(f"\nSLOWED READS ({args.slow_ms:g} ms per chunk touched, sequential within a read; {args.workers} workers; "
              f"hidden = 1 - added wall / (sleep / workers), 0% when each worker's reads add to its wall, 100% when none does; {time.perf_counter() - t0:.0f} s)")
        print(table.to_string(index=False))
        if facts is not None:
            print(read_model(table, facts, args))
    if "memory" not in skip:
        t0 = time.perf_counter()
        table = memory(conn_yaml, work, args)
        print(f"\nMEMORY (ru_maxrss high-water marks; {'build + extract' if args.mem_extract else 'cube build only'}; "
              f"{args.workers} workers x 1 thread; {time.perf_counter() - t0:.0f} s)")
        print(table.to_string(index=False))
    if "estimate" not in skip:
        if facts is None:
            raise SystemExit("the estimate needs the throughput figures: do not skip throughput")
        cfg = config(conn_yaml, engine_batch_size=args.batch)
        print()
        print(estimate(facts, open_connectome(conn_yaml), cfg, args))


if __name__ == "__main__":
    main()
