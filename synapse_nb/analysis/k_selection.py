"""Criteria for choosing the number of clusters k, and the rules that turn them into one k.

The silhouette alone prefers the coarsest well-separated split: two tight groups next to a
third give a higher mean silhouette at k = 2 than at the true k = 3. The criteria here ask
different questions:

* **gap** (Tibshirani, Walther & Hastie 2001): how much tighter the clusters are than those
  of structureless data. Reference data sets are drawn uniformly in the bounding box of the
  data aligned with its principal axes, clustered the same way, and
  ``Gap(k) = mean_b log W*_kb - log W_k`` (``W`` the within-cluster sum of squares).
  Rule: the smallest k with ``Gap(k) >= Gap(k+1) - s(k+1)``, ``s = sd * sqrt(1 + 1/B)``.
* **stability**, as prediction strength (Tibshirani & Walther 2005): split the synapses into
  two halves, cluster both, assign the test half to the training half's centroids, and ask
  which share of the pairs in each test cluster stay together; the score of k is the worst
  test cluster (so one split-up or merged cluster is enough to lower it). Unlike the ARI of
  subsamples against the full clustering it does not reach 1.0 for every coarser-than-true k
  and then stop being informative: merging true groups keeps it high, splitting one lowers
  it, so the rule is the largest k whose mean score reaches ``threshold``.
* **consensus**: the median of the k chosen by silhouette, gap and stability, i.e. the k at
  least two of the three agree on, and the middle one when all three differ.

Why consensus is the default (measured; kmeans / ward, k tried 2..8): on 100 synthetic sets of
Gaussian blobs (true k 2..6, unequal sizes and spreads, 62-200 points, 10-50 dimensions) the
true k was found by silhouette 59% / 51%, gap 75% / 85%, stability 54% / 70% (it under-splits
small clusters), consensus 75% / 80%. On the demo's deep features (63 synapses, 3 classes,
50 PCA components) silhouette picks 2 (ARI 0.56 / 0.58 against the classes) and gap 6 / 7
(ARI 0.68 / 0.57), while stability and consensus pick 3 (ARI 0.95 / 1.00). No single criterion
is right on both; the median is, and it is never the worst.

The criteria take a ``labeler(X, ks, seed) -> {k: labels}`` so they work with any method that
partitions (kmeans, ward); they know nothing of how the clustering is done.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ..core.progress_bars import progress

logger = logging.getLogger(__name__)

CRITERIA = ("silhouette", "gap", "stability", "consensus")
DEFAULT_CRITERION = "consensus"  # see the module docstring for the evidence
GAP_REFERENCES = 10
PS_SPLITS = 10
PS_THRESHOLD = 0.8
SELECTION_MAX_N = 5_000
RESAMPLE_N_INIT = 3  # kmeans restarts per refit of a reference or half (10 for the real clustering)

Labeler = Callable[[np.ndarray, Sequence[int], int], dict[int, np.ndarray]]


def check_criterion(criterion: str) -> str:
    """``criterion`` lower-cased, or an error listing the choices."""
    c = str(criterion).lower()
    if c not in CRITERIA:
        raise ValueError(f"unknown k_selection criterion {criterion!r}; choose from {CRITERIA}")
    return c


def within_ss(X: np.ndarray, labels: np.ndarray) -> float:
    """Sum over clusters of squared distances to the cluster mean (noise, label -1, left out)."""
    total = 0.0
    for u in set(np.asarray(labels).tolist()) - {-1}:
        m = X[labels == u]
        total += float(((m - m.mean(axis=0)) ** 2).sum())
    return total


def subsample(X: np.ndarray, max_n: int, seed: int) -> np.ndarray:
    """At most ``max_n`` rows (a seeded random subset, in original order): the resampling
    criteria refit many times and their answer does not need every synapse."""
    if X.shape[0] <= max_n:
        return X
    logger.info("k selection: gap and stability use a random subset of %d of %d synapses", max_n, X.shape[0])
    rng = np.random.default_rng(seed)
    return X[np.sort(rng.choice(X.shape[0], size=max_n, replace=False))]


def uniform_reference(X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Structureless data of the same size: uniform in the bounding box of ``X`` taken along
    its principal axes (so the reference keeps the data's shape and scale, not its clusters)."""
    mean = X.mean(axis=0)
    _, _, vt = np.linalg.svd(X - mean, full_matrices=False)
    scores = (X - mean) @ vt.T
    z = rng.uniform(scores.min(axis=0), scores.max(axis=0), size=scores.shape)
    return z @ vt + mean


