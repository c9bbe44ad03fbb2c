"""Condition building blocks: the declarative vocabulary of rule files.

Each block is a small compiled object with ``evaluate(ctx) -> Outcome``. Blocks read facts
through the RuleContext (findings, sessions, windows, the course) and return a three-valued
truth with the value they computed, the evidence that satisfied them and what was missing.
``compile_condition`` turns checked YAML into blocks and reports problems with their place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from cds_service.clinical import exposure as ex
from cds_service.clinical.findings import Finding, bounds_hold, ordinal_of_text
from cds_service.clinical.timeutil import Duration, duration_seconds, format_duration
from cds_service.clinical.units import UnitError, convert, convertible
from cds_service.engine.fhirpath import FhirPath
from cds_service.engine.model import DataRequirement, Ordinal, Quantity, Window
from cds_service.engine.trace import Evidence, Outcome, Truth, all_of, any_of, not_of

if TYPE_CHECKING:
    from cds_service.engine.context import RuleContext

COMPARATORS: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    "at_least": ("≥", lambda a, b: a >= b),
    "above": (">", lambda a, b: a > b),
    "at_most": ("≤", lambda a, b: a <= b),
    "below": ("<", lambda a, b: a < b),
    "equals": ("=", lambda a, b: a == b),
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

    def holds(self, value: float) -> bool:
        return COMPARATORS[self.op][1](value, self._number())

    def _number(self) -> float:
        if isinstance(self.threshold, Quantity | Ordinal):
            return self.threshold.value
        if isinstance(self.threshold, int | float):
            return float(self.threshold)
        return duration_seconds(self.threshold)

    def __str__(self) -> str:
        threshold = self.threshold
        if not isinstance(threshold, Quantity | Ordinal | int | float):
            threshold = format_duration(duration_seconds(threshold))
        elif isinstance(threshold, float) and threshold.is_integer():
            threshold = int(threshold)
        return f"{COMPARATORS[self.op][0]} {threshold}"


def compare_all(comparisons: Sequence[Compare], value: float) -> bool:
    return all(c.holds(value) for c in comparisons)


def describe_all(comparisons: Sequence[Compare]) -> str:
    return " and ".join(str(c) for c in comparisons)


# ------------------------------------------------------------------ predicates on findings


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
        verdict = bounds_hold(compare.op, compare._number(), bounds)
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

    def _close(self, time: datetime, start: datetime, end: datetime) -> bool:
        if self.after is not None:
            return start <= time <= end + self.after
        assert self.within is not None
        return start - self.within <= time <= end + self.within

    def test(self, finding: Finding, ctx: RuleContext) -> tuple[Truth, str | None]:
        names = "/".join(self.data)
        if finding.time is None:
            return Truth.UNKNOWN, f"{finding.ref}: no date to pair with {names}"
        truths: list[Truth] = []
        for key in self.data:
            data = ctx.data(key)
            if data.is_medication:
                hit = any(self._close(finding.time, s.start, s.end) for s in ctx.sessions(key, planned=False))
                truths.append(Truth.of(hit))
            else:
                truths.extend(
                    self.where.test(other, data, ctx)[0] if self.where else Truth.TRUE
                    for other in ctx.findings(key)
                    if other is not finding
                    and other.time is not None
                    and self._close(finding.time, other.time, other.end or other.time)
                )
        truth = any_of(truths)
        note = f"{finding.ref}: undecided whether {names} is near" if truth is Truth.UNKNOWN else None
        return (not_of(truth) if self.negate else truth), note

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


# ------------------------------------------------------------------ combinators


@dataclass(frozen=True, slots=True)
class Ref:
    """A named condition of the same rule (evaluated once, shared by tiers)."""

    name: str

    def evaluate(self, ctx: RuleContext) -> Outcome:
        return ctx.condition(self.name)

    def describe(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Combine:
    """``all`` / ``any`` / ``not`` in Kleene logic; evidence of the parts that made the answer."""

    op: str  # all | any | not
    items: tuple[Node, ...]

    def evaluate(self, ctx: RuleContext) -> Outcome:
        parts = [item.evaluate(ctx) for item in self.items]
        truths = [p.truth for p in parts]
        truth = {"all": all_of, "any": any_of}[self.op](truths) if self.op != "not" else not_of(truths[0])
        chosen = [p for p in parts if p.truth is Truth.TRUE] if self.op != "not" else []
        missing = [m for p in parts if p.truth is Truth.UNKNOWN for m in p.missing]
        evidence = [e for p in chosen for e in p.evidence] if truth is Truth.TRUE else []
        return Outcome(truth, None, "", evidence, missing)

    def describe(self) -> str:
        if self.op == "not":
            return f"not {self.items[0].describe()}"
        return (
            "(" + f" {self.op.replace('all', 'and').replace('any', 'or')} ".join(i.describe() for i in self.items) + ")"
        )


# ------------------------------------------------------------------ building blocks


def _threshold_truth(value: float, comparisons: Sequence[Compare], could_add: float) -> Truth:
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
    lows = [c._number() for c in comparisons if c.op in ("at_least", "above", "equals")]
    probe = max([value, *lows])
    could = any(x <= high and compare_all(comparisons, x) for x in (probe, math.nextafter(probe, math.inf)))
    return Truth.UNKNOWN if could else Truth.FALSE


@dataclass(frozen=True, slots=True)
class Count:
    """How many findings (or sessions) in a window pass a filter; optionally distinct kinds."""

    data: str
    window: Window | None
    where: Where | None
    comparisons: tuple[Compare, ...]
    distinct: str | None = None  # "kind" | "code" | "day"
    planned: bool = True

    def evaluate(self, ctx: RuleContext) -> Outcome:
        span = ctx.window(self.window)
        if isinstance(span, str):
            return Outcome(Truth.FALSE, 0, span)
        data = ctx.data(self.data)
        if data.is_medication:
            sessions = [s for s in ctx.sessions(self.data, planned=self.planned) if ex.overlaps(s, *span)]
            count = len(sessions)
            truth = Truth.of(compare_all(self.comparisons, count))
            return Outcome(
                truth,
                count,
                f"{count} session(s) {ctx.span_text(span)}, need {describe_all(self.comparisons)}",
                [session_evidence(s) for s in sessions] if truth else [],
            )
        passed: list[Finding] = []
        undecided: list[str] = []
        for finding in ctx.findings(self.data):
            if not ctx.inside(finding.time, span):
                continue
            truth, note = self.where.test(finding, data, ctx) if self.where else (Truth.TRUE, None)
            if truth is Truth.TRUE:
                passed.append(finding)
            elif truth is Truth.UNKNOWN:
                undecided.append(note or f"{finding.ref}: undecidable")
        count = self._count(passed, data)
        truth = _threshold_truth(count, self.comparisons, len(undecided))  # each could add at most one
        detail = f"{count} {self.distinct + ' ' if self.distinct else ''}match(es) {ctx.span_text(span)}"
        detail += f", need {describe_all(self.comparisons)}"
        if self.where:
            detail += f" ({self.where.describe()})"
        return Outcome(
            truth, count, detail, [finding_evidence(f) for f in passed], undecided if truth is Truth.UNKNOWN else []
        )

    def _count(self, passed: list[Finding], data: DataRequirement) -> int:
        if self.distinct == "kind":
            kinds = set()
            for finding in passed:
                match = data.valueset.match(finding.resource.get("code"))
                kinds.add(match.concept.kind if match and match.concept and match.concept.kind else finding.label)
            return len(kinds)
        if self.distinct == "code":
            return len({f.label for f in passed})
        if self.distinct == "day":
            return len({f.time.date() for f in passed if f.time})
        return len(passed)

    def describe(self) -> str:
        what = f"distinct {self.distinct} of " if self.distinct else ""
        where = f" where {self.where.describe()}" if self.where else ""
        window = f" in {self.window.label}" if self.window else ""
        return f"count {what}{self.data}{where}{window} {describe_all(self.comparisons)}"


@dataclass(frozen=True, slots=True)
class Latest:
    """The most recent finding in a window (after the filter) and a test on its value."""

    data: str
    window: Window | None
    where: Where | None
    value: ValueTest

    def evaluate(self, ctx: RuleContext) -> Outcome:
        span = ctx.window(self.window)
        if isinstance(span, str):
            return Outcome(Truth.FALSE, None, span)
        data = ctx.data(self.data)
        candidates = [f for f in ctx.findings(self.data) if ctx.inside(f.time, span) and f.value is not None]
        if self.where:
            candidates = [f for f in candidates if self.where.test(f, data, ctx)[0] is Truth.TRUE]
        if not candidates:
            return Outcome(Truth.FALSE, None, f"no {self.data} {ctx.span_text(span)}")
        latest = candidates[-1]
        truth, note = self.value.test(latest)
        shown = latest.value.display() if latest.value else ""
        detail = f"latest {self.data} {shown}, need {self.value.describe()}"
        return Outcome(
            truth,
            shown,
            detail,
            [finding_evidence(latest)] if truth else [],
            [note] if note and truth is Truth.UNKNOWN else [],
        )

    def describe(self) -> str:
        window = f" in {self.window.label}" if self.window else ""
        return f"latest {self.data}{window} {self.value.describe()}"


def _interval_text(interval: tuple[float, float]) -> str:
    low, high = interval
    if low == high:
        return f"{low:g}"
    return f">{low:g}" if math.isinf(high) else f"{low:g}-{high:g}"


@dataclass(frozen=True, slots=True)
class Change:
    """Change of the latest value from a baseline (absolute, percent or ratio; rise or fall)."""

    data: str
    window: Window | None
    baseline: Window
    pick: str  # latest | min | max | first
    direction: str  # rise | fall
    absolute: tuple[Compare, ...]
    percent: tuple[Compare, ...]
    ratio: tuple[Compare, ...]
    unit: str | None
    molar_mass: float | None

    def evaluate(self, ctx: RuleContext) -> Outcome:
        span = ctx.window(self.window)
        if isinstance(span, str):
            return Outcome(Truth.FALSE, None, span)
        numeric = [(f, self._interval(f)) for f in ctx.findings(self.data)]
        unreadable = [f"{f.ref}: {f.label} {f.value.display() if f.value else ''!s} cannot be read as a number"
                      for f, n in numeric if n is None and f.value is not None and ctx.inside(f.time, span)]
        current = [(f, n) for f, n in numeric if ctx.inside(f.time, span) and n is not None]
        if not current:
            if unreadable:
                return Outcome(Truth.UNKNOWN, None, f"no readable {self.data} value", missing=unreadable)
            return Outcome(Truth.FALSE, None, f"no {self.data} value {ctx.span_text(span)}")
        now_f, now_v = current[-1]
        base_span = ctx.window(self.baseline, current=now_f.time)
        if isinstance(base_span, str):
            return Outcome(Truth.UNKNOWN, None, base_span, missing=[f"no baseline {self.data}: {base_span}"])
        base = [(f, n) for f, n in numeric if f is not now_f and ctx.inside(f.time, base_span) and n is not None]
        if not base:
            return Outcome(
                Truth.UNKNOWN,
                None,
                f"no baseline {self.data} {ctx.span_text(base_span)}",
                missing=[f"no baseline {self.data} {ctx.span_text(base_span)}"],
            )
        base_f, base_v = self._choose(base)
        # A value known only as a range (eGFR ">90") is tested at its bounds: the change holds when it holds
        # for every value the range allows, fails when it holds for none, and is undecided otherwise.
        verdicts = [self._checks(b, c) for b in dict.fromkeys(base_v) for c in dict.fromkeys(now_v)]
        shown = verdicts[0][1]
        if all(ok for ok, _ in verdicts):
            truth = Truth.TRUE
        elif not any(ok for ok, _ in verdicts):
            truth = Truth.FALSE
        else:
            truth = Truth.UNKNOWN
        detail = f"{_interval_text(base_v)} → {_interval_text(now_v)}: " + ", ".join(shown)
        evidence = [finding_evidence(base_f, "baseline"), finding_evidence(now_f, "current")] if truth else []
        missing: list[str] = []
        if truth is Truth.UNKNOWN:
            missing.append(f"{base_f.ref} → {now_f.ref}: {self.data} {_interval_text(base_v)} → "
                           f"{_interval_text(now_v)} is a range; the change is undecided")
        if truth is not Truth.TRUE and unreadable:
            truth, missing = Truth.UNKNOWN, missing + unreadable
        return Outcome(truth, ", ".join(shown), detail, evidence, missing)

    def _checks(self, base_v: float, now_v: float) -> tuple[bool, list[str]]:
        delta = (now_v - base_v) if self.direction == "rise" else (base_v - now_v)
        checks: list[bool] = []
        shown = []
        if self.absolute:
            checks.append(compare_all(self.absolute, delta))
            shown.append(f"{self.direction} {delta:g}{' ' + self.unit if self.unit else ''}")
        if self.percent:
            pct = 100 * delta / base_v if base_v and not math.isinf(base_v) else (100.0 if base_v else 0.0)
            checks.append(compare_all(self.percent, pct))
            shown.append(f"{self.direction} {pct:.0f}%")
        if self.ratio:
            ratio = (now_v / base_v) if base_v and not math.isinf(base_v) else 0.0
            checks.append(compare_all(self.ratio, ratio))
            shown.append(f"{ratio:.2f}× baseline")
        return all(checks), shown

    def _interval(self, finding: Finding) -> tuple[float, float] | None:
        """(low, high) of a value in this change's unit: equal for a number; None when not numeric."""
        value = finding.value
        if value is None or (value.quantity is None and value.bounds is None):
            return None
        scale = 1.0
        if self.unit is not None and value.unit not in (None, self.unit):
            try:
                scale = convert(1.0, value.unit, self.unit, molar_mass=self.molar_mass)
            except UnitError:
                return None
        if value.quantity is not None:
            return value.quantity * scale, value.quantity * scale
        bounds = value.bounds
        assert bounds is not None
        low = bounds.low * scale if bounds.low is not None else 0.0  # lab values are not negative
        high = bounds.high * scale if bounds.high is not None else math.inf
        return low, high

    def _choose(self, base: list[tuple[Finding, tuple[float, float]]]) -> tuple[Finding, tuple[float, float]]:
        if self.pick == "min":
            return min(base, key=lambda fn: fn[1][0])
        if self.pick == "max":
            return max(base, key=lambda fn: fn[1][1])
        return base[0] if self.pick == "first" else base[-1]

    def describe(self) -> str:
        tests = [
            f"{self.direction} {describe_all(c)}{suffix}"
            for c, suffix in (
                (self.absolute, f" {self.unit}" if self.unit else ""),
                (self.percent, " %"),
                (self.ratio, " ×"),
            )
            if c
        ]
        return f"change of {self.data} from baseline ({self.pick} in {self.baseline.label}): " + ", ".join(tests)


