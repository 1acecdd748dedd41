"""Vesicle-cloud and cleft size against clusters: distributions, tests, effect sizes.

Rank-based throughout: size distributions are skewed and heavy-tailed, so we use the
Kruskal-Wallis test across clusters and, per pair of clusters, the Mann-Whitney U test with
Cliff's delta as effect size (delta = P(a > b) - P(a < b), which equals the rank-biserial
correlation of U). p-values are Holm-corrected: across measures for Kruskal-Wallis, across
cluster pairs within a measure for the pairwise tests. All outputs are tidy DataFrames.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

CLUSTER_COLUMN = "cluster"
NOISE_NAME = "noise"
#: Romano et al. (2006) thresholds for |Cliff's delta|.
DELTA_THRESHOLDS = ((0.147, "negligible"), (0.33, "small"), (0.474, "medium"), (np.inf, "large"))


def guess_size_columns(df: pd.DataFrame, keywords: Sequence[str] = ("vesicle", "cleft"), suffix: str | None = None) -> list[str]:
    """Numeric columns whose name mentions a keyword (and ends with ``suffix`` if given)."""
    out = []
    for c in df.columns:
        name = str(c).lower()
        if any(k in name for k in keywords) and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]):
            if suffix is None or name.endswith(suffix.lower()):
                out.append(c)
    return out


def _labels(df: pd.DataFrame, labels: np.ndarray | pd.Series | str) -> pd.Series:
    if isinstance(labels, str):
        if labels not in df.columns:
            raise ValueError(f"no cluster column {labels!r} in the table; columns are {list(df.columns)[:12]}")
        lab = df[labels]
    else:
        values = labels.to_numpy() if isinstance(labels, pd.Series) else np.asarray(labels, dtype=object)
        if len(values) != len(df):
            raise ValueError(f"{len(values)} cluster labels for {len(df)} synapses")
        lab = pd.Series(values, index=df.index)
    # integer labels from cluster.py: -1 is noise
    return lab.map(lambda v: NOISE_NAME if (isinstance(v, (int, np.integer)) and v == -1) else str(v)).rename(CLUSTER_COLUMN)


def _check_columns(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    columns = list(columns)
    if not columns:
        raise ValueError("no size columns given; e.g. compare.guess_size_columns(df) lists the vesicle/cleft columns")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and not str(c).startswith("feat_")]
        raise ValueError(f"size column(s) {missing} not in the table; numeric columns available: {numeric[:20]}")
    return columns


def _groups(df: pd.DataFrame, labels, include_noise: bool) -> tuple[pd.Series, list[str]]:
    lab = _labels(df, labels)
    cats = sorted(set(lab) - {NOISE_NAME}, key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s))
    if include_noise and (lab == NOISE_NAME).any():
        cats.append(NOISE_NAME)
    return lab, cats


def size_long(df: pd.DataFrame, labels: np.ndarray | pd.Series | str, columns: Sequence[str], include_noise: bool = True) -> pd.DataFrame:
    """Tidy table ``cluster, measure, value`` (NaN sizes dropped), for plotting."""
    columns = _check_columns(df, columns)
    lab, cats = _groups(df, labels, include_noise)
    wide = df[columns].copy()
    wide[CLUSTER_COLUMN] = lab.to_numpy()
    wide = wide[wide[CLUSTER_COLUMN].isin(cats)]
    long = wide.melt(id_vars=[CLUSTER_COLUMN], value_vars=columns, var_name="measure", value_name="value").dropna(subset=["value"])
    long[CLUSTER_COLUMN] = pd.Categorical(long[CLUSTER_COLUMN], categories=cats)
    return long.reset_index(drop=True)


def size_summary(df: pd.DataFrame, labels: np.ndarray | pd.Series | str, columns: Sequence[str], include_noise: bool = True) -> pd.DataFrame:
    """Per cluster and measure: n, median, quartiles, mean."""
    long = size_long(df, labels, columns, include_noise)
    g = long.groupby(["measure", CLUSTER_COLUMN], observed=True)["value"]
    out = pd.DataFrame({
        "n": g.size(), "median": g.median(), "q1": g.quantile(0.25), "q3": g.quantile(0.75), "mean": g.mean(),
    })
    return out.reset_index()


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stay NaN)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if len(ok) == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def cliffs_delta(a: Sequence[float], b: Sequence[float]) -> float:
    """P(a > b) - P(a < b): +1 when every a is larger, 0 when the groups overlap evenly."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    # rank-based, O((n+m) log(n+m)) instead of the n*m comparison matrix
    bs = np.sort(b)
    less = np.searchsorted(bs, a, side="left")  # b < a
    greater = len(b) - np.searchsorted(bs, a, side="right")  # b > a
    return float((less.sum() - greater.sum()) / (len(a) * len(b)))


