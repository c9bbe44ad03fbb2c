"""Ketamine exposure: sessions with their dose in mg, courses, cumulative dose, session rates.

The dose arithmetic follows clinical.md §4.3: a dose in mass units; mg/kg × the most recent
body weight; a rate × the infusion's duration; volume (or devices) × the product's
strength. A dose that none of these can convert is *missing* — the session still counts
for frequency, but never for a cumulative sum, and the note says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cds_service.clinical.timeutil import TimeError, format_duration, parse_instant
from cds_service.clinical.units import UnitError, convert, convertible, factor, quantity_unit

WEIGHT_RECENT = timedelta(days=30)
WEIGHT_OLDEST = timedelta(days=365)

COUNTED_ADMIN_STATUS = frozenset({"completed", "in-progress", "stopped"})  # stopped: only with a dose (§4.3)
COUNTED_STATEMENT_STATUS = frozenset({"active", "completed", "intended"})
COUNTED_REQUEST_STATUS = frozenset({"active", "completed"})


@dataclass(frozen=True, slots=True)
class Weight:
    """A body weight in kg at a time, for mg/kg doses."""

    time: datetime
    kg: float
    ref: str


@dataclass(frozen=True, slots=True)
class Dose:
    """A dose in mg, or the reason it could not be known; ``how`` says how it was derived."""

    mg: float | None
    how: str
    quality: str | None = None  # a data-quality caveat that does not void the dose

    @property
    def missing(self) -> bool:
        return self.mg is None


@dataclass(frozen=True, slots=True)
class Session:
    """One exposure: an administration, a statement, a supply or a planned (draft) order."""

    ref: str
    kind: str  # "administration" | "statement" | "supply" | "planned"
    start: datetime
    end: datetime
    dose: Dose
    label: str
    matched_by: str  # "code" | "text"
    route: str | None = None

    @property
    def planned(self) -> bool:
        return self.kind == "planned"

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600


# ---------------------------------------------------------------- dose arithmetic


def weight_at(weights: Sequence[Weight], at: datetime) -> tuple[Weight | None, str | None]:
    """Most recent weight at or before ``at``: ≤ 30 days old is fine, ≤ 365 days is flagged."""
    best = None
    for weight in weights:
        if weight.time <= at and (best is None or weight.time > best.time):
            best = weight
    if best is None or at - best.time > WEIGHT_OLDEST:
        return None, None
    if at - best.time > WEIGHT_RECENT:
        return best, f"body weight {best.kg:g} kg is {(at - best.time).days} days old"
    return best, None


def _strength_mg_per(medication: Mapping[str, Any] | None, unit: str) -> float | None:
    """mg of drug per one ``unit`` (mL, {device}…) from Medication.ingredient.strength."""
    if not medication:
        return None
    for ingredient in medication.get("ingredient") or ():
        strength = ingredient.get("strength") if isinstance(ingredient, Mapping) else None
        if not isinstance(strength, Mapping):
            continue
        numerator, denominator = strength.get("numerator") or {}, strength.get("denominator") or {}
        n_unit, d_unit = quantity_unit(numerator), quantity_unit(denominator)
        n_val, d_val = numerator.get("value"), denominator.get("value", 1)
        if not (n_unit and d_unit and isinstance(n_val, int | float) and isinstance(d_val, int | float)):
            continue
        if d_val and convertible(n_unit, "mg") and convertible(unit, d_unit):
            return n_val * factor(n_unit, "mg") / d_val * factor(unit, d_unit)
    return None


def dose_in_mg(
    dose: Mapping[str, Any] | None,
    rate: Mapping[str, Any] | None,
    hours: float | None,
    at: datetime,
    weights: Sequence[Weight],
    medication: Mapping[str, Any] | None,
) -> Dose:
    """Total mg of one session from a FHIR dose Quantity or rate (Quantity or Ratio) × hours."""
    if dose:
        return _amount_in_mg(dose, at, weights, medication, "dose")
    if rate:
        if hours is None or hours <= 0:
            return Dose(None, "rate given but the infusion has no duration")
        if "numerator" in rate:  # rateRatio: numerator per denominator time
            numerator, denominator = rate.get("numerator") or {}, rate.get("denominator") or {}
            d_unit = quantity_unit(denominator) or ""
            d_val = denominator.get("value", 1)
            if not isinstance(d_val, int | float) or not d_val or not convertible(d_unit, "h"):
                return Dose(None, "rate ratio without a time denominator")
            per_hour = 1 / (d_val * factor(d_unit, "h"))
            amount = _amount_in_mg(numerator, at, weights, medication, "rate")
            if amount.missing:
                return amount
            total = amount.mg * per_hour * hours  # type: ignore[operator]
            return Dose(total, f"{amount.how} per {d_val:g} {d_unit} × {format_duration(hours * 3600)}", amount.quality)
        return _rate_in_mg(rate, hours, at, weights, medication)
    return Dose(None, "no dose or rate recorded")


def _amount_in_mg(
    quantity: Mapping[str, Any],
    at: datetime,
    weights: Sequence[Weight],
    medication: Mapping[str, Any] | None,
    what: str,
) -> Dose:
    value, unit = quantity.get("value"), quantity_unit(quantity)
    if not isinstance(value, int | float) or isinstance(value, bool) or not unit:
        return Dose(None, f"{what} has no numeric value with a unit")
    try:
        if convertible(unit, "mg"):
            mg = convert(value, unit, "mg")
            return Dose(mg, f"{value:g} {unit}")
        if convertible(unit, "mg/kg"):
            weight, quality = weight_at(weights, at)
            if weight is None:
                return Dose(None, f"{value:g} {unit} but no body weight in the year before")
            mg = convert(value, unit, "mg/kg") * weight.kg
            return Dose(mg, f"{value:g} {unit} × {weight.kg:g} kg", quality)
        per_unit = _strength_mg_per(medication, unit)
        if per_unit is not None:
            return Dose(value * per_unit, f"{value:g} {unit} × {per_unit:g} mg/{unit}")
    except UnitError:
        pass
    return Dose(None, f"{what} {value:g} {unit} cannot be converted to mg")


def _rate_in_mg(
    rate: Mapping[str, Any],
    hours: float,
    at: datetime,
    weights: Sequence[Weight],
    medication: Mapping[str, Any] | None,
) -> Dose:
    value, unit = rate.get("value"), quantity_unit(rate)
    if not isinstance(value, int | float) or isinstance(value, bool) or not unit:
        return Dose(None, "rate has no numeric value with a unit")
    span = format_duration(hours * 3600)
    try:
        if convertible(unit, "mg/h"):
            return Dose(convert(value, unit, "mg/h") * hours, f"{value:g} {unit} × {span}")
        if convertible(unit, "mg/kg/h"):
            weight, quality = weight_at(weights, at)
            if weight is None:
                return Dose(None, f"{value:g} {unit} but no body weight in the year before")
            mg = convert(value, unit, "mg/kg/h") * weight.kg * hours
            return Dose(mg, f"{value:g} {unit} × {weight.kg:g} kg × {span}", quality)
        if convertible(unit, "mL/h"):
            per_ml = _strength_mg_per(medication, "mL")
            if per_ml is not None:
                mg = convert(value, unit, "mL/h") * hours * per_ml
                return Dose(mg, f"{value:g} {unit} × {span} × {per_ml:g} mg/mL")
            return Dose(None, f"{value:g} {unit} but the product strength (mg/mL) is unknown")
    except UnitError:
        pass
    return Dose(None, f"rate {value:g} {unit} cannot be converted to mg")


# ---------------------------------------------------------------- sessions from resources


def _period(raw: Any) -> tuple[datetime | None, datetime | None]:
    try:
        if isinstance(raw, Mapping):
            start = parse_instant(raw["start"]) if raw.get("start") else None
            end = parse_instant(raw["end"]) if raw.get("end") else None
            return start, end
        if isinstance(raw, str):
            return parse_instant(raw), None
    except TimeError:
        pass
    return None, None


def _first(items: Any) -> Mapping[str, Any]:
    if isinstance(items, list) and items and isinstance(items[0], Mapping):
        return items[0]
    return {}


def session_from_administration(
    resource: Mapping[str, Any],
    ref: str,
    label: str,
    matched_by: str,
    weights: Sequence[Weight],
    medication: Mapping[str, Any] | None,
    now: datetime,
    *,
    order: tuple[str, Mapping[str, Any]] | None = None,
    order_medication: Mapping[str, Any] | None = None,
) -> Session | None:
    """A MedicationAdministration that counts (completed / in-progress) as a session.

    An administration that records no dose or rate of its own takes them from the order it carries out
    (``request`` → MedicationRequest.dosageInstruction.doseAndRate): a rate runs for the administration's
    own period, mg/kg uses the latest weight, and the dose says "dose from the order".
    """
    if resource.get("status") not in COUNTED_ADMIN_STATUS:
        return None
    start, end = _period(resource.get("effectivePeriod") or resource.get("effectiveDateTime"))
    if start is None:
        return None
    if end is None:
        end = now if resource.get("status") == "in-progress" and "effectivePeriod" in resource else start
    dosage = resource.get("dosage") or {}
    hours = (end - start).total_seconds() / 3600 or None
    own_rate = dosage.get("rateQuantity") or dosage.get("rateRatio")
    if dosage.get("dose") or own_rate:
        dose = dose_in_mg(dosage.get("dose"), own_rate, hours, start, weights, medication)
    elif order is not None:
        dose = dose_from_order(order, hours, start, weights, medication or order_medication)
    else:
        dose = Dose(None, "no dose or rate recorded, and no order (request) to take it from")
    if resource.get("status") == "stopped" and dose.missing:
        return None  # a stopped administration counts for what was given; with no dose, nothing is known given
    return Session(ref, "administration", start, end, dose, label, matched_by, _route(dosage))


def dose_from_order(
    order: tuple[str, Mapping[str, Any]],
    hours: float | None,
    at: datetime,
    weights: Sequence[Weight],
    medication: Mapping[str, Any] | None,
) -> Dose:
    """The dose of one administration from its order's first doseAndRate: a dose, or a rate × its hours."""
    ref, request = order
    amount = _first(_first(request.get("dosageInstruction")).get("doseAndRate"))
    rate = amount.get("rateQuantity") or amount.get("rateRatio")
    if not amount.get("doseQuantity") and not rate:
        return Dose(None, f"no dose or rate on the administration nor on its order {ref}")
    found = dose_in_mg(amount.get("doseQuantity"), None if amount.get("doseQuantity") else rate, hours, at, weights,
                       medication)
    how = f"dose from the order {ref}: {found.how}"
    return Dose(found.mg, how, found.quality)


