"""Grad-CAM in 3-D for VGG3D: which voxels of a cube drive a chosen score.

The seed's maps came from a constant-weight dummy head, so they showed the same thing for
every class and were only resized along depth. Here a map always answers a stated question:

Targets (``attention_target``), see :data:`TARGET_MEANINGS`
    * ``cluster`` - cosine similarity between the synapse's features and its cluster's
      centroid, in exactly the space 05_cluster clustered in: the pooled features of
      03_extract's settings, z-scored with the features table's mean/std (as 04_reduce), then
      projected on 04_reduce's PCA axes. The projection is recovered from the stored PCA
      scores by least squares (min-norm; exact, because PCA axes lie in the span of the
      standardised rows) and checked against them. The map shows what makes the synapse
      look like its cluster.
      When 04_reduce clustered the ``descriptors`` or a ``hybrid`` feature set, its PCA scores
      are not a function of the network alone and no gradient reaches them. The target is
      then built in the network features' own space (standardised, PCA as in 04_reduce, the
      same 05_cluster labels; :func:`deep_cluster_space`), and the notes say that the maps
      explain the network's features, not the descriptors (:func:`feature_set_note`).
    * ``logit`` - one classifier output (``attention_class``, -1 = the predicted class);
      only with a checkpoint that holds a trained head.
    * ``norm`` - L2 norm of the pooled features (close to the seed's behaviour): where the
      network responds strongly at all, whatever the synapse is. A baseline to compare with.
Map
    Forward to the module the target reads (nothing after it is computed), one backward pass
    for every requested layer at once. Channel weight = mean gradient over space, map =
    ReLU(sum_c weight_c * activation_c), upsampled trilinearly (``align_corners=False``, so
    voxel centres of the coarse grid land where pooling put them) to the full input cube and
    divided by its maximum (a map of zeros - no positive evidence - stays zero and is
    flagged ``empty``). Layers AFTER the module the target reads get no gradient from it:
    they are skipped with a note, never drawn as a fake map.
Alignment
    The map, the network input and the structure masks all live in the same S^3 frame: the
    input is rendered from the stored cube of the very row (matched on bbox and synapse
    name), and masks come from that row's structure bits (:mod:`synapse_nb.core.labels`).
Overlap
    A voxel is "attended" when its map value is >= ``attention_threshold`` (fraction of the
    map's maximum, which is 1 after normalisation). Dice, IoU and mean attention inside /
    outside each structure are computed only over the *counted* voxels: inside the volume
    (padding added at a border carries no data; :func:`inside_volume`) and not in the border
    ring of the cube (:data:`BORDER_RING_VOXELS`; the zero padding of the convolutions makes
    attention there that says nothing about the synapse). Structures: ``pre``, ``post``
    (segments), ``vesicle`` (closest vesicle cloud), ``cleft`` (closest cleft + cleft2),
    ``mito`` (every mitochondrion voxel in the cube).
Most attended
    Per layer, the structure with the highest mean inside/outside ratio, named only when that
    ratio is above 1 (:func:`most_attended`); otherwise the summary says that no structure
    is attended more than its surroundings.

Rotation averaging
    When 03_extract averaged the features over turns of the cube about the cleft normal
    (``rotation_averaging`` > 1), Grad-CAM explains the unrotated cube. The stored features
    are then checked against rotation-averaged features recomputed for the explained cubes
    (``feature_match``), and ``unrotated_match`` says how far the explained, unrotated
    features are from the stored ones (:func:`rotation_note`).

Figures live in :mod:`synapse_nb.explain.figures`.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..analysis import reduce as R
from ..analysis.clustering import representatives
from ..analysis.feature_sets import FEATURE_SETS
from ..core import labels as L
from ..core.layers import (
    N_FEATURE_MODULES,
    layer_description,
    layer_output_size,
    validate_layer,
)
from ..core.progress_bars import progress
from ..cubes.geometry import valid_mask_from_pads
from ..features.checkpoint import ModelInfo
from ..features.devices import describe_device
from ..features.extract import pool_features
from ..features.inference import reuse_large_allocations
from ..features.vgg3d import VGG3D
from ..figures.gallery import cube_rows, render_rows

if TYPE_CHECKING:
    from ..core.config import Config
    from ..cubes.store import CubeSet

logger = logging.getLogger(__name__)



TARGETS: tuple[str, ...] = ("cluster", "logit", "norm")
TARGET_MEANINGS: dict[str, str] = {
    "cluster": (
        "cosine similarity of the synapse's pooled features to its cluster's centroid, in the "
        "standardised PCA space the clusters were made in: bright voxels are what makes this "
        "synapse belong to its cluster"
    ),
    "logit": (
        "a classifier output of the trained head (the chosen class, or the predicted one): "
        "bright voxels raise the network's evidence for that class"
    ),
    "norm": (
        "the L2 norm of the pooled features (close to the seed's maps): bright voxels are where "
        "the network responds strongly at all, whatever kind of synapse it is; a baseline"
    ),
}
DEEP_PROXY_MEANING = (
    "cosine similarity of the synapse's pooled network features to the centroid of its cluster's network features "
    "(standardised and PCA-projected as 04_reduce does, but without the descriptors the clusters were made with): "
    "bright voxels are what makes the network's features of this synapse resemble those of its cluster"
)
"""What the ``cluster`` target means when 04_reduce clustered descriptors or a hybrid set."""
#: Structure masks compared with the maps, from the structure bits of each cube.
STRUCTURES: dict[str, int] = {
    "pre": L.BIT_PRE,
    "post": L.BIT_POST,
    "vesicle": L.BIT_VESICLE,
    "cleft": L.BIT_CLEFT | L.BIT_CLEFT2,
    "mito": L.BIT_MITO_ANY,
}
#: Settings of 03_extract that define the features (and thus the cluster space and the input).
FEATURE_KEYS: tuple[str, ...] = (
    "cube_size", "segmentation_type", "alpha", "gray_value", "quantize_8bit", "second_minmax",
    "input_range", "intensity_normalization", "weights_path", "extraction_method", "layer_num", "pooling_method",
    "rotation_averaging", "precision", "seed",
)
DEFAULT_BATCH_SIZE = 1
"""Cubes per Grad-CAM pass. Measured (benchmarks/bench_attention.py, 2 shared cores, 80^3):
batch 2 is no faster per cube than batch 1, and every cube adds ~0.45 GB of saved activations
(batch 1 peaks at ~0.9-1.1 GB, batch 8 at ~4 GB)."""
FEATURE_MATCH_MIN = 0.99
"""Cosine below which recomputed features are reported as differing from 03_extract's."""
PROJECTION_RTOL = 1e-3
"""Largest relative error allowed when re-deriving the stored PCA scores from the features."""
BORDER_RING_VOXELS = 4
"""Width of the cube's border ring left out of the attention summaries, at
:data:`BORDER_RING_REFERENCE_SIZE`^3 (scaled with the cube size, at least 1 voxel; see
:func:`border_ring_width`). The convolutions pad with zeros, so voxels near the cube's faces
get attention from the padding itself, on any cube and any network."""
BORDER_RING_REFERENCE_SIZE = 80
NO_ATTENDED_STRUCTURE = "no structure attended more than its surroundings"
"""What the summaries say for a layer whose best inside/outside ratio is not above 1."""
ATTENTION_DIR = "attention"