def delta_magnitude(delta: float) -> str:
    if np.isnan(delta):
        return "n/a"
    for limit, name in DELTA_THRESHOLDS:
        if abs(delta) < limit:
            return name
    return "large"


def kruskal_tests(df: pd.DataFrame, labels: np.ndarray | pd.Series | str, columns: Sequence[str], include_noise: bool = False) -> pd.DataFrame:
    """Kruskal-Wallis per measure across clusters: ``measure, H, dof, p, p_holm, epsilon2, n,
    n_clusters``. ``epsilon2 = H / (n - 1)`` is the effect size (share of rank variance
    explained by the clusters). Noise is left out unless ``include_noise``."""
    from scipy.stats import kruskal

    long = size_long(df, labels, columns, include_noise)
    rows = []
    for measure in _check_columns(df, columns):
        sub = long[long["measure"] == measure]
        groups = [g["value"].to_numpy() for _, g in sub.groupby(CLUSTER_COLUMN, observed=True) if len(g)]
        n = int(sum(len(g) for g in groups))
        H = p = eps = float("nan")
        if len(groups) >= 2:
            if np.ptp(np.concatenate(groups)) == 0:
                H, p, eps = 0.0, 1.0, 0.0
            else:
                H, p = (float(v) for v in kruskal(*groups))
                eps = H / (n - 1) if n > 1 else float("nan")
        else:
            logger.warning("kruskal: %s has fewer than two clusters with values; no test", measure)
        rows.append({"measure": measure, "H": H, "dof": len(groups) - 1, "p": p, "epsilon2": eps, "n": n, "n_clusters": len(groups)})
    out = pd.DataFrame(rows)
    out.insert(out.columns.get_loc("p") + 1, "p_holm", holm(out["p"].to_numpy()))
    return out


def pairwise_effects(df: pd.DataFrame, labels: np.ndarray | pd.Series | str, columns: Sequence[str], include_noise: bool = False) -> pd.DataFrame:
    """Every pair of clusters per measure: medians, Cliff's delta (positive = ``cluster_a``
    larger) with its magnitude, Mann-Whitney U, two-sided p and Holm-adjusted p (within measure)."""
    from scipy.stats import mannwhitneyu

    long = size_long(df, labels, columns, include_noise)
    rows = []
    for measure in _check_columns(df, columns):
        sub = long[long["measure"] == measure]
        vals = {c: g["value"].to_numpy() for c, g in sub.groupby(CLUSTER_COLUMN, observed=True) if len(g)}
        block = []
        for a, b in combinations(vals, 2):
            x, y = vals[a], vals[b]
            delta = cliffs_delta(x, y)
            if np.ptp(np.concatenate([x, y])) == 0:
                U, p = len(x) * len(y) / 2.0, 1.0
            else:
                U, p = (float(v) for v in mannwhitneyu(x, y, alternative="two-sided"))
            block.append({
                "measure": measure, "cluster_a": a, "cluster_b": b, "n_a": len(x), "n_b": len(y),
                "median_a": float(np.median(x)), "median_b": float(np.median(y)),
                "cliffs_delta": delta, "magnitude": delta_magnitude(delta), "U": U, "p": p,
            })
        adj = holm([r["p"] for r in block])
        for r, pa in zip(block, adj):
            r["p_holm"] = float(pa)
        rows.extend(block)
    cols = ["measure", "cluster_a", "cluster_b", "n_a", "n_b", "median_a", "median_b", "cliffs_delta", "magnitude", "U", "p", "p_holm"]
    return pd.DataFrame(rows, columns=cols)


@dataclass
class SizeAnalysis:
    """Everything notebook 05 shows about synapse sizes per cluster."""

    summary: pd.DataFrame
    kruskal: pd.DataFrame
    pairwise: pd.DataFrame
    columns: list[str]

    def significant(self, alpha: float = 0.05) -> pd.DataFrame:
        """Pairs that differ after Holm correction, largest effects first."""
        sig = self.pairwise[self.pairwise["p_holm"] < alpha]
        return sig.reindex(sig["cliffs_delta"].abs().sort_values(ascending=False).index)


def size_analysis(df: pd.DataFrame, labels: np.ndarray | pd.Series | str, columns: Sequence[str] | None = None, include_noise: bool = False) -> SizeAnalysis:
    """One call: summary, Kruskal-Wallis and pairwise effects for the size ``columns``
    (default: the columns :func:`guess_size_columns` finds)."""
    columns = list(columns) if columns is not None else guess_size_columns(df)
    columns = _check_columns(df, columns)
    return SizeAnalysis(
        summary=size_summary(df, labels, columns, include_noise=True),
        kruskal=kruskal_tests(df, labels, columns, include_noise),
        pairwise=pairwise_effects(df, labels, columns, include_noise),
        columns=columns,
    )


