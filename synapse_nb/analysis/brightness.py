"""Do the clusters follow brightness instead of synapse shape?

With random or poorly matched network weights the deep features mostly encode how bright a
cube is (measured on a real volume: PC1 held 75 % of the variance and correlated -0.87 with
the mean intensity inside the mask). :func:`brightness_check` compares the clustered matrix
with the mean raw intensity of each synapse (a descriptor column of the cube table, see
:data:`INTENSITY_COLUMNS`), after removing the part of that intensity which the synapse's
shape descriptors predict (:func:`shape_adjusted`): the mean intensity of a cube also depends
on what is in it, so genuine shape classes differ in it too, and only the rest is brightness.
It measures

(a) ``|r|``, the Pearson correlation between PC1 of the matrix that was clustered and that
    brightness;
(b) ``eta2``, the share of the rank variance of that brightness explained by the cluster
    labels (the correlation ratio on ranks, i.e. Kruskal-Wallis H / (n - 1), the epsilon^2
    that :mod:`synapse_nb.analysis.compare` reports), and, for reading only, the adjusted Rand
    index between the clusters and brightness quantile bins.

It warns when ``|r| >= R_WARN`` (with p < :data:`P_WARN`) or ``eta2 >= ETA2_WARN``.
Thresholds and the evidence for them:

* Chance levels (2,000 simulations, n = 63, k = 3): ``|r|`` mean 0.10, 99th percentile 0.31;
  ``eta2`` mean 0.03, 99th percentile 0.16.
* Demo volumes, cubes built and VGG3D features from random weights (minmax intensities),
  k-means on each feature set: the ``brightness`` preset (one class, brightness per bbox)
  gave ``|r|`` 0.68 (deep) and 0.67 (hybrid), so it warns; the default demo (3 classes, ARI 1.0
  on descriptors and hybrid) gave ``|r|`` <= 0.03 and ``eta2`` <= 0.08 for every feature set,
  and the ``hard`` preset (brightness nuisance per bbox) ``|r|`` <= 0.08, ``eta2`` <= 0.04.
  Without the shape adjustment the default demo's perfect descriptor clustering would have
  warned (``|r|`` 0.83, ``eta2`` 0.67): its classes differ in mean cube intensity, and the
  descriptors predict 80 % of it out-of-fold.
* 0.5 is thus far above chance and below what brightness-driven results reach: ``|r| >= 0.5``
  means brightness explains at least a quarter of the variance along the main axis;
  ``eta2 >= 0.5`` means cluster membership explains at least half of the brightness differences.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .compare import NOISE_NAME
from .feature_sets import assemble
from .reduce import PCA_PREFIX, feature_columns, pca_columns, standardize

if TYPE_CHECKING:
    from .clustering import ClusterResult
    from .feature_sets import FeatureMatrix

logger = logging.getLogger(__name__)

#: Columns holding the mean raw intensity of a synapse, in order of preference (the first
#: present is used). ``raw_mean_cube`` is the cube-table descriptor (not clustered, see
#: :data:`synapse_nb.cubes.descriptors.DESCRIPTORS`): the mean of the raw cube, measured for
#: every synapse whatever is annotated, and less tied to shape than a mean inside one structure.
#: Otherwise the first ``raw_mean_*`` descriptor, or a numeric column named like ``*intensity*mean*``.
INTENSITY_COLUMNS = ("raw_mean_cube", "intensity_mean", "mean_intensity")
#: |Pearson r| between PC1 and the mean intensity from which the check warns.
R_WARN = 0.5
#: ... and only when that correlation is this significant (guards few synapses).
P_WARN = 0.01
#: Share of the (rank) variance of the mean intensity explained by the clusters from which it warns.
ETA2_WARN = 0.5
#: PCA is fitted on at most this many rows to find PC1 (then applied to all).
PC1_MAX_ROWS = 20_000
#: Folds of the out-of-fold prediction of the intensity from the shape descriptors.
SHAPE_FOLDS = 5
#: Fewest synapses for that prediction (below: the raw intensity is used).
MIN_SHAPE_N = 15
#: Ridge penalties tried (chosen by efficient leave-one-out inside each fold).
RIDGE_ALPHAS = tuple(np.logspace(-2, 3, 12))

ADVICE = (
    "normalise intensities per cube (intensity_normalization = 'mask' or 'cube') and extract again, "
    "or cluster on the morphometric descriptors (feature_set = 'descriptors' or 'hybrid')"
)


def intensity_column(table: pd.DataFrame) -> str | None:
    """The mean-intensity column of a cube or features table, or None when there is none."""
    for name in INTENSITY_COLUMNS:
        if name in table.columns:
            return name
    numeric = [str(c) for c in table.columns if pd.api.types.is_numeric_dtype(table[c])
               and not pd.api.types.is_bool_dtype(table[c]) and not str(c).startswith("feat_")]
    for c in numeric:
        if c.startswith("raw_mean_"):
            return c
    for c in numeric:
        if "intensity" in c.lower() and "mean" in c.lower():
            return c
    return None


@dataclass
class BrightnessCheck:
    """Result of :func:`brightness_check`; ``warn`` says the clusters mostly follow brightness."""

    measurable: bool
    warn: bool
    message: str
    intensity_column: str | None = None
    n: int = 0
    pc1_r: float = float("nan")
    pc1_p: float = float("nan")
    pc1_variance: float = float("nan")
    eta2: float = float("nan")
    ari_bins: float = float("nan")
    n_clusters: int = 0
    shape_r2: float = float("nan")
    adjusted: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a report or a run's quality record."""
        return {
            "measurable": self.measurable, "warn": self.warn, "message": self.message,
            "intensity_column": self.intensity_column, "n": self.n, "pc1_r": self.pc1_r, "pc1_p": self.pc1_p,
            "pc1_variance": self.pc1_variance, "eta2": self.eta2, "ari_bins": self.ari_bins,
            "n_clusters": self.n_clusters, "shape_r2": self.shape_r2, "adjusted": self.adjusted, "notes": list(self.notes),
        }

    def markdown(self) -> str:
        """A visible warning block when brightness drives the result, else a one-line note."""
        if self.warn:
            return f"> **Warning: brightness, not synapse shape.** {self.message}"
        return f"*{self.message}*"

    def _repr_markdown_(self) -> str:
        return self.markdown()


