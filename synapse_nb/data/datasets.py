"""The one entry that opens whatever the parameters name, and a summary of what it opened.

:func:`open_dataset` reads a dataset description YAML when the parameters set ``dataset``
(:mod:`synapse_nb.data.description`) and the original tool's folder layout otherwise
(:mod:`synapse_nb.data.seed_layout`), so the pipeline and the notebooks need not care which.
:func:`dataset_summary` lists the opened bboxes, one row each, for display.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import pandas as pd

from .bbox import BboxData
from .seed_layout import discover_bboxes, open_seed_dataset
from .slices import SliceStack

if TYPE_CHECKING:
    from ..core.config import Config

logger = logging.getLogger(__name__)


def open_dataset(cfg: "Config") -> list[BboxData]:
    """Open the bboxes a configuration names.

    With ``cfg.connectome`` set, the connectome description (:mod:`synapse_nb.data.connectome`)
    is opened as one bbox holding the whole synapse table (lazy layers; a run then samples from
    it). With ``cfg.dataset`` set, the dataset description YAML (:mod:`synapse_nb.data.description`) says
    where the volumes and tables are, and its voxel size and label ids win over
    ``voxel_size_nm`` / ``label_table``. Otherwise the seed layout under ``raw_dir`` ...
    is read (all bboxes under ``raw_dir`` when none are named).
    """
    if getattr(cfg, "connectome", ""):
        from .connectome import open_connectome

        connectome = open_connectome(cfg.connectome)
        logger.info(
            "connectome %s: %d usable synapses (%d rejected); its voxel size %s nm and layers are used; dataset, "
            "raw_dir, seg_dir, mask_dir, table_dir, bboxes, voxel_size_nm and label_table are ignored",
            cfg.connectome, len(connectome.table), len(connectome.rejected), list(connectome.voxel_size_nm),
        )
        bbox = connectome.as_bbox()
        bbox.rejected = connectome.rejected
        return [bbox]
    if cfg.dataset:
        from .description import open_dataset_description

        bboxes = open_dataset_description(cfg.dataset, list(cfg.bboxes) or None)
        logger.info(
            "dataset description %s: its voxel size %s nm and label ids are used; voxel_size_nm, label_table, "
            "raw_dir, seg_dir, mask_dir and table_dir in the parameters are ignored",
            cfg.dataset,
            list(bboxes[0].voxel_size_nm or ()),
        )
        return bboxes
    names = list(cfg.bboxes) or discover_bboxes(cfg.raw_dir)
    return open_seed_dataset(names, cfg.raw_dir, cfg.seg_dir, cfg.mask_dir, cfg.table_dir, cfg.label_ids())


def _source_text(b: BboxData) -> str:
    raw = b.raw
    fmt = getattr(raw, "fmt", "slices" if isinstance(raw, SliceStack) else type(raw).__name__)
    where = b.sources.get("raw", getattr(raw, "path", getattr(raw, "folder", "")))
    key = getattr(raw, "key", None)
    return f"{fmt}: {where}" + (f" [{key}]" if key else "")


def dataset_summary(bboxes: Sequence[BboxData], voxel_size_nm: Sequence[float] | None = None) -> pd.DataFrame:
    """One row per bbox: source, shape, voxel size, synapse count, label ids, seg/mask presence."""
    rows = []
    for b in bboxes:
        vox = b.voxel_size_nm or (tuple(voxel_size_nm) if voxel_size_nm is not None else None)
        rows.append(
            {
                "bbox": b.name,
                "source": _source_text(b),
                "shape (z, y, x)": "x".join(str(s) for s in b.shape),
                "voxel (z, y, x) nm": ", ".join(f"{float(v):g}" for v in vox) if vox else "",
                "synapses": len(b.table),
                **{f"{k} id": v for k, v in b.label_ids.as_dict().items()},
                "seg": b.seg is not None,
                "mask": b.mask is not None,
            }
        )
    return pd.DataFrame(rows)
