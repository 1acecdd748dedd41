"""Which synapses of a (possibly huge) synapse table a run builds: the sampling policies.

A connectome table holds millions of synapses; a run takes a sample of them. The sample must be
repeatable (the same plan and seed give the same rows, whatever order the table comes in), never
hold a synapse twice, and say in plain sentences what it could not do (a stratum with fewer
synapses than asked, synapses without a known presynaptic partner). Everything is vectorised
(numpy / pandas), so a million rows sample in a fraction of a second.

Policies:

- ``all``: every synapse (inside the ROI, when given);
- ``random``: ``n`` synapses drawn without replacement; a larger ``n`` with the same seed keeps
  the smaller sample (the draw takes the ``n`` smallest of one random key per synapse);
- ``stratified``: per stratum (the values of a table column, or named boxes) ``per_stratum``
  synapses, or all of them when a stratum has fewer;
- ``per_axon``: up to ``per_axon`` synapses per presynaptic partner (``pre_id``), optionally at
  most ``n`` in total (axons taken in random order until ``n`` is reached).

A region of interest (``roi``: boxes, half-open, global voxels x, y, z) restricts the table
before any policy.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd

from synapse_nb.core import labels as L

logger = logging.getLogger(__name__)

POLICIES = ("all", "random", "stratified", "per_axon")
#: Column of the presynaptic partner id (nullable Int64) in a connectome table.
PRE_COLUMN = "pre_id"
#: Row of the synapse in its source file; the sample's fixed order and the draw's order.
ROW_COLUMN = "table_row"
#: Column the sampled table gets with the stratum name of each synapse (policy "stratified").
STRATUM_COLUMN = "stratum"
#: Columns of :attr:`SampleResult.summary`.
SUMMARY_COLUMNS = ("group", "available", "asked", "taken")

Point = tuple[float, float, float]
Box = tuple[Point, Point]


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _box(value: Any, where: str) -> Box:
    """``((x0, y0, z0), (x1, y1, z1))`` as floats with lo < hi on every axis."""
    try:
        lo, hi = value
        corners = (tuple(lo), tuple(hi))
    except (TypeError, ValueError):
        corners = ((), ())
    numbers = [v for c in corners for v in c]
    if any(len(c) != 3 for c in corners) or not all(isinstance(v, Real) and not isinstance(v, bool) for v in numbers):
        raise ValueError(f"SamplePlan.{where}: {value!r} is not a box: give ((x0, y0, z0), (x1, y1, z1)) in global voxels")
    lo_t, hi_t = (tuple(float(v) for v in c) for c in corners)
    if not all(math.isfinite(v) for v in (*lo_t, *hi_t)):
        raise ValueError(f"SamplePlan.{where}: box {value!r} has a non-finite corner: give finite voxel coordinates")
    if any(a >= b for a, b in zip(lo_t, hi_t)):
        raise ValueError(
            f"SamplePlan.{where}: box {value!r} has lo >= hi on an axis: give the low corner first (the box is half-open, lo <= p < hi)"
        )
    return (lo_t, hi_t)  # type: ignore[return-value]


@dataclass(frozen=True)
class SamplePlan:
    """What to sample; validated on creation (one-line ``ValueError`` naming the field).

    ``roi`` boxes and ``strata_boxes`` are ``((x0, y0, z0), (x1, y1, z1))`` in the table's global
    voxels, half-open (lo <= p < hi). ``n`` is the total for ``random`` and an optional cap for
    ``per_axon``; ``per_stratum`` is one count for every stratum or a count per stratum name.
    """

    policy: str = "all"
    n: int | None = None
    seed: int = 0
    roi: tuple[Box, ...] = ()
    strata_column: str | None = None
    strata_boxes: dict[str, Box] | None = None
    per_stratum: int | dict[str, int] | None = None
    per_axon: int | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"SamplePlan.policy {self.policy!r} is unknown: use one of {', '.join(POLICIES)}")
        if not _is_int(self.seed):
            raise ValueError(f"SamplePlan.seed {self.seed!r} is not an integer: give an integer seed")
        if self.n is not None and (not _is_int(self.n) or self.n < 1):
            raise ValueError(f"SamplePlan.n {self.n!r} must be an integer >= 1: give how many synapses to take (or None)")
        if self.policy == "random" and self.n is None:
            raise ValueError("SamplePlan.n is missing: policy 'random' needs n, how many synapses to draw")
        if self.n is not None and self.policy not in ("random", "per_axon"):
            raise ValueError(f"SamplePlan.n is not used by policy {self.policy!r}: leave it None (n belongs to 'random' and 'per_axon')")
        roi = self.roi if self.roi is not None else ()
        if isinstance(roi, (str, bytes)) or not hasattr(roi, "__iter__"):
            raise ValueError(f"SamplePlan.roi {roi!r} is not a list of boxes: give a tuple of ((x0, y0, z0), (x1, y1, z1))")
        object.__setattr__(self, "roi", tuple(_box(b, f"roi[{i}]") for i, b in enumerate(roi)))
        self._check_strata()
        self._check_per_axon()

    def _check_strata(self) -> None:
        stratified = self.policy == "stratified"
        column, boxes = self.strata_column, self.strata_boxes
        if not stratified:
            for name in ("strata_column", "strata_boxes", "per_stratum"):
                if getattr(self, name) is not None:
                    raise ValueError(f"SamplePlan.{name} is only used by policy 'stratified': leave it None or set policy='stratified'")
            return
        if column is None and boxes is None:
            raise ValueError("SamplePlan.strata_column / strata_boxes: policy 'stratified' needs one of them (a table column or named boxes)")
        if column is not None and boxes is not None:
            raise ValueError("SamplePlan.strata_column and strata_boxes are both given: give one of them")
        if column is not None and (not isinstance(column, str) or not column):
            raise ValueError(f"SamplePlan.strata_column {column!r} is not a column name: give the name of a table column")
        if boxes is not None:
            if not isinstance(boxes, Mapping) or not boxes:
                raise ValueError("SamplePlan.strata_boxes must be a non-empty mapping of stratum name -> box")
            checked = {}
            for name, box in boxes.items():
                if not isinstance(name, str) or not name:
                    raise ValueError(f"SamplePlan.strata_boxes: stratum name {name!r} is not a non-empty string: name every box")
                checked[name] = _box(box, f"strata_boxes[{name!r}]")
            object.__setattr__(self, "strata_boxes", checked)
        per = self.per_stratum
        if per is None:
            raise ValueError("SamplePlan.per_stratum is missing: give how many synapses per stratum (one integer or a mapping name -> count)")
        if isinstance(per, Mapping):
            if not per:
                raise ValueError("SamplePlan.per_stratum is an empty mapping: give a count for at least one stratum")
            for name, count in per.items():
                if not _is_int(count) or count < 0:
                    raise ValueError(f"SamplePlan.per_stratum[{name!r}] {count!r} must be an integer >= 0")
            if boxes is not None:
                unknown = sorted(str(k) for k in per if k not in self.strata_boxes)  # type: ignore[operator]
                if unknown:
                    raise ValueError(
                        f"SamplePlan.per_stratum names {', '.join(unknown)} that are not strata boxes: use one of {', '.join(self.strata_boxes)}"  # type: ignore[arg-type]
                    )
            object.__setattr__(self, "per_stratum", {str(k): int(v) for k, v in per.items()})
        elif not _is_int(per) or per < 1:
            raise ValueError(f"SamplePlan.per_stratum {per!r} must be an integer >= 1 or a mapping name -> count")

    def _check_per_axon(self) -> None:
        if self.policy != "per_axon":
            if self.per_axon is not None:
                raise ValueError("SamplePlan.per_axon is only used by policy 'per_axon': leave it None or set policy='per_axon'")
            return
        if self.per_axon is None:
            raise ValueError("SamplePlan.per_axon is missing: policy 'per_axon' needs how many synapses per presynaptic partner")
        if not _is_int(self.per_axon) or self.per_axon < 1:
            raise ValueError(f"SamplePlan.per_axon {self.per_axon!r} must be an integer >= 1: give how many synapses per axon")

    def as_dict(self) -> dict[str, Any]:
        """Plain (YAML / JSON) form, to record the plan in a run; :meth:`from_dict` reads it back."""
        return {
            "policy": self.policy,
            "n": self.n,
            "seed": int(self.seed),
            "roi": [[list(lo), list(hi)] for lo, hi in self.roi],
            "strata_column": self.strata_column,
            "strata_boxes": None if self.strata_boxes is None else {k: [list(lo), list(hi)] for k, (lo, hi) in self.strata_boxes.items()},
            "per_stratum": dict(self.per_stratum) if isinstance(self.per_stratum, Mapping) else self.per_stratum,
            "per_axon": self.per_axon,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SamplePlan:
        """The plan from its plain form; an unknown key is a ``ValueError`` naming it."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ValueError(f"sample plan: unknown key(s) {', '.join(unknown)}: use {', '.join(sorted(known))}")
        return cls(**dict(data))


