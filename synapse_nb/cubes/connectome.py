"""Synapses of a connectome table: partner points from partner ids, and polarity from the table.

A connectome's synapse table often names the two partner segments (``pre_id``, ``post_id``)
instead of giving a point inside each. The bbox rules (:mod:`.prepost`, the crop centre) work
on side points, so :func:`partner_points` puts side 1 at the voxel of the presynaptic segment
nearest the synapse position and side 2 at the postsynaptic one's, searched in the label window
the builder reads anyway (:func:`.geometry.label_window`), so no extra read is made.

Polarity (:func:`table_polarity`): when the table names pre and post and the data has no
vesicle-cloud label, the table's polarity is taken (reason :data:`FROM_TABLE`, which counts as
decided, see :func:`.prepost.sides_decided`). With a vesicle label the bbox rule decides, and
:data:`AGREES_COLUMN` records whether it agrees with the table.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from ..core import labels as L
from .geometry import LabelWindows, SynapseError, fmt_xyz
from .prepost import PrePost

#: Table columns with the partner segment ids (nullable; already mapped to agglomerates when
#: the connectome uses a mapping).
PRE_ID_COLUMN = "pre_id"
POST_ID_COLUMN = "post_id"
#: Reason recorded when the presynaptic side is the table's (no vesicle label to read it from).
FROM_TABLE = "pre/post from the synapse table"
#: Cube table column: whether the pre/post decision read from the data names the table's
#: presynaptic partner (empty when the table names none or the table's polarity was used).
AGREES_COLUMN = "table_polarity_agrees"

Partners = tuple[int | None, int | None]


def table_partners(rec: Mapping) -> Partners | None:
    """The (pre, post) segment ids a table row names (None for an empty cell); None when the
    table has no partner columns at all (a bbox table)."""
    if PRE_ID_COLUMN not in rec and POST_ID_COLUMN not in rec:
        return None
    return _partner_id(rec.get(PRE_ID_COLUMN)), _partner_id(rec.get(POST_ID_COLUMN))


def _partner_id(v) -> int | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f):
        return None
    return int(v)


def sides_missing(rec: Mapping) -> bool:
    """Whether a table row gives no side point at all (columns absent or every coordinate empty)."""
    for col in (*L.SIDE1_COLUMNS, *L.SIDE2_COLUMNS):
        v = rec.get(col)
        if v is None:
            continue
        try:
            if not math.isnan(float(v)):
                return False
        except (TypeError, ValueError):
            return False
    return True


def nearest_voxel(
    seg: np.ndarray, seg_id: int, target: np.ndarray, voxel_nm: Sequence[float] = (1.0, 1.0, 1.0)
) -> np.ndarray | None:
    """Index (z, y, x) in ``seg`` of the voxel of ``seg_id`` physically nearest ``target``
    (ties: the first in C order); None when the segment is absent."""
    coords = np.nonzero(seg == seg_id)
    if coords[0].size == 0:
        return None
    d2 = sum(((c - float(t)) * float(v)) ** 2 for c, t, v in zip(coords, target, voxel_nm))
    k = int(np.argmin(d2))
    return np.array([int(c[k]) for c in coords], dtype=np.int64)


def partner_points(
    where: str,
    windows: LabelWindows,
    center: np.ndarray,
    partners: Partners,
    voxel_nm: Sequence[float] = (1.0, 1.0, 1.0),
) -> tuple[list[float] | None, list[float] | None]:
    """Side 1 (pre) and side 2 (post) as (x, y, z) volume points: the voxel of each partner segment
    nearest ``center`` (z, y, x) inside the label window already read.

    A partner the table leaves empty gives None (side missing). A partner id that is 0 or absent
    from the window raises :class:`SynapseError` naming the id and the window.
    """
    if windows.seg is None:
        return None, None
    out: list[list[float] | None] = []
    lo, hi = windows.box.lo, windows.box.hi - 1
    for role, seg_id in zip(("pre", "post"), partners):
        if seg_id is None:
            out.append(None)
            continue
        if seg_id <= 0:
            raise SynapseError(
                f"{where}: {role}synaptic partner id {seg_id} is not a segment (0 is background); "
                f"fix {role}_id in the synapse table"
            )
        q = nearest_voxel(windows.seg, seg_id, center - lo, voxel_nm)
        if q is None:
            raise SynapseError(
                f"{where}: {role}synaptic partner segment {seg_id} is absent from the label window "
                f"{fmt_xyz(lo)}..{fmt_xyz(hi)} around the synapse; check {role}_id in the synapse table "
                "(and the agglomerate mapping) or give side points"
            )
        p = q + lo
        out.append([float(p[2]), float(p[1]), float(p[0])])
    return out[0], out[1]


def table_polarity(prepost: PrePost, partners: Partners, *, vesicle_known: bool) -> tuple[PrePost, bool | None]:
    """The pre/post decision of a synapse whose table names its partners, and whether the data agreed.

    Without a vesicle label the side under the table's presynaptic segment is presynaptic (reason
    :data:`FROM_TABLE`, replacing the tie-break reasons); agreement is then None. With one the
    data's decision stands and the second value says whether it names the table's partner (None
    when the table names none or the data decided nothing).
    """
    pre, post = partners
    id1, id2 = prepost.sides.id1, prepost.sides.id2
    if vesicle_known:
        if prepost.pre_side not in (1, 2):
            return prepost, None
        if pre is not None:
            return prepost, bool(prepost.pre_id == pre)
        if post is not None:
            return prepost, bool(prepost.post_id == post)
        return prepost, None
    side = 0
    if pre is not None and pre != 0:
        side = 1 if id1 == pre else 2 if id2 == pre else 0
    if side == 0 and post is not None and post != 0:
        side = 2 if id1 == post else 1 if id2 == post else 0
    if side == 0:
        if pre is None and post is None:
            return prepost, None
        why = (
            f"the synapse table's partners (pre {pre}, post {post}) are not the segments under "
            f"the side points ({id1}, {id2})"
        )
        return replace(prepost, reasons=(*prepost.reasons, why)), None
    return replace(prepost, pre_side=side, reasons=(FROM_TABLE,)), None