@dataclass(frozen=True, slots=True)
class CumulativeDose:
    """Σ mg of one substance in a window; missing doses make a short sum UNKNOWN, never zero."""

    data: str
    window: Window | None
    comparisons: tuple[Compare, ...]
    planned: bool = True

    def evaluate(self, ctx: RuleContext) -> Outcome:
        found = ctx.sessions_in(self.data, self.window, planned=self.planned)
        if isinstance(found, str):
            return Outcome(Truth.FALSE, 0, found)
        sessions, span = found
        total = ex.cumulative_mg(sessions, *span)
        truth = _threshold_truth(total.mg, self.comparisons, math.inf if total.missing else 0.0)
        detail = f"{total.mg:g} mg in {len(total.counted)} session(s) {ctx.span_text(span)}"
        detail += f", need {describe_all(self.comparisons)}"
        missing = [f"{s.ref}: {s.dose.how}" for s in total.missing]
        if missing:
            detail += f"; {len(missing)} session(s) without a usable dose"
        evidence = [session_evidence(s) for s in total.counted] if truth else []
        return Outcome(truth, round(total.mg, 3), detail, evidence, missing if truth is Truth.UNKNOWN else [])

    def describe(self) -> str:
        window = f" in {self.window.label}" if self.window else ""
        return f"cumulative {self.data} dose{window} {describe_all(self.comparisons)}"