@dataclass
class SampleResult:
    """The sample: ``table`` (rows kept, ordered by table row, ``stratum`` where stratified),
    ``summary`` (per stratum / axon / whole table: available, asked, taken) and ``notes``
    (plain sentences on what the sample could not do as asked)."""

    table: pd.DataFrame
    summary: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    plan: SamplePlan | None = None


# --- table checks ------------------------------------------------------------------------


def _require_columns(table: pd.DataFrame, columns: tuple[str, ...] | list[str], why: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"synapse table has no column(s) {', '.join(missing)} ({why}): columns are {', '.join(map(str, table.columns))}")


def _row_labels(table: pd.DataFrame) -> np.ndarray:
    """What a message calls a row: its table row when known, else its position."""
    if ROW_COLUMN in table.columns:
        return table[ROW_COLUMN].to_numpy()
    return np.arange(len(table))


def _check_unique_names(table: pd.DataFrame, order: np.ndarray) -> None:
    """A name twice is an error naming both rows. Hashing the names in table-row order reads
    them roughly in memory order, twice as fast on a shuffled million-row table."""
    values = table[L.NAME_COLUMN].to_numpy()[order]
    if len(pd.unique(values)) == len(values):
        return
    names = pd.Series(values)
    dup = names.duplicated(keep=False).to_numpy()
    first = int(np.flatnonzero(dup)[0])
    same = np.flatnonzero(dup & (names == names.iloc[first]).to_numpy())
    rows = _row_labels(table)[order]
    what = "table rows" if ROW_COLUMN in table.columns else "rows"
    raise ValueError(
        f"synapse {names.iloc[first]!r} appears twice in the synapse table ({what} {rows[same[0]]} and {rows[same[1]]}): "
        f"give every synapse a unique {L.NAME_COLUMN}"
    )


