"""The cube store: every cube of a dataset kept as two arrays and a table, on disk and back.

A :class:`CubeSet` holds the raw and structure-bit cubes of all built synapses, one table row
each (what was decided and measured) and the synapses that were skipped. It renders lazily for
any segmentation type and alpha, and saves/loads atomically, memory-mapping the cubes on load.
What a cube holds is explained in ``docs/cubes.md``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import labels as L
from ..core.atomic import atomic_dir
from ..core.errors import DataError
from .geometry import CubeGeometry
from .rendering import (
    RenderedView,
    RenderSettings,
    check_segmentation_type,
    segmentation_mask,
)

CUBESET_FORMAT = 1


@dataclass
class CubeSet:
    """All synapse cubes of a dataset plus one table row per built synapse."""

    raw: np.ndarray  # (N,S,S,S) native dtype
    bits: np.ndarray  # (N,S,S,S) uint8
    table: pd.DataFrame  # one row per built synapse (input columns, info, morphometrics)
    skipped: pd.DataFrame  # bbox, Var1, table_row, reason
    geometry: CubeGeometry = CubeGeometry()
    voxel_size_nm: tuple[float, float, float] = (8.0, 8.0, 8.0)  # z, y, x
    #: segmentation type -> why the dataset cannot serve it (kept with the cubes, so a later
    #: step asked for such a type refuses it as 01_load did)
    refused_types: dict[int, str] = field(default_factory=dict)

    def require_type(self, segmentation_type: int) -> None:
        """Raise a :class:`DataError` when the cubes' dataset cannot serve this type."""
        t = int(segmentation_type)
        if t in self.refused_types:
            ok = ", ".join(str(s) for s in L.SEGMENTATION_TYPES if s not in self.refused_types)
            raise DataError(
                f"segmentation type {t} ({L.SEGMENTATION_TYPE_SHORT[t]}) {self.refused_types[t]}. "
                f"Types these cubes support: {ok}"
            )

    def __post_init__(self) -> None:
        n = len(self.table)
        S = self.geometry.size
        if self.raw.shape != (n, S, S, S) or self.bits.shape != (n, S, S, S):
            raise ValueError(
                f"CubeSet arrays {self.raw.shape} / {self.bits.shape} do not match {n} table rows of {S}^3 cubes"
            )

    def __len__(self) -> int:
        return len(self.table)

    def rendered(self, settings: RenderSettings, indices: Sequence[int] | np.ndarray | None = None) -> RenderedView:
        """Lazy view of the rendered cubes (optionally a row subset)."""
        return RenderedView(self, None if indices is None else np.asarray(indices), settings)

    def empty_mask_rows(self, segmentation_type: int, batch_size: int = 64) -> np.ndarray:
        """Row indices whose mask is empty for this type (steps report and skip them)."""
        t = check_segmentation_type(segmentation_type)
        if t == 0 or len(self) == 0:
            return np.zeros(0, dtype=np.int64)
        empty = []
        for start in range(0, len(self), batch_size):
            bits = np.asarray(self.bits[start : start + batch_size])
            if t == 11:
                has = segmentation_mask(bits, t).any(axis=(1, 2, 3))
            else:
                has = ((bits & np.uint8(L.SEGTYPE_BITS[t])) != 0).any(axis=(1, 2, 3))
            empty.append(np.flatnonzero(~has) + start)
        return np.concatenate(empty).astype(np.int64)

    def empty_mask_report(self, segmentation_type: int) -> pd.DataFrame:
        """The synapses an empty mask excludes for this type, with a reason (for the run log)."""
        rows = self.empty_mask_rows(segmentation_type)
        cols = [c for c in (L.BBOX_COLUMN, L.NAME_COLUMN, "table_row") if c in self.table]
        out = self.table.iloc[rows][cols].reset_index(drop=True)
        out["reason"] = (
            f"empty mask for segmentation type {int(segmentation_type)} "
            f"({L.SEGMENTATION_TYPES[int(segmentation_type)]}): that structure is absent from the cube"
        )
        return out

    # --- persistence -----------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write raw.npy, bits.npy, table.parquet, skipped.parquet and meta.json.

        Everything is written into a temporary sibling folder first and then renamed into
        place, so a crash never leaves a mix of old and new files; a previous version is kept
        under a ``.old-*`` name until the new one is in place.
        """
        folder = Path(folder)
        if folder.exists() and not (folder / "meta.json").is_file() and (not folder.is_dir() or any(folder.iterdir())):
            raise DataError(
                f"refusing to overwrite {folder}: it exists and is not a saved cube set; choose another folder"
            )
        with atomic_dir(folder) as tmp:
            with open(tmp / "raw.npy", "wb") as f:
                np.save(f, np.asarray(self.raw))
            with open(tmp / "bits.npy", "wb") as f:
                np.save(f, np.asarray(self.bits))
            self.table.reset_index(drop=True).to_parquet(tmp / "table.parquet", index=False)
            self.skipped.reset_index(drop=True).to_parquet(tmp / "skipped.parquet", index=False)
            meta = {
                "format": CUBESET_FORMAT,
                "n": len(self),
                "geometry": self.geometry.as_dict(),
                "voxel_size_nm": [float(v) for v in self.voxel_size_nm],
                "raw_dtype": str(np.asarray(self.raw[:0]).dtype),
                "refused_types": {str(k): v for k, v in self.refused_types.items()},
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, mmap: bool = True) -> "CubeSet":
        """Load a saved CubeSet; the cube arrays are memory-mapped read-only by default."""
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"no cube set in {folder}: meta.json is missing; rebuild the cubes")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != CUBESET_FORMAT:
            raise DataError(f"cube set {folder} has format {meta.get('format')!r}; rebuild the cubes")
        mode = "r" if mmap else None
        try:
            raw = np.load(folder / "raw.npy", mmap_mode=mode)
            bits = np.load(folder / "bits.npy", mmap_mode=mode)
            table = pd.read_parquet(folder / "table.parquet")
            skipped = pd.read_parquet(folder / "skipped.parquet")
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read cube set {folder}: {exc}; rebuild the cubes") from exc
        try:
            return cls(
                raw=raw,
                bits=bits,
                table=table,
                skipped=skipped,
                geometry=CubeGeometry(**meta["geometry"]),
                voxel_size_nm=tuple(float(v) for v in meta["voxel_size_nm"]),
                refused_types={int(k): v for k, v in meta.get("refused_types", {}).items()},
            )
        except ValueError as exc:
            raise DataError(f"cube set {folder} is inconsistent: {exc}; rebuild the cubes") from exc
