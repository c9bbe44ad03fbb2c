"""Build one synthetic patient's FHIR R4 resources: ids, times, quantities, coded values.

Every resource id is ``<patient id>-<kind>-<n>``, so ids are stable for a seed and unique
across the cohort. Times are built from the reference ``now`` only (never the clock):
``day(-3, 10.5)`` is 10:30 UTC three calendar days before ``now``'s date.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cds_service.synth.codes import (
    COND_CATEGORY,
    COND_CLINICAL,
    COND_VERIFICATION,
    CONDITIONS,
    MEDICATIONS,
    MRN_SYSTEM,
    OBS_CATEGORY,
    OBSERVATIONS,
    RESULTS,
    UCUM,
    concept,
)

# Which Observation/Condition ids a kind gets (short, readable ids).
_KIND = {
    "Observation": "obs",
    "Condition": "cond",
    "MedicationAdministration": "ma",
    "MedicationRequest": "mr",
    "MedicationStatement": "ms",
    "Medication": "med",
}


def iso(moment: datetime) -> str:
    """FHIR instant in UTC with seconds: ``2026-06-01T09:00:00Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def qty(value: float, code: str, unit: str | None = None) -> dict[str, Any]:
    """A UCUM Quantity; ``unit`` is the human spelling (``mcg/kg/min``) when it differs from the code."""
    number: float | int = round(float(value), 3)
    if float(number).is_integer():
        number = int(number)
    return {"value": number, "unit": unit or code, "system": UCUM, "code": code}


