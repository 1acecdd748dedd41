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
from .errors import format_validation_error, shorten, validate_name
from .layers import CONV_INDICES

#: What ``device`` accepts: auto (a GPU when torch sees one, else the CPU), cpu, cuda, cuda:N, mps.
DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:[0-9]+|mps)$"
#: Largest parameter file read (they are a few hundred bytes; a file saved by the panel ~2 kB).
MAX_FILE_BYTES = 1_000_000
#: Most top-level keys of a parameter file (there are about 50 parameters).
MAX_KEYS = 200
#: Longest text value (paths and names are far shorter).
MAX_TEXT_CHARS = 4096
#: Deepest nesting of values (``label_table`` and sweep grids nest three levels).
MAX_DEPTH = 16
#: Most values (keys, items, texts, numbers) in a parameter file.
MAX_VALUES = 10_000
#: Largest seed numpy and torch accept.
MAX_SEED = 2**32 - 1


class ConfigError(ValueError):
    """A parameter is unknown or has a bad value; the message names the key."""


class Config(BaseModel):
    """Every pipeline parameter with its default (the small, fast demo settings).

    Fields are listed topic by topic, in the order of :data:`SECTIONS`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)

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
    quantize_8bit: bool = Field(False, description="truncate blended intensities to 8 bits (floor(255 x) / 255, as the original tool did)")
    second_minmax: bool = Field(False, description="min-max the blended cube again")
    input_range: Literal["auto", "0_1", "-1_1"] = Field("auto", description="network input range; auto follows the weights")
    intensity_normalization: Literal["minmax", "cube", "mask"] = Field(
        "mask", description="per-cube intensity scaling before the mask blend: minmax (the original tool's), cube (z-score over the cube) or mask (z-score over the kept mask), so brightness and contrast of a volume do not drive the features"
    )
    orient_cubes: bool = Field(
        False, description="rotate each cube once so the cleft normal lies along z with the presynaptic side at low z (resampled from a larger source window, so no corner is empty)"
    )

    # --- network and extraction ---
    weights_path: str = Field("", description="VGG3D checkpoint; empty = seeded random weights")
    extraction_method: Literal["standard", "stage_specific"] = Field("standard", description="whole trunk or one layer")
    layer_num: int = Field(20, ge=0, le=33, description="features module index for stage_specific")
    pooling_method: Literal["avg", "max", "concat_avg_max", "spp"] = Field("avg", description="spatial pooling")
    batch_size: int = Field(1, ge=1, le=512, description="cubes per network batch (1 is fastest on CPU, see benchmarks)")
    rotation_averaging: Literal[1, 2, 4] = Field(1, description="average the features over this many 90-degree rotations about the cleft normal (1 = off)")
    precision: Literal["float32", "bfloat16"] = Field("float32", description="bfloat16: faster only on CPUs with native bf16 (emulated, ~100x slower, elsewhere); its features differ from float32 by a few % of the spread between synapses, check the clusters with benchmarks/bench_precision.py")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="seed for weights, sampling and embeddings (0 .. 2**32-1)")
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="where the network runs (extraction, Grad-CAM, pretraining): auto (a GPU when torch sees one, else the CPU), cpu, cuda, cuda:N or mps")
    cache_dir: str = Field("runs/cache", description="reuse cubes and features across runs here; empty = no reuse")

    # --- self-supervised pretraining ---
    pretrain: bool = Field(False, description="train the network on this run's synapses first (contrastive, SimCLR) and extract features with those weights")
    pretrain_epochs: int = Field(40, ge=1, le=10000, description="most training epochs (training stops earlier when the loss stops improving)")
    pretrain_batch_size: int = Field(16, ge=2, le=1024, description="synapses per training batch (each seen as two augmented views)")
    pretrain_cube_size: int = Field(32, ge=0, le=512, description="train on cubes resampled to this edge (same field of view, fewer voxels; 0 = the cube size); cost grows with its cube: on 2 CPU cores an epoch of 100 synapses takes about 15 s at 16, 35-50 s at 32, 3.5 min at 48 and 17 min at 80")
    pretrain_learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="AdamW learning rate (cosine schedule)")
    pretrain_temperature: float = Field(0.2, gt=0.0, le=10.0, description="NT-Xent temperature")
    pretrain_patience: int = Field(8, ge=1, le=1000, description="stop after this many epochs without a better loss")
    pretrain_precision: Literal["float32", "bfloat16"] = Field("float32", description="bfloat16 mixed precision for training (fast only on CPUs with native bf16 and on GPUs)")

    # --- reduction and clustering ---
    feature_set: Literal["deep", "descriptors", "hybrid"] = Field(
        "hybrid", description="what is clustered: deep (network features), descriptors (morphometric measures of the cubes) or hybrid (both, each block standardised and weighted)"
    )
    descriptor_weight: float = Field(0.5, ge=0.0, le=1.0, description="hybrid: share of the total variance given to the descriptor block (the deep block gets the rest)")
    pca_components: int = Field(50, ge=0, description="PCA components before UMAP/t-SNE/clustering; 0 = no PCA")
    n_neighbors: int = Field(15, ge=2, description="UMAP neighbours (capped below the number of synapses)")
    min_dist: float = Field(0.1, ge=0.0, le=1.0, description="UMAP minimum distance")
    umap_metric: Literal["euclidean", "cosine", "correlation", "manhattan"] = Field("euclidean", description="UMAP metric")
    perplexity: float = Field(30.0, gt=0.0, description="t-SNE perplexity (lowered for few synapses)")
    clustering_method: Literal["kmeans", "gmm", "hdbscan", "ward"] = Field("kmeans", description="clustering algorithm")
    n_clusters: int = Field(0, ge=0, description="number of clusters; 0 = choose with k_selection")
    k_selection: Literal["silhouette", "gap", "stability", "consensus"] = Field(
        "consensus", description="how k is chosen when n_clusters is 0: silhouette, gap statistic, stability (prediction strength) or consensus (the median of the three); gmm always uses BIC"
    )
    k_min: int = Field(2, ge=2, description="smallest k tried when choosing")
    k_max: int = Field(10, ge=2, description="largest k tried when choosing")
    n_bootstrap: int = Field(20, ge=1, le=1000, description="subsample refits for cluster stability")

    # --- real-world data ---
    dataset: str = Field("", description="dataset description YAML (parameters/dataset_*.yaml); when set it replaces raw_dir, seg_dir, mask_dir, table_dir, voxel_size_nm and label_table")
    target_voxel_nm: float = Field(8.0, ge=0.0, description="isotropic voxel (nm) cubes are resampled to when the data's voxel differs; 0 = never resample")

    # --- connectome scale ---
    connectome: str = Field("", description="connectome description YAML (a synapse table of any size, chunked raw / segmentation / cleft layers, agglomerates; parameters/connectome_example.yaml); when set, the run samples synapses from it and replaces dataset, raw_dir ... and bboxes")
    sample_policy: Literal["all", "random", "stratified", "per_axon"] = Field(
        "random", description="which synapses of the connectome a run builds: all, random (seeded, no synapse twice), stratified (per region box or table column) or per_axon (up to sample_per_axon per presynaptic partner)"
    )
    sample_size: int = Field(1000, ge=0, le=100_000_000, description="random: how many synapses; per_axon: most synapses in total (0 = no limit)")
    sample_roi: dict[str, list[float]] = Field(default_factory=dict, description="regions of interest {name: [x0, y0, z0, x1, y1, z1]} in the connectome's voxels (half-open); when given, only synapses inside one are sampled")
    sample_strata_column: str = Field("", description="stratified: the synapse-table column whose values are the strata (kept by the description's keep list)")
    sample_strata_boxes: dict[str, list[float]] = Field(default_factory=dict, description="stratified: strata as boxes {name: [x0, y0, z0, x1, y1, z1]} instead of a column (a synapse in two belongs to the first)")
    sample_per_stratum: int = Field(100, ge=1, le=100_000_000, description="stratified: synapses per stratum (all of a smaller stratum)")
    sample_per_axon: int = Field(5, ge=1, le=100_000, description="per_axon: most synapses per presynaptic partner")
    engine: Literal["auto", "in_process", "dask"] = Field(
        "auto", description="how cubes and features are computed: in_process (one process, the simple default for bboxes), dask (batches of synapses as Dask tasks, each written as its own partition; resumable) or auto (dask for a connectome)"
    )
    dask_scheduler: str = Field("local", pattern=r"^(local|slurm|pbs|lsf|(tcp|tls)://[A-Za-z0-9.\-\[\]:]+:[0-9]+)$", description="local (a LocalCluster on this machine), a scheduler address tcp://host:port, or slurm / pbs / lsf (dask-jobqueue: jobs submitted with dask_jobqueue's options)")
    dask_workers: int = Field(2, ge=1, le=10_000, description="Dask workers (LocalCluster processes, or jobs for slurm / pbs / lsf)")
    dask_threads_per_worker: int = Field(1, ge=1, le=256, description="threads per Dask worker (and torch threads in it)")
    dask_memory_per_worker: str = Field("4GiB", pattern=r"^[0-9]+(\.[0-9]+)?\s*(B|kB|KB|KiB|MB|MiB|GB|GiB|TB|TiB)$", description="memory limit of each Dask worker, e.g. 4GiB")
    dask_jobqueue: dict[str, str | int | float | bool | list[str]] = Field(
        default_factory=dict, description="slurm / pbs / lsf: options of the dask-jobqueue cluster, e.g. {queue: gpu, account: lab, walltime: '04:00:00', cores: 8, memory: 32GiB, job_extra_directives: ['--gres=gpu:1']}"
    )
    engine_batch_size: int = Field(32, ge=1, le=100_000, description="synapses per Dask task and per written partition (neighbouring synapses share reads)")

    # --- attention ---
    attention_layers: list[int] = Field(default_factory=lambda: [3, 20, 27], description="conv layers (features.N) for Grad-CAM")
    attention_target: Literal["cluster", "logit", "norm"] = Field("cluster", description="what the map explains: cluster similarity, a classifier logit, or the pooled-feature norm")
    attention_class: int = Field(-1, ge=-1, description="classifier output for attention_target logit; -1 = the predicted class")
    attention_per_cluster: int = Field(2, ge=1, le=50, description="representatives per cluster explained")
    attention_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="fraction of a map's maximum above which a voxel counts as attended")

    # --- presynapse connectivity ---
    include_ambiguous: bool = Field(False, description="group synapses whose pre/post decision was ambiguous too")
    n_permutations: int = Field(1000, ge=10, le=100000, description="label shuffles for the same-axon permutation test")

    @model_validator(mode="before")
    @classmethod
    def _text_lengths(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key, value in data.items():
                if why := long_text(value, shorten(key, 40, escape=True)):
                    raise ValueError(why)
        return data

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

    @field_validator("sample_roi", "sample_strata_boxes")
    @classmethod
    def _boxes(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        for name, box in v.items():
            try:
                validate_name(name)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
            if len(box) != 6:
                raise ValueError(f"box {name!r} must be six numbers [x0, y0, z0, x1, y1, z1], got {len(box)}")
            if any(lo >= hi for lo, hi in zip(box[:3], box[3:])):
                raise ValueError(f"box {name!r} is empty: each of x0, y0, z0 must be below x1, y1, z1, got {box}")
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
        "quantize_8bit", "second_minmax", "input_range", "intensity_normalization", "orient_cubes",
    ),
    "network and extraction": (
        "weights_path", "extraction_method", "layer_num", "pooling_method", "rotation_averaging", "batch_size", "precision", "seed",
        "device", "cache_dir",
    ),
    "self-supervised pretraining": (
        "pretrain", "pretrain_epochs", "pretrain_batch_size", "pretrain_cube_size", "pretrain_learning_rate",
        "pretrain_temperature", "pretrain_patience", "pretrain_precision",
    ),
    "reduction and clustering": (
        "feature_set", "descriptor_weight", "pca_components", "n_neighbors", "min_dist", "umap_metric", "perplexity",
        "clustering_method", "n_clusters", "k_selection", "k_min", "k_max", "n_bootstrap",
    ),
    "real-world data": ("dataset", "target_voxel_nm"),
    "connectome scale": (
        "connectome", "sample_policy", "sample_size", "sample_roi", "sample_strata_column", "sample_strata_boxes",
        "sample_per_stratum", "sample_per_axon", "engine", "dask_scheduler", "dask_workers", "dask_threads_per_worker",
        "dask_memory_per_worker", "dask_jobqueue", "engine_batch_size",
    ),
    "attention": (
        "attention_layers", "attention_target", "attention_class", "attention_per_cluster", "attention_threshold",
    ),
    "presynapse connectivity": ("include_ambiguous", "n_permutations"),
}


def long_text(value: Any, key: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Why ``value`` (given for ``key``) is refused for a text longer than ``limit`` characters
    anywhere in it, its keys or its items; "" when there is none."""
    stack = [(value, key, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str) and len(item) > limit:
            return (
                f"parameter '{where}' holds a text of {len(item):,} characters, more than {limit:,}: "
                "paths and names are far shorter, check the value"
            )
        if depth >= MAX_DEPTH:
            continue
        if isinstance(item, Mapping):
            for k, v in item.items():
                stack.append((k, where, depth + 1))
                stack.append((v, f"{where}.{shorten(k, 40, escape=True)}", depth + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(item))
    return ""


def make_config(values: Mapping[str, Any] | None = None, source: str = "parameters") -> Config:
    """Validate a flat mapping into a :class:`Config`; errors name the bad keys (the first few)."""
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source} must hold a mapping of parameter: value, not {type(values).__name__}")
    names = [k for k in values if not isinstance(k, str)]
    if names:
        raise ConfigError(
            f"invalid parameters in {source}: {shorten(repr(names[0]))} ({type(names[0]).__name__}) "
            "is not a parameter name; names are text such as 'alpha'"
        )
    try:
        return Config.model_validate(dict(values))
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(
                exc, f"invalid parameters in {source}", unknown_hint=f"known parameters: {', '.join(Config.model_fields)}"
            )
        ) from None


