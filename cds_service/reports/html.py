"""Render a report page: a Jinja2 template of the calling package, framed by the shared ``base.html``."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import ChoiceLoader, Environment, PackageLoader, StrictUndefined, select_autoescape


@lru_cache(maxsize=16)
def _environment(package: str) -> Environment:
    loader = ChoiceLoader([PackageLoader(package, "templates"), PackageLoader("cds_service.reports", "templates")])
    env = Environment(loader=loader, autoescape=select_autoescape(["html"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = number
    return env


def number(value: Any, digits: int = 1) -> str:
    """Thousands separators for counts, ``digits`` decimals for fractions, an em dash for no value."""
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def render(template: str, *, package: str, **context: Any) -> str:
    """The page ``template`` of ``package`` (its ``templates/`` folder) with ``context``; autoescaped."""
    return _environment(package).get_template(template).render(**context)