class PatientBuilder:
    """Accumulates one patient's resources and draft orders."""

    def __init__(self, pid: str, now: datetime, rng: random.Random) -> None:
        self.pid = pid
        self.now = now
        self.base = now.replace(hour=0, minute=0, second=0, microsecond=0)
        self.rng = rng
        self.resources: list[dict[str, Any]] = []
        self.drafts: list[dict[str, Any]] = []
        self.appointments: list[dict[str, Any]] = []  # context.appointments of appointment-book
        self.gender = "unknown"
        self._counter: Counter[str] = Counter()

    # ------------------------------------------------------------ time and randomness

    def day(self, days: float, hour: float = 9.0) -> datetime:
        """``hour`` o'clock UTC on the calendar day ``days`` from now's date (negative = past)."""
        return self.base + timedelta(days=days, hours=hour)

    def ago(self, days: float = 0, hours: float = 0) -> datetime:
        """An instant relative to now itself."""
        return self.now - timedelta(days=days, hours=hours)

    def uniform(self, low: float, high: float, digits: int = 1) -> float:
        return round(self.rng.uniform(low, high), digits)

    def randint(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def choice(self, options: Sequence[Any]) -> Any:
        return self.rng.choice(list(options))

    def clinic_hour(self, low: float = 8, high: float = 14) -> float:
        """A session start between ``low`` and ``high`` o'clock, on the quarter hour."""
        return self.rng.randint(int(low * 4), int(high * 4)) / 4

    def rid(self, resource_type: str) -> str:
        kind = _KIND.get(resource_type, resource_type.lower())
        self._counter[kind] += 1
        return f"{self.pid}-{kind}-{self._counter[kind]}"

    def subject(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.pid}"}

    def add(self, resource: dict[str, Any]) -> dict[str, Any]:
        self.resources.append(resource)
        return resource

    # ------------------------------------------------------------ Patient

    def patient(self, gender: str, age: int) -> dict[str, Any]:
        self.gender = gender
        anchor = self.now.replace(year=self.now.year - age, day=min(self.now.day, 28))
        birth = anchor - timedelta(days=self.rng.randint(30, 330))  # exactly ``age`` years old at now
        resource = {
            "resourceType": "Patient",
            "id": self.pid,
            "identifier": [{"system": MRN_SYSTEM, "value": self.pid}],
            "active": True,
            "gender": gender,
            "birthDate": birth.strftime("%Y-%m-%d"),
        }
        self.resources.insert(0, resource)
        return resource

    # ------------------------------------------------------------ Observations

    def observation(
        self,
        key: str,
        at: datetime,
        *,
        value: float | None = None,
        coded: str | dict[str, Any] | None = None,
        text: str | None = None,
        uln: float | None = None,
        lln: float | None = None,
        members: Sequence[dict[str, Any]] = (),
        unit: str | None = None,
        digits: int = 1,
    ) -> dict[str, Any]:
        system, code, display, category, ucum = OBSERVATIONS[key]
        resource: dict[str, Any] = {
            "resourceType": "Observation",
            "id": self.rid("Observation"),
            "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": category}]}],
            "code": concept({"system": system, "code": code, "display": display}, text=display),
            "subject": self.subject(),
            "effectiveDateTime": iso(at),
            "issued": iso(at + timedelta(hours=2)),
        }
        if value is not None:
            resource["valueQuantity"] = qty(round(value, digits), unit or ucum or "1")
        elif coded is not None:
            resource["valueCodeableConcept"] = (
                concept(RESULTS[coded], text=RESULTS[coded]["display"]) if isinstance(coded, str) else coded
            )
        elif text is not None:
            resource["valueString"] = text
        if uln is not None or lln is not None:
            rng: dict[str, Any] = {}
            if lln is not None:
                rng["low"] = qty(lln, unit or ucum or "1")
            if uln is not None:
                rng["high"] = qty(uln, unit or ucum or "1")
            resource["referenceRange"] = [rng]
        if members:
            resource["hasMember"] = [{"reference": f"Observation/{m['id']}"} for m in members]
        return self.add(resource)

    def weight(self, at: datetime, kg: float) -> dict[str, Any]:
        return self.observation("weight", at, value=kg)

    def urinalysis(
        self,
        at: datetime,
        *,
        blood: str = "neg",
        le: str = "neg",
        nitrite: str = "neg",
        rbc: float | None = None,
        wbc: float | None = None,
    ) -> list[dict[str, Any]]:
        """A dipstick panel (24357-6 with members) and optional microscopy.

        ``blood``: ``neg``, ``1+``, ``2+``, ``3+`` (coded SNOMED), or ``"str:<text>"`` for a
        valueString ("trace", "1+"). ``le``: ``neg`` (text), ``1+`` (coded) or ``str:<text>``.
        """
        members = [
            self._dipstick("urine-blood", at, blood, "blood"),
            self._dipstick("urine-le", at, le, "le"),
            self._dipstick("urine-nitrite", at, nitrite, "nitrite"),
        ]
        panel = self.observation("ua-panel", at, members=members)
        made = [*members, panel]
        if rbc is not None:
            made.append(self.observation("urine-rbc", at, value=rbc, digits=0))
        if wbc is not None:
            made.append(self.observation("urine-wbc", at, value=wbc, digits=0))
        return made

    def _dipstick(self, key: str, at: datetime, result: str, prefix: str) -> dict[str, Any]:
        if result.startswith("str:"):
            return self.observation(key, at, text=result[4:])
        if result == "neg" and prefix != "blood":
            return self.observation(key, at, text="negative")
        if prefix == "nitrite" and result == "pos":
            return self.observation(key, at, coded="nitrite-pos")
        return self.observation(key, at, coded=f"{prefix}-{result}")

    def culture(self, at: datetime, organism: str | None = None) -> dict[str, Any]:
        """Urine culture: ``None`` = no growth (SNOMED 264868006); else the organism as text."""
        if organism is None:
            return self.observation("urine-culture", at, coded="no-growth")
        return self.observation("urine-culture", at, coded=concept(text=organism))

    # ------------------------------------------------------------ Conditions

    def condition(
        self,
        key: str,
        onset: datetime,
        *,
        clinical: str = "active",
        abated: datetime | None = None,
        category: str = "problem-list-item",
        note: str | None = None,
    ) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "resourceType": "Condition",
            "id": self.rid("Condition"),
            "clinicalStatus": {"coding": [{"system": COND_CLINICAL, "code": clinical}]},
            "verificationStatus": {"coding": [{"system": COND_VERIFICATION, "code": "confirmed"}]},
            "category": [{"coding": [{"system": COND_CATEGORY, "code": category}]}],
            "code": CONDITIONS[key],
            "subject": self.subject(),
            "onsetDateTime": iso(onset),
            "recordedDate": iso(max(onset, onset + timedelta(hours=6))),
        }
        if abated is not None:
            resource["abatementDateTime"] = iso(abated)
        if note:
            resource["note"] = [{"text": note}]
        return self.add(resource)

    # ------------------------------------------------------------ medications

    def medication(self, key: str, strength: tuple[float, str, float, str], text: str | None = None) -> str:
        """A Medication resource with one ingredient strength (e.g. 1 mg per 1 mL); returns its reference."""
        n_val, n_unit, d_val, d_unit = strength
        code = dict(MEDICATIONS[key])
        if text:
            code["text"] = text
        resource = {
            "resourceType": "Medication",
            "id": self.rid("Medication"),
            "code": code,
            "ingredient": [
                {
                    "itemCodeableConcept": MEDICATIONS[key],
                    "isActive": True,
                    "strength": {"numerator": qty(n_val, n_unit), "denominator": qty(d_val, d_unit)},
                }
            ],
        }
        self.add(resource)
        return f"Medication/{resource['id']}"

    def _medication_field(self, resource: dict[str, Any], med: str, medication_ref: str | None) -> None:
        if medication_ref:
            resource["medicationReference"] = {"reference": medication_ref}
        else:
            resource["medicationCodeableConcept"] = MEDICATIONS[med]

    def administration(
        self,
        med: str,
        start: datetime,
        *,
        minutes: float | None = None,
        end: datetime | None = None,
        dose: dict[str, Any] | None = None,
        rate: dict[str, Any] | None = None,
        rate_ratio: dict[str, Any] | None = None,
        route: str = "intravenous",
        status: str = "completed",
        medication_ref: str | None = None,
        text: str | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "resourceType": "MedicationAdministration",
            "id": self.rid("MedicationAdministration"),
            "status": status,
        }
        self._medication_field(resource, med, medication_ref)
        resource["subject"] = self.subject()
        if minutes is not None:
            end = start + timedelta(minutes=minutes)
        if end is not None:
            resource["effectivePeriod"] = {"start": iso(start), "end": iso(end)}
        else:
            resource["effectiveDateTime"] = iso(start)
        if reason:
            resource["reasonCode"] = [CONDITIONS[reason]]
        dosage: dict[str, Any] = {"route": {"text": route}}
        if text:
            dosage["text"] = text
        if dose is not None:
            dosage["dose"] = dose
        if rate is not None:
            dosage["rateQuantity"] = rate
        if rate_ratio is not None:
            dosage["rateRatio"] = rate_ratio
        resource["dosage"] = dosage
        return self.add(resource)

    def _dosage_instruction(
        self,
        *,
        text: str,
        route: str,
        start: datetime | None = None,
        end: datetime | None = None,
        dose: dict[str, Any] | None = None,
        rate: dict[str, Any] | None = None,
        duration_h: float | None = None,
        frequency: tuple[int, float, str] | None = None,
    ) -> dict[str, Any]:
        repeat: dict[str, Any] = {}
        if start is not None:
            repeat["boundsPeriod"] = {"start": iso(start), **({"end": iso(end)} if end else {})}
        if duration_h is not None:
            repeat["duration"] = round(duration_h, 3)
            repeat["durationUnit"] = "h"
        if frequency is not None:
            repeat["frequency"], repeat["period"], repeat["periodUnit"] = frequency
        dosage: dict[str, Any] = {"text": text, "route": {"text": route}}
        if repeat:
            dosage["timing"] = {"repeat": repeat}
        amount: dict[str, Any] = {}
        if dose is not None:
            amount["doseQuantity"] = dose
        if rate is not None:
            amount["rateQuantity"] = rate
        if amount:
            dosage["doseAndRate"] = [amount]
        return dosage

    def request(
        self,
        med: str,
        *,
        status: str,
        authored: datetime,
        text: str,
        route: str,
        start: datetime | None = None,
        end: datetime | None = None,
        dose: dict[str, Any] | None = None,
        rate: dict[str, Any] | None = None,
        duration_h: float | None = None,
        frequency: tuple[int, float, str] | None = None,
        contained: dict[str, Any] | None = None,
        reason: str | None = None,
        supply_days: int | None = None,
    ) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "id": self.rid("MedicationRequest") if status != "draft" else f"{self.pid}-draft-{len(self.drafts) + 1}",
            "status": status,
            "intent": "order",
        }
        if contained is not None:
            resource["contained"] = [contained]
            resource["medicationReference"] = {"reference": f"#{contained['id']}"}
        else:
            resource["medicationCodeableConcept"] = MEDICATIONS[med]
        resource["subject"] = self.subject()
        resource["authoredOn"] = iso(authored)
        if reason:
            resource["reasonCode"] = [CONDITIONS[reason]]
        resource["dosageInstruction"] = [
            self._dosage_instruction(
                text=text, route=route, start=start, end=end, dose=dose, rate=rate,
                duration_h=duration_h, frequency=frequency,
            )
        ]
        if supply_days is not None:
            resource["dispenseRequest"] = {"expectedSupplyDuration": qty(supply_days, "d", "days")}
        return resource

    def supply(self, med: str, **kwargs: Any) -> dict[str, Any]:
        """An active (take-home) MedicationRequest in the record."""
        return self.add(self.request(med, status=kwargs.pop("status", "active"), **kwargs))

    def draft(self, med: str, start: datetime, **kwargs: Any) -> dict[str, Any]:
        """A draft MedicationRequest for order-select/order-sign, planned to start at ``start``."""
        kwargs.setdefault("authored", self.now)
        resource = self.request(med, status="draft", start=start, **kwargs)
        self.drafts.append(resource)
        return resource

    def book(self, order: dict[str, Any], start: datetime, *, minutes: int) -> dict[str, Any]:
        """A proposed Appointment booking a session of *order* at *start* (appointment-book), linked by
        ``supportingInformation``; the order travels with it in ``context.appointments``."""
        booked = sum(1 for a in self.appointments if a["resourceType"] == "Appointment")
        appointment = {
            "resourceType": "Appointment",
            "id": f"{self.pid}-appointment-{booked + 1}",
            "status": "proposed",
            "description": "Ketamine infusion session",
            "start": iso(start),
            "end": iso(start + timedelta(minutes=minutes)),
            "minutesDuration": minutes,
            "supportingInformation": [{"reference": f"MedicationRequest/{order['id']}"}],
            "participant": [{"actor": self.subject(), "status": "accepted"}],
        }
        self.appointments.extend([appointment, order])
        return appointment

    def contained_medication(self, med: str, strength: tuple[float, str, float, str]) -> dict[str, Any]:
        n_val, n_unit, d_val, d_unit = strength
        return {
            "resourceType": "Medication",
            "id": "med",
            "code": MEDICATIONS[med],
            "ingredient": [
                {
                    "itemCodeableConcept": MEDICATIONS[med],
                    "isActive": True,
                    "strength": {"numerator": qty(n_val, n_unit), "denominator": qty(d_val, d_unit)},
                }
            ],
        }

    def statement(
        self,
        med: str,
        start: datetime,
        *,
        end: datetime | None = None,
        status: str = "active",
        dose: dict[str, Any],
        text: str,
        route: str,
        frequency: tuple[int, float, str] = (1, 1, "d"),
        asserted: datetime | None = None,
        reason: str | None = None,
        note: str | None = None,
    ) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "resourceType": "MedicationStatement",
            "id": self.rid("MedicationStatement"),
            "status": status,
        }
        resource["medicationCodeableConcept"] = MEDICATIONS[med]
        resource["subject"] = self.subject()
        resource["effectivePeriod"] = {"start": iso(start), **({"end": iso(end)} if end else {})}
        resource["dateAsserted"] = iso(asserted or self.now - timedelta(days=3))
        if reason:
            resource["reasonCode"] = [CONDITIONS[reason]]
        if note:
            resource["note"] = [{"text": note}]
        resource["dosage"] = [self._dosage_instruction(text=text, route=route, dose=dose, frequency=frequency)]
        return self.add(resource)

    # ------------------------------------------------------------ output

    def bundle(self) -> dict[str, Any]:
        """A FHIR transaction Bundle: every entry a PUT to ``Type/id``."""
        return {
            "resourceType": "Bundle",
            "id": f"{self.pid}-bundle",
            "type": "transaction",
            "entry": [
                {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                for r in self.resources
            ],
        }

    def session_times(self) -> list[tuple[datetime, datetime]]:
        """(start, end) of every ketamine/esketamine administration and draft, for schedule self-checks."""
        times = []
        for r in [*self.resources, *self.drafts]:
            if r["resourceType"] == "MedicationAdministration" and r["status"] in ("completed", "in-progress"):
                if "effectivePeriod" in r:
                    times.append((_parse(r["effectivePeriod"]["start"]), _parse(r["effectivePeriod"]["end"])))
                else:
                    t = _parse(r["effectiveDateTime"])
                    times.append((t, t))
            elif r["resourceType"] == "MedicationRequest" and r["status"] == "draft":
                repeat = r["dosageInstruction"][0].get("timing", {}).get("repeat", {})
                start = _parse(repeat["boundsPeriod"]["start"])
                times.append((start, start + timedelta(hours=repeat.get("duration", 0))))
        return sorted(times)


def _parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