# --------------------------------------------------------------------------------------
# parameter files
# --------------------------------------------------------------------------------------
class _Refused(Exception):
    """A parameter file uses something parameter files may not; the message says what."""


_YAML_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml parses about ten times faster


class _ParameterLoader(_YAML_BASE):  # type: ignore[misc, valid-type]
    """Safe YAML with the limits of a parameter file: no aliases (a few lines of anchors and
    aliases expand to gigabytes), no duplicate keys, bounded nesting and text length."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_nodes(node)
        return self.construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # a list or mapping as a key is reported by the constructor
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                lines = f"lines {seen[key]} and {line}" if seen[key] != line else f"both on line {line}"
                raise _Refused(f"key {shorten(repr(key))} is given twice ({lines}): keep one of them")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _check_nodes(root: yaml.Node) -> None:
    """Refuse aliases, deep nesting, long texts and too many keys or values before anything is
    built from the nodes (iteratively, so a deep file cannot exhaust the stack)."""
    if isinstance(root, yaml.MappingNode) and len(root.value) > MAX_KEYS:
        raise _Refused(
            f"it has {len(root.value):,} top-level keys; a parameter file has one per parameter "
            f"(about {len(Config.model_fields)}, at most {MAX_KEYS}): check that it is a parameter file"
        )
    seen: set[int] = set()
    # (node, depth, parent entry, label): the dotted path is spelled out only for a message
    stack: list[tuple[yaml.Node, int, tuple | None, Any]] = [(root, 0, None, None)]
    while stack:
        entry = stack.pop()
        node, depth = entry[0], entry[1]
        if id(node) in seen:
            raise _Refused(
                f"'{_node_path(entry)}' repeats the value anchored on line {node.start_mark.line + 1} (a YAML alias "
                "*name): anchors and aliases are not allowed in parameter files, write the values out"
            )
        seen.add(id(node))
        if len(seen) > MAX_VALUES:
            raise _Refused(
                f"it holds more than {MAX_VALUES:,} values; a parameter file holds a few dozen: check that it is a parameter file"
            )
        if depth > MAX_DEPTH:
            raise _Refused(
                f"values nest more than {MAX_DEPTH} levels deep (at '{_node_path(entry)}'): "
                "a parameter file is 'parameter: value' lines"
            )
        if isinstance(node, yaml.ScalarNode):
            if len(node.value) > MAX_TEXT_CHARS:
                raise _Refused(
                    f"'{_node_path(entry) or 'the document'}' (line {node.start_mark.line + 1}) holds a text of "
                    f"{len(node.value):,} characters, more than {MAX_TEXT_CHARS:,}: paths and names are far shorter, check the value"
                )
        elif isinstance(node, yaml.SequenceNode):
            # pushed in reverse: the first problem in reading order is the one reported
            stack.extend((item, depth + 1, entry, i) for i, item in reversed(list(enumerate(node.value))))
        elif isinstance(node, yaml.MappingNode):
            for key, value in reversed(node.value):
                stack.append((value, depth + 1, entry, key))
                stack.append((key, depth + 1, entry, key))


def _node_path(entry: tuple) -> str:
    """The dotted path (``grid.alpha[2]``) of a stack entry of :func:`_check_nodes`."""
    parts: list[str] = []
    while entry is not None and entry[2] is not None:
        label = entry[3]
        if isinstance(label, int):
            parts.append(f"[{label}]")
        else:
            name = shorten(label.value, 40, escape=True) if isinstance(label, yaml.ScalarNode) else "?"
            parts.append(f".{name}")
        entry = entry[2]
    return "".join(reversed(parts)).removeprefix(".")


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """A YAML error on one line: what is wrong and where (line, column)."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        return f"unacceptable character #x{exc.character:04x} on line {line} ({shorten(exc.reason, 100)})"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    words = [w for w in (getattr(exc, "context", None), getattr(exc, "problem", None)) if w]
    text = shorten(" ".join(words) if words else str(exc), 200)
    return f"{text} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else text


