"""Presynapse connectivity: do synapses made by the same presynaptic neurite look alike?

Documented choices
------------------
Grouping mode (``grouping``)
    ``presynaptic``: synapses of the same presynaptic neurite (below). ``either_side``:
    two synapses are in one group when they share a segment id on either side of the cleft
    (``side1_seg_id`` / ``side2_seg_id``; 0 = no neurite), taking connected components over
    shared ids within a bbox; the neurite is then never called an axon, because pre and post
    are not known. ``auto`` (default) decides with :data:`MIN_DECIDED_FRACTION`: presynaptic
    when at least half of the analysable synapses have a *decided* pre side (``pre_side`` 1
    or 2 and not ``ambiguous``), otherwise either side - e.g. a volume without vesicle
    labels, where every pre/post decision is a tie-break. ``include_ambiguous`` does not
    change this rule; it only lets ambiguous synapses into presynaptic groups. The mode, the
    rule and its numbers are written to ``presynapse_test.json`` and the group table.
Groups
    Decided once, from the synapse table written when the cubes were built (01_load): synapses
    with the same ``bbox`` and the same ``pre_seg_id`` (the segment id of the side chosen as
    presynaptic there). Segment ids are never read again, so the groups are the same whatever
    segmentation type or alpha the features were extracted with. A synapse is *excluded*
    (listed with its reason, never silently dropped) when its pre/post decision was
    ``ambiguous`` (unless ``include_ambiguous``), when its presynaptic id is 0 or missing (the
    neurite is unknown) or when it has no features (e.g. an empty mask for the segmentation
    type). A neurite with one analysed synapse is a *single*: not a group, but one of the
    "other axons" in the inter-group distances and the permutation null.
Distance space
    Euclidean distance between the ``pca_*`` columns of the embeddings table (04_reduce): the
    PCA scores of the standardised features (the standardised features themselves when PCA is
    off). This is exactly the space 05_cluster clusters in, so "alike" here and "same cluster"
    there mean the same thing. UMAP coordinates are only drawn, never measured.
Intra / inter
    Intra: every pair of synapses of one group. Inter: every pair of synapses from different
    neurites (singles included) within the same *stratum*. With ``within_bbox`` (default; scope
    "bbox") a stratum is a bbox, so differences between volumes (staining, section quality) can
    neither create nor hide an effect; otherwise (scope "all") every bbox is pooled. Above :data:`MAX_INTER_PAIRS`
    inter pairs a seeded uniform sample of that many pairs is used (said in the results). A
    group's ratio is its mean intra distance over the mean distance from its members to the
    other-neurite synapses of its stratum.
Permutation test
    Statistic: mean distance over all intra-group pairs (pairs weighted equally). Null: the
    neurite labels are shuffled among all analysed synapses of a stratum (groups and singles),
    keeping every group's size, i.e. each group is replaced by a random set of synapses of the
    same bbox. Singles take part because "more alike than other synapses of the same volume"
    is the question; shuffling among grouped synapses only would leave nothing to shuffle in a
    bbox with one group. One-sided p = (1 + #{null <= observed}) / (1 + n_permutations), seeded.

Modules: :mod:`synapse_nb.connectivity.stats` holds the statistics (pure functions on arrays),
:mod:`synapse_nb.connectivity.summary_page` the figures, galleries and the summary page; both are
reachable from here, which is what notebook 07 calls.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..analysis.reduce import pca_columns
from ..core import labels as L
from .stats import (
    AXON_COLUMN,
    GROUP_COLUMN,
    MAX_INTER_PAIRS,
    PermutationResult,
    as_points,
    distance_pairs,
    finite_or_none,
    group_distances,
    permutation_test,
)

if TYPE_CHECKING:

    pass

logger = logging.getLogger(__name__)



# the figures and the summary page live in presynapse_report; the notebook finds them here

PRE_ID_COLUMN = "pre_seg_id"
POST_ID_COLUMN = "post_seg_id"
PRE_SIDE_COLUMN = "pre_side"
SIDE_COLUMNS = ("side1_seg_id", "side2_seg_id")
NEURITE_COLUMN = "neurite"
SHARED_COLUMN = "shared_seg_ids"
AMBIGUOUS_COLUMN = "ambiguous"
REASON_COLUMN = "ambiguity_reason"
STATUS_COLUMN = "status"
GROUPED, SINGLE, EXCLUDED = "group", "single", "excluded"
MAP_FALLBACKS = (("umap_1", "umap_2"), ("tsne_1", "tsne_2"), ("pca_1", "pca_2"))
TABLE_NAMES = {"groups": "presynapse_groups", "synapses": "presynapse_synapses", "excluded": "presynapse_excluded"}
TEST_JSON = "presynapse_test.json"
SUMMARY_HTML = "presynapse_summary.html"
SPACE = ("Euclidean distance in the pca_* space of 04_reduce (PCA scores of the standardised features), "
         "the space 05_cluster clusters in")
AUTO, PRESYNAPTIC, EITHER_SIDE = "auto", "presynaptic", "either_side"
GROUPING_MODES = (AUTO, PRESYNAPTIC, EITHER_SIDE)
MIN_DECIDED_FRACTION = 0.5
"""``auto`` grouping: by presynaptic neurite when at least this fraction of the analysable
synapses has a decided pre side, else by a neurite shared on either side."""
GROUPING_TEXT = {
    PRESYNAPTIC: "by presynaptic neurite (same bbox and presynaptic segment id)",
    EITHER_SIDE: "by a shared neurite on either side (polarity unknown)",
}
MAX_IDS_IN_NAME = 4
"""Shared segment ids spelled out in a group name; more are counted (``bbox1/seg5+9+12+20+3 more``)."""


# --------------------------------------------------------------------------------------
# grouping
# --------------------------------------------------------------------------------------
def group_name(bbox: object, pre_seg_id: object) -> str:
    """Readable id of a presynaptic neurite: ``bbox1/pre5``."""
    return f"{bbox}/pre{int(pre_seg_id)}"


def _check_table(table: pd.DataFrame, what: str, need: Sequence[str] = (PRE_ID_COLUMN, AMBIGUOUS_COLUMN)) -> None:
    need = [L.BBOX_COLUMN, L.NAME_COLUMN, *need]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(
            f"{what} lacks column(s) {missing} that 01_load records while building cubes; "
            "rebuild the cubes (run 01_load) with this version of synapse_nb"
        )
    dup = table.duplicated([L.BBOX_COLUMN, L.NAME_COLUMN], keep=False)
    if dup.any():
        names = (table.loc[dup, L.BBOX_COLUMN].astype(str) + "/" + table.loc[dup, L.NAME_COLUMN].astype(str)).unique()
        raise ValueError(f"{what} names synapses more than once: {', '.join(names[:5])}; synapse names (Var1) must be unique per bbox")


def assign_groups(
    table: pd.DataFrame,
    include_ambiguous: bool = False,
    available: Sequence[bool] | np.ndarray | None = None,
    unavailable_reason: str = "not available",
) -> pd.DataFrame:
    """One row per synapse of ``table`` (same order): its neurite, group and status.

    ``table`` is the synapse table of 01_load (cube table; the features table carries the same
    columns). ``available`` marks rows that can be analysed (e.g. have features); the others
    are excluded with ``unavailable_reason``. Columns: bbox, Var1, pre_seg_id, ambiguous,
    axon (``bbox/preN`` or empty), group (the axon for groups, else empty), group_size,
    status (``group`` / ``single`` / ``excluded``) and reason (why excluded or flagged).
    """
    _check_table(table, "the synapse table")
    out = table[[L.BBOX_COLUMN, L.NAME_COLUMN]].reset_index(drop=True).astype(str)
    pre = pd.to_numeric(table[PRE_ID_COLUMN], errors="coerce").reset_index(drop=True)
    amb = table[AMBIGUOUS_COLUMN].reset_index(drop=True).fillna(False).astype(bool)
    why = (table[REASON_COLUMN].reset_index(drop=True).fillna("").astype(str)
           if REASON_COLUMN in table.columns else pd.Series([""] * len(table)))
    out[PRE_ID_COLUMN] = pre.astype("Int64")
    out[AMBIGUOUS_COLUMN] = amb.to_numpy()
    reason = np.full(len(out), "", dtype=object)
    excluded = np.zeros(len(out), dtype=bool)
    if available is not None:
        avail = np.asarray(available, dtype=bool)
        if avail.shape != (len(out),):
            raise ValueError(f"available has {avail.shape} entries for {len(out)} synapses")
        excluded |= ~avail
        reason[~avail] = unavailable_reason
    unknown = pre.isna().to_numpy() | (pre.fillna(0).to_numpy() == 0)
    reason[unknown & ~excluded] = "presynaptic segment unknown (id 0 or missing): its neurite cannot be matched"
    excluded |= unknown
    flag = amb.to_numpy() & ~excluded
    detail = np.array([f"ambiguous pre/post decision ({w})" if w else "ambiguous pre/post decision" for w in why], dtype=object)
    if include_ambiguous:
        reason[flag] = detail[flag] + "; included (include_ambiguous)"
    else:
        reason[flag] = detail[flag] + "; set include_ambiguous to group it anyway"
        excluded |= flag
    axon = np.array([group_name(b, p) if not ex else "" for b, p, ex in zip(out[L.BBOX_COLUMN], pre.fillna(0), excluded)], dtype=object)
    counts = pd.Series(axon[~excluded]).value_counts()
    size = np.array([int(counts.get(a, 0)) if a else 0 for a in axon])
    out[AXON_COLUMN] = axon
    out[GROUP_COLUMN] = np.where(size >= 2, axon, "")
    out["group_size"] = np.where(size >= 2, size, 0)
    out[STATUS_COLUMN] = np.where(excluded, EXCLUDED, np.where(size >= 2, GROUPED, SINGLE))
    out["reason"] = reason
    return out


def polarity_decided(table: pd.DataFrame) -> np.ndarray:
    """True for synapses whose pre side was decided: ``pre_side`` 1 or 2 (or, in tables
    without ``pre_side``, a presynaptic id) and not ``ambiguous``."""
    _check_table(table, "the synapse table")
    amb = table[AMBIGUOUS_COLUMN].fillna(False).astype(bool).to_numpy()
    if PRE_SIDE_COLUMN in table.columns:
        side = pd.to_numeric(table[PRE_SIDE_COLUMN], errors="coerce").fillna(0).to_numpy()
        known = np.isin(side, (1, 2))
    else:
        known = pd.to_numeric(table[PRE_ID_COLUMN], errors="coerce").fillna(0).to_numpy() != 0
    return known & ~amb


@dataclass(frozen=True)
class GroupingChoice:
    """Which grouping 07_presynapse uses and why (see the module's documented choices)."""

    mode: str  # PRESYNAPTIC or EITHER_SIDE
    requested: str  # what was asked: auto, presynaptic or either_side
    n_decided: int  # analysable synapses with a decided pre side
    n_synapses: int  # analysable synapses

    @property
    def fraction(self) -> float:
        return self.n_decided / self.n_synapses if self.n_synapses else float("nan")

    @property
    def text(self) -> str:
        return GROUPING_TEXT[self.mode]

    def rule(self) -> str:
        """One sentence: the mode and why."""
        counts = f"{self.n_decided} of {self.n_synapses} analysable synapses have a decided pre side"
        if self.requested != AUTO:
            return f"Grouping {self.text}, as requested (presynapse_grouping '{self.requested}'); {counts}."
        share = f"{100 * MIN_DECIDED_FRACTION:.0f}%"
        why = "at least" if self.mode == PRESYNAPTIC else "fewer than"
        return (f"Grouping {self.text}: {counts}, {why} {share} (pre_side 1 or 2 and not ambiguous; "
                f"presynapse_grouping 'auto').")

    def as_dict(self) -> dict[str, Any]:
        return {"grouping": self.mode, "grouping_requested": self.requested, "grouping_text": self.text,
                "grouping_rule": self.rule(), "n_polarity_decided": int(self.n_decided),
                "polarity_decided_fraction": finite_or_none(self.fraction), "min_decided_fraction": MIN_DECIDED_FRACTION}


def choose_grouping(table: pd.DataFrame, grouping: str = AUTO, available: Sequence[bool] | np.ndarray | None = None) -> GroupingChoice:
    """The grouping mode for ``table`` (rows ``available`` = analysable; default all): ``auto``
    picks presynaptic when at least :data:`MIN_DECIDED_FRACTION` of them have a decided pre side."""
    if grouping not in GROUPING_MODES:
        raise ValueError(f"presynapse_grouping must be one of {', '.join(GROUPING_MODES)}, got {grouping!r}")
    decided = polarity_decided(table)
    avail = np.ones(len(table), dtype=bool) if available is None else np.asarray(available, dtype=bool)
    if avail.shape != (len(table),):
        raise ValueError(f"available has {avail.shape} entries for {len(table)} synapses")
    n, k = int(avail.sum()), int((decided & avail).sum())
    if grouping != AUTO:
        mode = grouping
    else:
        mode = PRESYNAPTIC if n == 0 or k >= MIN_DECIDED_FRACTION * n else EITHER_SIDE
    return GroupingChoice(mode, grouping, k, n)


def side_ids(table: pd.DataFrame) -> np.ndarray:
    """(n, 2) segment ids on the two sides of each synapse (0 = no neurite): ``side1_seg_id`` /
    ``side2_seg_id``, or the pre/post ids (the same pair, in decided order) in older tables."""
    cols = list(SIDE_COLUMNS) if all(c in table.columns for c in SIDE_COLUMNS) else [PRE_ID_COLUMN, POST_ID_COLUMN]
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise ValueError(
            f"the synapse table lacks column(s) {list(SIDE_COLUMNS)} (and {missing}) needed to group by a neurite on "
            "either side; rebuild the cubes (run 01_load) with this version of synapse_nb"
        )
    ids = table[cols].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy()
    return ids.astype(np.int64)


def _id_list(ids: Sequence[int]) -> str:
    ids = sorted(int(i) for i in ids)
    head = "+".join(str(i) for i in ids[:MAX_IDS_IN_NAME])
    return head + (f"+{len(ids) - MAX_IDS_IN_NAME} more" if len(ids) > MAX_IDS_IN_NAME else "")


def assign_groups_either_side(
    table: pd.DataFrame,
    available: Sequence[bool] | np.ndarray | None = None,
    unavailable_reason: str = "not available",
) -> pd.DataFrame:
    """Like :func:`assign_groups`, but synapses are grouped when they share a segment id on
    either side (connected components over shared ids within a bbox; id 0 = no neurite), for
    data whose pre/post polarity is unknown. Columns: bbox, Var1, side1_seg_id, side2_seg_id,
    pre_seg_id, ambiguous, neurite (``bbox1/seg5+9`` = the ids its synapses share, or
    ``bbox1/syn:<name>`` for a synapse sharing none), shared_seg_ids, group, group_size, status
    and reason. Ambiguous pre/post decisions are used: this grouping does not need them."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    _check_table(table, "the synapse table")
    n = len(table)
    out = table[[L.BBOX_COLUMN, L.NAME_COLUMN]].reset_index(drop=True).astype(str)
    ids = side_ids(table)
    out[SIDE_COLUMNS[0]], out[SIDE_COLUMNS[1]] = ids[:, 0], ids[:, 1]
    out[PRE_ID_COLUMN] = pd.to_numeric(table[PRE_ID_COLUMN], errors="coerce").reset_index(drop=True).astype("Int64")
    amb = table[AMBIGUOUS_COLUMN].reset_index(drop=True).fillna(False).astype(bool).to_numpy()
    why = (table[REASON_COLUMN].reset_index(drop=True).fillna("").astype(str)
           if REASON_COLUMN in table.columns else pd.Series([""] * n))
    out[AMBIGUOUS_COLUMN] = amb
    reason = np.full(n, "", dtype=object)
    excluded = np.zeros(n, dtype=bool)
    if available is not None:
        avail = np.asarray(available, dtype=bool)
        if avail.shape != (n,):
            raise ValueError(f"available has {avail.shape} entries for {n} synapses")
        excluded |= ~avail
        reason[~avail] = unavailable_reason
    none = (ids == 0).all(axis=1)
    reason[none & ~excluded] = "neither side lies on a known neurite (segment ids 0): it cannot share one"
    excluded |= none
    flag = amb & ~excluded
    reason[flag] = [f"ambiguous pre/post decision ({w}); used: grouping by either side needs no polarity" if w else
                    "ambiguous pre/post decision; used: grouping by either side needs no polarity" for w in why[flag]]
    # bipartite graph synapse -- (bbox, segment id); its components are the groups
    bbox = out[L.BBOX_COLUMN].to_numpy()
    pairs = [(i, (bbox[i], int(v))) for i in np.flatnonzero(~excluded) for v in set(ids[i].tolist()) if v != 0]
    nodes = {key: n + k for k, key in enumerate(dict.fromkeys(p[1] for p in pairs))}
    rows = np.array([i for i, _ in pairs], dtype=np.int64)
    cols = np.array([nodes[key] for _, key in pairs], dtype=np.int64)
    size_all = n + len(nodes)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(size_all, size_all))
    _, comp = connected_components(graph, directed=False)
    comp = comp[:n]
    members: dict[int, list[int]] = {}
    for i in np.flatnonzero(~excluded):
        members.setdefault(int(comp[i]), []).append(int(i))
    neurite = np.full(n, "", dtype=object)
    shared = np.full(n, "", dtype=object)
    size = np.zeros(n, dtype=int)
    for rows_c in members.values():
        counts = pd.Series([v for i in rows_c for v in set(ids[i].tolist()) if v != 0]).value_counts()
        common = sorted(int(v) for v, c in counts.items() if c >= 2)
        for i in rows_c:
            if len(rows_c) >= 2:
                neurite[i] = f"{bbox[i]}/seg{_id_list(common)}"
                shared[i] = _id_list(common)
                size[i] = len(rows_c)
            else:
                neurite[i] = f"{bbox[i]}/syn:{out[L.NAME_COLUMN].iloc[i]}"
    out[NEURITE_COLUMN] = neurite
    out[SHARED_COLUMN] = shared
    out[GROUP_COLUMN] = np.where(size >= 2, neurite, "")
    out["group_size"] = size
    out[STATUS_COLUMN] = np.where(excluded, EXCLUDED, np.where(size >= 2, GROUPED, SINGLE))
    out["reason"] = reason
    return out


# --------------------------------------------------------------------------------------
# the analysis of one run
# --------------------------------------------------------------------------------------
@dataclass
class PresynapseAnalysis:
    """Everything 07_presynapse shows and writes."""

    synapses: pd.DataFrame  # analysed synapses (groups + singles): identity, axon, group, cluster, map x/y
    X: np.ndarray  # their coordinates in the distance space (rows aligned with ``synapses``)
    groups: pd.DataFrame  # one row per group
    excluded: pd.DataFrame  # synapses left out, with the reason
    ambiguous: pd.DataFrame  # every synapse with an ambiguous pre/post decision, and whether it was used
    test: PermutationResult
    intra: np.ndarray
    inter: np.ndarray
    inter_sampled: bool
    scope: str
    include_ambiguous: bool
    map_columns: tuple[str, str]
    class_column: str | None = None
    space: str = SPACE
    params: dict[str, Any] = field(default_factory=dict)
    grouping: GroupingChoice | None = None  # None: presynaptic (as before the grouping modes)

    @property
    def mode(self) -> str:
        """``presynaptic`` or ``either_side`` (see :data:`GROUPING_TEXT`)."""
        return self.grouping.mode if self.grouping is not None else PRESYNAPTIC

    @property
    def label_column(self) -> str:
        """Column of :attr:`synapses` holding each synapse's neurite label (``axon`` only when
        grouping by presynaptic neurite)."""
        return AXON_COLUMN if self.mode == PRESYNAPTIC else NEURITE_COLUMN

    @property
    def symmetric(self) -> bool:
        return self.mode == EITHER_SIDE

    def words(self) -> dict[str, str]:
        """Phrases for titles and sentences, so nothing calls a neurite an axon (or presynaptic)
        when polarity is unknown."""
        if self.symmetric:
            return {
                "group_of": "Synapses that share a neurite (on either side, polarity unknown)",
                "groups_noun": "groups of synapses sharing a neurite on either side",
                "no_groups": "No neurite (on either side) is shared by two or more analysed synapses.",
                "question": "Are synapses that share a neurite (either side, polarity unknown) more alike?",
                "map_title": "Synapses sharing a neurite on either side, joined by lines",
                "single": "share no neurite with another analysed synapse",
                "excluded": "Synapses with no known neurite on either side, or without features; they take no part "
                            "in the groups or the test.",
                "shuffled": "group labels",
            }
        return {
            "group_of": "Synapses of the same presynaptic neurite",
            "groups_noun": "presynaptic neurites",
            "no_groups": "No presynaptic neurite makes two or more analysed synapses.",
            "question": "Are synapses of the same presynaptic neurite more alike?",
            "map_title": "Synapses of one presynaptic neurite, joined by lines",
            "single": "are the only one of their neurite",
            "excluded": "Synapses whose presynaptic neurite is unknown or uncertain, or that have no features; they take "
                        "no part in the groups or the test.",
            "shuffled": "neurite labels",
        }

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def mean_intra(self) -> float:
        return float(self.intra.mean()) if len(self.intra) else float("nan")

    @property
    def mean_inter(self) -> float:
        return float(self.inter.mean()) if len(self.inter) else float("nan")

    @property
    def ratio(self) -> float:
        """Mean intra-group over mean inter-neurite distance (< 1: groups are tighter)."""
        return self.mean_intra / self.mean_inter if self.mean_inter > 0 else float("nan")

    def members(self, group: str) -> pd.DataFrame:
        """The analysed synapses of one group (rows of :attr:`synapses`)."""
        sub = self.synapses[self.synapses[GROUP_COLUMN] == group]
        if sub.empty:
            raise KeyError(f"no group {group!r}; groups are {', '.join(self.groups[GROUP_COLUMN].head(10))}")
        return sub

    def distance_matrix(self, group: str) -> pd.DataFrame:
        """Pairwise distances among one group's synapses (names on both axes)."""
        from scipy.spatial.distance import cdist

        sub = self.members(group)
        pts = self.X[sub.index.to_numpy()]
        names = sub[L.NAME_COLUMN].astype(str).tolist()
        return pd.DataFrame(cdist(pts, pts), index=names, columns=names)

    def size_counts(self) -> str:
        """How many groups of each size: ``5 groups of 2, 3 of 4``."""
        if not self.n_groups:
            return "no groups"
        vc = self.groups["n"].value_counts().sort_index()
        parts = [f"{c} of {k}" for k, c in vc.items()]
        return f"{vc.iloc[0]} group{'s' if vc.iloc[0] != 1 else ''} of {vc.index[0]}" + "".join(f", {p}" for p in parts[1:])

    def headline(self) -> str:
        w = self.words()
        n_single = int((self.synapses[STATUS_COLUMN] == SINGLE).sum())
        if self.symmetric:
            text = (f"**{len(self.synapses)} synapses** analysed, grouped **{GROUPING_TEXT[EITHER_SIDE]}**: "
                    f"**{self.n_groups} {w['groups_noun']}** ({self.size_counts()} synapses), {n_single} synapses "
                    f"{w['single']}; {len(self.excluded)} excluded")
        else:
            text = (f"**{len(self.synapses)} synapses** analysed: **{self.n_groups} {w['groups_noun']}** make more than "
                    f"one synapse ({self.size_counts()} synapses), {n_single} synapses {w['single']}; "
                    f"{len(self.excluded)} excluded")
            n_amb = int(self.ambiguous["used"].sum()) if len(self.ambiguous) else 0
            if self.include_ambiguous and n_amb:
                text += f"; {n_amb} synapses with an ambiguous pre/post decision are included"
        return text + f". Distances: {self.space}."

    def test_sentence(self) -> str:
        t = self.test
        w = self.words()
        if not t.n_groups:
            return f"{w['no_groups'][:-1]}, so there is nothing to test."
        where = "within each bbox" if self.scope == "bbox" else "across all bboxes"
        verdict = "more alike than" if t.p_value <= 0.05 and t.effect < 1 else "not detectably more alike than"
        sampled = " (inter pairs sampled)" if self.inter_sampled else ""
        between = "groups and synapses sharing no neurite" if self.symmetric else "neurites"
        return (f"{w['group_of']} are **{verdict}** other synapses: mean distance within "
                f"groups {t.statistic:.3g} against {t.null_mean:.3g} when {w['shuffled']} are shuffled {where} "
                f"({t.n_permutations} permutations, seed {t.seed}): **p = {t.p_text()}**. Intra/inter ratio "
                f"{self.ratio:.2f} (mean distance {self.mean_intra:.3g} within groups, {self.mean_inter:.3g} between "
                f"{between}{sampled}).")

    def grouping_sentence(self) -> str:
        """How synapses were grouped and why (the documented rule with this run's numbers)."""
        if self.grouping is None:
            return f"Grouping {GROUPING_TEXT[PRESYNAPTIC]}."
        return self.grouping.rule()

    def markdown(self) -> str:
        """What was analysed and how it was grouped, with the rule that chose the grouping
        (07_presynapse's opening text; the verdict is :meth:`test_sentence`)."""
        return f"{self.headline()}\n\n{self.grouping_sentence()}"

    def summary(self) -> dict[str, Any]:
        """The global numbers (what ``presynapse_test.json`` holds)."""
        return {**self.test.as_dict(), "ratio": finite_or_none(self.ratio), "mean_intra": finite_or_none(self.mean_intra),
                "mean_inter": finite_or_none(self.mean_inter), "n_intra_pairs": int(len(self.intra)),
                "n_inter_pairs": int(len(self.inter)), "inter_sampled": bool(self.inter_sampled),
                "n_synapses": int(len(self.synapses)), "n_excluded": int(len(self.excluded)),
                "include_ambiguous": bool(self.include_ambiguous), "space": self.space,
                "group_sizes": {str(k): int(v) for k, v in self.groups["n"].value_counts().sort_index().items()},
                **(self.grouping.as_dict() if self.grouping is not None else {"grouping": PRESYNAPTIC}),
                **self.params}


