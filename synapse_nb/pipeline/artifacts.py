"""Every file a run directory holds, declared once.

A run directory is the hand-off between notebooks: each step reads what earlier steps wrote.
Naming those files here (path, format, the step that writes it) means a reader can never
look for a name the writer did not use, and `docs/architecture.md` can point at one list.
Paths are relative to the run directory; ``{step}`` and ``{name}`` are filled in per use.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: The pipeline's steps in order; each is a notebook ``notebooks/<step>.ipynb``.
STEPS: tuple[str, ...] = (
    "01_load", "02_pretrain", "03_extract", "04_reduce", "05_cluster", "06_attention", "07_presynapse", "08_report",
)
#: Steps that run only when a parameter asks for them: step -> that boolean parameter. Otherwise
#: the runner records them as "not asked" (never as failed) and the run goes on without them.
OPTIONAL_STEPS: dict[str, str] = {"02_pretrain": "pretrain"}
RUNNER = "runner"
"""Pseudo-step for files the runner itself writes (parameters, status, log)."""


@dataclass(frozen=True)
class Artifact:
    """One file (or folder) of a run: where it lives, how it is stored, who writes it."""

    name: str
    path: str
    format: str
    step: str
    csv: bool = False
    """A table that is also written as CSV beside the parquet (for spreadsheets)."""
    description: str = ""

    def at(self, **fields: str) -> str:
        """The relative path with ``{step}`` / ``{name}`` filled in; each must be a bare file name."""
        for key, value in fields.items():
            if not value or Path(value).name != value or value in (".", ".."):
                raise ValueError(f"{self.name}: {key} must be a bare file name, got {value!r}")
        return self.path.format(**fields) if fields else self.path


def _a(name: str, path: str, fmt: str, step: str, description: str, csv: bool = False) -> Artifact:
    return Artifact(name, path, fmt, step, csv, description)


# --- written by the runner and by every notebook
PARAMS = _a("params", "params.yaml", "yaml", RUNNER, "resolved parameters of the whole run (what was really used)")
STEP_PARAMS = _a("step_params", "params_{step}.yaml", "yaml", "{step}", "parameters as one notebook saw them")
VERSIONS = _a("versions", "versions.json", "json", RUNNER, "python and main package versions")
LOG = _a("log", "run.log", "text", RUNNER, "everything the package logged during the run")
STATUS = _a("status", "status.json", "json", RUNNER, "overall and per-step state (running, ok, failed, stopped)")
NOTEBOOK = _a("notebook", "notebooks/{step}.ipynb", "ipynb", "{step}", "the executed notebook of a step")
HTML = _a("html", "html/{step}.html", "html", "{step}", "a step's notebook exported to offline HTML")
ATTEMPT_HTML = _a("attempt_html", "html/{step}.{state}.html", "html", "{step}",
                  "the page of a failed, stopped or interrupted attempt, kept beside the earlier good report")
ATTEMPT_NOTEBOOK = _a("attempt_notebook", "notebooks/{step}.{state}.ipynb", "ipynb", "{step}",
                      "the executed notebook of such an attempt")
CACHE_RECORD = _a("cache_record", "cache.json", "json", "01_load", "which cached stages were reused (hit) or computed")

# --- 01_load
CUBES = _a("cubes", "cubes", "cube store", "01_load", "raw + structure bits per synapse (a link into the cache when caching)")
SKIPPED = _a("skipped", "tables/skipped.parquet", "parquet", "01_load", "synapses that could not be built, with reasons", csv=True)

SAMPLE = _a("sample", "tables/sample.parquet", "parquet", "01_load",
           "connectome runs: the sampled synapses, written before any cube is built (with viewer links)", csv=True)
SAMPLE_RECORD = _a("sample_record", "tables/sample.json", "json", "01_load",
                   "connectome runs: the sampling plan, counts per stratum or axon, notes")
REJECTED = _a("rejected", "tables/rejected.parquet", "parquet", "01_load",
              "connectome runs: rows of the synapse table that cannot be used (outside the volume, unknown ids), with reasons", csv=True)
ENGINE_CUBES = _a("engine_cubes", "cubes/engine.json", "json", "01_load",
                  "Dask engine runs: what the cube partitions were built from (other inputs clear them)")
FEATURE_PARTS = _a("feature_parts", "features_parts", "folder", "03_extract",
                   "Dask engine runs: one folder of features per cube partition (a stopped run resumes from them)")

# --- 02_pretrain (only with pretrain: true)
PRETRAIN_DIR = _a("pretrain_dir", "pretrain", "folder", "02_pretrain",
                  "the training folder (a link into the cache when caching and the training is finished)")
PRETRAIN_WEIGHTS = _a("pretrain_weights", "pretrain/weights.pt", "torch", "02_pretrain",
                      "the trained trunk; 03_extract and 06_attention use it (weights_path of another run may too)")
PRETRAIN_STATE = _a("pretrain_state", "pretrain/training_state.pt", "torch", "02_pretrain",
                    "model, optimizer and epoch after every epoch: a killed run resumes from it")
PRETRAIN_HISTORY = _a("pretrain_history", "pretrain/history.csv", "csv", "02_pretrain", "loss and seconds per epoch")
PRETRAIN_RECORD = _a("pretrain_record", "tables/pretrain.json", "json", "02_pretrain",
                     "settings, epochs, why training stopped, seconds per epoch, device, the synapses trained on")

# --- 03_extract
FEATURES = _a("features", "tables/features.parquet", "parquet", "03_extract", "one row per synapse: metadata + feat_* columns")
SEED_FEATURES_CSV = _a("seed_features_csv", "tables/{name}", "csv", "03_extract",
                       "the features again under the original tool's file name")
SKIPPED_FEATURES = _a("skipped_features", "tables/skipped_features.parquet", "parquet", "03_extract",
                      "synapses left out because their mask is empty for the segmentation type", csv=True)
EXTRACTION = _a("extraction", "tables/extraction.json", "json", "03_extract", "weights, input range, device, seconds")

# --- 04_reduce
EMBEDDINGS = _a("embeddings", "tables/embeddings.parquet", "parquet", "04_reduce", "PCA scores, UMAP and t-SNE coordinates")

# --- 05_cluster
CLUSTERS = _a("clusters", "tables/clusters.parquet", "parquet", "05_cluster", "cluster label per synapse", csv=True)
STABILITY = _a("stability", "tables/stability.parquet", "parquet", "05_cluster", "subsample stability per k")
AGREEMENT = _a("agreement", "tables/agreement.parquet", "parquet", "05_cluster", "ARI / NMI against known classes")
CLUSTER_QUALITY = _a("cluster_quality", "tables/cluster_quality.json", "json", "05_cluster", "method, k, silhouette")
ANNDATA = _a("anndata", "synapses.h5ad", "h5ad", "05_cluster", "features, embeddings and clusters for scanpy")

# --- 06_attention
ATTENTION_SAMPLES = _a("attention_samples", "tables/attention_samples.parquet", "parquet", "06_attention",
                       "explained synapses", csv=True)
ATTENTION_OVERLAP = _a("attention_overlap", "tables/attention_overlap.parquet", "parquet", "06_attention",
                       "attention vs structure per synapse, layer and structure")
ATTENTION_OVERLAP_SUMMARY = _a("attention_overlap_summary", "tables/attention_overlap_summary.parquet", "parquet",
                               "06_attention", "attention vs structure averaged per layer", csv=True)
ATTENTION_REGIONS = _a("attention_regions", "tables/attention_regions.parquet", "parquet", "06_attention",
                       "strongest regions of the mean map", csv=True)
ATTENTION_MAPS = _a("attention_maps", "attention/maps.npz", "npz", "06_attention", "Grad-CAM maps (float16)")
ATTENTION_META = _a("attention_meta", "attention/attention.json", "json", "06_attention", "target, weights, layers, device")

# --- 07_presynapse
PRESYNAPSE_GROUPS = _a("presynapse_groups", "tables/presynapse_groups.parquet", "parquet", "07_presynapse",
                       "one row per group of synapses sharing a neurite (see its grouping column)", csv=True)
PRESYNAPSE_SYNAPSES = _a("presynapse_synapses", "tables/presynapse_synapses.parquet", "parquet", "07_presynapse",
                         "synapses with their group")
PRESYNAPSE_EXCLUDED = _a("presynapse_excluded", "tables/presynapse_excluded.parquet", "parquet", "07_presynapse",
                         "synapses left out of the grouping, with reasons", csv=True)
PRESYNAPSE_TEST = _a("presynapse_test", "tables/presynapse_test.json", "json", "07_presynapse",
                     "permutation test numbers")
PRESYNAPSE_SUMMARY = _a("presynapse_summary", "html/presynapse_summary.html", "html", "07_presynapse",
                        "self-contained summary page of the groups")

ALL: tuple[Artifact, ...] = tuple(v for v in list(globals().values()) if isinstance(v, Artifact))


def table_markdown() -> str:
    """The list above as a Markdown table (for docs and the README)."""
    rows = ["| file | format | written by | what |", "|---|---|---|---|"]
    for a in ALL:
        rows.append(f"| `{a.path}`{' (+ `.csv`)' if a.csv else ''} | {a.format} | {a.step} | {a.description} |")
    return "\n".join(rows)
