"""A real browser (Debian's headless Chromium, driven by Playwright) uses the page of `rnnlab serve`.

It starts a server on a free loopback port, types a prompt, picks a model, presses Send and sees a
completion stream in, then asks for the surprise colouring. The screenshot goes to tmp_path, or to
$RNNLAB_SCREENSHOT (how docs/serve.png in the README was made). .ci/run installs Chromium.
"""

import os
import shutil
from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_a_browser_completes_text_and_shows_surprise(server, tmp_path):
    screenshot = Path(os.environ.get("RNNLAB_SCREENSHOT", tmp_path / "serve.png"))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS,
                                    chromium_sandbox=False)
        page = browser.new_page(viewport={"width": 1000, "height": 640})
        page.goto(server)
        page.wait_for_function("document.querySelectorAll('#model option').length == 2")
        page.select_option("#model", "second")
        page.fill("#prompt", "ROMEO:\nWhat light")
        page.fill("#length", "120")
        page.click("#send")
        page.wait_for_function("document.getElementById('completion').textContent.length >= 120", timeout=30000)
        assert page.inner_text("#status") == "done"
        assert page.inner_text("#output").startswith("ROMEO:\nWhat light")
        colour = page.eval_on_selector("#completion", "e => getComputedStyle(e).color")
        assert colour == "rgb(11, 99, 197)"  # the completion is drawn in blue, apart from the prompt
        page.screenshot(path=str(screenshot))
        page.click("#surprise")
        page.wait_for_function("document.getElementById('status').textContent.includes('bits per character')")
        assert page.eval_on_selector_all("#output span[title$='bits']", "spans => spans.length") > 5
        browser.close()
    assert screenshot.stat().st_size > 10_000
