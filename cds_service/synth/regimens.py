"""Schedules and dosing of realistic ketamine/esketamine regimens (clinical.md §4.1-4.2).

Schedules keep clear of the rule boundaries (24 h between sessions, 3 sessions in 7 days,
2 esketamine sessions in 7 days, 14-day gaps), so a scenario means the same thing for
every seed: e.g. twice-weekly esketamine drifts 40 minutes a week (three-times-weekly 90
minutes), so two sessions on the same weekday are never exactly 7 days apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from cds_service.synth.builder import PatientBuilder, qty

TWICE_WEEKLY = (timedelta(days=3), timedelta(days=4, minutes=40))
THREE_PER_WEEK = (timedelta(days=2), timedelta(days=2), timedelta(days=3, minutes=90))


class ScheduleError(AssertionError):
    """A generated schedule broke the scenario's own timing constraint (a generator bug)."""


def induction_offsets(b: PatientBuilder) -> list[int]:
    """Six induction sessions over 2-3 weeks (2-3 a week): day offsets from the first.

    Gaps of 2-4 days; any four consecutive sessions span at least 8 days, so no 7-day window
    ever holds more than three (KB-04/KB-05 stay quiet for a standard induction).
    """
    while True:
        gaps = [b.choice((2, 3, 3, 4)) for _ in range(5)]
        if 12 <= sum(gaps) <= 19 and all(sum(gaps[i : i + 3]) >= 8 for i in range(3)):
            offsets = [0]
            for gap in gaps:
                offsets.append(offsets[-1] + gap)
            return offsets


