"""Absence over data that could not be obtained is unknown, in every building block (issue 11 A1).

The record says which resource types could not be (fully) obtained (a failed FHIR query, a prefetch
OperationOutcome, unreadable referenced Medications). A block's answer is true or false only when
that data could not change it: a match found stays true; "none found", "new", "not near", "latest"
and counts or sums short of a threshold become unknown. Each test runs a block twice, on complete and
on incomplete data, so it shows both that the block still decides when it can and that it stops
deciding when it cannot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from rulekit import ESKETAMINE, KETAMINE, NOW, admin, obs, record, result_of, rule_text, ruleset
from test_conditions import BLOCKS, VALUESETS

from cds_service.engine.evaluate import UNDECIDED, evaluate
from cds_service.engine.loader import load_ruleset
from cds_service.engine.model import RuleSet
from cds_service.engine.trace import Truth

T, F, U = Truth.TRUE, Truth.FALSE, Truth.UNKNOWN
OBSERVATIONS = {"Observation": "observation: HTTP 500"}
CONDITIONS = {"Condition": "condition: prefetch OperationOutcome"}
MEDICATIONS = {rtype: "medicationAdministration: HTTP 503"
               for rtype in ("MedicationAdministration", "MedicationRequest", "MedicationStatement")}

EXTRA = """
  culture_negative_near: {count: {data: rbc, where: {near: {data: dipstick, within: P7D}}}}
  screen_not_near_session: {count: {data: dipstick, where: {not_near: {data: ketamine, within: P1D}}}}
  symptom_after_session: {count: {data: luts, where: {near: {data: ketamine, after: PT72H}}}}
  hook_only: {fhirpath: {expression: "%hook = 'patient-view'"}}
  conditions_only:
    fhirpath: {expression: "entry.resource.ofType(Condition).exists()"}
