"""The record as real EHRs and labs write it (issue 16): each shape gives the card its plain form gives.

Panels with components, ranges and lab unit strings, resolved problems dated by text, doses only on the
order, and culture and imaging reports, evaluated with the bundled rules at a fixed ``now``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import shapes as s
from rulekit import NOW, RULES, record, result_of, run

from cds_service.clinical.findings import Bounds, Value, bounds_hold, event_time, quantity_of_text, value_of
from cds_service.decision.catalog import build_templates
from cds_service.engine.evaluate import Evaluation
from cds_service.engine.loader import load_ruleset
from cds_service.engine.model import RuleSet


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    loaded = load_ruleset([RULES])
    assert loaded.ruleset is not None, loaded.problems
    return loaded.ruleset


def cards(evaluation: Evaluation) -> dict[str, str]:
    """Rule id → fired indicator."""
    return {r.rule.id: r.fired.indicator for r in evaluation.results if r.fired is not None}


def summaries(evaluation: Evaluation) -> dict[str, tuple[str, str]]:
    from cds_service.engine.cards import build_cards

    built = build_cards(evaluation, patient_id="p1", new_id=lambda: "x")
    return {c["extension"]["org.kbladder-cds.rule"]["id"]: (c["indicator"], c["summary"]) for c in built}


# ---------------------------------------------------------------- 1. resolved problems and onsets


def test_resolved_childhood_haematuria_recorded_during_the_course_gives_no_card(rules: RuleSet) -> None:
    evaluation = run(rules, [*s.course(), s.childhood_hematuria()])
    assert "KB-02" not in cards(evaluation)  # was: critical "Visible or heavy blood in urine"


def test_an_active_problem_dated_only_by_text_is_not_moved_into_the_course(rules: RuleSet) -> None:
    evaluation = run(rules, [*s.course(), s.childhood_hematuria(status="active")])
    assert "KB-02" not in cards(evaluation)


def test_a_resolved_problem_is_history_the_record_keeps_out_of_current_findings(rules: RuleSet) -> None:
    patient = record([s.childhood_hematuria(onsetDateTime="-10d")], rules=rules)
    gross = rules.valuesets["gross-hematuria"]
    assert patient.findings(gross, ("Condition",)) == []
    assert [f.status for f in patient.findings(gross, ("Condition",), history=True)] == ["resolved"]


def test_a_condition_with_an_abatement_and_no_clinical_status_is_resolved(rules: RuleSet) -> None:
    condition = s.childhood_hematuria(onsetDateTime="-10d")
    del condition["clinicalStatus"]
    condition["abatementDateTime"] = "-5d"
    assert run(rules, [*s.course(), condition]).results and "KB-02" not in cards(run(rules, [*s.course(), condition]))


def test_an_active_visible_haematuria_with_a_dated_onset_in_the_course_is_still_critical(rules: RuleSet) -> None:
    evaluation = run(rules, [*s.course(), s.childhood_hematuria(status="active", onsetDateTime="-10d")])
    assert cards(evaluation)["KB-02"] == "critical"


@pytest.mark.parametrize(("onset", "inside"), [
    ({"onsetAge": {"value": 8, "unit": "a", "system": s.UCUM, "code": "a"}}, False),
    ({"onsetAge": {"value": 39.95, "unit": "years"}}, True),  # birth 1986-06-01 (age 40): ~18 days ago
    ({"onsetRange": {"low": {"value": 5, "unit": "a"}, "high": {"value": 12, "unit": "a"}}}, False),
    ({"onsetPeriod": {"start": "-15d", "end": "-12d"}}, True),
    ({"onsetPeriod": {"start": "-3y", "end": "-2y"}}, False),
])
def test_onset_age_range_and_period_are_placed_from_the_birth_date_and_bounds(
    rules: RuleSet, onset: dict[str, Any], inside: bool
) -> None:
    evaluation = run(rules, [*s.course(), s.childhood_hematuria(status="active", **onset)])
    assert ("KB-02" in cards(evaluation)) is inside


def test_an_onset_age_without_a_birth_date_is_unknown_not_the_recorded_date() -> None:
    condition = s.childhood_hematuria(onsetAge={"value": 30, "unit": "a"})
    condition["recordedDate"] = "2026-05-20"
    assert event_time(condition, None) == (None, None)
    del condition["onsetAge"]
    assert event_time(condition, None)[0] is not None  # no onset at all: the recorded date is all there is


def test_a_resolved_ketamine_uropathy_still_counts_where_the_rule_asks_for_history(rules: RuleSet) -> None:
    ku = {"resourceType": "Condition", "id": "ku", "subject": {"reference": "Patient/p1"},
          "clinicalStatus": {"coding": [{"system": s.CLINICAL, "code": "resolved"}]},
          "code": {"coding": [{"system": "https://kbladder-cds.org/fhir/CodeSystem/kbladder",
                               "code": "ketamine-uropathy"}]}, "onsetDateTime": "-3y"}
    draft = {"MedicationRequest": {"medication": "SNOMED#781954001", "dose": "35 mg", "start": "+1d"}}
    evaluation = run(rules, [ku], hook="order-sign", drafts=[draft])
    assert cards(evaluation)["KB-09"] == "critical"


# ---------------------------------------------------------------- 2. components are results


def test_a_component_panel_and_separate_observations_give_the_same_cards(rules: RuleSet) -> None:
    culture = {"Observation": {"code": "LOINC#630-4", "value": "SNOMED#264868006 No growth", "at": "-2d"}}
    panel = summaries(run(rules, [*s.course(), s.ua_panel(), culture]))
    separate = summaries(run(rules, [*s.course(), *s.ua_separate(), culture]))
    assert panel == separate
    assert panel["KB-02"][0] == "critical"  # 30 RBC/HPF > 25
    assert panel["KB-03"][0] == "warning"  # pyuria with a sterile culture


def test_components_keep_their_panel_status_time_and_own_reference_range(rules: RuleSet) -> None:
    cancelled = run(rules, [*s.course(), s.ua_panel(status="cancelled")])
    assert "KB-02" not in cards(cancelled)
    patient = record([s.ua_panel(results={s.RBC: {**s.count(4), "referenceRange": [{"high": {"value": 2}}]}})],
                     rules=rules)
    (finding,) = patient.findings(rules.valuesets["urine-rbc-microscopy"], ("Observation",))
    assert finding.ref == "Observation/ua1.component[0]"
    assert finding.time == NOW - timedelta(days=3)
    assert finding.uln == (2.0, None)
    assert finding.value is not None and finding.value.quantity == 4


def test_evidence_shows_each_component_with_a_reference_to_its_panel(rules: RuleSet) -> None:
    result = result_of(run(rules, [*s.course(), s.ua_panel()]), "KB-02")
    refs = {row.ref for tier in result.tiers for row in tier.outcome.evidence}
    assert "Observation/ua1.component[3]" in refs  # the red-cell count


# ---------------------------------------------------------------- 3. results as labs write them


@pytest.mark.parametrize(("value", "expected"), [
    ({"valueRange": {"low": {"value": 30, "unit": "/HPF", "system": s.UCUM, "code": "/[HPF]"},
                     "high": {"value": 40, "unit": "/HPF", "system": s.UCUM, "code": "/[HPF]"}}}, "critical"),
    ({"valueString": ">100"}, "critical"),
    ({"valueString": "10-20"}, "warning"),  # microhaematuria for sure; heavy undecided, said on the card
    ({"valueString": "<3"}, None),
    ({"valueQuantity": {"value": 50, "comparator": ">", "unit": "RBC/HPF"}}, "critical"),
    (s.count(8, "RBC/HPF"), "warning"),
    (s.count(8, "cells/HPF"), "warning"),
    (s.count(8, "/hpf"), "warning"),
    (s.count(8, "per HPF"), "warning"),
    ({"valueString": "8 RBC/HPF"}, "warning"),
])
def test_red_cell_counts_as_labs_write_them(rules: RuleSet, value: dict[str, Any], expected: str | None) -> None:
    assert cards(run(rules, [*s.course(), s.rbc(**value)])).get("KB-02") == expected


def test_an_undecided_range_is_named_on_the_card(rules: RuleSet) -> None:
    built = summaries(run(rules, [*s.course(), s.rbc(valueString="10-40")]))
    assert built["KB-02"][0] == "warning"
    result = result_of(run(rules, [*s.course(), s.rbc(valueString="10-40")]), "KB-02")
    assert any("10-40" in note and "undecided" in note for note in result.missing), result.missing


def test_a_unit_string_outside_the_table_is_never_guessed_and_shows_as_undecided(rules: RuleSet) -> None:
    result = result_of(run(rules, [*s.course(), s.rbc(**s.count(40, "RBC/LPF"))]), "KB-02")
    assert result.fired is None
    assert any("'RBC/LPF' cannot be converted" in note for note in result.missing), result.missing


def test_a_site_adds_its_laboratory_unit_strings_in_the_site_file(tmp_path: Any) -> None:
    site = tmp_path / "site.yaml"
    site.write_text('units:\n  "/[HPF]": ["RBC/LPF x4"]\n', encoding="utf-8")
    extended = load_ruleset([RULES], site=site).ruleset
    assert extended is not None
    assert extended.unit_aliases.resolve("rbc/lpf  X4", "/[HPF]") == "/[HPF]"
    assert extended.unit_aliases.resolve("RBC/LPF x4", "{CFU}/mL") == "RBC/LPF x4"  # other kinds: untouched
    site.write_text('units:\n  "cells per field": ["x"]\n', encoding="utf-8")
    problems = load_ruleset([RULES], site=site).problems
    assert any("is not a UCUM unit" in p.message for p in problems)


@pytest.mark.parametrize(("op", "threshold", "bounds", "expected"), [
    ("above", 25, Bounds(30, 40), True),
    ("above", 25, Bounds(10, 30), None),
    ("above", 25, Bounds(10, 20), False),
    ("above", 100, Bounds(100, None, low_open=True), True),  # ">100"
    ("at_least", 3, Bounds(None, 3, high_open=True), False),  # "<3"
    ("at_least", 3, Bounds(3, 5), True),
    ("below", 1000, Bounds(None, 1000, high_open=True), True),  # "<1000 CFU/mL"
    ("at_most", 5, Bounds(6, None), False),
    ("equals", 5, Bounds(5, 5), True),
])
def test_ranges_are_compared_conservatively(op: str, threshold: float, bounds: Bounds, expected: bool | None) -> None:
    assert bounds_hold(op, threshold, bounds) is expected


def test_text_results_become_numbers_or_ranges_with_their_unit() -> None:
    assert quantity_of_text("10-20") == (None, Bounds(10, 20), None)
    assert quantity_of_text(">100 RBC/HPF") == (None, Bounds(100, None, low_open=True), "RBC/HPF")
    assert quantity_of_text("<3") == (None, Bounds(None, 3, high_open=True), None)
    assert quantity_of_text("5,5 /hpf") == (5.5, None, "/hpf")
    assert quantity_of_text("many") is None
    assert value_of({"valueString": "trace"}, {}) == Value(ordinal=0.5, text="trace")


# ---------------------------------------------------------------- 4. the dose on the order


def infusions(order: str | None = "order1") -> list[dict[str, Any]]:
    return [s.infusion(f"inf{i}", day, 8, order) for i, day in enumerate((-26, -22, -18, -14, -10, -6, -2))]


def test_a_rate_on_the_order_times_the_administration_period_is_the_dose(rules: RuleSet) -> None:
    patient = record([s.weight(80, "-30d"), s.infusion_order(), *infusions()], rules=rules)
    sessions = patient.sessions(rules.valuesets["ketamine"], rules.valuesets["body-weight"], NOW)
    assert [round(x.dose.mg or 0) for x in sessions] == [320] * 7  # 0.5 mg/kg/h × 80 kg × 8 h
    assert sessions[0].dose.how.startswith("dose from the order MedicationRequest/order1: 0.5 mg/kg/h × 80 kg × 8 h")


def test_dose_on_the_order_makes_the_cumulative_dose_known(rules: RuleSet) -> None:
    draft = {"MedicationRequest": {"medication": "SNOMED#781954001", "dose": "35 mg", "start": "+1d"}}
    before = run(rules, [s.weight(80, "-30d"), *infusions(order=None)], hook="order-sign", drafts=[draft])
    after = run(rules, [s.weight(80, "-30d"), s.infusion_order(), *infusions()], hook="order-sign", drafts=[draft])
    assert cards(after)["KB-04"] == "warning"  # 2240 mg in 28 days
    assert "KB-04" not in cards(before)
    evidence = [row for tier in result_of(after, "KB-04").tiers for row in tier.outcome.evidence]
    assert any("dose from the order" in row.note for row in evidence)


def test_administrations_without_any_dose_are_counted_for_the_card(rules: RuleSet) -> None:
    patient = record([*infusions(order=None)], rules=rules)
    (sentence,) = patient.undosed_administrations([rules.valuesets["ketamine"]], None, NOW)
    assert sentence.startswith("7 of 7 ketamine administration(s) have no usable dose")
    patient = record([s.infusion_order(rate=(20, "mg/h")), *infusions()], rules=rules)
    assert patient.undosed_administrations([rules.valuesets["ketamine"]], None, NOW) == []


# ---------------------------------------------------------------- 5. reports


def test_a_culture_report_concluding_no_growth_makes_pyuria_sterile(rules: RuleSet) -> None:
    esterase = {"Observation": {"code": "LOINC#5799-2", "value": "positive", "at": "-3d"}}
    assert cards(run(rules, [*s.course(), esterase, s.culture_report()]))["KB-03"] == "warning"
    assert "KB-03" not in cards(run(rules, [*s.course(), esterase]))


def test_an_ultrasound_report_concluding_hydronephrosis_is_critical(rules: RuleSet) -> None:
    assert cards(run(rules, [*s.course(), s.ultrasound_report()]))["KB-11"] == "critical"
    assert "KB-11" not in cards(run(rules, [*s.course(), s.ultrasound_report(status="entered-in-error")]))
    assert "KB-11" not in cards(run(rules, [*s.course(), s.ultrasound_report(at="-60d")]))  # before the course


def test_a_thickened_bladder_wall_conclusion_is_critical_by_its_wording(rules: RuleSet) -> None:
    finding = {"text": "Thickened bladder wall"}
    evaluation = run(rules, [*s.course(), s.ultrasound_report(finding=finding)])
    assert cards(evaluation)["KB-11"] == "critical"
    assert summaries(evaluation)["KB-11"][1].startswith("Thickened or contracted bladder on imaging after ketamine")


def test_prefetch_brings_panels_and_the_culture_and_imaging_reports(rules: RuleSet) -> None:
    templates = build_templates(rules, "patient-view")
    assert "http://loinc.org|24356-8" in templates["observation"]
    assert "http://loinc.org|24357-6" in templates["observation"]
    report = templates["diagnosticReport"]
    codes = set(report.split("code=")[1].split("&")[0].split(","))
    assert codes == {"http://loinc.org|630-4", "http://loinc.org|38036-0", "http://loinc.org|25019-1"}


# ---------------------------------------------------------------- ranges in a change from baseline


def egfr(at: str, rid: str, **value: Any) -> dict[str, Any]:
    code = "98979-8"
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": s.loinc(code, "eGFR CKD-EPI 2021"), "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": at, **value}


def test_a_baseline_egfr_written_as_above_90_is_still_a_baseline(rules: RuleSet) -> None:
    baseline = egfr("-60d", "e0", valueQuantity={"value": 90, "comparator": ">", "unit": "mL/min/1.73m2"})
    current = egfr("-2d", "e1", valueQuantity={"value": 45, "unit": "mL/min/1.73m2"})
    assert cards(run(rules, [*s.course(), baseline, current])).get("KB-07") == "critical"  # fall ≥ 50 %


def test_a_range_baseline_that_straddles_a_tier_leaves_it_undecided_with_the_reason(rules: RuleSet) -> None:
    baseline = egfr("-60d", "e0", valueString=">60")
    current = egfr("-2d", "e1", valueQuantity={"value": 45, "unit": "mL/min/1.73m2"})
    result = result_of(run(rules, [*s.course(), baseline, current]), "KB-07")
    assert result.fired is not None and result.fired.indicator == "warning"  # ≥ 25 % for any baseline above 60
    assert any(">60" in note and "undecided" in note for note in result.missing), result.missing


def test_resolved_uti_episodes_still_count_as_recurrent_culture_negative_utis(rules: RuleSet) -> None:
    def uti(rid: str, day: int) -> dict[str, Any]:
        return {"resourceType": "Condition", "id": rid, "subject": {"reference": "Patient/p1"},
                "clinicalStatus": {"coding": [{"system": s.CLINICAL, "code": "resolved"}]},
                "code": {"coding": [{"system": s.SNOMED, "code": "68566005"}]}, "onsetDateTime": f"{day}d",
                "abatementDateTime": f"{day + 7}d"}

    def culture(rid: str, day: int) -> dict[str, Any]:
        return s.culture_report(at=f"{day}d", rid=rid)

    data = [*s.course(), uti("u1", -35), culture("c1", -35), uti("u2", -15), culture("c2", -15)]
    assert cards(run(rules, data)).get("KB-03") == "warning"