def _matrix(X_or_emb: Any) -> tuple[np.ndarray, bool]:
    """The clustered matrix as an array, and whether its first column already is PC1."""
    if hasattr(X_or_emb, "matrix") and hasattr(X_or_emb, "blocks"):  # FeatureMatrix
        return X_or_emb.values, False
    if isinstance(X_or_emb, pd.DataFrame):
        cols = pca_columns(X_or_emb)
        if cols:
            did_pca = bool(X_or_emb.attrs.get("reduce", {}).get("n_pca", 1))
            return X_or_emb[cols].to_numpy(dtype=np.float64), did_pca and cols[0] == f"{PCA_PREFIX}1"
        if feature_columns(X_or_emb):
            return standardize(X_or_emb)[0], False
        raise ValueError(
            "brightness_check needs the clustered matrix: the embeddings table (pca_* columns), the assembled "
            f"FeatureMatrix or an array; got a table with columns {list(X_or_emb.columns)[:8]}"
        )
    X = np.asarray(X_or_emb, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"brightness_check needs a 2-D matrix (synapses x dimensions), got shape {X.shape}")
    return X, False


def shape_adjusted(features: pd.DataFrame, values: np.ndarray, *, column: str = "intensity", seed: int = 0) -> tuple[np.ndarray, float, str]:
    """``values`` minus what the clustered shape descriptors of ``features`` predict of them.

    The mean intensity of a cube also depends on what is in it (a large bright bouton, a dark
    vesicle cloud), so it differs between genuine shape classes; only the part shape does not
    explain is acquisition brightness. The prediction is a ridge regression, out-of-fold
    (:data:`SHAPE_FOLDS` folds) so that it cannot fit noise. Returns the adjusted values, the
    out-of-fold R^2 and a note; when shape does not predict the values (R^2 <= 0), too few
    synapses or no usable descriptor, the values come back unchanged.
    """
    n = len(values)
    if n < MIN_SHAPE_N:
        return values, float("nan"), f"{n} synapses are too few to separate shape from brightness: raw {column} used"
    try:
        D = assemble(features, feature_set="descriptors").values
    except ValueError:
        return values, float("nan"), f"no usable shape descriptors: raw {column} used"
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict

    pred = cross_val_predict(RidgeCV(alphas=RIDGE_ALPHAS), D, values, cv=KFold(SHAPE_FOLDS, shuffle=True, random_state=seed))
    r2 = 1.0 - float(((values - pred) ** 2).sum() / ((values - values.mean()) ** 2).sum())
    if r2 <= 0:
        return values, r2, f"shape descriptors do not predict {column} (out-of-fold R^2 {r2:.2f}): raw values used"
    return values - pred, r2, (
        f"{100 * r2:.0f} % of the {column} differences follow from shape (out-of-fold R^2 from {D.shape[1]} descriptors); "
        "only the rest counts as brightness"
    )


