"""The ONE hook table: everything about hooks derives from cds_service/cdshooks/hooks.py."""

from __future__ import annotations

from typing import Any

from cds_service.cdshooks.hooks import HOOKS, SERVICES, drafts_to_evaluate, service_for
from cds_service.cli import HOOK_CHOICE
from cds_service.engine.schema import load_schema as schema
from cds_service.synth import generate_cohort


def _draft(rid: str) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": rid, "status": "draft", "intent": "order"}


def test_schema_hook_enums_are_the_hook_table() -> None:
    assert schema("rule")["properties"]["hooks"]["items"]["enum"] == list(HOOKS)
    hook = schema("test")["properties"]["tests"]["items"]["properties"]["hook"]
    assert hook["enum"] == list(HOOKS)


def test_services_and_cli_choices_come_from_the_table() -> None:
    assert [s.hook for s in SERVICES.values()] == list(HOOKS)
    for hook, definition in HOOKS.items():
        service = service_for(hook)
        assert service.id == f"kbladder-{hook}" and SERVICES[service.id] is not None
        assert service.title == definition.service_title and service.description
    assert list(HOOK_CHOICE.choices) == list(HOOKS)


def test_synthetic_cohort_expects_per_table_hook() -> None:
    patient = generate_cohort(1).patients[0]
    assert list(patient.expected) == list(HOOKS)


def test_which_drafts_each_hook_evaluates() -> None:
    drafts = [_draft("a"), _draft("b")]
    assert drafts_to_evaluate("patient-view", drafts, ["MedicationRequest/a"]) == []
    assert drafts_to_evaluate("order-sign", drafts, ["MedicationRequest/a"]) == drafts
    assert drafts_to_evaluate("order-select", drafts, ["MedicationRequest/b"]) == [drafts[1]]
    # None: a rule test or explanation that names no selection selects every draft
    assert drafts_to_evaluate("order-select", drafts, None) == drafts
    assert drafts_to_evaluate("order-select", drafts, []) == []
    urls = [None, "urn:uuid:x/MedicationRequest/b"]
    assert drafts_to_evaluate("order-select", drafts, ["MedicationRequest/b"], urls) == [drafts[1]]
    assert drafts_to_evaluate("unknown-hook", drafts, None) == []
    for definition in HOOKS.values():
        assert definition.order_hook == (definition.field("draftOrders") is not None)
        assert (definition.drafts == "selected") == (definition.field("selections") is not None)