def _map_columns(emb: pd.DataFrame, wanted: tuple[str, str] | None) -> tuple[str, str]:
    options = [wanted] if wanted else []
    for pair in [*options, *MAP_FALLBACKS]:
        if pair and all(c in emb.columns for c in pair):
            return pair
    raise ValueError(f"the embeddings table has none of the 2-D map columns {MAP_FALLBACKS}: rerun 04_reduce")


def _composition(values: pd.Series) -> str:
    vc = values.astype(str).value_counts()
    return ", ".join(f"{k} x{v}" for k, v in vc.items())


def group_table(synapses: pd.DataFrame, X: np.ndarray, strata: np.ndarray | None, class_column: str | None = None,
                seed: int = 42, label_column: str = AXON_COLUMN, grouping: str = PRESYNAPTIC) -> pd.DataFrame:
    """One row per group: bbox, pre_seg_id (or shared_seg_ids when grouped by either side), n,
    synapse names, dominant cluster and its share, cluster composition, mean intra / inter
    distance and their ratio (and classes when known), and the grouping mode."""
    ids_column = SHARED_COLUMN if label_column == NEURITE_COLUMN else PRE_ID_COLUMN
    grouped = synapses[STATUS_COLUMN] == GROUPED
    dist = group_distances(X, synapses[label_column].to_numpy(), strata, seed=seed)
    dist = dist[dist[AXON_COLUMN].isin(set(synapses.loc[grouped, label_column]))]
    rows = []
    for _, d in dist.iterrows():
        sub = synapses[synapses[label_column] == d[AXON_COLUMN]]
        ids = sub[ids_column].iloc[0]
        row = {GROUP_COLUMN: d[AXON_COLUMN], L.BBOX_COLUMN: sub[L.BBOX_COLUMN].iloc[0],
               ids_column: str(ids) if ids_column == SHARED_COLUMN else int(ids), "n": int(d["n"]),
               "synapses": ", ".join(sub[L.NAME_COLUMN].astype(str))}
        if "cluster" in sub.columns:
            vc = sub["cluster"].astype(str).value_counts()
            row.update(dominant_cluster=str(vc.index[0]), cluster_share=float(vc.iloc[0] / len(sub)),
                       clusters=_composition(sub["cluster"]))
        row.update(mean_intra=float(d["mean_intra"]), mean_inter=float(d["mean_inter"]), ratio=float(d["ratio"]),
                   n_ambiguous=int(sub[AMBIGUOUS_COLUMN].sum()))
        if class_column and class_column in sub.columns:
            row[class_column] = _composition(sub[class_column])
        rows.append(row)
    cols = [GROUP_COLUMN, L.BBOX_COLUMN, ids_column, "n", "synapses", "dominant_cluster", "cluster_share", "clusters",
            "mean_intra", "mean_inter", "ratio", "n_ambiguous"] + ([class_column] if class_column and class_column in synapses.columns else [])
    out = pd.DataFrame(rows, columns=cols)
    if "cluster" not in synapses.columns:
        out = out.drop(columns=["dominant_cluster", "cluster_share", "clusters"])
    if ids_column == SHARED_COLUMN:  # numeric order of the first shared id ("12" after "5")
        first = out[ids_column].astype(str).str.split("+").str[0]
        order = pd.to_numeric(first, errors="coerce")
        out = out.assign(_first=order).sort_values([L.BBOX_COLUMN, "_first"], kind="stable").drop(columns="_first")
    else:
        out = out.sort_values([L.BBOX_COLUMN, PRE_ID_COLUMN], kind="stable")
    out["grouping"] = grouping
    return out.reset_index(drop=True)


