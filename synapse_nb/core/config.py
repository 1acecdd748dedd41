"""One validated, flat parameter structure for the whole pipeline.

The same key names are used in ``parameters/*.yaml``, in the notebooks' ``parameters``
cells and here, so a value means the same thing wherever it is set. Flat keys are what
papermill injects; the grouping into topics is data, :data:`SECTIONS`, not nesting.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import atomic
from . import labels as L
from .errors import format_validation_error, validate_name
from .layers import CONV_INDICES


class ConfigError(ValueError):
    """A parameter is unknown or has a bad value; the message names the key."""


class Config(BaseModel):
    """Every pipeline parameter with its default (the small, fast demo settings).

    Fields are listed topic by topic, in the order of :data:`SECTIONS`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)

    # --- data ---
    raw_dir: str = Field("data/demo/raw", description="folder with one sub-folder of raw slices per bbox")
    seg_dir: str = Field("data/demo/seg", description="folder with one sub-folder of neurite-id slices per bbox")
    mask_dir: str = Field("data/demo/mask", description="folder with extra-label slices per bbox (bbox_N)")
    table_dir: str = Field("data/demo/tables", description="folder with one synapse table bboxN.xlsx per bbox")
    bboxes: list[str] = Field(default_factory=list, description="bboxes to use; empty = every folder in raw_dir")
    voxel_size_nm: list[float] = Field(default_factory=lambda: [8.0, 8.0, 8.0], description="voxel size z, y, x in nm")
    label_table: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="per-bbox label ids {bbox: {mito, vesicle, cleft, cleft2}}; merged over the seed's table"
    )
    class_column: str = Field(L.DEMO_CLASS_COLUMN, description="ground-truth class column, used when the table has it")

    # --- synapse cubes ---
    cube_size: int = Field(80, ge=16, le=256, description="cube edge in voxels (multiple of 16)")
    segmentation_type: int = Field(10, ge=0, le=11, description="0-11, see labels.SEGMENTATION_TYPES")
    alpha: float = Field(1.0, ge=0.0, le=1.0, description="weight of gray outside the mask")
    gray_value: float = Field(0.6, ge=0.0, le=1.0, description="gray level blended outside the mask")
    crop_mode: Literal["cleft", "presynapse"] = Field("cleft", description="centre on the cleft or smart crop")
    presynapse_weight: float = Field(0.7, ge=0.0, le=1.0, description="smart-crop weight of the presynaptic centre")
    quantize_8bit: bool = Field(False, description="round blended intensities to 8 bits")
    second_minmax: bool = Field(False, description="min-max the blended cube again")
    input_range: Literal["auto", "0_1", "-1_1"] = Field("auto", description="network input range; auto follows the weights")

    # --- network and extraction ---
    weights_path: str = Field("", description="VGG3D checkpoint; empty = seeded random weights")
    extraction_method: Literal["standard", "stage_specific"] = Field("standard", description="whole trunk or one layer")
    layer_num: int = Field(20, ge=0, le=33, description="features module index for stage_specific")
    pooling_method: Literal["avg", "max", "concat_avg_max", "spp"] = Field("avg", description="spatial pooling")
    batch_size: int = Field(1, ge=1, le=512, description="cubes per network batch (1 is fastest on CPU, see benchmarks)")
    precision: Literal["float32", "bfloat16"] = Field("float32", description="bfloat16 is faster on CPUs that have it")
    seed: int = Field(42, ge=0, description="seed for weights, sampling and embeddings")
    cache_dir: str = Field("runs/cache", description="reuse cubes and features across runs here; empty = no reuse")

    # --- reduction and clustering ---
    pca_components: int = Field(50, ge=0, description="PCA components before UMAP/t-SNE/clustering; 0 = no PCA")
    n_neighbors: int = Field(15, ge=2, description="UMAP neighbours (capped below the number of synapses)")
    min_dist: float = Field(0.1, ge=0.0, le=1.0, description="UMAP minimum distance")
    umap_metric: Literal["euclidean", "cosine", "correlation", "manhattan"] = Field("euclidean", description="UMAP metric")
    perplexity: float = Field(30.0, gt=0.0, description="t-SNE perplexity (lowered for few synapses)")
    clustering_method: Literal["kmeans", "gmm", "hdbscan", "ward"] = Field("kmeans", description="clustering algorithm")
    n_clusters: int = Field(0, ge=0, description="number of clusters; 0 = choose (silhouette, BIC for gmm)")
    k_min: int = Field(2, ge=2, description="smallest k tried when choosing")
    k_max: int = Field(10, ge=2, description="largest k tried when choosing")
    n_bootstrap: int = Field(20, ge=1, le=1000, description="subsample refits for cluster stability")

    # --- real-world data ---
    dataset: str = Field("", description="dataset description YAML (parameters/dataset_*.yaml); when set it replaces raw_dir, seg_dir, mask_dir, table_dir, voxel_size_nm and label_table")
    target_voxel_nm: float = Field(8.0, ge=0.0, description="isotropic voxel (nm) cubes are resampled to when the data's voxel differs; 0 = never resample")

    # --- attention ---
    attention_layers: list[int] = Field(default_factory=lambda: [3, 20, 27], description="conv layers (features.N) for Grad-CAM")
    attention_target: Literal["cluster", "logit", "norm"] = Field("cluster", description="what the map explains: cluster similarity, a classifier logit, or the pooled-feature norm")
    attention_class: int = Field(-1, ge=-1, description="classifier output for attention_target logit; -1 = the predicted class")
    attention_per_cluster: int = Field(2, ge=1, le=50, description="representatives per cluster explained")
    attention_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="fraction of a map's maximum above which a voxel counts as attended")

    # --- presynapse connectivity ---
    include_ambiguous: bool = Field(False, description="group synapses whose pre/post decision was ambiguous too")
    n_permutations: int = Field(1000, ge=10, le=100000, description="label shuffles for the same-axon permutation test")

    @field_validator("cube_size")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError("must be a multiple of 16 (the network halves it four times)")
        return v

    @model_validator(mode="after")
    def _k_range(self) -> "Config":
        if self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) must be at least k_min ({self.k_min})")
        return self

    @field_validator("bboxes")
    @classmethod
    def _bbox_names(cls, v: list[str]) -> list[str]:
        for name in v:
            try:
                validate_name(name)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        if len(set(v)) != len(v):
            raise ValueError("bbox names must be unique")
        return v

    @field_validator("attention_layers")
    @classmethod
    def _conv_layers(cls, v: list[int]) -> list[int]:
        bad = [i for i in v if i not in CONV_INDICES]
        if not v or bad:
            raise ValueError(f"give one or more conv layers of features, from {list(CONV_INDICES)} (bad: {bad})")
        return v

    @field_validator("voxel_size_nm")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if len(v) != 3 or any(x <= 0 for x in v):
            raise ValueError("give three positive voxel sizes z, y, x in nm")
        return v

    @field_validator("label_table")
    @classmethod
    def _label_rows(cls, v: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        want = set(L.LabelIds.__dataclass_fields__)
        for bbox, row in v.items():
            if set(row) != want:
                raise ValueError(f"entry {bbox!r} must have exactly the keys {sorted(want)}, got {sorted(row)}")
        return v

    # --- derived views -------------------------------------------------------------
    def label_ids(self) -> dict[str, L.LabelIds]:
        """The seed's table with this config's overrides on top."""
        table = dict(L.SEED_LABEL_TABLE)
        table.update({k: L.LabelIds(**v) for k, v in self.label_table.items()})
        return table

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


#: The topics of :class:`Config`, in display order: title -> its keys (every key in exactly
#: one). The control panel's form shows one section per title.
SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("raw_dir", "seg_dir", "mask_dir", "table_dir", "bboxes", "voxel_size_nm", "label_table", "class_column"),
    "synapse cubes": (
        "cube_size", "segmentation_type", "alpha", "gray_value", "crop_mode", "presynapse_weight",
        "quantize_8bit", "second_minmax", "input_range",
    ),
    "network and extraction": (
        "weights_path", "extraction_method", "layer_num", "pooling_method", "batch_size", "precision", "seed",
        "cache_dir",
    ),
    "reduction and clustering": (
        "pca_components", "n_neighbors", "min_dist", "umap_metric", "perplexity", "clustering_method",
        "n_clusters", "k_min", "k_max", "n_bootstrap",
    ),
    "real-world data": ("dataset", "target_voxel_nm"),
    "attention": (
        "attention_layers", "attention_target", "attention_class", "attention_per_cluster", "attention_threshold",
    ),
    "presynapse connectivity": ("include_ambiguous", "n_permutations"),
}


def make_config(values: Mapping[str, Any] | None = None, source: str = "parameters") -> Config:
    """Validate a flat mapping into a :class:`Config`; errors name every bad key."""
    try:
        return Config(**dict(values or {}))
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(
                exc, f"invalid parameters in {source}", unknown_hint=f"known parameters: {', '.join(Config.model_fields)}"
            )
        ) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of parameter: value, not {type(data).__name__}")
    return data


def load_config(path: str | Path, **overrides: Any) -> Config:
    """Load a flat YAML parameter file, apply overrides and validate."""
    return make_config({**read_yaml(path), **overrides}, source=str(path))


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write ``cfg`` as YAML atomically (a crash never leaves half a file)."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    return atomic.write_text(path, text)


def from_namespace(namespace: Mapping[str, Any]) -> Config:
    """Build the config from a notebook's globals: every Config key defined there is used."""
    values = {k: namespace[k] for k in Config.model_fields if k in namespace}
    return make_config(values, source="the notebook's parameters cell")
