"""Test patients in shorthand, in the spirit of AHRQ's CQL Testing Framework.

    - Observation: {code: LOINC#5794-3, value: positive, at: -3d}
    - MedicationAdministration: {medication: SNOMED#776446001, dose: 0.5 mg/kg, at: -60d, duration: 40 min}

expands to full FHIR R4 resources: codes from ``SYSTEM#code [display]``, quantities from
``35 mg`` (UCUM), times relative to the test's fixed ``now`` (``-3d``, ``-36h``, ``-6mo``).
A plain FHIR resource (with ``resourceType``) passes through, relative times expanded.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cds_service.clinical.timeutil import TimeError, iso, parse_relative
from cds_service.clinical.units import UCUM_SYSTEM, normalize_unit
from cds_service.clinical.valueset import canonical_system

SHORTHAND_FIELDS: dict[str, frozenset[str]] = {
    "Observation": frozenset({"id", "code", "value", "at", "status", "uln", "category"}),
    "Condition": frozenset({"id", "code", "onset", "recorded", "status", "abated", "note", "verification"}),
    "MedicationAdministration": frozenset(
        {"id", "medication", "dose", "rate", "at", "duration", "end", "status", "route", "strength"}
    ),
    "MedicationRequest": frozenset(
        {"id", "medication", "dose", "rate", "start", "duration", "status", "route", "strength", "authored", "end"}
    ),
    "MedicationStatement": frozenset({"id", "medication", "dose", "start", "end", "status", "strength"}),
}


class ShorthandError(ValueError):
    """A shorthand value that cannot be expanded; the message names the field."""


def concept(text: str) -> dict[str, Any]:
    """``LOINC#5794-3 Hemoglobin in urine`` → CodeableConcept; plain text → text-only concept."""
    text = str(text).strip()
    head, _, display = text.partition(" ")
    if "#" in head:
        system, _, code = head.partition("#")
        if not system or not code:
            raise ShorthandError(f"code {text!r}: write SYSTEM#code, e.g. LOINC#5794-3")
        coding: dict[str, Any] = {"system": canonical_system(system), "code": code}
        if display:
            coding["display"] = display
        return {"coding": [coding], **({"text": display} if display else {})}
    return {"text": text}


def quantity(text: Any) -> dict[str, Any]:
    """``35 mg`` → a UCUM Quantity (``mcg`` is written as ``ug``)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return {"value": text}
    number, _, unit = str(text).strip().partition(" ")
    try:
        value: float | int = float(number)
    except ValueError as exc:
        raise ShorthandError(f"quantity {text!r}: write a number and a unit, e.g. '35 mg'") from exc
    if value.is_integer():
        value = int(value)
    if not unit:
        return {"value": value}
    unit = unit.strip()
    return {"value": value, "unit": unit, "system": UCUM_SYSTEM, "code": normalize_unit(unit)}


def ratio(text: str) -> dict[str, Any]:
    """``50 mg/mL`` → Ratio 50 mg per 1 mL (a product strength)."""
    number, _, unit = str(text).strip().partition(" ")
    top, _, bottom = unit.rpartition("/")
    if not top or not bottom:
        raise ShorthandError(f"strength {text!r}: write e.g. '50 mg/mL'")
    return {"numerator": quantity(f"{number} {top}"), "denominator": quantity(f"1 {bottom}")}


def value_field(value: Any) -> dict[str, Any]:
    """An observation value: ``35 mg`` (quantity), ``SNOMED#…`` (coded), ``1+`` (text), true."""
    if isinstance(value, bool):
        return {"valueBoolean": value}
    if isinstance(value, int | float):
        return {"valueQuantity": {"value": value}}
    text = str(value).strip()
    head = text.split(" ", 1)[0]
    if "#" in head:
        return {"valueCodeableConcept": concept(text)}
    try:
        float(head)
    except ValueError:
        return {"valueString": text}
    return {"valueQuantity": quantity(text)}


def duration_hours(text: Any) -> float:
    """``40 min``, ``100 h``, ``PT40M`` → hours."""
    from cds_service.clinical.timeutil import duration_seconds, parse_duration
    from cds_service.clinical.units import factor

    text = str(text).strip()
    if text.startswith("P"):
        return duration_seconds(parse_duration(text)) / 3600
    number, _, unit = text.partition(" ")
    try:
        return float(number) * factor(unit or "h", "h")
    except (ValueError, Exception) as exc:
        raise ShorthandError(f"duration {text!r}: write e.g. '40 min', '100 h' or PT40M") from exc