def weights_tag(weights: str) -> str:
    """Short form for titles and table columns: 'RANDOM weights (seed 42)' or 'pretrained weights from ...'."""
    return weights.split(" — ")[0].split(" (with")[0].split(" (trunk")[0]


def layer_text(layer: int, size: int) -> str:
    """``layer_description`` at the actual cube size, e.g. 'features.27 (Conv3d 96->192, ...) at 4^3'."""
    return f"{layer_description(layer).rsplit(' at ', 1)[0]} at {layer_output_size(layer, size)}^3"


class AttentionError(ValueError):
    """Grad-CAM cannot answer the question as asked; the message names the key to change."""


# --------------------------------------------------------------------------------------
# Grad-CAM core (any nn.Sequential trunk)
# --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Parameters need no gradient for Grad-CAM: skipping them halves the backward pass."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def normalize_maps(cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Divide each map (B, ...) by its maximum; all-zero maps stay zero. Returns (maps, maxima)."""
    peak = cam.flatten(1).amax(dim=1)
    scale = torch.where(peak > 0, peak, torch.ones_like(peak))
    return cam / scale.view(-1, *([1] * (cam.dim() - 1))), peak


def gradcam(
    features: nn.Sequential,
    x: torch.Tensor,
    layers: Sequence[int],
    score: Callable[[torch.Tensor], torch.Tensor],
    upto: int,
) -> tuple[np.ndarray, dict[int, np.ndarray], np.ndarray]:
    """Grad-CAM maps of ``score`` at each of ``layers`` for a batch ``x`` (B, 1, Z, Y, X).

    ``score`` maps the output of ``features[upto]`` to one value per sample (B,). Samples must
    not interact (eval mode), so one backward pass of the summed scores serves the batch.
    Returns the scores (B,), ``{layer: maps (B, Z, Y, X)}`` in [0, 1] at input resolution and
    the raw map maxima (B, n_layers) (0 = empty map), all on the CPU. ``x`` is moved to the
    device of ``features`` (where the caller put the network), so the pass runs there.
    """
    layers = sorted({int(i) for i in layers})
    if not layers:
        raise ValueError("give at least one layer for Grad-CAM")
    late = [i for i in layers if i > upto]
    if late:
        raise ValueError(f"layers {late} come after features.{upto}, which the score reads: they have no gradient")
    if x.dim() != 5 or x.shape[1] != 1:
        raise ValueError(f"input must be (B, 1, Z, Y, X), got {tuple(x.shape)}")
    size = tuple(int(s) for s in x.shape[2:])
    weight = next(features.parameters(), None)
    if weight is not None:
        x = x.to(weight.device)
    first = layers[0]
    acts: dict[int, torch.Tensor] = {}
    was_training = features.training
    features.eval()
    try:
        with _frozen(features), torch.enable_grad():
            with torch.no_grad():
                h = x.float()
                for module in features[:first]:
                    h = module(h)
            h = h.detach().requires_grad_(True)
            for i in range(first, upto + 1):
                module = features[i]
                nxt = features[i + 1] if i + 1 <= upto else None
                h = module(h)
                if i in layers:
                    acts[i] = h
                    if getattr(nxt, "inplace", False):
                        h = h.clone()  # an in-place op must not overwrite the kept activation
            scores = score(h)
            if scores.shape != (x.shape[0],):
                raise ValueError(f"the score must give one value per sample, got shape {tuple(scores.shape)}")
            grads = torch.autograd.grad(scores.sum(), [acts[i] for i in layers], allow_unused=True)
        maps: dict[int, np.ndarray] = {}
        peaks = np.zeros((x.shape[0], len(layers)), dtype=np.float32)
        with torch.no_grad():
            for j, (i, g) in enumerate(zip(layers, grads)):
                a = acts[i]
                if g is None:
                    g = torch.zeros_like(a)
                weights = g.mean(dim=(2, 3, 4), keepdim=True)
                cam = F.relu((weights * a).sum(dim=1, keepdim=True))
                if tuple(cam.shape[2:]) != size:
                    cam = F.interpolate(cam, size=size, mode="trilinear", align_corners=False)
                cam, peak = normalize_maps(cam[:, 0].clamp_min(0))
                maps[i] = cam.cpu().numpy().astype(np.float32, copy=False)
                peaks[:, j] = peak.cpu().numpy()
    finally:
        features.train(was_training)
    return scores.detach().cpu().double().numpy(), maps, peaks


