"""Blocks over findings (observations, conditions, procedures): count, latest, change, new."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cds_service.clinical import exposure as ex
from cds_service.clinical.findings import Finding
from cds_service.clinical.timeutil import Duration, duration_seconds, format_duration
from cds_service.clinical.units import UnitError, convert
from cds_service.engine.blocks.base import (
    COMPARISON,
    DATA_KEY,
    DURATION,
    WHERE,
    WINDOW,
    Block,
    Compare,
    Node,
    Scope,
    compare_all,
    compile_comparisons,
    describe_all,
    finding_evidence,
    ref,
    session_evidence,
    threshold_truth,
    window_missing,
)
from cds_service.engine.blocks.filters import ValueTest, Where, compile_value_test, compile_where
from cds_service.engine.model import DataRequirement, Quantity, Window
from cds_service.engine.trace import Outcome, Truth

if TYPE_CHECKING:
    from cds_service.engine.context import RuleContext

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
            return window_missing(ctx, span, 0)
        data = ctx.data(self.data)
        why = ctx.incomplete(self.data)  # unavailable data could only add to the count
        if data.is_medication:
            sessions = [s for s in ctx.sessions(self.data, planned=self.planned) if ex.overlaps(s, *span)]
            count = len(sessions)
            truth = threshold_truth(count, self.comparisons, math.inf if why else 0.0)
            return Outcome(
                truth,
                count,
                f"{count} session(s) {ctx.span_text(span)}, need {describe_all(self.comparisons)}",
                [session_evidence(s) for s in sessions] if truth else [],
                why if truth is Truth.UNKNOWN else [],
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
        # Each undecided finding could add at most one; data that could not be obtained, any number.
        truth = threshold_truth(count, self.comparisons, math.inf if why else len(undecided))
        undecided += why
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


def _count(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = scope.data(body.get("data"), (*path, "data"))
    window = scope.window(body.get("window"), (*path, "window"))
    where = compile_where(body.get("where"), (*path, "where"), scope, data)
    if data is not None and data.is_medication and where is not None:
        scope.problem(
            (*path, "where"), "where filters findings; for medication data use draft_order or cumulative_dose"
        )
    comparisons = compile_comparisons(body, path, scope, ("number",), Compare("at_least", 1.0))
    if data is None:
        return None
    return Count(data.key, window, where, comparisons, body.get("distinct"), bool(body.get("planned", True)))


COUNT = Block(
    "count",
    Count,
    _count,
    {
        "required": ["data"],
        "properties": {
            "data": DATA_KEY,
            "window": WINDOW,
            "where": WHERE,
            "distinct": {"enum": ["kind", "code", "day"]},
            "planned": {"type": "boolean"},
        },
    },
    usage="count: {data, window, where, at_least: 1, distinct: kind|code|day}",
    true_when="enough findings (or sessions) in the window pass the filter",
    value="the count",
    thresholds=True,
)


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
            return window_missing(ctx, span)
        data = ctx.data(self.data)
        why = ctx.incomplete(self.data)  # a later result may be among the data that could not be obtained
        candidates = [f for f in ctx.findings(self.data) if ctx.inside(f.time, span) and f.value is not None]
        if self.where:
            candidates = [f for f in candidates if self.where.test(f, data, ctx)[0] is Truth.TRUE]
        if not candidates:
            if why:
                return Outcome(Truth.UNKNOWN, None, f"no {self.data} {ctx.span_text(span)} in the data obtained",
                               missing=why)
            return Outcome(Truth.FALSE, None, f"no {self.data} {ctx.span_text(span)}")
        latest = candidates[-1]
        truth, note = self.value.test(latest)
        shown = latest.value.display() if latest.value else ""
        detail = f"latest {self.data} {shown}, need {self.value.describe()}"
        if why:
            truth, detail = Truth.UNKNOWN, detail + " (a later result may be missing)"
        return Outcome(
            truth,
            shown,
            detail,
            [finding_evidence(latest)] if truth else [],
            ([note] if note else []) + why if truth is Truth.UNKNOWN else [],
        )

    def describe(self) -> str:
        window = f" in {self.window.label}" if self.window else ""
        return f"latest {self.data}{window} {self.value.describe()}"


def _latest(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = scope.data(body.get("data"), (*path, "data"), medication=False)
    window = scope.window(body.get("window"), (*path, "window"))
    where = compile_where(body.get("where"), (*path, "where"), scope, data)
    value = compile_value_test(body.get("value"), (*path, "value"), scope, data)
    if data is None or value is None:
        return None
    return Latest(data.key, window, where, value)


LATEST = Block(
    "latest",
    Latest,
    _latest,
    {
        "required": ["data", "value"],
        "properties": {"data": DATA_KEY, "window": WINDOW, "where": WHERE, "value": ref("value_test")},
    },
    usage="latest: {data, window, where, value: {...}}",
    true_when="the most recent value passes the test",
    value="the value",
)


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
            return window_missing(ctx, span)
        why = ctx.incomplete(self.data)  # the latest value or the baseline may be among the missing data
        numeric = [(f, self._interval(f)) for f in ctx.findings(self.data)]
        unreadable = [f"{f.ref}: {f.label} {f.value.display() if f.value else ''!s} cannot be read as a number"
                      for f, n in numeric if n is None and f.value is not None and ctx.inside(f.time, span)]
        current = [(f, n) for f, n in numeric if ctx.inside(f.time, span) and n is not None]
        if not current:
            if unreadable or why:
                return Outcome(Truth.UNKNOWN, None, f"no readable {self.data} value in the data obtained",
                               missing=[*unreadable, *why])
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
        if why:
            truth, detail = Truth.UNKNOWN, detail + " (the latest value or the baseline may be missing)"
            missing = [*missing, *why]
        evidence = evidence if truth else []
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


def _change(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = scope.data(body.get("data"), (*path, "data"), medication=False)
    window = scope.window(body.get("window"), (*path, "window"))
    baseline_raw = body.get("baseline") if isinstance(body.get("baseline"), Mapping) else {}
    baseline = scope.window(baseline_raw.get("window"), (*path, "baseline", "window"), allow_current=True)
    tests = {
        name: compile_comparisons(body[name], (*path, name), scope, ("number", "quantity"))
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


CHANGE = Block(
    "change",
    Change,
    _change,
    {
        "required": ["data", "baseline", "direction"],
        "properties": {
            "data": DATA_KEY,
            "window": WINDOW,
            "baseline": {
                "type": "object",
                "additionalProperties": False,
                "required": ["window"],
                "properties": {"window": WINDOW, "pick": {"enum": ["latest", "min", "max", "first"]}},
            },
            "direction": {"enum": ["rise", "fall"]},
            "absolute": COMPARISON,
            "percent": COMPARISON,
            "ratio": COMPARISON,
        },
    },
    usage="change: {data, window, baseline: {window, pick}, direction: rise|fall, absolute|percent|ratio: {...}}",
    true_when="the latest value moved enough from the baseline "
    "(`pick`: latest, min, max, first in the baseline window)",
    value="the change",
)


ENDED_STATUS = frozenset({"resolved", "inactive", "remission"})


def _ongoing_at(condition: Finding, when: datetime) -> bool:
    """Was this Condition still present at ``when``: abated later, or not recorded as ended at all."""
    if condition.end is not None:
        return condition.end >= when
    return condition.status not in ENDED_STATUS


@dataclass(frozen=True, slots=True)
class NewSince:
    """A finding in the window whose class had no record in the lookback before the course.

    A problem still active when the lookback began (a Condition with an earlier onset that had not
    abated) was there before the course too, however old its onset: it is not new (issue 11 B9).
    """

    data: str
    window: Window | None
    before: Duration
    by: str  # kind | code
    where: Where | None

    def evaluate(self, ctx: RuleContext) -> Outcome:
        span = ctx.window(self.window)
        if isinstance(span, str):
            return window_missing(ctx, span, 0)
        start = ctx.anchor_time("course_start")
        if start is None:
            return window_missing(ctx, "no ketamine course", 0)
        # "New" needs the whole record: an earlier record of the class, or an earlier course start, may be missing.
        why = ctx.incomplete(self.data) + [w for w in ctx.course_incomplete() if w not in ctx.incomplete(self.data)]
        data = ctx.data(self.data)
        prior_from = start - self.before
        classes_before = {
            self._class(f, data) for f in ctx.findings(self.data) if f.time and prior_from <= f.time < start
        } | {
            self._class(f, data)
            for f in ctx.record.findings(data.valueset, data.resources)
            if f.resource_type == "Condition" and f.time and f.time < prior_from and _ongoing_at(f, prior_from)
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
        if why:
            return Outcome(Truth.UNKNOWN, len(new), detail + "; the record before the course is incomplete",
                           missing=why)
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


def _new(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = scope.data(body.get("data"), (*path, "data"), medication=False)
    window = scope.window(body.get("window"), (*path, "window"))
    before = scope.value(body.get("before_course", "P365D"), (*path, "before_course"), ("duration",))
    where = compile_where(body.get("where"), (*path, "where"), scope, data)
    if data is None or before is None:
        return None
    return NewSince(data.key, window, before, body.get("by", "kind"), where)



NEW = Block(
    "new",
    NewSince,
    _new,
    {
        "required": ["data"],
        "properties": {
            "data": DATA_KEY,
            "window": WINDOW,
            "before_course": DURATION,
            "by": {"enum": ["kind", "code"]},
            "where": WHERE,
        },
    },
    usage="new: {data, window, before_course: P365D, by: kind}",
    true_when="a finding whose class was absent in the year before the course (a Condition still active when "
    "that year began, whatever its onset, counts as present)",
    value="how many",
)
