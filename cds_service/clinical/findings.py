"""Findings: Observations, Conditions and other coded events reduced to what rules compare.

A finding keeps a reference to its resource (for evidence and FHIRPath), its time, its
codes and a normalised value: a quantity with its UCUM unit, an ordinal (dipstick
``trace`` = 0.5, ``1+`` = 1 …), codes, text or a boolean.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cds_service.clinical.timeutil import TimeError, parse_instant
from cds_service.clinical.units import quantity_unit

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


def ordinal_of_text(text: str | None) -> float | None:
    """The ordinal a lab wrote as text (``Trace``, ``2+``, ``moderate``), or None."""
    if not text:
        return None
    return _ORDINAL_WORDS.get(_SPACES.sub(" ", text.strip().lower()))


@dataclass(frozen=True, slots=True)
class Value:
    """An observation value in the forms rules compare."""

    quantity: float | None = None
    unit: str | None = None
    ordinal: float | None = None
    codes: tuple[tuple[str, str], ...] = ()
    text: str | None = None
    boolean: bool | None = None

    def display(self) -> str:
        """The value as a clinician reads it in an evidence table."""
        if self.quantity is not None:
            number = f"{self.quantity:g}"
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
    "Condition": ("onsetDateTime", "onsetPeriod", "recordedDate"),
    "Procedure": ("performedDateTime", "performedPeriod"),
    "DiagnosticReport": ("effectiveDateTime", "effectivePeriod", "issued"),
    "ServiceRequest": ("occurrenceDateTime", "occurrencePeriod", "authoredOn"),
    "AllergyIntolerance": ("onsetDateTime", "onsetPeriod", "recordedDate"),
    "QuestionnaireResponse": ("authored",),
}


def event_time(resource: Mapping[str, Any]) -> tuple[datetime | None, datetime | None]:
    """When an event happened: (start, end); end is None for an instant."""
    for name in _TIME_FIELDS.get(str(resource.get("resourceType")), ()):
        raw = resource.get(name)
        if not raw:
            continue
        try:
            if isinstance(raw, Mapping):
                start = parse_instant(raw["start"]) if raw.get("start") else None
                end = parse_instant(raw["end"]) if raw.get("end") else None
                if start or end:
                    return start or end, end
            else:
                return parse_instant(raw), None
        except TimeError:
            continue
    return None, None


def status_of(resource: Mapping[str, Any]) -> str | None:
    """The status that decides whether a record counts (Condition: clinical status)."""
    if resource.get("resourceType") in ("Condition", "AllergyIntolerance"):
        verification = _first_code(resource.get("verificationStatus"))
        if verification in EXCLUDED_STATUS:
            return verification
        return _first_code(resource.get("clinicalStatus")) or "active"
    status = resource.get("status")
    return str(status) if status else None


def _first_code(concept: Any) -> str | None:
    if isinstance(concept, Mapping):
        for coding in concept.get("coding") or ():
            if isinstance(coding, Mapping) and coding.get("code"):
                return str(coding["code"])
    return None


def value_of(resource: Mapping[str, Any], ordinal_codes: Mapping[tuple[str, str], float]) -> Value | None:
    """Normalise ``value[x]`` of an Observation; coded results get their ordinal from the rule set."""
    if "valueQuantity" in resource and isinstance(resource["valueQuantity"], Mapping):
        quantity = resource["valueQuantity"]
        number = quantity.get("value")
        if isinstance(number, int | float) and not isinstance(number, bool):
            return Value(quantity=float(number), unit=quantity_unit(quantity))
        return None
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
        return Value(ordinal=ordinal_of_text(text), text=text)
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
