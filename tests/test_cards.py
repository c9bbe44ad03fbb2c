"""CDS Hooks cards from fired rules: shape, summary limit, evidence, suggestions, actions."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rulekit import KETAMINE, NOW, PATIENT_ID, RULES, admin, obs, rule_text, rule_version, ruleset, run

from cds_service.engine.cards import CardSettings, build_cards
from cds_service.engine.evidence import evidence_table
from cds_service.engine.loader import load_ruleset
from cds_service.engine.model import RuleSet
from cds_service.engine.trace import Evidence

GROSS_HEMATURIA = {"Condition": {"code": "ICD10CM#R31.0 Gross hematuria", "onset": "-1d"}}
NEXT_DOSE = {"MedicationRequest": {"id": "next-dose", "medication": KETAMINE, "dose": "35 mg", "start": "+1d",
                                   "duration": "40 min"}}


@pytest.fixture(scope="module")
def project() -> RuleSet:
    loaded = load_ruleset([RULES])
    assert loaded.ruleset is not None
    return loaded.ruleset


def cards_for(rules: RuleSet, items: list[dict[str, Any]], *, hook: str = "patient-view",
              drafts: list[dict[str, Any]] | None = None, **options: Any) -> list[dict[str, Any]]:
    evaluation = run(rules, items, hook=hook, drafts=drafts or [])
    return build_cards(evaluation, patient_id=PATIENT_ID, **options)


def critical_card(rules: RuleSet) -> dict[str, Any]:
    (card,) = cards_for(rules, [admin("-14d"), admin("-7d"), GROSS_HEMATURIA], hook="order-sign", drafts=[NEXT_DOSE])
    return card


def leaves(value: Any, path: str = "card") -> Iterator[tuple[str, Any]]:
    """Every value of a JSON tree with its path, containers included."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from leaves(item, f"{path}[{i}]")


def test_card_shape(project: RuleSet) -> None:
    card = critical_card(project)
    assert uuid.UUID(card["uuid"]).version == 4
    assert card["indicator"] == "critical"
    assert card["summary"].startswith("Visible or heavy blood in urine after 2 ketamine sessions")
    assert card["source"]["label"] == "k-bladder CDS"
    assert card["source"]["topic"]["code"] == "KB-02"
    assert card["source"]["topic"]["system"] == "https://kbladder-cds.org/fhir/CodeSystem/rule"
    rule = card["extension"]["org.kbladder-cds.rule"]
    version = rule_version("KB-02")
    assert (rule["id"], rule["version"], rule["indicator"]) == ("KB-02", version, "critical")
    assert f"Rule KB-02 v{version} (critical) · References: " in card["detail"]


def test_card_has_no_empty_values_anywhere(project: RuleSet) -> None:
    for path, value in leaves(critical_card(project)):
        assert value is not None, path
        assert value not in ("", [], {}), f"{path} is empty"


def test_evidence_table_in_markdown(project: RuleSet) -> None:
    detail = critical_card(project)["detail"]
    assert "**Evidence**\n\n| Date | Item | Value |\n|---|---|---|\n" in detail
    assert "| 2026-05-25 | Ketamine (as ketamine hydrochloride) 50 mg/mL solution for injection (administration) " \
           "| 35 mg |" in detail
    assert "| 2026-05-31 | Gross hematuria | active |" in detail


def test_evidence_is_also_machine_readable(project: RuleSet) -> None:
    evidence = critical_card(project)["extension"]["org.kbladder-cds.evidence"]
    assert [row["reference"] for row in evidence] == [
        "MedicationAdministration/admin1", "MedicationAdministration/admin2", "Condition/cond3",
        "MedicationRequest/next-dose",
    ]
    assert evidence[0] == {
        "reference": "MedicationAdministration/admin1",
        "item": "Ketamine (as ketamine hydrochloride) 50 mg/mL solution for injection (administration)",
        "date": "2026-05-18T09:00:00Z",
        "value": "35 mg",
    }


