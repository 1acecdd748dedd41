"""Single source of truth for label ids, segmentation types and table column names.

Every other module imports these names instead of repeating literals, so a change to the
data contract (the seed's folder and table layout, the segmentation types; see the README)
happens in exactly one place.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

# --- synapse table columns (seed layout) -----------------------------------------------
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


#: The seed's per-bbox label ids. bbox1/bbox6 values are also the default.
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
    """The seed stores extra labels of ``bbox3`` under ``bbox_3``."""
    prefix = "bbox"
    if bbox.startswith(prefix) and bbox[len(prefix):].isdigit():
        return f"{prefix}_{bbox[len(prefix):]}"
    return bbox


# --- segmentation types ----------------------------------------------------------------
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


# --- table columns (configurable for other datasets) -----------------------------------
@dataclass(frozen=True)
class TableColumns:
    """Column names of a synapse table; the seed's names by default.

    Tables are renamed to the seed's names on reading, so the rest of the package only
    ever sees :data:`NAME_COLUMN`, :data:`CENTER_COLUMNS` ...
    """

    name: str = NAME_COLUMN
    center: tuple[str, str, str] = CENTER_COLUMNS  # x, y, z
    side1: tuple[str, str, str] = SIDE1_COLUMNS
    side2: tuple[str, str, str] = SIDE2_COLUMNS

    def required(self) -> tuple[str, ...]:
        return (self.name, *self.center, *self.side1, *self.side2)

    def to_canonical(self) -> dict[str, str]:
        """Rename map: this table's names -> the seed's names."""
        return dict(zip(self.required(), REQUIRED_TABLE_COLUMNS))


SEED_COLUMNS = TableColumns()


# --- what each segmentation type needs from a dataset -----------------------------------
SEGMENTATION_TYPE_SHORT: dict[int, str] = {
    0: "raw",
    1: "pre",
    2: "post",
    3: "pre + post",
    4: "vesicle + cleft + cleft2",
    5: "pre + post + vesicle + cleft",
    6: "vesicle",
    7: "cleft + cleft2",
    8: "mitochondrion",
    9: "vesicle + cleft",
    10: "cleft + pre",
    11: "cleft + pre - mitochondria",
}


@dataclass(frozen=True)
class TypeNeeds:
    """What a segmentation type needs from a dataset.

    ``partners``: the two partner segments (a neurite segmentation and side points); their
    union (type 3) does not depend on which one is presynaptic. ``decided``: which partner
    is presynaptic, decided by overlap with the vesicle cloud, so it also needs a
    vesicle-cloud label.
    """

    partners: bool = False
    decided: bool = False
    vesicle: bool = False
    cleft: bool = False
    cleft2: bool = False
    mito: bool = False


SEGTYPE_NEEDS: dict[int, TypeNeeds] = {
    0: TypeNeeds(),
    1: TypeNeeds(partners=True, decided=True),
    2: TypeNeeds(partners=True, decided=True),
    3: TypeNeeds(partners=True),
    4: TypeNeeds(vesicle=True, cleft=True, cleft2=True),
    5: TypeNeeds(partners=True, vesicle=True, cleft=True),
    6: TypeNeeds(vesicle=True),
    7: TypeNeeds(cleft=True, cleft2=True),
    8: TypeNeeds(mito=True),
    9: TypeNeeds(vesicle=True, cleft=True),
    10: TypeNeeds(partners=True, decided=True, cleft=True),
    11: TypeNeeds(partners=True, decided=True, cleft=True, mito=True),
}

_LABEL_WORDS = {"vesicle": "a vesicle-cloud label", "cleft": "a cleft label", "cleft2": "a second cleft label (cleft2)", "mito": "a mitochondria label"}


@dataclass(frozen=True)
class DataCapabilities:
    """What one bbox provides: label ids (0 = not annotated), seg/mask volumes, side points."""

    label_ids: LabelIds
    has_seg: bool = True
    has_mask: bool = True
    has_sides: bool = True


def missing_for_type(segmentation_type: int, caps: DataCapabilities) -> list[tuple[str, str]]:
    """(what is needed, what the data has instead) for each unmet need; empty = supported."""
    needs = SEGTYPE_NEEDS[int(segmentation_type)]
    out: list[tuple[str, str]] = []
    if needs.partners:
        if not caps.has_seg:
            out.append(("a neurite segmentation (seg)", "no seg volume"))
        if not caps.has_sides:
            out.append(("side points", "the side columns are empty"))
    labels = [k for k in ("vesicle", "cleft", "cleft2", "mito") if getattr(needs, k) or (k == "vesicle" and needs.decided)]
    for k in labels:
        if not caps.has_mask:
            out.append((_LABEL_WORDS[k], "no mask volume"))
        elif int(getattr(caps.label_ids, k)) == 0:
            out.append((_LABEL_WORDS[k], f"labels.{k}: 0"))
    return out


def supported_types(caps: DataCapabilities) -> list[int]:
    """Segmentation types a bbox with these capabilities can serve."""
    return [t for t in SEGMENTATION_TYPES if not missing_for_type(t, caps)]
