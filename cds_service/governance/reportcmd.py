"""The edge of ``kbladder report``: settings → store (exactly as ``kbladder serve`` picks it) → rows → file."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from cds_service.config import ConfigError, Settings
from cds_service.store import Store

from .report import build_report, render_html, render_json, render_text

#: Above this many decision rows a progress bar shows on stderr.
PROGRESS_FROM = 5000


def parse_when(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 date (midnight UTC) or instant; a clear usage error otherwise."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("expected an ISO 8601 date or instant such as 2026-05-01", param_hint=option) \
            from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def run_report(*, since: str | None, until: str | None, rule_id: str | None, fmt: str, out: Path | None,
               database_url: str | None, config_file: Path | None) -> None:
    start, end = parse_when(since, "--since"), parse_when(until, "--until")
    try:
        settings = Settings.load(config=config_file, database_url=database_url)
    except ConfigError as exc:
        click.echo(f"kbladder report: {exc}", err=True)
        sys.exit(2)
    try:
        store = Store(settings.database_url)
    except (SQLAlchemyError, ValueError) as exc:
        click.echo(f"kbladder report: cannot open the store: {type(exc).__name__}", err=True)
        sys.exit(2)
    try:
        total = store.count_decisions(since=start, until=end, rule_id=rule_id)
        rows = store.decisions(since=start, until=end, rule_id=rule_id)
        feedback = store.feedback_rows(since=start)
        if total >= PROGRESS_FROM:
            with click.progressbar(length=total, label=f"reading {total} decisions", file=sys.stderr) as bar:
                report = build_report(rows, feedback, since=start, until=end, rule=rule_id, on_row=bar.update)
        else:
            report = build_report(rows, feedback, since=start, until=end, rule=rule_id)
    except SQLAlchemyError as exc:
        click.echo(f"kbladder report: store query failed: {type(exc).__name__}", err=True)
        sys.exit(2)
    finally:
        store.dispose()
    text = {"text": render_text, "json": render_json, "html": render_html}[fmt](report)
    if out is None:
        click.echo(text)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"report written to {out} ({report.rows} decisions, {report.calls} calls)", err=True)
