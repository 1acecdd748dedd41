"""Export executed notebooks to self-contained HTML reports, a sweep's index page and the run summary of 08_report."""
from __future__ import annotations

import html
import logging
import posixpath
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat

from ..core import atomic
from ..core import labels as L
from ..figures import maps
from ..figures.gallery import VIEWER_LINK_COLUMN, has_viewer_links, linked_table
from . import artifacts as A
from .runs import Run

if TYPE_CHECKING:
    import pandas as pd
    from pandas.io.formats.style import Styler

logger = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).parent / "templates"
TEMPLATE_NAME = "synapse_offline"
DROPPED_OUTPUT_WARNING = "not able to be represented"
INDEX_NAME = "index.html"
"""The sweep's own index page, in the sweep folder (not a file of any run)."""


class ReportError(RuntimeError):
    """An export would lose content (an output nbconvert cannot show)."""


def export_html(notebook: str | Path, html_path: str | Path, strict: bool = True) -> Path:
    """Write ``notebook`` as HTML without code cells that opens offline.

    With ``strict`` an output that nbconvert would silently drop (e.g. a plotly figure with
    only its mime bundle) is an error instead of a report with a hole in it. The page is
    written to a temporary name and renamed when complete, so an existing report is replaced
    only by a whole new one; an unreadable notebook is a one-line :class:`ReportError`.
    """
    from nbconvert import HTMLExporter

    try:
        nb = nbformat.read(str(notebook), as_version=4)
    except (OSError, ValueError, nbformat.ValidationError) as exc:  # NotJSONError is a ValueError
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ReportError(f"cannot read the executed notebook {notebook} ({reason}); run its step again") from None
    exporter = HTMLExporter(
        template_name=TEMPLATE_NAME,
        extra_template_basedirs=[str(TEMPLATES_DIR)],
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        body, _ = exporter.from_notebook_node(nb)
    dropped = [str(w.message) for w in caught if DROPPED_OUTPUT_WARNING in str(w.message)]
    if dropped:
        message = f"{notebook}: {len(dropped)} output(s) cannot be shown in HTML: {dropped[0]}"
        if strict:
            raise ReportError(message)
        logger.warning(message)
    path = atomic.write_text(html_path, body)
    logger.info("exported %s -> %s", notebook, path)
    return path


def html_pages(run: Run) -> list[tuple[str, str]]:
    """The exported pages a run has, as (label, path relative to the run directory): each
    step's notebook in step order, then the presynapse summary page."""
    pages = [(step, A.HTML.at(step=step)) for step in A.STEPS if run.has(A.HTML, step=step)]
    if run.has(A.PRESYNAPSE_SUMMARY):
        pages.append(("presynapse summary", A.PRESYNAPSE_SUMMARY.at()))
    return pages


# --------------------------------------------------------------------------------------
# sweep index page
# --------------------------------------------------------------------------------------
_INDEX_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}.failed{background:#fde2e2}.ok{background:#e6f4e6}section{margin:1.5em 0}
h2{border-bottom:1px solid #ddd}code{background:#f5f5f5;padding:0 3px}
"""
SECTION_KEYS = ("segmentation_type", "alpha")


def _cell(value) -> str:
    return html.escape("" if value is None or (isinstance(value, float) and value != value) else str(value))


def sweep_index(sweep_dir: Path, summary, spec: dict) -> Path:
    """Write ``index.html`` for a sweep: a comparison table and a section per
    (segmentation type, alpha) linking every exported notebook of that combination.
    Plain HTML without scripts, so it opens anywhere, offline."""
    sweep_dir = Path(sweep_dir)
    cols = [c for c in summary.columns if c not in ("error", "reused_run")]
    head = "".join(f"<th>{_cell(c)}</th>" for c in cols)
    body = []
    for _, row in summary.iterrows():
        cells = "".join(f"<td>{_cell(row[c])}</td>" for c in cols)
        body.append(f'<tr class="{_cell(row["status"])}">{cells}</tr>')
    sections = []
    keys = [k for k in SECTION_KEYS if k in summary.columns]
    groups = summary.groupby(keys, sort=False, dropna=False) if keys else [((), summary)]
    for key, rows in groups:
        key = key if isinstance(key, tuple) else (key,)
        title = ", ".join(f"{k} {_cell(v)}" for k, v in zip(keys, key)) or "all combinations"
        items = []
        for _, row in rows.iterrows():
            name = str(row["combination"])
            pages = html_pages(Run(sweep_dir / name))
            links = " · ".join(f'<a href="{html.escape(name)}/{html.escape(rel)}">{html.escape(label)}</a>' for label, rel in pages)
            error = f'<br/><span class="failed">{_cell(row.get("error"))}</span>' if row["status"] != "ok" else ""
            items.append(f"<li><code>{html.escape(name)}</code> ({_cell(row['status'])}): {links or 'no report'}{error}</li>")
        sections.append(f"<section><h2>{title}</h2><ul>{''.join(items)}</ul></section>")
    n_failed = int((summary["status"] != "ok").sum())
    page = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"/>
<title>Sweep {html.escape(sweep_dir.name)}</title><style>{_INDEX_STYLE}</style></head><body>
<h1>Sweep {html.escape(sweep_dir.name)}</h1>
<p>{len(summary)} combinations, {len(summary) - n_failed} finished, {n_failed} failed.
Grid: {_cell(spec.get('grid'))}</p>
<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>
{''.join(sections)}
</body></html>"""
    return atomic.write_text(sweep_dir / INDEX_NAME, page)


# --------------------------------------------------------------------------------------
# run summary (notebook 08)
# --------------------------------------------------------------------------------------
@dataclass
class RunSummary:
    """Everything 08_report shows about one run, read back from the run directory."""

    run_path: Path
    parameters: "pd.DataFrame"
    data: "pd.DataFrame"
    clusters: "pd.DataFrame"
    skipped: "pd.DataFrame"
    frame: "pd.DataFrame"
    quality: dict
    agreement: dict
    extraction: str
    warnings: list[str]
    presynapse: dict = field(default_factory=dict)
    attention: "pd.DataFrame | None" = None
    attention_meta: dict = field(default_factory=dict)
    extraction_device: str = ""  # where 03_extract computed the features, e.g. 'cpu' or 'cuda:0 (NVIDIA A100)'
    sample: dict = field(default_factory=dict)  # tables/sample.json of a connectome run; {} for bbox runs
    #: each cluster's representatives (cluster, rank, bbox, Var1, viewer_link) when the run has viewer links
    representatives: "pd.DataFrame | None" = None

    @property
    def connectome(self) -> str:
        """The connectome's name (its single bbox) for connectome runs, else ""."""
        if not self.sample:
            return ""
        names = self.data["bbox"].astype(str).unique().tolist() if len(self.data) else []
        return names[0] if len(names) == 1 else Path(str(self.sample.get("connectome", ""))).stem

    def headline(self) -> str:
        n = len(self.frame)
        if self.sample:
            text = f"**{n} synapses** sampled from connectome `{self.connectome}`"
        else:
            text = f"**{n} synapses** from {self.data['bbox'].nunique() if len(self.data) else 0} bboxes"
        q = self.quality
        if q:
            chosen = q.get("k_chosen_by")
            how = f", k by {chosen}" if chosen and chosen != q.get("method") else ""
            text += f"; **{q.get('k')} clusters** by {q.get('method')}{how} (silhouette {q.get('silhouette')})"
            if q.get("feature_set"):
                text += f" on **{q['feature_set']}** features"
        if self.agreement:
            text += f"; against `{self.agreement.get('truth')}`: ARI {self.agreement['ari']:.3f}, NMI {self.agreement['nmi']:.3f}"
        return text + "."

    def warnings_markdown(self) -> str:
        return "\n".join(f"- ⚠ {w}" for w in self.warnings) if self.warnings else "No warnings."

    def data_markdown(self) -> str:
        """Connectome runs: one line naming the connectome and the sample (policy, counts,
        rejected rows, notes); "" for bbox runs. Names the description file, not its folder."""
        r = self.sample
        if not r:
            return ""
        plan = r.get("plan") or {}
        source = Path(str(r.get("connectome", ""))).name
        text = (f"Data: connectome `{self.connectome}`" + (f" (description `{source}`)" if source else "")
                + f": **{int(r.get('sampled', 0)):,} of {int(r.get('usable', 0)):,}** usable synapses sampled"
                + (f" (policy `{plan['policy']}`, seed {plan.get('seed')})" if plan.get("policy") else "") + ".")
        rejected = int(r.get("rejected", 0) or 0)
        if rejected:
            text += f" {rejected:,} rows of the synapse table could not be used (`tables/rejected.csv`)."
        notes = " ".join(str(n) for n in r.get("notes", []) or [])
        return text + (f" {notes}" if notes else "")

    def representatives_table(self) -> "Styler | None":
        """Each cluster's representatives with a link that opens each in the viewer; None when
        the run has no viewer links (bbox runs, connectomes without a viewer)."""
        if self.representatives is None or not has_viewer_links(self.representatives):
            return None
        return linked_table(self.representatives)  # type: ignore[return-value]

    def presynapse_markdown(self) -> str:
        """One sentence on the shared-neurite permutation test of 07_presynapse (if it ran),
        worded for its grouping (presynaptic, or a neurite on either side when polarity is unknown)."""
        if not self.presynapse:
            return "07_presynapse did not run in this run."
        from ..connectivity.groups import summary_sentence

        return summary_sentence(self.presynapse)

    def attention_markdown(self) -> str:
        """What 06_attention explained and which structure each layer attends to most."""
        m = self.attention_meta
        if not m or self.attention is None or not len(self.attention):
            return "06_attention did not run in this run."
        from ..explain.attention import most_attended_text

        parts = most_attended_text(self.attention)
        skipped = ", ".join(f"features.{k}" for k in m.get("skipped_layers", {}))
        text = f"Grad-CAM target **{m.get('target')}**; most attended structure per layer: " + (parts or "none") + "."
        text += f" Grad-CAM ran on {m['device']}." if m.get("device") else ""
        text += f" Skipped (after the feature layer, no gradient): {skipped}." if skipped else ""
        return text + "".join(f"\n\n⚠ {note}" for note in m.get("explained", []))

    def links_markdown(self) -> str:
        """Links to the run's other pages, relative to where 08_report's own page is written."""
        here = posixpath.dirname(A.HTML.at(step="08_report"))
        pages = [(label, posixpath.relpath(rel, here)) for label, rel in html_pages(Run(self.run_path)) if label != "08_report"]
        return " · ".join(f"[{label}]({rel})" for label, rel in pages) or "No other report exported yet."


def run_summary(run_path: str | Path, class_column: str = "synapse_class") -> RunSummary:
    """Collect a run's parameters, data counts, clusters, skipped synapses and warnings."""
    import pandas as pd

    run_path = Path(run_path)
    run = Run(run_path)

    def table(artifact: A.Artifact) -> pd.DataFrame:
        return run.read(artifact) if run.has(artifact) else pd.DataFrame()

    def record(artifact: A.Artifact) -> dict:
        return run.read(artifact) if run.has(artifact) else {}

    params = record(A.PARAMS)
    features, emb, clusters = table(A.FEATURES), table(A.EMBEDDINGS), table(A.CLUSTERS)
    skipped = pd.concat([table(A.SKIPPED).assign(step=A.SKIPPED.step),
                         table(A.SKIPPED_FEATURES).assign(step=A.SKIPPED_FEATURES.step)], ignore_index=True)
    extraction_record = record(A.EXTRACTION)
    extraction = extraction_record.get("description", "")
    device = str(extraction_record.get("device", ""))
    if extraction and device:
        extraction += f" Features computed on **{device}**."
    quality = record(A.CLUSTER_QUALITY)
    agreement_df = table(A.AGREEMENT)
    agreement = agreement_df.iloc[0].to_dict() if len(agreement_df) else {}
    labels = clusters["cluster_label"].to_numpy() if len(clusters) == len(features) and len(features) else None
    frame = maps.analysis_frame(features, emb if len(emb) == len(features) else None, labels) if len(features) else pd.DataFrame()
    data = pd.DataFrame(columns=["bbox", "synapses", "skipped"])
    if len(features):
        built = features.groupby("bbox").size().rename("synapses")
        lost = skipped.groupby("bbox").size().rename("skipped") if len(skipped) else pd.Series(dtype=int, name="skipped")
        data = pd.concat([built, lost], axis=1).fillna(0).astype(int).rename_axis("bbox").reset_index()
    cluster_table = _cluster_table(frame)
    warnings_list = _warnings(extraction, skipped, features, quality)
    param_table = pd.DataFrame({"parameter": list(params), "value": [str(v) for v in params.values()]})
    presynapse = record(A.PRESYNAPSE_TEST)
    attention_meta = record(A.ATTENTION_META)
    attention = table(A.ATTENTION_OVERLAP_SUMMARY)
    return RunSummary(run_path, param_table, data, cluster_table, skipped, frame, quality, agreement, extraction,
                      warnings_list, presynapse, attention, attention_meta, device,
                      sample=record(A.SAMPLE_RECORD), representatives=_representatives(run, features, emb, clusters))


def _representatives(run: Run, features: "pd.DataFrame", emb: "pd.DataFrame", clusters: "pd.DataFrame") -> "pd.DataFrame | None":
    """The synapses closest to each cluster centroid in 04_reduce's PCA space (as 05_cluster
    shows them, ``n_representatives`` of 05's parameters), with their viewer links; None without
    viewer links or clusters."""
    import pandas as pd

    from ..analysis.clustering import representatives
    from ..analysis.reduce import pca_columns

    n_rows = len(features)
    if not (has_viewer_links(features) and n_rows and len(emb) == n_rows and len(clusters) == n_rows
            and "cluster_label" in clusters.columns and pca_columns(emb)):
        return None
    params = run.read(A.STEP_PARAMS, step="05_cluster") if run.has(A.STEP_PARAMS, step="05_cluster") else {}
    n = int((params or {}).get("n_representatives", 3) or 3)
    labels = clusters["cluster_label"].to_numpy()
    names = clusters["cluster"].astype(str).to_numpy() if "cluster" in clusters.columns else labels.astype(str)
    reps = representatives(emb[pca_columns(emb)].to_numpy(), labels, n=n)
    cols = [c for c in (L.BBOX_COLUMN, L.NAME_COLUMN, VIEWER_LINK_COLUMN) if c in features.columns]
    parts = [features.iloc[rows][cols].assign(cluster=str(names[rows[0]]), rank=range(1, len(rows) + 1))
             for rows in reps.values() if rows]
    if not parts:
        return None
    out = pd.concat(parts, ignore_index=True)
    return out[["cluster", "rank", *cols]]


def _cluster_table(frame: "pd.DataFrame") -> "pd.DataFrame":
    """Synapses and the median of every size descriptor per cluster, in readable units."""
    import pandas as pd

    from ..cubes.descriptors import SIZE_COLUMNS, readable_table

    if "cluster" not in frame.columns:
        return pd.DataFrame()
    size_cols = [c for c in SIZE_COLUMNS if c in frame.columns]
    table = frame.groupby("cluster", observed=True).agg(
        synapses=("cluster", "size"), **{c: (c, "median") for c in size_cols}
    ).reset_index()
    readable = readable_table(table)
    return readable.rename(columns={c: f"median {c}" for c in readable.columns if c not in ("cluster", "synapses")})


def _warnings(extraction: str, skipped: "pd.DataFrame", features: "pd.DataFrame", quality: dict) -> list[str]:
    """What a reader must know before trusting the clusters, in plain words."""
    from ..cubes.prepost import polarity_known

    out = []
    if "RANDOM weights" in extraction and quality.get("feature_set", "deep") != "descriptors":
        out.append("The network used RANDOM weights (no checkpoint): deep features describe texture and pose, "
                   "not a trained representation.")
    brightness = quality.get("brightness") or {}
    if brightness.get("warn"):
        out.append(f"The clusters mostly follow brightness, not shape: {brightness.get('message', '')}")
    if len(features) and "pre_side" in features.columns and not polarity_known(features):
        out.append("Pre- and postsynaptic sides could not be decided from the data (no vesicle label or ambiguous): "
                   "partners are called side 1 and side 2.")
    elif "ambiguous" in features.columns and features["ambiguous"].any():
        out.append(f"{int(features['ambiguous'].sum())} synapses have an ambiguous pre/post decision.")
    if len(skipped):
        out.append(f"{len(skipped)} synapses were skipped (listed below with their reasons).")
    return out