def test_evidence_table_escapes_pipes_and_adds_a_note_column() -> None:
    rows = [Evidence("Observation/1", NOW, "RBC | HPF", "5", ""), Evidence("Observation/2", None, "x", "", "baseline")]
    table = evidence_table(rows)
    assert table.splitlines() == [
        "| Date | Item | Value | Note |",
        "|---|---|---|---|",
        "| 2026-06-01 | RBC \\| HPF | 5 |  |",
        "| — | x | — | baseline |",
    ]
    assert evidence_table([]) == ""


def test_suggestions_and_selection_behavior(project: RuleSet) -> None:
    card = critical_card(project)
    labels = [s["label"] for s in card["suggestions"]]
    assert labels == [
        "Order urinalysis with microscopy and culture",
        "Order creatinine (eGFR)",
        "Refer to urology",
        "Remove the draft ketamine order pending review",
    ]
    assert card["selectionBehavior"] == "any"
    assert all(uuid.UUID(s["uuid"]) for s in card["suggestions"])
    assert card["suggestions"][0]["isRecommended"] is True
    assert "isRecommended" not in card["suggestions"][1]


def test_create_actions_get_the_patient_as_subject(project: RuleSet) -> None:
    card = critical_card(project)
    creates = [a for s in card["suggestions"] for a in s["actions"] if a["type"] == "create"]
    assert len(creates) == 3
    for action in creates:
        assert action["resource"]["subject"] == {"reference": f"Patient/{PATIENT_ID}"}
        assert action["resource"]["resourceType"] == "ServiceRequest"
        assert action["description"]


def test_create_actions_do_not_share_state_between_cards(project: RuleSet) -> None:
    first, second = critical_card(project), critical_card(project)
    first["suggestions"][0]["actions"][0]["resource"]["status"] = "changed"
    assert second["suggestions"][0]["actions"][0]["resource"]["status"] == "draft"
    rule = project.rule("KB-02")
    assert rule is not None
    assert "subject" not in rule.card.suggestions[0].actions[0].resource  # the rule's template stays clean


def test_delete_action_names_the_draft_order(project: RuleSet) -> None:
    card = critical_card(project)
    (hold,) = [s for s in card["suggestions"] if s["label"].startswith("Remove the draft")]
    assert hold["actions"] == [
        {"type": "delete", "description": "Delete the draft ketamine order",
         "resourceId": "MedicationRequest/next-dose"}
    ]


def test_tier_limited_and_draft_actions_drop_out_of_a_warning_card(project: RuleSet) -> None:
    (card,) = cards_for(project, [admin("-14d"), admin("-7d"), obs("LOINC#5794-3", "-1d", "1+")])
    assert card["indicator"] == "warning"
    labels = [s["label"] for s in card["suggestions"]]
    assert "Refer to urology" in labels
    assert "Remove the draft ketamine order pending review" not in labels  # critical only, and no draft


def test_override_reasons_have_code_display_and_system(project: RuleSet) -> None:
    reasons = critical_card(project)["overrideReasons"]
    assert [r["code"] for r in reasons] == ["alternative-cause", "already-investigated", "benefit-outweighs-risk"]
    for reason in reasons:
        assert reason["display"] and reason["system"] == "https://kbladder-cds.org/fhir/CodeSystem/override-reason"


def test_links(project: RuleSet) -> None:
    assert critical_card(project)["links"] == [{
        "label": "AUA/SUFU microhematuria guideline (2020)",
        "url": "https://doi.org/10.1097/JU.0000000000001297",
        "type": "absolute",
    }]


def test_no_card_when_nothing_fires(project: RuleSet) -> None:
    assert cards_for(project, []) == []
    assert cards_for(project, [admin("-7d"), obs("LOINC#5794-3", "-1d", "negative")]) == []


def test_site_settings_name_the_source(project: RuleSet) -> None:
    settings = CardSettings(source_label="St Elsewhere CDS", source_url="https://cds.example.org/about")
    (card,) = cards_for(project, [admin("-14d"), admin("-7d"), GROSS_HEMATURIA], settings=settings)
    assert card["source"]["label"] == "St Elsewhere CDS"
    assert card["source"]["url"] == "https://cds.example.org/about"


