"""The original tool's folder layout (the "seed layout"), opened without reading voxels.

Data prepared for the original tool keeps working unchanged (see the README)::

    <raw_dir>/bbox1/slice_000.tif ...    EM intensities, one 2-D slice per z
    <seg_dir>/bbox1/slice_000.tif ...    neurite instance ids
    <mask_dir>/bbox_1/slice_000.tif ...  extra labels (folder name: core.labels.mask_folder_name)
    <table_dir>/bbox1.xlsx               synapse table (.xls or .csv also accepted)

A missing folder or table, or raw/seg/mask volumes of different sizes, is an error naming the
bbox and what to fix.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from natsort import natsorted

from ..core import labels as L
from ..core.errors import DataError, validate_name
from .bbox import BboxData
from .slices import SLICE_SUFFIXES, SliceStack
from .tables import read_synapse_table


def _check_same_geometry(name: str, volumes: Mapping[str, SliceStack]) -> None:
    shapes = {k: tuple(v.shape) for k, v in volumes.items()}
    if len(set(shapes.values())) > 1:
        detail = ", ".join(f"{k}: {len(volumes[k].files)} slices of {v[1:]} in {volumes[k].folder}" for k, v in shapes.items())
        raise DataError(f"bbox {name}: raw, seg and mask volumes differ ({detail}); fix the slices or drop {name} from bboxes")


def open_seed_bbox(
    name: str,
    raw_dir: str | Path,
    seg_dir: str | Path,
    mask_dir: str | Path,
    table_dir: str | Path,
    label_table: Mapping[str, L.LabelIds] | None = None,
) -> BboxData:
    """Open one bbox of the seed layout without reading its voxels."""
    validate_name(name)
    folders = {
        "raw": Path(raw_dir) / name,
        "seg": Path(seg_dir) / name,
        "mask": Path(mask_dir) / L.mask_folder_name(name),
    }
    for kind, folder in folders.items():
        if not folder.is_dir():
            raise DataError(
                f"bbox {name}: {kind} folder not found: {folder}. Check {kind}_dir in the parameters or remove {name} from bboxes"
            )
    stacks = {k: SliceStack(p, kind="raw" if k == "raw" else "label") for k, p in folders.items()}
    _check_same_geometry(name, stacks)
    table_path = _find_table(Path(table_dir), name)
    table = read_synapse_table(table_path, bbox=name)
    return BboxData(
        name=name,
        raw=stacks["raw"],
        seg=stacks["seg"],
        mask=stacks["mask"],
        table=table,
        label_ids=L.label_ids_for(name, label_table),
        sources={**folders, "table": table_path},
        dataset=str(raw_dir),
    )


def _find_table(table_dir: Path, name: str) -> Path:
    for suffix in (".xlsx", ".xls", ".csv"):
        candidate = table_dir / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    raise DataError(f"bbox {name}: no synapse table {name}.xlsx or {name}.csv in {table_dir}")


def open_seed_dataset(
    bboxes: Sequence[str],
    raw_dir: str | Path,
    seg_dir: str | Path,
    mask_dir: str | Path,
    table_dir: str | Path,
    label_table: Mapping[str, L.LabelIds] | None = None,
) -> list[BboxData]:
    """Open every requested bbox; any bad bbox is an error naming it (the seed dropped it)."""
    if not bboxes:
        raise DataError("no bboxes selected: list at least one in 'bboxes'")
    return [open_seed_bbox(b, raw_dir, seg_dir, mask_dir, table_dir, label_table) for b in bboxes]


def discover_bboxes(raw_dir: str | Path) -> list[str]:
    """Bbox folder names under ``raw_dir`` in natural order; a DataError naming ``raw_dir``
    when it is missing or holds no bbox folder."""
    root = Path(raw_dir)
    if not root.is_dir():
        raise DataError(f"raw_dir not found: {root}" if not root.exists() else f"raw_dir {root} is a file, not a folder")
    names = natsorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if names:
        return names
    layout = f"{root / 'bbox1' / 'slice_000.tif'}, {root / 'bbox2' / 'slice_000.tif'} ..."
    if any(p.is_file() and p.suffix.lower() in SLICE_SUFFIXES for p in root.iterdir()):
        raise DataError(
            f"raw_dir {root} holds slices but no bbox folder: it looks like one bbox folder itself; "
            f"set raw_dir to {root.parent} (the layout is {layout})"
        )
    raise DataError(f"raw_dir {root} holds no bbox folder: put one folder of raw slices per bbox in it ({layout})")