# --------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------
@dataclass
class ClusterSpace:
    """The space the ``cluster`` target measures in, as a differentiable map from pooled features.

    ``z = ((f - mean) / scale * keep) @ projection``; ``centroids[label]`` in z-space. For a
    ``deep`` run it is the space 05_cluster clustered in; otherwise (``feature_set``
    descriptors/hybrid) the network features' own PCA space, and ``notes`` say so.
    """

    mean: np.ndarray
    scale: np.ndarray
    keep: np.ndarray
    projection: np.ndarray
    centroids: dict[int, np.ndarray]
    residual: float
    feature_set: str = "deep"
    notes: list[str] = field(default_factory=list)

    @property
    def meaning(self) -> str:
        """What the target's score is, in words (for the notes and the report)."""
        return TARGET_MEANINGS["cluster"] if self.feature_set == "deep" else DEEP_PROXY_MEANING

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, D) pooled features -> (B, m) coordinates in the clustering space (differentiable).

        Computed on the CPU in float64 whatever device ``pooled`` is on (a few hundred numbers per
        synapse; MPS has no float64); the gradient flows back through the copy.
        """
        xs = (pooled.cpu().double() - _f64(self.mean)) / _f64(self.scale) * _f64(self.keep)
        return xs @ _f64(self.projection)


def _f64(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float64)


def _projection(Xs: np.ndarray, Z: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares map W with ``Xs @ W ~ Z`` and its relative error."""
    W, *_ = np.linalg.lstsq(Xs, Z, rcond=None)
    return W, float(np.linalg.norm(Xs @ W - Z) / max(np.linalg.norm(Z), 1e-12))


