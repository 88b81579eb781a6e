"""Headless Chromium for the browser tests: Debian's ``chromium``, driven by Playwright.

Playwright's own browser download does not work everywhere, so the tests use the
system Chromium (``CHROMIUM`` names another binary). A missing browser fails the
test with the way to install it; it is never a silent skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.support.paths import ROOT

CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# artifacts/screenshots/ in the checkout (git ignores it), or POSTROOM_SCREENSHOTS
SCREENSHOTS = Path(os.environ.get("POSTROOM_SCREENSHOTS")
                   or ROOT / "artifacts" / "screenshots")


def chromium_path() -> str:
    """The Chromium binary to drive, or a failed test saying how to get one."""
    named = os.environ.get("CHROMIUM")
    found = shutil.which(named) if named else (shutil.which("chromium")
                                              or shutil.which("chromium-browser"))
    if not found:
        pytest.fail(f"Chromium not found ({named or 'chromium on PATH'}): install Debian's "
                    "chromium package (`apt-get install chromium`; `make test` does it when "
                    "run as root) or set CHROMIUM to a Chromium binary", pytrace=False)
    return found


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium for the length of the block."""
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Page, name: str) -> Path:
    """Save the whole page as ``<name>.png`` under :data:`SCREENSHOTS`, for people to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
