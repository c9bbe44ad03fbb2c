"""Findings: Observations, Conditions and other coded events reduced to what rules compare.

A finding keeps a reference to its resource (for evidence and FHIRPath), its time, its
codes and a normalised value: a quantity with its UCUM unit, an ordinal (dipstick
``trace`` = 0.5, ``1+`` = 1 …), codes, text or a boolean.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cds_service.clinical.timeutil import TimeError, parse_instant
from cds_service.clinical.units import UnitError, factor, quantity_unit

# Dipstick and culture wording as labs write it, on one ordinal scale.
_ORDINAL_WORDS: dict[str, float] = {
    "neg": 0.0,
    "negative": 0.0,
    "nil": 0.0,
    "none": 0.0,
    "not detected": 0.0,
    "absent": 0.0,
    "-": 0.0,
    "trace": 0.5,
    "tr": 0.5,
    "±": 0.5,
    "+/-": 0.5,
    "pos": 1.0,
    "positive": 1.0,
    "detected": 1.0,
    "present": 1.0,
    "small": 1.0,
    "+": 1.0,
    "1+": 1.0,
    "moderate": 2.0,
    "++": 2.0,
    "2+": 2.0,
    "large": 3.0,
    "+++": 3.0,
    "3+": 3.0,
    "++++": 4.0,
    "4+": 4.0,
}
ORDINAL_NAMES: dict[float, str] = {0.0: "negative", 0.5: "trace", 1.0: "1+", 2.0: "2+", 3.0: "3+", 4.0: "4+"}
_SPACES = re.compile(r"\s+")

EXCLUDED_STATUS = frozenset({"entered-in-error", "cancelled", "refuted", "not-done"})
# A problem that is over: history, not a current finding. Counted only by data that asks for history.
HISTORY_STATUS = frozenset({"inactive", "resolved", "remission"})


def ordinal_of_text(text: str | None) -> float | None:
    """The ordinal a lab wrote as text (``Trace``, ``2+``, ``moderate``), or None."""
    if not text:
        return None
    return _ORDINAL_WORDS.get(_SPACES.sub(" ", text.strip().lower()))


@dataclass(frozen=True, slots=True)
class Bounds:
    """A result known only as a range: ``10-20``, ``>100``, ``<3``, a ``valueRange`` or a Quantity comparator.

    ``None`` is an open side; ``low_open``/``high_open`` say the bound itself is excluded (``>100``).
    """

    low: float | None
    high: float | None
    low_open: bool = False
    high_open: bool = False

    def scaled(self, factor: float) -> Bounds:
        """The same range in another unit (a positive conversion factor)."""
        return Bounds(
            None if self.low is None else self.low * factor,
            None if self.high is None else self.high * factor,
            self.low_open,
            self.high_open,
        )

    def display(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{self.low:g}-{self.high:g}"
        if self.low is not None:
            return f"{'>' if self.low_open else '≥'}{self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '≤'}{self.high:g}"
        return "any"


@dataclass(frozen=True, slots=True)
class Value:
    """An observation value in the forms rules compare."""

    quantity: float | None = None
    unit: str | None = None
    ordinal: float | None = None
    codes: tuple[tuple[str, str], ...] = ()
    text: str | None = None
    boolean: bool | None = None
    bounds: Bounds | None = None  # a range instead of one number (quantity is then None)

    def display(self) -> str:
        """The value as a clinician reads it in an evidence table."""
        if self.quantity is not None or self.bounds is not None:
            number = f"{self.quantity:g}" if self.quantity is not None else self.bounds.display()  # type: ignore[union-attr]
            return f"{number} {self.unit}" if self.unit else number
        if self.text:
            return self.text
        if self.ordinal is not None:
            return ORDINAL_NAMES.get(self.ordinal, f"{self.ordinal:g}")
        if self.boolean is not None:
            return "yes" if self.boolean else "no"
        if self.codes:
            return " ".join(f"{code}" for _, code in self.codes)
        return ""


def bounds_hold(op: str, threshold: float, bounds: Bounds) -> bool | None:
    """Compare a range with a threshold conservatively: True or False only when every value in it agrees.

    ``above 25`` holds for ``>30`` and ``30-40`` (the low bound is above), fails for ``<20``, and is
    undecided (None) for ``10-50``: part of the range is above and part is not.
    """
    lo, hi = bounds.low, bounds.high
    if op in ("at_least", "above"):
        if lo is not None and (lo > threshold or (lo == threshold and (op == "at_least" or bounds.low_open))):
            return True
        if hi is not None and (hi < threshold or (hi == threshold and (op == "above" or bounds.high_open))):
            return False
        return None
    if op in ("at_most", "below"):
        if hi is not None and (hi < threshold or (hi == threshold and (op == "at_most" or bounds.high_open))):
            return True
        if lo is not None and (lo > threshold or (lo == threshold and (op == "below" or bounds.low_open))):
            return False
        return None
    if op == "equals":
        if lo is not None and hi is not None and lo == hi == threshold and not (bounds.low_open or bounds.high_open):
            return True
        if (lo is not None and (lo > threshold or (lo == threshold and bounds.low_open))) or (
            hi is not None and (hi < threshold or (hi == threshold and bounds.high_open))
        ):
            return False
        return None
    return None


# "10-20", "10 - 20 /hpf", ">100", "< 3", "≥5", ">= 5 RBC/HPF": a number or a range with an optional unit.
_NUMBER = r"(\d+(?:[.,]\d+)?)"
_RANGE_TEXT = re.compile(rf"^\s*{_NUMBER}\s*(?:-|–|to)\s*{_NUMBER}\s*(?P<unit>[^\d\s].*)?$", re.IGNORECASE)
_LIMIT_TEXT = re.compile(rf"^\s*(?P<op>>=|<=|≥|≤|>|<)\s*{_NUMBER}\s*(?P<unit>[^\d\s].*)?$")
_PLAIN_TEXT = re.compile(rf"^\s*{_NUMBER}\s*(?P<unit>[^\d\s].*)?$")


def _num(text: str) -> float:
    return float(text.replace(",", "."))


def quantity_of_text(text: str) -> tuple[float | None, Bounds | None, str | None] | None:
    """A number or range a lab wrote as text, with the unit after it: (number, bounds, unit), or None."""
    match = _RANGE_TEXT.match(text)
    if match:
        low, high = sorted((_num(match.group(1)), _num(match.group(2))))
        return None, Bounds(low, high), _unit_text(match.group("unit"))
    match = _LIMIT_TEXT.match(text)
    if match:
        number, op = _num(match.group(2)), match.group("op")
        bounds = (
            Bounds(number, None, low_open=op == ">")
            if op in (">", ">=", "≥")
            else Bounds(None, number, high_open=op == "<")
        )
        return None, bounds, _unit_text(match.group("unit"))
    match = _PLAIN_TEXT.match(text)
    if match:
        return _num(match.group(1)), None, _unit_text(match.group("unit"))
    return None


def _unit_text(text: str | None) -> str | None:
    return text.strip() or None if text else None


def _quantity_value(quantity: Mapping[str, Any]) -> Value | None:
    """valueQuantity, honouring ``comparator`` (``>100`` is a range, never the number 100)."""
    number = quantity.get("value")
    if not isinstance(number, int | float) or isinstance(number, bool):
        return None
    unit = quantity_unit(quantity)
    comparator = quantity.get("comparator")
    if comparator in (">", ">="):
        return Value(unit=unit, bounds=Bounds(float(number), None, low_open=comparator == ">"))
    if comparator in ("<", "<="):
        return Value(unit=unit, bounds=Bounds(None, float(number), high_open=comparator == "<"))
    return Value(quantity=float(number), unit=unit)


def _range_value(raw: Mapping[str, Any]) -> Value | None:
    """valueRange: low and high Quantities (either may be absent), in the unit of the one given."""
    low, high = raw.get("low"), raw.get("high")
    low = low if isinstance(low, Mapping) and isinstance(low.get("value"), int | float) else None
    high = high if isinstance(high, Mapping) and isinstance(high.get("value"), int | float) else None
    if low is None and high is None:
        return None
    unit = quantity_unit(low or high)  # type: ignore[arg-type]
    if low is not None and high is not None and quantity_unit(high) not in (None, unit):
        return Value(text=f"{low['value']:g} {unit} - {high['value']:g} {quantity_unit(high)}")  # mixed units
    return Value(unit=unit, bounds=Bounds(
        float(low["value"]) if low is not None else None, float(high["value"]) if high is not None else None))


@dataclass(frozen=True, slots=True)
class Finding:
    """One coded event of the patient's record."""

    ref: str
    resource_type: str
    time: datetime | None
    end: datetime | None
    label: str
    value: Value | None
    status: str | None
    resource: Mapping[str, Any]
    uln: tuple[float, str | None] | None = None  # referenceRange.high, for "× ULN" thresholds


