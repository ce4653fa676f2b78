"""A real browser (Debian's headless Chromium, driven by Playwright) uses the page of `rnnlab serve`.

It starts a server on a free loopback port, types a prompt, picks a model, presses Send and sees a
completion stream in, then asks for the surprise colouring. The screenshot goes to tmp_path, or to
$RNNLAB_SCREENSHOT. .ci/run installs Chromium.
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


def test_the_page_suggests_while_typing_tab_accepts_and_compare_shows_every_model(server, tmp_path):
    """The blog's text box: a grey suggestion appears as one types (debounced), Tab takes it into the
    text, and compare mode writes one column per loaded model. Screenshots, light and dark, go to
    $RNNLAB_SCREENSHOTS (how docs/page-light.png and docs/page-dark.png were made) or tmp_path."""
    folder = Path(os.environ.get("RNNLAB_SCREENSHOTS", tmp_path))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS, chromium_sandbox=False)
        for scheme in ("light", "dark"):
            page = browser.new_page(viewport={"width": 1000, "height": 760}, color_scheme=scheme)
            page.goto(server)
            wait_until(page, "document.querySelectorAll('#model option').length == 2")
            cards = page.inner_text("#cards")
            assert page.locator(".card").count() == 2 and "trained on /" not in cards and "bits/char" in cards
            page.fill("#prompt", "")
            page.click("#prompt")
            page.keyboard.type("ROMEO:\nWhat ligh", delay=20)
            wait_until(page, "document.getElementById('ghost').textContent.length > 0")
            ghost = page.inner_text("#ghost")
            page.keyboard.press("Tab")
            assert page.input_value("#prompt") == "ROMEO:\nWhat ligh" + ghost  # Tab accepted the suggestion
            page.check("#compare")
            page.fill("#length", "60")
            page.focus("#prompt")
            page.keyboard.press("Control+Enter")  # sends
            wait_until(page, "document.getElementById('status').textContent == 'done'")
            columns = page.locator("#output .column")
            assert columns.count() == 2 and [columns.nth(i).locator("h2").inner_text() for i in range(2)] == [
                "shakespeare", "second"]
            assert all(len(columns.nth(i).locator(".completion").inner_text()) >= 30 for i in range(2))
            background = page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert (background == "rgb(22, 24, 28)") == (scheme == "dark")  # dark mode follows the system
            page.screenshot(path=str(folder / f"page-{scheme}.png"))
            page.uncheck("#compare")
            page.check("#show-bits")
            page.click("#surprise")
            wait_until(page, "document.getElementById('status').textContent.includes('bits per character')")
            assert page.evaluate("document.getElementById('output').classList.contains('bits')")
            assert page.evaluate("getComputedStyle(document.querySelector('#output .scored[data-bits]'), "
                                 "'::after').content").strip('"') != "none"  # the bits are written, no hover
            page.close()
        browser.close()
    assert (folder / "page-light.png").stat().st_size > 10_000 and (folder / "page-dark.png").stat().st_size > 10_000


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