@dataclass(frozen=True, slots=True)
class SessionRate:
    """Sessions per period (e.g. P7D), optionally for N consecutive periods."""

    data: str
    window: Window | None
    period: Duration
    consecutive: int
    comparisons: tuple[Compare, ...]
    planned: bool = True

    def evaluate(self, ctx: RuleContext) -> Outcome:
        found = ctx.sessions_in(self.data, self.window, planned=self.planned)
        if isinstance(found, str):
            return Outcome(Truth.FALSE, 0, found)
        sessions = [s for s in found[0] if ex.is_session(s)]
        period = timedelta(seconds=duration_seconds(self.period))
        best, members = ex.max_sessions_in_period(sessions, period, self.consecutive)
        truth = Truth.of(compare_all(self.comparisons, best))
        per = format_duration(period.total_seconds())
        run = f" in each of {self.consecutive} consecutive periods" if self.consecutive > 1 else ""
        detail = f"at most {best} session(s) per {per}{run}, need {describe_all(self.comparisons)}"
        return Outcome(truth, best, detail, [session_evidence(s) for s in members] if truth else [])

    def describe(self) -> str:
        run = f" for {self.consecutive} consecutive periods" if self.consecutive > 1 else ""
        per = format_duration(duration_seconds(self.period))
        return f"{self.data} sessions per {per} {describe_all(self.comparisons)}{run}"


