"""Distance statistics of presynapse connectivity: pure functions on arrays.

``X`` holds one row of coordinates per synapse, ``axon`` a neurite label per synapse (a
neurite with one synapse has a label of its own) and ``strata`` the blocks labels may be
shuffled within (the bbox, or ``None`` for all together). The choices behind the statistic,
the null and the inter-pair sampling are documented in :mod:`synapse_nb.connectivity.groups`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..analysis.clustering import finite_matrix
from ..core.progress_bars import progress

logger = logging.getLogger(__name__)

#: Column names shared by the presynapse modules: neurite label, group name.
AXON_COLUMN = "axon"
GROUP_COLUMN = "group"
#: Inter-neurite pairs above this many are sampled (seeded) for the distribution and its mean.
MAX_INTER_PAIRS = 200_000
#: A group's mean distance to other neurites uses at most this many of them (seeded sample).
MAX_OTHERS_PER_GROUP = 5_000
#: Array elements one block of permutations may allocate (keeps memory flat for large data).
PERM_BLOCK_ELEMENTS = 4_000_000
#: Work (permutations x grouped synapses) above which a progress bar is shown.
PROGRESS_MIN_WORK = 2_000_000


def as_points(X: np.ndarray) -> np.ndarray:
    """``X`` as a finite float 2-D array (a clear error naming the bad rows otherwise)."""
    return finite_matrix(X, what="coordinates", fix="rerun 04_reduce")


def _codes(values: Sequence | np.ndarray | None, n: int, what: str) -> np.ndarray:
    if values is None:
        return np.zeros(n, dtype=np.int64)
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{what} has {arr.shape} entries for {n} synapses")
    return pd.factorize(pd.Series(arr).astype(str))[0].astype(np.int64)


def _groups_of(axon: np.ndarray, min_size: int = 2) -> list[np.ndarray]:
    """Member positions of every label occurring at least ``min_size`` times (first-seen order)."""
    order = np.argsort(axon, kind="stable")
    chunks = np.split(order, np.flatnonzero(np.diff(axon[order])) + 1) if len(order) else []
    kept = [c for c in chunks if len(c) >= min_size]
    kept.sort(key=lambda c: int(c[0]))
    return kept


def pair_distances(X: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Distances of every pair among ``members`` (rows of ``X``), in ``triu`` order."""
    from scipy.spatial.distance import pdist

    return pdist(np.asarray(X)[np.asarray(members)]) if len(members) > 1 else np.zeros(0)


@dataclass
class _Stratum:
    members: np.ndarray  # positions of the stratum's synapses
    groups: list[np.ndarray]  # positions of each group (>= 2 members)

    @property
    def sizes(self) -> list[int]:
        return [len(g) for g in self.groups]


def _strata(axon: np.ndarray, strata: np.ndarray) -> list[_Stratum]:
    out = []
    for s in pd.unique(strata):
        members = np.flatnonzero(strata == s)
        groups = [members[g] for g in _groups_of(axon[members])]
        out.append(_Stratum(members, groups))
    return out


def _check_nested(axon: np.ndarray, strata: np.ndarray) -> None:
    """A neurite lies in one bbox; a label spanning strata would make the null meaningless."""
    per = pd.DataFrame({"a": axon, "s": strata}).groupby("a")["s"].nunique()
    if (per > 1).any():
        raise ValueError("a neurite label occurs in more than one stratum (bbox); neurite labels must include the bbox")


