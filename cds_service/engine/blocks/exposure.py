"""Blocks over ketamine exposure (sessions, courses, draft orders): doses, rates, infusions, gaps."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from cds_service.clinical import exposure as ex
from cds_service.clinical.timeutil import Duration, duration_seconds, format_duration
from cds_service.clinical.units import UnitError, convert
from cds_service.engine.blocks.base import (
    COMPARISON,
    DATA_KEY,
    DATA_KEYS,
    DURATION,
    WINDOW,
    Block,
    Compare,
    Node,
    Scope,
    compare_all,
    compile_comparisons,
    describe_all,
    range_truth,
    session_evidence,
    threshold_truth,
    window_missing,
)
from cds_service.engine.model import Quantity, Window
from cds_service.engine.trace import Outcome, Truth

if TYPE_CHECKING:
    from cds_service.engine.context import RuleContext

def compile_mg_comparisons(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> tuple[Compare, ...]:
    result = []
    for compare in compile_comparisons(body, path, scope, ("quantity",)):
        threshold = compare.threshold
        if isinstance(threshold, Quantity):
            try:
                result.append(Compare(compare.op, Quantity(convert(threshold.value, threshold.unit or "", "mg"), "mg")))
            except UnitError:
                scope.problem((*path, compare.op), f"dose threshold must be a mass (mg, g, ug), not {threshold.unit!r}")
    return tuple(result)


def _data_list(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> tuple[str, ...]:
    raw = body.get("data")
    keys = raw if isinstance(raw, list) else [raw]
    found = [
        scope.data(k, (*path, "data", i) if isinstance(raw, list) else (*path, "data"), medication=True)
        for i, k in enumerate(keys)
    ]
    return tuple(d.key for d in found if d is not None)


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
            return window_missing(ctx, found, 0)
        sessions, span = found
        total = ex.cumulative_mg(sessions, *span)
        why = ctx.incomplete(self.data)  # sessions that could not be obtained only add
        truth = threshold_truth(total.mg, self.comparisons, math.inf if total.missing or why else 0.0)
        detail = f"{total.mg:g} mg in {len(total.counted)} session(s) {ctx.span_text(span)}"
        detail += f", need {describe_all(self.comparisons)}"
        missing = [f"{s.ref}: {s.dose.how}" for s in total.missing]
        if missing:
            detail += f"; {len(missing)} session(s) without a usable dose"
        missing += why
        evidence = [session_evidence(s) for s in total.counted] if truth else []
        return Outcome(truth, round(total.mg, 3), detail, evidence, missing if truth is Truth.UNKNOWN else [])

    def describe(self) -> str:
        window = f" in {self.window.label}" if self.window else ""
        return f"cumulative {self.data} dose{window} {describe_all(self.comparisons)}"


def _cumulative(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = scope.data(body.get("data"), (*path, "data"), medication=True)
    window = scope.window(body.get("window"), (*path, "window"))
    comparisons = compile_mg_comparisons(body, path, scope)
    if data is not None and not data.valueset.substance:
        scope.problem(
            (*path, "data"),
            f"value set {data.valueset.id!r} must declare its substance: cumulative "
            "doses never mix ketamine and esketamine",
        )
    if data is None:
        return None
    return CumulativeDose(data.key, window, comparisons, bool(body.get("planned", True)))


CUMULATIVE_DOSE = Block(
    "cumulative_dose",
    CumulativeDose,
    _cumulative,
    {"required": ["data"], "properties": {"data": DATA_KEY, "window": WINDOW, "planned": {"type": "boolean"}}},
    usage="cumulative_dose: {data, window, at_least: 1000 mg}",
    true_when="Σ mg of one substance in the window reaches the threshold",
    value="mg",
    thresholds=True,
)


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
            return window_missing(ctx, found, 0)
        sessions = [s for s in found[0] if ex.is_session(s)]
        period = timedelta(seconds=duration_seconds(self.period))
        best, members = ex.max_sessions_in_period(sessions, period, self.consecutive)
        why = ctx.incomplete(self.data)  # missing sessions could only raise the rate
        truth = threshold_truth(best, self.comparisons, math.inf if why else 0.0)
        per = format_duration(period.total_seconds())
        run = f" in each of {self.consecutive} consecutive periods" if self.consecutive > 1 else ""
        detail = f"at most {best} session(s) per {per}{run}, need {describe_all(self.comparisons)}"
        return Outcome(truth, best, detail, [session_evidence(s) for s in members] if truth else [],
                       why if truth is Truth.UNKNOWN else [])

    def describe(self) -> str:
        run = f" for {self.consecutive} consecutive periods" if self.consecutive > 1 else ""
        per = format_duration(duration_seconds(self.period))
        return f"{self.data} sessions per {per} {describe_all(self.comparisons)}{run}"


def _session_rate(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = scope.data(body.get("data"), (*path, "data"), medication=True)
    window = scope.window(body.get("window"), (*path, "window"))
    period = scope.value(body.get("period", "P7D"), (*path, "period"), ("duration",))
    comparisons = compile_comparisons(body, path, scope, ("number",))
    if data is None or period is None:
        return None
    return SessionRate(
        data.key, window, period, int(body.get("consecutive", 1)), comparisons, bool(body.get("planned", True))
    )


SESSION_RATE = Block(
    "session_rate",
    SessionRate,
    _session_rate,
    {
        "required": ["data"],
        "properties": {
            "data": DATA_KEY,
            "window": WINDOW,
            "period": DURATION,
            "consecutive": {"type": "integer", "minimum": 1},
            "planned": {"type": "boolean"},
        },
    },
    usage="session_rate: {data, period: P7D, consecutive: 2, more_than: 3}",
    true_when="sessions per period, in N back-to-back periods",
    value="the best count",
    thresholds=True,
)


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
            return window_missing(ctx, found, 0)
        sessions, span = found
        why = ctx.incomplete(self.data)  # a missing infusion could be longer, or join one found
        merged = ex.merged_intervals([s for s in sessions if ex.is_session(s)])
        if not merged:
            if why:
                return Outcome(Truth.UNKNOWN, 0, f"no {self.data} infusion in the data obtained", missing=why)
            return Outcome(Truth.FALSE, 0, f"no {self.data} infusion {ctx.span_text(span)}")
        start, end, members = max(merged, key=lambda m: m[1] - m[0])
        seconds = (end - start).total_seconds()
        truth = threshold_truth(seconds, self.comparisons, math.inf if why else 0.0)
        detail = f"longest continuous infusion {format_duration(seconds)}, need {describe_all(self.comparisons)}"
        return Outcome(truth, format_duration(seconds), detail, [session_evidence(s) for s in members] if truth else [],
                       why if truth is Truth.UNKNOWN else [])

    def describe(self) -> str:
        return f"longest continuous {self.data} infusion {describe_all(self.comparisons)}"


def _infusion(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = scope.data(body.get("data"), (*path, "data"), medication=True)
    window = scope.window(body.get("window"), (*path, "window"))
    comparisons = compile_comparisons(body, path, scope, ("duration",))
    return InfusionDuration(data.key, window, comparisons, bool(body.get("planned", True))) if data else None


INFUSION_DURATION = Block(
    "infusion_duration",
    InfusionDuration,
    _infusion,
    {"required": ["data"], "properties": {"data": DATA_KEY, "window": WINDOW, "planned": {"type": "boolean"}}},
    usage="infusion_duration: {data, window, at_least: PT48H}",
    true_when="the longest continuous infusion (overlapping infusions merged)",
    value="the duration",
    thresholds=True,
)


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
        why = ctx.incomplete(*self.data)  # missing sessions could only bridge gaps and lengthen the run
        run = ex.continuous_run(sessions, gap)
        if not run or ctx.now - max(s.end for s in run) > gap:
            reason = f"no exposure within {format_duration(gap.total_seconds())} of now"
            if why:
                return Outcome(Truth.UNKNOWN, 0, reason + " in the data obtained", missing=why)
            return Outcome(Truth.FALSE, 0, reason)
        seconds = (max(s.end for s in run) - run[0].start).total_seconds()
        truth = threshold_truth(seconds, self.comparisons, math.inf if why else 0.0)
        detail = (
            f"continuous since {run[0].start.date()} ({format_duration(seconds)}, {len(run)} sessions), "
            f"need {describe_all(self.comparisons)}"
        )
        evidence = (
            [session_evidence(run[0], "start of continuous exposure"), session_evidence(run[-1], "most recent")]
            if truth
            else []
        )
        return Outcome(truth, format_duration(seconds), detail, evidence, why if truth is Truth.UNKNOWN else [])

    def describe(self) -> str:
        gap = format_duration(duration_seconds(self.max_gap))
        return f"continuous {'/'.join(self.data)} exposure (gaps ≤ {gap}) {describe_all(self.comparisons)}"


def _continuous(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = _data_list(body, path, scope)
    gap = scope.value(body.get("max_gap"), (*path, "max_gap"), ("duration",))
    comparisons = compile_comparisons(body, path, scope, ("duration",))
    if not data or gap is None:
        return None
    return ContinuousExposure(data, gap, comparisons, bool(body.get("planned", True)))


CONTINUOUS_EXPOSURE = Block(
    "continuous_exposure",
    ContinuousExposure,
    _continuous,
    {
        "required": ["data", "max_gap"],
        "properties": {"data": DATA_KEYS, "max_gap": DURATION, "planned": {"type": "boolean"}},
    },
    usage="continuous_exposure: {data, max_gap: P14D, at_least: P6M}",
    true_when="exposure without a longer gap, still going",
    value="the duration",
    thresholds=True,
)


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
        why = ctx.course_incomplete()  # a recent session may be among the data that could not be obtained
        if why:
            return Outcome(Truth.UNKNOWN, None, detail + " in the data obtained", missing=why)
        return Outcome(Truth.TRUE, True, detail, [session_evidence(first)])

    def describe(self) -> str:
        return "the draft order starts a new course"


def _new_course(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    return NewCourse()


NEW_COURSE = Block(
    "new_course",
    NewCourse,
    _new_course,
    {"properties": {}},
    usage="new_course: {}",
    true_when="the draft order starts a new course (no session within the course gap before it)",
    value="yes/no",
)


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


def _draft_order(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = scope.data(body.get("data"), (*path, "data"), medication=True)
    dose = compile_mg_comparisons(body["dose"], (*path, "dose"), scope) if isinstance(body.get("dose"), Mapping) else ()
    return DraftOrder(data.key, dose) if data else None


DRAFT_ORDER = Block(
    "draft_order",
    DraftOrder,
    _draft_order,
    {"required": ["data"], "properties": {"data": DATA_KEY, "dose": COMPARISON}},
    usage="draft_order: {data, dose: {above: 84 mg}}",
    true_when="a draft order for this medication (with a planned dose test)",
    value="how many",
)


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
        why = ctx.incomplete(*self.data)  # a later previous session may be missing: the gap can only shrink
        before = [s for s in sessions if not s.planned and ex.is_session(s) and s.start <= first.start]
        if not before:
            if why:
                return Outcome(Truth.UNKNOWN, None, "no earlier session in the data obtained", missing=why)
            return Outcome(Truth.FALSE, None, "no earlier session")
        previous = max(before, key=lambda s: s.end)
        seconds = (first.start - previous.end).total_seconds()
        truth = range_truth(min(seconds, 0.0), seconds, self.comparisons) if why else Truth.of(
            compare_all(self.comparisons, seconds))
        detail = f"{format_duration(max(seconds, 0))} after the previous session, need {describe_all(self.comparisons)}"
        return Outcome(
            truth,
            format_duration(max(seconds, 0)),
            detail,
            [session_evidence(previous, "previous session"), session_evidence(first)] if truth else [],
            why if truth is Truth.UNKNOWN else [],
        )

    def describe(self) -> str:
        return f"draft order starts {describe_all(self.comparisons)} after the previous session"


def _planned_gap(body: Mapping[str, Any], path: tuple[str | int, ...], scope: Scope) -> Node | None:
    data = _data_list(body, path, scope)
    comparisons = compile_comparisons(body, path, scope, ("duration",))
    return PlannedGap(data, comparisons) if data else None



PLANNED_GAP = Block(
    "planned_gap",
    PlannedGap,
    _planned_gap,
    {"required": ["data"], "properties": {"data": DATA_KEYS}},
    usage="planned_gap: {data, below: PT24H}",
    true_when="the draft starts soon after the previous session ends",
    value="the gap",
    thresholds=True,
)
