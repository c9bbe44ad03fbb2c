"""Filters on findings: value tests (unit-converted comparisons, value sets, × ULN), nearness, ``where``.

Shared by the finding blocks (count, latest, new); ``where`` nests ``near`` and ``any`` alternatives.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cds_service.clinical.findings import Finding, bounds_hold, ordinal_of_text
from cds_service.clinical.timeutil import Duration, duration_seconds, format_duration
from cds_service.clinical.units import UnitError, convert, convertible
from cds_service.engine.blocks.base import (
    COMPARATORS,
    COMPARISON,
    DURATION,
    THRESHOLDS,
    WHERE,
    Compare,
    Scope,
    compare_all,
    compile_comparisons,
    describe_all,
    ref,
)
from cds_service.engine.fhirpath import FhirPath
from cds_service.engine.model import DataRequirement, Ordinal, Quantity
from cds_service.engine.trace import Truth, all_of, any_of, not_of

if TYPE_CHECKING:
    from cds_service.engine.context import RuleContext

@dataclass(frozen=True, slots=True)
class ValueTest:
    """Tests on an observation's value: comparisons (unit-converted), value-set membership, × ULN."""

    comparisons: tuple[Compare, ...] = ()
    in_valueset: Any = None  # ValueSet
    uln_multiple: tuple[Compare, ...] = ()
    unit: str | None = None  # the unit comparisons are made in
    molar_mass: float | None = None

    def test(self, finding: Finding) -> tuple[Truth, str | None]:
        """Truth for one finding, and a missing-data note when it cannot be decided."""
        value = finding.value
        if value is None:
            return Truth.UNKNOWN, f"{finding.ref}: no value"
        truths: list[Truth] = []
        if self.in_valueset is not None:
            hit = any(self.in_valueset.match_coding(s, c) for s, c in value.codes) or self.in_valueset.match_text(
                value.text
            )
            truths.append(Truth.of(hit))
        for compare in self.comparisons:
            if value.bounds is not None and not isinstance(compare.threshold, Ordinal):
                truth, note = self._range(finding, compare)
                if truth is Truth.UNKNOWN:
                    return truth, note
                truths.append(truth)
                continue
            number, note = self._number(finding, compare)
            if number is None:
                return Truth.UNKNOWN, note
            truths.append(Truth.of(compare.holds(number)))
        if self.uln_multiple:
            ratio, note = self._uln_ratio(finding)
            if ratio is None:
                return Truth.UNKNOWN, note
            truths.append(Truth.of(compare_all(self.uln_multiple, ratio)))
        return all_of(truths), None

    def _number(self, finding: Finding, compare: Compare) -> tuple[float | None, str | None]:
        value = finding.value
        assert value is not None
        if isinstance(compare.threshold, Ordinal):
            if value.ordinal is not None:
                return value.ordinal, None
            if value.quantity is not None and value.unit is None:
                return value.quantity, None
            return None, f"{finding.ref}: result {value.display()!r} is not a recognised grade"
        if value.quantity is None:
            graded = ordinal_of_text(value.text)
            if graded == 0.0:  # "negative" is below any positive threshold
                return 0.0, None
            return None, f"{finding.ref}: result {value.display()!r} is not a number"
        target = compare.threshold.unit if isinstance(compare.threshold, Quantity) else self.unit
        if target is None or value.unit is None or value.unit == target:
            return value.quantity, None
        try:
            return convert(value.quantity, value.unit, target, molar_mass=self.molar_mass), None
        except UnitError:
            return None, f"{finding.ref}: unit {value.unit!r} cannot be converted to {target!r}"

    def _range(self, finding: Finding, compare: Compare) -> tuple[Truth, str | None]:
        """A result known as a range (``10-20``, ``>100``): decided only when the whole range agrees."""
        value = finding.value
        assert value is not None and value.bounds is not None
        bounds = value.bounds
        target = compare.threshold.unit if isinstance(compare.threshold, Quantity) else self.unit
        if target is not None and value.unit is not None and value.unit != target:
            try:
                bounds = bounds.scaled(convert(1.0, value.unit, target, molar_mass=self.molar_mass))
            except UnitError:
                note = f"{finding.ref}: {finding.label} unit {value.unit!r} cannot be converted to {target!r}"
                return Truth.UNKNOWN, note
        verdict = bounds_hold(compare.op, compare.number, bounds)
        if verdict is None:
            return Truth.UNKNOWN, (
                f"{finding.ref}: {finding.label} {value.display()} is a range that is partly {compare} "
                "and partly not: undecided"
            )
        return Truth.of(verdict), None

    def _uln_ratio(self, finding: Finding) -> tuple[float | None, str | None]:
        value = finding.value
        assert value is not None
        if finding.uln is None or value.quantity is None:
            return None, f"{finding.ref}: no upper limit of normal (referenceRange.high)"
        high, unit = finding.uln
        try:
            number = (
                value.quantity
                if unit in (None, value.unit) or value.unit is None
                else convert(value.quantity, value.unit, unit, molar_mass=self.molar_mass)
            )
        except UnitError:
            return None, f"{finding.ref}: value and reference range in incompatible units"
        return (number / high if high else None), None

    def describe(self) -> str:
        parts = [describe_all(self.comparisons)] if self.comparisons else []
        if self.in_valueset is not None:
            parts.append(f"in {self.in_valueset.id}")
        if self.uln_multiple:
            parts.append(f"× ULN {describe_all(self.uln_multiple)}")
        return " and ".join(parts)


