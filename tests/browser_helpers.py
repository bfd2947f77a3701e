"""Shared by the browser tests: Debian's chromium under Playwright, and where screenshots go."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# reports/ is what scripts/test.sh uploads to S3 and MLflow after the suite
SCREENSHOTS = Path(__file__).resolve().parents[1] / "reports" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """Debian's chromium; Playwright's own browser download cannot work here."""
    found = shutil.which("chromium")
    if not found:
        raise RuntimeError(
            "chromium is not installed: `apt-get install -y chromium` (scripts/test.sh does it)"
        )
    return found


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless chromium browser driven by Playwright, closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page PNG under reports/screenshots/ (name made file-safe)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / (re.sub(r"[^A-Za-z0-9_.-]+", "-", name) + ".png")
    page.screenshot(path=str(path), full_page=True)
    return path
