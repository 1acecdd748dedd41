"""What is clustered: the deep features, the morphometric descriptors, or both.

With random or poorly matched network weights the deep features follow the brightness of a
volume rather than the shape of its synapses; the descriptors measured on the cubes (vesicle
cloud volume, cleft area, cleft flatness, ...) do not. :func:`assemble` builds the matrix that
PCA, UMAP, t-SNE and clustering run on, for ``feature_set``:

* ``"deep"``: the ``feat_*`` columns, z-scored per column (constant columns stay at 0);
  exactly what :func:`synapse_nb.analysis.reduce.standardize` gives.
* ``"descriptors"``: the clustered descriptor columns of the table, z-scored per column.
* ``"hybrid"``: both blocks, each z-scored per column, then each block multiplied by one factor
  so that the descriptor block holds ``descriptor_weight`` of the total variance and the deep
  block the rest. The total is the number of non-constant columns kept (what plain per-column
  z-scoring would give), so 7,000 deep columns do not drown 20 descriptors. The result must
  not be standardised again per column: that would undo the block weights.

Descriptor columns that are entirely missing (NaN: not annotated) or constant are dropped with
a note; a descriptor missing for some synapses gets the median of the others, with a note
naming those synapses.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .reduce import (
    CONSTANT_RTOL,
    DEFAULT_PREFIX,
    feature_columns,
    row_names,
    standardize,
)

logger = logging.getLogger(__name__)

FEATURE_SETS = ("deep", "descriptors", "hybrid")
DEEP_BLOCK = "deep"
DESCRIPTOR_BLOCK = "descriptors"
#: Synapse names listed in a note before "and N more".
MAX_LISTED = 5


@dataclass
class FeatureMatrix:
    """The matrix that is reduced and clustered, with where each column came from.

    ``matrix`` is indexed like the features table; ``blocks`` maps each column to
    ``"deep"`` or ``"descriptors"``; ``notes`` says what was dropped or imputed and why.
    """

    matrix: pd.DataFrame
    blocks: dict[str, str]
    notes: list[str] = field(default_factory=list)
    feature_set: str = "deep"
    descriptor_weight: float | None = None
    n_constant: int = 0

    @property
    def values(self) -> np.ndarray:
        """The matrix as a float64 array (rows = synapses)."""
        return self.matrix.to_numpy(dtype=np.float64)

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def columns(self, block: str) -> list[str]:
        """Columns of one block, in matrix order."""
        return [c for c in self.matrix.columns if self.blocks.get(c) == block]

    def block_counts(self) -> dict[str, int]:
        """Number of columns kept per block (blocks with none are left out)."""
        counts: dict[str, int] = {}
        for c in self.matrix.columns:
            counts[self.blocks[c]] = counts.get(self.blocks[c], 0) + 1
        return counts

    def variance_share(self) -> dict[str, float]:
        """Share of the total (population) variance each block holds."""
        var = self.matrix.var(axis=0, ddof=0)
        total = float(var.sum())
        return {b: (float(var[self.columns(b)].sum()) / total if total > 0 else float("nan")) for b in self.block_counts()}

    def info(self) -> dict[str, Any]:
        """What :func:`reduce_features` records in ``attrs["reduce"]``."""
        return {
            "feature_set": self.feature_set,
            "descriptor_weight": self.descriptor_weight,
            "n_columns": self.block_counts(),
            "descriptor_columns": self.columns(DESCRIPTOR_BLOCK),
            "notes": list(self.notes),
        }


def _listed(names: Sequence[str]) -> str:
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def _descriptor_block(features: pd.DataFrame, columns: Sequence[str], names: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Clean descriptor columns: drop empty/constant ones, impute the median, z-score."""
    notes: list[str] = []
    kept: dict[str, np.ndarray] = {}
    empty, constant = [], []
    for col in columns:
        series = features[col]
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            raise ValueError(f"descriptor column {col!r} is not numeric (dtype {series.dtype}); fix the cube table or leave it out")
        x = series.to_numpy(dtype=np.float64, copy=True)
        missing = ~np.isfinite(x)
        if missing.all():
            empty.append(col)
            continue
        if missing.any():
            med = float(np.median(x[~missing]))
            rows = np.flatnonzero(missing)
            notes.append(
                f"{col}: {len(rows)} of {len(x)} synapses without a value: not annotated, or the structure is absent "
                f"from the cube ({_listed([names[i] for i in rows])}); "
                f"set to the median of the others, {med:.4g}"
            )
            x[missing] = med
        std = x.std()
        if std <= CONSTANT_RTOL * (1.0 + abs(x.mean())):
            constant.append(col)
            continue
        kept[col] = (x - x.mean()) / std
    if empty:
        notes.insert(0, f"dropped descriptor(s) without a value for any synapse (not annotated, or absent from every cube): {', '.join(empty)}")
    if constant:
        notes.insert(0, f"dropped descriptor(s) with the same value for every synapse: {', '.join(constant)}")
    return pd.DataFrame(kept, index=features.index), notes