@dataclass(frozen=True, slots=True)
class InfusionDuration:
    """Longest continuous infusion, overlapping or back-to-back infusions merged."""

    data: str
    window: Window | None
    comparisons: tuple[Compare, ...]
    planned: bool = True

    def evaluate(self, ctx: RuleContext) -> Outcome:
        found = ctx.sessions_in(self.data, self.window, planned=self.planned)
        if isinstance(found, str):
            return Outcome(Truth.FALSE, 0, found)
        sessions, span = found
        merged = ex.merged_intervals([s for s in sessions if ex.is_session(s)])
        if not merged:
            return Outcome(Truth.FALSE, 0, f"no {self.data} infusion {ctx.span_text(span)}")
        start, end, members = max(merged, key=lambda m: m[1] - m[0])
        seconds = (end - start).total_seconds()
        truth = Truth.of(compare_all(self.comparisons, seconds))
        detail = f"longest continuous infusion {format_duration(seconds)}, need {describe_all(self.comparisons)}"
        return Outcome(truth, format_duration(seconds), detail, [session_evidence(s) for s in members] if truth else [])

    def describe(self) -> str:
        return f"longest continuous {self.data} infusion {describe_all(self.comparisons)}"


@dataclass(frozen=True, slots=True)
class ContinuousExposure:
    """How long exposure has gone on without a gap longer than ``max_gap``, up to now."""

    data: tuple[str, ...]
    max_gap: Duration
    comparisons: tuple[Compare, ...]
    planned: bool = True

    def evaluate(self, ctx: RuleContext) -> Outcome:
        sessions = [s for key in self.data for s in ctx.sessions(key, planned=self.planned)]
        gap = timedelta(seconds=duration_seconds(self.max_gap))
        run = ex.continuous_run(sessions, gap)
        if not run or ctx.now - max(s.end for s in run) > gap:
            return Outcome(Truth.FALSE, 0, f"no exposure within {format_duration(gap.total_seconds())} of now")
        seconds = (max(s.end for s in run) - run[0].start).total_seconds()
        truth = Truth.of(compare_all(self.comparisons, seconds))
        detail = (
            f"continuous since {run[0].start.date()} ({format_duration(seconds)}, {len(run)} sessions), "
            f"need {describe_all(self.comparisons)}"
        )
        evidence = (
            [session_evidence(run[0], "start of continuous exposure"), session_evidence(run[-1], "most recent")]
            if truth
            else []
        )
        return Outcome(truth, format_duration(seconds), detail, evidence)

    def describe(self) -> str:
        gap = format_duration(duration_seconds(self.max_gap))
        return f"continuous {'/'.join(self.data)} exposure (gaps ≤ {gap}) {describe_all(self.comparisons)}"