def gap_statistic(
    X: np.ndarray, labeler: Labeler, ks: Sequence[int], seed: int, *, n_refs: int = GAP_REFERENCES, show_progress: bool = True
) -> pd.DataFrame:
    """One row per k: ``log_w`` (data), ``gap`` and ``gap_sd`` (``s(k)``, the standard
    deviation of the reference log W times ``sqrt(1 + 1/B)``)."""
    if n_refs < 2:
        raise ValueError(f"the gap statistic needs n_refs >= 2 reference data sets, got {n_refs}")
    ks = list(ks)
    log_w = {k: np.log(within_ss(X, lab)) for k, lab in labeler(X, ks, seed).items()}
    rng = np.random.default_rng(seed)
    ref = np.empty((n_refs, len(ks)))
    for b in progress(range(n_refs), desc="gap references", enabled=show_progress):
        Z = uniform_reference(X, rng)
        labels = labeler(Z, ks, seed + 1 + b)
        ref[b] = [np.log(within_ss(Z, labels[k])) for k in ks]
    gap = ref.mean(axis=0) - np.array([log_w[k] for k in ks])
    sd = ref.std(axis=0) * np.sqrt(1.0 + 1.0 / n_refs)
    return pd.DataFrame({"k": ks, "log_w": [log_w[k] for k in ks], "gap": gap, "gap_sd": sd})


