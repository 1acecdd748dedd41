"""Self-supervised (SimCLR) pretraining of the VGG3D trunk on the user's own synapse cubes."""

from __future__ import annotations

from .augment import (
    AugmentSettings,
    ResampledCubes,
    augmentation_examples,
    build_transform,
    derive_seed,
    resample_cubes,
    two_views,
)
from .contrastive import PROJECTION_DIM, ContrastiveEncoder, ProjectionHead, nt_xent_loss, resolve_upto, view_agreement
from .pretrain import (
    HISTORY_FILE,
    METHOD,
    PRETRAINING_KEY,
    STATE_FILE,
    WEIGHTS_FILE,
    PretrainResult,
    PretrainSettings,
    pretrain,
    read_history,
    upto_for,
)

__all__ = [
    "AugmentSettings",
    "ContrastiveEncoder",
    "HISTORY_FILE",
    "METHOD",
    "PRETRAINING_KEY",
    "PROJECTION_DIM",
    "PretrainResult",
    "PretrainSettings",
    "ProjectionHead",
    "ResampledCubes",
    "STATE_FILE",
    "WEIGHTS_FILE",
    "augmentation_examples",
    "build_transform",
    "derive_seed",
    "nt_xent_loss",
    "pretrain",
    "read_history",
    "resample_cubes",
    "resolve_upto",
    "two_views",
    "upto_for",
    "view_agreement",
]