class Intervals:
    """Time intervals (start, end, what) sorted by start, with the running latest end: "does any interval
    start by T and end no earlier than E" in O(log n), where pairing every finding with every partner was
    quadratic in a long record."""

    __slots__ = ("ends", "items", "starts", "what")

    def __init__(self, items: list[tuple[datetime, datetime, Any]]) -> None:
        self.items = sorted(items, key=lambda item: item[0])
        self.starts = [start for start, _, _ in self.items]
        self.ends: list[datetime] = []
        for _, end, _ in self.items:
            self.ends.append(end if not self.ends or end > self.ends[-1] else self.ends[-1])
        self.what = {id(what) for _, _, what in self.items}

    def reaches(self, latest_start: datetime, earliest_end: datetime, besides: Any = None) -> bool:
        """An interval (other than ``besides``) starting at or before ``latest_start`` and ending at or
        after ``earliest_end``."""
        count = bisect.bisect_right(self.starts, latest_start)
        if not count:
            return False
        if id(besides) not in self.what:
            return self.ends[count - 1] >= earliest_end
        return any(end >= earliest_end for _, end, what in self.items[:count] if what is not besides)


NO_INTERVALS = Intervals([])


@dataclass(frozen=True, slots=True)
class Near:
    """Another finding or session close in time: ``within`` either side of it, or only ``after`` it.

    Pairs findings the way clinicians do: pyuria with a sterile culture within ± 7 days
    (KB-03), symptoms within 72 h after a session (KB-01), a positive urine ketamine screen
    *not* near a clinical session (KB-14, with ``negate``).
    """

    data: tuple[str, ...]
    within: Duration | None
    after: Duration | None
    where: Where | None
    negate: bool = False

    def test(self, finding: Finding, ctx: RuleContext) -> tuple[Truth, str | None]:
        names = "/".join(self.data)
        if finding.time is None:
            return Truth.UNKNOWN, f"{finding.ref}: no date to pair with {names}"
        # Close means: the partner starts no later than ``time + within`` and ends no earlier than
        # ``time - within`` (``after``: starts no later than ``time``, ends no earlier than ``time - after``).
        if self.after is not None:
            latest_start, earliest_end = finding.time, finding.time - self.after
        else:
            assert self.within is not None
            latest_start, earliest_end = finding.time + self.within, finding.time - self.within
        truths: list[Truth] = []
        for key in self.data:
            sure, maybe = self._partners(key, ctx)
            if sure.reaches(latest_start, earliest_end, finding):
                truths.append(Truth.TRUE)
            elif maybe.reaches(latest_start, earliest_end, finding):
                truths.append(Truth.UNKNOWN)
        truth = any_of(truths)
        why = ctx.incomplete(*self.data)
        if why and truth is Truth.FALSE:  # nothing near in the data obtained: the pair may be in what is missing
            truth = Truth.UNKNOWN
        note = None
        if truth is Truth.UNKNOWN:
            note = f"{finding.ref}: undecided whether {names} is near" + (f" ({'; '.join(why)})" if why else "")
        return (not_of(truth) if self.negate else truth), note

    def _partners(self, key: str, ctx: RuleContext) -> tuple[Intervals, Intervals]:
        """The partners of data ``key`` that pass this near's filter, and those it cannot decide, as
        intervals (once per call: the filter does not depend on the finding being paired)."""

        def build() -> tuple[Intervals, Intervals]:
            data = ctx.data(key)
            if data.is_medication:
                return Intervals([(s.start, s.end, s) for s in ctx.sessions(key, planned=False)]), NO_INTERVALS
            sure: list[tuple[datetime, datetime, Any]] = []
            maybe: list[tuple[datetime, datetime, Any]] = []
            for other in ctx.findings(key):
                if other.time is None:
                    continue
                truth = self.where.test(other, data, ctx)[0] if self.where else Truth.TRUE
                if truth is not Truth.FALSE:
                    (sure if truth is Truth.TRUE else maybe).append((other.time, other.end or other.time, other))
            return Intervals(sure), Intervals(maybe)

        return ctx.memoised(("near", id(self), key), build)

    def describe(self) -> str:
        span = self.after if self.after is not None else self.within
        assert span is not None
        when = "after" if self.after is not None else "within ±"
        where = f" where {self.where.describe()}" if self.where else ""
        names = " or ".join(self.data)
        return f"{'no ' if self.negate else ''}{names}{where} {when} {format_duration(duration_seconds(span))}"