def _feature_rows(features: pd.DataFrame, source: pd.DataFrame, from_cube_table: bool) -> np.ndarray:
    """Row of ``features`` for each synapse of ``source`` (-1: it has no features), matched on
    (bbox, name); a missing column, a repeated name or a synapse of another 01_load is named."""
    key = [L.BBOX_COLUMN, L.NAME_COLUMN]
    missing = [c for c in key if c not in features.columns]
    if missing:
        raise ValueError(f"the features table lacks column(s) {missing}: rerun 03_extract")
    dup = features.duplicated(key, keep=False)
    if dup.any():
        names = (features.loc[dup, L.BBOX_COLUMN].astype(str) + "/" + features.loc[dup, L.NAME_COLUMN].astype(str)).unique()
        raise ValueError(f"the features table names synapses more than once: {', '.join(names[:5])}; rerun 03_extract")
    # before matching on (bbox, Var1): a missing column or a repeated name must be named, not a pandas error
    _check_table(source, "the synapse table of 01_load" if from_cube_table else "the features table")
    feat_keys = pd.MultiIndex.from_frame(features[key].astype(str))
    src_keys = pd.MultiIndex.from_frame(source[key].astype(str))
    pos = feat_keys.get_indexer(src_keys)  # row of features for each synapse of the source table
    orphans = np.flatnonzero(src_keys.get_indexer(feat_keys) < 0)
    if len(orphans):
        ex = [f"{features[L.BBOX_COLUMN].iloc[i]}/{features[L.NAME_COLUMN].iloc[i]}" for i in orphans[:3]]
        raise ValueError(f"{len(orphans)} synapses of the features table are not in the synapse table of 01_load "
                         f"(e.g. {', '.join(ex)}): the run mixes outputs of different 01_load runs; rerun from 01_load")
    return pos