def resource_ref(resource: Mapping[str, Any], index: int) -> str:
    """``Type/id``, or ``Type/#n`` for a resource without id (test shorthand, contained)."""
    rid = resource.get("id")
    return f"{resource.get('resourceType')}/{rid if rid else f'#{index}'}"


def code_of(resource: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The CodeableConcept that says what a non-medication resource is about."""
    code = resource.get("code")
    return code if isinstance(code, Mapping) else None


def concept_label(concept: Mapping[str, Any] | None) -> str:
    """Short human label: CodeableConcept.text, else the first display, else the first code."""
    if not concept:
        return ""
    if isinstance(concept.get("text"), str):
        return concept["text"]
    for coding in concept.get("coding") or ():
        if isinstance(coding, Mapping) and coding.get("display"):
            return str(coding["display"])
    for coding in concept.get("coding") or ():
        if isinstance(coding, Mapping) and coding.get("code"):
            return str(coding["code"])
    return ""


_TIME_FIELDS: dict[str, tuple[str, ...]] = {
    "Observation": ("effectiveDateTime", "effectiveInstant", "effectivePeriod", "issued"),
    "Procedure": ("performedDateTime", "performedPeriod"),
    "DiagnosticReport": ("effectiveDateTime", "effectivePeriod", "issued"),
    "ServiceRequest": ("occurrenceDateTime", "occurrencePeriod", "authoredOn"),
    "QuestionnaireResponse": ("authored",),
}
# Resources whose time is an onset: onset[x] when given in any form, the recorded date only without one.
_ONSET_TYPES = frozenset({"Condition", "AllergyIntolerance"})
_ONSET_FIELDS = ("onsetDateTime", "onsetPeriod", "onsetAge", "onsetRange", "onsetString")


def event_time(
    resource: Mapping[str, Any], birth: datetime | None = None
) -> tuple[datetime | None, datetime | None]:
    """When an event happened: (start, end); end is None for an instant; (None, None) when unknown.

    A problem's onset is placed wherever FHIR lets it be written: a date, a period by its bounds, an age
    (``onsetAge``) or an age range (``onsetRange``) from the birth date. An onset that cannot be placed
    (text such as "childhood", an age without a birth date) leaves the time unknown: the recorded date
    is when someone wrote it down, not when it began, and must never move an old problem into a course.
    """
    rtype = str(resource.get("resourceType"))
    if rtype in _ONSET_TYPES:
        if any(name in resource for name in _ONSET_FIELDS):
            return _onset(resource, birth)
        return _time_field(resource.get("recordedDate"))
    for name in _TIME_FIELDS.get(rtype, ()):
        raw = resource.get(name)
        if not raw:
            continue
        found = _time_field(raw)
        if found[0] is not None:
            return found
    return None, None


def _time_field(raw: Any) -> tuple[datetime | None, datetime | None]:
    try:
        if isinstance(raw, Mapping):
            start = parse_instant(raw["start"]) if raw.get("start") else None
            end = parse_instant(raw["end"]) if raw.get("end") else None
            if start or end:
                return start or end, end
        elif isinstance(raw, str):
            return parse_instant(raw), None
    except TimeError:
        pass
    return None, None


def _onset(resource: Mapping[str, Any], birth: datetime | None) -> tuple[datetime | None, datetime | None]:
    if resource.get("onsetDateTime") or resource.get("onsetPeriod"):
        return _time_field(resource.get("onsetDateTime") or resource.get("onsetPeriod"))
    if isinstance(resource.get("onsetAge"), Mapping):
        at = _after_birth(birth, resource["onsetAge"])
        return at, None
    if isinstance(resource.get("onsetRange"), Mapping):
        low = _after_birth(birth, resource["onsetRange"].get("low"))
        high = _after_birth(birth, resource["onsetRange"].get("high"))
        if low is None and high is None:
            return None, None
        return low or high, high
    return None, None  # onsetString, or an onset that does not parse


def _after_birth(birth: datetime | None, age: Any) -> datetime | None:
    """birth + an Age quantity (``12 a``, ``18 mo``); None without a birth date or a time unit."""
    if birth is None or not isinstance(age, Mapping):
        return None
    value, unit = age.get("value"), quantity_unit(age)
    if not isinstance(value, int | float) or isinstance(value, bool) or not unit:
        return None
    try:
        days = value * factor(_AGE_UNITS.get(unit.strip().lower(), unit), "d")
    except UnitError:
        return None
    return birth + timedelta(days=days)


# Age units as EHRs write them (FHIR Age is UCUM a/mo/wk/d; text units are common).
_AGE_UNITS = {"y": "a", "yr": "a", "yrs": "a", "year": "a", "years": "a", "a": "a", "mo": "mo", "month": "mo",
              "months": "mo", "wk": "wk", "week": "wk", "weeks": "wk", "d": "d", "day": "d", "days": "d"}


def birth_date(patient: Mapping[str, Any] | None) -> datetime | None:
    """Patient.birthDate as an instant (start of the day, UTC), or None."""
    raw = patient.get("birthDate") if patient else None
    try:
        return parse_instant(raw) if isinstance(raw, str) else None
    except TimeError:
        return None


def status_of(resource: Mapping[str, Any]) -> str | None:
    """The status that decides whether a record counts (Condition: clinical status).

    A Condition with an abatement but no clinical status is over (FHIR requires the status to be
    inactive, resolved or remission when abatement is given): it is read as ``resolved``.
    """
    if resource.get("resourceType") in ("Condition", "AllergyIntolerance"):
        verification = _first_code(resource.get("verificationStatus"))
        if verification in EXCLUDED_STATUS:
            return verification
        clinical = _first_code(resource.get("clinicalStatus"))
        if clinical:
            return clinical
        if any(key.startswith("abatement") for key in resource):
            return "resolved"
        return "active"
    status = resource.get("status")
    return str(status) if status else None


def _first_code(concept: Any) -> str | None:
    if isinstance(concept, Mapping):
        for coding in concept.get("coding") or ():
            if isinstance(coding, Mapping) and coding.get("code"):
                return str(coding["code"])
    return None


def value_of(resource: Mapping[str, Any], ordinal_codes: Mapping[tuple[str, str], float]) -> Value | None:
    """Normalise ``value[x]`` of an Observation; coded results get their ordinal from the rule set.

    Numbers are read as labs write them: a ``valueRange``, a Quantity with a comparator, or text such as
    ``10-20``, ``>100`` or ``5 RBC/HPF`` become a number or a range (:class:`Bounds`) with their unit.
    """
    if "valueQuantity" in resource and isinstance(resource["valueQuantity"], Mapping):
        return _quantity_value(resource["valueQuantity"])
    if isinstance(resource.get("valueRange"), Mapping):
        return _range_value(resource["valueRange"])
    if "valueCodeableConcept" in resource and isinstance(resource["valueCodeableConcept"], Mapping):
        concept = resource["valueCodeableConcept"]
        codes = tuple(
            (str(c.get("system")), str(c.get("code")))
            for c in concept.get("coding") or ()
            if isinstance(c, Mapping) and c.get("code")
        )
        ordinal = next((ordinal_codes[c] for c in codes if c in ordinal_codes), None)
        text = concept_label(concept) or None
        if ordinal is None:
            ordinal = ordinal_of_text(text)
        return Value(ordinal=ordinal, codes=codes, text=text)
    if isinstance(resource.get("valueString"), str):
        text = resource["valueString"]
        ordinal = ordinal_of_text(text)
        parsed = quantity_of_text(text) if ordinal is None else None
        if parsed is not None:
            number, bounds, unit = parsed
            return Value(quantity=number, unit=unit, bounds=bounds, text=text)
        return Value(ordinal=ordinal, text=text)
    if isinstance(resource.get("valueBoolean"), bool):
        flag = resource["valueBoolean"]
        return Value(boolean=flag, ordinal=1.0 if flag else 0.0)
    if isinstance(resource.get("valueInteger"), int):
        return Value(quantity=float(resource["valueInteger"]))
    return None


def upper_limit(resource: Mapping[str, Any]) -> tuple[float, str | None] | None:
    """``referenceRange[0].high`` as (value, unit): the lab's upper limit of normal."""
    for reference in resource.get("referenceRange") or ():
        high = reference.get("high") if isinstance(reference, Mapping) else None
        if isinstance(high, Mapping) and isinstance(high.get("value"), int | float):
            return float(high["value"]), quantity_unit(high)
    return None
