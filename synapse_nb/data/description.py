"""Dataset description YAML: where a real dataset's volumes and tables are.

The seed layout (folders of slices per bbox) is one way to hold data; real datasets come
as HDF5, zarr, N5 or TIFF files with a CSV table and their own voxel size. A description
says all of that in one small file (``parameters/dataset_example.yaml``)::

    name: vnc_stack1                      # optional, for reports (default: the file's stem)
    voxel_size_nm: [50.0, 4.6, 4.6]       # z, y, x (required)
    columns:                              # optional; defaults are the seed's
      name: Var1
      center: [central_coord_1, central_coord_2, central_coord_3]   # x, y, z columns
      side1: [side_1_coord_1, side_1_coord_2, side_1_coord_3]
      side2: [side_2_coord_1, side_2_coord_2, side_2_coord_3]
    bboxes:
      stack1:
        raw: {path: ../data/vnc/vnc.zarr, key: raw}   # {path, key?, format?} or a plain path
        seg: {path: ../data/vnc/vnc.zarr, key: seg}   # optional: missing = no neurite ids
        mask: {path: ../data/vnc/vnc.zarr, key: mask} # optional: missing = no extra labels
        table: ../data/vnc/synapses.csv               # CSV or Excel
        labels: {mito: 1, vesicle: 0, cleft: 2, cleft2: 2}  # 0 = not annotated

Relative paths resolve against the YAML file's folder. Unknown keys are errors. Table
coordinates are x, y, z in the volume's native voxels (floats allowed; they are mapped onto
the resampled grid exactly). Side columns may be empty for synapses whose partners are
unknown.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..core import labels as L
from ..core.config import ConfigError, parse_yaml, read_text
from ..core.errors import DataError, format_validation_error, validate_name
from .bbox import BboxData
from .tables import read_synapse_table
from .volumes import FORMAT_ALIASES, FORMATS, needs_resampling, open_volume

logger = logging.getLogger(__name__)

_STRICT = ConfigDict(extra="forbid", strict=True)


class VolumeSource(BaseModel):
    """One volume: a file or folder, the array inside it (``key``) and an optional format."""

    model_config = _STRICT

    path: str
    key: str | None = None
    format: str | None = None

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str | None) -> str | None:
        if v is not None and v.lower() not in FORMATS and v.lower() not in FORMAT_ALIASES:
            raise ValueError(f"unknown format {v!r}; choose one of {list(FORMATS)}")
        return v


def _triple(v: list[str]) -> list[str]:
    if len(v) != 3:
        raise ValueError("give three column names: x, y, z")
    return v


class ColumnNames(BaseModel):
    """Synapse-table column names (x, y, z order for the coordinate triples)."""

    model_config = _STRICT

    name: str = L.NAME_COLUMN
    center: list[str] = Field(default_factory=lambda: list(L.CENTER_COLUMNS))
    side1: list[str] = Field(default_factory=lambda: list(L.SIDE1_COLUMNS))
    side2: list[str] = Field(default_factory=lambda: list(L.SIDE2_COLUMNS))

    @field_validator("center", "side1", "side2")
    @classmethod
    def _three(cls, v: list[str]) -> list[str]:
        return _triple(v)

    def to_columns(self) -> L.TableColumns:
        return L.TableColumns(self.name, tuple(self.center), tuple(self.side1), tuple(self.side2))  # type: ignore[arg-type]


class LabelSpec(BaseModel):
    """Label ids in the mask volume; 0 = that structure is not annotated."""

    model_config = _STRICT

    mito: int = Field(0, ge=0)
    vesicle: int = Field(0, ge=0)
    cleft: int = Field(0, ge=0)
    cleft2: int = Field(0, ge=0)


def _as_source(v: Any) -> Any:
    return {"path": v} if isinstance(v, str) else v


class BboxSpec(BaseModel):
    model_config = _STRICT

    raw: VolumeSource
    seg: VolumeSource | None = None
    mask: VolumeSource | None = None
    table: str
    labels: LabelSpec = Field(default_factory=LabelSpec)

    @field_validator("raw", "seg", "mask", mode="before")
    @classmethod
    def _plain_path(cls, v: Any) -> Any:
        return _as_source(v)


class DatasetDescription(BaseModel):
    """The validated content of a dataset description YAML."""

    model_config = _STRICT

    name: str = ""
    voxel_size_nm: list[float]
    columns: ColumnNames = Field(default_factory=ColumnNames)
    bboxes: dict[str, BboxSpec]

    @field_validator("voxel_size_nm")
    @classmethod
    def _voxels(cls, v: list[float]) -> list[float]:
        if len(v) != 3 or any(not np.isfinite(x) or x <= 0 for x in v):
            raise ValueError("give three positive voxel sizes z, y, x in nm")
        return [float(x) for x in v]

    @field_validator("bboxes")
    @classmethod
    def _names(cls, v: dict[str, BboxSpec]) -> dict[str, BboxSpec]:
        if not v:
            raise ValueError("list at least one bbox")
        for name in v:
            validate_name(name)
        return v


@dataclass(frozen=True)
class DescriptionFile:
    """A validated description YAML plus where it came from: relative paths in it resolve
    against its folder (dataset and connectome descriptions share this)."""

    spec: Any
    file: Path
    text_sha256: str

    @property
    def folder(self) -> Path:
        return self.file.parent

    @property
    def name(self) -> str:
        return self.spec.name or self.file.stem

    def resolve(self, path: str) -> Path:
        p = Path(path.removeprefix("file://")).expanduser()
        return p if p.is_absolute() else self.folder / p


@dataclass(frozen=True)
class LoadedDescription(DescriptionFile):
    """A dataset description plus where it came from."""

    spec: DatasetDescription

    def table_paths(self) -> list[Path]:
        return [self.resolve(b.table) for b in self.spec.bboxes.values()]


def is_description(data: Any) -> bool:
    """True for the content of a dataset description (its ``bboxes`` is a mapping; in run
    parameters ``bboxes`` is a list), so tools that list ``parameters/*.yaml`` can tell them apart."""
    return isinstance(data, dict) and isinstance(data.get("bboxes"), dict) and "voxel_size_nm" in data


def load_dataset_description(path: str | Path) -> LoadedDescription:
    """Read and validate a dataset description; errors name the file and the key."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"dataset description not found: {file}")
    try:  # the limits of parameter files: UTF-8, size, no aliases, no duplicate keys
        text = read_text(file, what="dataset description")
        data = parse_yaml(text, f"dataset description {file}")
    except ConfigError as exc:
        raise DataError(str(exc)) from None
    if not isinstance(data, dict):
        raise DataError(f"dataset description {file} must hold a mapping (name, voxel_size_nm, bboxes ...), not {type(data).__name__}")
    try:
        spec = DatasetDescription(**data)
    except ValidationError as exc:
        raise DataError(
            format_validation_error(
                exc,
                f"invalid dataset description {file}",
                noun="key",
                unknown_hint="see parameters/dataset_example.yaml for the keys a description takes",
            )
        ) from None
    except DataError as exc:  # a bad bbox name
        raise DataError(f"invalid dataset description {file}: {exc}") from None
    return LoadedDescription(spec=spec, file=file.resolve(), text_sha256=hashlib.sha256(text.encode()).hexdigest())


def _open_source(desc: LoadedDescription, bbox: str, role: str, src: VolumeSource) -> Any:
    try:
        return open_volume(desc.resolve(src.path), key=src.key, fmt=src.format, kind="raw" if role == "raw" else "label")
    except DataError as exc:
        raise DataError(f"dataset {desc.name!r} ({desc.file}), bbox {bbox}, {role}: {exc}") from None


def open_bbox(desc: LoadedDescription, name: str) -> BboxData:
    """Open one bbox of a description lazily (metadata and the table only)."""
    spec = desc.spec.bboxes[name]
    where = f"dataset {desc.name!r} ({desc.file}), bbox {name}"
    volumes = {"raw": _open_source(desc, name, "raw", spec.raw)}
    for role in ("seg", "mask"):
        src = getattr(spec, role)
        if src is not None:
            volumes[role] = _open_source(desc, name, role, src)
    shapes = {k: tuple(int(s) for s in v.shape) for k, v in volumes.items()}
    if len(set(shapes.values())) > 1:
        detail = ", ".join(f"{k} {v}" for k, v in shapes.items())
        raise DataError(f"{where}: raw, seg and mask shapes differ ({detail}); they must cover the same voxels")
    for role, vol in volumes.items():
        hint = getattr(vol, "voxel_size_hint_nm", None)
        if hint is not None and not np.allclose(hint, desc.spec.voxel_size_nm, rtol=1e-6):
            logger.warning(
                "%s: voxel_size_nm %s (z, y, x) of the description differs from %s nm stated in the %s volume's "
                "own metadata (%s); the description's value is used, check it",
                where, desc.spec.voxel_size_nm, list(hint), role, vol.path,
            )
    for role in ("seg", "mask"):
        vol = volumes.get(role)
        if vol is not None and not (np.issubdtype(vol.dtype, np.integer) or vol.dtype == np.bool_):
            raise DataError(f"{where}: the {role} volume {vol.path} has dtype {vol.dtype}; label volumes must hold integers")
    ids = L.LabelIds(**spec.labels.model_dump())
    if "mask" not in volumes and any(ids.as_dict().values()):
        given = {k: v for k, v in ids.as_dict().items() if v}
        raise DataError(f"{where}: labels {given} are set but the bbox has no mask volume; add mask or set those labels to 0")
    table_path = desc.resolve(spec.table)
    table = read_synapse_table(
        table_path, bbox=name, columns=desc.spec.columns.to_columns(), allow_missing_sides=True, integer_coords=False
    )
    sources = {role: desc.resolve(getattr(spec, role).path) for role in volumes}
    return BboxData(
        name=name,
        raw=volumes["raw"],
        seg=volumes.get("seg"),
        mask=volumes.get("mask"),
        table=table,
        label_ids=ids,
        sources={**sources, "table": table_path, "description": desc.file},
        voxel_size_nm=tuple(desc.spec.voxel_size_nm),  # type: ignore[arg-type]
        dataset=desc.name,
    )


def open_dataset_description(path: str | Path, bboxes: Sequence[str] | None = None) -> list[BboxData]:
    """Open the bboxes of a description (all when ``bboxes`` is empty), lazily."""
    desc = load_dataset_description(path)
    names = list(bboxes) if bboxes else list(desc.spec.bboxes)
    unknown = [b for b in names if b not in desc.spec.bboxes]
    if unknown:
        raise DataError(f"dataset description {desc.file} has no bbox {unknown}; it has {list(desc.spec.bboxes)}")
    out = [open_bbox(desc, n) for n in names]
    logger.info("dataset %r: %d bbox(es), voxel size %s nm (z, y, x)", desc.name, len(out), desc.spec.voxel_size_nm)
    return out


# --------------------------------------------------------------------------------------
# which segmentation types a dataset can serve
# --------------------------------------------------------------------------------------
def dataset_name(bboxes: Sequence[BboxData]) -> str:
    names = sorted({b.dataset for b in bboxes if b.dataset})
    return ", ".join(names) if names else "this dataset"


def refused_types(bboxes: Sequence[BboxData]) -> dict[int, str]:
    """Segmentation type -> why the dataset cannot serve it (types it can serve are absent)."""
    out: dict[int, str] = {}
    several = len(bboxes) > 1
    for t in L.SEGMENTATION_TYPES:
        for b in bboxes:
            missing = L.missing_for_type(t, b.capabilities())
            if missing:
                needs = " and ".join(m[0] for m in missing)
                has = ", ".join(m[1] for m in missing)
                prefix = f"bbox {b.name}: " if several else ""
                out[t] = f"needs {needs}; dataset '{b.dataset or dataset_name(bboxes)}' has none ({prefix}{has})"
                break
    return out


def supported_types(bboxes: Sequence[BboxData]) -> list[int]:
    """Segmentation types every bbox of the dataset can serve."""
    refused = refused_types(bboxes)
    return [t for t in L.SEGMENTATION_TYPES if t not in refused]


def require_segmentation_type(bboxes: Sequence[BboxData], segmentation_type: int) -> None:
    """Raise a :class:`DataError` naming what is missing when the dataset cannot serve the type."""
    t = int(segmentation_type)
    if t not in L.SEGMENTATION_TYPES:
        raise DataError(f"segmentation_type {t} is unknown; choose one of {sorted(L.SEGMENTATION_TYPES)}")
    refused = refused_types(bboxes)
    if t in refused:
        ok = ", ".join(str(s) for s in L.SEGMENTATION_TYPES if s not in refused)
        raise DataError(
            f"segmentation type {t} ({L.SEGMENTATION_TYPE_SHORT[t]}) {refused[t]}. Types this dataset supports: {ok}"
        )


def require_crop_mode(bboxes: Sequence[BboxData], crop_mode: str, presynapse_weight: float) -> None:
    """Refuse the smart crop (``crop_mode`` "presynapse") where the presynaptic side cannot be
    decided: it would move every cube towards a partner chosen by convention."""
    if crop_mode != "presynapse" or float(presynapse_weight) <= 0:
        return
    reason = refused_types(bboxes).get(1)  # type 1 = the presynaptic segment
    if reason:
        raise DataError(
            f"crop_mode 'presynapse' centres cubes on the presynaptic segment, which {reason}; "
            "use crop_mode 'cleft' for this dataset"
        )


def capabilities_table(bboxes: Sequence[BboxData]) -> pd.DataFrame:
    """One row per segmentation type: supported or the reason it is refused."""
    refused = refused_types(bboxes)
    return pd.DataFrame(
        [
            {
                "segmentation type": t,
                "what": L.SEGMENTATION_TYPE_SHORT[t],
                "supported": t not in refused,
                "reason": refused.get(t, ""),
            }
            for t in L.SEGMENTATION_TYPES
        ]
    )


def description_stamp(path: str | Path) -> dict[str, Any] | None:
    """Content hash of a description plus its tables' size and mtime (for cache keys)."""
    if not path:
        return None
    try:
        desc = load_dataset_description(path)
    except DataError:
        p = Path(path)
        return {"missing_or_invalid": str(p), "stat": [p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else None}
    tables = []
    for t in desc.table_paths():
        st = t.stat() if t.is_file() else None
        tables.append([str(t), st.st_size if st else None, st.st_mtime_ns if st else None])
    return {"sha256": desc.text_sha256, "tables": tables}


def describe(bboxes: Sequence[BboxData], cfg: Any) -> str:
    """One sentence for the notebook: where the data comes from, its voxel and the cube grid."""
    first = bboxes[0]
    native = tuple(first.voxel_size_nm or cfg.voxel_size_nm)
    vox = " x ".join(f"{float(v):g}" for v in native)
    if first.sources.get("description"):
        where = f"Dataset {first.dataset!r} from the description `{first.sources['description']}`"
    else:
        where = f"Seed layout under `{cfg.raw_dir}`"
    if needs_resampling(native, cfg.target_voxel_nm):
        grid = f"cubes are resampled per synapse to {float(cfg.target_voxel_nm):g} nm isotropic voxels"
    else:
        grid = "cubes keep the native voxels"
    ok = ", ".join(str(t) for t in supported_types(bboxes))
    return f"{where}: {len(bboxes)} bbox(es), voxel size {vox} nm (z, y, x); {grid}. Segmentation types it supports: {ok}."
