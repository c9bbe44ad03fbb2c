"""Language support for issue 11 part B: which hook is asking, what kind of exposure a data key reads,
and conditions that only shape a card's wording.

Rules speak on order hooks only for a ketamine order (``%hook``), ask for chronic use through a data
key that reads only MedicationStatement/MedicationRequest, and keep ``rules check`` clean when a
condition is only used as ``holds.x`` in a template.
"""

from __future__ import annotations

from pathlib import Path

from rulekit import KETAMINE, admin, load, result_of, rule_text, ruleset, run

from cds_service.engine.evaluate import FIRED, NOT_FIRED

SCOPE = """\
data:
  ketamine: {resources: [MedicationAdministration, MedicationRequest, MedicationStatement], valueset: ketamine}
conditions:
  on_patient_view:
    fhirpath: {expression: "%hook = 'patient-view'"}
  ketamine_order:
    draft_order: {data: ketamine}
tiers:
  - indicator: info
    when: {any: [on_patient_view, ketamine_order]}
"""

USE = """\
data:
  ketamine: {resources: [MedicationAdministration, MedicationRequest, MedicationStatement], valueset: ketamine}
  ketamine_use: {resources: [MedicationStatement, MedicationRequest], valueset: ketamine}
conditions:
  chronic_use:
    count: {data: ketamine_use, planned: false}
  any_use:
    count: {data: ketamine, planned: false}
  planned_use:
    count: {data: ketamine_use}
tiers:
  - indicator: info
    when: chronic_use
"""

STATEMENT = {"MedicationStatement": {"medication": "ketamine", "dose": "1 g", "start": "-3y", "status": "active"}}
NAPROXEN = {"MedicationRequest": {"medication": "naproxen 500 mg tablet", "dose": "500 mg", "start": "+1d"}}
KETAMINE_DRAFT = {"MedicationRequest": {"medication": KETAMINE, "dose": "35 mg", "start": "+1d"}}


def test_hook_is_a_fhirpath_variable(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, {"t.yaml": rule_text(SCOPE)})
    assert result_of(run(rules, [admin("-3d")], hook="patient-view")).status == FIRED
    assert result_of(run(rules, [admin("-3d")], hook="order-sign", drafts=[NAPROXEN])).status == NOT_FIRED
    assert result_of(run(rules, [admin("-3d")], hook="order-sign", drafts=[KETAMINE_DRAFT])).status == FIRED


def test_an_unknown_fhirpath_variable_names_hook_as_allowed(tmp_path: Path) -> None:
    result = load(tmp_path, {"t.yaml": rule_text(SCOPE.replace("%hook", "%hooks"))})
    assert any("%hooks is neither a parameter, %now nor %hook" in p.message for p in result.problems)


def test_a_data_key_reading_statements_only_ignores_administrations(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, {"t.yaml": rule_text(USE)})
    given = result_of(run(rules, [admin("-20d"), admin("-10d")]))
    assert given.conditions["any_use"].value == 2
    assert given.conditions["chronic_use"].value == 0 and given.status == NOT_FIRED
    reported = result_of(run(rules, [admin("-10d"), STATEMENT]))
    assert reported.conditions["chronic_use"].value == 1 and reported.status == FIRED


def test_a_draft_order_counts_whatever_resources_a_data_key_reads(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, {"t.yaml": rule_text(USE)})
    now_draft = {"MedicationRequest": {"medication": KETAMINE, "dose": "35 mg", "start": "now"}}
    outcome = result_of(run(rules, [admin("-10d")], hook="order-sign", drafts=[now_draft]))
    assert outcome.conditions["planned_use"].value == 1


def test_a_condition_used_only_in_the_wording_is_not_reported_unused(tmp_path: Path) -> None:
    body = SCOPE.replace("  ketamine_order:", "  wording_only: {count: {data: ketamine}}\n  ketamine_order:")
    used = load(tmp_path / "a", {"t.yaml": rule_text(body, summary="{{ 'x' if holds.wording_only }}")})
    assert not [p for p in used.problems if "wording_only" in p.message]
    unused = load(tmp_path / "b", {"t.yaml": rule_text(body)})
    assert [p for p in unused.problems if "condition 'wording_only' is not used" in p.message]


NEW = """\
data:
  ketamine: {resources: [MedicationAdministration, MedicationRequest, MedicationStatement], valueset: ketamine}
  luts: {resources: [Condition, Observation], valueset: luts, lookback: P2Y}
course:
  exposure: [ketamine]
  gap: P28D
windows:
  on_treatment: {start: course_start, end: now}
conditions:
  new_symptom:
    new: {data: luts, window: on_treatment, before_course: P365D, by: kind}
tiers:
  - indicator: info
    when: new_symptom
"""


def _dysuria(onset: str, **fields: str) -> dict:
    return {"Condition": {"code": "SNOMED#49650001 Dysuria", "onset": onset, **fields}}


def test_a_problem_active_before_the_course_is_not_new_whatever_its_onset(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, {"t.yaml": rule_text(NEW)})
    course = [admin("-20d"), admin("-10d"), _dysuria("-5d")]
    assert result_of(run(rules, course)).status == FIRED
    assert result_of(run(rules, [_dysuria("-5y", status="active"), *course])).status == NOT_FIRED
    assert result_of(run(rules, [_dysuria("-5y", status="active", abated="-30d"), *course])).status == NOT_FIRED
    assert result_of(run(rules, [_dysuria("-5y", status="resolved", abated="-3y"), *course])).status == FIRED
    assert result_of(run(rules, [_dysuria("-5y", status="resolved"), *course])).status == FIRED