@dataclass(frozen=True, slots=True)
class NewCourse:
    """A draft order that starts a new course: no session within the course gap before it."""

    def evaluate(self, ctx: RuleContext) -> Outcome:
        planned = [s for s in ctx.all_course_sessions() if s.planned]
        if not planned:
            return Outcome(Truth.FALSE, False, "no draft order for the course medications")
        first = min(planned, key=lambda s: s.start)
        gap = ctx.course_gap()
        earlier = [s for s in ctx.all_course_sessions() if not s.planned and s.start <= first.start]
        recent = [s for s in earlier if first.start - s.end <= gap]
        if recent:
            last = recent[-1]
            return Outcome(Truth.FALSE, False, f"continues a course: last session {last.start.date()}")
        detail = f"draft order starts a new course (no session in the {format_duration(gap.total_seconds())} before)"
        return Outcome(Truth.TRUE, True, detail, [session_evidence(first)])

    def describe(self) -> str:
        return "the draft order starts a new course"


@dataclass(frozen=True, slots=True)
class NewSince:
    """A finding in the window whose class had no record in the lookback before the course."""

    data: str
    window: Window | None
    before: Duration
    by: str  # kind | code
    where: Where | None

    def evaluate(self, ctx: RuleContext) -> Outcome:
        span = ctx.window(self.window)
        if isinstance(span, str):
            return Outcome(Truth.FALSE, 0, span)
        start = ctx.anchor_time("course_start")
        if start is None:
            return Outcome(Truth.FALSE, 0, "no ketamine course")
        data = ctx.data(self.data)
        prior_from = start - self.before
        classes_before = {
            self._class(f, data) for f in ctx.findings(self.data) if f.time and prior_from <= f.time < start
        }
        new = [
            f
            for f in ctx.findings(self.data)
            if ctx.inside(f.time, span)
            and (self.where is None or self.where.test(f, data, ctx)[0] is Truth.TRUE)
            and self._class(f, data) not in classes_before
        ]
        truth = Truth.of(bool(new))
        detail = f"{len(new)} new since course start {start.date()}"
        if classes_before:
            detail += f" (already present before: {', '.join(sorted(classes_before))})"
        return Outcome(truth, len(new), detail, [finding_evidence(f, "new since course start") for f in new])

    def _class(self, finding: Finding, data: DataRequirement) -> str:
        if self.by == "kind":
            match = data.valueset.match(finding.resource.get("code"))
            if match and match.concept and match.concept.kind:
                return match.concept.kind
        return finding.label

    def describe(self) -> str:
        window = f" in {self.window.label}" if self.window else ""
        before = format_duration(duration_seconds(self.before))
        return f"{self.data}{window} new since course start (none in the {before} before)"


