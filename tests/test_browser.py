"""The browser harness itself: it sees rendered SVG and reports console errors and failed requests."""

from __future__ import annotations

from pathlib import Path

from browser import open_page


def test_browser_sees_rendered_svg_and_no_errors_on_a_clean_page(browser: object, tmp_path: Path) -> None:
    page = tmp_path / "clean.html"
    page.write_text("<!doctype html><title>t</title><svg width='20' height='20'><rect width='5' height='5'/></svg>")
    seen = open_page(browser, page, screenshot=tmp_path / "clean.png")
    assert seen.errors == []
    assert seen.count("svg rect") == 1
    assert (tmp_path / "clean.png").stat().st_size > 0


def test_browser_reports_console_errors_uncaught_exceptions_and_failed_requests(browser: object,
                                                                                tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><title>t</title><script>console.error('boom')</script>"
                    "<script>throw new Error('kaput')</script><img src='missing.png'>")
    seen = open_page(browser, page)
    joined = "\n".join(seen.errors)
    assert "boom" in joined
    assert "kaput" in joined
    assert "missing.png" in joined
