"""Clustering you can check: k selection, alternatives, stability, representatives.

Input is the standardised feature matrix or its PCA scores (``pca_*`` columns of the table
:func:`synapse_nb.analysis.reduce.reduce_features` returns); never raw features.

Scaling rules (2-core machine, up to ~100k synapses):

* KMeans above :data:`MINIBATCH_MIN_N` rows is MiniBatchKMeans.
* The silhouette above :data:`SILHOUETTE_SAMPLE` rows is computed on a seeded random sample
  of that many rows (exact silhouette is O(n^2)).
* Ward needs all pairwise distances: at most :data:`WARD_MAX_N` rows, else a clear error.
* Stability works on a seeded random subset of at most :data:`STABILITY_MAX_N` rows.
* Choosing k by gap or prediction strength (``criterion`` of :func:`select_k`) refits on
  reference data and halves: a seeded subset of at most ``k_selection.SELECTION_MAX_N``
  rows, kmeans with ``k_selection.RESAMPLE_N_INIT`` restarts; the seconds per criterion are
  in the selection table's ``attrs['seconds']``.
* scikit-learn runs with :data:`THREADS` OpenMP/BLAS threads (default 1). Measured on the
  2-core target while other work ran: 9 MiniBatchKMeans fits on 100k rows took 2.2 s with one
  thread and 19.6 s with two (OpenMP threads spin-waiting for a busy core); single-threaded
  fits are also reproducible bit for bit. Set ``cluster.THREADS = None`` to use all cores.

Labels are integers ``0..k-1`` ordered by cluster size (0 = largest); HDBSCAN noise is ``-1``
and is kept as its own group named ``"noise"``.
"""
from __future__ import annotations

import functools
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ..core.progress_bars import progress
from . import k_selection as KS
from .k_selection import within_ss as _within_ss

if TYPE_CHECKING:

    pass

logger = logging.getLogger(__name__)

METHODS = ("kmeans", "gmm", "hdbscan", "ward")
NOISE = -1
NOISE_NAME = "noise"
CLUSTER_COLUMN = "cluster"

MINIBATCH_MIN_N = 20_000
SILHOUETTE_SAMPLE = 5_000
WARD_MAX_N = 10_000
STABILITY_MAX_N = 10_000
KMEANS_N_INIT = 10
THREADS: int | None = 1


def _limit_threads(func):
    """Run ``func`` with scikit-learn's OpenMP/BLAS pools limited to :data:`THREADS`."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=THREADS):
            return func(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------
def finite_matrix(X: np.ndarray | pd.DataFrame, what: str = "matrix", fix: str = "standardise with reduce.standardize first") -> np.ndarray:
    """``X`` as a finite float 2-D array (synapses x dimensions); the error names the bad rows and ``fix``."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D {what} (synapses x dimensions), got shape {X.shape}")
    if not np.isfinite(X).all():
        rows = np.flatnonzero(~np.isfinite(X).all(axis=1))
        raise ValueError(f"NaN/inf in rows {rows[:10].tolist()} of the {what}: {fix}")
    return X



def _check_method(method: str) -> str:
    m = method.lower()
    if m not in METHODS:
        raise ValueError(f"unknown clustering method {method!r}; choose from {METHODS}")
    return m


def check_k(k: int, n: int) -> int:
    """``k`` must be a positive integer no larger than the number of synapses."""
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > n:
        raise ValueError(
            f"k={k} clusters asked but there are only n={n} synapses: choose k <= {n} "
            "(or add synapses / bboxes)"
        )
    return int(k)


