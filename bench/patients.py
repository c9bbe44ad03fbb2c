"""Benchmark patients, built deterministically with the synthetic cohort's own builders.

typical: one depression course (6 IV sessions), ~30 Observations, ~10 Conditions, one draft order.
heavy: two years of maintenance (> 200 sessions), > 2,000 Observations, > 100 Conditions, one draft order.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from cds_service.clinical.timeutil import parse_instant
from cds_service.demo import DemoPatient
from cds_service.synth import DEFAULT_NOW
from cds_service.synth.builder import PatientBuilder
from cds_service.synth.codes import CONDITIONS
from cds_service.synth.regimens import (
    depression_course,
    depression_draft,
    induction_offsets,
    ketamine_iv_session,
    negative_ua,
    normal_lfts,
    normal_renal,
)

NOW = DEFAULT_NOW
# Conditions a long record accumulates that the rules ignore, and some they read (resolved ones).
_HISTORY = ("ptsd", "chronic-pain", "fracture", "burn", "frequency", "urgency", "nocturia", "uti", "mdd-single")


def _builder(pid: str) -> PatientBuilder:
    return PatientBuilder(pid, NOW, random.Random(f"kbladder-bench/{pid}"))


def _history(b: PatientBuilder, count: int, span_days: int) -> None:
    """``count`` resolved Conditions spread over the ``span_days`` before the course."""
    keys = [k for k in _HISTORY if k in CONDITIONS]
    for i in range(count):
        onset = b.day(-span_days - 30 * i - b.randint(0, 20), 10)
        b.condition(keys[i % len(keys)], onset, clinical="resolved", abated=onset + (b.day(20) - b.day(0)))


def typical() -> DemoPatient:
    """One induction course: 6 administrations, 30 Observations, 10 Conditions."""
    b = _builder("bench-typical")
    b.patient("female", 41)
    b.condition("mdd-recurrent-severe", b.day(-900, 11))
    _history(b, 9, 400)
    last = -3
    offsets = induction_offsets(b)
    first = last - offsets[-1]
    times = [b.day(first + o, b.clinic_hour()) for o in offsets]
    b.weight(times[0] - (b.day(4) - b.day(0)), 68.0)
    for at in times:
        ketamine_iv_session(b, at, 0.5)
    for days in (first - 10, first + 8, last):  # 3 × (panel, 3 dipsticks, RBC, WBC) = 18
        negative_ua(b, b.day(days, 10))
    for days in (first - 10, first + 8, last):  # 3 × (creatinine, eGFR) = 6
        normal_renal(b, b.day(days, 10))
    normal_lfts(b, b.day(first - 10, 10))  # 3
    b.observation("ipss", b.day(first - 10, 10), value=4, digits=0)
    b.observation("ipss", b.day(last, 10), value=5, digits=0)
    depression_draft(b, 4, 0.5)
    return _patient(b)


def heavy() -> DemoPatient:
    """Two years of maintenance every 2-4 days with labs every 4 days, and a long problem list."""
    b = _builder("bench-heavy")
    b.patient("male", 37)
    b.condition("mdd-recurrent-severe", b.day(-1500, 11))
    _history(b, 110, 760)
    times = depression_course(b, start_day=-730, last_day=-2, kg=84.0, interval=(2, 4))
    for day in range(-728, 0, 4):  # 182 visits × 12 Observations
        at = b.day(day, 8)
        negative_ua(b, at)
        normal_renal(b, at)
        normal_lfts(b, at)
        b.observation("ipss", at, value=b.randint(2, 6), digits=0)
    assert len(times) >= 200
    depression_draft(b, 2, 0.5)
    return _patient(b)


def _patient(b: PatientBuilder) -> DemoPatient:
    """The patient, with its draft session also booked as a proposed appointment (appointment-book)."""
    for draft in b.drafts:
        start = draft["dosageInstruction"][0]["timing"]["repeat"]["boundsPeriod"]["start"]
        b.book(draft, parse_instant(start), minutes=40)
    return DemoPatient(b.pid, "bench", list(b.resources), list(b.drafts), {}, list(b.appointments))


def counts(patient: DemoPatient) -> dict[str, int]:
    found: Counter[str] = Counter(r["resourceType"] for r in patient.resources)
    return dict(found)


def describe(patient: DemoPatient) -> str:
    c = counts(patient)
    return (f"{c.get('MedicationAdministration', 0)} administrations, {c.get('Observation', 0)} observations, "
            f"{c.get('Condition', 0)} conditions")


def resources_of(patient: DemoPatient) -> list[dict[str, Any]]:
    return patient.resources