def maintenance_days(
    b: PatientBuilder, *, after: int, last: int, interval: tuple[int, int]
) -> list[int]:
    """Session days strictly after ``after`` up to ``last`` with gaps within ``interval`` (inclusive)."""
    lo, hi = interval
    days = [last]
    while days[-1] - after > hi:
        step = b.randint(lo, hi)
        if days[-1] - step - after < lo:  # would crowd ``after``: split what is left instead
            break
        days.append(days[-1] - step)
    remaining = days[-1] - after
    if remaining > hi:  # split an over-long first gap in two
        days.append(after + remaining // 2)
    return sorted(days)


def weights_along(b: PatientBuilder, times: Sequence[datetime], kg: float) -> None:
    """Body weight before the first session and again whenever the last one is > 24 days old."""
    last: datetime | None = None
    for t in times:
        if last is None or t - last > timedelta(days=24):
            at = t - timedelta(days=b.randint(1, 5) if last is None else 0, minutes=30)
            b.weight(at, round(kg + b.uniform(-0.8, 0.8), 1))
            last = at


def ketamine_iv_session(
    b: PatientBuilder, at: datetime, mgkg: float, *, med: str = "ketamine-10", minutes: int = 40,
    reason: str | None = "mdd-recurrent-severe",
) -> dict[str, Any]:
    """A depression session: ``mgkg`` mg/kg IV over 40 minutes (Sanacora 2017)."""
    return b.administration(
        med, at, minutes=minutes, dose=qty(mgkg, "mg/kg"), route="intravenous",
        text=f"{mgkg:g} mg/kg IV over {minutes} minutes", reason=reason,
    )


def depression_course(
    b: PatientBuilder,
    *,
    start_day: int,
    last_day: int,
    kg: float,
    interval: tuple[int, int] = (6, 8),
    maintenance_mgkg: float | None = None,
    induction: bool = True,
    med: str = "ketamine-10",
) -> list[datetime]:
    """Induction (6 × 0.5 mg/kg) from ``start_day`` then maintenance up to ``last_day``; with weights."""
    days: list[int] = []
    if induction:
        days = [start_day + o for o in induction_offsets(b)]
        if days[-1] > last_day:
            raise ScheduleError("induction runs past the last session")
    else:
        days = [start_day]
    if last_day > days[-1]:
        days += maintenance_days(b, after=days[-1], last=last_day, interval=interval)
    mgkg_m = maintenance_mgkg if maintenance_mgkg is not None else b.choice((0.5, 0.6, 0.75))
    times = [b.day(day, b.clinic_hour()) for day in days]
    weights_along(b, times, kg)
    for i, at in enumerate(times):
        ketamine_iv_session(b, at, 0.5 if (induction and i < 6) else mgkg_m, med=med)
    return times


def depression_draft(b: PatientBuilder, day: int, mgkg: float = 0.5, med: str = "ketamine-10") -> dict[str, Any]:
    return b.draft(
        med, b.day(day, b.clinic_hour()), text=f"Ketamine {mgkg:g} mg/kg IV over 40 minutes", route="intravenous",
        dose=qty(mgkg, "mg/kg"), duration_h=40 / 60, reason="mdd-recurrent-severe",
    )


def negative_ua(b: PatientBuilder, at: datetime, *, microscopy: bool = True) -> None:
    b.urinalysis(at, rbc=b.randint(0, 2) if microscopy else None, wbc=b.randint(0, 3) if microscopy else None)


def normal_renal(b: PatientBuilder, at: datetime, *, molar: bool = True) -> None:
    if molar:
        b.observation("creatinine-molar", at, value=b.uniform(58, 82, 0), digits=0, lln=45, uln=90)
    else:
        b.observation("creatinine-mass", at, value=b.uniform(0.66, 0.92, 2), digits=2, lln=0.5, uln=1.0)
    b.observation("egfr", at, value=b.uniform(92, 112, 0), digits=0)


def normal_lfts(b: PatientBuilder, at: datetime) -> None:
    b.observation("alt", at, value=b.uniform(12, 32, 0), digits=0, uln=40)
    b.observation("alp", at, value=b.uniform(55, 95, 0), digits=0, lln=40, uln=120)
    b.observation("ggt", at, value=b.uniform(12, 38, 0), digits=0, uln=50)


def backward(planned: datetime, gaps: Sequence[timedelta], count: int, *, phase: int = 0) -> list[datetime]:
    """``count`` past sessions before ``planned``, cycling through ``gaps`` backwards; ascending."""
    times = []
    t = planned
    for i in range(count):
        t = t - gaps[(phase + i) % len(gaps)]
        times.append(t)
    return sorted(times)


def esketamine_course(
    b: PatientBuilder, planned: datetime, *, weekly: int = 0, twice_weekly: int = 8, three_per_week: int = 0
) -> list[datetime]:
    """Past Spravato session times before a planned one (ascending).

    Counted backwards from ``planned``: ``weekly`` weekly sessions (6-8 days apart), before
    them ``twice_weekly`` sessions twice a week (label weeks 1-4), or ``three_per_week``
    sessions three times a week (off-label, for KB-04).
    """
    times: list[datetime] = []
    t = planned
    for _ in range(weekly):
        t = t - timedelta(days=b.randint(6, 8), minutes=40)
        times.append(t)
    gaps = THREE_PER_WEEK if three_per_week else TWICE_WEEKLY
    count = three_per_week or twice_weekly
    times += backward(t, gaps, count, phase=b.randint(0, len(gaps) - 1))
    return sorted(times)


def esketamine_sessions(
    b: PatientBuilder, times: Sequence[datetime], *, doses: Sequence[int] = (56, 84), devices: str | None = None,
    reason: str = "mdd-recurrent-severe",
) -> list[int]:
    """Record Spravato administrations (15 min, intranasal); returns the doses in mg."""
    given = []
    per_patient = b.choice(doses)
    for i, at in enumerate(times):
        mg = 56 if i == 0 else per_patient
        if devices:
            dose = qty(mg // 28, "{device}", "device")
            b.administration("esketamine-nasal", at, minutes=15, dose=dose, route="intranasal",
                             medication_ref=devices, text=f"{mg} mg ({mg // 28} devices)", reason=reason)
        else:
            b.administration("esketamine-nasal", at, minutes=15, dose=qty(mg, "mg"), route="intranasal",
                             text=f"{mg} mg intranasal", reason=reason)
        given.append(mg)
    return given


def esketamine_draft(b: PatientBuilder, planned: datetime, mg: int, *, devices: bool = False) -> dict[str, Any]:
    if devices:
        contained = b.contained_medication("esketamine-nasal", (28, "mg", 1, "{device}"))
        return b.draft("esketamine-nasal", planned, text=f"Spravato {mg} mg ({mg // 28} devices) intranasal",
                       route="intranasal", dose=qty(mg // 28, "{device}", "device"), duration_h=0.25,
                       contained=contained, reason="mdd-recurrent-severe")
    return b.draft("esketamine-nasal", planned, text=f"Spravato {mg} mg intranasal", route="intranasal",
                   dose=qty(mg, "mg"), duration_h=0.25, reason="mdd-recurrent-severe")


def check_past(b: PatientBuilder, times: Sequence[datetime], margin_h: float = 6) -> None:
    """Every past session started at least ``margin_h`` hours before now."""
    for t in times:
        if t > b.now - timedelta(hours=margin_h):
            raise ScheduleError(f"session at {t} is not in the past")
