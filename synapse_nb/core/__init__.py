"""Shared ground: parameters, label ids and segmentation types, errors, atomic writes, progress bars,
notebook setup, and the VGG3D layer layout (without torch).
"""

from __future__ import annotations

from .atomic import atomic_dir, atomic_path, write_text
from .config import (
    Config,
    ConfigError,
    from_namespace,
    load_config,
    make_config,
    read_yaml,
    save_config,
)
from .errors import DataError, validate_name
from .labels import (
    DataCapabilities,
    LabelIds,
    TableColumns,
    TypeNeeds,
    label_ids_for,
    mask_folder_name,
    missing_for_type,
    supported_types,
)
from .layers import (
    layer_channels,
    layer_description,
    layer_downscale,
    layer_output_size,
    validate_layer,
)
from .notebook import (
    configure_logging,
    find_project_root,
    markdown_safe,
    say,
    seed_everything,
    setup,
)
from .progress_bars import in_batch, progress

__all__ = [
    "Config",
    "ConfigError",
    "DataCapabilities",
    "DataError",
    "LabelIds",
    "TableColumns",
    "TypeNeeds",
    "atomic_dir",
    "atomic_path",
    "configure_logging",
    "find_project_root",
    "from_namespace",
    "in_batch",
    "label_ids_for",
    "layer_channels",
    "layer_description",
    "layer_downscale",
    "layer_output_size",
    "load_config",
    "make_config",
    "markdown_safe",
    "mask_folder_name",
    "missing_for_type",
    "progress",
    "read_yaml",
    "save_config",
    "say",
    "seed_everything",
    "setup",
    "supported_types",
    "validate_layer",
    "validate_name",
    "write_text",
]