tiers:
"""


@pytest.fixture(scope="module")
def blocks(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    text = rule_text(BLOCKS.replace("\ntiers:\n", "\n" + EXTRA.strip("\n").replace("tiers:", "") + "\ntiers:\n", 1))
    return ruleset(tmp_path_factory.mktemp("absence"), {"blocks.yaml": text}, VALUESETS)


def truth(rules: RuleSet, name: str, items: Iterable[Mapping[str, Any]], unavailable: Mapping[str, str] | None = None,
          *, hook: str = "patient-view", drafts: Sequence[Mapping[str, Any]] = ()) -> tuple[Truth, list[str]]:
    rec = record(list(items), drafts=drafts, rules=rules)
    rec.unavailable.update(unavailable or {})
    outcome = result_of(evaluate(rules, rec, hook=hook, now=NOW)).conditions[name]
    return outcome.truth, outcome.missing


def both(rules: RuleSet, name: str, items: list[dict[str, Any]], unavailable: Mapping[str, str],
         **kwargs: Any) -> tuple[Truth, Truth]:
    """(truth on complete data, truth with ``unavailable``); an UNKNOWN answer must say why."""
    complete, _ = truth(rules, name, items, **kwargs)
    partial, missing = truth(rules, name, items, unavailable, **kwargs)
    if partial is U:
        assert any(why in missing for why in unavailable.values()) or missing, (name, missing)
    return complete, partial


COURSE = [admin("-20d"), admin("-10d"), admin("-3d")]
RBC_5 = obs("LOINC#13945-1", "-2d", "5 /[HPF]")
RBC_1 = obs("LOINC#13945-1", "-2d", "1 /[HPF]")


# ---------------------------------------------------------------- count over findings


def test_count_a_match_found_stays_true(blocks: RuleSet) -> None:
    assert both(blocks, "rbc_micro", [RBC_5], OBSERVATIONS) == (T, T)


def test_count_none_found_is_unknown(blocks: RuleSet) -> None:
    assert both(blocks, "rbc_micro", [RBC_1], OBSERVATIONS) == (F, U)
    assert both(blocks, "rbc_micro", [], OBSERVATIONS) == (F, U)


def test_count_none_found_as_the_condition_is_unknown(blocks: RuleSet) -> None:
    """``at_most: 0`` ("no microhaematuria") is what the review found claimed over a failed query."""
    assert both(blocks, "no_rbc_micro", [RBC_1], OBSERVATIONS) == (T, U)
    assert both(blocks, "no_rbc_micro", [RBC_5], OBSERVATIONS) == (F, F)  # one found already breaks "none"


def test_count_over_a_type_that_is_not_read_is_unaffected(blocks: RuleSet) -> None:
    assert both(blocks, "rbc_micro", [RBC_1], CONDITIONS) == (F, F)


def test_count_over_two_types_one_unavailable(blocks: RuleSet) -> None:
    dysuria = {"Condition": {"code": "SNOMED#49650001", "onset": "-3d"}}
    assert both(blocks, "luts_records", [dysuria], CONDITIONS) == (F, U)
    assert both(blocks, "dysuria", [dysuria], OBSERVATIONS) == (T, T)


# ---------------------------------------------------------------- count over sessions and exposure


def test_count_of_sessions(blocks: RuleSet) -> None:
    assert both(blocks, "ket_recent", COURSE, MEDICATIONS) == (T, T)
    assert both(blocks, "ket_recent", [], MEDICATIONS) == (F, U)


def test_cumulative_dose(blocks: RuleSet) -> None:
    assert both(blocks, "cum_ketamine", [admin("-3d", dose="1200 mg")], MEDICATIONS) == (T, T)
    assert both(blocks, "cum_ketamine", [admin("-3d", dose="35 mg")], MEDICATIONS) == (F, U)
    assert both(blocks, "cum_small", [admin("-3d", dose="35 mg")], MEDICATIONS) == (T, U)  # "below" could break


def test_session_rate(blocks: RuleSet) -> None:
    busy = [admin(f"-{d}d") for d in (1, 2, 3, 4, 5)]
    assert both(blocks, "busy_week", busy, MEDICATIONS) == (T, T)
    assert both(blocks, "busy_week", COURSE, MEDICATIONS) == (F, U)


def test_infusion_duration(blocks: RuleSet) -> None:
    long = [admin("-5d", duration="60 h", dose="500 mg")]
    assert both(blocks, "long_infusion", long, MEDICATIONS) == (T, T)
    assert both(blocks, "long_infusion", COURSE, MEDICATIONS) == (F, U)
    assert both(blocks, "long_infusion", [], MEDICATIONS) == (F, U)


def test_continuous_exposure(blocks: RuleSet) -> None:
    weekly = [admin(f"-{d}d") for d in range(1, 200, 7)]
    assert both(blocks, "long_term", weekly, MEDICATIONS) == (T, T)
    assert both(blocks, "long_term", COURSE, MEDICATIONS) == (F, U)
    assert both(blocks, "long_term", [], MEDICATIONS) == (F, U)


def test_new_course(blocks: RuleSet) -> None:
    drafts = [{"MedicationRequest": {"medication": KETAMINE, "dose": "35 mg"}}]
    old = [admin("-60d")]
    assert both(blocks, "starts_course", old, MEDICATIONS, hook="order-sign", drafts=drafts) == (T, U)
    assert both(blocks, "starts_course", [admin("-3d")], MEDICATIONS, hook="order-sign", drafts=drafts) == (F, F)


def test_planned_gap(blocks: RuleSet) -> None:
    drafts = [{"MedicationRequest": {"medication": KETAMINE, "dose": "35 mg", "start": "+1h"}}]
    assert both(blocks, "soon_after", [admin("-2h")], MEDICATIONS, hook="order-sign", drafts=drafts) == (T, T)
    assert both(blocks, "soon_after", [admin("-5d")], MEDICATIONS, hook="order-sign", drafts=drafts) == (F, U)
    assert both(blocks, "soon_after", [], MEDICATIONS, hook="order-sign", drafts=drafts) == (F, U)


def test_draft_order_comes_from_the_request_and_is_never_unavailable(blocks: RuleSet) -> None:
    drafts = [{"MedicationRequest": {"medication": KETAMINE, "dose": "35 mg"}}]
    assert both(blocks, "draft_any", [], MEDICATIONS, hook="order-sign", drafts=drafts) == (T, T)
    assert both(blocks, "draft_any", [], MEDICATIONS, hook="order-sign") == (F, F)


# ---------------------------------------------------------------- latest, change, new


def test_latest_is_unknown_when_a_later_result_may_be_missing(blocks: RuleSet) -> None:
    high = obs("LOINC#14682-9", "-2d", "150 umol/L")
    assert both(blocks, "creat_high", [high], OBSERVATIONS) == (T, U)
    assert both(blocks, "creat_high", [obs("LOINC#14682-9", "-2d", "80 umol/L")], OBSERVATIONS) == (F, U)
    assert both(blocks, "creat_high", [], OBSERVATIONS) == (F, U)


def test_change_is_unknown_when_the_value_or_baseline_may_be_missing(blocks: RuleSet) -> None:
    items = [*COURSE, obs("LOINC#14682-9", "-40d", "80 umol/L"), obs("LOINC#14682-9", "-2d", "120 umol/L")]
    assert both(blocks, "creat_rise", items, OBSERVATIONS) == (T, U)
    assert both(blocks, "creat_rise", COURSE, OBSERVATIONS) == (F, U)


def test_new_is_unknown_when_the_record_before_the_course_may_be_missing(blocks: RuleSet) -> None:
    """The review's KB-01 case: with the Condition query failed a long-standing dysuria was called "new"."""
    items = [*COURSE, {"Observation": {"code": "SNOMED#49650001", "at": "-2d", "value": True}}]
    assert both(blocks, "new_luts", items, CONDITIONS) == (T, U)
    assert both(blocks, "new_luts", COURSE, CONDITIONS) == (F, U)
    assert both(blocks, "new_luts", items, MEDICATIONS) == (T, U)  # the course may have started earlier


