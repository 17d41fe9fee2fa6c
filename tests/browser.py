"""Headless Chromium for the tests: Debian's /usr/bin/chromium driven by Playwright's Python
package, never a browser download. Used by test_browser.py (the chat page) and test_report.py
(the report card and a lab page)."""
import os
from contextlib import contextmanager

import pytest

CHROMIUM = "/usr/bin/chromium"
# as root, without a sandbox; no background traffic (this machine's network is closed)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def browser_page():
    """A fresh headless Chromium page -> (page, problems): every console error and uncaught
    exception of the page lands in `problems`. A missing browser fails the test, never skips it:
    it must not pass unnoticed."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Playwright Python package is missing: pip install playwright "
                    "(it is in the test extra: pip install -e '.[test]'); no browser download is needed",
                    pytrace=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"Chromium is missing at {CHROMIUM}: apt-get install chromium (Debian's package)",
                    pytrace=False)
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.set_default_timeout(15_000)
            page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            yield page, problems
        finally:
            browser.close()
