"""Which partner of a synapse is presynaptic.

A synapse table names two side points, one in each partner neurite, but not which one sends.
This module decides it from the segments under the side points and the vesicle cloud closest
to the cleft, and records every doubt as a reason (a synapse with reasons is flagged
``ambiguous``). It only looks at label windows already read (:class:`.geometry.LabelWindows`).
The rules (overlap, tie breaking, missing data) are explained in ``docs/cubes.md``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..core import labels as L
from .components import closest_component
from .geometry import LabelWindows, SynapseError, fmt_xyz

logger = logging.getLogger(__name__)

FAR_SIDE_FRACTION = 0.5
"""A side point farther from the cleft centre than this fraction of the cube edge is flagged.

Half the edge is the radius of the ball that fits in the cleft-centred decision box: such a
point lies outside the region the pre/post decision and the cube look at in at least one
direction (320 nm for the default 80-voxel cube at 8 nm). Annotators place side points just
across the cleft, a few tens of voxels at most, so a point that far more likely names
another neurite."""

#: Reason words that mean the pre side was picked by convention, not read from the data.
BY_CONVENTION = "by convention"
#: Reason of every synapse of a dataset without a vesicle-cloud label: no side can be told presynaptic.
NO_VESICLE_LABEL = "no vesicle-cloud label in this dataset"
_UNDECIDED_REASONS = (BY_CONVENTION, NO_VESICLE_LABEL)


@dataclass(frozen=True, eq=False)
class PartnerSides:
    """The two side points ((z, y, x) voxels, None = not given) and the segment id under each."""

    point1: np.ndarray | None
    point2: np.ndarray | None
    id1: int  # 0: background, or no point / no segmentation
    id2: int


@dataclass(frozen=True, eq=False)
class PrePost:
    """Outcome of the pre/post decision of one synapse."""

    pre_side: int  # 1 or 2; 0 when neither side lies on a neurite
    sides: PartnerSides
    overlap1: int  # voxels of side 1's segment inside the closest vesicle cloud
    overlap2: int
    vesicle: np.ndarray  # the closest vesicle cloud (bool, in the decision box)
    reasons: tuple[str, ...]  # doubts met while deciding (empty: a clear case)

    @property
    def pre_id(self) -> int:
        return {1: self.sides.id1, 2: self.sides.id2}.get(self.pre_side, 0)

    @property
    def post_id(self) -> int:
        return {1: self.sides.id2, 2: self.sides.id1}.get(self.pre_side, 0)


def check_sides(where: str, sides: PartnerSides, has_seg: bool) -> list[str]:
    """Reasons for doubt about the side points; :class:`SynapseError` when no decision is possible.

    Both points on background, or both in the same segment, cannot be decided. A missing
    point, a point on background, or no segmentation at all only make the synapse ambiguous.
    """
    s1, s2, id1, id2 = sides.point1, sides.point2, sides.id1, sides.id2
    reasons: list[str] = []
    if not has_seg:
        reasons.append("no neurite segmentation in this dataset: pre/post empty")
    elif s1 is None and s2 is None:
        reasons.append("no side points: pre/post empty")
    elif s1 is not None and s2 is not None:
        if id1 == 0 and id2 == 0:
            raise SynapseError(
                f"{where}: both side points {fmt_xyz(s1)} and {fmt_xyz(s2)} lie on background (seg id 0), "
                "so pre/post cannot be decided; move side_1/side_2 coordinates inside the partner neurites"
            )
        if id1 == id2:
            raise SynapseError(
                f"{where}: both side points {fmt_xyz(s1)} and {fmt_xyz(s2)} lie in the same segment (id {id1}), "
                "so pre/post cannot be decided; put each side point inside a different partner neurite"
            )
    else:
        reasons.append(f"side {1 if s1 is None else 2} point missing")
    for k, sid, s in ((1, id1, s1), (2, id2, s2)):
        if sid == 0 and s is not None and has_seg:
            reasons.append(f"side {k} point {fmt_xyz(s)} lies on background (seg id 0)")
    return reasons


def far_side_reasons(where: str, sides: PartnerSides, cleft: np.ndarray, cube_size: int) -> list[str]:
    """Reasons (and logged warnings) for side points far from the cleft centre.

    Farther than :data:`FAR_SIDE_FRACTION` of the cube edge (Euclidean, in cube-grid voxels)
    is suspicious. The point is still used as given: only the synapse is flagged.
    """
    limit = FAR_SIDE_FRACTION * float(cube_size)
    reasons: list[str] = []
    for k, point in ((1, sides.point1), (2, sides.point2)):
        if point is None:
            continue
        distance = float(np.linalg.norm(np.asarray(point, dtype=float) - np.asarray(cleft, dtype=float)))
        if distance > limit:
            reasons.append(
                f"side {k} point {fmt_xyz(point)} lies {distance:.1f} voxels from the cleft centre "
                f"(more than half the cube edge, {limit:g}): it may be in another neurite"
            )
            logger.warning(
                "%s: side %d point %s lies %.1f voxels from the cleft centre %s, more than half the cube edge "
                "(%g); it may name another neurite than this synapse's partner. It is used as given and the "
                "synapse is flagged ambiguous; check side_%d_coord_1..3 in the synapse table",
                where, k, fmt_xyz(point), distance, fmt_xyz(cleft), limit, k,
            )
    return reasons


def _count_overlap(seg_box: np.ndarray | None, seg_id: int, comp_idx: tuple[np.ndarray, ...]) -> int:
    """Voxels of segment ``seg_id`` at the component indices ``comp_idx``."""
    if seg_id == 0 or comp_idx[0].size == 0:
        return 0
    return int(np.count_nonzero(seg_box[comp_idx] == seg_id))  # type: ignore[index]


def _nearest_d2(seg_box: np.ndarray, seg_id: int, point: np.ndarray) -> float:
    """Squared distance from ``point`` to the nearest voxel of segment ``seg_id`` (inf if absent)."""
    coords = np.nonzero(seg_box == seg_id)
    if coords[0].size == 0:
        return math.inf
    d2 = sum((c - float(p)) ** 2 for c, p in zip(coords, point))
    return float(d2.min())


def _break_tie(
    seg_box: np.ndarray | None, sides: PartnerSides, ves_idx: tuple[np.ndarray, ...]
) -> tuple[int, list[str]]:
    """Pre side when both sides overlap the vesicle cloud equally, and why it was chosen."""
    id1, id2 = sides.id1, sides.id2
    if id1 == 0 or id2 == 0:
        pre_side = 1 if id1 != 0 else 2
        return pre_side, [f"chose side {pre_side}, the only side on a neurite"]
    if not ves_idx[0].size:
        return 1, [f"chose side 1 {BY_CONVENTION}"]
    centroid = np.array([i.mean() for i in ves_idx])
    d1, d2 = _nearest_d2(seg_box, id1, centroid), _nearest_d2(seg_box, id2, centroid)  # type: ignore[arg-type]
    if d1 == d2:
        return 1, [f"both segments equally near the vesicle-cloud centroid: chose side 1 {BY_CONVENTION}"]
    pre_side = 1 if d1 < d2 else 2
    return pre_side, [f"chose side {pre_side}, whose segment is nearer to the vesicle-cloud centroid"]


def decide_pre_post(sides: PartnerSides, decision: LabelWindows, cleft: np.ndarray, ids: L.LabelIds) -> PrePost:
    """Decide pre/post inside the decision box from the vesicle cloud closest to ``cleft``.

    ``cleft`` is the cleft centre in volume indices. The side whose segment overlaps that
    vesicle cloud more is presynaptic; ties are broken by :func:`_break_tie`.
    """
    id1, id2 = sides.id1, sides.id2
    seg_d, mask_d = decision.seg, decision.mask
    vesicle_known = mask_d is not None and int(ids.vesicle) != 0  # label id 0 = not annotated
    if vesicle_known:
        ves_d = closest_component(mask_d == ids.vesicle, cleft - decision.box.lo)
    else:
        ves_d = np.zeros(decision.box.hi - decision.box.lo, dtype=bool)
    ves_idx = np.nonzero(ves_d)
    ov1 = _count_overlap(seg_d, id1, ves_idx)
    ov2 = _count_overlap(seg_d, id2, ves_idx)
    reasons: list[str] = []
    if id1 == 0 and id2 == 0:
        pre_side = 0  # no partner known: nothing to decide
    else:
        if not vesicle_known:
            reasons.append(NO_VESICLE_LABEL)
        elif ves_idx[0].size == 0:
            reasons.append("no vesicle cloud in the cleft-centred window")
        if ov1 != ov2:
            pre_side = 1 if ov1 > ov2 else 2
        else:
            reasons.append(f"pre/post tie: both sides overlap the closest vesicle cloud by {ov1} voxels")
            pre_side, why = _break_tie(seg_d, sides, ves_idx)
            reasons += why
    return PrePost(pre_side, sides, ov1, ov2, ves_d, tuple(reasons))


# --------------------------------------------------------------------------------------
# how tables and figures name the two partners
# --------------------------------------------------------------------------------------
def sides_decided(table: pd.DataFrame) -> pd.Series:
    """Per row of a cube table: whether its presynaptic side was read from the data (``pre_side``
    1 or 2, not picked by convention, not in a dataset without a vesicle-cloud label)."""
    if "pre_side" not in table.columns:
        return pd.Series(False, index=table.index)
    side = pd.to_numeric(table["pre_side"], errors="coerce")
    decided = side.isin([1, 2])
    if "ambiguity_reason" in table.columns:
        reason = table["ambiguity_reason"].fillna("").astype(str)
        for words in _UNDECIDED_REASONS:
            decided &= ~reason.str.contains(words, regex=False)
    return decided


def side_decided(row: Mapping[str, Any] | pd.Series) -> bool:
    """:func:`sides_decided` for one row (a mapping or a table row)."""
    return bool(sides_decided(pd.DataFrame([dict(row)])).iloc[0])


def polarity_known(table: pd.DataFrame) -> bool:
    """Whether any synapse of the table has a decided presynaptic side: when none has, tables
    and figures call the partners "side 1" / "side 2" throughout."""
    return bool(len(table)) and bool(sides_decided(table).any())


def partner_labels(row: Mapping[str, Any] | pd.Series, *, known: bool = True, short: bool = False) -> tuple[str, str]:
    """What to call side 1 and side 2 of a synapse: ("pre", "post") or ("post", "pre") when its
    side is decided (and ``known``, the table's :func:`polarity_known`), else ("side 1",
    "side 2") (``short``: ("1", "2")) so nothing claims a polarity nobody decided."""
    if known and side_decided(row):
        return ("pre", "post") if int(row["pre_side"]) == 1 else ("post", "pre")
    return ("1", "2") if short else ("side 1", "side 2")


def partner_table(table: pd.DataFrame) -> pd.DataFrame:
    """Two display columns, "side 1" and "side 2": each partner's segment id, prefixed by
    "pre" / "post" where the synapse's side is decided (e.g. "pre · seg 12" / "seg 12")."""
    decided = sides_decided(table)
    pre = pd.to_numeric(table["pre_side"], errors="coerce") if "pre_side" in table.columns else pd.Series(0, index=table.index)
    out = pd.DataFrame(index=table.index)
    for k in (1, 2):
        ids = table[f"side{k}_seg_id"] if f"side{k}_seg_id" in table.columns else pd.Series(pd.NA, index=table.index)
        seg = ids.map(lambda v: "no segment" if pd.isna(v) or int(v) == 0 else f"seg {int(v)}")
        role = pd.Series("", index=table.index).mask(decided & (pre == k), "pre · ").mask(decided & (pre != k), "post · ")
        out[f"side {k}"] = role + seg
    return out
