"""Standardise once, then PCA, UMAP and t-SNE of the feature table.

Everything downstream (PCA, embeddings, clustering, stability, representatives) works on the
output of :func:`standardize`, so scaled and unscaled features are never mixed (the seed did).

Scaling rules, chosen so that 100k synapses x 192 features finish on a 2-core machine:

* PCA first (default 50 components); UMAP and t-SNE run on the PCA scores.
* UMAP: ``low_memory=True``; above :data:`UMAP_EXACT_MAX_N` rows the approximate
  nearest-neighbour graph is computed once and shared by the 2-D and 3-D embeddings.
  A fixed seed makes UMAP single-threaded (numba) and deterministic on one machine only.
* t-SNE (scikit-learn Barnes-Hut: ~25 s for 5k rows in 2-D, ~110 s in 3-D, on one core):
  above ``tsne_max_n`` rows (default :data:`TSNE_MAX_N`: 5000 for 2-D, 2500 for 3-D) it is
  fitted on a seeded random subsample of that size and
  the other rows are placed at the distance-weighted mean position of their
  :data:`TSNE_PLACE_NEIGHBORS` nearest sampled rows (in PCA space). This is logged and
  recorded in ``attrs["reduce"]["tsne"]`` of the returned table.

Small data rules (few synapses):

* UMAP ``n_neighbors`` is capped at ``n - 1`` (it must be smaller than the number of points).
* t-SNE perplexity is capped at ``(n - 1) / 3``: Barnes-Hut uses ``3 * perplexity``
  neighbours per point and scikit-learn requires perplexity < n; the cap keeps both true.
* Fewer than :data:`MIN_EMBED_N` synapses cannot be embedded (clear error).
"""
from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from ..core.progress_bars import progress

if TYPE_CHECKING:
    from .feature_sets import FeatureMatrix

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "feat_"
NAME_COLUMN = "Var1"
BBOX_COLUMN = "bbox"

#: Fewer rows than this cannot be embedded meaningfully (UMAP/t-SNE need neighbours).
MIN_EMBED_N = 4
#: UMAP computes exact distances below this many rows (its own threshold); above, an
#: approximate k-NN graph that we compute once for 2-D and 3-D.
UMAP_EXACT_MAX_N = 4096
#: t-SNE is fitted on at most this many rows (per embedding dimension; 3-D Barnes-Hut is
#: about 4x slower than 2-D); the rest are placed by nearest neighbours.
TSNE_MAX_N = {2: 5_000, 3: 2_500}
#: OpenMP/BLAS threads for PCA and t-SNE (None = all cores). One thread: reproducible, and on
#: the 2-core target several times faster than two whenever anything else runs (OpenMP
#: threads spin-wait for a busy core; t-SNE of 2000 rows took 7 s on one thread, 26 s on two).
THREADS: int | None = 1
#: Number of sampled neighbours used to place rows that were not in the t-SNE sample.
TSNE_PLACE_NEIGHBORS = 5
#: Relative standard deviation below which a feature counts as constant.
CONSTANT_RTOL = 1e-9

METHODS = ("umap", "tsne")
ANGULAR_METRICS = frozenset({"cosine", "correlation", "dice", "jaccard", "hellinger", "ll_dirichlet"})
#: Metrics whose k-NN graph we can compute once and share (pynndescent named distances).
SHAREABLE_KNN_METRICS = frozenset({"euclidean", "manhattan", "chebyshev", "minkowski", "cosine", "correlation"})
PCA_PREFIX = "pca_"