# --------------------------------------------------------------------------------------
# every clustered descriptor
# --------------------------------------------------------------------------------------
#: MAD of a normal distribution is 0.6745 sigma: 1.4826 * MAD estimates sigma.
MAD_TO_SD = 1.4826
#: IQR of a normal distribution is 1.349 sigma.
IQR_TO_SD = 1.349


def robust_scale(values: np.ndarray) -> float:
    """A spread that outliers do not inflate: 1.4826 MAD, else IQR / 1.349, else std, else 1."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan")
    med = np.median(x)
    for s in (MAD_TO_SD * np.median(np.abs(x - med)), (np.quantile(x, 0.75) - np.quantile(x, 0.25)) / IQR_TO_SD, x.std()):
        if s > 0:
            return float(s)
    return 1.0


@dataclass
class DescriptorAnalysis:
    """Which descriptors separate the clusters, and how (one row per descriptor in ``table``).

    ``table``: ``descriptor, H, p, p_holm, epsilon2, max_abs_delta, pair, larger, magnitude, n``
    sorted by the largest pairwise |Cliff's delta| (then epsilon^2); ``medians``: clusters x
    descriptors; ``center`` / ``spread``: median and robust spread of each descriptor over all
    synapses, which turn medians into robust z-scores.
    """

    table: pd.DataFrame
    medians: pd.DataFrame
    center: pd.Series
    spread: pd.Series
    pairwise: pd.DataFrame
    columns: list[str]

    @property
    def order(self) -> list[str]:
        """Descriptors from the largest to the smallest effect."""
        return self.table["descriptor"].tolist()

    def robust_z(self) -> pd.DataFrame:
        """Cluster medians as ``(median - overall median) / robust spread``, descriptors ordered by effect."""
        return ((self.medians - self.center) / self.spread)[self.order]

    def separating(self, alpha: float = 0.05, min_delta: float = 0.33) -> pd.DataFrame:
        """Descriptors that differ between clusters (Holm p < alpha) with at least a medium-small effect."""
        t = self.table
        return t[(t["p_holm"] < alpha) & (t["max_abs_delta"] >= min_delta)]


def descriptor_analysis(
    frame: pd.DataFrame,
    labels: np.ndarray | pd.Series | str,
    columns: Sequence[str] | None = None,
    *,
    include_noise: bool = False,
) -> DescriptorAnalysis:
    """Kruskal-Wallis (Holm across descriptors) and the largest pairwise |Cliff's delta| of every
    descriptor, plus a cluster-median table. ``columns`` default to the clustered descriptor
    columns of ``frame`` (:func:`synapse_nb.cubes.descriptors.descriptor_columns`); synapses
    without a value (NaN: not annotated) are left out per descriptor, noise unless ``include_noise``.
    """
    if columns is None:
        from ..cubes.descriptors import descriptor_columns

        columns = descriptor_columns(frame, clustered_only=True)
        if not columns:
            raise ValueError(
                "the table has no descriptor columns (vesicle_volume_um3, cleft_area_um2, ...): rebuild the cubes "
                "(01_load) with this version, or name the columns to compare with columns=[...]"
            )
    columns = _check_columns(frame, columns)
    kw = kruskal_tests(frame, labels, columns, include_noise).set_index("measure")
    pw = pairwise_effects(frame, labels, columns, include_noise)
    rows = []
    for col in columns:
        sub = pw[(pw["measure"] == col) & pw["cliffs_delta"].notna()]
        best = sub.loc[sub["cliffs_delta"].abs().idxmax()] if len(sub) else None
        delta = float(best["cliffs_delta"]) if best is not None else float("nan")
        rows.append({
            "descriptor": col, "H": kw.loc[col, "H"], "p": kw.loc[col, "p"], "p_holm": kw.loc[col, "p_holm"],
            "epsilon2": kw.loc[col, "epsilon2"], "max_abs_delta": abs(delta),
            "pair": f"{best['cluster_a']} vs {best['cluster_b']}" if best is not None else "",
            "larger": (best["cluster_a"] if delta > 0 else best["cluster_b"] if delta < 0 else "") if best is not None else "",
            "magnitude": delta_magnitude(delta), "n": int(kw.loc[col, "n"]),
        })
    table = pd.DataFrame(rows)
    table = table.sort_values(["max_abs_delta", "epsilon2"], ascending=False, na_position="last", kind="stable")
    lab, cats = _groups(frame, labels, include_noise)
    values = frame[columns].apply(pd.to_numeric, errors="coerce").astype(float)
    medians = values.groupby(lab.to_numpy()).median().reindex(cats)
    medians.index.name = CLUSTER_COLUMN
    center = values.median()
    spread = pd.Series({c: robust_scale(values[c].to_numpy()) for c in columns})
    return DescriptorAnalysis(
        table=table.reset_index(drop=True), medians=medians, center=center, spread=spread, pairwise=pw, columns=columns,
    )
