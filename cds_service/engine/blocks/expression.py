"""The escape hatch: a FHIRPath expression over the patient's data, for what no block says."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cds_service.engine.blocks.base import Block, Node, Scope
from cds_service.engine.fhirpath import FhirPath
from cds_service.engine.trace import Outcome, Truth

if TYPE_CHECKING:
    from cds_service.engine.context import RuleContext

_READS_RECORD = re.compile(r"\b(entry|descendants|children|repeat)\b|%(resource|context|rootResource|bundle)\b")

@dataclass(frozen=True, slots=True)
class FhirPathCondition:
    """FHIRPath over the patient's data as a Bundle, for what no block expresses."""

    expression: FhirPath

    def evaluate(self, ctx: RuleContext) -> Outcome:
        verdict = self.expression.test(ctx.bundle(), ctx.variables)
        if verdict is None:
            return Outcome(Truth.UNKNOWN, None, "FHIRPath error", missing=["FHIRPath could not be evaluated"])
        detail = f"FHIRPath {self.expression.expression!r} → {verdict}"
        why = self.incomplete(ctx)
        if why:  # an expression over the record cannot be trusted either way when part of the record is missing
            return Outcome(Truth.UNKNOWN, verdict, detail + " on incomplete data", missing=why)
        return Outcome(Truth.of(verdict), verdict, detail)

    def incomplete(self, ctx: RuleContext) -> list[str]:
        """Why the record the expression reads may be incomplete ([] when it reads only %variables).

        A lexical look, not a parse: the root is the Bundle, so reading the record goes through ``entry``
        (or a walk such as ``descendants()``); named resource types narrow which gaps matter.
        """
        text = self.expression.expression
        unavailable = ctx.record.unavailable
        if not unavailable or not _READS_RECORD.search(text):
            return []
        named = [rtype for rtype in unavailable if re.search(rf"\b{re.escape(rtype)}\b", text)]
        mentions_types = re.search(r"ofType\(|is\s+[A-Z]|as\s+[A-Z]|resourceType", text)
        chosen = named if mentions_types and named else ([] if mentions_types else list(unavailable))
        return list(dict.fromkeys(unavailable[t] for t in chosen))

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
