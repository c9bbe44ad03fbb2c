"""Exposure arithmetic (clinical.md §2.0, §4.3): doses in mg, sessions, courses, rates, infusions."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rulekit import VALUESETS

from cds_service.clinical.exposure import (
    Dose,
    Session,
    Weight,
    courses,
    cumulative_mg,
    dose_in_mg,
    max_sessions_in_period,
    merged_intervals,
    session_from_administration,
    session_from_request,
    session_from_statement,
    weight_at,
)
from cds_service.clinical.record import PatientRecord
from cds_service.clinical.units import UCUM_SYSTEM
from cds_service.engine.loader import load_valuesets

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def q(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM_SYSTEM, "code": unit}


def weight(days_before: float, kg: float = 70.0) -> Weight:
    return Weight(NOW - timedelta(days=days_before), kg, "Observation/w")


def strength_mg_per_ml(mg: float) -> dict[str, Any]:
    """A Medication with ingredient strength ``mg`` mg / 1 mL (e.g. 50 mg/mL ketamine)."""
    strength = {"numerator": q(mg, "mg"), "denominator": q(1, "mL")}
    return {"resourceType": "Medication", "ingredient": [{"strength": strength}]}


def session(start: datetime, hours: float = 0.0, mg: float | None = 35.0, ref: str | None = None) -> Session:
    return Session(
        ref or f"MedicationAdministration/{start.isoformat()}",
        "administration",
        start,
        start + timedelta(hours=hours),
        Dose(mg, "test"),
        "ketamine",
        "code",
    )


# ---------------------------------------------------------------- dose arithmetic (§4.3)


@pytest.mark.parametrize(("dose", "mg"), [(q(35, "mg"), 35), (q(0.035, "g"), 35), (q(35_000, "ug"), 35),
                                          ({"value": 35_000, "unit": "mcg"}, 35)])
def test_mass_dose(dose: dict[str, Any], mg: float) -> None:
    result = dose_in_mg(dose, None, None, NOW, [], None)
    assert result.mg == pytest.approx(mg)
    assert result.quality is None


def test_mg_per_kg_uses_a_weight_up_to_30_days_old_without_flag() -> None:
    result = dose_in_mg(q(0.5, "mg/kg"), None, None, NOW, [weight(30)], None)
    assert result.mg == pytest.approx(35)
    assert result.quality is None
    assert "70 kg" in result.how


def test_mg_per_kg_uses_the_most_recent_weight_before_the_dose() -> None:
    weights = [weight(200, kg=90), weight(5, kg=70), weight(-3, kg=50)]  # the last one is after the dose
    assert dose_in_mg(q(0.5, "mg/kg"), None, None, NOW, weights, None).mg == pytest.approx(35)


@pytest.mark.parametrize("days", [30 + 1 / 86400, 100, 365])
def test_mg_per_kg_with_a_weight_31_to_365_days_old_is_flagged(days: float) -> None:
    result = dose_in_mg(q(0.5, "mg/kg"), None, None, NOW, [weight(days, kg=80)], None)
    assert result.mg == pytest.approx(40)
    assert result.quality is not None and "days old" in result.quality


@pytest.mark.parametrize("weights", [[], [weight(365 + 1 / 86400)], [weight(-1)]], ids=["none", "too-old", "future"])
def test_mg_per_kg_without_a_usable_weight_is_missing_with_a_reason(weights: list[Weight]) -> None:
    result = dose_in_mg(q(0.5, "mg/kg"), None, None, NOW, weights, None)
    assert result.missing
    assert "no body weight" in result.how


def test_weight_at_boundaries() -> None:
    assert weight_at([weight(30)], NOW) == (weight(30), None)
    best, quality = weight_at([weight(31)], NOW)
    assert best == weight(31) and quality == "body weight 70 kg is 31 days old"
    assert weight_at([weight(366)], NOW) == (None, None)


def test_rate_in_mg_per_h_times_duration() -> None:
    result = dose_in_mg(None, q(20, "mg/h"), 2.5, NOW, [], None)
    assert result.mg == pytest.approx(50)
    assert result.how == "20 mg/h × 2.5 h"


def test_rate_in_mg_per_min() -> None:
    assert dose_in_mg(None, q(1, "mg/min"), 2, NOW, [], None).mg == pytest.approx(120)


def test_rate_in_mg_per_kg_per_h_times_weight_and_duration() -> None:
    result = dose_in_mg(None, q(0.5, "mg/kg/h"), 4, NOW, [weight(1)], None)
    assert result.mg == pytest.approx(140)  # 0.5 × 70 × 4


def test_rate_in_ug_per_kg_per_min() -> None:
    # 5 ug/kg/min = 0.3 mg/kg/h; × 70 kg × 2 h = 42 mg
    assert dose_in_mg(None, q(5, "ug/kg/min"), 2, NOW, [weight(1)], None).mg == pytest.approx(42)


def test_weight_based_rate_without_weight_is_missing() -> None:
    assert dose_in_mg(None, q(0.5, "mg/kg/h"), 4, NOW, [], None).missing


def test_rate_ratio_mg_per_minutes() -> None:
    # 35 mg over 40 min, for 40 min
    rate = {"numerator": q(35, "mg"), "denominator": q(40, "min")}
    assert dose_in_mg(None, rate, 40 / 60, NOW, [], None).mg == pytest.approx(35)


def test_rate_ratio_without_time_denominator_is_missing() -> None:
    rate = {"numerator": q(35, "mg"), "denominator": q(1, "mL")}
    result = dose_in_mg(None, rate, 1, NOW, [], None)
    assert result.missing and "time denominator" in result.how


def test_volume_rate_times_medication_strength() -> None:
    # 10 mL/h × 3 h × 50 mg/mL = 1500 mg
    result = dose_in_mg(None, q(10, "mL/h"), 3, NOW, [], strength_mg_per_ml(50))
    assert result.mg == pytest.approx(1500)
    assert "50 mg/mL" in result.how


def test_volume_dose_times_medication_strength() -> None:
    assert dose_in_mg(q(0.7, "mL"), None, None, NOW, [], strength_mg_per_ml(50)).mg == pytest.approx(35)


def test_volume_rate_without_strength_is_missing() -> None:
    result = dose_in_mg(None, q(10, "mL/h"), 3, NOW, [], None)
    assert result.missing
    assert "strength" in result.how


def test_devices_times_strength_per_device() -> None:
    spravato = {"ingredient": [{"strength": {"numerator": q(28, "mg"), "denominator": q(1, "{device}")}}]}
    assert dose_in_mg(q(3, "{device}"), None, None, NOW, [], spravato).mg == pytest.approx(84)


@pytest.mark.parametrize(
    ("dose", "rate", "hours"),
    [
        (q(2, "puffs"), None, None),
        ({"value": "35", "unit": "mg"}, None, None),
        ({"value": True, "unit": "mg"}, None, None),
        ({"value": 35}, None, None),
        (None, q(20, "mg/h"), None),  # rate without an infusion duration
        (None, q(20, "drops/h"), 1),
        (None, None, None),
    ],
    ids=["unparseable-unit", "string-value", "boolean-value", "no-unit", "rate-no-duration", "bad-rate-unit", "empty"],
)
def test_unusable_doses_are_missing_never_zero(dose: Any, rate: Any, hours: float | None) -> None:
    result = dose_in_mg(dose, rate, hours, NOW, [], None)
    assert result.mg is None
    assert result.missing
    assert result.how  # the reason is always given


# ---------------------------------------------------------------- sessions from resources


def administration(status: str = "completed", **fields: Any) -> dict[str, Any]:
    return {"resourceType": "MedicationAdministration", "status": status, **fields}


def from_admin(resource: Mapping[str, Any], weights: list[Weight] | None = None,
               medication: Mapping[str, Any] | None = None) -> Session | None:
    return session_from_administration(resource, "MedicationAdministration/1", "ketamine", "code",
                                       weights or [], medication, NOW)


@pytest.mark.parametrize("status", ["completed", "in-progress"])
def test_counted_administration_statuses(status: str) -> None:
    made = from_admin(administration(status, effectiveDateTime="2026-05-01T10:00:00Z", dosage={"dose": q(35, "mg")}))
    assert made is not None and made.dose.mg == 35


@pytest.mark.parametrize("status", ["not-done", "entered-in-error", "on-hold", "unknown"])
def test_not_done_and_erroneous_administrations_are_excluded(status: str) -> None:
    resource = administration(status, effectiveDateTime="2026-05-01T10:00:00Z", dosage={"dose": q(35, "mg")})
    assert from_admin(resource) is None


def test_stopped_administration_counts_what_was_given() -> None:
    # §4.3: skip `stopped` only when it has no dose; a stopped infusion delivered drug until it stopped.
    resource = administration(
        "stopped",
        effectivePeriod={"start": "2026-05-01T10:00:00Z", "end": "2026-05-01T12:00:00Z"},
        dosage={"rateQuantity": q(20, "mg/h")},
    )
    made = from_admin(resource)
    assert made is not None and made.dose.mg == pytest.approx(40)


def test_stopped_administration_without_dose_is_skipped() -> None:
    assert from_admin(administration("stopped", effectiveDateTime="2026-05-01T10:00:00Z")) is None


def test_in_progress_infusion_ends_at_now() -> None:
    resource = administration(
        "in-progress", effectivePeriod={"start": "2026-05-31T09:00:00Z"}, dosage={"rateQuantity": q(10, "mg/h")}
    )
    made = from_admin(resource)
    assert made is not None
    assert made.end == NOW
    assert made.hours == pytest.approx(24)
    assert made.dose.mg == pytest.approx(240)


def test_completed_infusion_without_end_has_no_duration() -> None:
    resource = administration(
        "completed", effectivePeriod={"start": "2026-05-31T09:00:00Z"}, dosage={"rateQuantity": q(10, "mg/h")}
    )
    made = from_admin(resource)
    assert made is not None and made.end == made.start
    assert made.dose.missing  # a rate without a duration is never a guessed amount


def test_administration_period_with_offsets_is_utc() -> None:
    resource = administration(
        "completed",
        effectivePeriod={"start": "2026-05-31T09:00:00+02:00", "end": "2026-05-31T11:00:00+02:00"},
        dosage={"rateQuantity": q(10, "mg/h")},
    )
    made = from_admin(resource)
    assert made is not None
    assert made.start == datetime(2026, 5, 31, 7, 0, tzinfo=UTC)
    assert made.dose.mg == pytest.approx(20)


def test_administration_without_time_is_not_a_session() -> None:
    assert from_admin(administration("completed", dosage={"dose": q(35, "mg")})) is None
    assert from_admin(administration("completed", effectiveDateTime="not a date")) is None


def test_administration_mg_per_kg_with_weight_and_route() -> None:
    resource = administration(
        "completed",
        effectiveDateTime="2026-05-01T10:00:00Z",
        dosage={"dose": q(0.5, "mg/kg"), "route": {"text": "intravenous"}},
    )
    made = from_admin(resource, weights=[Weight(datetime(2026, 4, 20, tzinfo=UTC), 60, "Observation/w")])
    assert made is not None and made.dose.mg == pytest.approx(30) and made.route == "intravenous"


def statement(status: str = "active", **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationStatement",
        "status": status,
        "effectivePeriod": {"start": "2026-01-01", "end": "2026-03-01"},
        "dosage": [{"doseAndRate": [{"doseQuantity": q(50, "mg")}]}],
        **fields,
    }


@pytest.mark.parametrize("status", ["active", "completed", "intended"])
def test_statement_is_an_exposure_interval(status: str) -> None:
    made = session_from_statement(statement(status), "MedicationStatement/1", "ketamine", "text", [], None, NOW)
    assert made is not None
    assert made.kind == "statement"
    assert (made.start, made.end) == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
    assert made.matched_by == "text"
    # 50 mg per dose, but how often is not recorded: the total over two months is not known
    assert made.dose.mg is None and "how often" in made.dose.how


def test_statement_total_is_dose_times_frequency_times_days() -> None:
    daily = statement(dosage=[{"timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
                               "doseAndRate": [{"doseQuantity": q(50, "mg")}]}])
    made = session_from_statement(daily, "MedicationStatement/1", "ketamine", "code", [], None, NOW)
    assert made is not None
    assert made.dose.mg == pytest.approx(50 * 2 * 59)  # 2026-01-01 → 2026-03-01 is 59 days


def test_active_statement_without_end_lasts_until_now() -> None:
    ongoing = statement(effectivePeriod={"start": "2026-05-01"},
                        dosage=[{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                                 "doseAndRate": [{"doseQuantity": q(200, "mg")}]}])
    made = session_from_statement(ongoing, "MedicationStatement/1", "ketamine", "code", [], None, NOW)
    assert made is not None and made.end == NOW
    days = (NOW - datetime(2026, 5, 1, tzinfo=UTC)).total_seconds() / 86400
    assert made.dose.mg == pytest.approx(200 * days)
    finished = session_from_statement({**ongoing, "status": "completed"}, "MedicationStatement/1", "k", "code",
                                      [], None, NOW)
    assert finished is not None and finished.end == finished.start


def test_cumulative_dose_prorates_an_interval_to_the_window() -> None:
    from cds_service.clinical.exposure import cumulative_mg

    daily = statement(dosage=[{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                               "doseAndRate": [{"doseQuantity": q(100, "mg")}]}])
    made = session_from_statement(daily, "MedicationStatement/1", "ketamine", "code", [], None, NOW)
    assert made is not None
    window = cumulative_mg([made], datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 11, tzinfo=UTC))
    assert window.mg == pytest.approx(1000)  # ten days of 100 mg a day


@pytest.mark.parametrize("status", ["entered-in-error", "not-taken"])
def test_erroneous_or_not_taken_statements_are_excluded(status: str) -> None:
    assert session_from_statement(statement(status), "MedicationStatement/1", "k", "code", [], None, NOW) is None


def draft_request(**dosage: Any) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "status": "draft", "intent": "order", "dosageInstruction": [dosage]}


def test_draft_order_planned_start_from_bounds_period() -> None:
    resource = draft_request(
        timing={"repeat": {"boundsPeriod": {"start": "2026-06-02T09:00:00Z"}, "duration": 40, "durationUnit": "min"}},
        doseAndRate=[{"doseQuantity": q(35, "mg")}],
    )
    made = session_from_request(resource, "MedicationRequest/d", "ketamine", "code", [], None, NOW, planned=True)
    assert made is not None and made.planned
    assert made.start == datetime(2026, 6, 2, 9, 0, tzinfo=UTC)
    assert made.end == made.start + timedelta(minutes=40)
    assert made.dose.mg == 35


def test_draft_order_planned_start_from_timing_event() -> None:
    resource = draft_request(
        timing={"event": ["2026-06-03T08:00:00+02:00"]}, doseAndRate=[{"doseQuantity": q(35, "mg")}]
    )
    made = session_from_request(resource, "MedicationRequest/d", "ketamine", "code", [], None, NOW, planned=True)
    assert made is not None and made.start == datetime(2026, 6, 3, 6, 0, tzinfo=UTC)


def test_draft_order_without_planned_time_is_planned_for_now() -> None:
    resource = draft_request(doseAndRate=[{"doseQuantity": q(35, "mg")}])
    made = session_from_request(resource, "MedicationRequest/d", "ketamine", "code", [], None, NOW, planned=True)
    assert made is not None and made.start == NOW and made.kind == "planned"


def test_draft_infusion_rate_times_planned_duration() -> None:
    resource = draft_request(
        timing={"repeat": {"boundsPeriod": {"start": "2026-06-02T09:00:00Z"}, "duration": 2, "durationUnit": "h"}},
        doseAndRate=[{"rateQuantity": q(20, "mg/h")}],
    )
    made = session_from_request(resource, "MedicationRequest/d", "ketamine", "code", [], None, NOW, planned=True)
    assert made is not None and made.dose.mg == pytest.approx(40)


def test_active_request_is_a_supply_from_authored_on_and_drafts_in_the_record_are_not() -> None:
    active = dict(draft_request(doseAndRate=[{"doseQuantity": q(35, "mg")}]), status="active", authoredOn="2026-05-01")
    made = session_from_request(active, "MedicationRequest/a", "ketamine", "code", [], None, NOW, planned=False)
    assert made is not None and made.kind == "supply" and made.start == datetime(2026, 5, 1, tzinfo=UTC)
    draft = draft_request(doseAndRate=[{"doseQuantity": q(35, "mg")}])
    assert session_from_request(draft, "MedicationRequest/d", "k", "code", [], None, NOW, planned=False) is None


# ---------------------------------------------------------------- through the PatientRecord


@pytest.fixture(scope="module")
def valuesets() -> dict[str, Any]:
    problems: list[Any] = []
    found, _ = load_valuesets(VALUESETS, problems)
    assert not problems
    return found


def test_record_reads_strength_from_a_contained_medication(valuesets: dict[str, Any]) -> None:
    resource = administration(
        "completed",
        id="inf",
        contained=[{
            "resourceType": "Medication",
            "id": "med",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "781954001"}]},
            **strength_mg_per_ml(50),
        }],
        medicationReference={"reference": "#med"},
        effectivePeriod={"start": "2026-05-31T09:00:00Z", "end": "2026-05-31T11:00:00Z"},
        dosage={"rateQuantity": q(0.35, "mL/h")},
    )
    sessions = PatientRecord([resource]).sessions(valuesets["ketamine"], None, NOW)
    assert [s.dose.mg for s in sessions] == [pytest.approx(35)]  # 0.35 mL/h × 2 h × 50 mg/mL


def test_record_keeps_esketamine_out_of_ketamine_sessions(valuesets: dict[str, Any]) -> None:
    def given(code: str, system: str, text: str) -> dict[str, Any]:
        return administration(
            "completed",
            medicationCodeableConcept={"coding": [{"system": system, "code": code}], "text": text},
            effectiveDateTime="2026-05-20T09:00:00Z",
            dosage={"dose": q(84, "mg")},
        )

    record = PatientRecord([
        given("2201625", "http://www.nlm.nih.gov/research/umls/rxnorm", "Spravato"),
        dict(given("x", "http://example.org", "esketamine nasal spray"), id="text-only"),
        dict(given("781954001", "http://snomed.info/sct", "Ketamine 50 mg/mL"), id="ket"),
    ])
    ketamine = record.sessions(valuesets["ketamine"], None, NOW)
    esketamine = record.sessions(valuesets["esketamine"], None, NOW)
    assert [s.ref for s in ketamine] == ["MedicationAdministration/ket"]  # "esketamine" is not the word "ketamine"
    assert len(esketamine) == 2
    assert sorted(s.matched_by for s in esketamine) == ["code", "text"]


# ---------------------------------------------------------------- courses, rates, infusions


T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
GAP = timedelta(days=28)


def test_gap_of_exactly_28_days_continues_the_course() -> None:
    result = courses([session(T0), session(T0 + GAP)], GAP)
    assert [len(c) for c in result] == [2]


def test_gap_of_28_days_and_one_second_starts_a_new_course() -> None:
    result = courses([session(T0), session(T0 + GAP + timedelta(seconds=1))], GAP)
    assert [len(c) for c in result] == [1, 1]


def test_course_gap_is_measured_from_the_end_of_an_infusion() -> None:
    infusion = session(T0, hours=100)
    next_one = session(infusion.end + GAP)
    assert [len(c) for c in courses([next_one, infusion], GAP)] == [2]


def test_courses_sort_their_sessions() -> None:
    late, early = session(T0 + 3 * DAY), session(T0)
    assert courses([late, early], GAP) == [[early, late]]
    assert courses([], GAP) == []


def test_sessions_in_one_period() -> None:
    sessions = [session(T0 + d * DAY) for d in (0, 1, 2, 3, 20)]
    best, members = max_sessions_in_period(sessions, 7 * DAY)
    assert best == 4
    assert len(members) == 4


def test_period_boundary_is_half_open() -> None:
    # sessions exactly 7 days apart are never in the same 7-day period
    best, _ = max_sessions_in_period([session(T0), session(T0 + 7 * DAY)], 7 * DAY)
    assert best == 1


def test_two_consecutive_busy_weeks() -> None:
    sessions = [session(T0 + d * DAY) for d in (0, 1, 2, 3, 7, 8, 9, 10)]
    assert max_sessions_in_period(sessions, 7 * DAY, consecutive=2)[0] == 4


def test_busy_weeks_with_a_quiet_week_between_are_not_consecutive() -> None:
    sessions = [session(T0 + d * DAY) for d in (0, 1, 2, 3, 14, 15, 16, 17)]
    assert max_sessions_in_period(sessions, 7 * DAY, consecutive=1)[0] == 4
    assert max_sessions_in_period(sessions, 7 * DAY, consecutive=2)[0] == 2


def test_consecutive_weeks_found_between_session_times() -> None:
    # The only alignment with 4 sessions in each week ends between two sessions (day 13.9–14).
    sessions = [session(T0 + timedelta(days=d)) for d in (0, 3, 6, 6.9, 7.5, 8, 13, 13.5)]
    best, members = max_sessions_in_period(sessions, 7 * DAY, consecutive=2)
    assert best == 4
    assert len(members) == 8


def test_no_sessions_no_rate() -> None:
    assert max_sessions_in_period([], 7 * DAY, consecutive=2) == (0, [])


def test_overlapping_and_touching_infusions_merge() -> None:
    first = session(T0, hours=24)
    overlapping = session(T0 + timedelta(hours=20), hours=24)  # 20 h → 44 h
    touching = session(T0 + timedelta(hours=44), hours=10)  # starts where the previous ends
    separate = session(T0 + timedelta(hours=60), hours=1)
    merged = merged_intervals([separate, touching, overlapping, first])
    assert [(start - T0, end - T0, len(members)) for start, end, members in merged] == [
        (timedelta(0), timedelta(hours=54), 3),
        (timedelta(hours=60), timedelta(hours=61), 1),
    ]


def test_infusion_inside_another_does_not_shorten_it() -> None:
    long, inner = session(T0, hours=48), session(T0 + timedelta(hours=1), hours=2)
    ((start, end, members),) = merged_intervals([long, inner])
    assert end - start == timedelta(hours=48) and len(members) == 2


def test_cumulative_mg_never_counts_missing_doses() -> None:
    known, unknown, small = session(T0, mg=35), session(T0 + DAY, mg=None), session(T0 + 2 * DAY, mg=10)
    total = cumulative_mg([known, unknown, small])
    assert total.mg == pytest.approx(45)
    assert total.counted == (known, small)
    assert total.missing == (unknown,)


def test_cumulative_mg_of_only_missing_doses_is_zero_with_all_listed() -> None:
    total = cumulative_mg([session(T0, mg=None)])
    assert total.mg == 0 and len(total.missing) == 1 and total.counted == ()
