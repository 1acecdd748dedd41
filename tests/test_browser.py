"""The exported reports in a real headless Chromium (Debian ``chromium``, driven by playwright).

For every HTML page of a CI-sized pipeline run: each plotly figure of the executed notebook is
drawn by plotly.js, the page logs no JavaScript error, nothing is fetched from the network, and
a full-page screenshot is kept under ``<run>/screenshots/`` for a human to look at.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.notebooks]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PLOTLY_MIME = "application/vnd.plotly.v1+json"
#: a figure's ``text/html`` output calls this once; plotly.js itself only defines it.
NEWPLOT_CALL = re.compile(r"Plotly\.newPlot\(\s*[\"']")
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
MIN_SCREENSHOT_BYTES = 10_000
#: how long plotly.js may take to draw the figures of one page.
RENDER_TIMEOUT_MS = 15_000

#: plotly.js puts this over a 3-D/gl figure it could not draw (no error is logged).
NO_WEBGL = "WebGL is not supported"
#: in the page: figure containers in the source, and those plotly.js drew (its class, an svg
#: with a size, and no "no WebGL" notice in place of a 3-D scene).
COUNT_RENDERED_JS = """noWebgl => {
  const divs = Array.from(document.querySelectorAll('div.plotly-graph-div'));
  const drawn = divs.filter(d => d.classList.contains('js-plotly-plot') && d.querySelector('svg.main-svg')
                           && d.getBoundingClientRect().width > 0 && d.getBoundingClientRect().height > 0
                           && !d.textContent.includes(noWebgl));
  return {divs: divs.length, rendered: drawn.length,
          missing: divs.filter(d => !drawn.includes(d)).map(d => d.id)};
}"""


def notebook_figures(executed: Path) -> int:
    """Plotly figures in an executed notebook: outputs that carry the plotly mime bundle."""
    nb = nbformat.read(str(executed), as_version=4)
    return sum(
        1
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if PLOTLY_MIME in out.get("data", {})
    )


SUMMARY_PAGE = "presynapse_summary.html"


@dataclass
class PageReport:
    """What one page did in the browser."""

    figures_in_source: int = 0
    divs: int = 0
    rendered: int = 0
    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    network: list[str] = field(default_factory=list)
    screenshot: Path | None = None


def _browser_or_skip():
    """The playwright API if Debian's chromium is there; a missing browser skips locally, fails on CI."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found (install Debian's chromium: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide a browser: {reason}")
        pytest.skip(reason)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    return sync_api


def _console_text(msg) -> str:
    where = msg.location.get("url", "") if msg.location else ""
    return f"console.{msg.type}: {msg.text}" + (f" ({where})" if where else "")


def open_page(context, html: Path, screenshot: Path) -> PageReport:
    """Load ``html`` from file://, wait for plotly.js, collect errors and outside requests."""
    report = PageReport()
    source = html.read_text(encoding="utf-8")
    report.figures_in_source = len(NEWPLOT_CALL.findall(source))
    page = context.new_page()
    page.on("console", lambda msg: report.errors.append(_console_text(msg)) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: report.errors.append(f"pageerror: {exc}"))
    try:
        page.goto(html.resolve().as_uri(), wait_until="load")
        if report.figures_in_source:
            try:
                page.wait_for_function(
                    "n => Array.from(document.querySelectorAll('.js-plotly-plot')).filter(d => d.querySelector('svg.main-svg')).length >= n",
                    arg=report.figures_in_source,
                    timeout=RENDER_TIMEOUT_MS,
                )
            except Exception:  # counted below: the assertion says which figures are missing
                pass
        counts = page.evaluate(COUNT_RENDERED_JS, NO_WEBGL)
        report.divs, report.rendered, report.missing = counts["divs"], counts["rendered"], counts["missing"]
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
        report.screenshot = screenshot
    finally:
        page.close()
    return report


@pytest.fixture(scope="module")
def browser_reports(request) -> dict[str, tuple[int, PageReport]]:
    """Every exported page of the pipeline run, opened once: notebook -> (figures in notebook, report)."""
    sync_api = _browser_or_skip()  # before the (slow) pipeline run
    result, _ = request.getfixturevalue("pipeline_run")
    screenshots = result.run.path / "screenshots"
    if screenshots.exists():
        shutil.rmtree(screenshots)
    out: dict[str, tuple[int, PageReport]] = {}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
            blocked: list[str] = []

            def guard(route):
                url = route.request.url
                if url.startswith(LOCAL_SCHEMES):
                    route.continue_()
                else:
                    blocked.append(url)
                    route.abort()

            context.route("**/*", guard)
            # requests that bypass routing (e.g. websockets) are recorded too
            context.on("request", lambda req: None if req.url.startswith(LOCAL_SCHEMES) else blocked.append(req.url))
            context.on("websocket", lambda ws: blocked.append(ws.url))
            for step in result.steps:
                assert step.html is not None and step.html.exists(), f"{step.notebook}: no exported HTML"
                blocked.clear()
                report = open_page(context, step.html, screenshots / f"{step.notebook}.png")
                report.network = sorted(set(blocked))
                out[step.notebook] = (notebook_figures(step.executed), report)
            # the presynapse summary (07) is written by the package, not exported from a notebook:
            # every figure its source creates must be drawn
            summary = result.run.html_dir / SUMMARY_PAGE
            blocked.clear()
            report = open_page(context, summary, screenshots / f"{summary.stem}.png")
            report.network = sorted(set(blocked))
            out[summary.stem] = (report.figures_in_source, report)
            context.close()
        finally:
            browser.close()
    return out


def test_every_page_was_opened(browser_reports, pipeline_run):
    result, _ = pipeline_run
    assert [s.notebook for s in result.steps] and list(browser_reports) == [*(s.notebook for s in result.steps), "presynapse_summary"]
    assert browser_reports["presynapse_summary"][0] > 0, "the presynapse summary shows figures"


def test_every_figure_rendered(browser_reports):
    # notebook outputs -> newPlot calls in the HTML -> figure divs in the page -> drawn by plotly.js
    counts = {nb: {"notebook": n, "html": r.figures_in_source, "divs": r.divs, "rendered": r.rendered} for nb, (n, r) in browser_reports.items()}
    assert sum(c["notebook"] for c in counts.values()) > 0, f"the pipeline reports contain no plotly figure at all: {counts}"
    problems = {
        nb: {**c, "not drawn": browser_reports[nb][1].missing}
        for nb, c in counts.items()
        if not c["notebook"] == c["html"] == c["divs"] == c["rendered"]
    }
    assert not problems, f"figures missing or not rendered: {json.dumps(problems, indent=1)}"


def test_no_javascript_errors(browser_reports):
    errors = {nb: r.errors for nb, (_, r) in browser_reports.items() if r.errors}
    assert not errors, json.dumps(errors, indent=1)


def test_nothing_loaded_from_network(browser_reports):
    requests = {nb: r.network for nb, (_, r) in browser_reports.items() if r.network}
    assert not requests, f"pages tried to load from the network: {json.dumps(requests, indent=1)}"


def test_screenshots_saved(browser_reports, pipeline_run):
    result, _ = pipeline_run
    for nb, (_, report) in browser_reports.items():
        shot = result.run.path / "screenshots" / f"{nb}.png"
        assert report.screenshot == shot and shot.exists(), f"{nb}: no screenshot at {shot}"
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{shot} is not a PNG"
        assert shot.stat().st_size > MIN_SCREENSHOT_BYTES, f"{shot} is only {shot.stat().st_size} bytes"
