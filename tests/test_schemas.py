"""The rule schema is generated from the block registry and hook table; schemas ship as package data."""

from __future__ import annotations

import json
from pathlib import Path

from cds_service.engine.blocks.registry import BLOCKS
from cds_service.engine.schema import NAMES, load_schema, render, schema_text
from cds_service.engine.schema.rule import ISO_DURATION, rule_schema

REPO = Path(__file__).resolve().parents[1]


def test_rule_schema_file_is_what_the_registry_generates() -> None:
    assert schema_text("rule") == render(rule_schema()), "out of date: run `make schema`"


def test_editor_copies_in_rules_schema_match_the_package() -> None:
    for name in NAMES:
        copy = REPO / "rules" / "schema" / f"{name}.schema.json"
        assert copy.read_text(encoding="utf-8") == schema_text(name), f"{copy}: run `make schema`"


def test_yaml_language_server_lines_resolve_to_the_editor_copies() -> None:
    marker = "# yaml-language-server: $schema="
    for path in sorted((REPO / "rules").glob("*.yaml")):  # every rule file names its schema
        assert path.read_text(encoding="utf-8").startswith(marker + "schema/rule.schema.json"), path
    for path in sorted((REPO / "rules").rglob("*.y*ml")):
        first = path.read_text(encoding="utf-8").partition("\n")[0]
        if first.startswith(marker):
            target = (path.parent / first.removeprefix(marker)).resolve()
            assert target.parent == REPO / "rules" / "schema" and target.is_file(), path


def test_shared_pieces_are_defined_once() -> None:
    text = schema_text("rule")
    assert text.count(json.dumps(ISO_DURATION)[1:-1]) == 1
    assert text.count('"a window named under windows"') == 1
    assert text.count("a grade such as trace") == 1
    defs = load_schema("rule")["$defs"]
    assert {"duration", "window", "threshold", "value_test", "where", "condition"} <= set(defs)


def test_condition_schema_lists_exactly_the_registry_blocks() -> None:
    branches = load_schema("rule")["$defs"]["condition"]["oneOf"]
    keys = [b["required"][0] for b in branches if b.get("type") == "object"]
    assert keys == ["all", "any", "not", *BLOCKS]
