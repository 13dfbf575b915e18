"""`make report` offline in a real browser (issue 23 item 6): the HTML report's formulas are typeset by the bundled
MathJax with the network off, and the page asks the web for nothing.

Headless Debian Chromium (``.ci/browser-setup.sh``) through Playwright, as tests/test_browser.py; the browser context
is offline and every request that is not a ``file://`` URL is recorded and refused, so a page that still needed a CDN
fails here twice: its request is listed, and its TeX stays raw.
"""
import subprocess
import sys
from pathlib import Path

import pytest
from test_report import SCRIPT, _fake_suite

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync"]


def test_the_report_typesets_its_formulas_offline(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent: run .ci/browser-setup.sh (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    suite = _fake_suite(tmp_path / "runs")
    out = tmp_path / "report"
    res = subprocess.run([sys.executable, str(SCRIPT), "--suite", str(suite), "--out", str(out), "--no-results"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    remote = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(offline=True)

            def refuse(route):
                remote.append(route.request.url)
                route.abort()

            context.route(lambda url: not url.startswith("file://"), refuse)
            page = context.new_page()
            page.goto((out / "01_tiny.html").as_uri())
            page.wait_for_function("() => window.MathJax && window.MathJax.Hub", timeout=60_000)
            typeset = page.evaluate("""() => new Promise(done => MathJax.Hub.Queue(() =>
                done(document.querySelectorAll('.MathJax, .MathJax_CHTML, .MathJax_SVG, mjx-container').length)))""")
            text = page.inner_text("body")
        finally:
            browser.close()
    assert remote == [], f"the report asked the web for {remote}"
    assert typeset >= 1, "no formula typeset by the bundled MathJax"
    assert "$y = x^2" not in text and "hello from the kernel 42" in text