def parse_yaml(text: str, source: str) -> Any:
    """Parse the YAML ``text`` of ``source`` with the limits of a parameter file; a one-line
    :class:`ConfigError` naming ``source`` for anything refused or malformed."""
    try:
        return yaml.load(text, Loader=_ParameterLoader)  # a SafeLoader (or CSafeLoader) subclass
    except _Refused as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {_yaml_problem(exc, text)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: values nest too deeply; a parameter file is 'parameter: value' lines") from None


def read_text(path: str | Path, what: str = "parameter file", limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of a small file; a one-line :class:`ConfigError` naming the file when it
    is missing, larger than ``limit`` bytes, unreadable or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        with path.open("rb") as fh:
            raw = fh.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(raw) > limit:
        raise ConfigError(
            f"{path} is larger than {limit:,} bytes, and a {what} is a few hundred: check that it is the right file"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x}): save it as UTF-8") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a parameter file (a YAML mapping); a one-line :class:`ConfigError` naming the file
    when it is missing, too large, not UTF-8, empty, malformed, or uses what parameter files
    may not (aliases, duplicate keys, very long texts, deep nesting)."""
    path = Path(path)
    data = parse_yaml(read_text(path), str(path))
    if data is None:
        raise ConfigError(f"{path} is empty: write one 'parameter: value' per line (or '{{}}' to run on the defaults)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of parameter: value, not {type(data).__name__}")
    names = [k for k in data if not isinstance(k, str)]
    if names:
        raise ConfigError(f"{path}: top-level key {shorten(repr(names[0]))} is not a parameter name; names are text such as 'alpha'")
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