def analyze(
    features: pd.DataFrame,
    embeddings: pd.DataFrame,
    clusters: pd.DataFrame | None = None,
    synapse_table: pd.DataFrame | None = None,
    *,
    include_ambiguous: bool = False,
    n_permutations: int = 1000,
    seed: int = 42,
    within_bbox: bool = True,
    class_column: str | None = L.DEMO_CLASS_COLUMN,
    map_columns: tuple[str, str] | None = ("umap_1", "umap_2"),
    max_inter_pairs: int = MAX_INTER_PAIRS,
    grouping: str = AUTO,
) -> PresynapseAnalysis:
    """Group, measure and test. ``features``/``embeddings``/``clusters`` are the tables of
    03/04/05 (rows aligned by position); ``synapse_table`` is the cube table of 01_load where
    the groups come from (default: the same columns carried by ``features``). ``within_bbox``:
    compare and shuffle only within each bbox (scope "bbox"), else across all (scope "all").
    ``grouping``: ``auto`` (by presynaptic neurite when polarity is known for at least
    :data:`MIN_DECIDED_FRACTION` of the synapses, else by a neurite shared on either side),
    ``presynaptic`` or ``either_side``."""
    scope = "bbox" if within_bbox else "all"
    if len(embeddings) != len(features):
        raise ValueError(f"embeddings have {len(embeddings)} rows but the features table {len(features)}: rerun 04_reduce")
    cols = pca_columns(embeddings)
    if not cols:
        raise ValueError("the embeddings table has no pca_* columns: rerun 04_reduce")
    map_columns = _map_columns(embeddings, map_columns)
    source = features if synapse_table is None else synapse_table
    key = [L.BBOX_COLUMN, L.NAME_COLUMN]
    pos = _feature_rows(features, source, synapse_table is not None)
    no_features = "no features (left out at extraction, see skipped_features of 03_extract)"
    choice = choose_grouping(source, grouping, available=pos >= 0)
    if choice.mode == PRESYNAPTIC:
        table = assign_groups(source, include_ambiguous, available=pos >= 0, unavailable_reason=no_features)
        label_column, id_columns = AXON_COLUMN, [PRE_ID_COLUMN]
    else:
        table = assign_groups_either_side(source, available=pos >= 0, unavailable_reason=no_features)
        label_column, id_columns = NEURITE_COLUMN, list(SIDE_COLUMNS)
    table["_row"] = pos
    analyzed = table[table[STATUS_COLUMN] != EXCLUDED].sort_values("_row", kind="stable")
    rows = analyzed["_row"].to_numpy()
    syn = analyzed.drop(columns=["_row"]).reset_index(drop=True)
    emb = embeddings.reset_index(drop=True)
    for c in map_columns:
        syn[c] = emb[c].to_numpy()[rows]
    if clusters is not None:
        if len(clusters) != len(features):
            raise ValueError(f"clusters have {len(clusters)} rows but the features table {len(features)}: rerun 05_cluster")
        syn["cluster"] = clusters["cluster"].astype(str).to_numpy()[rows]
    class_column = class_column if class_column and class_column in features.columns else None
    if class_column:
        syn[class_column] = features[class_column].to_numpy()[rows]
    X = as_points(emb[cols].to_numpy())[rows]
    strata = syn[L.BBOX_COLUMN].to_numpy() if scope == "bbox" else None
    labels = syn[label_column].to_numpy()
    test = permutation_test(X, labels, strata, n_permutations, seed, scope)
    intra, inter, sampled = distance_pairs(X, labels, strata, max_inter_pairs, seed)
    groups = group_table(syn, X, strata, class_column, seed, label_column, choice.mode)
    excluded = table[table[STATUS_COLUMN] == EXCLUDED][key + id_columns + [AMBIGUOUS_COLUMN, "reason"]].reset_index(drop=True)
    amb = table[table[AMBIGUOUS_COLUMN]].copy()
    amb["used"] = amb[STATUS_COLUMN] != EXCLUDED
    ambiguous = amb[key + id_columns + ["used", "reason"]].reset_index(drop=True)
    logger.info("presynapse (grouping %s): %d synapses, %d groups, p=%.3g, ratio=%.3f", choice.mode, len(syn), len(groups),
                test.p_value, (intra.mean() / inter.mean()) if len(intra) and len(inter) else float("nan"))
    params = {"scope": scope, "seed": int(seed), "n_dimensions": len(cols), "map_columns": list(map_columns)}
    return PresynapseAnalysis(syn, X, groups, excluded, ambiguous, test, intra, inter, sampled, scope,
                              bool(include_ambiguous), map_columns, class_column, SPACE, params, choice)


