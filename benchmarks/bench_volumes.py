"""Benchmark cube building from a large chunked volume: windowed reads vs loading it whole.

    python benchmarks/bench_volumes.py [--workdir benchmarks/out/bench_volumes] [--size 1024] [--synapses 100]

Writes once (reused when the parameters match) a zarr group with ``raw`` (size^3 uint8 noise,
incompressible: ~1 GB on disk at 1024^3), ``seg`` (uint32 neurite columns) and ``mask``
(uint8 clefts and vesicle clouds), a CSV of synapses and two dataset descriptions (8 nm
isotropic, and 10 x 8 x 8 nm so every cube is resampled to 8 nm). Then, in a fresh
subprocess per variant, it opens the description and builds 80^3 cubes for every synapse:

* ``windowed``            lazy reads of the windows around each synapse (synapse_nb.data.volumes),
* ``windowed+resampled``  the same, resampling each window from 10 x 8 x 8 nm to 8 nm,
* ``whole``               every volume read into memory first, then the same cube building
                          (what the seed did with its TIFF stacks).

Reported per variant: time to open (and load), time to build, peak RSS (VmHWM) and voxels
the readers returned (``Volume.voxels_read``; zarr decodes the whole 64^3 chunks a window
touches, so the bytes decoded are somewhat more for the windowed variants).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

CELL = 128  # neurite column pitch (y and x)
IDS = {"mito": 0, "vesicle": 2, "cleft": 1, "cleft2": 1}
VARIANTS = ("windowed", "windowed+resampled", "whole")


def _synapses(n: int, size: int, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    ncell = size // CELL
    for i in range(n):
        z = int(rng.integers(0, size))
        y = int(rng.integers(0, ncell)) * CELL + CELL // 2 + int(rng.integers(-30, 31))
        x = int(rng.integers(1, ncell)) * CELL  # on a column boundary: pre at x-1, post at x
        rows.append({"Var1": f"syn{i:03d}", "central_coord_1": x, "central_coord_2": y, "central_coord_3": z,
                     "side_1_coord_1": x - 20, "side_1_coord_2": y, "side_1_coord_3": z,
                     "side_2_coord_1": x + 20, "side_2_coord_2": y, "side_2_coord_3": z})
    return pd.DataFrame(rows)


def ensure_data(root: Path, size: int, n_syn: int) -> Path:
    import zarr

    from synapse_nb.core.progress_bars import progress

    marker = root / "meta.json"
    want = {"size": size, "synapses": n_syn, "version": 1}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return root
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    g = zarr.open_group(str(root / "vol.zarr"), mode="w")
    chunks = (64, 64, 64)
    raw = g.create_array("raw", shape=(size,) * 3, chunks=chunks, dtype=np.uint8)
    seg = g.create_array("seg", shape=(size,) * 3, chunks=chunks, dtype=np.uint32)
    mask = g.create_array("mask", shape=(size,) * 3, chunks=chunks, dtype=np.uint8, fill_value=0)
    y, x = np.indices((size, size))
    cols = (1 + (y // CELL) * (size // CELL + 1) + x // CELL).astype(np.uint32)
    slab = 64
    with progress(total=size, desc="writing volume", unit="slice") as bar:
        for z0 in range(0, size, slab):
            z1 = min(size, z0 + slab)
            raw[z0:z1] = rng.integers(0, 256, (z1 - z0, size, size), dtype=np.uint8)
            seg[z0:z1] = np.broadcast_to(cols, (z1 - z0, size, size))
            bar.update(z1 - z0)
    table = _synapses(n_syn, size, rng)
    for r in table.itertuples():  # a cleft disk on the boundary and a vesicle ball on the pre side
        c = np.array([r.central_coord_3, r.central_coord_2, r.central_coord_1])
        lo = np.maximum(c - 24, 0)
        hi = np.minimum(c + 25, size)
        win = np.asarray(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
        zz, yy, xx = np.indices(win.shape) + lo[:, None, None, None]
        win[((zz - c[0]) ** 2 + (yy - c[1]) ** 2 <= 15**2) & (np.abs(xx - c[2] + 0.5) <= 1)] = IDS["cleft"]
        win[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2] + 12) ** 2 <= 9**2] = IDS["vesicle"]
        mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = win
    table.to_csv(root / "synapses.csv", index=False)
    for name, voxel in (("iso.yaml", [8.0, 8.0, 8.0]), ("aniso.yaml", [10.0, 8.0, 8.0])):
        desc = {
            "name": f"bench_{size}",
            "voxel_size_nm": voxel,
            "bboxes": {"big": {
                "raw": {"path": "vol.zarr", "key": "raw"},
                "seg": {"path": "vol.zarr", "key": "seg"},
                "mask": {"path": "vol.zarr", "key": "mask"},
                "table": "synapses.csv",
                "labels": IDS,
            }},
        }
        (root / name).write_text(yaml.safe_dump(desc, sort_keys=False))
    marker.write_text(json.dumps(want))
    return root


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(root: Path, variant: str) -> dict:
    """One variant in this (fresh) process; prints a JSON line."""
    from synapse_nb.cubes.build import build_cubes
    from synapse_nb.cubes.geometry import CubeGeometry
    from synapse_nb.data.description import open_dataset_description

    t0 = time.perf_counter()
    [b] = open_dataset_description(root / ("aniso.yaml" if "resampled" in variant else "iso.yaml"))
    vols = {k: getattr(b, k) for k in ("raw", "seg", "mask")}
    if variant == "whole":
        b.raw, b.seg, b.mask = (np.asarray(v) for v in vols.values())
    t1 = time.perf_counter()
    cs = build_cubes([b], CubeGeometry(size=80), progress=False, target_voxel_nm=8.0)
    t2 = time.perf_counter()
    return {
        "variant": variant,
        "open_load_s": round(t1 - t0, 2),
        "build_s": round(t2 - t1, 2),
        "ms_per_synapse": round(1000 * (t2 - t1) / max(1, len(b.table)), 1),
        "cubes": len(cs),
        "skipped": len(cs.skipped),
        "peak_rss_mb": round(_vm_hwm_mb(), 0),
        "voxels_read_M": round(sum(v.voxels_read for v in vols.values()) / 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=str(Path(__file__).resolve().parent / "out" / "bench_volumes"))
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--synapses", type=int, default=100)
    ap.add_argument("--child", choices=VARIANTS)
    args = ap.parse_args()
    root = Path(args.workdir)
    if args.child:
        print(json.dumps(child(root, args.child)))
        return
    t = time.perf_counter()
    ensure_data(root, args.size, args.synapses)
    print(f"data: {root} ({_du(root / 'vol.zarr') / 1e9:.2f} GB on disk, {args.size}^3, {args.synapses} synapses; "
          f"ready in {time.perf_counter() - t:.0f} s)")
    rows = []
    for variant in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--workdir", str(root), "--child", variant],
                             check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
