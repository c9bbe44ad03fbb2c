"""Condition building blocks evaluated end to end: YAML rule → load_ruleset → PatientRecord → evaluate.

One rule names a condition per block (and per variant); each test builds a small patient in
the rule-test shorthand and reads the outcome of the condition it is about, at a fixed now.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rulekit import ESKETAMINE, KETAMINE, NOW, admin, obs, record, result_of, rule_text, ruleset, run

from cds_service.clinical.record import PatientRecord
from cds_service.clinical.timeutil import iso
from cds_service.engine.evaluate import FIRED, NOT_FIRED, SKIPPED, SUPPRESSED, UNDECIDED, evaluate
from cds_service.engine.model import RuleSet
from cds_service.engine.trace import Outcome, Truth

VALUESETS = {
    "creatinine.yaml": """
        id: creatinine
        title: serum creatinine
        concepts:
          - {system: http://loinc.org, code: 2160-0, display: Creatinine (mass), source: test}
          - {system: http://loinc.org, code: 14682-9, display: Creatinine (molar), source: test}
    """,
    "luts.yaml": """
        id: luts
        title: lower urinary tract symptoms
        concepts:
          - {system: http://snomed.info/sct, code: "49650001", display: Dysuria, kind: dysuria, source: test}
          - {system: http://hl7.org/fhir/sid/icd-10-cm, code: R30.0, display: Dysuria, kind: dysuria, source: test}
          - {system: http://snomed.info/sct, code: "139394000", display: Nocturia, kind: nocturia, source: test}
    """,
}

BLOCKS = """
parameters:
  lookback: {type: duration, default: P365D}
  rbc_micro: {type: quantity, default: 3, unit: "/[HPF]"}
  cum_info: {type: quantity, default: 1000, unit: mg}
  creat_limit: {type: quantity, default: 100, unit: umol/L}
data:
  ketamine:
    resources: [MedicationAdministration, MedicationRequest, MedicationStatement]
    valueset: ketamine
    lookback: $lookback
    body_weight: weight
  esketamine:
    resources: [MedicationAdministration, MedicationRequest, MedicationStatement]
    valueset: esketamine
    lookback: $lookback
  weight: {resources: [Observation], valueset: body-weight}
  dipstick: {resources: [Observation], valueset: urine-blood-dipstick}
  rbc: {resources: [Observation], valueset: urine-rbc-microscopy, unit: "/[HPF]"}
  creat: {resources: [Observation], valueset: creatinine, unit: umol/L, molar_mass: 113.12}
  luts: {resources: [Condition, Observation], valueset: luts}
course:
  exposure: [ketamine, esketamine]
  gap: P28D
windows:
  recent: {last: P28D}
  on_treatment: {start: course_start, end: {anchor: last_session, plus: P90D}}
  baseline: {start: {anchor: course_start, minus: P90D}, end: course_start}
conditions:
  ket_recent: {count: {data: ketamine, window: recent}}
  blood: {count: {data: dipstick, window: on_treatment, where: {value: {at_least: trace}}}}
  rbc_micro: {count: {data: rbc, window: recent, where: {value: {at_least: $rbc_micro}}}}
  no_rbc_micro: {count: {data: rbc, window: recent, where: {value: {at_least: $rbc_micro}}, at_most: 0}}
  luts_records: {count: {data: luts, window: recent, at_least: 2}}
  luts_kinds: {count: {data: luts, window: recent, distinct: kind, at_least: 2}}
  dysuria: {count: {data: luts, window: recent, where: {kind: [dysuria]}}}
  creat_high: {latest: {data: creat, window: recent, value: {above: $creat_limit}}}
  creat_rise: {change: {data: creat, window: on_treatment, direction: rise, baseline: {window: baseline},
                        percent: {at_least: 25}}}
  creat_fall: {change: {data: creat, window: on_treatment, direction: fall, baseline: {window: baseline},
                        percent: {at_least: 25}}}
  creat_jump: {change: {data: creat, direction: rise, absolute: {at_least: 26.5},
                        baseline: {pick: min, window: {start: {anchor: current, minus: PT48H}, end: current}}}}
  cum_ketamine: {cumulative_dose: {data: ketamine, window: recent, at_least: $cum_info}}
  cum_esketamine: {cumulative_dose: {data: esketamine, window: recent, at_least: 100 mg}}
  cum_small: {cumulative_dose: {data: ketamine, window: recent, at_most: 100 mg}}
  busy_week: {session_rate: {data: ketamine, period: P7D, above: 3}}
  busy_weeks: {session_rate: {data: ketamine, period: P7D, consecutive: 2, above: 3}}
  long_infusion: {infusion_duration: {data: ketamine, at_least: PT48H}}
  long_term: {continuous_exposure: {data: [ketamine, esketamine], max_gap: P14D, at_least: P6M}}
  starts_course: {new_course: {}}
  new_luts: {new: {data: luts, window: on_treatment}}
  draft_any: {draft_order: {data: ketamine}}
  draft_big: {draft_order: {data: ketamine, dose: {above: 100 mg}}}
  soon_after: {planned_gap: {data: [ketamine, esketamine], below: PT24H}}
  recent_obs:
    fhirpath:
      expression: >-
        entry.resource.where(resourceType = 'Observation' and effective >= (%now - 7 days)).exists()
  rbc_by_fhirpath: {count: {data: rbc, where: {fhirpath: "value.value > %rbc_micro"}}}
tiers:
  - indicator: info
    when:
      any: [ket_recent, blood, rbc_micro, no_rbc_micro, luts_records, luts_kinds, dysuria, creat_high, creat_rise,
            creat_fall, creat_jump, cum_ketamine, cum_esketamine, cum_small, busy_week, busy_weeks, long_infusion,
            long_term, starts_course, new_luts, draft_any, draft_big, soon_after, recent_obs, rbc_by_fhirpath]
"""


@pytest.fixture(scope="module")
def blocks(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    return ruleset(tmp_path_factory.mktemp("blocks"), {"blocks.yaml": rule_text(BLOCKS)}, VALUESETS)


def outcomes(rules: RuleSet, items: Iterable[Mapping[str, Any]], *, hook: str = "patient-view",
             drafts: Sequence[Mapping[str, Any]] = ()) -> dict[str, Outcome]:
    return result_of(run(rules, list(items), hook=hook, drafts=drafts)).conditions


def at(delta: timedelta) -> str:
    """An exact instant relative to NOW, for boundary tests."""
    return iso(NOW + delta)


DAY, SECOND = timedelta(days=1), timedelta(seconds=1)


def condition(code: str, onset: str) -> dict[str, Any]:
    return {"Condition": {"code": code, "onset": onset}}


def draft(**fields: Any) -> dict[str, Any]:
    return {"MedicationRequest": {"medication": KETAMINE, **fields}}


# ---------------------------------------------------------------- count and windows


def test_count_of_sessions_in_a_window(blocks: RuleSet) -> None:
    got = outcomes(blocks, [admin("-10d"), admin("-3d"), admin("-40d")])["ket_recent"]
    assert got.truth is Truth.TRUE and got.value == 2
    assert [e.ref for e in got.evidence] == ["MedicationAdministration/admin1", "MedicationAdministration/admin2"]


@pytest.mark.parametrize(
    ("offset", "counted"),
    [(-28 * DAY, True), (-28 * DAY - SECOND, False), (timedelta(0), True), (SECOND, False)],
    ids=["at-start", "second-before-start", "at-now", "second-after-now"],
)
def test_last_window_boundaries(blocks: RuleSet, offset: timedelta, counted: bool) -> None:
    got = outcomes(blocks, [admin(at(offset))])["ket_recent"]
    assert got.truth is Truth.of(counted)


@pytest.mark.parametrize(
    ("when", "counted"),
    [("2026-05-04T11:00:00+02:00", True), ("2026-05-04T10:59:59+02:00", False),
     ("2026-05-04T04:00:00-05:00", True), ("2026-05-04T03:59:59-05:00", False)],
)
def test_window_boundaries_hold_across_time_zones(blocks: RuleSet, when: str, counted: bool) -> None:
    # NOW − 28 d is 2026-05-04T09:00:00Z whatever offset the data was written in
    assert outcomes(blocks, [admin(when)])["ket_recent"].truth is Truth.of(counted)


@pytest.mark.parametrize(
    ("offset", "counted"),
    [(-30 * DAY, True), (-30 * DAY - SECOND, False)],
    ids=["at-course-start", "second-before-course-start"],
)
def test_anchored_window_start_boundary(blocks: RuleSet, offset: timedelta, counted: bool) -> None:
    items = [admin(at(-30 * DAY)), admin("-20d"), obs("LOINC#5794-3", at(offset), "1+")]
    assert outcomes(blocks, items)["blood"].truth is Truth.of(counted)


@pytest.mark.parametrize(
    ("offset", "counted"),
    [(-10 * DAY, True), (-10 * DAY + SECOND, False)],
    ids=["at-follow-up-end", "second-after-follow-up-end"],
)
def test_anchored_window_end_boundary(blocks: RuleSet, offset: timedelta, counted: bool) -> None:
    # last session at −100 d; the on-treatment window ends 90 d later, at −10 d
    items = [admin(at(-100 * DAY)), obs("LOINC#5794-3", at(offset), "1+")]
    assert outcomes(blocks, items)["blood"].truth is Truth.of(counted)


def test_window_without_its_anchor_is_false_with_a_reason(blocks: RuleSet) -> None:
    got = outcomes(blocks, [obs("LOINC#5794-3", "-2d", "2+")])["blood"]
    assert got.truth is Truth.FALSE
    assert "no course start" in got.detail


def test_count_where_value_with_a_quantity_threshold(blocks: RuleSet) -> None:
    three = outcomes(blocks, [obs("LOINC#13945-1", "-2d", "3 /[HPF]")])
    two = outcomes(blocks, [obs("LOINC#13945-1", "-2d", "2 /[HPF]")])
    assert three["rbc_micro"].truth is Truth.TRUE
    assert two["rbc_micro"].truth is Truth.FALSE


def test_count_with_an_unreadable_result_is_unknown_with_what_is_missing(blocks: RuleSet) -> None:
    got = outcomes(blocks, [obs("LOINC#13945-1", "-2d", "see comment")])
    assert got["rbc_micro"].truth is Truth.UNKNOWN
    assert got["rbc_micro"].missing and "not a number" in got["rbc_micro"].missing[0]
    # an upper bound is no more decidable: the unreadable result might be a positive one
    assert got["no_rbc_micro"].truth is Truth.UNKNOWN


def test_count_upper_bound_decided_when_all_results_are_readable(blocks: RuleSet) -> None:
    assert outcomes(blocks, [obs("LOINC#13945-1", "-2d", "1 /[HPF]")])["no_rbc_micro"].truth is Truth.TRUE
    assert outcomes(blocks, [obs("LOINC#13945-1", "-2d", "9 /[HPF]")])["no_rbc_micro"].truth is Truth.FALSE


def test_count_unknown_does_not_hide_a_count_already_reached(blocks: RuleSet) -> None:
    items = [obs("LOINC#13945-1", "-3d", "5 /[HPF]"), obs("LOINC#13945-1", "-2d", "see comment")]
    got = outcomes(blocks, items)["rbc_micro"]
    assert got.truth is Truth.TRUE and got.missing == []


def test_count_distinct_kind(blocks: RuleSet) -> None:
    same_kind = outcomes(blocks, [condition("SNOMED#49650001 Dysuria", "-5d"), condition("ICD10CM#R30.0", "-4d")])
    assert same_kind["luts_records"].truth is Truth.TRUE  # two records …
    assert same_kind["luts_kinds"].value == 1  # … of one kind
    assert same_kind["luts_kinds"].truth is Truth.FALSE
    two_kinds = outcomes(blocks, [condition("SNOMED#49650001 Dysuria", "-5d"), condition("SNOMED#139394000", "-4d")])
    assert two_kinds["luts_kinds"].truth is Truth.TRUE and two_kinds["luts_kinds"].value == 2


def test_where_kind_filters_by_value_set_class(blocks: RuleSet) -> None:
    assert outcomes(blocks, [condition("SNOMED#139394000", "-4d")])["dysuria"].truth is Truth.FALSE
    assert outcomes(blocks, [condition("ICD10CM#R30.0", "-4d")])["dysuria"].truth is Truth.TRUE


def test_refuted_and_erroneous_records_do_not_count(blocks: RuleSet) -> None:
    items = [
        {"Condition": {"code": "SNOMED#49650001", "onset": "-4d", "verification": "refuted"}},
        {"Condition": {"code": "SNOMED#49650001", "onset": "-3d", "verification": "entered-in-error"}},
        obs("LOINC#13945-1", "-2d", "9 /[HPF]", status="entered-in-error"),
    ]
    got = outcomes(blocks, items)
    assert got["dysuria"].truth is Truth.FALSE
    assert got["rbc_micro"].truth is Truth.FALSE


# ---------------------------------------------------------------- latest and change


def test_latest_converts_mass_to_molar_units(blocks: RuleSet) -> None:
    # 1.2 mg/dL ≈ 106 umol/L > 100; the latest value decides, not the highest
    assert outcomes(blocks, [obs("LOINC#2160-0", "-2d", "1.2 mg/dL")])["creat_high"].truth is Truth.TRUE
    older_high = [obs("LOINC#2160-0", "-5d", "1.5 mg/dL"), obs("LOINC#14682-9", "-1d", "90 umol/L")]
    got = outcomes(blocks, older_high)["creat_high"]
    assert got.truth is Truth.FALSE and got.value == "90 umol/L"


def test_latest_with_no_value_in_the_window_is_false(blocks: RuleSet) -> None:
    got = outcomes(blocks, [obs("LOINC#2160-0", "-40d", "3 mg/dL")])["creat_high"]
    assert got.truth is Truth.FALSE and "no creat" in got.detail


def creatinine_course(current: str) -> list[dict[str, Any]]:
    """Baseline 0.9 mg/dL 30 days before a course that started 20 days ago, then ``current``."""
    return [obs("LOINC#2160-0", "-50d", "0.9 mg/dL"), admin("-20d"), admin("-10d"), obs("LOINC#2160-0", "-2d", current)]


def test_change_percent_from_the_pre_course_baseline(blocks: RuleSet) -> None:
    risen = outcomes(blocks, creatinine_course("1.2 mg/dL"))  # +33 %
    assert risen["creat_rise"].truth is Truth.TRUE
    assert risen["creat_fall"].truth is Truth.FALSE
    assert [e.note for e in risen["creat_rise"].evidence] == ["baseline", "current"]
    assert outcomes(blocks, creatinine_course("1.1 mg/dL"))["creat_rise"].truth is Truth.FALSE  # +22 %


def test_change_fall_direction(blocks: RuleSet) -> None:
    fallen = outcomes(blocks, creatinine_course("0.6 mg/dL"))  # −33 %
    assert fallen["creat_fall"].truth is Truth.TRUE
    assert fallen["creat_rise"].truth is Truth.FALSE


def test_change_mixes_units_through_the_molar_mass(blocks: RuleSet) -> None:
    items = [obs("LOINC#14682-9", "-50d", "80 umol/L"), admin("-20d"), obs("LOINC#2160-0", "-2d", "1.2 mg/dL")]
    assert outcomes(blocks, items)["creat_rise"].truth is Truth.TRUE  # 80 → 106 umol/L


def test_change_without_a_baseline_is_unknown(blocks: RuleSet) -> None:
    got = outcomes(blocks, [admin("-20d"), obs("LOINC#2160-0", "-2d", "2 mg/dL")])["creat_rise"]
    assert got.truth is Truth.UNKNOWN
    assert got.missing and "no baseline" in got.missing[0]


@pytest.mark.parametrize(
    ("baseline_at", "truth"),
    [(-3 * DAY, Truth.TRUE), (-3 * DAY - SECOND, Truth.UNKNOWN)],
    ids=["48h-before-current", "48h-and-a-second-before"],
)
def test_change_baseline_anchored_on_the_current_value(blocks: RuleSet, baseline_at: timedelta, truth: Truth) -> None:
    # current value at −1 d; the baseline window is the 48 h before it
    items = [obs("LOINC#14682-9", at(baseline_at), "80 umol/L"), obs("LOINC#14682-9", "-1d", "110 umol/L")]
    assert outcomes(blocks, items)["creat_jump"].truth is truth


def test_change_baseline_pick_min(blocks: RuleSet) -> None:
    items = [
        obs("LOINC#14682-9", "-2d", "80 umol/L"),
        obs("LOINC#14682-9", "-36h", "100 umol/L"),
        obs("LOINC#14682-9", "-1d", "110 umol/L"),
    ]
    got = outcomes(blocks, items)["creat_jump"]
    assert got.truth is Truth.TRUE  # 110 − min(80, 100) = 30 ≥ 26.5 (latest baseline would give only 10)


# ---------------------------------------------------------------- doses


def test_cumulative_dose_sums_racemic_ketamine_in_mg(blocks: RuleSet) -> None:
    items = [{"Observation": {"code": "LOINC#29463-7", "value": "70 kg", "at": "-20d"}},
             admin("-10d", dose="0.5 g"), admin("-5d", dose="7 mg/kg")]  # 500 + 490 mg
    got = outcomes(blocks, items)["cum_ketamine"]
    assert got.value == pytest.approx(990)
    assert got.truth is Truth.FALSE
    items.append(admin("-1d", dose="10000 ug"))
    assert outcomes(blocks, items)["cum_ketamine"].truth is Truth.TRUE


def test_cumulative_dose_is_unknown_when_a_missing_dose_could_reach_it(blocks: RuleSet) -> None:
    items = [admin("-10d", dose="400 mg"), admin("-5d", dose="400 mg"), admin("-2d", dose="0.5 mg/kg")]  # no weight
    got = outcomes(blocks, items)["cum_ketamine"]
    assert got.truth is Truth.UNKNOWN
    assert got.value == pytest.approx(800)  # the missing dose is never counted as anything
    assert got.missing == ["MedicationAdministration/admin3: 0.5 mg/kg but no body weight in the year before"]


def test_cumulative_dose_is_true_when_known_doses_already_reach_it(blocks: RuleSet) -> None:
    items = [admin("-10d", dose="600 mg"), admin("-5d", dose="600 mg"), admin("-2d", dose="0.5 mg/kg")]
    got = outcomes(blocks, items)["cum_ketamine"]
    assert got.truth is Truth.TRUE and got.missing == []


def test_cumulative_upper_bound_with_a_missing_dose_is_unknown(blocks: RuleSet) -> None:
    assert outcomes(blocks, [admin("-5d", dose="50 mg")])["cum_small"].truth is Truth.TRUE
    assert outcomes(blocks, [admin("-5d", dose="50 mg"), admin("-2d", dose=None)])["cum_small"].truth is Truth.UNKNOWN
    assert outcomes(blocks, [admin("-5d", dose="150 mg"), admin("-2d", dose=None)])["cum_small"].truth is Truth.FALSE


def test_esketamine_is_never_added_to_racemic_ketamine(blocks: RuleSet) -> None:
    items = [admin(f"-{d}d", medication=ESKETAMINE, dose="84 mg") for d in (2, 5, 9, 12)]
    items += [admin("-3d", medication="Spravato 84 mg", dose="84 mg")]  # matched by name only
    got = outcomes(blocks, items)
    assert got["ket_recent"].truth is Truth.FALSE
    assert got["cum_ketamine"].value == 0
    assert got["cum_esketamine"].value == pytest.approx(5 * 84)
    assert got["cum_esketamine"].truth is Truth.TRUE


def test_session_rate_in_one_week(blocks: RuleSet) -> None:
    four = outcomes(blocks, [admin(f"-{d}d") for d in (1, 2, 4, 6)])["busy_week"]
    three = outcomes(blocks, [admin(f"-{d}d") for d in (1, 2, 4)])["busy_week"]
    assert (four.truth, four.value) == (Truth.TRUE, 4)
    assert (three.truth, three.value) == (Truth.FALSE, 3)


def test_session_rate_for_two_consecutive_weeks(blocks: RuleSet) -> None:
    consecutive = outcomes(blocks, [admin(f"-{d}d") for d in (1, 2, 3, 4, 8, 9, 10, 11)])
    assert consecutive["busy_weeks"].truth is Truth.TRUE
    apart = outcomes(blocks, [admin(f"-{d}d") for d in (1, 2, 3, 4, 15, 16, 17, 18)])
    assert apart["busy_week"].truth is Truth.TRUE
    assert apart["busy_weeks"].truth is Truth.FALSE


def test_infusion_duration_merges_overlapping_infusions(blocks: RuleSet) -> None:
    first = admin("-10d", dose=None, rate="10 mg/h", duration="30 h")
    overlapping = admin(at(-10 * DAY + timedelta(hours=20)), dose=None, rate="10 mg/h", duration="30 h")
    got = outcomes(blocks, [first, overlapping])["long_infusion"]
    assert got.truth is Truth.TRUE and got.value == "50 h"
    apart = admin("-5d", dose=None, rate="10 mg/h", duration="30 h")
    assert outcomes(blocks, [first, apart])["long_infusion"].truth is Truth.FALSE


def test_infusion_duration_at_the_threshold(blocks: RuleSet) -> None:
    exactly = admin("-10d", dose=None, rate="10 mg/h", duration="48 h")
    assert outcomes(blocks, [exactly])["long_infusion"].truth is Truth.TRUE
    short = admin("-10d", dose=None, rate="10 mg/h", end=at(-10 * DAY + timedelta(hours=48) - SECOND))
    assert outcomes(blocks, [short])["long_infusion"].truth is Truth.FALSE


def test_continuous_exposure_over_six_months(blocks: RuleSet) -> None:
    every_two_weeks = [admin(f"-{14 * k}d") for k in range(15)]  # 196 days, gaps of exactly 14 d
    got = outcomes(blocks, every_two_weeks)["long_term"]
    assert got.truth is Truth.TRUE
    shorter = [admin(f"-{14 * k}d") for k in range(13)]  # 168 days
    assert outcomes(blocks, shorter)["long_term"].truth is Truth.FALSE


def test_continuous_exposure_restarts_after_a_longer_gap(blocks: RuleSet) -> None:
    # the same 196 days, but the older half one hour earlier: one gap of 14 d + 1 h restarts the run
    items = [admin(at(-14 * k * DAY - (timedelta(hours=1) if k >= 7 else timedelta(0)))) for k in range(15)]
    got = outcomes(blocks, items)["long_term"]
    assert got.truth is Truth.FALSE
    assert got.value == "84 d"


def test_continuous_exposure_needs_recent_exposure(blocks: RuleSet) -> None:
    old_run = [admin(f"-{30 + 14 * k}d") for k in range(15)]  # ended 30 days ago
    got = outcomes(blocks, old_run)["long_term"]
    assert got.truth is Truth.FALSE and "no exposure within" in got.detail


# ---------------------------------------------------------------- draft orders and courses


@pytest.mark.parametrize(
    ("previous_end", "new"),
    [(-28 * DAY, False), (-28 * DAY - SECOND, True)],
    ids=["28-days-before", "28-days-and-a-second-before"],
)
def test_new_course_gap_boundary(blocks: RuleSet, previous_end: timedelta, new: bool) -> None:
    got = outcomes(blocks, [admin(at(previous_end))], hook="order-sign", drafts=[draft(dose="35 mg")])
    assert got["starts_course"].truth is Truth.of(new)


def test_new_course_without_history_or_draft(blocks: RuleSet) -> None:
    assert outcomes(blocks, [], hook="order-sign", drafts=[draft(dose="35 mg")])["starts_course"].truth is Truth.TRUE
    assert outcomes(blocks, [admin("-90d")])["starts_course"].truth is Truth.FALSE  # no draft order


def test_new_since_course_start(blocks: RuleSet) -> None:
    items = [
        condition("SNOMED#49650001 Dysuria", "-200d"),  # dysuria before the course
        admin("-20d"),
        condition("ICD10CM#R30.0 Dysuria", "-10d"),  # same kind, another code: not new
        condition("SNOMED#139394000 Nocturia", "-8d"),  # new
    ]
    got = outcomes(blocks, items)["new_luts"]
    assert got.truth is Truth.TRUE and got.value == 1
    assert [e.ref for e in got.evidence] == ["Condition/cond4"]
    assert "dysuria" in got.detail


def test_new_since_course_start_forgets_records_older_than_the_lookback(blocks: RuleSet) -> None:
    resolved = {"Condition": {"code": "SNOMED#49650001", "onset": "-400d", "status": "resolved", "abated": "-390d"}}
    items = [resolved, admin("-20d"), condition("SNOMED#49650001", "-10d")]
    assert outcomes(blocks, items)["new_luts"].truth is Truth.TRUE  # 380 d before the course > 365 d, and over
    still_active = [condition("SNOMED#49650001", "-400d"), admin("-20d"), condition("SNOMED#49650001", "-10d")]
    assert outcomes(blocks, still_active)["new_luts"].truth is Truth.FALSE  # active when the lookback began


def test_draft_order_only_on_order_hooks(blocks: RuleSet) -> None:
    drafts = [draft(dose="35 mg")]
    assert outcomes(blocks, [], hook="order-sign", drafts=drafts)["draft_any"].truth is Truth.TRUE
    assert outcomes(blocks, [], hook="patient-view")["draft_any"].truth is Truth.FALSE


def test_draft_order_dose_from_mg_per_kg_and_weight(blocks: RuleSet) -> None:
    weight = {"Observation": {"code": "LOINC#29463-7", "value": "70 kg", "at": "-3d"}}
    big = outcomes(blocks, [weight], hook="order-sign", drafts=[draft(dose="2 mg/kg")])["draft_big"]
    assert big.truth is Truth.TRUE  # 140 mg > 100 mg
    small = outcomes(blocks, [weight], hook="order-sign", drafts=[draft(dose="35 mg")])["draft_big"]
    assert small.truth is Truth.FALSE


def test_draft_order_dose_unknown_without_weight(blocks: RuleSet) -> None:
    got = outcomes(blocks, [], hook="order-sign", drafts=[draft(dose="2 mg/kg")])["draft_big"]
    assert got.truth is Truth.UNKNOWN
    assert "no body weight" in got.missing[0]


def test_draft_order_dose_describe_names_the_unit_once(blocks: RuleSet) -> None:
    node = blocks.rules[0].conditions["draft_big"]
    assert node.describe() == "draft ketamine order with dose > 100 mg"


def test_planned_gap_after_the_previous_session(blocks: RuleSet) -> None:
    soon = outcomes(blocks, [admin("-12h")], hook="order-sign", drafts=[draft(dose="35 mg")])["soon_after"]
    assert soon.truth is Truth.TRUE and soon.value == "12 h"
    later = outcomes(blocks, [admin("-2d")], hook="order-sign", drafts=[draft(dose="35 mg", start="+1d")])
    assert later["soon_after"].truth is Truth.FALSE
    # esketamine sessions count as the previous session too
    eske = outcomes(blocks, [admin("-6h", medication=ESKETAMINE, dose="84 mg")], hook="order-sign",
                    drafts=[draft(dose="35 mg")])
    assert eske["soon_after"].truth is Truth.TRUE


def test_planned_gap_measures_from_the_end_of_an_infusion(blocks: RuleSet) -> None:
    infusion = admin("-3d", dose=None, rate="10 mg/h", duration="60 h")  # ends 12 h ago
    got = outcomes(blocks, [infusion], hook="order-sign", drafts=[draft(dose="35 mg")])["soon_after"]
    assert got.truth is Truth.TRUE and got.value == "12 h"


# ---------------------------------------------------------------- FHIRPath


def test_fhirpath_block_with_now(blocks: RuleSet) -> None:
    assert outcomes(blocks, [obs("LOINC#5794-3", "-6d", "neg")])["recent_obs"].truth is Truth.TRUE
    assert outcomes(blocks, [obs("LOINC#5794-3", "-8d", "neg")])["recent_obs"].truth is Truth.FALSE


def test_where_fhirpath_with_a_parameter_variable(blocks: RuleSet) -> None:
    # %rbc_micro is the parameter (3 /[HPF]), as a number
    assert outcomes(blocks, [obs("LOINC#13945-1", "-2d", "4 /[HPF]")])["rbc_by_fhirpath"].truth is Truth.TRUE
    assert outcomes(blocks, [obs("LOINC#13945-1", "-2d", "3 /[HPF]")])["rbc_by_fhirpath"].truth is Truth.FALSE


# ---------------------------------------------------------------- rules: precedence, status, traces

SIMPLE = """
data:
  ketamine: {resources: [MedicationAdministration, MedicationRequest], valueset: ketamine}
  rbc: {resources: [Observation], valueset: urine-rbc-microscopy, unit: "/[HPF]"}
conditions:
  exposed: {count: {data: ketamine, window: {last: P28D}}}
  red_cells: {count: {data: rbc, window: {last: P28D}, where: {value: {at_least: "3 /[HPF]"}}}}
tiers:
  - indicator: {indicator}
    when: {when}
"""


def simple(indicator: str, when: str = "exposed") -> str:
    return SIMPLE.replace("{indicator}", indicator).replace("{when}", when)


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    """A warning rule on topic urinary, an info rule that yields to it, a silent and a retired rule."""
    files = {
        "warning.yaml": rule_text(simple("warning", "{all: [exposed, red_cells]}"), rule_id="T-01",
                                  extra="topic: urinary\n"),
        "info.yaml": rule_text(simple("info"), rule_id="T-02", extra="suppress_when:\n  - {topic: urinary}\n"),
        "silent.yaml": rule_text(simple("warning"), rule_id="T-03", status="silent"),
        "retired.yaml": rule_text(simple("info"), rule_id="T-04", status="retired"),
    }
    return ruleset(tmp_path_factory.mktemp("family"), files)


def statuses(rules: RuleSet, items: list[dict[str, Any]]) -> dict[str, str]:
    return {r.rule.id: r.status for r in run(rules, items).results}


def test_info_card_shows_when_no_warning_on_its_topic(family: RuleSet) -> None:
    evaluation = run(family, [admin("-3d")])
    assert result_of(evaluation, "T-02").status == FIRED
    assert [r.rule.id for r in evaluation.shown()] == ["T-02"]


def test_warning_on_the_same_topic_suppresses_the_info_card(family: RuleSet) -> None:
    items = [admin("-3d"), obs("LOINC#13945-1", "-1d", "5 /[HPF]")]
    evaluation = run(family, items)
    assert [r.rule.id for r in evaluation.shown()] == ["T-01"]
    info = result_of(evaluation, "T-02")
    assert info.status == SUPPRESSED
    assert "T-01" in info.reason and "urinary" in info.reason
    assert info.conditions["exposed"].truth is Truth.TRUE  # still evaluated and traced


def test_silent_rule_is_evaluated_but_shows_no_card(family: RuleSet) -> None:
    evaluation = run(family, [admin("-3d")])
    silent = result_of(evaluation, "T-03")
    assert silent.status == FIRED and silent.fired is not None and silent.fired.indicator == "warning"
    assert not silent.shows_card
    assert "T-03" not in [r.rule.id for r in evaluation.shown()]


def test_silent_warning_does_not_suppress_an_info_card(family: RuleSet) -> None:
    # T-03 fires a warning but is silent, and has no topic: T-02 stays
    assert statuses(family, [admin("-3d")])["T-02"] == FIRED


def test_retired_rule_is_skipped(family: RuleSet) -> None:
    evaluation = run(family, [admin("-3d")])
    retired = result_of(evaluation, "T-04")
    assert retired.status == SKIPPED and retired.reason == "retired"
    assert retired.conditions == {}
    assert "T-04" not in [rule.id for rule in family.for_hook("patient-view")]


def test_every_result_carries_a_trace_fired_or_not(family: RuleSet) -> None:
    for items, expected in (([admin("-3d")], FIRED), ([], NOT_FIRED)):
        info = result_of(run(family, items), "T-02")
        assert info.status == expected
        assert set(info.conditions) == {"exposed", "red_cells"}
        for outcome in info.conditions.values():
            assert outcome.value is not None and outcome.detail
        assert [t.indicator for t in info.tiers] == ["info"]
        trace = info.as_json()
        assert trace["conditions"]["exposed"]["truth"] == ("true" if expected == FIRED else "false")
        assert "value" in trace["conditions"]["red_cells"]


def test_undecided_rule_lists_the_missing_data(family: RuleSet) -> None:
    items = [admin("-3d"), obs("LOINC#13945-1", "-1d", "many")]
    warning = result_of(run(family, items), "T-01")
    assert warning.status == UNDECIDED
    assert warning.missing and "not a number" in warning.missing[0]
    assert warning.as_json()["missing"] == warning.missing


def test_hooks_a_rule_does_not_run_on_are_skipped(tmp_path: Path) -> None:
    text = rule_text(simple("info")).replace("hooks: [patient-view, order-select, order-sign]", "hooks: [order-sign]")
    rules = ruleset(tmp_path, {"t.yaml": text})
    result = result_of(run(rules, [admin("-3d")], hook="patient-view"))
    assert result.status == SKIPPED and "order-sign" in result.reason


def test_shown_cards_go_from_critical_to_info(tmp_path: Path) -> None:
    files = {f"{i}.yaml": rule_text(simple(ind), rule_id=f"T-0{i}") for i, ind in enumerate(
        ["info", "critical", "warning"], start=1)}
    evaluation = run(ruleset(tmp_path, files), [admin("-3d")])
    assert [r.fired.indicator for r in evaluation.shown() if r.fired] == ["critical", "warning", "info"]


def test_unavailable_data_makes_a_silent_rule_undecided(tmp_path: Path) -> None:
    """A failed Observation search is not "no Observations": the rule is undecided, with the reason."""
    rules = ruleset(tmp_path, {"T-01.yaml": rule_text("""\
        data:
          urine_blood: {resources: [Observation], valueset: urine-blood-dipstick}
        conditions:
          blood:
            count: {data: urine_blood, where: {value: {at_least: trace}}}
        tiers:
          - indicator: warning
            when: blood
        """)})
    base = record([admin("-3d")], rules=rules)
    partial = PatientRecord(
        [r for items in base.by_type.values() for _, r in items],
        ordinal_codes=rules.ordinal_codes,
        unavailable={"Observation": "observation: HTTP 500", "Condition": "condition: timeout"},
    )
    clear = result_of(evaluate(rules, base, hook="patient-view", now=NOW))
    unsure = result_of(evaluate(rules, partial, hook="patient-view", now=NOW))
    assert clear.status == NOT_FIRED
    assert unsure.status == UNDECIDED
    assert unsure.missing == ["observation: HTTP 500"]  # the rule reads no Conditions
    fired = result_of(evaluate(rules, PatientRecord(
        [r for items in record([obs("LOINC#5794-3", "-1d", "1+")], rules=rules).by_type.values() for _, r in items],
        ordinal_codes=rules.ordinal_codes, unavailable={"Observation": "observation: HTTP 500"}),
        hook="patient-view", now=NOW))
    assert fired.status == FIRED  # what was obtained already shows blood: partial data cannot undo that
