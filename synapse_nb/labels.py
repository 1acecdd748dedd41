"""Single source of truth for label ids, segmentation types and table column names.

Every other module imports these names instead of repeating literals, so a change to the
data contract (SPEC 3.1, 4) happens in exactly one place.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

# --- synapse table columns (seed layout, SPEC 3.1) -------------------------------------
NAME_COLUMN = "Var1"
CENTER_COLUMNS = ("central_coord_1", "central_coord_2", "central_coord_3")  # x, y, z
SIDE1_COLUMNS = ("side_1_coord_1", "side_1_coord_2", "side_1_coord_3")  # x, y, z
SIDE2_COLUMNS = ("side_2_coord_1", "side_2_coord_2", "side_2_coord_3")  # x, y, z
REQUIRED_TABLE_COLUMNS = (NAME_COLUMN, *CENTER_COLUMNS, *SIDE1_COLUMNS, *SIDE2_COLUMNS)
BBOX_COLUMN = "bbox"
#: Ground-truth class column written by the demo generator (absent in real data).
DEMO_CLASS_COLUMN = "synapse_class"


@dataclass(frozen=True)
class LabelIds:
    """Integer ids of the structures in one bbox's extra label volume."""

    mito: int
    vesicle: int
    cleft: int
    cleft2: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


#: The seed's per-bbox label ids (SPEC 3.1). bbox1/bbox6 values are also the default.
DEFAULT_LABEL_IDS = LabelIds(mito=5, vesicle=6, cleft=7, cleft2=7)
SEED_LABEL_TABLE: dict[str, LabelIds] = {
    "bbox1": DEFAULT_LABEL_IDS,
    "bbox2": LabelIds(mito=1, vesicle=3, cleft=2, cleft2=4),
    "bbox3": LabelIds(mito=6, vesicle=7, cleft=9, cleft2=8),
    "bbox4": LabelIds(mito=3, vesicle=2, cleft=1, cleft2=4),
    "bbox5": LabelIds(mito=1, vesicle=3, cleft=2, cleft2=4),
    "bbox6": DEFAULT_LABEL_IDS,
    "bbox7": LabelIds(mito=1, vesicle=2, cleft=4, cleft2=3),
}


def label_ids_for(bbox: str, table: Mapping[str, LabelIds] | None = None) -> LabelIds:
    """Label ids for ``bbox``; unknown bboxes get the seed's default (bbox1) ids."""
    table = SEED_LABEL_TABLE if table is None else table
    return table.get(bbox, table.get("default", DEFAULT_LABEL_IDS))


def mask_folder_name(bbox: str) -> str:
    """The seed stores extra labels of ``bbox3`` under ``bbox_3`` (SPEC 3.1)."""
    prefix = "bbox"
    if bbox.startswith(prefix) and bbox[len(prefix):].isdigit():
        return f"{prefix}_{bbox[len(prefix):]}"
    return bbox


# --- segmentation types (SPEC 4) --------------------------------------------------------
SEGMENTATION_TYPES: dict[int, str] = {
    0: "raw: the whole cube",
    1: "presynaptic segment",
    2: "postsynaptic segment",
    3: "pre + post segments",
    4: "closest vesicle cloud + closest cleft + closest cleft2",
    5: "pre + post + closest vesicle cloud + closest cleft",
    6: "closest vesicle cloud",
    7: "closest cleft + cleft2",
    8: "closest mitochondrion",
    9: "closest vesicle cloud + closest cleft",
    10: "closest cleft + presynaptic segment",
    11: "(closest cleft + presynaptic segment) minus mitochondria dilated by 2 voxels",
}

# Structure bits stored per voxel of a cube (see synapse_nb.cubes). One uint8 holds all of
# them, so any segmentation type and alpha can be rendered from one stored cube.
BIT_PRE = 1 << 0
BIT_POST = 1 << 1
BIT_VESICLE = 1 << 2  # closest vesicle-cloud component
BIT_CLEFT = 1 << 3  # closest cleft component
BIT_CLEFT2 = 1 << 4  # closest cleft2 component
BIT_MITO = 1 << 5  # closest mitochondrion component
BIT_MITO_ANY = 1 << 6  # every mitochondrion voxel in the cube

#: Union of structure bits that makes up each segmentation type's mask (type 0 = all,
#: type 11 subtracts dilated BIT_MITO_ANY and is special-cased in synapse_nb.cubes).
SEGTYPE_BITS: dict[int, int] = {
    1: BIT_PRE,
    2: BIT_POST,
    3: BIT_PRE | BIT_POST,
    4: BIT_VESICLE | BIT_CLEFT | BIT_CLEFT2,
    5: BIT_PRE | BIT_POST | BIT_VESICLE | BIT_CLEFT,
    6: BIT_VESICLE,
    7: BIT_CLEFT | BIT_CLEFT2,
    8: BIT_MITO,
    9: BIT_VESICLE | BIT_CLEFT,
    10: BIT_CLEFT | BIT_PRE,
    11: BIT_CLEFT | BIT_PRE,
}
MITO_DILATION_TYPE11 = 2