def _canonical_order(table: pd.DataFrame) -> np.ndarray:
    """Positions of the rows sorted by table row (stable): every draw happens in this order."""
    if ROW_COLUMN not in table.columns:
        return np.arange(len(table))
    rows = table[ROW_COLUMN]
    if rows.isna().any():
        bad = int(np.flatnonzero(rows.isna().to_numpy())[0])
        raise ValueError(f"synapse table: {ROW_COLUMN} is missing in row {bad}: every row needs its row number in the source file")
    values = rows.to_numpy(dtype=np.int64)
    if len(values) < 2 or bool(np.all(values[1:] >= values[:-1])):
        return np.arange(len(table))
    return np.argsort(values, kind="stable")


def _positions(table: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """(len(rows), 3) float x, y, z of the given row positions."""
    cols = [table[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in L.CENTER_COLUMNS]
    return np.stack([c[rows] for c in cols], axis=1) if len(rows) else np.empty((0, 3))


def _in_box(xyz: np.ndarray, box: Box) -> np.ndarray:
    lo, hi = np.asarray(box[0]), np.asarray(box[1])
    return np.all((xyz >= lo) & (xyz < hi), axis=1)


def _take_ranked(
    rng: np.random.Generator, codes: np.ndarray, asked: np.ndarray, group_order: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """In every group (``codes``), ``asked[group]`` rows drawn at random without replacement.

    A random permutation of the rows, then a stable sort by group, puts every group's rows in
    random order (one radix / merge sort, no per-group loop). Returns the boolean mask, the row
    order (by group, or by ``group_order[group]`` when given, then at random) and which rows of
    that order are kept, so a caller can cap a total across groups.
    """
    n = len(codes)
    perm = rng.permutation(n)
    primary = codes if group_order is None else group_order[codes]
    small = np.int16 if primary.max(initial=0) < np.iinfo(np.int16).max else np.int32 if n < 2**31 else np.int64
    order = perm[np.argsort(primary[perm].astype(small), kind="stable")]
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]) if n else np.empty(0, dtype=np.int64)
    lengths = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, lengths)
    keep_sorted = rank < asked[sorted_codes]
    mask = np.zeros(n, dtype=bool)
    mask[order[keep_sorted]] = True
    return mask, order, keep_sorted


# --- policies ------------------------------------------------------------------------------


