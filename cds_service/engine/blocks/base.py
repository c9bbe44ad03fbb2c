"""What every building block shares: the Node and Scope protocols, thresholds, evidence, the Block record.

A building block is a compiled node (``evaluate(ctx) -> Outcome``, ``describe()``) plus the function that
compiles it from checked YAML, its JSON Schema fragment and its documentation row, kept together in the
module of its family and listed once in :mod:`cds_service.engine.blocks.registry`.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cds_service.clinical import exposure as ex
from cds_service.clinical.findings import Finding
from cds_service.clinical.timeutil import duration_seconds, format_duration
from cds_service.engine.fhirpath import FhirPath
from cds_service.engine.model import DataRequirement, Ordinal, Quantity, Window
from cds_service.engine.trace import Evidence, Outcome, Truth

if TYPE_CHECKING:
    # Type-only: a node evaluates against a RuleContext, and the context holds the rule whose conditions
    # are nodes. The modules never import each other at run time (engine/model.py says the same).
    from cds_service.engine.context import RuleContext

COMPARATORS: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    "at_least": ("≥", operator.ge),
    "above": (">", operator.gt),
    "at_most": ("≤", operator.le),
    "below": ("<", operator.lt),
    "equals": ("=", operator.eq),
}


class Node(Protocol):
    """A compiled condition."""

    def evaluate(self, ctx: RuleContext) -> Outcome: ...

    def describe(self) -> str: ...

# ------------------------------------------------------------------ comparisons


@dataclass(frozen=True, slots=True)
class Compare:
    """``at_least: 3`` and friends, against a number, quantity, ordinal or duration."""

    op: str
    threshold: Any  # float | Quantity | Ordinal | Duration
    # Specialised once: the threshold as a number and the operator's function (not compared, not hashed).
    number: float = field(init=False, compare=False, repr=False, hash=False, default=0.0)
    passes: Callable[[float, float], bool] = field(init=False, compare=False, repr=False, hash=False,
                                                   default=operator.ge)

    def __post_init__(self) -> None:
        threshold = self.threshold
        if isinstance(threshold, Quantity | Ordinal):
            limit = threshold.value
        elif isinstance(threshold, int | float):
            limit = float(threshold)
        else:
            limit = duration_seconds(threshold)
        object.__setattr__(self, "number", limit)
        object.__setattr__(self, "passes", COMPARATORS[self.op][1])

    def holds(self, value: float) -> bool:
        return self.passes(value, self.number)

    def __str__(self) -> str:
        threshold = self.threshold
        if not isinstance(threshold, Quantity | Ordinal | int | float):
            threshold = format_duration(duration_seconds(threshold))
        elif isinstance(threshold, float) and threshold.is_integer():
            threshold = int(threshold)
        return f"{COMPARATORS[self.op][0]} {threshold}"


def compare_all(comparisons: Sequence[Compare], value: float) -> bool:
    return all(c.passes(value, c.number) for c in comparisons)


@functools.lru_cache(maxsize=4096)
def describe_all(comparisons: tuple[Compare, ...]) -> str:
    """``≥ 3 and < 10`` (cached: a block's thresholds are fixed at load, its detail is written every call)."""
    return " and ".join(str(c) for c in comparisons)

def threshold_truth(value: float, comparisons: Sequence[Compare], could_add: float) -> Truth:
    """Truth of ``value`` when up to ``could_add`` more may be missing (``math.inf``: any amount).

    Missing data only ever adds (an unreadable finding, a session without a dose): a lower
    bound already met stays met, but an upper bound met now may still be broken (UNKNOWN).
    """
    if not could_add:
        return Truth.of(compare_all(comparisons, value))
    high = value + could_add
    if compare_all(comparisons, value) and compare_all(comparisons, high):
        return Truth.TRUE
    # The values that pass form one interval; probe its lowest point reachable from ``value``.
    lows = [c.number for c in comparisons if c.op in ("at_least", "above", "equals")]
    probe = max([value, *lows])
    could = any(x <= high and compare_all(comparisons, x) for x in (probe, math.nextafter(probe, math.inf)))
    return Truth.UNKNOWN if could else Truth.FALSE


def range_truth(low: float, high: float, comparisons: Sequence[Compare]) -> Truth:
    """Truth when the real value lies anywhere in [low, high] (data that could not be obtained).

    The values that pass form one interval, so: TRUE when both ends pass, FALSE when no end, threshold
    or point just beside a threshold inside [low, high] passes, else UNKNOWN.
    """
    if compare_all(comparisons, low) and compare_all(comparisons, high):
        return Truth.TRUE
    probes = [low, high]
    for compare in comparisons:
        edge = compare.number
        probes += [edge, math.nextafter(edge, math.inf), math.nextafter(edge, -math.inf)]
    could = any(low <= x <= high and compare_all(comparisons, x) for x in probes)
    return Truth.UNKNOWN if could else Truth.FALSE


def window_missing(ctx: RuleContext, reason: str, value: Any = None) -> Outcome:
    """A window that does not exist (no course, no last session): FALSE, unless the course data is incomplete."""
    why = ctx.course_incomplete()
    if why:
        return Outcome(Truth.UNKNOWN, value, f"{reason}; exposure data incomplete", missing=why)
    return Outcome(Truth.FALSE, value, reason)


def finding_evidence(finding: Finding, note: str = "") -> Evidence:
    value = finding.value.display() if finding.value is not None else (finding.status or "")
    return Evidence(finding.ref, finding.time, finding.label, value, note)


def session_evidence(session: ex.Session, note: str = "") -> Evidence:
    dose = f"{session.dose.mg:g} mg" if session.dose.mg is not None else "dose unknown"
    what = f"{session.label} ({'planned, draft order' if session.planned else session.kind})"
    extra = "" if session.dose.how == dose else session.dose.how
    if session.matched_by == "text":
        extra += "; matched by name only"
    if session.dose.quality:
        extra += f"; {session.dose.quality}"
    return Evidence(session.ref, session.start, what, dose, "; ".join(x for x in (extra.lstrip("; "), note) if x))


# ------------------------------------------------------------------ compiling from YAML


class Scope(Protocol):
    """What compiling needs from the loader: places for problems, parameters, data, windows."""

    def problem(self, path: tuple[str | int, ...], message: str) -> None: ...

    def value(self, raw: Any, path: tuple[str | int, ...], kinds: tuple[str, ...]) -> Any: ...

    def data(
        self, key: Any, path: tuple[str | int, ...], *, medication: bool | None = None
    ) -> DataRequirement | None: ...

    def window(self, raw: Any, path: tuple[str | int, ...], *, allow_current: bool = False) -> Window | None: ...

    def valueset(self, raw: Any, path: tuple[str | int, ...]) -> Any: ...

    def fhirpath(self, raw: Any, path: tuple[str | int, ...]) -> FhirPath | None: ...

    def is_condition(self, name: str) -> bool: ...


def compile_comparisons(
    body: Mapping[str, Any],
    path: tuple[str | int, ...],
    scope: Scope,
    kinds: tuple[str, ...],
    default: Compare | None = None,
) -> tuple[Compare, ...]:
    found = []
    for op in COMPARATORS:
        if op in body:
            threshold = scope.value(body[op], (*path, op), kinds)
            if threshold is not None:
                found.append(Compare(op, threshold))
    if not found and default is not None:
        return (default,)
    if not found:
        scope.problem(path, f"needs a threshold: one of {', '.join(COMPARATORS)}")
    return tuple(found)


#: How a block is compiled: (body of the block, its path in the file, the loader's scope) → node or None.
Compiler = Callable[[Mapping[str, Any], tuple[str | int, ...], Scope], "Node | None"]


def ref(name: str) -> dict[str, str]:
    """A reference to one of the rule schema's shared ``$defs`` (defined in cds_service/engine/schema/rule.py)."""
    return {"$ref": f"#/$defs/{name}"}


# The shared pieces block schemas are built from: each is defined once, under $defs.
DATA_KEY = ref("data_key")
DATA_KEYS = ref("data_keys")
WINDOW = ref("window")
WHERE = ref("where")
DURATION = ref("duration_or_parameter")
COMPARISON = ref("comparison")
#: The comparison keys (at_least, above, ...) of a body that takes thresholds; one schema for every threshold.
THRESHOLDS: Mapping[str, Any] = {op: ref("threshold") for op in COMPARATORS}


@dataclass(frozen=True, slots=True)
class Block:
    """One building block of the rule language: everything the loader, the schema and the docs need."""

    name: str  # the key in rule files, e.g. ``count``
    node: type  # the compiled class
    compile: Compiler
    #: JSON Schema of the block's body (``properties`` and ``required``); ``$ref`` to the shared ``$defs``.
    schema: Mapping[str, Any]
    usage: str  # the docs row: how it is written, when it is true, what the trace shows as its value
    true_when: str
    value: str
    thresholds: bool = False  # the body also takes at_least/above/at_most/below/equals

    def body_schema(self) -> dict[str, Any]:
        """The JSON Schema of ``{<name>: body}``'s body: closed, with the thresholds when it takes them."""
        properties = {**self.schema.get("properties", {}), **(THRESHOLDS if self.thresholds else {})}
        required = {"required": list(self.schema["required"])} if "required" in self.schema else {}
        return {"type": "object", "additionalProperties": False, **required, "properties": properties}
