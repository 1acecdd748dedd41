"""One AnnData file (``.h5ad``) for scanpy users: features, embeddings, clusters, metadata.

Slot conventions (scanpy):

* ``X``: the feature matrix as extracted (float32), ``var_names`` = ``feat_0000``...
  (standardise again in scanpy with ``sc.pp.scale``; we keep the raw features so nothing is
  lost);
* ``obs``: synapse metadata (name, bbox, class, morphometrics, ...) and ``cluster`` as a
  categorical of strings (``"0"``.., ``"noise"``), like ``leiden``;
  ``obs_names`` are ``bbox/Var1`` (unique across bboxes), made unique if needed;
* ``obsm``: ``X_pca``, ``X_umap``, ``X_tsne`` (2-D), ``X_umap_3d``, ``X_tsne_3d``;
* ``uns``: ``pca`` (``variance_ratio``), ``synapse_nb`` (parameters and what was done).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..core.atomic import atomic_path
from . import clustering as C
from . import reduce as R

logger = logging.getLogger(__name__)

#: obsm key -> (method, dim) of the embedding columns in the embeddings table.
OBSM_KEYS = {
    "X_umap": ("umap", 2),
    "X_tsne": ("tsne", 2),
    "X_umap_3d": ("umap", 3),
    "X_tsne_3d": ("tsne", 3),
}


def _clean_obs(meta: pd.DataFrame) -> pd.DataFrame:
    """h5ad stores strings, numbers, booleans and categoricals; everything else becomes str."""
    out = meta.copy()
    for c in out.columns:
        s = out[c]
        if isinstance(s.dtype, pd.CategoricalDtype):
            out[c] = s.cat.rename_categories([str(x) for x in s.cat.categories])
        elif pd.api.types.is_bool_dtype(s) or (pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_object_dtype(s)):
            continue
        else:
            txt = s.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)).astype(str)
            # repeated strings as categoricals, as anndata would do on write (saying so)
            out[c] = txt.astype("category") if txt.nunique() < len(txt) else txt
    out.columns = [str(c) for c in out.columns]
    return out


def _plain(value: Any) -> Any:
    """Make parameters storable in ``uns`` (no None, no tuples of mixed types)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in value) and value:
            return np.asarray(value)
        return json.dumps(value, default=str)
    if isinstance(value, np.ndarray | np.number | bool | int | float | str):
        return value
    return str(value)


def obs_names(meta: pd.DataFrame) -> pd.Index:
    """``bbox/Var1`` when possible, else the name or row number; always unique."""
    names = pd.Index(R.row_names(meta), dtype=str)
    if names.has_duplicates:
        counts: dict[str, int] = {}
        fixed = []
        for nm in names:
            counts[nm] = counts.get(nm, -1) + 1
            fixed.append(nm if counts[nm] == 0 else f"{nm}-{counts[nm]}")
        logger.warning("synapse names are not unique; suffixes -1, -2, ... added to %d duplicates", int(names.duplicated().sum()))
        names = pd.Index(fixed, dtype=str)
    return names


def to_anndata(
    features_df: pd.DataFrame,
    embeddings_df: pd.DataFrame | None,
    labels: np.ndarray | pd.Series | C.ClusterResult | None,
    path: str | Path,
    *,
    params: Mapping[str, Any] | None = None,
    prefix: str = R.DEFAULT_PREFIX,
) -> Path:
    """Write features, embeddings, clusters and metadata as one ``.h5ad`` (atomically).

    Rows are aligned by position. ``params`` (e.g. the notebook parameters) go to
    ``uns['synapse_nb']`` together with ``embeddings_df.attrs['reduce']``.
    """
    import anndata as ad

    path = Path(path)
    if path.suffix != ".h5ad":
        raise ValueError(f"AnnData files end in .h5ad, got {path.name!r}")
    X = R.feature_matrix(features_df, prefix).astype(np.float32)
    meta = _clean_obs(R.metadata(features_df, prefix).reset_index(drop=True))
    n = len(meta)
    names = obs_names(meta)
    meta.index = names
    uns: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if isinstance(labels, C.ClusterResult):
        extra["cluster"] = {"method": labels.method, "k": labels.k, **{k: v for k, v in labels.info.items() if np.isscalar(v)}}
        labels = labels.labels
    if labels is not None:
        lab = labels.to_numpy() if isinstance(labels, pd.Series) else np.asarray(labels)
        if len(lab) != n:
            raise ValueError(f"{len(lab)} cluster labels for {n} synapses")
        cat = C.cluster_names(lab) if np.issubdtype(lab.dtype, np.integer) else pd.Categorical(np.asarray(lab).astype(str))
        meta[C.CLUSTER_COLUMN] = pd.Categorical(cat, categories=[str(c) for c in cat.categories])
    obsm: dict[str, np.ndarray] = {}
    if embeddings_df is not None:
        if len(embeddings_df) != n:
            raise ValueError(f"embeddings have {len(embeddings_df)} rows but the features table {n}")
        pcs = R.pca_columns(embeddings_df)
        if pcs:
            obsm["X_pca"] = embeddings_df[pcs].to_numpy(dtype=np.float32)
        for key, (method, dim) in OBSM_KEYS.items():
            cols = R.embedding_columns(method, dim)
            if all(c in embeddings_df.columns for c in cols):
                obsm[key] = embeddings_df[cols].to_numpy(dtype=np.float32)
        info = embeddings_df.attrs.get("reduce", {})
        if info.get("explained_variance_ratio"):
            uns["pca"] = {"variance_ratio": np.asarray(info["explained_variance_ratio"])}
        extra["reduce"] = {k: v for k, v in info.items() if k != "explained_variance_ratio"}
    if params:
        extra["params"] = dict(params)
    uns["synapse_nb"] = _plain(extra)
    adata = ad.AnnData(X=X, obs=meta, var=pd.DataFrame(index=pd.Index(R.feature_columns(features_df, prefix), dtype=str)), obsm=obsm, uns=uns)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    logger.info("wrote AnnData %d x %d with obsm %s to %s", n, X.shape[1], sorted(obsm), path)
    return path