def session_from_statement(
    resource: Mapping[str, Any],
    ref: str,
    label: str,
    matched_by: str,
    weights: Sequence[Weight],
    medication: Mapping[str, Any] | None,
    now: datetime,
) -> Session | None:
    """A MedicationStatement (patient-reported or external use) as an exposure interval.

    An active statement without an end is still going on at ``now``; its dose is the dose per
    administration × administrations per day (``timing.repeat``) × days.
    """
    if resource.get("status") not in COUNTED_STATEMENT_STATUS:
        return None
    start, end = _period(resource.get("effectivePeriod") or resource.get("effectiveDateTime"))
    start = start or end
    if start is None:
        return None
    if end is None:
        end = max(now, start) if resource.get("status") == "active" else start
    dosage = _first(resource.get("dosage"))
    dose = interval_dose(dosage, start, end, weights, medication)
    return Session(ref, "statement", start, end, dose, label, matched_by, _route(dosage))


def doses_per_day(repeat: Mapping[str, Any]) -> float | None:
    """Administrations per day from ``timing.repeat`` (frequency per period periodUnit)."""
    frequency, period, unit = repeat.get("frequency", 1), repeat.get("period"), repeat.get("periodUnit")
    if not isinstance(period, int | float) or not period or not isinstance(unit, str):
        return None
    unit = {"a": "a_j", "mo": "mo_j"}.get(unit, unit)  # FHIR units of time → UCUM (Julian year, month)
    try:
        return float(frequency) / (period * factor(unit, "d"))
    except (UnitError, TypeError, ValueError):
        return None