# --------------------------------------------------------------------------------------
# feature table helpers
# --------------------------------------------------------------------------------------
def feature_columns(df: pd.DataFrame, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Feature columns (``feat_0000``...) of a features table, in table order."""
    return [c for c in df.columns if isinstance(c, str) and c.startswith(prefix)]


def feature_matrix(df: pd.DataFrame, prefix: str = DEFAULT_PREFIX) -> np.ndarray:
    """The feature columns as a float array (rows = synapses)."""
    cols = feature_columns(df, prefix)
    if not cols:
        raise ValueError(
            f"the table has no feature columns (names starting with {prefix!r}); "
            f"it has {list(df.columns)[:8]}... - pass the features table written by notebook 03"
        )
    return df[cols].to_numpy(dtype=np.float64, copy=False)


def metadata(df: pd.DataFrame, prefix: str = DEFAULT_PREFIX) -> pd.DataFrame:
    """Every column that is not a feature (synapse name, bbox, morphometrics, ...)."""
    feats = set(feature_columns(df, prefix))
    return df[[c for c in df.columns if c not in feats]]


def row_names(df: pd.DataFrame, name_column: str = NAME_COLUMN, bbox_column: str = BBOX_COLUMN) -> list[str]:
    """Readable row labels for messages: ``bbox/name`` when both columns exist."""
    if name_column in df.columns and bbox_column in df.columns:
        return [f"{b}/{s}" for b, s in zip(df[bbox_column].astype(str), df[name_column].astype(str))]
    if name_column in df.columns:
        return df[name_column].astype(str).tolist()
    return [str(i) for i in df.index]


# --------------------------------------------------------------------------------------
# standardisation
# --------------------------------------------------------------------------------------
@dataclass
class Scaler:
    """Per-feature z-score. Constant features have ``scale == 1`` so they stay at 0."""

    mean: np.ndarray
    scale: np.ndarray
    constant: np.ndarray
    feature_names: list[str] | None = None

    @property
    def n_constant(self) -> int:
        return int(self.constant.sum())

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected {self.mean.shape[0]} features, got array of shape {X.shape}")
        check_finite(X)
        return (X - self.mean) / self.scale


def check_finite(X: np.ndarray, names: Sequence[str] | None = None, max_listed: int = 10) -> None:
    """Raise a ValueError naming the rows with NaN or infinite features, and how to fix them."""
    bad = ~np.isfinite(X).all(axis=1)
    if not bad.any():
        return
    rows = np.flatnonzero(bad)
    label = [f"{names[i]} (row {i})" if names is not None else f"row {i}" for i in rows[:max_listed]]
    more = f" and {len(rows) - max_listed} more" if len(rows) > max_listed else ""
    raise ValueError(
        f"{len(rows)} synapse(s) have NaN or infinite features: {', '.join(label)}{more}. "
        "Re-extract these synapses (notebook 03) or drop them from the features table "
        "before reducing, e.g. df = df[np.isfinite(feature_matrix(df)).all(axis=1)]."
    )


def standardize(
    X: np.ndarray | pd.DataFrame,
    names: Sequence[str] | None = None,
    *,
    prefix: str = DEFAULT_PREFIX,
) -> tuple[np.ndarray, Scaler]:
    """Z-score every feature (population std); the one scaling everything downstream uses.

    ``X`` is a feature array or a features table (feature columns found by ``prefix``,
    synapse names taken from ``Var1``/``bbox`` for error messages). Constant features are
    left at 0 instead of dividing by zero. NaN/inf raise a ValueError naming the rows.
    """
    feature_names = None
    if isinstance(X, pd.DataFrame):
        if names is None:
            names = row_names(X)
        feature_names = feature_columns(X, prefix)
        X = feature_matrix(X, prefix)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"features must be a 2-D array (synapses x features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError("the feature table is empty: no synapses to analyse")
    check_finite(X, names)
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    constant = std <= CONSTANT_RTOL * (1.0 + np.abs(mean))
    scale = np.where(constant, 1.0, std)
    Xs = (X - mean) / scale
    Xs[:, constant] = 0.0
    if constant.any():
        logger.info("standardize: %d of %d features are constant and stay at 0", int(constant.sum()), X.shape[1])
    return Xs, Scaler(mean=mean, scale=scale, constant=constant, feature_names=feature_names)


# --------------------------------------------------------------------------------------
# PCA
# --------------------------------------------------------------------------------------
def pca(
    Xs: np.ndarray, n_components: int | float | None = 50, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """PCA scores and the explained-variance ratio of the kept components.

    ``n_components``: an int (capped at ``min(n_synapses, n_features)``), a float in (0, 1)
    (keep that fraction of the variance), or ``None`` (no PCA: ``Xs`` is returned as is with
    an empty ratio array).
    """
    Xs = np.asarray(Xs)
    if n_components is None:
        return Xs, np.zeros(0)
    from sklearn.decomposition import PCA

    n, d = Xs.shape
    limit = min(n, d)
    if isinstance(n_components, (float, np.floating)) and not float(n_components).is_integer():
        if not 0.0 < n_components < 1.0:
            raise ValueError(f"pca_components as a fraction of variance must be in (0, 1), got {n_components}")
        model = PCA(n_components=float(n_components), svd_solver="full", random_state=seed)
    else:
        k = int(n_components)
        if k < 1:
            raise ValueError(f"pca_components must be >= 1, a fraction in (0, 1) or None, got {n_components}")
        if k > limit:
            logger.info("pca: %d components asked, only %d possible (n=%d, d=%d); using %d", k, limit, n, d, limit)
            k = limit
        solver = "randomized" if k < 0.8 * limit and n > 2000 else "full"
        model = PCA(n_components=k, svd_solver=solver, random_state=seed)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=THREADS):
        Z = model.fit_transform(Xs)
    evr = model.explained_variance_ratio_
    logger.info("pca: %d components explain %.1f%% of the variance", Z.shape[1], 100 * evr.sum())
    return Z, evr


# --------------------------------------------------------------------------------------
# UMAP and t-SNE
# --------------------------------------------------------------------------------------
def _check_embed_n(n: int, what: str) -> None:
    if n < MIN_EMBED_N:
        raise ValueError(f"{what} needs at least {MIN_EMBED_N} synapses, got {n}: add synapses or skip this step")


def neighbors_for(n: int, n_neighbors: int) -> int:
    """UMAP neighbours actually used: at most ``n - 1`` and at least 2."""
    return int(max(2, min(int(n_neighbors), n - 1)))


def perplexity_for(n: int, perplexity: float) -> float:
    """t-SNE perplexity actually used: at most ``(n - 1) / 3`` (so that < n and the 3*perplexity
    neighbours Barnes-Hut uses exist), and at least 1."""
    return float(max(1.0, min(float(perplexity), (n - 1) / 3.0)))


def _umap_knn(Z: np.ndarray, n_neighbors: int, metric: str, seed: int, low_memory: bool) -> tuple:
    """Approximate k-NN graph as UMAP builds it, to share between 2-D and 3-D runs."""
    from umap.umap_ import nearest_neighbors

    angular = metric in ANGULAR_METRICS  # UMAP uses angular random-projection trees for these
    return nearest_neighbors(
        Z, n_neighbors, metric, {}, angular, np.random.RandomState(seed), low_memory=low_memory, n_jobs=1
    )


@functools.lru_cache(maxsize=None)
def _cache_umap_kernels() -> int:
    """Keep umap-learn's own numba kernels in ``NUMBA_CACHE_DIR`` too; returns how many.

    umap-learn compiles its layout optimiser and fuzzy-graph kernels without numba's cache,
    about 25 s in every new process (each 04_reduce, each sweep combination) even when the
    cache folder is warm; cached, a later process loads them in well under a second. The
    compiled code is the same, so is the embedding. Only when ``NUMBA_CACHE_DIR`` is set (the
    runner, ``make install`` and the notebooks' setup set it).
    """
    if not os.environ.get("NUMBA_CACHE_DIR"):
        return 0
    import umap.distances
    import umap.layouts
    import umap.umap_
    import umap.utils
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    n = 0
    for module in (umap.umap_, umap.layouts, umap.utils, umap.distances):
        for fn in vars(module).values():
            if isinstance(fn, Dispatcher) and isinstance(fn._cache, NullCache):
                fn.enable_caching()
                n += 1
    return n


def umap_embed(
    Z: np.ndarray,
    n_components: int = 2,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "euclidean",
    seed: int | None = 42,
    *,
    low_memory: bool = True,
    knn: tuple | None = None,
) -> np.ndarray:
    """UMAP embedding. ``seed=None`` runs multi-threaded (faster, not reproducible).

    ``knn`` is a precomputed ``(indices, distances, index)`` from the same data and metric
    with at least ``n_neighbors`` columns (used by :func:`reduce_features` to share it).
    """
    import umap

    _cache_umap_kernels()
    Z = np.asarray(Z, dtype=np.float32)
    n = Z.shape[0]
    _check_embed_n(n, "UMAP")
    k = neighbors_for(n, n_neighbors)
    if k != n_neighbors:
        logger.info("umap: n_neighbors %d capped to %d for %d synapses", n_neighbors, k, n)
    kw: dict[str, Any] = {}
    if knn is not None and n >= UMAP_EXACT_MAX_N:
        kw["precomputed_knn"] = knn
    model = umap.UMAP(
        n_components=n_components, n_neighbors=k, min_dist=min_dist, metric=metric,
        random_state=seed, n_jobs=1 if seed is not None else -1, low_memory=low_memory,
        init="spectral" if n > n_components + 1 else "random", **kw,
    )
    with warnings.catch_warnings():
        # disconnected small graphs and the seed/thread note are expected, not news
        warnings.filterwarnings("ignore", message=".*not fully connected.*")
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        Y = model.fit_transform(Z)
    return np.asarray(Y, dtype=np.float32)


def _tsne_fit(Z: np.ndarray, n_components: int, perplexity: float, seed: int, max_iter: int) -> np.ndarray:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = Z.shape[0]
    p = perplexity_for(n, perplexity)
    if p != perplexity:
        logger.info("tsne: perplexity %.1f lowered to %.2f for %d synapses", perplexity, p, n)
    method = "barnes_hut" if n_components <= 3 else "exact"
    model = TSNE(
        n_components=n_components, perplexity=p, random_state=seed,
        init="pca" if Z.shape[1] >= n_components else "random",  # PCA init needs as many input dimensions
        learning_rate="auto", method=method, max_iter=max_iter,
    )
    with threadpool_limits(limits=THREADS):
        return model.fit_transform(Z).astype(np.float32)


def tsne_embed(
    Z: np.ndarray,
    n_components: int = 2,
    perplexity: float = 30.0,
    seed: int = 42,
    *,
    max_n: int | None | str = "auto",
    max_iter: int = 1000,
    info: dict | None = None,
) -> np.ndarray:
    """t-SNE embedding (perplexity capped at ``(n - 1) / 3``).

    Above ``max_n`` rows (``"auto"``: :data:`TSNE_MAX_N` for this dimension; ``None``: never)
    t-SNE is fitted on a seeded random sample of ``max_n`` rows and the rest are placed at
    the distance-weighted mean of their nearest sampled rows.
    Runs on :data:`THREADS` threads. Pass a dict
    as ``info`` to receive what was done (``sampled``, ``n_fit``, ``perplexity``).
    """
    Z = np.asarray(Z, dtype=np.float32)
    n = Z.shape[0]
    _check_embed_n(n, "t-SNE")
    if max_n == "auto":
        max_n = TSNE_MAX_N.get(n_components, TSNE_MAX_N[3])
    record = {"n": n, "perplexity": perplexity_for(min(n, max_n or n), perplexity), "sampled": False, "n_fit": n}
    if max_n is None or n <= max_n:
        Y = _tsne_fit(Z, n_components, perplexity, seed, max_iter)
    else:
        from sklearn.neighbors import NearestNeighbors

        rng = np.random.default_rng(seed)
        fit_idx = np.sort(rng.choice(n, size=max_n, replace=False))
        rest = np.setdiff1d(np.arange(n), fit_idx)
        logger.info(
            "tsne: %d synapses > max_n=%d; fitting on a random sample of %d and placing the other %d "
            "by their %d nearest sampled neighbours", n, max_n, max_n, len(rest), TSNE_PLACE_NEIGHBORS,
        )
        Y = np.empty((n, n_components), dtype=np.float32)
        Y[fit_idx] = _tsne_fit(Z[fit_idx], n_components, perplexity, seed, max_iter)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=THREADS):
            nn = NearestNeighbors(n_neighbors=TSNE_PLACE_NEIGHBORS).fit(Z[fit_idx])
            dist, ind = nn.kneighbors(Z[rest])
        w = 1.0 / np.maximum(dist, 1e-12)
        w /= w.sum(axis=1, keepdims=True)
        Y[rest] = np.einsum("ij,ijk->ik", w, Y[fit_idx][ind])
        record.update(sampled=True, n_fit=int(max_n), placed_by_neighbors=TSNE_PLACE_NEIGHBORS)
    if info is not None:
        info.update(record)
    return Y


# --------------------------------------------------------------------------------------
# the one call notebook 04 makes
# --------------------------------------------------------------------------------------
def embedding_columns(method: str, dim: int) -> list[str]:
    """Column names of an embedding: ``umap_1, umap_2`` (2-D), ``umap3d_1..3`` (3-D), ..."""
    stem = method if dim == 2 else f"{method}{dim}d"
    return [f"{stem}_{i}" for i in range(1, dim + 1)]


def pca_columns(df: pd.DataFrame) -> list[str]:
    """The ``pca_1..`` score columns of an embeddings table."""
    return [c for c in df.columns if isinstance(c, str) and c.startswith(PCA_PREFIX)]


@dataclass
class _Timer:
    timings: dict[str, float] = field(default_factory=dict)

    def add(self, step: str, t0: float) -> None:
        self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - t0


def _matrix_to_reduce(df: pd.DataFrame, matrix: FeatureMatrix | None, prefix: str) -> tuple[np.ndarray, int, dict[str, Any]]:
    """The matrix :func:`reduce_features` reduces, its number of constant columns and what
    feature set it is: the assembled ``matrix`` as is, else the standardised ``feat_*`` columns."""
    if matrix is None:
        Xs, scaler = standardize(df, prefix=prefix)
        info: dict[str, Any] = {
            "feature_set": "deep", "descriptor_weight": None, "n_columns": {"deep": Xs.shape[1]},
            "descriptor_columns": [], "notes": [],
        }
        return Xs, scaler.n_constant, info
    if len(matrix.matrix) != len(df) or not matrix.matrix.index.equals(df.index):
        raise ValueError(
            f"the assembled matrix has {len(matrix.matrix)} rows indexed differently from the {len(df)}-row "
            "features table; assemble it from this table: assemble(df, feature_set=...)"
        )
    Xs = matrix.values
    check_finite(Xs, row_names(df))
    return Xs, matrix.n_constant, matrix.info()


def _embed_all(out: pd.DataFrame, Z: np.ndarray, info: dict[str, Any], timer: _Timer, *, methods: Sequence[str],
               dims: Sequence[int], n_neighbors: int, min_dist: float, metric: str, perplexity: float, seed: int,
               low_memory: bool, tsne_max_n: int | None | str, show_progress: bool) -> None:
    """UMAP / t-SNE of ``Z`` in every asked dimension, written into ``out`` (one kNN graph shared
    by the UMAPs of a large set); parameters and timings go into ``info`` / ``timer``."""
    n = Z.shape[0]
    steps = [(m, dim) for m in methods for dim in dims]
    knn = None
    bar = progress(total=len(steps), desc="reduce", enabled=show_progress)
    for method, dim in steps:
        t0 = time.perf_counter()
        if method == "umap":
            k = neighbors_for(n, n_neighbors)
            shared = sum(m == "umap" for m, _ in steps) > 1 and metric in SHAREABLE_KNN_METRICS
            if knn is None and n >= UMAP_EXACT_MAX_N and shared:
                knn = _umap_knn(Z.astype(np.float32), k, metric, seed, low_memory)
                timer.add("umap_knn", t0)
                t0 = time.perf_counter()
            Y = umap_embed(Z, dim, n_neighbors, min_dist, metric, seed, low_memory=low_memory, knn=knn)
            info["umap"] = {"n_neighbors": k, "min_dist": min_dist, "metric": metric, "low_memory": low_memory}
        else:
            tinfo: dict[str, Any] = {}
            Y = tsne_embed(Z, dim, perplexity, seed, max_n=tsne_max_n, info=tinfo)
            info.setdefault("tsne", {})[f"{dim}d"] = tinfo
        timer.add(f"{method}_{dim}d", t0)
        for j, col in enumerate(embedding_columns(method, dim)):
            out[col] = Y[:, j]
        bar.update(1)
    bar.close()


def reduce_features(
    df: pd.DataFrame,
    pca_components: int | float | None = 50,
    methods: Sequence[str] = METHODS,
    dims: Sequence[int] = (2, 3),
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "euclidean",
    perplexity: float = 30.0,
    seed: int = 42,
    tsne_max_n: int | None | str = "auto",
    low_memory: bool = True,
    prefix: str = DEFAULT_PREFIX,
    show_progress: bool = True,
    matrix: FeatureMatrix | None = None,
) -> pd.DataFrame:
    """Standardise, PCA, then UMAP / t-SNE in each of ``dims``; one table indexed like ``df``.

    ``matrix`` (from :func:`synapse_nb.analysis.feature_sets.assemble`) is what is reduced
    when given: the deep features, the descriptors or both, already scaled per block, and used
    as is (standardising it again per column would undo the hybrid block weights). Without it
    the ``feat_*`` columns of ``df`` are standardised (feature set ``deep``).

    Columns: ``pca_1..pca_m`` (PCA scores, the space clustering should use; the standardised
    features themselves when ``pca_components`` is None), then ``umap_1, umap_2``,
    ``umap3d_1..3``, ``tsne_1, tsne_2``, ``tsne3d_1..3`` as asked.
    ``attrs["reduce"]`` holds the parameters, the feature set (columns per block, notes on
    dropped or imputed descriptors), the explained-variance ratio, what was done for large
    data (t-SNE sampling) and the time of each step.
    """
    methods = tuple(m.lower() for m in methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown reduction method(s) {unknown}; choose from {METHODS}")
    bad_dims = [d for d in dims if d not in (2, 3)]
    if bad_dims:
        raise ValueError(f"embedding dims must be 2 or 3, got {bad_dims}")
    timer = _Timer()
    t0 = time.perf_counter()
    Xs, n_constant, fs_info = _matrix_to_reduce(df, matrix, prefix)
    timer.add("standardize", t0)
    n, d = Xs.shape
    if methods:
        _check_embed_n(n, "an embedding")

    t0 = time.perf_counter()
    Z, evr = pca(Xs, pca_components, seed)
    timer.add("pca", t0)
    out = pd.DataFrame(Z.astype(np.float32), index=df.index, columns=[f"{PCA_PREFIX}{i}" for i in range(1, Z.shape[1] + 1)])
    info: dict[str, Any] = {
        "n_synapses": n, "n_features": d, "n_constant_features": n_constant, **fs_info,
        "pca_components": pca_components, "n_pca": int(Z.shape[1]) if pca_components is not None else 0,
        "explained_variance_ratio": [float(v) for v in evr], "seed": seed,
        "methods": list(methods), "dims": [int(x) for x in dims],
    }
    _embed_all(out, Z, info, timer, methods=methods, dims=dims, n_neighbors=n_neighbors, min_dist=min_dist,
               metric=metric, perplexity=perplexity, seed=seed, low_memory=low_memory, tsne_max_n=tsne_max_n,
               show_progress=show_progress)
    info["timings"] = timer.timings
    out.attrs["reduce"] = info
    logger.info("reduce_features: %d synapses, %s", n, ", ".join(f"{k} {v:.1f}s" for k, v in timer.timings.items()))
    return out


def summary(emb: pd.DataFrame) -> str:
    """One sentence on what the reduction did (sizes, PCA variance kept, t-SNE sampling)."""
    info = emb.attrs.get("reduce", {})
    evr = info.get("explained_variance_ratio") or []
    parts = [f"{info.get('n_synapses', len(emb))} synapses x {info.get('n_features', '?')} features standardised"]
    fs = info.get("feature_set")
    if fs and fs != "deep":
        counts = ", ".join(f"{v} {k}" for k, v in (info.get("n_columns") or {}).items())
        weight = info.get("descriptor_weight")
        share = f", descriptors hold {100 * weight:.0f}% of the variance" if fs == "hybrid" and weight is not None else ""
        parts.append(f"feature set {fs} ({counts}{share})")
    if info.get("n_pca"):
        parts.append(f"PCA to {info['n_pca']} components keeping {100 * sum(evr):.1f}% of the variance")
    timings = info.get("timings", {})
    if timings:
        parts.append("time " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    return "; ".join(parts) + "."


def compile_kernels(n: int = 63, n_features: int = 96, seed: int = 0) -> dict[str, float]:
    """Run the reduction once on random data so numba compiles UMAP's kernels into its cache.

    UMAP and pynndescent compile their kernels on first use (over a minute on a small CPU);
    kernels marked cacheable are then kept in ``NUMBA_CACHE_DIR``, which the runner and the
    notebook setup point at ``<project>/.numba_cache``. ``make install`` calls this once, so
    the first ``04_reduce`` of a fresh install does not pay for compilation. Returns the
    seconds per method.
    """
    rng = np.random.default_rng(seed)
    cols = [f"{DEFAULT_PREFIX}{i:04d}" for i in range(n_features)]
    df = pd.DataFrame(rng.normal(size=(n, n_features)).astype(np.float32), columns=cols)
    df.insert(0, BBOX_COLUMN, "bbox1")
    df.insert(1, NAME_COLUMN, [f"s{i}" for i in range(n)])
    emb = reduce_features(df, seed=seed, show_progress=False)
    return dict(emb.attrs["reduce"]["timings"])