def test_missing_data_is_listed_in_the_card(project: RuleSet) -> None:
    (card,) = cards_for(project, [admin("-14d"), admin("-7d"), GROSS_HEMATURIA],
                        data_gaps=["Observation/o9 skipped: invalid at status"])
    assert "**Data not available** (advice based on partial data):\n\n- Observation/o9 skipped" in card["detail"]
    assert card["extension"]["org.kbladder-cds.missingData"] == ["Observation/o9 skipped: invalid at status"]


def test_injected_uuids_make_cards_reproducible(project: RuleSet) -> None:
    counter = iter(range(100))
    (card,) = cards_for(project, [admin("-14d"), admin("-7d"), GROSS_HEMATURIA], new_id=lambda: f"id-{next(counter)}")
    assert card["uuid"] == "id-0"
    assert [s["uuid"] for s in card["suggestions"]] == ["id-1", "id-2", "id-3"]


# ---------------------------------------------------------------- small rules for the edge cases

LONG = """
data:
  ketamine: {resources: [MedicationAdministration, MedicationRequest], valueset: ketamine}
conditions:
  exposed: {count: {data: ketamine, window: {last: P28D}}}
tiers:
  - indicator: {indicator}
    when: exposed
"""

UPDATE_CARD = """\
card:
  summary: "{summary}"
  selection: at-most-one
  suggestions:
    - id: lower-dose
      label: Lower the dose
      recommended: true
      actions:
        - type: update
          description: Lower the draft dose to 25 mg
          draft: ketamine
          patch:
            note: [{text: lowered by CDS}]
    - id: cancel
      label: Cancel the draft
      actions:
        - {type: delete, description: Delete the draft order, draft: ketamine}
references:
  - {id: R1, citation: "Test citation", strength: L}
"""


def long_summary_rule(indicator: str = "info", rule_id: str = "T-01") -> str:
    summary = "Ketamine exposure {{ 'with a very long explanation ' * 10 }}in {{ course.sessions }} session(s)"
    return rule_text(LONG.replace("{indicator}", indicator), rule_id=rule_id, summary=summary)


def test_summary_is_cut_below_140_characters(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, {"t.yaml": long_summary_rule()})
    (card,) = cards_for(rules, [admin("-3d")])
    assert len(card["summary"]) < 140
    assert card["summary"].endswith("…")
    assert card["summary"].startswith("Ketamine exposure with a very long explanation")


def test_update_action_merges_the_patch_into_the_draft(tmp_path: Path) -> None:
    text = rule_text(LONG.replace("{indicator}", "warning")).split("card:\n")[0] + UPDATE_CARD.replace(
        "{summary}", "Draft order")
    rules = ruleset(tmp_path, {"t.yaml": text})
    (card,) = cards_for(rules, [admin("-3d")], hook="order-select",
                        drafts=[{"MedicationRequest": {"id": "d1", "medication": KETAMINE, "dose": "35 mg"}}])
    update, delete = card["suggestions"]
    (action,) = update["actions"]
    assert action["type"] == "update"
    assert action["resource"]["id"] == "d1"
    assert action["resource"]["note"] == [{"text": "lowered by CDS"}]
    assert action["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 35
    assert delete["actions"][0]["resourceId"] == "MedicationRequest/d1"
    assert card["selectionBehavior"] == "at-most-one"  # the rule's choice with a single recommendation


def test_draft_actions_without_a_draft_drop_their_suggestion(tmp_path: Path) -> None:
    text = rule_text(LONG.replace("{indicator}", "warning")).split("card:\n")[0] + UPDATE_CARD.replace(
        "{summary}", "No draft")
    rules = ruleset(tmp_path, {"t.yaml": text})
    (card,) = cards_for(rules, [admin("-3d")])
    assert "suggestions" not in card and "selectionBehavior" not in card


def test_cards_strongest_first_and_capped(tmp_path: Path) -> None:
    files = {f"{i}.yaml": long_summary_rule(indicator, f"T-0{i}")
             for i, indicator in enumerate(["info", "critical", "warning"], start=1)}
    rules = ruleset(tmp_path, files)
    assert [c["indicator"] for c in cards_for(rules, [admin("-3d")])] == ["critical", "warning", "info"]
    assert [c["indicator"] for c in cards_for(rules, [admin("-3d")], max_cards=2)] == ["critical", "warning"]
