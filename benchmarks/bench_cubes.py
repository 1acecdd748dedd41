"""Benchmark cube building on seed-sized bboxes (575^3, TIFF slices in the seed layout).

    python benchmarks/bench_cubes.py [--bboxes 7] [--workdir DIR] [--size 575] [--synapses 20]

Generates synthetic bboxes once (reused when the parameters match), then reports
* build_synapse time per synapse (cold = first touch of the slices, warm = second pass),
  for the cleft crop and the smart (presynapse) crop,
* render() time per segmentation type (one cube, and per cube inside a batch of 16),
* peak RSS of build_cubes over all synapses of all bboxes, measured in a fresh subprocess.
Target: < 40 ms per synapse, peak RSS < 1.5 GB for 7 bboxes.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from synapse_nb.core import labels as L
from synapse_nb.cubes.build import build_cubes, build_synapse
from synapse_nb.cubes.geometry import CubeGeometry
from synapse_nb.cubes.rendering import RenderSettings, render
from synapse_nb.data.seed_layout import open_seed_bbox

CELL = 48  # neurite grid pitch


# --------------------------------------------------------------------------------------
# synthetic data (vectorised per slice; memory stays at a few slices)
# --------------------------------------------------------------------------------------
def _wobble(z: np.ndarray | int, y: np.ndarray) -> np.ndarray:
    return np.round(4 * np.sin(y / 23.0 + np.asarray(z) / 31.0)).astype(np.int64)


def _synapses(n: int, size: int, rng: np.random.Generator) -> list[dict]:
    out = []
    ncell = size // CELL
    for i in range(n):
        if i < 4:  # a few near the borders, to exercise padding
            z = [6, size - 7, rng.integers(60, size - 60), rng.integers(60, size - 60)][i]
            y = [rng.integers(60, size - 60), rng.integers(60, size - 60), 5, size - 6][i]
        else:
            z = int(rng.integers(30, size - 30))
            y = int(rng.integers(30, size - 30))
        # keep away from y / z membranes so both sides are inside neurites
        z = int(z - (z % CELL) + CELL // 2 + rng.integers(-10, 11)) if 20 < z < size - 20 else int(z)
        y = int(y - (y % CELL) + CELL // 2 + rng.integers(-10, 11)) if 20 < y < size - 20 else int(y)
        k = int(rng.integers(1, ncell))
        x = int(k * CELL - _wobble(z, np.array([y]))[0])  # on the membrane
        pre_dir = -1 if rng.random() < 0.5 else 1
        out.append({"z": z, "y": y, "x": x, "pre_dir": pre_dir, "cls": int(rng.integers(0, 3))})
    return out


def _objects(syn: list[dict], ids: L.LabelIds) -> list[tuple]:
    """(kind, label, centre zyx, radius) balls plus cleft disks."""
    objs = []
    for s in syn:
        c = np.array([s["z"], s["y"], s["x"]])
        d = s["pre_dir"]
        objs.append(("cleft", c, 8 + s["cls"] * 2))
        objs.append(("ball", ids.vesicle, c + [0, 0, d * 14], 9 + s["cls"]))
        objs.append(("ball", ids.vesicle, c + [25, 10, d * 20], 6))  # farther vesicle cloud
        objs.append(("ball", ids.mito, c + [0, 16, d * 16], 6))
        objs.append(("ball", ids.mito, c + [-12, -14, -d * 18], 7))
    return objs


def generate_bbox(root: Path, name: str, size: int, n_syn: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = L.label_ids_for(name)
    dirs = {k: root / k / (L.mask_folder_name(name) if k == "mask" else name) for k in ("raw", "seg", "mask")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    syn = _synapses(n_syn, size, rng)
    objs = _objects(syn, ids)
    yy, xx = np.mgrid[0:size, 0:size]
    for z in range(size):
        xw = xx + _wobble(z, yy)
        cz, cy, cx = z // CELL, yy // CELL, np.clip(xw, 0, size - 1) // CELL
        seg = (1 + cz * 144 + cy * 12 + cx).astype(np.uint16)
        membrane = (xw % CELL == 0) | (yy % CELL == 0) | (z % CELL == 0)
        seg[membrane] = 0
        mask = np.zeros((size, size), np.uint8)
        for obj in objs:
            if obj[0] == "cleft":
                _, c, r = obj
                if abs(z - c[0]) > r:
                    continue
                y0, y1 = max(c[1] - r, 0), min(c[1] + r + 1, size)
                x0, x1 = max(c[2] - 6, 0), min(c[2] + 7, size)
                sy, sx = yy[y0:y1, x0:x1], xw[y0:y1, x0:x1]
                xb = c[2] + _wobble(c[0], np.array([c[1]]))[0]  # membrane position in xw
                disk = ((sy - c[1]) ** 2 + (z - c[0]) ** 2 <= r * r) & (np.abs(sx - xb) <= 1)
                lab = np.where(sy > c[1] + r // 2, ids.cleft2, ids.cleft)
                mask[y0:y1, x0:x1][disk] = lab[disk]
            else:
                _, lab, c, r = obj
                dz = z - c[0]
                if abs(dz) > r:
                    continue
                rr = int(np.sqrt(r * r - dz * dz))
                y0, y1 = max(c[1] - rr, 0), min(c[1] + rr + 1, size)
                x0, x1 = max(c[2] - rr, 0), min(c[2] + rr + 1, size)
                if y0 >= y1 or x0 >= x1:
                    continue
                ball = (yy[y0:y1, x0:x1] - c[1]) ** 2 + (xx[y0:y1, x0:x1] - c[2]) ** 2 <= rr * rr
                mask[y0:y1, x0:x1][ball] = lab
        noise = rng.integers(-25, 26, (size, size), dtype=np.int16)
        raw = np.full((size, size), 165, np.int16) + noise
        raw[membrane] -= 90
        raw[mask == ids.vesicle] -= 45 * (rng.random(int((mask == ids.vesicle).sum())) < 0.4)
        raw[mask == ids.mito] -= 50
        raw[(mask == ids.cleft) | (mask == ids.cleft2)] -= 100
        raw = np.clip(raw, 0, 255).astype(np.uint8)
        fname = f"slice_{z:03d}.tif"
        tifffile.imwrite(dirs["raw"] / fname, raw)
        tifffile.imwrite(dirs["seg"] / fname, seg)
        tifffile.imwrite(dirs["mask"] / fname, mask)
    rows = []
    for i, s in enumerate(syn):
        d = s["pre_dir"]
        # side points 6 voxels into each neurite; side 1 = pre for even i, post for odd i
        pre = (s["x"] + d * 6, s["y"], s["z"])
        post = (s["x"] - d * 6, s["y"], s["z"])
        s1, s2 = (pre, post) if i % 2 == 0 else (post, pre)
        rows.append(
            {
                L.NAME_COLUMN: f"{name}_syn{i:02d}",
                **dict(zip(L.CENTER_COLUMNS, (s["x"], s["y"], s["z"]))),
                **dict(zip(L.SIDE1_COLUMNS, s1)),
                **dict(zip(L.SIDE2_COLUMNS, s2)),
                L.DEMO_CLASS_COLUMN: s["cls"],
            }
        )
    (root / "tables").mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "tables" / f"{name}.csv", index=False)


def ensure_data(root: Path, n_bboxes: int, size: int, n_syn: int) -> list[str]:
    names = [f"bbox{i}" for i in range(1, n_bboxes + 1)]
    for i, name in enumerate(names):
        marker = root / f".done_{name}.json"
        params = {"size": size, "synapses": n_syn, "seed": i, "version": 2}
        if marker.is_file() and json.loads(marker.read_text()) == params:
            continue
        t = time.perf_counter()
        generate_bbox(root, name, size, n_syn, seed=i)
        marker.write_text(json.dumps(params))
        print(f"generated {name} ({size}^3) in {time.perf_counter() - t:.1f} s", flush=True)
    return names


def open_all(root: Path, names: list[str]):
    return [open_seed_bbox(n, root / "raw", root / "seg", root / "mask", root / "tables") for n in names]


# --------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------
def _stats(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"mean {a.mean():6.1f}  median {np.median(a):6.1f}  p95 {np.percentile(a, 95):6.1f}  max {a.max():6.1f}"


def _records_in_z_order(b) -> list[dict]:
    recs = b.table.to_dict("records")
    return sorted(recs, key=lambda r: r[L.CENTER_COLUMNS[2]])  # the order build_cubes visits


def _build_all(bbs, geometry: CubeGeometry, keep: list | None = None) -> tuple[list[float], int]:
    times, failures = [], 0
    for b in bbs:
        for rec in _records_in_z_order(b):
            t = time.perf_counter()
            try:
                c = build_synapse(
                    b.raw, b.seg, b.mask,
                    [rec[k] for k in L.CENTER_COLUMNS], [rec[k] for k in L.SIDE1_COLUMNS],
                    [rec[k] for k in L.SIDE2_COLUMNS], b.label_ids, geometry,
                    bbox=b.name, synapse=rec[L.NAME_COLUMN], table_row=rec["table_row"],
                )
            except Exception as exc:  # noqa: BLE001 - report and go on
                failures += 1
                print("  failed:", exc)
                continue
            times.append((time.perf_counter() - t) * 1000)
            if keep is not None and len(keep) < 32:
                keep.append(c)
    return times, failures


def time_builds(root: Path, names: list[str], geometry: CubeGeometry, keep: list | None = None) -> dict:
    """Through the lazy slice reader: first pass (slices opened) and second pass."""
    bbs = open_all(root, names)  # fresh readers: empty slice caches
    return {"lazy, 1st pass": _build_all(bbs, geometry), "lazy, 2nd pass": _build_all(bbs, geometry, keep)}


def time_builds_in_ram(root: Path, name: str, geometry: CubeGeometry) -> tuple[list[float], int]:
    """Compute only: one bbox's volumes loaded into RAM as numpy arrays."""
    b = open_all(root, [name])[0]
    b.raw, b.seg, b.mask = np.asarray(b.raw), np.asarray(b.seg), np.asarray(b.mask)
    _build_all([b], geometry)  # warm-up
    out = _build_all([b], geometry)
    del b
    return out