def distance_pairs(
    X: np.ndarray,
    axon: Sequence | np.ndarray,
    strata: Sequence | np.ndarray | None = None,
    max_inter_pairs: int = MAX_INTER_PAIRS,
    seed: int = 42,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Intra-group and inter-neurite pair distances: ``(intra, inter, inter_sampled)``.

    Intra: all pairs within each neurite with >= 2 synapses. Inter: pairs of synapses with
    different neurite labels in the same stratum; a seeded uniform sample of
    ``max_inter_pairs`` pairs when there are more.
    """
    X = as_points(X)
    n = len(X)
    a = _codes(axon, n, "axon")
    s = _codes(strata, n, "strata")
    _check_nested(a, s)
    layout = _strata(a, s)
    intra = [pair_distances(X, g) for st in layout for g in st.groups]
    intra_arr = np.concatenate(intra) if intra else np.zeros(0)
    counts = []
    for st in layout:
        m = len(st.members)
        _, k = np.unique(a[st.members], return_counts=True)
        counts.append(m * (m - 1) // 2 - int((k * (k - 1) // 2).sum()))
    total = int(sum(counts))
    if total == 0:
        return intra_arr, np.zeros(0), False
    if total <= max_inter_pairs:
        inter = []
        for st in layout:
            m = len(st.members)
            if m < 2:
                continue
            i, j = np.triu_indices(m, 1)
            keep = a[st.members][i] != a[st.members][j]
            pi, pj = st.members[i[keep]], st.members[j[keep]]
            inter.append(np.linalg.norm(X[pi] - X[pj], axis=1))
        return intra_arr, np.concatenate(inter), False
    rng = np.random.default_rng(seed)
    inter = []
    for st, c in zip(layout, counts):
        want = int(round(max_inter_pairs * c / total))
        got: list[np.ndarray] = []
        n_got = 0
        while want and n_got < want:
            i = rng.integers(0, len(st.members), size=2 * (want - n_got))
            j = rng.integers(0, len(st.members), size=2 * (want - n_got))
            pi, pj = st.members[i], st.members[j]
            keep = a[pi] != a[pj]
            d = np.linalg.norm(X[pi[keep]] - X[pj[keep]], axis=1)[: want - n_got]
            got.append(d)
            n_got += len(d)
        inter.extend(got)
    logger.info("distance_pairs: %d inter-neurite pairs, sampled %d", total, max_inter_pairs)
    return intra_arr, np.concatenate(inter) if inter else np.zeros(0), True


def group_distances(
    X: np.ndarray,
    axon: Sequence | np.ndarray,
    strata: Sequence | np.ndarray | None = None,
    max_others: int = MAX_OTHERS_PER_GROUP,
    seed: int = 42,
) -> pd.DataFrame:
    """Per group (label with >= 2 synapses, first-seen order): n, mean_intra, mean_inter, ratio.

    ``mean_inter`` is the mean distance from the group's members to the synapses of other
    neurites in its stratum (NaN when there are none; a seeded sample of ``max_others`` of
    them in larger strata).
    """
    from scipy.spatial.distance import cdist

    X = as_points(X)
    n = len(X)
    labels = np.asarray(axon).astype(str)
    a = _codes(axon, n, "axon")
    s = _codes(strata, n, "strata")
    _check_nested(a, s)
    rng = np.random.default_rng(seed)
    rows = []
    for st in _strata(a, s):
        for g in st.groups:
            others = st.members[a[st.members] != a[g[0]]]
            if len(others) > max_others:
                others = rng.choice(others, size=max_others, replace=False)
            intra = float(pair_distances(X, g).mean())
            inter = float(cdist(X[g], X[others]).mean()) if len(others) else float("nan")
            rows.append({AXON_COLUMN: labels[g[0]], "n": len(g), "mean_intra": intra, "mean_inter": inter,
                         "ratio": intra / inter if inter > 0 else float("nan"), "_first": int(g[0])})
    out = pd.DataFrame(rows, columns=[AXON_COLUMN, "n", "mean_intra", "mean_inter", "ratio", "_first"])
    return out.sort_values("_first", kind="stable").drop(columns="_first").reset_index(drop=True)


@dataclass
class PermutationResult:
    """Observed mean intra-group distance against its null under shuffled neurite labels."""

    statistic: float
    null: np.ndarray
    p_value: float
    n_permutations: int
    scope: str
    seed: int
    n_groups: int
    n_grouped: int
    n_pairs: int

    @property
    def null_mean(self) -> float:
        return float(self.null.mean()) if len(self.null) else float("nan")

    @property
    def effect(self) -> float:
        """Observed over expected mean intra distance (< 1: same-neurite synapses are closer)."""
        return self.statistic / self.null_mean if self.null_mean > 0 else float("nan")

    @property
    def p_min(self) -> float:
        """The smallest p-value this many permutations can give."""
        return 1.0 / (1 + self.n_permutations)

    def p_text(self) -> str:
        """The p-value in words, saying when it is at the floor the permutation count allows."""
        if not np.isfinite(self.p_value):
            return "n/a"
        floor = f", the smallest value {self.n_permutations} permutations can give" if self.p_value <= self.p_min * (1 + 1e-9) else ""
        return f"{self.p_value:.3g}{floor}"

    def as_dict(self) -> dict[str, Any]:
        return {"statistic": finite_or_none(self.statistic), "null_mean": finite_or_none(self.null_mean),
                "null_std": finite_or_none(float(self.null.std())) if len(self.null) else None,
                "effect": finite_or_none(self.effect), "p_value": finite_or_none(self.p_value), "n_permutations": self.n_permutations,
                "scope": self.scope, "seed": self.seed, "n_groups": self.n_groups, "n_grouped": self.n_grouped,
                "n_pairs": self.n_pairs}


def finite_or_none(v: float) -> float | None:
    """JSON-friendly number: NaN and inf become None."""
    return None if v is None or not np.isfinite(v) else float(v)


def _intra_sums(X: np.ndarray, slots: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Sum of intra-group distances per row of ``slots`` (rows = arrangements, columns = group
    slots laid out size by size as in ``sizes``)."""
    total = np.zeros(len(slots))
    off = 0
    for k in sorted(set(sizes)):
        m = sizes.count(k)
        block = slots[:, off : off + k * m].reshape(len(slots), m, k)
        off += k * m
        i, j = np.triu_indices(k, 1)
        d = np.linalg.norm(X[block[:, :, i]] - X[block[:, :, j]], axis=-1)
        total += d.sum(axis=(1, 2))
    return total


def permutation_test(
    X: np.ndarray,
    axon: Sequence | np.ndarray,
    strata: Sequence | np.ndarray | None = None,
    n_permutations: int = 1000,
    seed: int = 42,
    scope: str | None = None,
) -> PermutationResult:
    """Are synapses of the same neurite closer than random synapses of the same stratum?

    ``axon``: neurite label per synapse (singles have their own label); ``strata``: labels are
    shuffled only within a stratum (e.g. bbox; ``None`` = all together). Group sizes are kept.
    """
    X = as_points(X)
    n = len(X)
    if int(n_permutations) < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    n_permutations = int(n_permutations)
    a = _codes(axon, n, "axon")
    s = _codes(strata, n, "strata")
    _check_nested(a, s)
    scope = scope or ("all" if strata is None else "strata")
    layout = [st for st in _strata(a, s) if st.groups]
    n_groups = sum(len(st.groups) for st in layout)
    n_grouped = sum(sum(st.sizes) for st in layout)
    n_pairs = sum(k * (k - 1) // 2 for st in layout for k in st.sizes)
    if n_groups == 0:
        return PermutationResult(float("nan"), np.zeros(0), float("nan"), n_permutations, scope, seed, 0, 0, 0)
    observed = 0.0
    for st in layout:
        sizes = sorted(st.sizes)
        slots = np.concatenate([g for k in sorted(set(sizes)) for g in st.groups if len(g) == k])[None, :]
        observed += float(_intra_sums(X, slots, sizes)[0])
    observed /= n_pairs
    rng = np.random.default_rng(seed)
    sums = np.zeros(n_permutations)
    work = n_permutations * n_grouped
    bar = progress(total=n_permutations * len(layout), desc="permutations", enabled=work > PROGRESS_MIN_WORK)
    for st in layout:
        sizes = sorted(st.sizes)
        g_total = sum(sizes)
        m = len(st.members)
        per_row = m + sum(k * (k - 1) // 2 for k in sizes) * X.shape[1] * 2
        chunk = max(1, min(n_permutations, PERM_BLOCK_ELEMENTS // max(per_row, 1)))
        for start in range(0, n_permutations, chunk):
            c = min(chunk, n_permutations - start)
            order = rng.permuted(np.tile(np.arange(m), (c, 1)), axis=1)[:, :g_total]
            sums[start : start + c] += _intra_sums(X, st.members[order], sizes)
            bar.update(c)
    bar.close()
    null = sums / n_pairs
    # a null value equal to the observed one counts against the effect (conservative)
    p = (1 + int(np.sum(null <= observed * (1 + 1e-12)))) / (1 + n_permutations)
    return PermutationResult(observed, null, p, n_permutations, scope, seed, n_groups, n_grouped, n_pairs)