class Expander:
    """Expands one test case's shorthand at a fixed ``now`` for one patient."""

    def __init__(self, now: datetime, patient_id: str) -> None:
        self.now = now
        self.patient_id = patient_id
        self.counter = 0

    def time(self, value: Any, field: str) -> str:
        try:
            return iso(parse_relative(str(value), self.now))
        except TimeError as exc:
            raise ShorthandError(f"{field}: {exc}") from exc

    def _id(self, given: Any, prefix: str) -> str:
        self.counter += 1
        return str(given) if given else f"{prefix}{self.counter}"

    def patient(self, raw: Mapping[str, Any] | None) -> dict[str, Any]:
        raw = dict(raw or {})
        patient: dict[str, Any] = {"resourceType": "Patient", "id": self.patient_id}
        if "gender" in raw:
            patient["gender"] = raw["gender"]
        if "birthDate" in raw:
            patient["birthDate"] = str(raw["birthDate"])
        elif "age" in raw:
            patient["birthDate"] = f"{self.now.year - int(raw['age']):04d}-{self.now.month:02d}-01"
        return patient

    def expand(self, item: Mapping[str, Any], *, draft: bool = False) -> dict[str, Any]:
        """One shorthand item (``{Type: {...}}``) or raw resource → a FHIR resource."""
        if "resourceType" in item:
            return self._raw(item)
        if len(item) != 1:
            raise ShorthandError(f"write one resource per item as {{Type: {{...}}}}, got keys {sorted(item)}")
        ((rtype, fields),) = item.items()
        fields = dict(fields or {})
        builder = getattr(self, f"_{rtype}", None)
        if builder is None:
            raise ShorthandError(
                f"no shorthand for {rtype!r}; use Observation, Condition, "
                "MedicationAdministration, MedicationRequest, MedicationStatement or a raw resource"
            )
        unknown = set(fields) - SHORTHAND_FIELDS[rtype]
        if unknown:
            raise ShorthandError(
                f"{rtype}: unknown shorthand field(s) {sorted(unknown)}; known: {sorted(SHORTHAND_FIELDS[rtype])}"
            )
        return builder(fields, draft) if rtype == "MedicationRequest" else builder(fields)

    def _raw(self, item: Mapping[str, Any]) -> dict[str, Any]:
        def walk(value: Any, key: str = "") -> Any:
            if isinstance(value, Mapping):
                return {k: walk(v, k) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(v, key) for v in value]
            if isinstance(value, str) and _is_time_key(key) and (value == "now" or value[:1] in "+-"):
                return self.time(value, key)
            return value

        return walk(dict(item))

    def _subject(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.patient_id}"}

    def _Observation(self, f: dict[str, Any]) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "resourceType": "Observation",
            "id": self._id(f.get("id"), "obs"),
            "status": f.get("status", "final"),
            "code": concept(_required(f, "code", "Observation")),
            "subject": self._subject(),
            "effectiveDateTime": self.time(f.get("at", "now"), "Observation.at"),
        }
        if "value" in f:
            resource.update(value_field(f["value"]))
        if "uln" in f:
            resource["referenceRange"] = [{"high": quantity(f["uln"])}]
        if "category" in f:
            resource["category"] = [concept(f["category"])]
        return resource

    def _Condition(self, f: dict[str, Any]) -> dict[str, Any]:
        status = f.get("status", "active")
        resource: dict[str, Any] = {
            "resourceType": "Condition",
            "id": self._id(f.get("id"), "cond"),
            "clinicalStatus": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": status}]
            },
            "code": concept(_required(f, "code", "Condition")),
            "subject": self._subject(),
            "onsetDateTime": self.time(f.get("onset", "now"), "Condition.onset"),
        }
        if "verification" in f:
            resource["verificationStatus"] = {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": f["verification"]}
                ]
            }
        if "recorded" in f:
            resource["recordedDate"] = self.time(f["recorded"], "Condition.recorded")
        if "abated" in f:
            resource["abatementDateTime"] = self.time(f["abated"], "Condition.abated")
        if "note" in f:
            resource["note"] = [{"text": str(f["note"])}]
        return resource

    def _medication(self, f: dict[str, Any], resource: dict[str, Any], kind: str) -> None:
        medication = concept(_required(f, "medication", kind))
        if "strength" in f:
            resource["contained"] = [
                {
                    "resourceType": "Medication",
                    "id": "med",
                    "code": medication,
                    "ingredient": [{"itemCodeableConcept": medication, "strength": ratio(f["strength"])}],
                }
            ]
            resource["medicationReference"] = {"reference": "#med"}
        else:
            resource["medicationCodeableConcept"] = medication

    def _MedicationAdministration(self, f: dict[str, Any]) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "resourceType": "MedicationAdministration",
            "id": self._id(f.get("id"), "admin"),
            "status": f.get("status", "completed"),
            "subject": self._subject(),
        }
        self._medication(f, resource, "MedicationAdministration")
        start = self.time(f.get("at", "now"), "MedicationAdministration.at")
        if "duration" in f or "end" in f:
            end = (
                self.time(f["end"], "MedicationAdministration.end")
                if "end" in f
                else iso(parse_relative(start, self.now) + _hours(duration_hours(f["duration"])))
            )
            resource["effectivePeriod"] = {"start": start, "end": end}
        else:
            resource["effectiveDateTime"] = start
        dosage: dict[str, Any] = {}
        if "dose" in f:
            dosage["dose"] = quantity(f["dose"])
        if "rate" in f:
            dosage["rateQuantity"] = quantity(f["rate"])
        if "route" in f:
            dosage["route"] = {"text": str(f["route"])}
        if dosage:
            resource["dosage"] = dosage
        return resource

    def _MedicationRequest(self, f: dict[str, Any], draft: bool) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "id": self._id(f.get("id"), "draft"),
            "status": f.get("status", "draft" if draft else "active"),
            "intent": "order",
            "subject": self._subject(),
        }
        self._medication(f, resource, "MedicationRequest")
        if "authored" in f:
            resource["authoredOn"] = self.time(f["authored"], "MedicationRequest.authored")
        dosage: dict[str, Any] = {}
        repeat: dict[str, Any] = {}
        if "start" in f:
            bounds = {"start": self.time(f["start"], "MedicationRequest.start")}
            if "end" in f:
                bounds["end"] = self.time(f["end"], "MedicationRequest.end")
            repeat["boundsPeriod"] = bounds
        if "duration" in f:
            repeat["duration"] = round(duration_hours(f["duration"]) * 60, 3)
            repeat["durationUnit"] = "min"
        if repeat:
            dosage["timing"] = {"repeat": repeat}
        amount: dict[str, Any] = {}
        if "dose" in f:
            amount["doseQuantity"] = quantity(f["dose"])
        if "rate" in f:
            amount["rateQuantity"] = quantity(f["rate"])
        if amount:
            dosage["doseAndRate"] = [amount]
        if "route" in f:
            dosage["route"] = {"text": str(f["route"])}
        if dosage:
            resource["dosageInstruction"] = [dosage]
        return resource

    def _MedicationStatement(self, f: dict[str, Any]) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "resourceType": "MedicationStatement",
            "id": self._id(f.get("id"), "stmt"),
            "status": f.get("status", "active"),
            "subject": self._subject(),
        }
        self._medication(f, resource, "MedicationStatement")
        period = {"start": self.time(f.get("start", "now"), "MedicationStatement.start")}
        if "end" in f:
            period["end"] = self.time(f["end"], "MedicationStatement.end")
        resource["effectivePeriod"] = period
        if "dose" in f:
            resource["dosage"] = [{"doseAndRate": [{"doseQuantity": quantity(f["dose"])}]}]
        return resource


def _hours(hours: float) -> Any:
    from datetime import timedelta

    return timedelta(hours=hours)


def _required(fields: Mapping[str, Any], name: str, rtype: str) -> Any:
    if name not in fields:
        raise ShorthandError(f"{rtype}: {name} is required")
    return fields[name]


def _is_time_key(key: str) -> bool:
    return key.endswith(("DateTime", "Instant", "Date")) or key in {"start", "end", "authoredOn", "issued", "authored"}
