"""JSON Schemas of rule, test, value-set, code-system and site files, shipped as package data.

The loader validates with these files (read through ``importlib.resources``, so an installed wheel needs
no source checkout). ``rule.schema.json`` is generated from :mod:`.rule`; the others are written by hand.
``rules/schema/`` holds an identical copy for editors (the ``# yaml-language-server: $schema=...`` line
of rule files points there); ``make schema`` refreshes both and tests/test_schemas.py checks they agree.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

NAMES = ("rule", "test", "valueset", "codesystem", "site")


def schema_text(name: str) -> str:
    """The text of ``<name>.schema.json`` as shipped in the package."""
    return (resources.files(__name__) / f"{name}.schema.json").read_text(encoding="utf-8")


@lru_cache(maxsize=8)
def load_schema(name: str) -> dict[str, Any]:
    """The schema called *name* (one of :data:`NAMES`), parsed once."""
    return json.loads(schema_text(name))


def render(schema: dict[str, Any]) -> str:
    """How schema files are written: 2-space JSON, non-ASCII kept, final newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