def _nearest_centroid(X_train: np.ndarray, labels: np.ndarray, X_test: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    centroids = np.stack([X_train[labels == u].mean(axis=0) for u in ids])
    d = ((X_test[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    return ids[np.argmin(d, axis=1)]


def _strength(test_labels: np.ndarray, predicted: np.ndarray) -> float:
    """Worst test cluster's share of member pairs the training centroids keep together
    (clusters of one member have no pairs and are left out)."""
    worst = np.inf
    for u in np.unique(test_labels):
        members = predicted[test_labels == u]
        m = len(members)
        if m < 2:
            continue
        _, counts = np.unique(members, return_counts=True)
        worst = min(worst, float((counts * (counts - 1)).sum()) / (m * (m - 1)))
    return float(worst) if np.isfinite(worst) else float("nan")


def prediction_strength(
    X: np.ndarray, labeler: Labeler, ks: Sequence[int], seed: int, *, n_splits: int = PS_SPLITS, show_progress: bool = True
) -> pd.DataFrame:
    """One row per k: mean and standard deviation of the prediction strength over
    ``n_splits`` random halvings, each scored both ways (train on one half, test the other).
    A k with fewer than two synapses per cluster in a half is not scored (NaN)."""
    if n_splits < 1:
        raise ValueError(f"prediction strength needs n_splits >= 1, got {n_splits}")
    ks = list(ks)
    n = X.shape[0]
    half = n // 2
    usable = [k for k in ks if 2 * k <= half]
    scores: dict[int, list[float]] = {k: [] for k in ks}
    rng = np.random.default_rng(seed)
    for s in progress(range(n_splits), desc="prediction strength", enabled=show_progress):
        perm = rng.permutation(n)
        halves = (np.sort(perm[:half]), np.sort(perm[half:]))
        fits = [labeler(X[h], usable, seed + 1 + 2 * s + i) for i, h in enumerate(halves)]
        for train, test in ((0, 1), (1, 0)):
            for k in usable:
                predicted = _nearest_centroid(X[halves[train]], fits[train][k], X[halves[test]])
                scores[k].append(_strength(fits[test][k], predicted))
    rows = [{"k": k, "prediction_strength": float(np.nanmean(v)) if v else float("nan"),
             "prediction_strength_sd": float(np.nanstd(v)) if v else float("nan")} for k, v in scores.items()]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# rules: a table (one row per k) -> one k
# --------------------------------------------------------------------------------------
def pick_silhouette(table: pd.DataFrame) -> int:
    """The k with the highest mean silhouette (the first k when none could be computed)."""
    sil = table["silhouette"]
    return int(table.loc[sil.idxmax(), "k"]) if sil.notna().any() else int(table["k"].iloc[0])


def pick_gap(table: pd.DataFrame) -> int:
    """The smallest k with ``Gap(k) >= Gap(k+1) - s(k+1)`` (k+1 = the next k tried); when the
    gap is still rising at the end of the range, the largest k tried."""
    t = table.sort_values("k").reset_index(drop=True)
    for i in range(len(t) - 1):
        if t.loc[i, "gap"] >= t.loc[i + 1, "gap"] - t.loc[i + 1, "gap_sd"]:
            return int(t.loc[i, "k"])
    logger.warning("gap statistic still rising at k=%d: the true k may lie above the range tried", t["k"].iloc[-1])
    return int(t["k"].iloc[-1])


def pick_stability(table: pd.DataFrame, threshold: float = PS_THRESHOLD) -> int:
    """The largest k whose mean prediction strength reaches ``threshold``; when none does
    (no stable split at all), the k with the highest prediction strength; when too few
    synapses leave it uncomputed for every k, the smallest k tried (nothing shows more)."""
    ps = table["prediction_strength"]
    ok = table.loc[ps >= threshold, "k"]
    if len(ok):
        return int(ok.max())
    if ps.isna().all():
        logger.warning("prediction strength needs two synapses per cluster in each half: too few synapses "
                       "(%d k tried), so stability keeps the smallest k", len(table))
        return int(table["k"].min())
    logger.warning("no k reaches prediction strength %.2f (best %.2f): the clusters are not stable", threshold, ps.max())
    return int(table.loc[ps.idxmax(), "k"])


def picks(table: pd.DataFrame, threshold: float = PS_THRESHOLD) -> dict[str, int]:
    """The k each criterion computed in ``table`` chooses (consensus needs all three)."""
    out: dict[str, int] = {"silhouette": pick_silhouette(table)}
    if "gap" in table:
        out["gap"] = pick_gap(table)
    if "prediction_strength" in table:
        out["stability"] = pick_stability(table, threshold)
    if len(out) == 3:
        out["consensus"] = consensus_k(out)
    return out


def consensus_k(chosen: dict[str, int]) -> int:
    """The median of the k chosen by silhouette, gap and stability: the k two of them agree on,
    and the middle one when all three differ."""
    missing = {"silhouette", "gap", "stability"} - set(chosen)
    if missing:
        raise ValueError(f"consensus needs the k chosen by silhouette, gap and stability; missing {sorted(missing)}")
    return int(np.median([chosen["silhouette"], chosen["gap"], chosen["stability"]]))


RULES = {
    "silhouette": "highest silhouette",
    "gap": "smallest k with Gap(k) >= Gap(k+1) - s(k+1)",
    "stability": "largest k with prediction strength >= {threshold:.2f}",
    "consensus": "median of silhouette, gap and stability",
    "bic": "lowest BIC",
}


def rule_text(criterion: str, threshold: float = PS_THRESHOLD) -> str:
    """One line naming how ``criterion`` picks k (for logs and figure titles)."""
    return RULES[criterion].format(threshold=threshold)
