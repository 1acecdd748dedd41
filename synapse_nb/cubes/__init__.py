"""One cube per synapse: crop geometry, the pre/post decision, structure bits, rendering to network
input, morphometrics and the cube store. The rules are explained in ``docs/cubes.md``.
"""

from __future__ import annotations

from .build import SynapseCube, build_cubes, build_synapse
from .components import closest_component, dilate6
from .geometry import (
    CROP_MODES,
    CropBox,
    CubeGeometry,
    CubeGrid,
    SynapseError,
    bbox_grid,
    check_points,
    crop_centre,
    valid_mask_from_pads,
)
from .morphometry import (
    MORPHOMETRIC_VOXEL_KEYS,
    SIZE_COLUMNS,
    add_physical_units,
    cleft_area,
    morphometrics,
)
from .prepost import PartnerSides, PrePost, check_sides, decide_pre_post
from .rendering import (
    RenderedView,
    RenderSettings,
    check_segmentation_type,
    render,
    segmentation_mask,
)
from .store import CubeSet

__all__ = [
    "CROP_MODES",
    "MORPHOMETRIC_VOXEL_KEYS",
    "SIZE_COLUMNS",
    "CropBox",
    "CubeGeometry",
    "CubeGrid",
    "CubeSet",
    "PartnerSides",
    "PrePost",
    "RenderSettings",
    "RenderedView",
    "SynapseCube",
    "SynapseError",
    "add_physical_units",
    "bbox_grid",
    "build_cubes",
    "build_synapse",
    "check_points",
    "check_segmentation_type",
    "check_sides",
    "cleft_area",
    "closest_component",
    "crop_centre",
    "decide_pre_post",
    "dilate6",
    "morphometrics",
    "render",
    "segmentation_mask",
    "valid_mask_from_pads",
]
