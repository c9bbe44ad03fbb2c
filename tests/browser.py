"""A real headless browser for tests of the pages and HTML reports we produce.

Debian's Chromium (scripts/ensure-chromium.sh installs it; `make services` runs that) driven by Python
playwright with `executable_path`, so no browser is downloaded. `open_page` loads a file or URL and
returns what a person would see and what the console said, so a test can assert that every chart
rendered and nothing failed. No silent skip: a missing browser fails the test with the fix.

Use in a test::

    from browser import open_page
    def test_report(browser, tmp_path):
        seen = open_page(browser, tmp_path / "report.html", screenshot=tmp_path / "report.png")
        assert seen.errors == []
        assert seen.count("svg") >= 3
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("KBLADDER_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium keeps dialling hosts this machine cannot reach.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


@dataclass
class PageSeen:
    """What loading a page produced: console errors, uncaught exceptions, failed requests, and the page."""

    page: object  # playwright.sync_api.Page, still open until the test ends
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def count(self, selector: str) -> int:
        """How many elements match a CSS selector (e.g. rendered charts)."""
        return int(self.page.locator(selector).count())  # type: ignore[attr-defined]

    def text(self) -> str:
        return str(self.page.inner_text("body"))  # type: ignore[attr-defined]


def _ensure_chromium() -> None:
    if CHROMIUM.exists():
        return
    proc = subprocess.run([str(REPO / "scripts" / "ensure-chromium.sh")], capture_output=True, text=True,
                          timeout=900, check=False)
    if proc.returncode != 0 or not CHROMIUM.exists():
        pytest.fail(f"no headless Chromium (scripts/ensure-chromium.sh):\n{proc.stderr[-2000:]}", pytrace=False)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """One headless Chromium for the test session (starting one costs about a second)."""
    _ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def open_page(browser: object, target: str | Path, *, screenshot: Path | None = None,
              width: int = 1280, height: int = 900, timeout_ms: int = 30_000) -> PageSeen:
    """Load a URL or local file in a fresh page; collect console errors, page errors and failed requests."""
    page = browser.new_page(viewport={"width": width, "height": height})  # type: ignore[attr-defined]
    seen = PageSeen(page)
    page.on("console", lambda m: (seen.errors if m.type == "error" else seen.warnings).append(m.text)
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda exc: seen.errors.append(f"uncaught: {exc}"))
    page.on("requestfailed", lambda req: seen.errors.append(f"request failed: {req.url}"))
    url = target.resolve().as_uri() if isinstance(target, Path) else target
    page.goto(url, wait_until="load", timeout=timeout_ms)
    if screenshot is not None:
        page.screenshot(path=str(screenshot), full_page=True)
    return seen
