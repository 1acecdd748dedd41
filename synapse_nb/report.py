"""Export executed notebooks to self-contained HTML reports (SPEC 10)."""
from __future__ import annotations

import html
import logging
import warnings
from pathlib import Path

import nbformat

from . import atomic

logger = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).parent / "templates"
TEMPLATE_NAME = "synapse_offline"
DROPPED_OUTPUT_WARNING = "not able to be represented"


class ReportError(RuntimeError):
    """An export would lose content (an output nbconvert cannot show)."""


def export_html(notebook: str | Path, html_path: str | Path, strict: bool = True) -> Path:
    """Write ``notebook`` as HTML without code cells that opens offline.

    With ``strict`` an output that nbconvert would silently drop (e.g. a plotly figure with
    only its mime bundle) is an error instead of a report with a hole in it.
    """
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
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
            pages = sorted((sweep_dir / name / "html").glob("*.html"))
            links = " · ".join(f'<a href="{html.escape(name)}/html/{html.escape(p.name)}">{html.escape(p.stem)}</a>' for p in pages)
            extra = ""
            presyn = sweep_dir / name / "html" / "presynapse_summary.html"
            if presyn.is_file():
                extra = f' · <a href="{html.escape(name)}/html/presynapse_summary.html">presynapse summary</a>'
            error = f'<br/><span class="failed">{_cell(row.get("error"))}</span>' if row["status"] != "ok" else ""
            items.append(f"<li><code>{html.escape(name)}</code> ({_cell(row['status'])}): {links or 'no report'}{extra}{error}</li>")
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
    return atomic.write_text(sweep_dir / "index.html", page)