@dataclass(frozen=True, slots=True)
class Where:
    """A filter on findings: value test, statuses, kinds (value-set classes), FHIRPath, nearness, any-of."""

    value: ValueTest | None = None
    status: frozenset[str] | None = None
    kinds: frozenset[str] | None = None
    fhirpath: FhirPath | None = None
    alternatives: tuple[Where, ...] = ()
    near: tuple[Near, ...] = ()

    def test(self, finding: Finding, data: DataRequirement, ctx: RuleContext) -> tuple[Truth, str | None]:
        truths: list[Truth] = []
        note = None
        if self.status is not None:
            truths.append(Truth.of(finding.status in self.status))
        if self.kinds is not None:
            concept = data.valueset.match(finding.resource.get("code"))
            truths.append(Truth.of(bool(concept and concept.concept and concept.concept.kind in self.kinds)))
        if self.value is not None:
            truth, note = self.value.test(finding)
            truths.append(truth)
        if self.fhirpath is not None:
            verdict = self.fhirpath.test(finding.resource, ctx.variables)
            truths.append(Truth.UNKNOWN if verdict is None else Truth.of(verdict))
            if verdict is None:
                note = f"{finding.ref}: FHIRPath could not be evaluated"
        for near in self.near:
            truth, near_note = near.test(finding, ctx)
            truths.append(truth)
            note = note or near_note
        if self.alternatives:
            results = [alt.test(finding, data, ctx) for alt in self.alternatives]
            truths.append(any_of([t for t, _ in results]))
            note = note or next((n for t, n in results if t is Truth.UNKNOWN and n), None)
        return all_of(truths), note

    def describe(self) -> str:
        parts = []
        if self.value is not None:
            parts.append(f"value {self.value.describe()}")
        if self.status is not None:
            parts.append(f"status in {sorted(self.status)}")
        if self.kinds is not None:
            parts.append(f"kind in {sorted(self.kinds)}")
        if self.fhirpath is not None:
            parts.append(f"FHIRPath {self.fhirpath.expression!r}")
        parts.extend(near.describe() for near in self.near)
        if self.alternatives:
            parts.append("(" + " or ".join(a.describe() for a in self.alternatives) + ")")
        return " and ".join(parts)


