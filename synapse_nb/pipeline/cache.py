"""Reuse expensive upstream work (cubes, features) when its inputs are unchanged.

A stage's result is stored under ``<cache_dir>/<stage>/<key>`` where the key is a content
hash of exactly the parameters that decide it, so a sweep over segmentation types x alphas
builds the cubes once, and a rerun with the same parameters extracts nothing again. Each run
records what it reused in ``cache.json`` (the proof of a hit, independent of wall time).

Every cached stage goes through :func:`reuse_or_compute`: an entry is written into a
temporary folder and renamed into place with its ``entry.json`` marker, so an entry either
is complete or does not exist.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from ..core import atomic
from . import artifacts as A

if TYPE_CHECKING:
    from ..core.config import Config
    from .runs import Run

logger = logging.getLogger(__name__)

#: Parameters that decide the cube store (raw + structure bits per synapse).
CUBE_KEYS: tuple[str, ...] = (
    "raw_dir", "seg_dir", "mask_dir", "table_dir", "bboxes", "voxel_size_nm", "label_table",
    "cube_size", "crop_mode", "presynapse_weight", "dataset", "target_voxel_nm",
)
#: Parameters that decide the features, on top of the cubes (batch size does not).
FEATURE_KEYS: tuple[str, ...] = CUBE_KEYS + (
    "segmentation_type", "alpha", "gray_value", "quantize_8bit", "second_minmax", "input_range",
    "weights_path", "extraction_method", "layer_num", "pooling_method", "precision", "seed",
)
STAGE_KEYS = {"cubes": CUBE_KEYS, "features": FEATURE_KEYS}
ENTRY_MARKER = "entry.json"
T = TypeVar("T")


def _file_stamp(path: str) -> Any:
    """Size and mtime of a file, so a changed checkpoint or table invalidates the key."""
    p = Path(path)
    if not path or not p.exists():
        return None
    if p.is_file():
        st = p.stat()
        return [st.st_size, st.st_mtime_ns]
    tables = sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else []
    return [[q.name, q.stat().st_size, q.stat().st_mtime_ns] for q in tables]


def content_key(cfg: "Config", keys: Sequence[str]) -> str:
    """Hash of the named parameters (plus the weights file, the synapse tables and the dataset
    description's content and tables as found on disk)."""
    values = {k: getattr(cfg, k) for k in keys}
    if "weights_path" in keys:
        values["weights_file"] = _file_stamp(cfg.weights_path)
    if "table_dir" in keys:
        values["tables"] = _file_stamp(cfg.table_dir)
    if "dataset" in keys and cfg.dataset:
        from ..data.description import description_stamp

        values["dataset_description"] = description_stamp(cfg.dataset)
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def stage_dir(cfg: "Config", stage: str) -> Path | None:
    """Where ``stage``'s result for ``cfg`` lives in the cache (None when caching is off)."""
    if not cfg.cache_dir:
        return None
    return Path(cfg.cache_dir) / stage / content_key(cfg, STAGE_KEYS[stage])


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


def reuse_or_compute(run: "Run", cfg: "Config", stage: str, *, compute: Callable[[], T],
                     store: Callable[[T, Path], object], load: Callable[[Path], T]) -> tuple[T, Path | None]:
    """The one cache protocol: load ``stage``'s entry for ``cfg`` if it is complete, else
    ``compute`` and ``store`` it. ``store`` and ``load`` get the folder that holds the result
    (:func:`entry_data`). Returns the result and the entry folder (None when caching
    is off: the caller then keeps the result in the run itself). The hit or miss is recorded."""
    target = stage_dir(cfg, stage)
    if target is None:
        return compute(), None
    if (target / ENTRY_MARKER).is_file():
        result = load(entry_data(target))
        record(run, stage, target.name, True)
        return result, target
    result = compute()
    with atomic.atomic_dir(target) as tmp:
        store(result, entry_data(tmp))
        (tmp / ENTRY_MARKER).write_text(json.dumps({"stage": stage, "key": target.name}), encoding="utf-8")
    record(run, stage, target.name, False)
    return result, target


def entry_data(target: Path) -> Path:
    """The folder inside a cache entry that holds the stored result."""
    return target / "entry"


def record(run: "Run", stage: str, key: str | None, hit: bool) -> None:
    """Note in the run whether ``stage`` was reused (``hit``) or computed."""
    data = run.read(A.CACHE_RECORD) if run.has(A.CACHE_RECORD) else {}
    data[stage] = {"key": key, "hit": hit}
    run.write(A.CACHE_RECORD, data)
    logger.info("%s %s (cache key %s)", stage, "reused from cache" if hit else "computed", key)


def read_record(run_path: str | Path) -> dict[str, Any]:
    path = Path(run_path) / A.CACHE_RECORD.path
    return json.loads(path.read_text()) if path.is_file() else {}
