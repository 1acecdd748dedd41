"""Getting data in: volumes, synapse tables and the bboxes built from them.

Modules, from the bottom up:

- ``slices``, ``volumes``: lazy (z, y, x) readers (folders of 2-D slices; HDF5, zarr, N5,
  TIFF, webKnossos datasets, neuroglancer precomputed) and per-window resampling to the target
  voxel size;
- ``tables``: the synapse table reader;
- ``bbox``: :class:`BboxData`, one bbox as every later stage sees it;
- ``seed_layout``: the original tool's folder layout;
- ``description``: dataset description YAML files and what a dataset can serve;
- ``datasets``: :func:`open_dataset`, the one entry that opens either, and a summary table;
- ``agglomerates``: the lazy segment -> agglomerate mapping of an HDF5 file;
- ``connectome``: connectome description YAML files: a whole dataset (a synapse table of any
  size, chunked layers, agglomerates) opened as one lazy bbox with virtual seg and mask;
- ``demo``, ``vnc``: writers of the synthetic demo dataset (presets in ``demo_presets``) and of
  the converted real VNC stack;
- ``synthetic_connectome``: :func:`make_synthetic_connectome`, a large chunked synthetic
  connectome (zarr + webKnossos, agglomerates, cleft prediction, synapse tables, descriptions).

The public functions and classes are re-exported here and listed in ``__all__``.
"""

from __future__ import annotations

from .agglomerates import AgglomerateMapping
from .bbox import BboxData
from .connectome import (
    CLEFT_LABEL,
    Connectome,
    ConnectomeDescription,
    ConnectomeSpec,
    MappedSegmentation,
    VirtualMask,
    is_connectome_description,
    load_connectome_description,
    open_connectome,
)
from .datasets import dataset_summary, open_dataset
from .demo import (
    DEMO_PRESETS,
    HARD_CLASS_NAMES,
    DemoSpec,
    bbox_names,
    bbox_nuisance,
    demo_spec,
    make_demo_dataset,
    plan_demo_table,
    preset_class_names,
)
from .description import (
    BboxSpec,
    ColumnNames,
    DatasetDescription,
    LabelSpec,
    LoadedDescription,
    VolumeSource,
    capabilities_table,
    dataset_name,
    describe,
    description_stamp,
    is_description,
    load_dataset_description,
    open_bbox,
    open_dataset_description,
    refused_types,
    require_crop_mode,
    require_segmentation_type,
    supported_types,
)
from .seed_layout import discover_bboxes, open_seed_bbox, open_seed_dataset
from .slices import SliceStack, list_slices
from .tables import has_side_points, read_synapse_table
from .synthetic_connectome import SyntheticConnectome, make_synthetic_connectome
from .viewers import check_viewer, link_html, viewer_link, viewer_links
from .vnc import (
    VncSettings,
    VncStack,
    component_centres,
    convert_vnc,
    dataset_description,
    estimate_sides,
    label_mask,
    neurite_ids,
    read_stack,
    source_files,
    synapse_components,
    synapse_table,
)
from .volumes import (
    ResampledVolume,
    Volume,
    detect_format,
    native_to_target,
    needs_resampling,
    open_volume,
    resampled_shape,
    target_to_native,
)

__all__ = [
    "CLEFT_LABEL",
    "AgglomerateMapping",
    "Connectome",
    "ConnectomeDescription",
    "ConnectomeSpec",
    "MappedSegmentation",
    "VirtualMask",
    "is_connectome_description",
    "load_connectome_description",
    "open_connectome",
    "DEMO_PRESETS",
    "HARD_CLASS_NAMES",
    "BboxData",
    "BboxSpec",
    "ColumnNames",
    "DatasetDescription",
    "DemoSpec",
    "LabelSpec",
    "LoadedDescription",
    "ResampledVolume",
    "SliceStack",
    "SyntheticConnectome",
    "VncSettings",
    "VncStack",
    "Volume",
    "VolumeSource",
    "bbox_names",
    "bbox_nuisance",
    "capabilities_table",
    "check_viewer",
    "component_centres",
    "convert_vnc",
    "dataset_description",
    "dataset_name",
    "dataset_summary",
    "demo_spec",
    "describe",
    "description_stamp",
    "detect_format",
    "discover_bboxes",
    "estimate_sides",
    "has_side_points",
    "is_description",
    "label_mask",
    "link_html",
    "list_slices",
    "load_dataset_description",
    "make_demo_dataset",
    "make_synthetic_connectome",
    "native_to_target",
    "needs_resampling",
    "neurite_ids",
    "open_bbox",
    "open_dataset",
    "open_dataset_description",
    "open_seed_bbox",
    "open_seed_dataset",
    "open_volume",
    "plan_demo_table",
    "preset_class_names",
    "read_stack",
    "read_synapse_table",
    "refused_types",
    "require_crop_mode",
    "require_segmentation_type",
    "resampled_shape",
    "source_files",
    "supported_types",
    "synapse_components",
    "synapse_table",
    "target_to_native",
    "viewer_link",
    "viewer_links",
]