def interval_dose(
    dosage: Mapping[str, Any], start: datetime, end: datetime, weights: Sequence[Weight],
    medication: Mapping[str, Any] | None,
) -> Dose:
    """Total mg over [start, end] of a repeated dose: dose × doses per day × days (at least one dose)."""
    amount = _first(dosage.get("doseAndRate"))
    per_dose = dose_in_mg(amount.get("doseQuantity"), None, None, start, weights, medication)
    days = (end - start).total_seconds() / 86400
    if per_dose.missing or days <= 0:
        return per_dose
    per_day = doses_per_day((dosage.get("timing") or {}).get("repeat") or {})
    if per_day is None:
        return Dose(None, f"{per_dose.how} per dose, but how often is not recorded (timing.repeat)")
    count = max(1.0, per_day * days)
    return Dose(per_dose.mg * count, f"{per_dose.how} × {count:.0f} doses over {days:.0f} d",  # type: ignore[operator]
                per_dose.quality)


def session_from_request(
    resource: Mapping[str, Any],
    ref: str,
    label: str,
    matched_by: str,
    weights: Sequence[Weight],
    medication: Mapping[str, Any] | None,
    now: datetime,
    *,
    planned: bool,
) -> Session | None:
    """A MedicationRequest: a draft order is planned exposure; an active one a take-home supply."""
    if not planned and resource.get("status") not in COUNTED_REQUEST_STATUS:
        return None
    dosage = _first(resource.get("dosageInstruction"))
    timing = dosage.get("timing") or {}
    repeat = timing.get("repeat") or {}
    start, bound_end = _period(repeat.get("boundsPeriod"))
    events = timing.get("event") or []
    if start is None and events:
        start, _ = _period(events[0])
    if start is None:
        # A draft without a planned time is planned for now; a past supply starts when written.
        start = now if planned else _period(resource.get("authoredOn"))[0]
        if start is None:
            return None
    hours = _duration_hours(repeat)
    amount = _first(dosage.get("doseAndRate"))
    if planned:  # one planned session: the next administration of the order
        end = start + timedelta(hours=hours) if hours else start
        rate = amount.get("rateQuantity") or amount.get("rateRatio")
        dose = dose_in_mg(amount.get("doseQuantity"), rate, hours, start, weights, medication)
        return Session(ref, "planned", start, end, dose, label, matched_by, _route(dosage))
    end = bound_end or _supply_end(resource, start)
    if end is None:
        end = max(now, start) if resource.get("status") == "active" else start
    dose = interval_dose(dosage, start, end, weights, medication)
    return Session(ref, "supply", start, end, dose, label, matched_by, _route(dosage))


