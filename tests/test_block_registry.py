"""One block registry: each block's class, compile function, schema and docs row live together."""

from __future__ import annotations

import inspect
from pathlib import Path

from cds_service.engine.blocks.registry import BLOCKS, docs_table

REPO = Path(__file__).resolve().parents[1]


def test_each_block_keeps_class_and_compile_function_in_one_module() -> None:
    assert len(BLOCKS) == 12
    for name, block in BLOCKS.items():
        assert block.name == name
        assert inspect.getmodule(block.node) is inspect.getmodule(block.compile), name
        assert block.usage.startswith(f"{name}: "), name
        assert block.true_when and block.value, name


def test_docs_building_block_table_is_the_registry() -> None:
    text = (REPO / "docs" / "rules.md").read_text(encoding="utf-8")
    assert docs_table() in text, "docs/rules.md building-block table differs from the registry"
