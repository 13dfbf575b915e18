"""JupyterLab in headless Chromium: open the activation explorer, run all cells, move the σ slider,
and check that a displayed statistic changes (the widgets work in a real front end, not only headless).

Needs Debian's /usr/bin/chromium (``.ci/browser-setup.sh`` installs it; Playwright's own browser download does not
work on these machines). The notebook is copied to a temporary folder first, so JupyterLab never writes outputs
into notebooks/. A screenshot is saved under runs/browser/ (ignored by git).
"""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "02_activation_explorer.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync"]
SCREENSHOT = ROOT / "runs" / "browser" / "activation_explorer.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 with a random port and token, serving a copy of the notebook."""
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent: run .ci/browser-setup.sh (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel's own inline backend
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.3)
        yield f"{base}/lab/tree/{NOTEBOOK.name}?token={token}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started (its own session)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _run_all_cells(page, tries: int = 5) -> None:
    """Run menu > Run All Cells, retried until the kernel starts executing (right after the notebook opens
    the command can still be disabled)."""
    started = ".jp-InputPrompt:has-text('[1]'), .jp-InputPrompt:has-text('[*]')"
    for _ in range(tries):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        item = page.locator(".lm-Menu-item:not(.lm-mod-disabled) .lm-Menu-itemLabel", has_text="Run All Cells").first
        try:
            item.click(timeout=5_000)
            page.wait_for_selector(started, state="attached", timeout=10_000)
            return
        except Exception:  # playwright TimeoutError: menu item disabled or execution not started yet
            page.keyboard.press("Escape")
            page.wait_for_timeout(1_000)
    raise AssertionError("Run All Cells did not start the kernel")


def test_sigma_slider_updates_a_displayed_statistic(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(lab)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status=idle]", timeout=90_000)
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=30_000)
            _run_all_cells(page)
            # JupyterLab skips rendering cells outside the viewport: wait for "attached" and read textContent
            stat = page.locator(".dnlib-stats .dnlib-stat-linearity").first
            stat.wait_for(state="attached", timeout=120_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status=idle]", timeout=180_000)
            before = stat.text_content()
            slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text="σ")).first
            slider.scroll_into_view_if_needed()
            readout_before = slider.locator(".widget-readout").text_content()
            handle = slider.locator(".noUi-handle").first
            handle.focus()
            for _ in range(10):
                handle.press("ArrowRight")
            deadline = time.time() + 60
            while stat.text_content() == before and time.time() < deadline:
                page.wait_for_timeout(250)
            after = stat.text_content()
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status=idle]", timeout=120_000)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
            assert "sigma=1," in page.locator(".dnlib-stats code").first.text_content()  # 0.5 + 10 steps of 0.05
            assert slider.locator(".widget-readout").text_content() != readout_before
            assert after != before, f"linearity stayed {before} after moving σ"
            assert float(after) > float(before)  # a larger σ makes DN more linear
        finally:
            browser.close()
