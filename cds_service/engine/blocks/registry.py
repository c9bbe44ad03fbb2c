"""The ONE table of building blocks: rule-file name → class, compile function, schema fragment, docs row.

The loader compiles through it (``logic.compile_condition``), the rule JSON Schema lists its blocks from
it (cds_service/engine/schema/rule.py) and the building-block table of docs/rules.md is checked against
it (tests/test_block_registry.py). Adding a block: its class, compile function and ``Block`` entry in the
module of its family, and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from cds_service.engine.blocks import exposure, expression, findings
from cds_service.engine.blocks.base import Block

BLOCKS: Mapping[str, Block] = MappingProxyType(
    {
        block.name: block
        for block in (
            findings.COUNT,
            findings.LATEST,
            findings.CHANGE,
            exposure.CUMULATIVE_DOSE,
            exposure.SESSION_RATE,
            exposure.INFUSION_DURATION,
            exposure.CONTINUOUS_EXPOSURE,
            exposure.NEW_COURSE,
            findings.NEW,
            exposure.DRAFT_ORDER,
            exposure.PLANNED_GAP,
            expression.FHIRPATH,
        )
    }
)


def docs_table() -> str:
    """The building-block table of docs/rules.md, one row per block, in registry order."""
    rows = ["| block | true when | value in the trace |", "|---|---|---|"]
    rows += [
        f"| `{b.usage.replace('|', chr(92) + '|')}` | {b.true_when} | {b.value} |" for b in BLOCKS.values()
    ]
    return "\n".join(rows)