def _centroids(Z: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    labels = np.asarray(labels)
    centroids = {int(u): Z[labels == u].mean(axis=0) for u in sorted(set(labels.tolist())) if u >= 0}
    if not centroids:
        raise AttentionError("every synapse is noise (label -1): there is no cluster centroid to explain")
    return centroids


def cluster_space(
    features: pd.DataFrame,
    embeddings: pd.DataFrame,
    labels: np.ndarray,
    *,
    feature_set: str = "deep",
    pca_components: int = 50,
    seed: int = 42,
    descriptor_weight: float | None = None,
) -> ClusterSpace:
    """The ``cluster`` target's space for a run that clustered ``feature_set`` (04_reduce's).

    ``deep``: 04_reduce's standardisation + PCA recovered from the stored scores, and 05_cluster's
    centroids. ``descriptors`` / ``hybrid``: those scores hold descriptors the network cannot
    explain, so :func:`deep_cluster_space` with 04_reduce's ``pca_components`` and ``seed``
    (``descriptor_weight`` only words the note).
    """
    if feature_set not in FEATURE_SETS:
        raise AttentionError(f"unknown feature_set {feature_set!r} in 04_reduce's parameters; expected one of {FEATURE_SETS}")
    if not len(features) == len(embeddings) == len(labels):
        raise AttentionError(
            f"features ({len(features)} rows), embeddings ({len(embeddings)}) and clusters ({len(labels)}) "
            "do not line up: rerun 04_reduce and 05_cluster on this run's features"
        )
    if feature_set != "deep":
        return deep_cluster_space(features, labels, n_components=pca_components, seed=seed, feature_set=feature_set,
                                  descriptor_weight=descriptor_weight)
    pcs = R.pca_columns(embeddings)
    if not pcs:
        raise AttentionError("the embeddings table has no pca_* columns: rerun 04_reduce")
    Xs, scaler = R.standardize(features)
    Z = embeddings[pcs].to_numpy(np.float64)
    W, residual = _projection(Xs, Z)
    if residual > PROJECTION_RTOL:
        raise AttentionError(
            f"the stored PCA scores are not a linear projection of the standardised features "
            f"(relative error {residual:.2g}): the embeddings were made from other features; rerun 04_reduce and 05_cluster"
        )
    return ClusterSpace(scaler.mean, scaler.scale, (~scaler.constant).astype(np.float64), W, _centroids(Z, labels), residual)


def deep_cluster_space(
    features: pd.DataFrame,
    labels: np.ndarray,
    *,
    n_components: int = 50,
    seed: int = 42,
    feature_set: str = "hybrid",
    descriptor_weight: float | None = None,
) -> ClusterSpace:
    """The network features' own space for clusters made on other features.

    Standardise the ``feat_*`` columns, PCA with ``min(n_components, n - 1)`` components and
    ``seed`` (``n_components`` 0 = all n - 1, as many as the centred data has), centroids of
    ``labels`` there. The silhouette of the labels in that space goes into the note: how
    distinct the clusters are for the network at all.
    """
    if not R.feature_columns(features):
        raise AttentionError(
            f"the run clustered feature_set {feature_set!r} and its features table has no feat_* columns: the cluster target "
            "explains the network's features, so rerun 03_extract, or use attention_target 'norm'"
        )
    n = len(features)
    if n < 2:
        raise AttentionError(f"the features table has {n} synapse(s): a cluster target needs at least 2")
    Xs, scaler = R.standardize(features)
    k = min(int(n_components) if n_components and int(n_components) > 0 else n - 1, n - 1, Xs.shape[1])
    Z, _ = R.pca(Xs, k, seed)
    W, residual = _projection(Xs, Z)
    if residual > PROJECTION_RTOL:  # PCA scores are a projection of Xs by construction; this catches a broken solver
        raise AttentionError(f"the PCA of the network features did not reproduce its own scores (relative error {residual:.2g})")
    centroids = _centroids(Z, labels)
    note = feature_set_note(feature_set, n_components=Z.shape[1], descriptor_weight=descriptor_weight,
                            silhouette=_silhouette(Z, labels, seed))
    return ClusterSpace(scaler.mean, scaler.scale, (~scaler.constant).astype(np.float64), W, centroids, residual,
                        feature_set=feature_set, notes=[note])


SILHOUETTE_SAMPLE = 2000
"""Synapses the silhouette in :func:`deep_cluster_space` is computed on at most (it is O(n^2))."""


def _silhouette(Z: np.ndarray, labels: np.ndarray, seed: int) -> float | None:
    """Silhouette of the non-noise ``labels`` in ``Z``; None when undefined (one cluster, or one per synapse)."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    use = labels >= 0
    k = len(set(labels[use].tolist()))
    if not 2 <= k < int(use.sum()):
        return None
    size = min(int(use.sum()), SILHOUETTE_SAMPLE)
    return float(silhouette_score(Z[use], labels[use], sample_size=size, random_state=seed))


def feature_set_note(
    feature_set: str,
    *,
    n_components: int,
    descriptor_weight: float | None = None,
    silhouette: float | None = None,
) -> str:
    """What the cluster target explains when 04_reduce clustered ``feature_set`` (markdown)."""
    if feature_set == "deep":
        return "Clusters were made on the network's features; the cluster target is measured in that same space."
    if feature_set == "descriptors":
        made = ("Clusters were made on the **descriptors** feature set (morphometric descriptors only): "
                "the network's features played no part in the clustering.")
    else:
        share = f", the descriptors holding {100 * float(descriptor_weight):.0f}% of the variance" if descriptor_weight is not None else ""
        made = f"Clusters were made on the **hybrid** feature set (network features and morphometric descriptors{share})."
    text = (
        f"{made} Grad-CAM can only follow the network, so the `cluster` score is the cosine similarity of a synapse's "
        f"network features to its cluster's centroid of network features (standardised, PCA with {n_components} components, "
        "the same 05_cluster labels): the maps explain what makes the network's features of a synapse resemble those of "
        "its cluster, not the descriptors (vesicle cloud volume, cleft area, ...)."
    )
    if silhouette is not None:
        text += (f" In the network's feature space these clusters have a silhouette of {silhouette:.2f} "
                 "(1 = well apart, 0 = overlapping, below 0 = mixed): the lower it is, the less the maps say about the clusters.")
    return text


def rotation_note(turns: int) -> str:
    """What Grad-CAM explains when 03_extract averaged features over ``turns`` rotations (markdown)."""
    return (
        f"03_extract averaged each synapse's features over {int(turns)} rotations of {360 // int(turns)} degrees about its "
        "cleft normal; Grad-CAM explains the unrotated cube (the score reads its features, not the average). "
        "`feature_match` compares the stored features with rotation-averaged ones recomputed here; `unrotated_match` "
        "says how close the explained, unrotated features are to the stored average."
    )


class Target:
    """A scalar per sample computed from the output of ``features[upto]``."""

    kind = "norm"

    def __init__(self, upto: int, pooling: str) -> None:
        self.upto = validate_layer(upto)
        self.pooling = pooling
        self.last_pooled: np.ndarray | None = None
        self.last_extra: dict[str, np.ndarray] = {}

    def pooled(self, act: torch.Tensor) -> torch.Tensor:
        p = pool_features(act, self.pooling)
        self.last_pooled = p.detach().cpu().numpy().copy()
        return p

    def score(self, act: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        return self.pooled(act).norm(dim=1)


class NormTarget(Target):
    kind = "norm"


class ClusterTarget(Target):
    """Cosine similarity to the centroid of each sample's cluster (labels given per row)."""

    kind = "cluster"

    def __init__(self, upto: int, pooling: str, space: ClusterSpace, labels: np.ndarray) -> None:
        super().__init__(upto, pooling)
        self.space = space
        self.labels = np.asarray(labels)

    def score(self, act: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        missing = [int(r) for r in rows if int(self.labels[r]) not in self.space.centroids]
        if missing:
            raise AttentionError(
                f"feature rows {missing} have no cluster centroid (label -1 = noise): leave them out, "
                "or use attention_target 'norm'"
            )
        z = self.space.project(self.pooled(act))
        c = torch.as_tensor(np.stack([self.space.centroids[int(self.labels[r])] for r in rows]), dtype=torch.float64)
        return F.cosine_similarity(z, c, dim=1, eps=1e-12)


class LogitTarget(Target):
    """One output of the classifier head; ``class_index`` -1 = the predicted class per sample."""

    kind = "logit"

    def __init__(self, head: nn.Module, class_index: int = -1) -> None:
        super().__init__(N_FEATURE_MODULES - 1, "avg")
        self.head = head
        self.class_index = int(class_index)

    def score(self, act: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        flat = torch.flatten(act, 1)
        first = next((m for m in self.head.modules() if isinstance(m, nn.Linear)), None)
        if first is not None and first.in_features != flat.shape[1]:
            raise AttentionError(
                f"attention_target 'logit': the classifier head expects {first.in_features} trunk outputs "
                f"but this cube size gives {flat.shape[1]} ({act.shape[1]} channels x {tuple(act.shape[2:])}); the head was "
                "trained on 80^3 cubes: set cube_size 80 (01_load), or use attention_target 'cluster' or 'norm'"
            )
        was_training = self.head.training
        self.head.eval()  # dropout off: the logit of this cube, not of a random sub-network
        try:
            logits = self.head(flat)
        finally:
            self.head.train(was_training)
        probs = torch.softmax(logits.detach(), dim=1)
        pred = probs.argmax(dim=1)
        cls = pred if self.class_index < 0 else torch.full_like(pred, self.class_index)
        self.last_extra = {
            "class": cls.cpu().numpy().copy(),
            "predicted_class": pred.cpu().numpy().copy(),
            "probability": probs.gather(1, cls[:, None])[:, 0].cpu().numpy().copy(),
        }
        return logits.gather(1, cls[:, None])[:, 0]


def logit_target(model: VGG3D, info: ModelInfo, class_index: int) -> LogitTarget:
    """The logit target, or a clear error when the network has no (fitting) head."""
    if not getattr(model, "has_head", False) or model.classifier is None:
        raise AttentionError(
            f"attention_target 'logit' needs a classifier head, but the network has none ({info.description()}). "
            "Set weights_path to a checkpoint that contains classifier.* weights (e.g. the HemiBrain "
            "hemibrain_production.checkpoint), or set attention_target to 'cluster' or 'norm'."
        )
    n = int(model.num_classes or 0)
    if class_index >= n:
        raise AttentionError(f"attention_class {class_index} is out of range: the head has {n} classes (0..{n - 1}; -1 = predicted)")
    return LogitTarget(model.classifier, class_index)


@dataclass
class Study:
    """Everything needed to explain synapses of one run (see :func:`load_study`)."""

    cfg: "Config"
    features: pd.DataFrame
    labels: np.ndarray | None
    points: np.ndarray | None  # 04_reduce's PCA scores: the space 05_cluster clustered in
    space: ClusterSpace | None
    cubes: "CubeSet"
    model: VGG3D
    info: ModelInfo
    input_range: str
    target: Target
    layers: list[int]
    skipped_layers: dict[int, str]
    notes: list[str] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where the network runs

    @property
    def weights(self) -> str:
        return self.info.description()

    def describe(self) -> str:
        """What the maps explain, with which network, and what was left out (markdown)."""
        c = self.cfg
        rng = "[0, 1]" if self.input_range == "0_1" else "[-1, 1]"
        S = self.cubes.geometry.size
        where = "the whole trunk (features.33)" if c.extraction_method == "standard" else layer_text(c.layer_num, S)
        meaning = self.space.meaning if self.target.kind == "cluster" and self.space is not None else TARGET_MEANINGS[self.target.kind]
        lines = [
            f"**Target `{self.target.kind}`**: {meaning}.",
            f"**Network**: {self.weights}; Grad-CAM runs on {describe_device(self.device)}.",
            f"**Score read from**: {self._reads(where)}; cubes of segmentation type "
            f"{c.segmentation_type}, alpha {c.alpha}, input range {rng} (as in 03_extract).",
            "**Layers**: " + ", ".join(layer_text(i, S) for i in self.layers) + f" (cubes of {S}^3).",
        ]
        lines += [f"⚠ {n}" for n in [*self.skipped_layers.values(), *self.notes]]
        return "\n\n".join(lines)


    def _reads(self, where: str) -> str:
        if self.target.kind == "logit":
            which = "the predicted class" if self.cfg.attention_class < 0 else f"class {self.cfg.attention_class}"
            return f"the classifier head on the whole trunk (features.33), {which} (attention_class)"
        return f"{self.cfg.pooling_method} pooling of {where}"


# --------------------------------------------------------------------------------------
# explaining a batch of synapses
# --------------------------------------------------------------------------------------
@dataclass
class AttentionResult:
    """Maps of the explained synapses; all arrays share the S^3 frame of the network input."""

    samples: pd.DataFrame  # one row per synapse: identity, cluster, score, checks
    layers: list[int]
    maps: np.ndarray  # (n, n_layers, S, S, S) float32 in [0, 1]
    inputs: np.ndarray  # (n, S, S, S) rendered cube in [0, 1] (before the input-range map)
    bits: np.ndarray  # (n, S, S, S) structure bits of the same cubes
    valid: np.ndarray  # (n, S, S, S) True inside the volume (not padding)
    target: str
    weights: str
    threshold: float
    voxel_size_nm: tuple[float, float, float] = (8.0, 8.0, 8.0)
    skipped_layers: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    border_ring: int | None = None  # voxels of the cube border left out of the summaries; None = border_ring_width(S)
    explained: list[str] = field(default_factory=list)  # what the score is when it is not the clustering's own (notes)
    device: str = "cpu"  # where Grad-CAM ran (describe_device)

    @property
    def ring(self) -> int:
        """Width of the border ring the summaries leave out (see :data:`BORDER_RING_VOXELS`)."""
        return border_ring_width(self.maps.shape[-1]) if self.border_ring is None else int(self.border_ring)

    def counted(self, i: int) -> np.ndarray:
        """(S, S, S) voxels of synapse ``i`` the summaries count: inside the volume, off the border ring."""
        return counted_voxels(self.valid[i], self.ring)

    def counted_mean_maps(self) -> np.ndarray:
        """(n_layers, S, S, S) mean map over the synapses whose voxel is counted (0 where none is):
        what the region summary measures, without padding and the border ring."""
        weight = np.stack([self.counted(i) for i in range(len(self.maps))]).astype(np.float32)
        n = weight.sum(axis=0)
        out = np.zeros(self.maps.shape[1:], dtype=np.float32)
        for j in range(self.maps.shape[1]):
            total = np.einsum("i...,i...->...", self.maps[:, j], weight)
            np.divide(total, n, out=out[j], where=n > 0)
        return out

    def layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not explained; layers: {self.layers}")
        return self.layers.index(layer)

    def mean_maps(self) -> np.ndarray:
        """(n_layers, S, S, S): where attention concentrates across the explained synapses."""
        return self.maps.mean(axis=0)

    def notes(self) -> str:
        """What to keep in mind when reading the maps (markdown)."""
        n = len(self.samples)
        lines = [f"{n} synapses x {len(self.layers)} layers explained in {self.seconds:.1f} s on {self.device}; "
                 f"target `{self.target}`; {self.weights}."]
        for layer in self.layers:
            empty = int(self.samples[f"empty_map_{layer}"].sum())
            if empty:
                lines.append(
                    f"⚠ features.{layer}: {empty} of {n} maps are empty - nothing in those cubes raises the target at "
                    "this layer (Grad-CAM keeps positive evidence only; a cluster defined by weaker-than-average "
                    "responses gives such maps)."
                )
        lines += [f"⚠ {text}" for text in [*self.skipped_layers.values(), *self.explained]]
        outside = int((~self.valid.reshape(len(self.valid), -1)).any(axis=1).sum()) if len(self.valid) else 0
        lines.append(
            f"The summaries (attention vs structure, regions) count only voxels inside the volume ({outside} of {n} cubes "
            f"reach outside it: their padding is left out) and leave out a {self.ring}-voxel ring at the cube border, "
            "where the convolutions' zero padding creates attention of its own."
        )
        if "feature_match" in self.samples and (self.samples["feature_match"] < FEATURE_MATCH_MIN).any():
            worst = float(self.samples["feature_match"].min())
            lines.append(f"⚠ recomputed features differ from 03_extract's (cosine down to {worst:.3f}): were the cubes or weights changed?")
        if "unrotated_match" in self.samples and len(self.samples):
            lines.append(
                f"The explained (unrotated) cubes' features are at cosine {float(self.samples['unrotated_match'].min()):.3f} "
                "or more to the stored rotation-averaged ones; the lower, the more the average depends on the turns."
            )
        return "\n\n".join(lines)

    def clearest(self) -> int:
        """The first synapse with the fewest empty maps (the best one to show first)."""
        empty = self.samples[[f"empty_map_{layer}" for layer in self.layers]].sum(axis=1).to_numpy()
        return int(np.argmin(empty))

    def label(self, i: int) -> str:
        row = self.samples.iloc[i]
        where = f"cluster {row['cluster']} · " if "cluster" in row and str(row["cluster"]) not in ("", "nan") else ""
        return f"{where}{row[L.BBOX_COLUMN]} / {row[L.NAME_COLUMN]}"


def select_rows(study: Study, n_samples: int = 0) -> dict[str, list[int]]:
    """Feature-table rows to explain, grouped: each cluster's representatives (closest to the
    centroid, ``attention_per_cluster``), or ``n_samples`` seeded random synapses."""
    n_rows = len(study.features)
    usable = np.arange(n_rows)
    if study.target.kind == "cluster":
        usable = usable[study.labels >= 0]  # noise has no centroid
    if n_samples > 0:
        rng = np.random.default_rng(study.cfg.seed)
        pick = np.sort(rng.choice(usable, size=min(int(n_samples), len(usable)), replace=False))
        return {"sample": pick.tolist()}
    if study.labels is None or study.points is None:
        raise AttentionError("no clusters in this run (04_reduce/05_cluster have not run): give n_samples > 0 to explain random synapses")
    reps = representatives(study.points, study.labels, n=study.cfg.attention_per_cluster)
    return {f"cluster {k}": v for k, v in reps.items()}


def _explain_batches(study: "Study", inputs: np.ndarray, flat: list[int], batch_size: int, maps: np.ndarray,
                     scores: np.ndarray, peaks: np.ndarray, pooled: list, extra: dict, bar) -> None:
    """Fill ``maps``/``scores``/``peaks`` batch by batch (the arrays are written in place)."""
    n = len(flat)
    step = max(1, int(batch_size))
    for start in range(0, n, step):
        stop = min(n, start + step)
        x = torch.from_numpy(np.ascontiguousarray(inputs[start:stop])).unsqueeze(1)
        if study.input_range == "-1_1":
            x = x * 2.0 - 1.0
        batch_rows = flat[start:stop]
        s, m, p = gradcam(study.model.features, x, study.layers, lambda a: study.target.score(a, batch_rows), study.target.upto)
        scores[start:stop] = s
        peaks[start:stop] = p
        for j, layer in enumerate(study.layers):
            maps[start:stop, j] = m[layer]
        if study.target.last_pooled is not None:
            pooled.append(study.target.last_pooled)
        for k, v in study.target.last_extra.items():
            extra.setdefault(k, []).extend(v.tolist())
        bar.update(stop - start)


def explain(study: Study, rows: Sequence[int] | Mapping[str, Sequence[int]], batch_size: int = DEFAULT_BATCH_SIZE,
            show_progress: bool = True) -> AttentionResult:
    """Grad-CAM maps of ``study.target`` for the given feature-table rows (all layers at once)."""
    groups = dict(rows) if isinstance(rows, Mapping) else {"sample": list(rows)}
    flat = [int(r) for v in groups.values() for r in v]
    group_of = [g for g, v in groups.items() for _ in v]
    if not flat:
        raise AttentionError("no synapse to explain")
    if min(flat) < 0 or max(flat) >= len(study.features):
        raise IndexError(f"feature rows {flat} out of range for {len(study.features)} synapses")
    feats = study.features.iloc[flat].reset_index(drop=True)
    crow = cube_rows(study.cubes, feats)
    S = study.cubes.geometry.size
    inputs = render_rows(study.cubes, study.cfg, crow)  # exactly what 03_extract rendered, in [0, 1]
    bits = np.asarray(study.cubes.bits[crow])
    table = study.cubes.table
    valid = np.stack([inside_volume(S, table.iloc[r]) for r in crow])
    n, nl = len(flat), len(study.layers)
    maps = np.zeros((n, nl, S, S, S), dtype=np.float32)
    scores = np.zeros(n)
    peaks = np.zeros((n, nl), dtype=np.float32)
    pooled: list[np.ndarray] = []
    extra: dict[str, list] = {}
    study.model.to(study.device)  # in place; the target's head (a part of the model) moves with it
    t0 = time.perf_counter()
    bar = progress(total=n, desc="Grad-CAM", unit="syn", enabled=show_progress)
    # batch 1: keeping freed buffers saves ~1 s of page faults per cube for +0.2 GB; at batch 8
    # it measured slower and +2 GB, so larger batches use plain malloc (bench_attention.py).
    # Host heap tuning only matters when the activations live in host memory (the CPU).
    reuse = int(batch_size) == 1 and study.device.type == "cpu"
    with reuse_large_allocations() if reuse else contextlib.nullcontext():
        _explain_batches(study, inputs, flat, batch_size, maps, scores, peaks, pooled, extra, bar)
    bar.close()
    seconds = time.perf_counter() - t0
    samples = feats[[col for col in (L.BBOX_COLUMN, L.NAME_COLUMN) if col in feats.columns]].copy()
    samples.insert(0, "feature_row", flat)
    samples["cube_row"] = crow
    samples["group"] = group_of
    if study.labels is not None:
        samples["cluster"] = [str(int(study.labels[r])) if study.labels[r] >= 0 else "noise" for r in flat]
    samples["target"] = study.target.kind
    samples["score"] = scores
    for k, v in extra.items():
        samples[k] = v
    explained: list[str] = []
    if study.target.kind == "cluster" and study.space is not None:
        samples["clustered_on"] = study.space.feature_set
        if study.space.feature_set != "deep":
            explained.append(
                f"clusters were made on the {study.space.feature_set} feature set: `score` is the similarity of the "
                "network's features to the cluster's network-feature centroid, not of the descriptors"
            )
    turns = int(getattr(study.cfg, "rotation_averaging", 1) or 1)
    if pooled and study.target.kind != "logit":
        # the features recomputed here against those 03_extract stored: same cube, same network?
        from ..features.extract import feature_columns

        new = np.concatenate(pooled).astype(np.float64)
        old = feats[feature_columns(feats)].to_numpy(np.float64)
        if old.shape == new.shape:
            if turns > 1:
                samples["unrotated_match"] = _row_cosine(new, old)
                new = rotation_averaged_features(study, inputs, crow).astype(np.float64)
            samples["feature_match"] = _row_cosine(new, old)
    if turns > 1 and study.target.kind != "logit":
        explained.append(f"Grad-CAM explains the unrotated cube; 03_extract averaged the features over {turns} rotations")
    for j, layer in enumerate(study.layers):
        samples[f"empty_map_{layer}"] = peaks[:, j] <= 0
    samples["weights"] = weights_tag(study.weights)
    logger.info("Grad-CAM of %d synapses x %d layers in %.1f s (%s target)", n, nl, seconds, study.target.kind)
    return AttentionResult(
        samples, list(study.layers), maps, inputs, bits, valid, study.target.kind, study.weights,
        study.cfg.attention_threshold, tuple(study.cubes.voxel_size_nm), dict(study.skipped_layers), seconds,
        border_ring_width(S), explained, describe_device(study.device),
    )


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` with the same row of ``b`` (NaN where a row is zero)."""
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def rotation_averaged_features(study: Study, inputs: np.ndarray, cube_rows_: Sequence[int]) -> np.ndarray:
    """Features of rendered ``inputs`` (n, S, S, S) averaged over rotations as 03_extract made them.

    Forward passes only (``rotation_averaging`` per cube, about each synapse's cleft-normal axis
    from rows ``cube_rows_`` of the cube table), float32: the reference the stored features are
    checked against when Grad-CAM explains the unrotated cube.
    """
    from ..cubes.rendering import cleft_normal_axes
    from ..features.extract import FeatureExtractor

    c = study.cfg
    extractor = FeatureExtractor(
        study.model, method=c.extraction_method, layer_num=c.layer_num, pooling=c.pooling_method, batch_size=1,
        precision="float32", input_range=study.input_range, num_threads=torch.get_num_threads(), progress=False,
        rotations=int(c.rotation_averaging), device=study.device,
    )
    axes = cleft_normal_axes(study.cubes.table.iloc[list(cube_rows_)])
    return extractor(np.ascontiguousarray(inputs, dtype=np.float32), rotation_axes=axes)


# --------------------------------------------------------------------------------------
# attention vs structure, and where attention concentrates
# --------------------------------------------------------------------------------------
PAD_COLUMNS: tuple[str, ...] = tuple(f"pad_{a}_{side}" for a in "zyx" for side in ("before", "after"))


def inside_volume(size: int, row: Mapping) -> np.ndarray:
    """(S, S, S) True where the cube of one cube-table ``row`` holds data from the volume.

    The one place the summaries learn a cube's valid region: :func:`valid_mask_from_pads`,
    which also knows oriented cubes (``oriented`` rows). Rows with neither ``pad_*`` entries
    nor an orientation (cubes built before padding was recorded) count as wholly inside.
    """
    getter = getattr(row, "get", None)
    flag = getter("oriented", False) if callable(getter) else False
    oriented = isinstance(flag, (bool, np.bool_)) and bool(flag)  # NaN (mixed tables): not oriented
    if not oriented and not all(c in row for c in PAD_COLUMNS):
        return np.ones((size,) * 3, dtype=bool)
    return valid_mask_from_pads(size, row)


def border_ring_width(size: int) -> int:
    """:data:`BORDER_RING_VOXELS` scaled to a cube of ``size``^3, rounded (at least 1, at
    most a quarter of the cube so that its centre is always counted): 1 at 16^3, 2 at 32^3,
    4 at 80^3."""
    size = int(size)
    if size < 1:
        raise ValueError(f"cube size must be >= 1, got {size}")
    width = int(np.floor(BORDER_RING_VOXELS * size / BORDER_RING_REFERENCE_SIZE + 0.5))
    return min(max(1, width), size // 4)


def counted_voxels(valid: np.ndarray, ring: int) -> np.ndarray:
    """``valid`` without a border ring ``ring`` voxels wide: the voxels the summaries count."""
    valid = np.asarray(valid, dtype=bool)
    ring = int(ring)
    if ring < 0:
        raise ValueError(f"border ring width must be >= 0, got {ring}")
    inner = np.zeros_like(valid)
    inner[tuple(slice(ring, max(ring, n - ring)) for n in valid.shape)] = True
    return valid & inner


def structure_masks(bits: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of :data:`STRUCTURES` from structure bits (same shape as ``bits``)."""
    bits = np.asarray(bits)
    return {name: (bits & np.uint8(bit)) != 0 for name, bit in STRUCTURES.items()}


def overlap_metrics(att_map: np.ndarray, mask: np.ndarray, valid: np.ndarray, threshold: float) -> dict[str, float]:
    """Dice, IoU and mean attention inside/outside ``mask`` over the valid voxels."""
    m = mask & valid
    n_valid = int(valid.sum())
    attended = (att_map >= threshold) & valid
    n_m, n_a = int(m.sum()), int(attended.sum())
    out = {"mask_voxels": n_m, "mask_fraction": n_m / max(n_valid, 1), "attended_fraction": n_a / max(n_valid, 1)}
    if n_m == 0:
        return {**out, "dice": np.nan, "iou": np.nan, "inside": np.nan, "outside": np.nan, "inside_outside_ratio": np.nan}
    inter = int((attended & m).sum())
    union = n_a + n_m - inter
    outside_mask = valid & ~m
    inside = float(att_map[m].mean())
    outside = float(att_map[outside_mask].mean()) if outside_mask.any() else np.nan
    ratio = inside / outside if outside and outside > 0 else np.nan
    return {**out, "dice": 2 * inter / (n_a + n_m), "iou": inter / union, "inside": inside, "outside": outside, "inside_outside_ratio": ratio}


def overlap_table(result: AttentionResult, threshold: float | None = None) -> pd.DataFrame:
    """One row per synapse x layer x structure (see :func:`overlap_metrics`), over the counted
    voxels of each cube (:meth:`AttentionResult.counted`: no padding, no border ring)."""
    thr = result.threshold if threshold is None else float(threshold)
    rows = []
    for i in range(len(result.samples)):
        masks = structure_masks(result.bits[i])
        region = result.counted(i)
        ident = result.samples.iloc[i]
        for j, layer in enumerate(result.layers):
            for name, mask in masks.items():
                rows.append({
                    "feature_row": int(ident["feature_row"]), L.BBOX_COLUMN: ident.get(L.BBOX_COLUMN),
                    L.NAME_COLUMN: ident.get(L.NAME_COLUMN), "cluster": ident.get("cluster"), "layer": layer,
                    "structure": name, "threshold": thr, "border_ring_voxels": result.ring,
                    **overlap_metrics(result.maps[i, j], mask, region, thr),
                })
    return pd.DataFrame(rows)


def overlap_summary(overlap: pd.DataFrame, weights: str = "") -> pd.DataFrame:
    """Per layer x structure: mean Dice/IoU/inside/outside over the synapses that have the structure."""
    present = overlap[overlap["mask_voxels"] > 0]
    cols = ["dice", "iou", "inside", "outside", "inside_outside_ratio", "mask_fraction", "attended_fraction"]
    summary = present.groupby(["layer", "structure"], sort=False)[cols].mean()
    summary["n_synapses"] = present.groupby(["layer", "structure"], sort=False).size()
    order = list(STRUCTURES)
    summary = summary.reindex(pd.MultiIndex.from_product([sorted(overlap["layer"].unique()), order], names=["layer", "structure"]))
    summary["n_synapses"] = summary["n_synapses"].fillna(0).astype(int)
    out = summary.reset_index()
    if "border_ring_voxels" in overlap.columns and len(overlap):
        out["border_ring_voxels"] = int(overlap["border_ring_voxels"].max())
    if weights:
        out["weights"] = weights_tag(weights)
    return out


def most_attended(summary: pd.DataFrame) -> pd.DataFrame:
    """Per layer of an :func:`overlap_summary`: the structure with the highest mean
    inside/outside ratio, or an empty ``structure`` when no ratio is above 1 (a structure
    attended no more than its surroundings is never named). Columns: layer, structure,
    inside_outside_ratio (the best ratio, NaN when none is defined), n_synapses."""
    need = {"layer", "structure", "inside_outside_ratio"}
    missing = sorted(need - set(summary.columns))
    if missing:
        raise ValueError(f"the attention summary lacks column(s) {missing}: make it with overlap_summary (06_attention)")
    rows = []
    for layer, sub in summary.groupby("layer", sort=True):
        ok = sub[np.isfinite(pd.to_numeric(sub["inside_outside_ratio"], errors="coerce").to_numpy(float))]
        if "n_synapses" in ok.columns:
            ok = ok[ok["n_synapses"] > 0]
        best = ok.sort_values("inside_outside_ratio", ascending=False, kind="stable").head(1)
        ratio = float(best["inside_outside_ratio"].iloc[0]) if len(best) else float("nan")
        named = len(best) > 0 and ratio > 1.0
        rows.append({"layer": int(layer), "structure": str(best["structure"].iloc[0]) if named else "",
                     "inside_outside_ratio": ratio,
                     "n_synapses": int(best["n_synapses"].iloc[0]) if len(best) and "n_synapses" in best else 0})
    return pd.DataFrame(rows, columns=["layer", "structure", "inside_outside_ratio", "n_synapses"])


def most_attended_text(summary: pd.DataFrame) -> str:
    """``features.3: vesicle (2.50x inside vs outside); features.20: no structure attended more
    than its surroundings`` - the per-layer verdict of :func:`most_attended` in words."""
    parts = []
    for r in most_attended(summary).itertuples():
        if r.structure:
            parts.append(f"features.{r.layer}: {r.structure} ({r.inside_outside_ratio:.2f}x inside vs outside)")
        else:
            best = f" (best ratio {r.inside_outside_ratio:.2f})" if np.isfinite(r.inside_outside_ratio) else ""
            parts.append(f"features.{r.layer}: {NO_ATTENDED_STRUCTURE}{best}")
    return "; ".join(parts)


def summary_markdown(summary: pd.DataFrame) -> str:
    """The attention-vs-structure verdict for the notebook and the report (markdown)."""
    text = most_attended_text(summary)
    if not text:
        return "No attention summary: no layer was explained."
    ring = (f" and a {int(summary['border_ring_voxels'].iloc[0])}-voxel ring at the cube border"
            if "border_ring_voxels" in summary.columns and len(summary) else "")
    return (f"**Most attended structure per layer** (mean attention inside vs outside the structure; a structure is "
            f"named only when the ratio is above 1; padding outside the volume{ring} left out): {text}.")


def top_regions(result: AttentionResult, n_regions: int = 3, threshold: float | None = None) -> pd.DataFrame:
    """Connected regions (6-connected) of each layer's mean map at or above ``threshold`` x its
    maximum, largest total attention first: where attention concentrates across synapses.
    The mean map counts only the counted voxels (:meth:`AttentionResult.counted_mean_maps`: no
    padding, no border ring), so a region is never made of padding artefacts.
    Offsets are from the cube centre (the cleft, for the default crop), z, y, x."""
    from scipy import ndimage

    thr = result.threshold if threshold is None else float(threshold)
    mean = result.counted_mean_maps()
    S = mean.shape[-1]
    center = np.array([S // 2] * 3, dtype=float)
    vox = np.asarray(result.voxel_size_nm, dtype=float)
    rows = []
    for j, layer in enumerate(result.layers):
        m = mean[j]
        peak = float(m.max())
        if peak <= 0:
            continue
        lab, n = ndimage.label(m >= thr * peak)
        idx = np.arange(1, n + 1)
        total = ndimage.sum_labels(m, lab, idx)
        for rank, k in enumerate(idx[np.argsort(-total)][:n_regions], start=1):
            where = lab == k
            com = np.array(ndimage.center_of_mass(m, lab, k))
            off = com - center
            rows.append({
                "layer": layer, "region": rank, "voxels": int(where.sum()), "share_of_attention": float(m[where].sum() / m.sum()),
                "peak": float(m[where].max() / peak), "center_z": com[0], "center_y": com[1], "center_x": com[2],
                "offset_z_nm": off[0] * vox[0], "offset_y_nm": off[1] * vox[1], "offset_x_nm": off[2] * vox[2],
                "distance_from_center_nm": float(np.linalg.norm(off * vox)),
            })
    out = pd.DataFrame(rows)
    if len(out):
        out["weights"] = weights_tag(result.weights)
    return out
