"""The in-memory description of one bounding box (:class:`BboxData`).

Every reader returns bboxes in this one shape, so cube building, feature extraction and the
reports never need to know where the data came from. ``raw``, ``seg`` and ``mask`` are
volumes: any array-like with ``.shape``, ``.dtype`` and numpy basic slicing
(``vol[z0:z1, y0:y1, x0:x1]``), such as numpy arrays, memory maps, h5py and zarr datasets,
:class:`~synapse_nb.data.slices.SliceStack` or :class:`~synapse_nb.data.volumes.Volume`. Cube
building only ever slices the window it needs, so a bbox is never loaded whole.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..core import labels as L
from .tables import has_side_points


@dataclass
class BboxData:
    """One bbox: lazy raw / segmentation / extra-label volumes plus its synapse table."""

    name: str
    raw: object
    seg: object | None  # None: the dataset has no neurite segmentation
    mask: object | None  # None: the dataset has no extra-label volume
    table: pd.DataFrame
    label_ids: L.LabelIds
    sources: dict[str, Path] = field(default_factory=dict)
    voxel_size_nm: tuple[float, float, float] | None = None  # z, y, x; None = the configuration's
    dataset: str = ""  # the dataset's name, for messages and reports
    #: rows of a connectome's synapse table that cannot be used (position outside the volume,
    #: unknown ids), with the reason; None for bbox datasets, whose tables are checked per synapse
    rejected: pd.DataFrame | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.raw.shape)  # type: ignore[attr-defined]

    def capabilities(self) -> L.DataCapabilities:
        """What this bbox can serve (see :func:`synapse_nb.core.labels.missing_for_type`)."""
        return L.DataCapabilities(
            label_ids=self.label_ids,
            has_seg=self.seg is not None,
            has_mask=self.mask is not None,
            has_sides=has_side_points(self.table),
        )