def _deep_block(features: pd.DataFrame, feature_set: str, names: list[str], prefix: str,
                notes: list[str]) -> tuple[pd.DataFrame, int]:
    """The standardised deep feature columns and how many are constant (they stay 0)."""
    cols = feature_columns(features, prefix)
    if not cols:
        hint = "use feature_set='descriptors'" if feature_set == "hybrid" else "pass the features table written by 03_extract"
        raise ValueError(f"feature_set {feature_set!r} needs deep feature columns ({prefix}*) but the table has none; {hint}")
    Xs, scaler = standardize(features[cols], names, prefix=prefix)
    if scaler.n_constant:
        notes.append(f"{scaler.n_constant} of {len(cols)} deep features are constant and stay at 0")
    return pd.DataFrame(Xs, index=features.index, columns=cols), scaler.n_constant


def _descriptors_for(features: pd.DataFrame, feature_set: str, descriptors: Sequence[str] | None, names: list[str],
                     notes: list[str]) -> pd.DataFrame:
    """The usable descriptor block (z-scored, missing and constant columns dropped with notes)."""
    if descriptors is None:
        from ..cubes.descriptors import descriptor_columns

        descriptors = descriptor_columns(features, clustered_only=True)
    cols = list(descriptors)
    missing = [c for c in cols if c not in features.columns]
    if missing:
        raise ValueError(f"descriptor column(s) {missing} are not in the features table; leave them out or rebuild the cubes")
    if not cols:
        raise ValueError(
            f"feature_set {feature_set!r} needs morphometric descriptor columns (vesicle_volume_um3, cleft_area_um2, "
            "cleft_flatness, ...) but the features table has none: rebuild the cubes (01_load) with this version "
            "so the cube table carries them, re-run 03_extract, or use feature_set='deep'"
        )
    desc, desc_notes = _descriptor_block(features, cols, names)
    notes.extend(desc_notes)
    if desc.shape[1] == 0:
        raise ValueError(
            f"feature_set {feature_set!r}: none of the descriptor columns {list(cols)} is usable (all missing or constant); "
            "annotate the structures they measure or use feature_set='deep'"
        )
    return desc


def assemble(
    features: pd.DataFrame,
    *,
    feature_set: str,
    descriptor_weight: float = 0.5,
    descriptors: Sequence[str] | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> FeatureMatrix:
    """The matrix to reduce and cluster for ``feature_set`` (``deep``, ``descriptors``, ``hybrid``).

    ``descriptors`` overrides which descriptor columns are used (default: the clustered
    descriptor columns present, :func:`synapse_nb.cubes.descriptors.descriptor_columns`).
    ``descriptor_weight`` (hybrid only) is the descriptor block's share of the total variance.
    """
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature_set {feature_set!r}; choose one of {FEATURE_SETS}")
    if not 0.0 <= float(descriptor_weight) <= 1.0:
        raise ValueError(f"descriptor_weight must be between 0 and 1, got {descriptor_weight}")
    if len(features) == 0:
        raise ValueError("the feature table is empty: no synapses to analyse")
    names = row_names(features)
    notes: list[str] = []
    deep, n_constant = _deep_block(features, feature_set, names, prefix, notes) if feature_set != "descriptors" else (None, 0)
    desc = _descriptors_for(features, feature_set, descriptors, names, notes) if feature_set != "deep" else None
    blocks: list[pd.DataFrame] = []
    block_of: dict[str, str] = {}

    if feature_set == "deep":
        assert deep is not None
        blocks.append(deep)
        block_of.update(dict.fromkeys(deep.columns, DEEP_BLOCK))
    elif feature_set == "descriptors":
        assert desc is not None
        blocks.append(desc)
        block_of.update(dict.fromkeys(desc.columns, DESCRIPTOR_BLOCK))
    else:
        assert deep is not None and desc is not None
        w = float(descriptor_weight)
        d_deep = deep.shape[1] - n_constant
        d_desc = desc.shape[1]
        if d_deep == 0:
            raise ValueError("feature_set 'hybrid': every deep feature is constant; use feature_set='descriptors'")
        total = float(d_deep + d_desc)
        # z-scored columns have variance 1, so a block's variance is its non-constant column count
        blocks.append(deep * np.sqrt((1.0 - w) * total / d_deep))
        blocks.append(desc * np.sqrt(w * total / d_desc))
        block_of.update(dict.fromkeys(deep.columns, DEEP_BLOCK))
        block_of.update(dict.fromkeys(desc.columns, DESCRIPTOR_BLOCK))
        notes.append(
            f"hybrid: {d_desc} descriptor(s) hold {100 * w:.0f}% of the variance, {d_deep} deep features {100 * (1 - w):.0f}%"
        )
    matrix = pd.concat(blocks, axis=1) if len(blocks) > 1 else blocks[0]
    for note in notes:
        logger.info("assemble: %s", note)
    return FeatureMatrix(
        matrix=matrix, blocks=block_of, notes=notes, feature_set=feature_set,
        descriptor_weight=float(descriptor_weight) if feature_set == "hybrid" else None, n_constant=n_constant,
    )
