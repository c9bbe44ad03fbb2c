"""The escape hatch: a FHIRPath expression over the patient's data, for what no block says."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cds_service.engine.blocks.base import Block, Node, Scope
from cds_service.engine.fhirpath import FhirPath
from cds_service.engine.trace import Outcome, Truth

if TYPE_CHECKING:
    from cds_service.engine.context import RuleContext

@dataclass(frozen=True, slots=True)
class FhirPathCondition:
    """FHIRPath over the patient's data as a Bundle, for what no block expresses."""

    expression: FhirPath

    def evaluate(self, ctx: RuleContext) -> Outcome:
        verdict = self.expression.test(ctx.bundle(), ctx.variables)
        if verdict is None:
            return Outcome(Truth.UNKNOWN, None, "FHIRPath error", missing=["FHIRPath could not be evaluated"])
        return Outcome(Truth.of(verdict), verdict, f"FHIRPath {self.expression.expression!r} → {verdict}")

    def describe(self) -> str:
        return f"FHIRPath {self.expression.expression!r}"


def _fhirpath(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    expression = scope.fhirpath(body.get("expression"), (*path, "expression"))
    return FhirPathCondition(expression) if expression else None



FHIRPATH = Block(
    "fhirpath",
    FhirPathCondition,
    _fhirpath,
    {"required": ["expression"], "properties": {"expression": {"type": "string", "minLength": 1}}},
    usage="fhirpath: {expression}",
    true_when="a FHIRPath expression over the patient's data (a Bundle) is true",
    value="true/false",
)
