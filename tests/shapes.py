"""The record as production EHRs and laboratories write it (issue 16), as raw FHIR R4 resources.

Times are relative (``-10d``): rule-level tests expand them against their fixed ``now``, HTTP tests
against the wall clock (:func:`absolute`). Each builder writes one shape: a urinalysis panel whose
results are components, the same results as separate Observations, range-valued microscopy, a resolved
childhood problem dated only by text, infusions whose rate is only on the order, and a culture and an
ultrasound sent as DiagnosticReports.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cds_service.engine.shorthand import Expander

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
KETAMINE = {"coding": [{"system": SNOMED, "code": "781954001", "display": "Ketamine 50 mg/mL injection"}]}
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"

BLOOD, ESTERASE, NITRITE, RBC, WBC = "5794-3", "5799-2", "5802-4", "13945-1", "5821-4"
DISPLAY = {
    BLOOD: "Hemoglobin [Presence] in Urine by Test strip",
    ESTERASE: "Leukocyte esterase [Presence] in Urine by Test strip",
    NITRITE: "Nitrite [Presence] in Urine by Test strip",
    RBC: "Erythrocytes [#/area] in Urine sediment by Microscopy high power field",
    WBC: "Leukocytes [#/area] in Urine sediment by Microscopy high power field",
}


def loinc(code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code, "display": display or DISPLAY.get(code, code)}]}


def count(value: float, unit: str = "/[HPF]") -> dict[str, Any]:
    """A count per high-power field; a unit that is not UCUM goes in ``unit`` only, as labs send it."""
    if unit == "/[HPF]":
        return {"valueQuantity": {"value": value, "unit": "/HPF", "system": UCUM, "code": "/[HPF]"}}
    return {"valueQuantity": {"value": value, "unit": unit}}


def session(rid: str, at: str, mg: float = 35) -> dict[str, Any]:
    """A ketamine administration with its dose (the exposure every shape is read against)."""
    return {"resourceType": "MedicationAdministration", "id": rid, "status": "completed",
            "medicationCodeableConcept": KETAMINE, "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": at,
            "dosage": {"dose": {"value": mg, "unit": "mg", "system": UCUM, "code": "mg"}}}


def course(days: tuple[int, ...] = (-40, -33, -26, -19, -12)) -> list[dict[str, Any]]:
    return [session(f"ma{i}", f"{d}d") for i, d in enumerate(days)]


# ---------------------------------------------------------------- urinalysis as a panel and as separate results


UA_RESULTS: dict[str, dict[str, Any]] = {
    BLOOD: {"valueString": "2+"},
    ESTERASE: {"valueString": "positive"},
    NITRITE: {"valueString": "negative"},
    RBC: count(30),
    WBC: count(12),
}


def ua_panel(at: str = "-3d", rid: str = "ua1", results: dict[str, dict[str, Any]] | None = None,
             status: str = "final", code: str = "24356-8") -> dict[str, Any]:
    """One Observation (complete urinalysis panel) whose results are components."""
    return {"resourceType": "Observation", "id": rid, "status": status,
            "code": loinc(code, "Urinalysis complete panel - Urine"), "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": at,
            "component": [{"code": loinc(c), **v} for c, v in (results or UA_RESULTS).items()]}


def ua_separate(at: str = "-3d", results: dict[str, dict[str, Any]] | None = None,
                status: str = "final") -> list[dict[str, Any]]:
    """The same results as separate Observations."""
    return [{"resourceType": "Observation", "id": f"ua-{c}", "status": status, "code": loinc(c),
             "subject": {"reference": "Patient/p1"}, "effectiveDateTime": at, **v}
            for c, v in (results or UA_RESULTS).items()]


def rbc(at: str = "-3d", rid: str = "rbc1", **value: Any) -> dict[str, Any]:
    """A red-cell count with any value[x] (``valueRange``, ``valueString``, ``valueQuantity``)."""
    return {"resourceType": "Observation", "id": rid, "status": "final", "code": loinc(RBC),
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": at, **value}


# ---------------------------------------------------------------- problems


def childhood_hematuria(recorded: str = "-20d", status: str = "resolved", **onset: Any) -> dict[str, Any]:
    """Visible haematuria from childhood, onset only as text, recorded (typed in) during the course."""
    return {"resourceType": "Condition", "id": "cond-child", "subject": {"reference": "Patient/p1"},
            "clinicalStatus": {"coding": [{"system": CLINICAL, "code": status}]},
            "code": {"coding": [{"system": SNOMED, "code": "197941005", "display": "Frank hematuria"}]},
            **(onset or {"onsetString": "in childhood"}), "recordedDate": recorded}


# ---------------------------------------------------------------- dose on the order


def infusion_order(rid: str = "order1", rate: tuple[float, str] = (0.5, "mg/kg/h")) -> dict[str, Any]:
    """The MedicationRequest that carries the rate (as Epic-style orders do); its administrations do not."""
    value, unit = rate
    return {"resourceType": "MedicationRequest", "id": rid, "status": "completed", "intent": "order",
            "medicationCodeableConcept": KETAMINE, "subject": {"reference": "Patient/p1"}, "authoredOn": "-30d",
            "dosageInstruction": [{"text": f"ketamine infusion {value:g} {unit}",
                                   "doseAndRate": [{"rateQuantity": {"value": value, "unit": unit,
                                                                     "system": UCUM, "code": unit}}]}]}


def infusion(rid: str, start_day: int, hours: float, order: str | None = "order1") -> dict[str, Any]:
    """A completed infusion with start and end, no dose or rate, pointing at its order."""
    resource: dict[str, Any] = {
        "resourceType": "MedicationAdministration", "id": rid, "status": "completed",
        "medicationCodeableConcept": KETAMINE, "subject": {"reference": "Patient/p1"},
        "effectivePeriod": {"start": f"{start_day}d", "end": f"{start_day * 24 + hours:g}h"},
    }
    if order:
        resource["request"] = {"reference": f"MedicationRequest/{order}"}
    return resource


def weight(kg: float = 80, at: str = "-20d") -> dict[str, Any]:
    return {"resourceType": "Observation", "id": "wt1", "status": "final", "code": loinc("29463-7", "Body weight"),
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": at,
            "valueQuantity": {"value": kg, "unit": "kg", "system": UCUM, "code": "kg"}}


# ---------------------------------------------------------------- reports


def culture_report(at: str = "-3d", rid: str = "dr-culture", conclusion: str = "264868006") -> dict[str, Any]:
    """A urine culture sent as a DiagnosticReport concluding "No growth" (SNOMED 264868006)."""
    return {"resourceType": "DiagnosticReport", "id": rid, "status": "final",
            "code": loinc("630-4", "Bacteria identified in Urine by Culture"), "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": at, "conclusion": "No growth at 48 hours",
            "conclusionCode": [{"coding": [{"system": SNOMED, "code": conclusion, "display": "No growth"}]}]}


def ultrasound_report(at: str = "-2d", rid: str = "dr-us", finding: dict[str, Any] | None = None,
                      status: str = "final") -> dict[str, Any]:
    """A kidney ultrasound report whose coded conclusion is hydronephrosis (SNOMED 43064006)."""
    return {"resourceType": "DiagnosticReport", "id": rid, "status": status, "code": loinc("38036-0", "US Kidney"),
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": at,
            "conclusion": "Bilateral hydronephrosis.",
            "conclusionCode": [finding or {"coding": [{"system": SNOMED, "code": "43064006",
                                                      "display": "Hydronephrosis"}]}]}


def absolute(resources: list[dict[str, Any]], now: datetime, pid: str = "p1") -> list[dict[str, Any]]:
    """The same resources with relative times made instants against ``now`` and the patient renamed."""
    expander = Expander(now, pid)
    out = []
    for resource in resources:
        expanded = expander.expand(resource)
        if "subject" in expanded:
            expanded["subject"] = {"reference": f"Patient/{pid}"}
        out.append(expanded)
    return out