@dataclass(frozen=True, slots=True)
class DraftOrder:
    """A draft order (order hooks) for the data's medication, optionally with a dose test in mg."""

    data: str
    dose: tuple[Compare, ...] = ()

    def evaluate(self, ctx: RuleContext) -> Outcome:
        planned = [s for s in ctx.sessions(self.data, planned=True) if s.planned]
        if not planned:
            return Outcome(Truth.FALSE, 0, f"no draft {self.data} order")
        if not self.dose:
            return Outcome(
                Truth.TRUE, len(planned), f"{len(planned)} draft order(s)", [session_evidence(s) for s in planned]
            )
        hits = [s for s in planned if s.dose.mg is not None and compare_all(self.dose, s.dose.mg)]
        unknown = [f"{s.ref}: {s.dose.how}" for s in planned if s.dose.mg is None]
        truth = Truth.TRUE if hits else (Truth.UNKNOWN if unknown else Truth.FALSE)
        detail = f"{len(hits)} draft order(s) with dose {describe_all(self.dose)}"
        return Outcome(truth, len(hits), detail, [session_evidence(s) for s in hits], unknown if not hits else [])

    def describe(self) -> str:
        dose = f" with dose {describe_all(self.dose)}" if self.dose else ""
        return f"draft {self.data} order{dose}"


@dataclass(frozen=True, slots=True)
class PlannedGap:
    """Time from the end of the previous session to the planned start of the draft order."""

    data: tuple[str, ...]
    comparisons: tuple[Compare, ...]

    def evaluate(self, ctx: RuleContext) -> Outcome:
        sessions = sorted((s for key in self.data for s in ctx.sessions(key, planned=True)), key=lambda s: s.start)
        planned = [s for s in sessions if s.planned]
        if not planned:
            return Outcome(Truth.FALSE, None, "no draft order")
        first = planned[0]
        before = [s for s in sessions if not s.planned and ex.is_session(s) and s.start <= first.start]
        if not before:
            return Outcome(Truth.FALSE, None, "no earlier session")
        previous = max(before, key=lambda s: s.end)
        seconds = (first.start - previous.end).total_seconds()
        truth = Truth.of(compare_all(self.comparisons, seconds))
        detail = f"{format_duration(max(seconds, 0))} after the previous session, need {describe_all(self.comparisons)}"
        return Outcome(
            truth,
            format_duration(max(seconds, 0)),
            detail,
            [session_evidence(previous, "previous session"), session_evidence(first)] if truth else [],
        )

    def describe(self) -> str:
        return f"draft order starts {describe_all(self.comparisons)} after the previous session"


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


BLOCKS = (
    "count",
    "latest",
    "change",
    "cumulative_dose",
    "session_rate",
    "infusion_duration",
    "continuous_exposure",
    "new_course",
    "new",
    "draft_order",
    "planned_gap",
    "fhirpath",
)


def compile_condition(raw: Any, path: tuple[str | int, ...], scope: Scope) -> Node | None:
    """Compile one condition expression: a name, a combinator or a block."""
    if isinstance(raw, str):
        if not scope.is_condition(raw):
            scope.problem(path, f"unknown condition {raw!r}")
            return None
        return Ref(raw)
    if not isinstance(raw, Mapping) or len(raw) != 1:
        scope.problem(
            path, "a condition is a name, or a mapping with exactly one of: all, any, not, " + ", ".join(BLOCKS)
        )
        return None
    ((kind, body),) = raw.items()
    here = (*path, kind)
    if kind in ("all", "any"):
        items = [compile_condition(item, (*here, i), scope) for i, item in enumerate(body or [])]
        return Combine(kind, tuple(i for i in items if i is not None)) if all(items) else None
    if kind == "not":
        item = compile_condition(body, here, scope)
        return Combine("not", (item,)) if item else None
    builder = _BUILDERS.get(kind)
    if builder is None:
        scope.problem(path, f"unknown condition block {kind!r}")
        return None
    return builder(body if isinstance(body, Mapping) else {}, here, scope)