def compile_value_test(
    raw: Any, path: tuple[str | int, ...], scope: Scope, data: DataRequirement | None
) -> ValueTest | None:
    if not isinstance(raw, Mapping):
        scope.problem(path, "value test must be a mapping (at_least, above, at_most, below, equals, in, times_uln)")
        return None
    comparisons = [
        Compare(op, v)
        for op in COMPARATORS
        if op in raw
        for v in [scope.value(raw[op], (*path, op), ("quantity", "number", "ordinal"))]
        if v is not None
    ]
    for compare in comparisons:
        threshold = compare.threshold
        comparable = not (
            isinstance(threshold, Quantity)
            and threshold.unit
            and data is not None
            and data.unit
            and data.molar_mass is None
            and not convertible(data.unit, threshold.unit)
        )
        if not comparable:
            scope.problem(path, f"threshold unit {threshold.unit!r} is not comparable with the data unit {data.unit!r}")
    in_vs = scope.valueset(raw["in"], (*path, "in")) if "in" in raw else None
    uln: tuple[Compare, ...] = ()
    if "times_uln" in raw:
        uln = compile_comparisons(
            raw["times_uln"] if isinstance(raw["times_uln"], Mapping) else {}, (*path, "times_uln"), scope, ("number",)
        )
    return ValueTest(tuple(comparisons), in_vs, uln, data.unit if data else None, data.molar_mass if data else None)


def compile_where(raw: Any, path: tuple[str | int, ...], scope: Scope, data: DataRequirement | None) -> Where | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        scope.problem(path, "where must be a mapping")
        return None
    value = compile_value_test(raw["value"], (*path, "value"), scope, data) if "value" in raw else None
    status = frozenset(raw["status"]) if "status" in raw else None
    kinds = frozenset(raw["kind"]) if "kind" in raw else None
    if kinds and data is not None:
        known = {c.kind for c in data.valueset.concepts.values() if c.kind}
        for kind in sorted(kinds - known):
            scope.problem((*path, "kind"), f"value set {data.valueset.id!r} has no concept of kind {kind!r}")
    fhirpath = scope.fhirpath(raw["fhirpath"], (*path, "fhirpath")) if "fhirpath" in raw else None
    alternatives = tuple(
        w for i, alt in enumerate(raw.get("any") or []) if (w := compile_where(alt, (*path, "any", i), scope, data))
    )
    pairs = [
        compile_near(raw[key], (*path, key), scope, key == "not_near") for key in ("near", "not_near") if key in raw
    ]
    near = tuple(n for n in pairs if n is not None)
    return Where(value, status, kinds, fhirpath, alternatives, near)


def compile_near(raw: Any, path: tuple[str | int, ...], scope: Scope, negate: bool) -> Near | None:
    if not isinstance(raw, Mapping):
        scope.problem(path, "near needs data and within or after")
        return None
    keys = raw.get("data") if isinstance(raw.get("data"), list) else [raw.get("data")]
    found = [
        scope.data(key, (*path, "data", i) if isinstance(raw.get("data"), list) else (*path, "data"))
        for i, key in enumerate(keys)
    ]
    if ("within" in raw) == ("after" in raw):
        scope.problem(path, "near needs exactly one of within (either side) or after (after the other only)")
        return None
    key = "within" if "within" in raw else "after"
    span = scope.value(raw[key], (*path, key), ("duration",))
    datas = [d for d in found if d is not None]
    kinds = {d.is_medication for d in datas}
    if len(kinds) > 1:
        scope.problem((*path, "data"), "near pairs with sessions or with findings, not both in one list")
    where = compile_where(raw.get("where"), (*path, "where"), scope, datas[0] if len(datas) == 1 else None)
    if where is not None and True in kinds:
        scope.problem((*path, "where"), "near a session takes no where filter")
    if len(datas) != len(found) or span is None:
        return None
    return Near(
        tuple(d.key for d in datas), span if key == "within" else None, span if key == "after" else None, where, negate
    )


# JSON Schemas of the filters ($defs value_test, near and where of the rule schema).
VALUE_TEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {**THRESHOLDS, "in": {"type": "string", "description": "a value set id"}, "times_uln": COMPARISON},
}
NEAR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["data"],
    "description": "another finding (or session) close in time: within ± a duration, or only after it",
    "properties": {
        "data": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
            "description": "a key under data, or several of one kind",
        },
        "within": DURATION,
        "after": DURATION,
        "where": WHERE,
    },
}
WHERE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "value": ref("value_test"),
        "status": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "kind": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "fhirpath": {"type": "string", "minLength": 1},
        "any": {"type": "array", "minItems": 1, "items": WHERE},
        "near": ref("near"),
        "not_near": ref("near"),
    },
}
