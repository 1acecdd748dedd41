"""Export executed notebooks to self-contained HTML reports (SPEC 10)."""
from __future__ import annotations

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
