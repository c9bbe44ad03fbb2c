"""RuleContext: one rule's view of one patient at one ``now``.

It resolves windows and anchors (``course_start``, ``last_session`` …), applies each data
requirement's lookback, and memoises named conditions so tiers that share a condition
evaluate it once and the trace shows it once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from cds_service.clinical import exposure as ex
from cds_service.clinical.findings import Finding
from cds_service.clinical.record import PatientRecord
from cds_service.clinical.timeutil import duration_seconds, iso
from cds_service.engine.model import Anchor, DataRequirement, Ordinal, Quantity, Rule, Window
from cds_service.engine.trace import Outcome, Truth

Span = tuple[datetime | None, datetime]
# Which resource type each kind of exposure interval comes from; a draft order ("planned") is the
# hook's context, not record data, so it counts whatever resource types a data key reads.
SESSION_SOURCE = {"administration": "MedicationAdministration", "statement": "MedicationStatement",
                  "supply": "MedicationRequest"}
ANCHORS = ("now", "course_start", "course_end", "first_session", "last_session", "planned_start", "current")


class RuleContext:
    """Facts and memoised outcomes for evaluating one rule."""

    def __init__(self, rule: Rule, record: PatientRecord, now: datetime, hook: str) -> None:
        self.rule = rule
        self.record = record
        self.now = now
        self.hook = hook
        self.outcomes: dict[str, Outcome] = {}
        self._evaluating: set[str] = set()
        self._course: list[ex.Session] | None = None
        self._bundle: dict[str, Any] | None = None
        self._memo: dict[tuple[Any, ...], list[Any]] = {}
        self.variables: dict[str, Any] = {
            "now": iso(now),
            "hook": hook,
            **{name: fhirpath_value(p.value) for name, p in rule.parameters.items()},
        }

    # ------------------------------------------------------------ data

    def data(self, key: str) -> DataRequirement:
        return self.rule.data[key]

    def incomplete(self, *keys: str) -> list[str]:
        """Why the data of ``keys`` may be incomplete (its resource types could not all be obtained); [] if complete.

        A block that finds nothing, or too little, in such data cannot say "none": its answer is UNKNOWN
        with these reasons, unless what it did find already decides it (a match found stays a match).
        """
        reasons: list[str] = []
        for key in keys:
            for rtype in self.rule.data[key].resources:
                why = self.record.unavailable.get(rtype)
                if why and why not in reasons:
                    reasons.append(why)
        return reasons

    def course_incomplete(self) -> list[str]:
        """Why the course (its start, its sessions, its last session) may be incomplete; [] if complete."""
        return self.incomplete(*self._course_keys())

    def _course_keys(self) -> tuple[str, ...]:
        if self.rule.course:
            return tuple(self.rule.course.exposure)
        return tuple(k for k, d in self.rule.data.items() if d.is_medication)

    def _since(self, data: DataRequirement) -> datetime | None:
        return self.now - data.lookback if data.lookback is not None else None

    def findings(self, key: str) -> list[Finding]:
        """Findings of data ``key`` inside its lookback, oldest first (memoised: a shared list, do not mutate)."""
        memo = ("findings", key)
        found = self._memo.get(memo)
        if found is None:
            data = self.rule.data[key]
            since = self._since(data)
            everything = self.record.findings(data.valueset, data.resources, history=data.history, unit=data.unit)
            found = self._memo[memo] = [f for f in everything
                                        if since is None or (f.time is not None and f.time >= since)]
        return found

    def memoised(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """What a block derives once per call and reuses (``key`` names it; the value is shared, do not mutate)."""
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = build()
        return found

    def sessions(self, key: str, *, planned: bool = True) -> list[ex.Session]:
        """Sessions of data ``key`` inside its lookback (memoised: a shared list, do not mutate).

        Near-conditions ask once per finding: a long record would otherwise refilter every session each time.
        """
        memo = ("sessions", key, planned)
        found = self._memo.get(memo)
        if found is None:
            data = self.rule.data[key]
            weights = self.rule.data.get(data.body_weight) if data.body_weight else None
            since = self._since(data)
            sessions = self.record.sessions(data.valueset, weights.valueset if weights else None, self.now)
            found = self._memo[memo] = [
                s for s in sessions
                if (planned or not s.planned) and (since is None or s.end >= since)
                and (s.planned or SESSION_SOURCE.get(s.kind) in data.resources)
            ]
        return found

    def sessions_in(
        self, key: str, window: Window | None, *, planned: bool = True
    ) -> tuple[list[ex.Session], Span] | str:
        """Sessions of ``key`` starting inside ``window``, with its span; or why the window does not exist."""
        span = self.window(window)
        if isinstance(span, str):
            return span
        return [s for s in self.sessions(key, planned=planned) if ex.overlaps(s, *span)], span

    def bundle(self) -> dict[str, Any]:
        """The patient's data as a searchset Bundle, the root for FHIRPath conditions."""
        if self._bundle is None:
            self._bundle = {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": r} for r in self.record.resources()],
            }
        return self._bundle

    # ------------------------------------------------------------ courses and anchors

    def course_gap(self) -> timedelta:
        course = self.rule.course
        return timedelta(seconds=duration_seconds(course.gap)) if course else timedelta(days=28)

    def all_course_sessions(self) -> list[ex.Session]:
        return sorted((s for k in self._course_keys() for s in self.sessions(k)), key=lambda s: (s.start, s.end))

    def course_sessions(self) -> list[ex.Session]:
        """Sessions of the latest course that was actually given (a longer gap starts a new course).

        A draft order that starts a new course does not hide the course before it: findings
        during and after the last course given still count when ketamine is ordered again.
        Only a patient who never had ketamine has a course made of the draft alone.
        """
        if self._course is None:
            courses = ex.courses(self.all_course_sessions(), self.course_gap())
            given = [c for c in courses if any(not s.planned for s in c)]
            self._course = (given or courses or [[]])[-1]
        return self._course

    def anchor_time(self, name: str, current: datetime | None = None) -> datetime | None:
        if name == "now":
            return self.now
        if name == "current":
            return current
        course = self.course_sessions()
        if name == "course_start":
            return course[0].start if course else None
        if name == "course_end":
            return max(s.end for s in course) if course else None
        if name == "last_session":
            actual = [s for s in course if not s.planned]
            return max(s.end for s in actual) if actual else None
        if name == "first_session":
            sessions = [s for s in self.all_course_sessions() if not s.planned]
            return sessions[0].start if sessions else None
        if name == "planned_start":
            planned = [s for s in self.all_course_sessions() if s.planned]
            return planned[0].start if planned else None
        raise KeyError(name)

    def _resolve(self, anchor: Anchor, current: datetime | None) -> datetime | None:
        at = self.anchor_time(anchor.name, current)
        if at is None or anchor.offset is None:
            return at
        return at + anchor.offset if anchor.sign > 0 else at - anchor.offset

    def window(self, window: Window | None, current: datetime | None = None) -> Span | str:
        """(start, end) of a window, or a sentence saying why it does not exist for this patient (memoised:
        the rule's blocks ask for the same few windows again and again)."""
        if window is None:
            return (None, self.now)
        return self.memoised(("window", window, current), lambda: self._window(window, current))

    def _window(self, window: Window, current: datetime | None) -> Span | str:
        start = self._resolve(window.start, current) if window.start else None
        if window.start is not None and start is None:
            return f"window {window.label}: no {window.start.name.replace('_', ' ')}"
        end = self._resolve(window.end, current) if window.end else self.now
        if end is None:
            end_name = window.end.name.replace("_", " ") if window.end else "end"
            return f"window {window.label}: no {end_name}"
        return (start, end)

    @staticmethod
    def inside(time: datetime | None, span: Span) -> bool:
        if time is None:
            return False
        start, end = span
        return (start is None or time >= start) and time <= end

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def span_text(span: Span) -> str:
        start, end = span
        if start is None:
            return f"up to {end.date()}"
        return f"from {start.date()} to {end.date()}"

    # ------------------------------------------------------------ named conditions

    def condition(self, name: str) -> Outcome:
        """Evaluate a named condition once; cycles are refused at load, guarded here too."""
        if name not in self.outcomes:
            if name in self._evaluating:
                return Outcome(Truth.UNKNOWN, None, f"cycle through {name}")
            self._evaluating.add(name)
            self.outcomes[name] = self.rule.conditions[name].evaluate(self)
            self._evaluating.discard(name)
        return self.outcomes[name]


def fhirpath_value(value: Any) -> Any:
    if isinstance(value, Quantity | Ordinal):
        return value.value
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float | str | bool):
        return value
    return str(value)
