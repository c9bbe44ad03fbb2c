"""Hook definitions (Hook Library 1.0.1) and prefetch-template checks (checklist P1-P3)."""

from __future__ import annotations

import pytest

from cds_service.cdshooks import HOOKS, USER_PREFETCH_TOKENS, prefetch_tokens, template_problems


def test_hook_library_context_tables() -> None:
    assert set(HOOKS) == {"patient-view", "order-select", "order-sign", "appointment-book", "encounter-start"}
    for hook in HOOKS.values():
        assert hook.hook_version == "1.0" and hook.specification_version == "1.0"
        assert [f.name for f in hook.required_fields][:2] == ["userId", "patientId"]
        encounter = hook.field("encounterId")
        assert encounter is not None and encounter.prefetch_token
        assert encounter.required is (hook.id == "encounter-start")  # the Encounter being started
    book = HOOKS["appointment-book"]
    assert {f.name for f in book.required_fields} == {"userId", "patientId", "appointments"}
    appointments = book.field("appointments")
    assert appointments is not None and appointments.type == "object" and not appointments.prefetch_token
    assert book.user_types == ("Practitioner", "PractitionerRole", "Patient", "RelatedPerson")
    assert book.bundle_field == "appointments" and book.plans_exposure and not book.order_hook
    start = HOOKS["encounter-start"]
    assert {f.name for f in start.required_fields} == {"userId", "patientId", "encounterId"}
    assert start.user_types == ("Practitioner", "PractitionerRole") and not start.plans_exposure
    select = HOOKS["order-select"]
    assert {f.name for f in select.required_fields} == {"userId", "patientId", "selections", "draftOrders"}
    assert {f.name: f.type for f in select.fields}["selections"] == "array"
    assert {f.name: f.type for f in select.fields}["draftOrders"] == "object"
    assert {f.name for f in HOOKS["order-sign"].required_fields} == {"userId", "patientId", "draftOrders"}
    assert HOOKS["patient-view"].user_types == (
        "Practitioner", "PractitionerRole", "Patient", "RelatedPerson"
    )
    assert HOOKS["order-sign"].user_types == ("Practitioner", "PractitionerRole")
    assert HOOKS["order-select"].maturity == 4 and HOOKS["order-sign"].maturity == 5
    assert HOOKS["patient-view"].field("nope") is None


def test_prefetch_tokens() -> None:
    assert set(USER_PREFETCH_TOKENS) == {
        "userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"
    }
    assert prefetch_tokens("patient-view") == {
        "context.userId", "context.patientId", "context.encounterId", *USER_PREFETCH_TOKENS
    }
    order = prefetch_tokens("order-select")
    assert "context.draftOrders" not in order and "context.selections" not in order
    assert "userPatientId" not in order and "userPractitionerRoleId" in order
    assert prefetch_tokens("order-sign") == prefetch_tokens("order-select")
    assert prefetch_tokens("unknown-hook") == frozenset()


@pytest.mark.parametrize(
    ("template", "hook"),
    [
        ("Patient/{{context.patientId}}", "patient-view"),
        ("Encounter/{{context.encounterId}}", "order-sign"),
        ("Practitioner/{{userPractitionerId}}", "order-select"),
        ("RelatedPerson/{{userRelatedPersonId}}", "patient-view"),
        ("MedicationRequest?patient={{context.patientId}}", "order-select"),
        ("MedicationAdministration?patient={{context.patientId}}&code:in=http://example.org/ValueSet/ketamine"
         "&_count=100&_sort=-effective-time", "patient-view"),
        ("Observation?patient={{context.patientId}}&category=laboratory&date=ge2024-01-01&_sort=-date",
         "patient-view"),
        ("Observation?subject=Patient/{{context.patientId}}&code=http://loinc.org|5804-0", "order-sign"),
        # Outside the recommended subset on purpose (referenced Medications), harmless when ignored.
        ("MedicationStatement?patient={{context.patientId}}&_include=MedicationStatement:medication",
         "patient-view"),
    ],
)
def test_good_templates(template: str, hook: str) -> None:
    assert template_problems(template, hook) == []


@pytest.mark.parametrize(
    ("template", "hook", "fragment"),
    [
        ("Patient/{{context.patientId}}", "medication-prescribe", "unknown hook"),
        ("", "patient-view", "non-empty"),
        ("MedicationRequest?_id={{context.draftOrders}}", "order-sign", "not a prefetch token"),
        ("MedicationRequest/{{context.selections}}", "order-select", "not a prefetch token"),
        ("Medication/{{context.medication.id}}", "order-select", "no context field"),
        ("Patient/{{context.patientId.value}}", "patient-view", "root-level"),
        ("Patient/{{Patient.id}}", "patient-view", "not a CDS Hooks 2.0 prefetch token"),
        ("Practitioner/{{user}}", "patient-view", "not a CDS Hooks 2.0 prefetch token"),
        ("Observation?patient={{context.patientId}}&date=ge{{today}}", "patient-view", "date/relative"),
        ("Observation?patient={{context.patientId}}&date=ge{{today() - 90 days}}", "patient-view",
         "date/relative"),
        ("Patient/{{userPatientId}}", "order-sign", "can never resolve"),
        ("Patient/{{ context.patientId }}", "patient-view", "whitespace inside braces"),
        ("Patient/{{context.patientId}", "patient-view", "braces"),
        ("Patient/{context.patientId}", "patient-view", "braces"),
        ("/Patient/{{context.patientId}}", "patient-view", "relative FHIR URL"),
        ("https://ehr.example.org/fhir/Patient/{{context.patientId}}", "patient-view", "relative FHIR URL"),
        ("//ehr.example.org/Patient/{{context.patientId}}", "patient-view", "relative FHIR URL"),
        ("patient/{{context.patientId}}", "patient-view", "resource type"),
        ("Patient/{{context.patientId}}/$everything", "patient-view", "instance reads"),
        ("Patient/$everything?patient={{context.patientId}}", "patient-view", "instance reads"),
        ("Patient/{{context.patientId}}?_elements=id", "patient-view", "no query parameters"),
        ("Observation?patient={{context.patientId}}&sort:desc=date", "patient-view", "_sort=-date"),
        ("Observation?patient={{context.patientId}}&code:text=ketamine", "patient-view", ":text"),
        ("Observation?patient.identifier=x", "patient-view", "chained"),
        ("Observation?patient={{context.patientId}}&_include=Observation:performer", "patient-view",
         "_include"),
        ("MedicationAdministration?patient={{context.patientId}}&_include=MedicationAdministration:performer",
         "patient-view", "_include"),
        ("MedicationAdministration?patient={{context.patientId}}&_include:iterate=MedicationAdministration:medication",
         "patient-view", "_include"),
        ("Observation?patient={{context.patientId}}&_count=all", "patient-view", "_count"),
        ("Observation?patient={{context.patientId}}&date=sa2020-01-01", "patient-view", "date prefix"),
        ("Observation?patient={{context.patientId}}&code=", "patient-view", "no value"),
        ("Observation?patient={{context.patientId}}&code=a b", "patient-view", "whitespace"),
        ("Patient/{{context.patientId}}#x", "patient-view", "fragment"),
    ],
)
def test_bad_templates(template: str, hook: str, fragment: str) -> None:
    problems = template_problems(template, hook)
    assert problems, template
    assert any(fragment in p for p in problems), problems
