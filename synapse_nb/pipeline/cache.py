"""Reuse expensive upstream work (cubes, features) when its inputs are unchanged.

A stage's result is stored under ``<cache_dir>/<stage>/<key>`` where the key is a content
hash of exactly the parameters that decide it plus fingerprints of the data it reads, so a
sweep over segmentation types x alphas builds the cubes once, a rerun with the same
parameters extracts nothing again, and a volume rewritten in place gives a new key. Each run
records what it reused in ``cache.json`` (the proof of a hit, independent of wall time).

Every cached stage goes through :func:`reuse_or_compute`: an entry is written into a
temporary folder (named after the process that owns it) and renamed into place with its
``entry.json`` marker, so an entry either is complete or does not exist. Temporary folders a
crashed process left behind are removed the next time the stage is used.

Fingerprints (:func:`input_fingerprint`) are cheap by design: per file its size, mtime and a
hash of its first, middle and last :data:`SAMPLE_BYTES`; per zarr / N5 store the content of its
metadata files and size + mtime of its chunk files (an evenly spaced sample of
:data:`MAX_CHUNK_STAMPS` of them, plus the chunk count and every folder's mtime, in larger
stores). ``docs/architecture.md`` ("The cache") says what they miss.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from ..core import labels as L
from ..core.atomic import atomic_dir, newest_mtime, pid_alive
from ..core.errors import DataError
from . import artifacts as A

if TYPE_CHECKING:
    from ..core.config import Config
    from .runs import Run

logger = logging.getLogger(__name__)

#: Parameters that decide the cube store (raw + structure bits per synapse).
CUBE_KEYS: tuple[str, ...] = (
    "raw_dir", "seg_dir", "mask_dir", "table_dir", "bboxes", "voxel_size_nm", "label_table",
    "cube_size", "crop_mode", "presynapse_weight", "dataset", "target_voxel_nm", "orient_cubes",
)
#: Parameters that decide the features of given cubes (batch size does not).
EXTRACTION_KEYS: tuple[str, ...] = (
    "segmentation_type", "alpha", "gray_value", "quantize_8bit", "second_minmax", "input_range",
    "intensity_normalization", "weights_path", "extraction_method", "layer_num", "pooling_method",
    "rotation_averaging", "precision", "seed",
)
#: Parameters that decide the features from the data on: the cubes' and the extraction's.
FEATURE_KEYS: tuple[str, ...] = CUBE_KEYS + EXTRACTION_KEYS
#: Parameters that decide self-supervised weights trained on given cubes (02_pretrain): what the
#: network sees (rendering, input range), the weights it starts from, the part of the trunk
#: trained, the seed and the training settings (the device does not).
PRETRAIN_KEYS: tuple[str, ...] = (
    "segmentation_type", "alpha", "gray_value", "quantize_8bit", "second_minmax", "input_range",
    "intensity_normalization", "weights_path", "extraction_method", "layer_num", "seed",
    "pretrain_epochs", "pretrain_batch_size", "pretrain_cube_size", "pretrain_learning_rate",
    "pretrain_temperature", "pretrain_patience", "pretrain_precision",
)
STAGE_KEYS = {"cubes": CUBE_KEYS, "features": FEATURE_KEYS, "pretrain": CUBE_KEYS + PRETRAIN_KEYS}
#: What decides a stage on top of the stored result it reads (``upstream`` of :func:`content_key`).
OWN_KEYS = {"cubes": CUBE_KEYS, "features": EXTRACTION_KEYS, "pretrain": PRETRAIN_KEYS}
#: Keys naming the data a stage reads: with any of them the key holds :func:`input_fingerprint`.
INPUT_KEYS = ("raw_dir", "seg_dir", "mask_dir", "table_dir", "bboxes", "dataset")
ENTRY_MARKER = "entry.json"
#: Version of the entry layout (``<key>/entry/`` + ``entry.json``); other versions are rebuilt.
ENTRY_LAYOUT = 2
#: Version of what a stage's result holds; bumped when the code computing it changes what it
#: writes (cubes 2: morphometric descriptors and orientation columns in the cube table; features
#: 2: intensity normalisation and rotation averaging), so entries of older code are not reused.
RESULT_VERSIONS = {"cubes": 2, "features": 2, "pretrain": 1}
#: Bytes hashed at the start, middle and end of every fingerprinted file (all of a smaller file).
SAMPLE_BYTES = 64 * 1024
#: Chunk files of a zarr / N5 store stamped one by one; larger stores are stamped by a sample.
MAX_CHUNK_STAMPS = 10_000
#: A temporary folder whose owner cannot be checked is stale once nothing in it changed for this long.
STALE_SECONDS = 3600.0
_STORE_METADATA = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata", "attributes.json"})
_TABLE_SUFFIXES = (".xlsx", ".xls", ".csv")
_TEMP_NAME = re.compile(r"^\..+\.(?:tmp|old)-(?:(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-)?[^-]*$")
T = TypeVar("T")


# --------------------------------------------------------------------------- fingerprints
def file_fingerprint(path: str | os.PathLike) -> Any:
    """Size, mtime and a hash of the first, middle and last :data:`SAMPLE_BYTES` of a file
    (of all of it when it is small); None when it does not exist."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return ["unreadable", type(exc).__name__]
    try:
        st = os.fstat(fd)
        size, n = st.st_size, SAMPLE_BYTES
        offsets = (0,) if size <= 3 * n else (0, (size - n) // 2, size - n)
        digest = hashlib.sha256()  # hardware-accelerated on current CPUs, unlike blake2b
        for offset in offsets:
            digest.update(os.pread(fd, size if len(offsets) == 1 else n, offset))
    except OSError as exc:
        return ["unreadable", type(exc).__name__]
    finally:
        os.close(fd)
    return [size, st.st_mtime_ns, digest.hexdigest()[:32]]


def slices_fingerprint(folder: Path) -> Any:
    """Every slice file of a folder (the files :func:`synapse_nb.data.slices.list_slices` reads),
    fingerprinted; None when the folder does not exist."""
    from ..data.slices import SLICE_SUFFIXES

    try:
        with os.scandir(folder) as it:
            names = sorted(e.name for e in it if not e.name.startswith(".") and e.name.lower().endswith(SLICE_SUFFIXES))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return [[name, file_fingerprint(os.path.join(folder, name))] for name in names]


def _walk_store(top: str) -> tuple[list[str], list[str], list[str]]:
    """(metadata files, chunk files, folders) under ``top``, each sorted (plain strings: a
    store may hold millions of chunks)."""
    meta: list[str] = []
    chunks: list[str] = []
    folders: list[str] = [top]
    todo = [top]
    while todo:
        with os.scandir(todo.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                    todo.append(entry.path)
                elif entry.name in _STORE_METADATA:
                    meta.append(entry.path)
                else:
                    chunks.append(entry.path)
    return sorted(meta), sorted(chunks), sorted(folders)


def store_fingerprint(root: Path, key: str | None = None) -> Any:
    """A zarr / N5 store (or, with ``key``, the array or group under it): the content of every
    metadata file (also those of the groups above ``key``) and size + mtime of the chunk files.
    With more than :data:`MAX_CHUNK_STAMPS` chunk files an evenly spaced sample of that many is
    stamped, plus the chunk count and the mtime of every folder (changes when chunks come or go)."""
    if not root.is_dir():
        return None
    top = root / key if key and (root / key).is_dir() else root
    meta, chunks, folders = _walk_store(str(top))
    groups_above = [d for d in top.parents if d == root or root in d.parents] if top != root else []
    meta += [str(d / name) for d in groups_above for name in sorted(_STORE_METADATA) if (d / name).is_file()]
    cut = len(str(root)) + 1

    out: dict[str, Any] = {"metadata": {p[cut:]: _content_hash(p) for p in meta}, "n_chunks": len(chunks)}
    sample = chunks
    if len(chunks) > MAX_CHUNK_STAMPS:
        sample = [chunks[i * len(chunks) // MAX_CHUNK_STAMPS] for i in range(MAX_CHUNK_STAMPS)]
        out["folders"] = [[d[cut:], _mtime(d)] for d in folders]
    out["chunks"] = [[p[cut:], *_size_mtime(p)] for p in sample]
    return out


def _content_hash(p: str) -> str | None:
    try:
        with open(p, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()[:32]
    except OSError:
        return None


def _size_mtime(p: str) -> list[int | None]:
    try:
        st = os.stat(p)
    except OSError:
        return [None, None]
    return [st.st_size, st.st_mtime_ns]


def _mtime(p: str) -> int | None:
    return _size_mtime(p)[1]


def volume_fingerprint(path: Path, key: str | None = None, fmt: str | None = None) -> Any:
    """Fingerprint of one volume in any format :func:`synapse_nb.data.volumes.open_volume` reads."""
    from ..data.volumes import FORMAT_ALIASES, detect_format

    if not path.exists():
        return None
    if path.is_file():  # HDF5, multi-page TIFF: the file stamp and its sampled bytes
        return file_fingerprint(path)
    fmt = (fmt or "").lower()
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if not fmt:
        try:
            fmt = detect_format(path)
        except DataError:
            fmt = "slices"
    if fmt in ("zarr", "n5"):
        return store_fingerprint(path, key)
    return slices_fingerprint(path)


def _seed_inputs(cfg: "Config") -> dict[str, Any]:
    """The seed layout folders and tables of the bboxes 01_load reads."""
    from ..data.seed_layout import discover_bboxes

    try:
        names = list(cfg.bboxes) or (discover_bboxes(cfg.raw_dir) if cfg.raw_dir else [])
    except DataError:  # 01_load names the missing folder
        names = []
    out: dict[str, Any] = {}
    for name in names:
        tables = {s: file_fingerprint(Path(cfg.table_dir) / f"{name}{s}") for s in _TABLE_SUFFIXES}
        out[name] = {
            "raw": slices_fingerprint(Path(cfg.raw_dir) / name),
            "seg": slices_fingerprint(Path(cfg.seg_dir) / name),
            "mask": slices_fingerprint(Path(cfg.mask_dir) / L.mask_folder_name(name)),
            "table": {s: fp for s, fp in tables.items() if fp is not None},
        }
    return {"bboxes": out}


def _description_inputs(cfg: "Config") -> dict[str, Any]:
    """Every volume and table the description names (for the bboxes 01_load reads)."""
    from ..data.description import description_stamp, load_dataset_description

    try:
        desc = load_dataset_description(cfg.dataset)
    except DataError:  # 01_load names the problem; the key still follows the file
        return {"description": description_stamp(cfg.dataset)}
    names = [n for n in (list(cfg.bboxes) or list(desc.spec.bboxes)) if n in desc.spec.bboxes]
    volumes: dict[str, Any] = {}
    tables: dict[str, Any] = {}
    for name in names:
        spec = desc.spec.bboxes[name]
        for src in (spec.raw, spec.seg, spec.mask):
            if src is None:
                continue
            path = desc.resolve(src.path)
            ident = f"{path}::{src.key or ''}::{src.format or ''}"
            if path.is_file():
                ident = str(path)  # one file stamp, whichever array of it is read
            if ident not in volumes:
                volumes[ident] = volume_fingerprint(path, src.key, src.format)
        table = desc.resolve(spec.table)
        tables.setdefault(str(table), file_fingerprint(table))
    return {"description_sha256": desc.text_sha256, "bboxes": names, "volumes": volumes, "tables": tables}


def input_fingerprint(cfg: "Config") -> dict[str, Any]:
    """Fingerprints of every volume and synapse table a cube build with ``cfg`` reads: those a
    dataset description names, else the seed layout folders (only ``cfg.bboxes`` when set)."""
    start = time.perf_counter()
    out = _description_inputs(cfg) if cfg.dataset else _seed_inputs(cfg)
    ms = (time.perf_counter() - start) * 1000
    logger.log(logging.INFO if ms > 1000 else logging.DEBUG, "fingerprinted the input data for the cache key in %.0f ms", ms)
    return out


def stored_identity(folder: str | Path) -> dict[str, Any]:
    """What identifies a stored stage result a run holds: the stage and key of the cache entry
    ``folder`` links to, else a fingerprint of its files."""
    real = Path(folder).resolve()
    marker = _read_marker(real.parent) if real.name == entry_data(real.parent).name else None
    if marker is not None:
        return {"stage": marker["stage"], "key": marker["key"]}
    files = sorted(p for p in real.rglob("*") if p.is_file()) if real.is_dir() else []
    return {"files": [[p.relative_to(real).as_posix(), file_fingerprint(p)] for p in files]}


# --------------------------------------------------------------------------- keys
def content_key(cfg: "Config", keys: Sequence[str], upstream: Any = None, *, version: int | None = None) -> str:
    """Hash of the named parameters, the weights file, fingerprints of the data they name
    (:func:`input_fingerprint`), when given the identity of the stored result the stage reads
    (``upstream``, e.g. the cubes of a run) and the version of the code's result
    (:data:`RESULT_VERSIONS`)."""
    values: dict[str, Any] = {k: getattr(cfg, k) for k in keys}
    if version is not None:
        values["result_version"] = version
    if "weights_path" in keys:
        values["weights_file"] = file_fingerprint(cfg.weights_path) if cfg.weights_path else None
    if any(k in keys for k in INPUT_KEYS):
        values["inputs"] = input_fingerprint(cfg)
    if upstream is not None:
        values["upstream"] = upstream
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def stage_dir(cfg: "Config", stage: str, upstream: Any = None) -> Path | None:
    """Where ``stage``'s result for ``cfg`` lives in the cache (None when caching is off). With
    ``upstream`` (what identifies the stored input the stage reads) only the stage's own
    parameters (:data:`OWN_KEYS`) join it in the key."""
    if not cfg.cache_dir:
        return None
    keys = STAGE_KEYS[stage] if upstream is None else OWN_KEYS[stage]
    return Path(cfg.cache_dir) / stage / content_key(cfg, keys, upstream, version=RESULT_VERSIONS[stage])


def link_into_run(target: Path, link: Path) -> Path:
    """Make ``link`` (inside a run) point at a cache entry, replacing an older link."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.is_file():
        link.unlink()
    rel = os.path.relpath(target.resolve(), link.parent.resolve())
    tmp = link.with_name(f".{link.name}.tmp-link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(rel, target_is_directory=True)
    os.replace(tmp, link)
    return link


# --------------------------------------------------------------------------- entries
def reuse_or_compute(run: "Run", cfg: "Config", stage: str, *, compute: Callable[[], T],
                     store: Callable[[T, Path], object], load: Callable[[Path], T],
                     upstream: Any = None) -> tuple[T, Path | None]:
    """The one cache protocol: load ``stage``'s entry for ``cfg`` if it is complete, else
    ``compute`` and ``store`` it. ``store`` and ``load`` get the folder that holds the result
    (:func:`entry_data`); ``upstream`` identifies a stored input the stage reads
    (:func:`stage_dir`). Returns the result and the entry folder (None when caching is off:
    the caller then keeps the result in the run itself). The hit or miss is recorded."""
    target = stage_dir(cfg, stage, upstream)
    if target is None:
        return compute(), None
    remove_stale_temporaries(target.parent)
    if is_complete(target, stage):
        result = load(entry_data(target))
        record(run, stage, target.name, True)
        return result, target
    if target.exists():
        logger.info("cache entry %s is incomplete or from an older layout: building it again", target)
    result = compute()
    _write_entry(target, stage, lambda folder: store(result, folder))
    record(run, stage, target.name, False)
    return result, target


def entry_data(target: Path) -> Path:
    """The folder inside a cache entry that holds the stored result."""
    return target / "entry"


def _read_marker(target: Path) -> dict[str, Any] | None:
    """The marker of a complete entry of the current layout, else None."""
    try:
        marker = json.loads((target / ENTRY_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("layout") != ENTRY_LAYOUT or marker.get("key") != target.name:
        return None
    return marker if entry_data(target).is_dir() else None


def is_complete(target: Path, stage: str) -> bool:
    """True when ``target`` is a complete entry of ``stage`` written in the current layout."""
    marker = _read_marker(target)
    return marker is not None and marker.get("stage") == stage


def _owner_tag() -> str:
    """``<pid>-<host hash>``: who writes a temporary folder, so a cleaner can tell whether it is alive."""
    host = hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()
    return f"{os.getpid()}-{host}"


def _write_entry(target: Path, stage: str, store: Callable[[Path], object]) -> None:
    """Store into a temporary folder next to ``target`` and rename it into place with its marker.
    An entry another process completed meanwhile is kept (runs may already link to it)."""
    with atomic_dir(target, tag=_owner_tag(), keep_existing=lambda t: is_complete(t, stage)) as tmp:
        store(entry_data(tmp))
        marker = {"layout": ENTRY_LAYOUT, "stage": stage, "key": target.name}
        (tmp / ENTRY_MARKER).write_text(json.dumps(marker), encoding="utf-8")


def is_stale_temporary(path: Path, now: float | None = None) -> bool:
    """True for a temporary folder of a cache stage that nobody will finish: its owner (a
    process of this host) is gone, or, when the owner cannot be checked (another host, or a
    folder without owner), nothing in it changed for :data:`STALE_SECONDS`. A folder of a live
    process of this host is never stale."""
    match = _TEMP_NAME.match(path.name)
    if match is None or not path.is_dir() or path.is_symlink():
        return False
    pid, host = match.group("pid"), match.group("host")
    if pid is not None and host == _owner_tag().split("-", 1)[1]:
        return not pid_alive(int(pid))
    now = time.time() if now is None else now
    try:
        return now - newest_mtime(path) > STALE_SECONDS
    except OSError:
        return False


def remove_stale_temporaries(stage_folder: Path) -> list[Path]:
    """Remove the temporary folders a crashed process left in a cache stage folder."""
    if not stage_folder.is_dir():
        return []
    removed = []
    for path in sorted(stage_folder.iterdir()):
        if path.name.startswith(".") and is_stale_temporary(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.info("removed %d stale temporary folder(s) from the cache %s: %s", len(removed), stage_folder,
                    ", ".join(p.name for p in removed))
    return removed


# --------------------------------------------------------------------------- the run's record
def record(run: "Run", stage: str, key: str | None, hit: bool) -> None:
    """Note in the run whether ``stage`` was reused (``hit``) or computed."""
    data = run.read(A.CACHE_RECORD) if run.has(A.CACHE_RECORD) else {}
    data[stage] = {"key": key, "hit": hit}
    run.write(A.CACHE_RECORD, data)
    logger.info("%s %s (cache key %s)", stage, "reused from cache" if hit else "computed", key)


def read_record(run_path: str | Path) -> dict[str, Any]:
    path = Path(run_path) / A.CACHE_RECORD.path
    return json.loads(path.read_text()) if path.is_file() else {}