def _supply_end(resource: Mapping[str, Any], start: datetime) -> datetime | None:
    """End of a take-home supply: start + dispenseRequest.expectedSupplyDuration."""
    duration = (resource.get("dispenseRequest") or {}).get("expectedSupplyDuration") or {}
    value, unit = duration.get("value"), quantity_unit(duration)
    if isinstance(value, int | float) and unit:
        try:
            return start + timedelta(hours=value * factor(unit, "h"))
        except UnitError:
            return None
    return None


def _duration_hours(repeat: Mapping[str, Any]) -> float | None:
    value, unit = repeat.get("duration"), repeat.get("durationUnit")
    if isinstance(value, int | float) and isinstance(unit, str):
        try:
            return value * factor(unit, "h")
        except UnitError:
            return None
    return None


def _route(dosage: Mapping[str, Any]) -> str | None:
    route = dosage.get("route")
    if isinstance(route, Mapping):
        if route.get("text"):
            return str(route["text"])
        coding = _first(route.get("coding"))
        return str(coding.get("display") or coding.get("code") or "") or None
    return None


# ---------------------------------------------------------------- exposure arithmetic


def courses(sessions: Sequence[Session], gap: timedelta) -> list[list[Session]]:
    """Split sessions into courses: a new course starts after more than ``gap`` without exposure."""
    ordered = sorted(sessions, key=lambda s: (s.start, s.end))
    result: list[list[Session]] = []
    latest_end: datetime | None = None
    for session in ordered:
        if latest_end is None or session.start - latest_end > gap:
            result.append([])
        result[-1].append(session)
        latest_end = session.end if latest_end is None else max(latest_end, session.end)
    return result