def first_component(X: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, float]:
    """Scores on the first principal component and its share of the total variance."""
    from sklearn.decomposition import PCA

    Xc = X - X.mean(axis=0)
    total = float((Xc ** 2).sum())
    if total <= 0:
        return np.zeros(len(X)), float("nan")
    fit_rows = Xc
    if len(Xc) > PC1_MAX_ROWS:
        fit_rows = Xc[np.random.default_rng(seed).choice(len(Xc), PC1_MAX_ROWS, replace=False)]
    solver = "randomized" if min(fit_rows.shape) > 500 else "full"
    model = PCA(n_components=1, svd_solver=solver, random_state=seed).fit(fit_rows)
    scores = Xc @ model.components_[0]
    return scores, float((scores ** 2).sum() / total)


def _labels(labels: Any, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    if hasattr(labels, "labels") and hasattr(labels, "method"):  # ClusterResult
        labels = labels.labels
    values = labels.to_numpy() if isinstance(labels, pd.Series) else np.asarray(labels)
    if len(values) != n:
        raise ValueError(f"{len(values)} cluster labels for {n} synapses")
    return values


def rank_eta2(values: np.ndarray, groups: np.ndarray) -> float:
    """Share of the rank variance of ``values`` explained by ``groups`` (0 = none, 1 = all)."""
    from scipy.stats import rankdata

    r = rankdata(values)
    total = float(((r - r.mean()) ** 2).sum())
    if total <= 0:
        return 0.0
    between = sum(float((g := r[groups == c]).size * (g.mean() - r.mean()) ** 2) for c in np.unique(groups))
    return between / total


def _pc1_correlation(X: np.ndarray, bright: np.ndarray, first_is_pc1: bool) -> tuple[float, float, float]:
    """Pearson r (and p) of the first principal component with brightness, and its variance share."""
    from scipy.stats import pearsonr

    if first_is_pc1:
        pc1 = X[:, 0] - X[:, 0].mean()
        total = float(((X - X.mean(axis=0)) ** 2).sum())
        share = float((pc1 ** 2).sum() / total) if total > 0 else float("nan")
    else:
        pc1, share = first_component(X)
    if np.ptp(pc1) == 0 or np.ptp(bright) == 0:
        return 0.0, 1.0, share
    r, p = (float(v) for v in pearsonr(pc1, bright))
    return r, p, share


def _cluster_measures(lab: np.ndarray | None, keep: np.ndarray, bright: np.ndarray) -> tuple[float, float, int]:
    """Rank eta^2 of brightness across clusters, ARI of clusters vs brightness bins, k."""
    if lab is None:
        return float("nan"), float("nan"), 0
    groups = lab[keep]
    k = len(np.unique(groups))
    if k < 2:
        return float("nan"), float("nan"), k
    from sklearn.metrics import adjusted_rand_score

    bins = pd.qcut(pd.Series(bright[keep]).rank(method="first"), k, labels=False).to_numpy()
    return rank_eta2(bright[keep], groups), float(adjusted_rand_score(groups, bins)), k


def _verdict(r: float, p: float, eta2: float, k: int, what: str) -> tuple[bool, str]:
    """Whether to warn, and the sentence that says so (or that brightness does not drive it)."""
    axis_flag = abs(r) >= R_WARN and p < P_WARN
    cluster_flag = bool(np.isfinite(eta2) and eta2 >= ETA2_WARN)
    measured = [f"|r(PC1, {what})| = {abs(r):.2f}"]
    if np.isfinite(eta2):
        measured.append(f"the {k} clusters account for {100 * eta2:.0f} % of its differences between synapses (rank eta^2)")
    if axis_flag or cluster_flag:
        lead = ("The clusters mostly follow brightness, not synapse shape" if cluster_flag
                else "The main axis of variation (PC1) follows brightness, not synapse shape")
        return True, f"{lead}: {'; '.join(measured)}. Before reading the clusters as synapse types, {ADVICE}."
    return False, (f"Brightness does not drive the result: {'; '.join(measured)} "
                   f"(warning from |r| >= {R_WARN} or eta^2 >= {ETA2_WARN}).")


def brightness_check(
    features: pd.DataFrame,
    X_or_emb: np.ndarray | pd.DataFrame | FeatureMatrix,
    *,
    labels: np.ndarray | pd.Series | Sequence | ClusterResult | None = None,
    intensity: str | None = None,
    adjust_for_shape: bool = True,
) -> BrightnessCheck:
    """How much brightness drives the matrix that was clustered and its clusters.

    ``features`` is the features (or cube) table holding the mean-intensity column (or name it
    with ``intensity``); ``X_or_emb`` the clustered matrix: the embeddings table of
    04_reduce (its ``pca_*`` columns), a :class:`FeatureMatrix` or an array, rows aligned with
    ``features``. ``labels`` (cluster per synapse, -1 = noise) adds the cluster measure.
    With ``adjust_for_shape`` the part of the intensity that the shape descriptors predict is
    removed first (:func:`shape_adjusted`), so genuine shape classes that differ in mean
    intensity do not count as brightness.
    """
    X, first_is_pc1 = _matrix(X_or_emb)
    if len(X) != len(features):
        raise ValueError(f"the clustered matrix has {len(X)} rows but the features table {len(features)}; pass both from the same run")
    lab = _labels(labels, len(X))
    col = intensity or intensity_column(features)
    if col is None or col not in features.columns:
        what = f"no column {col!r}" if col else f"no mean-intensity column (e.g. {INTENSITY_COLUMNS[0]})"
        return BrightnessCheck(
            measurable=False, warn=False,
            message=f"Brightness check not measurable: the table has {what}; rebuild the cubes with this version to get it.",
        )
    notes: list[str] = []
    y = features[col].to_numpy(dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(X).all(axis=1)
    if (~ok).any():
        notes.append(f"{int((~ok).sum())} synapse(s) without a finite {col} or matrix row left out")
    noise = np.zeros(len(X), dtype=bool)
    if lab is not None:
        noise = np.array([(isinstance(v, (int, np.integer)) and v == -1) or v == NOISE_NAME for v in lab], dtype=bool)
        if noise.any():
            notes.append(f"{int(noise.sum())} noise synapse(s) left out of the cluster measure")
    n = int(ok.sum())
    if n < 4 or np.ptp(y[ok]) == 0:
        return BrightnessCheck(
            measurable=False, warn=False, intensity_column=col, n=n, notes=notes,
            message=f"Brightness check not measurable: {n} synapse(s) with a finite {col}" + (", all equal." if n >= 4 else "."),
        )
    bright = np.full(len(y), np.nan)
    bright[ok] = y[ok]
    shape_r2 = float("nan")
    if adjust_for_shape:
        bright[ok], shape_r2, note = shape_adjusted(features[ok], y[ok], column=col)
        notes.append(note)
    adjusted = bool(np.isfinite(shape_r2) and shape_r2 > 0)
    r, p, share = _pc1_correlation(X[ok], bright[ok], first_is_pc1)
    eta2, ari, k = _cluster_measures(lab, ok & ~noise if lab is not None else ok, bright)
    warn, message = _verdict(r, p, eta2, k, f"{col} not explained by shape" if adjusted else col)
    logger.info("brightness_check: %s", message)
    return BrightnessCheck(
        measurable=True, warn=warn, message=message, intensity_column=col, n=n, pc1_r=r, pc1_p=p,
        pc1_variance=share, eta2=eta2, ari_bins=ari, n_clusters=k, shape_r2=shape_r2, adjusted=adjusted, notes=notes,
    )