def k_values(k_range: tuple[int, int] | range | Sequence[int], n: int) -> list[int]:
    """The k to try: ``(lo, hi)`` inclusive (or an explicit range), capped at ``n - 1``
    because the silhouette needs at least one cluster with two members."""
    if isinstance(k_range, tuple) and len(k_range) == 2:
        lo, hi = int(k_range[0]), int(k_range[1])
        ks = list(range(lo, hi + 1))
    else:
        ks = sorted({int(k) for k in k_range})
    if not ks:
        raise ValueError(f"k_range {k_range!r} is empty; give (lo, hi) with 2 <= lo <= hi")
    if ks[0] < 2:
        raise ValueError(f"k_range must start at k >= 2 (silhouette needs two clusters), got {k_range!r}")
    if ks[0] > n - 1:
        raise ValueError(
            f"k_range starts at k={ks[0]} but there are only n={n} synapses: "
            f"use k_range with hi <= {max(n - 1, 2)} or add synapses"
        )
    kept = [k for k in ks if k <= n - 1]
    if len(kept) < len(ks):
        logger.warning("k_range %s capped at k=%d: only %d synapses", k_range, n - 1, n)
    return kept


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters 0..k-1 by decreasing size (ties: first appearance); noise stays -1."""
    labels = np.asarray(labels)
    out = np.full(labels.shape, NOISE, dtype=np.int64)
    ids = [u for u in pd.unique(labels) if u != NOISE]
    sizes = {u: int((labels == u).sum()) for u in ids}
    order = sorted(ids, key=lambda u: -sizes[u])  # stable sort keeps first appearance on ties
    for new, old in enumerate(order):
        out[labels == old] = new
    return out


def n_clusters(labels: np.ndarray) -> int:
    """Number of clusters, noise not counted."""
    return int(len(set(np.asarray(labels).tolist()) - {NOISE}))


def cluster_names(labels: np.ndarray) -> pd.Categorical:
    """Labels as a categorical of strings ``"0".."k-1"`` (+ ``"noise"``), scanpy style."""
    labels = np.asarray(labels)
    ks = sorted(set(labels.tolist()) - {NOISE})
    cats = [str(k) for k in ks] + ([NOISE_NAME] if (labels == NOISE).any() else [])
    names = np.where(labels == NOISE, NOISE_NAME, labels.astype(str))
    return pd.Categorical(names, categories=cats)


# --------------------------------------------------------------------------------------
# one fit
# --------------------------------------------------------------------------------------
def _silhouette(X: np.ndarray, labels: np.ndarray, seed: int, sample: int = SILHOUETTE_SAMPLE) -> float:
    from sklearn.metrics import silhouette_score

    keep = labels != NOISE
    Xk, lk = X[keep], labels[keep]
    if len(set(lk.tolist())) < 2 or len(set(lk.tolist())) >= len(lk):
        return float("nan")
    size = sample if len(lk) > sample else None
    if size is not None:
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(lk), size=size, replace=False)
        Xk, lk = Xk[idx], lk[idx]
        if len(set(lk.tolist())) < 2:
            return float("nan")
    return float(silhouette_score(Xk, lk))


def default_min_cluster_size(n: int) -> int:
    """HDBSCAN default: 1% of the synapses, at least 5 (at most n // 2 for tiny data)."""
    return int(max(2, min(max(5, n // 100), n // 2)))


def _kmeans(X: np.ndarray, k: int, seed: int, n_init: int | None = None):
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if X.shape[0] > MINIBATCH_MIN_N:
        return MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=4096, n_init=3).fit(X)
    return KMeans(n_clusters=k, random_state=seed, n_init=n_init or KMEANS_N_INIT).fit(X)


def _gmm(X: np.ndarray, k: int, seed: int, covariance_type: str):
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(n_components=k, covariance_type=covariance_type, random_state=seed, n_init=2, reg_covar=1e-4).fit(X)


def _ward_tree(X: np.ndarray) -> np.ndarray:
    from scipy.cluster.hierarchy import linkage

    if X.shape[0] > WARD_MAX_N:
        raise ValueError(
            f"ward clustering needs all pairwise distances: n={X.shape[0]} synapses is above the limit "
            f"of {WARD_MAX_N}; use method='kmeans' (or 'gmm') for data this large"
        )
    return linkage(X, method="ward")


def _ward_cut(tree: np.ndarray, k: int) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster

    return fcluster(tree, t=k, criterion="maxclust") - 1


def _hdbscan(X: np.ndarray, min_cluster_size: int | None, min_samples: int | None) -> tuple[np.ndarray, dict]:
    from sklearn.cluster import HDBSCAN

    n = X.shape[0]
    mcs = min_cluster_size or default_min_cluster_size(n)
    if n > 20_000 and X.shape[1] > 20:
        logger.info("hdbscan on %d x %d may take minutes; fewer PCA components make it faster", n, X.shape[1])
    model = HDBSCAN(min_cluster_size=mcs, min_samples=min_samples, copy=True).fit(X)
    return np.asarray(model.labels_), {"min_cluster_size": mcs, "min_samples": min_samples}


def _labels_for_ks(X: np.ndarray, method: str, ks: Sequence[int], seed: int, opts: dict) -> dict[int, np.ndarray]:
    """Labels for every k (ward: one tree cut at every k)."""
    if method == "ward":
        tree = _ward_tree(X)
        return {k: _ward_cut(tree, k) for k in ks}
    if method == "kmeans":
        return {k: _kmeans(X, k, seed, opts.get("n_init")).labels_ for k in ks}
    if method == "gmm":
        return {k: _gmm(X, k, seed, opts.get("covariance_type", "diag")).predict(X) for k in ks}
    labels, _ = _hdbscan(X, opts.get("min_cluster_size"), opts.get("min_samples"))
    return {n_clusters(labels): labels}


# --------------------------------------------------------------------------------------
# k selection
# --------------------------------------------------------------------------------------
def _silhouette_table(X: np.ndarray, ks: Sequence[int], seed: int, method: str, covariance_type: str, show_progress: bool) -> pd.DataFrame:
    """One fit per k: ``k, inertia, silhouette, bic`` (BIC only for the Gaussian mixture)."""
    rows = []
    tree = _ward_tree(X) if method == "ward" else None
    for k in progress(ks, desc=f"select k ({method})", enabled=show_progress):
        bic = float("nan")
        if method == "kmeans":
            model = _kmeans(X, k, seed)
            labels, inertia = model.labels_, float(model.inertia_)
        elif method == "gmm":
            model = _gmm(X, k, seed, covariance_type)
            labels = model.predict(X)
            bic, inertia = float(model.bic(X)), _within_ss(X, labels)
        else:
            labels = _ward_cut(tree, k)
            inertia = _within_ss(X, labels)
        rows.append({"k": k, "inertia": inertia, "silhouette": _silhouette(X, labels, seed), "bic": bic})
    return pd.DataFrame(rows)


def _resampling_criteria(X: np.ndarray, ks: Sequence[int], seed: int, method: str, criterion: str,
                         n_refs: int, n_splits: int, show_progress: bool) -> tuple[list[pd.DataFrame], dict[str, float]]:
    """The gap and/or prediction-strength columns ``criterion`` needs, with their seconds."""
    Xr = KS.subsample(X, KS.SELECTION_MAX_N, seed)
    ks_r = [k for k in ks if k <= Xr.shape[0] - 1]

    def labeler(Z: np.ndarray, kk: Sequence[int], s: int) -> dict[int, np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # kmeans on tiny halves
            return _labels_for_ks(Z, method, kk, s, {"n_init": KS.RESAMPLE_N_INIT})

    parts, seconds = [], {}
    if criterion in ("gap", "consensus"):
        t0 = time.perf_counter()
        parts.append(KS.gap_statistic(Xr, labeler, ks_r, seed, n_refs=n_refs, show_progress=show_progress))
        seconds["gap"] = time.perf_counter() - t0
    if criterion in ("stability", "consensus"):
        t0 = time.perf_counter()
        parts.append(KS.prediction_strength(Xr, labeler, ks_r, seed, n_splits=n_splits, show_progress=show_progress))
        seconds["stability"] = time.perf_counter() - t0
    return parts, seconds


@_limit_threads
def select_k(
    Xs: np.ndarray,
    k_range: tuple[int, int] | Sequence[int] = (2, 10),
    seed: int = 42,
    method: str = "kmeans",
    *,
    criterion: str = KS.DEFAULT_CRITERION,
    covariance_type: str = "diag",
    n_refs: int = KS.GAP_REFERENCES,
    n_splits: int = KS.PS_SPLITS,
    threshold: float = KS.PS_THRESHOLD,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Fit every k in ``k_range``; one row per k: ``k, inertia, silhouette, bic``, the columns
    of the criteria computed (``log_w, gap, gap_sd`` for gap, ``prediction_strength,
    prediction_strength_sd`` for stability, both for consensus) and ``chosen``.

    ``criterion`` (kmeans, ward): ``silhouette`` (highest), ``gap`` (``n_refs`` uniform
    references), ``stability`` (prediction strength over ``n_splits`` halvings, largest k
    reaching ``threshold``) or ``consensus`` (median of the three); see
    :mod:`.k_selection`. The Gaussian mixture always chooses the lowest BIC. ``attrs``:
    ``chosen_k``, ``criterion``, ``rule``, ``picks`` (the k of every criterion computed),
    ``seconds`` (cost per criterion) and ``method``.
    """
    method = _check_method(method)
    if method == "hdbscan":
        raise ValueError("hdbscan finds the number of clusters itself; select_k is for kmeans, gmm and ward")
    criterion = KS.check_criterion(criterion)
    X = finite_matrix(Xs)
    ks = k_values(k_range, X.shape[0])
    t0 = time.perf_counter()
    table = _silhouette_table(X, ks, seed, method, covariance_type, show_progress)
    seconds = {"silhouette": time.perf_counter() - t0}
    if method == "gmm":
        if criterion != "silhouette":
            logger.info("select_k: the Gaussian mixture chooses k by BIC; k_selection=%r not used", criterion)
        criterion, chosen, found = "bic", int(table.loc[table["bic"].idxmin(), "k"]), {}
    else:
        parts, extra = _resampling_criteria(X, ks, seed, method, criterion, n_refs, n_splits, show_progress)
        seconds.update(extra)
        for part in parts:
            table = table.merge(part, on="k", how="left")
        found = KS.picks(table, threshold)
        chosen = found[criterion]
    table["chosen"] = table["k"] == chosen
    table.attrs.update(chosen_k=chosen, method=method, criterion=criterion, rule=KS.rule_text(criterion, threshold),
                       picks=found, seconds={c: round(v, 3) for c, v in seconds.items()}, threshold=threshold)
    logger.info("select_k (%s): k=%d by %s (%s); criteria %s; seconds %s", method, chosen, criterion,
                table.attrs["rule"], found, table.attrs["seconds"])
    return table


def chosen_k(table: pd.DataFrame) -> int:
    """The k flagged ``chosen`` in a :func:`select_k` table."""
    return int(table.loc[table["chosen"], "k"].iloc[0])


# --------------------------------------------------------------------------------------
# the clustering
# --------------------------------------------------------------------------------------
@dataclass
class ClusterResult:
    """Labels (0..k-1 by size, -1 noise) with how they were obtained."""

    labels: np.ndarray
    k: int
    method: str
    selection: pd.DataFrame | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_noise(self) -> int:
        return int((self.labels == NOISE).sum())

    def categorical(self, index: Iterable | None = None) -> pd.Series:
        """Labels as a categorical Series named ``cluster`` (``"0"``.., ``"noise"``)."""
        return pd.Series(cluster_names(self.labels), index=index, name=CLUSTER_COLUMN)

    def sizes(self) -> pd.Series:
        return self.categorical().value_counts(sort=False).rename("n_synapses")


@_limit_threads
def cluster(
    Xs: np.ndarray,
    method: str = "kmeans",
    k: int | None = None,
    k_range: tuple[int, int] | Sequence[int] = (2, 10),
    seed: int = 42,
    *,
    covariance_type: str = "diag",
    min_cluster_size: int | None = None,
    min_samples: int | None = None,
    k_selection: str = KS.DEFAULT_CRITERION,
    show_progress: bool = True,
) -> ClusterResult:
    """Cluster synapses; with ``k=None`` choose k over ``k_range`` by ``k_selection``
    (``silhouette``, ``gap``, ``stability`` or ``consensus``, see :func:`select_k`; BIC for gmm).

    ``method``: ``kmeans`` (MiniBatchKMeans above MINIBATCH_MIN_N rows), ``gmm`` (diagonal
    covariances by default: full covariances need d^2 parameters per cluster, too many for a
    few hundred synapses in 50 dimensions), ``hdbscan`` (k ignored; ``min_cluster_size``
    defaults to 1% of the synapses, at least 5) or ``ward``.
    """
    method = _check_method(method)
    X = finite_matrix(Xs)
    n = X.shape[0]
    selection = None
    info: dict[str, Any] = {"n_synapses": n, "seed": seed}
    if method == "hdbscan":
        if k is not None:
            logger.warning("hdbscan chooses the number of clusters itself; k=%s ignored", k)
        raw, extra = _hdbscan(X, min_cluster_size, min_samples)
        info.update(extra)
    else:
        if k is None:
            selection = select_k(X, k_range, seed, method, criterion=k_selection, covariance_type=covariance_type,
                                 show_progress=show_progress)
            k = chosen_k(selection)
        k = check_k(k, n)
        if method == "kmeans":
            model = _kmeans(X, k, seed)
            raw = model.labels_
            info.update(minibatch=n > MINIBATCH_MIN_N, inertia=float(model.inertia_))
        elif method == "gmm":
            model = _gmm(X, k, seed, covariance_type)
            raw = model.predict(X)
            info.update(covariance_type=covariance_type, bic=float(model.bic(X)), converged=bool(model.converged_))
        else:
            raw = _ward_cut(_ward_tree(X), k)
    labels = relabel_by_size(raw)
    found = n_clusters(labels)
    info.update(silhouette=_silhouette(X, labels, seed), n_noise=int((labels == NOISE).sum()))
    if method == "hdbscan" and found == 0:
        logger.warning("hdbscan labelled every synapse as noise; lower min_cluster_size (now %s)", info["min_cluster_size"])
    logger.info("cluster (%s): %d clusters, %d noise, silhouette %.3f", method, found, info["n_noise"], info["silhouette"])
    return ClusterResult(labels=labels, k=found, method=method, selection=selection, info=info)


# --------------------------------------------------------------------------------------
# stability
# --------------------------------------------------------------------------------------
@_limit_threads
def stability(
    Xs: np.ndarray,
    method: str = "kmeans",
    k: int | None = None,
    n_boot: int = 20,
    frac: float = 0.8,
    seed: int = 42,
    *,
    k_range: tuple[int, int] | Sequence[int] | None = (2, 10),
    max_n: int = STABILITY_MAX_N,
    covariance_type: str = "diag",
    min_cluster_size: int | None = None,
    min_samples: int | None = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Subsample stability: ARI between each refit on ``frac`` of the rows and the full-data
    clustering, restricted to the subsampled rows. One row per k (``k_range`` plus the chosen
    ``k``, flagged ``chosen``): ``k, ari_mean, ari_std, ari_min, n_boot, chosen``.

    Subsamples are drawn without replacement (bootstrap duplicates would pull centroids) and
    every refit uses a new seed, so the ARI measures sensitivity to both data and start.
    For hdbscan there is one row, for the number of clusters it finds.
    """
    from sklearn.metrics import adjusted_rand_score

    method = _check_method(method)
    if not 0.0 < frac < 1.0:
        raise ValueError(f"frac must be in (0, 1), got {frac}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    X = finite_matrix(Xs)
    n = X.shape[0]
    rng = np.random.default_rng(seed)
    if n > max_n:
        base = np.sort(rng.choice(n, size=max_n, replace=False))
        logger.info("stability: using a random subset of %d of %d synapses", max_n, n)
        X = X[base]
        n = max_n
    if method == "hdbscan":
        ks: list[int] = [0]
    else:
        ks = k_values(k_range, n) if k_range is not None else []
        if k is not None:
            k = check_k(k, n)
            ks = sorted(set(ks) | {k})
        if not ks:
            raise ValueError("stability needs k or k_range")
    opts = {"covariance_type": covariance_type, "min_cluster_size": min_cluster_size, "min_samples": min_samples}
    reference = _labels_for_ks(X, method, ks, seed, opts)
    if method == "hdbscan":
        k = next(iter(reference))
        ks = [k]
        reference = {k: reference[k]}
    m = max(2, int(round(frac * n)))
    scores: dict[int, list[float]] = {kk: [] for kk in ks}
    for b in progress(range(n_boot), desc=f"stability ({method})", enabled=show_progress):
        idx = np.sort(rng.choice(n, size=m, replace=False))
        sub_ks = [kk for kk in ks if kk <= m] if method != "hdbscan" else ks
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            boot = _labels_for_ks(X[idx], method, sub_ks, seed + 1 + b, opts)
        if method == "hdbscan":
            boot = {ks[0]: next(iter(boot.values()))}
        for kk, lab in boot.items():
            scores[kk].append(float(adjusted_rand_score(reference[kk][idx], lab)))
    rows = [
        {
            "k": kk,
            "ari_mean": float(np.mean(s)) if s else float("nan"),
            "ari_std": float(np.std(s)) if s else float("nan"),
            "ari_min": float(np.min(s)) if s else float("nan"),
            "n_boot": len(s),
            "chosen": kk == k,
        }
        for kk, s in scores.items()
    ]
    table = pd.DataFrame(rows)
    table.attrs.update(method=method, frac=frac, n_used=n)
    return table


# --------------------------------------------------------------------------------------
# who to look at, and how good it is
# --------------------------------------------------------------------------------------
def representatives(Xs: np.ndarray, labels: np.ndarray, n: int = 3) -> dict[int, list[int]]:
    """Per cluster, the positional rows of the ``n`` members closest to the cluster centroid
    (closest first). Noise has no centroid and is left out."""
    X = finite_matrix(Xs)
    labels = np.asarray(labels)
    if len(labels) != X.shape[0]:
        raise ValueError(f"{len(labels)} labels for {X.shape[0]} rows")
    out: dict[int, list[int]] = {}
    for u in sorted(set(labels.tolist()) - {NOISE}):
        rows = np.flatnonzero(labels == u)
        centroid = X[rows].mean(axis=0)
        d = ((X[rows] - centroid) ** 2).sum(axis=1)
        out[int(u)] = rows[np.argsort(d, kind="stable")[:n]].tolist()
    return out


def random_members(labels: np.ndarray, n: int = 3, seed: int = 42) -> dict[int, list[int]]:
    """Per cluster (noise included, as -1), up to ``n`` random positional rows (sorted)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out: dict[int, list[int]] = {}
    for u in sorted(set(labels.tolist()), key=lambda v: (v == NOISE, v)):
        rows = np.flatnonzero(labels == u)
        out[int(u)] = sorted(rng.choice(rows, size=min(n, len(rows)), replace=False).tolist())
    return out


def agreement(labels: np.ndarray, truth: Sequence | pd.Series) -> dict[str, float]:
    """ARI and NMI against ground truth (rows with missing truth are left out; noise counts
    as one group)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels)
    truth_s = pd.Series(np.asarray(truth, dtype=object))
    if len(truth_s) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(truth_s)} ground-truth values")
    keep = truth_s.notna().to_numpy()
    if keep.sum() < 2:
        raise ValueError("fewer than two synapses have a ground-truth class")
    t = truth_s[keep].astype(str).to_numpy()
    lab = labels[keep]
    return {
        "ari": float(adjusted_rand_score(t, lab)),
        "nmi": float(normalized_mutual_info_score(t, lab)),
        "n": int(keep.sum()),
        "n_clusters": n_clusters(lab) + int((lab == NOISE).any()),
        "n_classes": int(len(set(t.tolist()))),
    }


def contingency(labels: np.ndarray, truth: Sequence | pd.Series) -> pd.DataFrame:
    """Cross-table of clusters (rows) against ground-truth classes (columns)."""
    return pd.crosstab(
        pd.Series(cluster_names(labels), name=CLUSTER_COLUMN),
        pd.Series(np.asarray(truth, dtype=object), name="truth").astype(str),
    )


def truth_or(df: pd.DataFrame, column: str, fallback: str = "bbox") -> str:
    """The ground-truth column when the data has one, else ``fallback`` (real data has none)."""
    return column if column and column in df.columns and df[column].notna().any() else fallback


def agreement_table(df: pd.DataFrame, labels: np.ndarray, truth_column: str) -> pd.DataFrame:
    """ARI / NMI of the clustering against ground truth as a one-row table (empty without truth)."""
    if truth_or(df, truth_column, "") == "":
        return pd.DataFrame(columns=["truth", "ari", "nmi", "n", "n_clusters", "n_classes"])
    return pd.DataFrame([{"truth": truth_column, **agreement(labels, df[truth_column])}])


def clusters_table(df: pd.DataFrame, result: ClusterResult) -> pd.DataFrame:
    """One row per synapse: identity and cluster (what later notebooks join on)."""
    ident = [c for c in ("bbox", "Var1") if c in df.columns]
    out = df[ident].reset_index(drop=True).copy()
    out[CLUSTER_COLUMN] = result.categorical().astype(str).to_numpy()
    out["cluster_label"] = result.labels
    return out