@dataclass(frozen=True, slots=True)
class CumulativeDose:
    """A sum of known doses in mg, and the sessions whose dose is missing."""

    mg: float
    counted: tuple[Session, ...]
    missing: tuple[Session, ...]


def cumulative_mg(
    sessions: Sequence[Session], start: datetime | None = None, end: datetime | None = None
) -> CumulativeDose:
    """Σ mg of the sessions given; sessions without a known dose are listed, never guessed.

    A session that lasts (an infusion, a months-long statement) counts in proportion to the
    part of it inside [start, end]: a constant rate over its length.
    """
    counted = tuple(s for s in sessions if not s.dose.missing)
    missing = tuple(s for s in sessions if s.dose.missing)
    return CumulativeDose(sum((s.dose.mg or 0.0) * overlap_fraction(s, start, end) for s in counted), counted, missing)


def overlap_fraction(session: Session, start: datetime | None, end: datetime | None) -> float:
    """The share of a session's duration inside [start, end] (1 for an instant inside it)."""
    length = (session.end - session.start).total_seconds()
    if length <= 0:
        return 1.0
    lo = max(session.start, start) if start else session.start
    hi = min(session.end, end) if end else session.end
    return max(0.0, (hi - lo).total_seconds()) / length


def overlaps(session: Session, start: datetime | None, end: datetime) -> bool:
    """True when a session (an instant or an interval) touches [start, end]."""
    return session.start <= end and (start is None or session.end >= start)


def is_session(session: Session) -> bool:
    """An administration or a planned one: what "sessions" and "infusions" count (not supplies)."""
    return session.kind in ("administration", "planned")


def max_sessions_in_period(
    sessions: Sequence[Session], period: timedelta, consecutive: int = 1
) -> tuple[int, list[Session]]:
    """Most sessions found in ``consecutive`` back-to-back periods, taking the weakest period.

    With ``consecutive=2`` and a 7-day period this answers "> 3 sessions in 7 days for
    ≥ 2 consecutive weeks": for every candidate end time we count each of the two weeks
    before it and keep the smaller count; the result is the best such minimum. A count only
    grows when a period's upper edge reaches a session, so the candidate ends are every
    session start shifted by 0 … ``consecutive - 1`` periods (not the starts alone).
    """
    starts = sorted(s.start for s in sessions)
    if not starts:
        return 0, []
    best, best_end = 0, starts[-1]
    for end in sorted({t + period * k for t in starts for k in range(consecutive)}):
        counts = []
        for k in range(consecutive):
            hi, lo = end - period * k, end - period * (k + 1)
            counts.append(sum(1 for t in starts if lo < t <= hi))
        weakest = min(counts)
        if weakest > best:
            best, best_end = weakest, end
    lo = best_end - period * consecutive
    return best, [s for s in sessions if lo < s.start <= best_end]


def merged_intervals(sessions: Sequence[Session]) -> list[tuple[datetime, datetime, list[Session]]]:
    """Overlapping or touching infusions merged into one continuous interval each."""
    merged: list[tuple[datetime, datetime, list[Session]]] = []
    for session in sorted(sessions, key=lambda s: s.start):
        if merged and session.start <= merged[-1][1]:
            start, end, members = merged[-1]
            merged[-1] = (start, max(end, session.end), [*members, session])
        else:
            merged.append((session.start, session.end, [session]))
    return merged


def continuous_run(sessions: Sequence[Session], max_gap: timedelta) -> list[Session]:
    """The latest run of sessions with no gap longer than ``max_gap`` between them."""
    runs = courses(sessions, max_gap)
    return runs[-1] if runs else []