def summary_sentence(summary: Mapping[str, Any]) -> str:
    """One sentence for the run report from ``presynapse_test.json`` (:meth:`PresynapseAnalysis.summary`),
    worded for its grouping mode (files without ``grouping`` are presynaptic). The verdict is
    07_presynapse's: p <= 0.05 and observed/null effect < 1; p, effect and ratio may be None."""
    t = summary
    symmetric = t.get("grouping") == EITHER_SIDE
    if not t.get("n_groups"):
        nothing = ("No neurite (on either side, polarity unknown) is shared by two or more analysed synapses"
                   if symmetric else "No presynaptic neurite makes two or more analysed synapses")
        return f"{nothing} ({t.get('n_excluded', 0)} excluded)."
    p, effect, ratio = t.get("p_value"), t.get("effect"), t.get("ratio")
    alike = p is not None and p <= 0.05 and effect is not None and effect < 1
    verdict = "more alike than" if alike else "not detectably more alike than"
    ratio_text = f"{ratio:.2f}" if ratio is not None else "n/a (no synapse of another neurite to compare with)"
    p_text = f"{p:.2g}" if p is not None else "n/a"
    if symmetric:
        head = (f"**{t['n_groups']} groups of synapses sharing a neurite on either side** (polarity unknown; "
                f"{t['n_grouped']} synapses). Synapses of the same group are **{verdict}** others")
    else:
        head = (f"**{t['n_groups']} presynaptic neurites** make more than one synapse ({t['n_grouped']} synapses). "
                f"Synapses of the same neurite are **{verdict}** others")
    return f"{head}: intra/inter distance ratio {ratio_text}, permutation p = {p_text} ({t['n_permutations']} shuffles)."
