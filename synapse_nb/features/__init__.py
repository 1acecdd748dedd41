"""The VGG3D network, checkpoint loading, the fast inference trunk and feature extraction."""

from __future__ import annotations

from .checkpoint import (
    CheckpointError,
    ModelInfo,
    build_model,
    check_state_dict,
    load_checkpoint,
)
from .devices import DEVICE_CHOICES, DeviceError, autocast, cpu_has_native_bf16, describe_device, resolve_device
from .extract import (
    ROTATIONS,
    CubeSource,
    FeatureExtractor,
    FeatureResult,
    available_cores,
    describe,
    feature_columns,
    feature_dim,
    feature_name,
    features_frame,
    pool_features,
    resolve_input_range,
    rotate_cube,
    seed_csv_name,
)
from .inference import InferenceTrunk, fold_batchnorm, reuse_large_allocations
from .vgg3d import VGG3D, count_parameters, init_random

__all__ = [
    "DEVICE_CHOICES",
    "DeviceError",
    "autocast",
    "cpu_has_native_bf16",
    "describe_device",
    "resolve_device",
    "ROTATIONS",
    "CheckpointError",
    "CubeSource",
    "FeatureExtractor",
    "FeatureResult",
    "InferenceTrunk",
    "ModelInfo",
    "VGG3D",
    "available_cores",
    "build_model",
    "check_state_dict",
    "count_parameters",
    "describe",
    "feature_columns",
    "feature_dim",
    "feature_name",
    "features_frame",
    "fold_batchnorm",
    "init_random",
    "load_checkpoint",
    "pool_features",
    "resolve_input_range",
    "reuse_large_allocations",
    "rotate_cube",
    "seed_csv_name",
]
