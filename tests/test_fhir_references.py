"""Which referenced Medications still have to be fetched, and what is reported when they cannot be."""

from __future__ import annotations

from typing import Any

from cds_service.fhir.client import FetchLimits
from cds_service.fhir.references import referenced_medication_ids, resolve_medications


def administration(reference: str) -> dict[str, Any]:
    return {"resourceType": "MedicationAdministration", "medicationReference": {"reference": reference}}


def test_referenced_ids_skip_contained_present_and_duplicate_references() -> None:
    resources = [
        administration("Medication/a"),
        administration("https://ehr.example/fhir/Medication/b/_history/3"),
        administration("#contained"),
        administration("Medication/a"),
        administration("Medication/present"),
        {"resourceType": "MedicationRequest", "medicationReference": {"display": "ketamine"}},
        {"resourceType": "Observation", "medicationReference": {"reference": "Medication/ignored"}},
        {"resourceType": "Medication", "id": "present"},
    ]
    assert referenced_medication_ids(resources) == ["a", "b"]


def test_without_fhir_access_the_gap_is_reported() -> None:
    resolved = resolve_medications([administration("Medication/a")], fhir_server=None, access_token=None,
                                   limits=FetchLimits())
    assert resolved.resources == []
    assert resolved.missing == "1 referenced Medication(s) not available (no FHIR access)"


def test_nothing_referenced_needs_no_server() -> None:
    resolved = resolve_medications([{"resourceType": "Observation"}], fhir_server=None, access_token=None,
                                   limits=FetchLimits())
    assert resolved.resources == [] and resolved.missing is None
