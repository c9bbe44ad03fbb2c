"""FHIR data for service-level tests: a patient given ketamine, a positive dipstick, Bundles, relative times."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from cds_service.cdshooks.hooks import HOOKS
from cds_service.loopback import serve as serving  # noqa: F401  (re-exported for the HTTP tests)

KETAMINE = {"coding": [{"system": "http://snomed.info/sct", "code": "781954001"}]}


def at(days: float) -> str:
    """An instant *days* from the wall clock (the service under test reads the wall clock)."""
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r} for r in resources],
    }


def patient(pid: str = "p1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1992-03-04"}


def ketamine_given(pid: str = "p1", days: float = -10, rid: str = "ma1") -> dict[str, Any]:
    """Ketamine 35 mg given *days* ago, coded by medicationCodeableConcept (SNOMED 781954001)."""
    return {
        "resourceType": "MedicationAdministration",
        "id": rid,
        "status": "completed",
        "medicationCodeableConcept": KETAMINE,
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": at(days),
        "dosage": {"dose": {"value": 35, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}},
    }


def ketamine_by_reference(pid: str = "p1", medication_id: str = "ket-50") -> dict[str, Any]:
    """A ketamine administration that names its product only by reference to a Medication."""
    resource = ketamine_given(pid, rid="ma-ref")
    del resource["medicationCodeableConcept"]
    resource["medicationReference"] = {"reference": f"Medication/{medication_id}"}
    return resource


def ketamine_product(medication_id: str | None = "ket-50") -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Medication", "code": KETAMINE}
    if medication_id:
        resource["id"] = medication_id
    return resource


def dipstick(pid: str = "p1", value: str = "1+", days: float = -2, rid: str = "o1") -> dict[str, Any]:
    """Urine haemoglobin by test strip (LOINC 5794-3), valueString *value*."""
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {
            "coding": [
                {
                    "system": "http://loinc.org",
                    "code": "5794-3",
                    "display": "Hemoglobin [Presence] in Urine by Test strip",
                }
            ]
        },
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": at(days),
        "valueString": value,
    }


def gross_hematuria(pid: str = "p1") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R31.0"}]},
        "onsetDateTime": at(-1),
    }


def draft_order(rid: str, medication: dict[str, Any], pid: str = "p1") -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": medication,
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": at(0),
        "dosageInstruction": [
            {
                "timing": {"repeat": {"boundsPeriod": {"start": at(1)}}},
                "doseAndRate": [
                    {"doseQuantity": {"value": 35, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}
                ],
            }
        ],
    }


def prefetch(*resources: dict[str, Any], pid: str = "p1", omit: tuple[str, ...] = ()) -> dict[str, Any]:
    """A full prefetch for our templates, resources sorted into their keys."""
    keys = {"medicationAdministration": [], "medicationRequest": [], "medicationStatement": [],
            "observation": [], "condition": [], "allergyIntolerance": [], "diagnosticReport": []}
    for resource in resources:
        rtype = resource["resourceType"]
        keys[rtype[:1].lower() + rtype[1:]].append(resource)
    data: dict[str, Any] = {"patient": patient(pid)}
    data.update({key: bundle(*items) for key, items in keys.items()})
    return {k: v for k, v in data.items() if k not in omit}


def appointment(start_days: float = 7, pid: str = "p1", *, order: str | None = None,
                rid: str = "appt-1") -> dict[str, Any]:
    """A proposed Appointment (appointment-book), booking a session of MedicationRequest *order* if given."""
    return {"resourceType": "Appointment", "id": rid, "status": "proposed", "start": at(start_days),
            "minutesDuration": 40,
            **({"supportingInformation": [{"reference": f"MedicationRequest/{order}"}]} if order else {}),
            "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"}]}


def request_body(hook: str = "patient-view", *, pid: str = "p1", drafts: list[dict[str, Any]] | None = None,
                 selections: list[str] | None = None, appointments: list[dict[str, Any]] | None = None,
                 **extra: Any) -> dict[str, Any]:
    """A valid request for any hook of the hook table (its context fields filled as the Library defines)."""
    definition = HOOKS[hook]
    context: dict[str, Any] = {"userId": "Practitioner/u1", "patientId": pid}
    encounter = definition.field("encounterId")
    if encounter is not None and encounter.required:
        context["encounterId"] = "visit-1"
    if definition.bundle_field == "draftOrders":
        context["draftOrders"] = bundle(*(drafts or []))
    elif definition.bundle_field == "appointments":
        context["appointments"] = bundle(*(appointments or [appointment(pid=pid)]))
    if definition.field("selections") is not None:
        context["selections"] = selections or []
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context, **extra}
