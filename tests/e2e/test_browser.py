"""A real browser (Debian's headless Chromium, driven by Playwright) uses the page of `rnnlab serve`.

It starts a server on a free loopback port, types a prompt, picks a model, presses Send and sees a
completion stream in, then asks for the surprise colouring. The screenshot goes to tmp_path, or to
$RNNLAB_SCREENSHOT (how docs/serve.png in the README was made). .ci/run installs Chromium.
"""

import os
import shutil
import time
from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def wait_until(page, expression: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript expression through page.evaluate (the page's Content-Security-Policy forbids
    eval, which wait_for_function needs)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        time.sleep(0.05)


def test_a_browser_completes_text_and_shows_surprise(server, tmp_path):
    screenshot = Path(os.environ.get("RNNLAB_SCREENSHOT", tmp_path / "serve.png"))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS,
                                    chromium_sandbox=False)
        page = browser.new_page(viewport={"width": 1000, "height": 640})
        page.goto(server)
        wait_until(page, "document.querySelectorAll('#model option').length == 2")
        page.select_option("#model", "second")
        page.fill("#prompt", "ROMEO:\nWhat light")
        page.fill("#length", "120")
        page.click("#send")
        wait_until(page, "document.getElementById('completion').textContent.length >= 120")
        assert page.inner_text("#status") == "done"
        assert page.inner_text("#output").startswith("ROMEO:\nWhat light")
        colour = page.eval_on_selector("#completion", "e => getComputedStyle(e).color")
        assert colour == "rgb(11, 99, 197)"  # the completion is drawn in blue, apart from the prompt
        page.screenshot(path=str(screenshot))
        page.click("#surprise")
        wait_until(page, "document.getElementById('status').textContent.includes('bits per character')")
        assert page.eval_on_selector_all("#output span[title$='bits']", "spans => spans.length") > 5
        browser.close()
    assert screenshot.stat().st_size > 10_000


XSS_NAME = '<img src=x onerror="window.__xss = 1">'


def test_a_hostile_model_name_is_shown_as_text_and_the_page_runs_under_its_policy(trained_checkpoint):
    from conftest import running_server

    from rnnlab.serve.engine import LoadedModel

    loaded = LoadedModel.load(XSS_NAME, trained_checkpoint)
    with running_server([loaded]) as url, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS, chromium_sandbox=False)
        page = browser.new_page()
        violations = []
        page.on("console", lambda message: violations.append(message.text)
                if "Content Security Policy" in message.text else None)
        response = page.goto(url)
        assert "script-src 'sha256-" in response.headers["content-security-policy"]
        wait_until(page, "document.querySelectorAll('#model option').length == 1")
        assert page.eval_on_selector("#model option", "o => o.textContent") == XSS_NAME
        assert page.evaluate("document.querySelectorAll('#model img').length") == 0
        assert page.evaluate("window.__xss") is None  # the name never ran as markup
        assert not violations, violations  # the page's own script is the one the policy lets run
        browser.close()