def _comparisons(
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


def _value_test(raw: Any, path: tuple[str | int, ...], scope: Scope, data: DataRequirement | None) -> ValueTest | None:
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
        uln = _comparisons(
            raw["times_uln"] if isinstance(raw["times_uln"], Mapping) else {}, (*path, "times_uln"), scope, ("number",)
        )
    return ValueTest(tuple(comparisons), in_vs, uln, data.unit if data else None, data.molar_mass if data else None)


def _where(raw: Any, path: tuple[str | int, ...], scope: Scope, data: DataRequirement | None) -> Where | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        scope.problem(path, "where must be a mapping")
        return None
    value = _value_test(raw["value"], (*path, "value"), scope, data) if "value" in raw else None
    status = frozenset(raw["status"]) if "status" in raw else None
    kinds = frozenset(raw["kind"]) if "kind" in raw else None
    if kinds and data is not None:
        known = {c.kind for c in data.valueset.concepts.values() if c.kind}
        for kind in sorted(kinds - known):
            scope.problem((*path, "kind"), f"value set {data.valueset.id!r} has no concept of kind {kind!r}")
    fhirpath = scope.fhirpath(raw["fhirpath"], (*path, "fhirpath")) if "fhirpath" in raw else None
    alternatives = tuple(
        w for i, alt in enumerate(raw.get("any") or []) if (w := _where(alt, (*path, "any", i), scope, data))
    )
    pairs = [_near(raw[key], (*path, key), scope, key == "not_near") for key in ("near", "not_near") if key in raw]
    near = tuple(n for n in pairs if n is not None)
    return Where(value, status, kinds, fhirpath, alternatives, near)


def _near(raw: Any, path: tuple[str | int, ...], scope: Scope, negate: bool) -> Near | None:
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
    where = _where(raw.get("where"), (*path, "where"), scope, datas[0] if len(datas) == 1 else None)
    if where is not None and True in kinds:
        scope.problem((*path, "where"), "near a session takes no where filter")
    if len(datas) != len(found) or span is None:
        return None
    return Near(
        tuple(d.key for d in datas), span if key == "within" else None, span if key == "after" else None, where, negate
    )


def _count(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = scope.data(body.get("data"), (*path, "data"))
    window = scope.window(body.get("window"), (*path, "window"))
    where = _where(body.get("where"), (*path, "where"), scope, data)
    if data is not None and data.is_medication and where is not None:
        scope.problem(
            (*path, "where"), "where filters findings; for medication data use draft_order or cumulative_dose"
        )
    comparisons = _comparisons(body, path, scope, ("number",), Compare("at_least", 1.0))
    if data is None:
        return None
    return Count(data.key, window, where, comparisons, body.get("distinct"), bool(body.get("planned", True)))


def _latest(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = scope.data(body.get("data"), (*path, "data"), medication=False)
    window = scope.window(body.get("window"), (*path, "window"))
    where = _where(body.get("where"), (*path, "where"), scope, data)
    value = _value_test(body.get("value"), (*path, "value"), scope, data)
    if data is None or value is None:
        return None
    return Latest(data.key, window, where, value)


def _change(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = scope.data(body.get("data"), (*path, "data"), medication=False)
    window = scope.window(body.get("window"), (*path, "window"))
    baseline_raw = body.get("baseline") if isinstance(body.get("baseline"), Mapping) else {}
    baseline = scope.window(baseline_raw.get("window"), (*path, "baseline", "window"), allow_current=True)
    tests = {
        name: _comparisons(body[name], (*path, name), scope, ("number", "quantity"))
        for name in ("absolute", "percent", "ratio")
        if isinstance(body.get(name), Mapping)
    }
    if not tests:
        scope.problem(path, "change needs at least one of: absolute, percent, ratio")
    for compare in tests.get("absolute", ()):
        if isinstance(compare.threshold, Quantity) and data is not None and compare.threshold.unit != data.unit:
            scope.problem((*path, "absolute"), f"absolute change must be in the data unit {data.unit!r}")
    if data is None or baseline is None:
        if baseline is None and "window" not in baseline_raw:
            scope.problem((*path, "baseline"), "change needs baseline.window")
        return None
    if data.unit is None and "absolute" in tests:
        scope.problem((*path, "data"), f"data {data.key!r} needs a unit for an absolute change")
    absolute = tuple(
        Compare(c.op, c.threshold.value if isinstance(c.threshold, Quantity) else c.threshold)
        for c in tests.get("absolute", ())
    )
    return Change(
        data.key,
        window,
        baseline,
        baseline_raw.get("pick", "latest"),
        body.get("direction", "rise"),
        absolute,
        tests.get("percent", ()),
        tests.get("ratio", ()),
        data.unit,
        data.molar_mass,
    )


def _mg_comparisons(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> tuple[Compare, ...]:
    result = []
    for compare in _comparisons(body, path, scope, ("quantity",)):
        threshold = compare.threshold
        if isinstance(threshold, Quantity):
            try:
                result.append(Compare(compare.op, Quantity(convert(threshold.value, threshold.unit or "", "mg"), "mg")))
            except UnitError:
                scope.problem((*path, compare.op), f"dose threshold must be a mass (mg, g, ug), not {threshold.unit!r}")
    return tuple(result)


def _cumulative(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = scope.data(body.get("data"), (*path, "data"), medication=True)
    window = scope.window(body.get("window"), (*path, "window"))
    comparisons = _mg_comparisons(body, path, scope)
    if data is not None and not data.valueset.substance:
        scope.problem(
            (*path, "data"),
            f"value set {data.valueset.id!r} must declare its substance: cumulative "
            "doses never mix ketamine and esketamine",
        )
    if data is None:
        return None
    return CumulativeDose(data.key, window, comparisons, bool(body.get("planned", True)))


def _session_rate(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = scope.data(body.get("data"), (*path, "data"), medication=True)
    window = scope.window(body.get("window"), (*path, "window"))
    period = scope.value(body.get("period", "P7D"), (*path, "period"), ("duration",))
    comparisons = _comparisons(body, path, scope, ("number",))
    if data is None or period is None:
        return None
    return SessionRate(
        data.key, window, period, int(body.get("consecutive", 1)), comparisons, bool(body.get("planned", True))
    )


def _infusion(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = scope.data(body.get("data"), (*path, "data"), medication=True)
    window = scope.window(body.get("window"), (*path, "window"))
    comparisons = _comparisons(body, path, scope, ("duration",))
    return InfusionDuration(data.key, window, comparisons, bool(body.get("planned", True))) if data else None


def _data_list(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> tuple[str, ...]:
    raw = body.get("data")
    keys = raw if isinstance(raw, list) else [raw]
    found = [
        scope.data(k, (*path, "data", i) if isinstance(raw, list) else (*path, "data"), medication=True)
        for i, k in enumerate(keys)
    ]
    return tuple(d.key for d in found if d is not None)


def _continuous(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = _data_list(body, path, scope)
    gap = scope.value(body.get("max_gap"), (*path, "max_gap"), ("duration",))
    comparisons = _comparisons(body, path, scope, ("duration",))
    if not data or gap is None:
        return None
    return ContinuousExposure(data, gap, comparisons, bool(body.get("planned", True)))


def _new_course(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    return NewCourse()


def _new(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = scope.data(body.get("data"), (*path, "data"), medication=False)
    window = scope.window(body.get("window"), (*path, "window"))
    before = scope.value(body.get("before_course", "P365D"), (*path, "before_course"), ("duration",))
    where = _where(body.get("where"), (*path, "where"), scope, data)
    if data is None or before is None:
        return None
    return NewSince(data.key, window, before, body.get("by", "kind"), where)


def _draft_order(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = scope.data(body.get("data"), (*path, "data"), medication=True)
    dose = _mg_comparisons(body["dose"], (*path, "dose"), scope) if isinstance(body.get("dose"), Mapping) else ()
    return DraftOrder(data.key, dose) if data else None


def _planned_gap(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = _data_list(body, path, scope)
    comparisons = _comparisons(body, path, scope, ("duration",))
    return PlannedGap(data, comparisons) if data else None


def _fhirpath(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    expression = scope.fhirpath(body.get("expression"), (*path, "expression"))
    return FhirPathCondition(expression) if expression else None


_BUILDERS: dict[str, Callable[[Mapping[str, Any], tuple[str | int, ...], Scope], Node | None]] = {
    "count": _count,
    "latest": _latest,
    "change": _change,
    "cumulative_dose": _cumulative,
    "session_rate": _session_rate,
    "infusion_duration": _infusion,
    "continuous_exposure": _continuous,
    "new_course": _new_course,
    "new": _new,
    "draft_order": _draft_order,
    "planned_gap": _planned_gap,
    "fhirpath": _fhirpath,
}


def implies(a: Node, b: Node) -> bool:
    """Sound (not complete) structural check that ``a`` being true makes ``b`` true.

    Used by ``rules check`` to find tiers that can never be reached: a later tier whose
    condition implies an earlier tier's condition never gets its turn.
    """
    if a == b:
        return True
    if isinstance(b, Combine) and b.op == "all":
        return all(implies(a, item) for item in b.items)
    if isinstance(b, Combine) and b.op == "any" and any(implies(a, item) for item in b.items):
        return True
    if isinstance(a, Combine) and a.op == "all":
        return any(implies(item, b) for item in a.items)
    if isinstance(a, Combine) and a.op == "any":
        return all(implies(item, b) for item in a.items)
    return False