def _summary(groups: Any, available: np.ndarray, asked: Any, taken: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({
        "group": groups,
        "available": np.asarray(available, dtype=np.int64),
        "asked": pd.array(asked, dtype="Int64"),
        "taken": np.asarray(taken, dtype=np.int64),
    })


def _random(cand: np.ndarray, plan: SamplePlan, rng: np.random.Generator, notes: list[str]):
    n_avail = len(cand)
    asked = int(plan.n)  # type: ignore[arg-type]
    if asked >= n_avail:
        keep = np.ones(n_avail, dtype=bool)
        if asked > n_avail:
            notes.append(f"random: {asked:,} asked, {n_avail:,} available: all {n_avail:,} taken")
    else:
        keys = rng.random(n_avail)
        keep = np.zeros(n_avail, dtype=bool)
        keep[np.argpartition(keys, asked - 1)[:asked]] = True
    return keep, None, _summary(["all"], [n_avail], [asked], [int(keep.sum())])


def _strata_codes(table: pd.DataFrame, cand: np.ndarray, plan: SamplePlan, notes: list[str]) -> tuple[np.ndarray, list[str]]:
    """Stratum index per candidate (-1: none) and the stratum names."""
    if plan.strata_boxes is not None:
        names = list(plan.strata_boxes)
        xyz = _positions(table, cand)
        codes = np.full(len(cand), -1, dtype=np.int64)
        for i, box in enumerate(plan.strata_boxes.values()):
            inside = _in_box(xyz, box)
            twice = int((inside & (codes >= 0)).sum())
            if twice:
                owners = sorted({names[c] for c in np.unique(codes[inside & (codes >= 0)])})
                notes.append(
                    f"{twice:,} synapses of stratum box {names[i]} also lie in {', '.join(owners)}: each belongs to the first box listed"
                )
            codes[inside & (codes < 0)] = i
        outside = int((codes < 0).sum())
        if outside:
            notes.append(f"{outside:,} synapses in no stratum box left out of stratified sampling")
        return codes, names
    column = plan.strata_column
    if column not in table.columns:
        raise ValueError(
            f"SamplePlan.strata_column {column!r} is not a column of the synapse table: use one of {', '.join(map(str, table.columns))}"
        )
    values = table[column].iloc[cand]
    raw_codes, uniques = pd.factorize(values, sort=False)
    missing = int((raw_codes < 0).sum())
    if missing:
        notes.append(f"{missing:,} synapses without a value in column {column} left out of stratified sampling")
    names_raw = [str(u) for u in uniques]
    order = np.argsort(np.array(names_raw, dtype=object), kind="stable") if names_raw else np.empty(0, dtype=np.int64)
    remap = np.empty(len(names_raw), dtype=np.int64)
    remap[order] = np.arange(len(names_raw))
    codes = np.where(raw_codes >= 0, remap[np.maximum(raw_codes, 0)] if len(remap) else -1, -1).astype(np.int64)
    return codes, [names_raw[i] for i in order]


def _stratified(table: pd.DataFrame, cand: np.ndarray, plan: SamplePlan, rng: np.random.Generator, notes: list[str]):
    codes, names = _strata_codes(table, cand, plan, notes)
    per = plan.per_stratum
    extra: list[str] = []
    if isinstance(per, Mapping):
        not_listed = [name for name in names if name not in per]
        if not_listed:
            notes.append(f"strata {', '.join(not_listed)} are not listed in per_stratum: left out")
        extra = [name for name in per if name not in names]
        asked_list = [int(per.get(name, 0)) for name in names]
    else:
        asked_list = [int(per)] * len(names)  # type: ignore[arg-type]
    asked = np.asarray(asked_list, dtype=np.int64)
    valid = codes >= 0
    keep = np.zeros(len(cand), dtype=bool)
    if valid.any():
        sub, _, _ = _take_ranked(rng, codes[valid], asked)
        keep[np.flatnonzero(valid)[sub]] = True
    available = np.bincount(codes[valid], minlength=len(names))
    taken = np.bincount(codes[keep], minlength=len(names))
    for name, a, av, t in zip(names, asked, available, taken):
        if 0 < av < a:
            notes.append(f"stratum {name}: {a:,} asked, {av:,} available: all {av:,} taken")
    for name in extra:
        notes.append(f"stratum {name}: {int(per[name]):,} asked, 0 available: none taken")  # type: ignore[index]
    summary = _summary(
        names + extra,
        np.r_[available, np.zeros(len(extra), dtype=np.int64)],
        [*asked_list, *(int(per[name]) for name in extra)],  # type: ignore[index]
        np.r_[taken, np.zeros(len(extra), dtype=np.int64)],
    )
    labels = np.asarray(names + [""], dtype=object)[np.where(codes >= 0, codes, len(names))]
    return keep, labels, summary


def _per_axon(table: pd.DataFrame, cand: np.ndarray, plan: SamplePlan, rng: np.random.Generator, notes: list[str]):
    _require_columns(table, [PRE_COLUMN], "policy 'per_axon' groups synapses by presynaptic partner")
    pre = table[PRE_COLUMN].iloc[cand]
    known = pre.notna().to_numpy()
    unknown = int((~known).sum())
    if unknown:
        notes.append(f"{unknown:,} synapses without a known presynaptic partner left out of per_axon sampling")
    pre_known = pre[known].to_numpy(dtype=np.int64) if known.any() else np.empty(0, dtype=np.int64)
    axons, codes_known = np.unique(pre_known, return_inverse=True)
    codes_known = codes_known.reshape(-1)
    n_axons = len(axons)
    per = int(plan.per_axon)  # type: ignore[arg-type]
    axon_rank = rng.permutation(n_axons)
    keep = np.zeros(len(cand), dtype=bool)
    known_pos = np.flatnonzero(known)
    if n_axons:
        sub, order, keep_sorted = _take_ranked(rng, codes_known, np.full(n_axons, per, dtype=np.int64), axon_rank)
        if plan.n is not None and int(sub.sum()) > plan.n:
            chosen_sorted = order[keep_sorted]  # taken rows, axons in random order
            capped = chosen_sorted[: plan.n]
            sub = np.zeros_like(sub)
            sub[capped] = True
            last = codes_known[capped[-1]]
            full_axons = len(np.unique(codes_known[capped]))
            cut = int(sub[codes_known == last].sum())
            whole = min(per, int((codes_known == last).sum()))
            text = f"per_axon: n = {plan.n:,} in total reached after {full_axons:,} of {n_axons:,} axons (taken in random order)"
            if cut < whole:
                text += f"; the last axon ({axons[last]}) gave {cut} of its {whole}"
            notes.append(text)
        keep[known_pos[sub]] = True
    available = np.bincount(codes_known, minlength=n_axons)
    taken = np.bincount(codes_known[keep[known_pos]], minlength=n_axons)
    if plan.n is None and n_axons:
        short = int((available < per).sum())
        if short:
            notes.append(f"{short:,} of {n_axons:,} axons have fewer than {per} synapses: all of theirs taken")
    summary = _summary(pd.array(axons, dtype="Int64"), available, np.full(n_axons, per), taken)
    return keep, None, summary


def sample_synapses(table: pd.DataFrame, plan: SamplePlan) -> SampleResult:
    """The rows of ``table`` that ``plan`` selects, in table-row order, with a summary and notes.

    The draw is made over the rows sorted by ``table_row`` (row position when the table has
    none) with ``numpy.random.default_rng(plan.seed)``, so the same plan gives the same sample
    however the table is ordered. A duplicated synapse name is an error: the sample could not
    promise to hold every synapse at most once otherwise.
    """
    if not isinstance(plan, SamplePlan):
        raise TypeError(f"sample_synapses: plan must be a SamplePlan, not {type(plan).__name__}")
    _require_columns(table, [L.NAME_COLUMN], "every synapse needs its name")
    if plan.roi or plan.strata_boxes is not None:
        _require_columns(table, list(L.CENTER_COLUMNS), "boxes are tested against the synapse positions x, y, z")
    if plan.policy == "stratified" and STRATUM_COLUMN in table.columns and plan.strata_column != STRATUM_COLUMN:
        raise ValueError(f"synapse table already has a column {STRATUM_COLUMN!r}: rename it, or use it as strata_column")
    notes: list[str] = []
    cand = _canonical_order(table)
    _check_unique_names(table, cand)
    total = len(cand)
    if plan.roi:
        xyz = _positions(table, cand)
        inside = np.zeros(total, dtype=bool)
        for box in plan.roi:
            inside |= _in_box(xyz, box)
        cand = cand[inside]
        notes.append(f"region of interest: {len(cand):,} of {total:,} synapses inside the {len(plan.roi)} box(es)")
    rng = np.random.default_rng(plan.seed)
    labels = None
    if plan.policy == "all":
        keep = np.ones(len(cand), dtype=bool)
        summary = _summary(["all"], [len(cand)], [None], [len(cand)])
    elif plan.policy == "random":
        keep, labels, summary = _random(cand, plan, rng, notes)
    elif plan.policy == "stratified":
        keep, labels, summary = _stratified(table, cand, plan, rng, notes)
    else:
        keep, labels, summary = _per_axon(table, cand, plan, rng, notes)
    chosen = cand[keep]
    out = table.iloc[chosen].reset_index(drop=True)
    if labels is not None:
        out[STRATUM_COLUMN] = pd.array(labels[keep], dtype=object)
    logger.info("sampled %d of %d synapses (policy %s, seed %d)", len(out), total, plan.policy, plan.seed)
    return SampleResult(table=out, summary=summary, notes=notes, plan=plan)
