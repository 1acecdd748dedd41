"""The control panel as a web page: Voila serves ``00_control_panel`` on a free local port and a
headless Debian Chromium (playwright) uses it like a person would.

Requests leaving the machine are blocked (the page must work offline). The page must show the panel, a change of the segmentation type must change the preview image
(compared pixel by pixel in the page), a folder that does not exist must give a message next
to its field and no traceback, and screenshots are kept for a human to look at.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from .conftest import PROJECT_ROOT
from .test_browser import CHROMIUM, CHROMIUM_ARGS, _browser_or_skip

pytestmark = [pytest.mark.browser]

NOTEBOOK = "notebooks/00_control_panel.ipynb"
SERVER_START_S = 60
PANEL_TIMEOUT_MS = 120_000
CHANGE_TIMEOUT_MS = 30_000
MIN_SCREENSHOT_BYTES = 10_000
#: pixels of an <img> as a data URL (the Image widget's src is a fresh blob URL on every update)
IMAGE_PIXELS_JS = """sel => {
  const img = document.querySelector(sel);
  if (!img || !img.complete || !img.naturalWidth) return null;
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  c.getContext('2d').drawImage(img, 0, 0);
  return c.toDataURL();
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def voila_command(port: int) -> list[str]:
    """The README's command, on a given port and without opening a browser."""
    return [
        sys.executable, "-m", "voila", NOTEBOOK, "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
        "--Voila.root_dir=.", "--VoilaConfiguration.file_allowlist=['.*\\.html']", "--VoilaExecutor.timeout=180",
    ]


def stop_server(proc: subprocess.Popen) -> None:
    """Stop voila and every kernel it started."""
    import psutil

    family: list = []  # voila may already be gone
    with contextlib.suppress(psutil.Error):
        family = psutil.Process(proc.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    for child in family:
        with contextlib.suppress(psutil.Error):
            child.kill()


@pytest.fixture()
def voila_url(tiny_params, tmp_path):
    """Voila serving the panel, started on the tiny demo through $SYNAPSE_NB_PARAMS."""
    pytest.importorskip("voila", reason="voila is not installed (pip install voila)")
    _browser_or_skip()
    params = tmp_path / "start.yaml"
    params.write_text(yaml.safe_dump(tiny_params))
    port = free_port()
    env = {**os.environ, "SYNAPSE_NB_PARAMS": str(params), "SYNAPSE_NB_RUNS": str(tmp_path / "runs")}
    log = open(tmp_path / "voila.log", "w")
    proc = subprocess.Popen(voila_command(port), cwd=str(PROJECT_ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:  # a plain connection: a GET of the page would start a kernel for nothing
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"voila did not start: {(tmp_path / 'voila.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield url
    finally:
        stop_server(proc)
        log.close()


def pixels(page, selector: str) -> str | None:
    return page.evaluate(IMAGE_PIXELS_JS, selector)


def test_panel_in_a_real_browser(voila_url, tmp_path):
    sync_api = _browser_or_skip()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    outside: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, "--headless"], headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})

            def local_only(route):  # the page must work offline
                if route.request.url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            context.route("**/*", local_only)
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(voila_url, timeout=PANEL_TIMEOUT_MS)
            page.wait_for_selector(".snb-panel", timeout=PANEL_TIMEOUT_MS)
            assert "all parameters valid" in page.inner_text(".snb-form-status")

            # the preview of the first synapse
            page.get_by_role("tab", name="Preview").click()
            page.wait_for_function(f"() => ({IMAGE_PIXELS_JS})('img.snb-preview-z') !== null", timeout=CHANGE_TIMEOUT_MS)
            before = pixels(page, "img.snb-preview-z")
            assert "type 10: closest cleft + presynaptic segment" in page.inner_text(".snb-preview")
            page.screenshot(path=str(shots / "preview_type10.png"), full_page=True)

            # another segmentation type in the form changes the image the network would see
            page.get_by_role("tab", name="Parameters").click()
            page.get_by_text("synapse cubes", exact=True).click()
            page.locator(".snb-field-segmentation_type select").select_option(label="1: presynaptic segment")
            page.get_by_role("tab", name="Preview").click()
            page.wait_for_function(
                f"before => {{ const now = ({IMAGE_PIXELS_JS})('img.snb-preview-z'); return now !== null && now !== before; }}",
                arg=before, timeout=CHANGE_TIMEOUT_MS)
            assert "type 1: presynaptic segment" in page.inner_text(".snb-preview")
            page.screenshot(path=str(shots / "preview_type1.png"), full_page=True)

            # a folder that does not exist: a message next to the field and in the preview, no traceback
            page.get_by_role("tab", name="Parameters").click()
            page.get_by_text("data", exact=True).click()  # one accordion section is open at a time
            page.locator(".snb-field-raw_dir input").fill(str(tmp_path / "no_such_folder"))
            page.wait_for_function("() => document.querySelector('.snb-msg-raw_dir').innerText.includes('folder not found')",
                                   timeout=CHANGE_TIMEOUT_MS)
            page.screenshot(path=str(shots / "bad_path.png"), full_page=True)
            page.get_by_role("tab", name="Preview").click()
            page.wait_for_function("() => document.querySelector('.snb-preview-message').innerText.includes('cannot open the dataset')",
                                   timeout=CHANGE_TIMEOUT_MS)
            assert "Traceback" not in page.inner_text("body")
            context.close()
        finally:
            browser.close()
    assert not errors, errors
    # Voila's page asks a CDN for Font Awesome; blocked here, and the panel works without it
    assert all("fontawesome" in u for u in outside), f"the page tried to load from outside: {sorted(set(outside))}"
    for name in ("preview_type10.png", "preview_type1.png", "bad_path.png"):
        shot = shots / name
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > MIN_SCREENSHOT_BYTES, shot