def test_window_without_a_course_is_unknown_when_sessions_may_be_missing(blocks: RuleSet) -> None:
    blood = obs("LOINC#5794-3", "-2d", "2+")
    assert both(blocks, "blood", [blood], MEDICATIONS) == (F, U)


# ---------------------------------------------------------------- near / not near, FHIRPath


def test_near_found_stays_true_none_found_is_unknown(blocks: RuleSet) -> None:
    pair = [RBC_5, obs("LOINC#5794-3", "-3d", "2+")]
    assert both(blocks, "culture_negative_near", pair, {"Observation": "observation: HTTP 500"}) == (T, T)
    assert both(blocks, "culture_negative_near", [RBC_5], OBSERVATIONS) == (F, U)


def test_not_near_a_session_is_unknown_when_sessions_may_be_missing(blocks: RuleSet) -> None:
    """The review's KB-14 case: "positive screen outside recorded sessions … assess misuse" over a failed query."""
    screen = obs("LOINC#5794-3", "-2d", "2+")
    assert both(blocks, "screen_not_near_session", [screen], MEDICATIONS) == (T, U)
    assert both(blocks, "screen_not_near_session", [screen, admin("-2d")], MEDICATIONS) == (F, F)


def test_fhirpath_over_the_record(blocks: RuleSet) -> None:
    recent = [obs("LOINC#5794-3", "-2d", "2+")]
    assert both(blocks, "recent_obs", recent, OBSERVATIONS) == (T, U)
    assert both(blocks, "hook_only", [], OBSERVATIONS) == (T, T)  # reads no data
    assert both(blocks, "conditions_only", [], OBSERVATIONS) == (F, F)  # reads a type that was obtained
    assert both(blocks, "conditions_only", [], CONDITIONS) == (F, U)


def test_esketamine_sessions_too(blocks: RuleSet) -> None:
    assert both(blocks, "cum_esketamine", [admin("-3d", medication=ESKETAMINE, dose="56 mg")], MEDICATIONS) == (F, U)


# ---------------------------------------------------------------- the review's cases on the bundled rules


@pytest.fixture(scope="module")
def project() -> RuleSet:
    loaded = load_ruleset([Path(__file__).resolve().parents[1] / "rules"])
    assert loaded.ruleset is not None
    return loaded.ruleset


def shown_and_undecided(rules: RuleSet, items: list[dict[str, Any]], unavailable: Mapping[str, str],
                        hook: str = "patient-view", drafts: Sequence[Mapping[str, Any]] = ()) -> tuple[set, set]:
    rec = record(items, drafts=drafts, rules=rules)
    rec.unavailable.update(unavailable)
    evaluation = evaluate(rules, rec, hook=hook, now=NOW)
    return {r.rule.id for r in evaluation.shown()}, {r.rule.id for r in evaluation.results if r.status == UNDECIDED}


def test_kb14_never_suggests_misuse_when_administrations_could_not_be_read(project: RuleSet) -> None:
    screen = obs("LOINC#12327-3", "-20d", "positive")
    drafts = [{"MedicationRequest": {"medication": KETAMINE, "dose": "35 mg", "start": "+1d"}}]
    shown, _ = shown_and_undecided(project, [screen], {}, hook="order-sign", drafts=drafts)
    assert "KB-14" in shown  # complete data: the screen is outside any recorded session
    shown, undecided = shown_and_undecided(project, [screen], MEDICATIONS, hook="order-sign", drafts=drafts)
    assert "KB-14" not in shown and "KB-14" in undecided


def test_no_rule_claims_a_missing_urinalysis_when_observations_could_not_be_read(project: RuleSet) -> None:
    drafts = [{"MedicationRequest": {"medication": KETAMINE, "dose": "35 mg"}}]
    shown, undecided = shown_and_undecided(project, [], OBSERVATIONS, hook="order-sign", drafts=drafts)
    assert "KB-06" not in shown and "KB-15" not in shown
    assert "KB-06" in undecided