def time_slice_open(root: Path, name: str, n: int = 50) -> float:
    """ms to open one TIFF slice in the reader (io.SliceStack, tifffile.memmap)."""
    b = open_all(root, [name])[0]
    t = time.perf_counter()
    for z in range(n):
        b.seg[z, 0:1, 0:1]
    return (time.perf_counter() - t) * 1000 / n


def time_render(cubes) -> dict[int, tuple[float, float]]:
    raw = np.stack([c.raw for c in cubes[:16]])
    bits = np.stack([c.bits for c in cubes[:16]])
    out = {}
    for t in sorted(L.SEGMENTATION_TYPES):
        one = []
        for c in cubes:
            s = time.perf_counter()
            render(c.raw, c.bits, RenderSettings(t, alpha=1.0))
            one.append((time.perf_counter() - s) * 1000)
        s = time.perf_counter()
        reps = 3
        for _ in range(reps):
            render(raw, bits, RenderSettings(t, alpha=0.5))
        batch = (time.perf_counter() - s) * 1000 / reps / len(raw)
        out[t] = (float(np.median(one)), batch)
    return out


def _vm_hwm_kb() -> int:
    """Peak RSS of this process image. /proc VmHWM restarts at exec; ru_maxrss does not
    (it would report the parent's size at fork), so prefer VmHWM where it exists."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_child(root: Path, names: list[str], crop_mode: str) -> None:
    """Runs in a fresh process: build all cubes, print peak RSS as JSON."""
    import psutil

    t = time.perf_counter()
    bbs = open_all(root, names)
    cs = build_cubes(bbs, CubeGeometry(crop_mode=crop_mode), progress=False)
    elapsed = time.perf_counter() - t
    peak_kb = _vm_hwm_kb()
    print(
        json.dumps(
            {
                "n_built": len(cs),
                "n_skipped": len(cs.skipped),
                "ambiguous": int(cs.table["ambiguous"].sum()),
                "seconds": elapsed,
                "peak_rss_mb": peak_kb / 1024,
                "final_rss_mb": psutil.Process().memory_info().rss / 2**20,
                "cubeset_mb": (cs.raw.nbytes + cs.bits.nbytes) / 2**20,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bboxes", type=int, default=7)
    ap.add_argument("--size", type=int, default=575)
    ap.add_argument("--synapses", type=int, default=20, help="synapses per bbox")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "synapse_nb_bench_cubes")
    ap.add_argument("--rss-child", choices=["cleft", "presynapse"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    root = args.workdir
    root.mkdir(parents=True, exist_ok=True)
    names = [f"bbox{i}" for i in range(1, args.bboxes + 1)]
    if args.rss_child:
        rss_child(root, names, args.rss_child)
        return
    names = ensure_data(root, args.bboxes, args.size, args.synapses)
    n_syn = args.bboxes * args.synapses
    print(f"\n{args.bboxes} bboxes of {args.size}^3, {n_syn} synapses, data in {root}")
    print("(OS page cache warm: the files were just written or read; '1st pass' = a fresh reader opens the slices)\n")
    print("peak RSS of build_cubes over all synapses of all bboxes (fresh process, VmHWM):")
    for mode in ("cleft", "presynapse"):
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", mode, "--bboxes", str(args.bboxes), "--workdir", str(root)],
            capture_output=True, text=True, check=True,
        )
        res = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"  {mode:10s} peak RSS {res['peak_rss_mb']:7.0f} MB  (end {res['final_rss_mb']:.0f} MB, cube set {res['cubeset_mb']:.0f} MB)"
            f"  built {res['n_built']}, skipped {res['n_skipped']}, ambiguous {res['ambiguous']}, "
            f"{res['seconds']:.1f} s total = {1000 * res['seconds'] / max(res['n_built'], 1):.1f} ms/synapse"
        )

    print("\nbuild_synapse, ms per synapse (S=80), synapses visited in z order like build_cubes:")
    cubes: list = []
    for mode in ("cleft", "presynapse"):
        geo = CubeGeometry(crop_mode=mode)
        for label, (times, failures) in time_builds(root, names, geo, keep=cubes).items():
            print(f"  {mode:10s} {label:18s} {_stats(times)}  (n={len(times)}, failed {failures})")
        times, failures = time_builds_in_ram(root, names[0], geo)
        print(f"  {mode:10s} {'compute (in RAM)':18s} {_stats(times)}  (n={len(times)}, {names[0]} only)")
    print(f"  opening one TIFF slice in io.SliceStack: {time_slice_open(root, names[0]):.2f} ms")
    print("\nrender(), ms per cube (type: one cube alpha=1 | per cube in a batch of 16, alpha=0.5):")
    for t, (one, batch) in time_render(cubes).items():
        print(f"  type {t:2d}  {one:6.2f} | {batch:6.2f}   {L.SEGMENTATION_TYPES[t]}")


if __name__ == "__main__":
    main()
