"""Driving Debian's Chromium from tests with Playwright's Python API (nothing downloaded).

:func:`open_page` launches the browser found by :func:`tests.vis.test_report_browser.find_browser`
through ``executable_path`` and records every console error and uncaught page error, so a test
can assert that a page ran cleanly. Tests skip, with the reason printed, only where no Chromium
is installed (CI installs Debian's ``chromium``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.vis.test_report_browser import require_browser


@dataclass
class OpenPage:
    """A page opened in headless Chromium, with the errors it reported."""

    page: Any
    errors: list[str] = field(default_factory=list)


@contextlib.contextmanager
def open_page(path: Path, ready_selector: str = "body[data-ready='1']", timeout_ms: int = 60_000) -> Iterator[OpenPage]:
    """Opens ``path`` from ``file://`` and waits for ``ready_selector``."""
    browser_path = require_browser()
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is in the test extras: pip install -e '.[test]'")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=browser_path, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            opened = OpenPage(page)
            page.on("console", lambda message: opened.errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: opened.errors.append(str(error)))
            page.on("requestfailed", lambda request: opened.errors.append(f"request failed: {request.url}"))
            page.goto(path.resolve().as_uri())
            page.wait_for_selector(ready_selector, state="attached", timeout=timeout_ms)
            yield opened
        finally:
            browser.close()


def canvas_pixels(page: Any, selector: str, index: int = 0) -> str:
    """The PNG data URL of a canvas: what it shows now."""
    return page.locator(selector).nth(index).evaluate("c => c.toDataURL()")
