"""Clinical scenarios: one small function per synthetic patient.

Each function builds the patient's record (and draft orders) with the seeded RNG and
returns its description and the rules that SHOULD fire at ``now`` by clinical.md §2 — the
manifest is written from the scenario's clinical intent, not by running the engine. Doses,
dates and lab values vary with the seed inside clinically plausible ranges chosen so the
expectation holds for every seed (values keep a margin from every threshold).

Conventions used for the expectations:

- ``patient_view`` lists only KB-02/03/07/08/11/12 (the rules that run on patient-view).
- ``orders`` is the expectation for both order-select and order-sign, replayed with the
  patient's ``draft_orders``; a patient with no draft orders expects nothing on order hooks.
- ``booking`` is the expectation at appointment-book, for a patient whose draft session is also
  booked as a proposed Appointment (``appointments``); encounter-start expects ``patient_view``.
- KB-06/KB-13 info cards are listed only when no warning/critical urinary card fires
  (clinical.md §2.1 precedence).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from cds_service.synth.builder import PatientBuilder, qty
from cds_service.synth.regimens import (
    TWICE_WEEKLY,
    backward,
    check_past,
    depression_course,
    depression_draft,
    esketamine_course,
    esketamine_draft,
    esketamine_sessions,
    induction_offsets,
    ketamine_iv_session,
    maintenance_days,
    negative_ua,
    normal_lfts,
    normal_renal,
    weights_along,
)


@dataclass(frozen=True, slots=True)
class Outcome:
    description: str
    patient_view: tuple[str, ...] = ()
    orders: tuple[str, ...] = ()
    #: appointment-book: the rules that fire when the draft's session is booked as an appointment instead
    #: (only for scenarios that book one: ``PatientBuilder.book``).
    booking: tuple[str, ...] = ()


ScenarioFn = Callable[[PatientBuilder], Outcome]
SCENARIOS: list[tuple[str, ScenarioFn]] = []


def scenario(name: str) -> Callable[[ScenarioFn], ScenarioFn]:
    def register(fn: ScenarioFn) -> ScenarioFn:
        if any(existing == name for existing, _ in SCENARIOS):
            raise ValueError(f"duplicate scenario {name}")
        SCENARIOS.append((name, fn))
        return fn

    return register


def _adult(b: PatientBuilder, low: int = 22, high: int = 64, gender: str | None = None) -> tuple[str, float]:
    gender = gender or b.choice(("female", "male"))
    b.patient(gender, b.randint(low, high))
    kg = b.uniform(55, 82) if gender == "female" else b.uniform(65, 105)
    return gender, kg


def _depression(b: PatientBuilder, onset_years: int = 3) -> None:
    b.condition("mdd-recurrent-severe", b.day(-365 * onset_years - b.randint(0, 300), 11))


def _weekly_maintenance(
    b: PatientBuilder, *, start: tuple[int, int], last: tuple[int, int] = (-6, -2), kg: float,
    draft_gap: tuple[int, int] = (6, 8),
) -> tuple[list, int]:
    """Induction then weekly maintenance; returns the session times and the day of the next (draft) session."""
    start_day, last_day = -b.randint(-start[1], -start[0]), b.randint(*last)
    times = depression_course(b, start_day=start_day, last_day=last_day, kg=kg)
    return times, max(1, last_day + b.randint(*draft_gap))


# =============================================================== depression, racemic IV


@scenario("depression-induction-complete")
def depression_induction_complete(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    last = -b.randint(2, 4)
    offsets = induction_offsets(b)
    first = last - offsets[-1]
    negative_ua(b, b.day(first - b.randint(5, 20), 10))
    normal_renal(b, b.day(first - b.randint(5, 20), 10))
    times = [b.day(first + o, b.clinic_hour()) for o in offsets]
    b.weight(times[0] - timedelta(days=b.randint(3, 9)), kg)
    for t in times:
        ketamine_iv_session(b, t, 0.5)
    depression_draft(b, last + 7, b.choice((0.5, 0.6)))
    return Outcome(
        "Treatment-resistant depression: standard induction of 6 × 0.5 mg/kg IV over 40 min in 2-3 weeks, weight "
        "recorded, baseline urinalysis negative, no urinary findings; draft first weekly maintenance session. "
        "Standard exposure (≈ 210 mg/28 d) — nothing should fire."
    )


@scenario("depression-new-course-no-baseline-ua")
def depression_new_course_no_baseline_ua(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    b.weight(b.day(-b.randint(3, 20), 10), kg)
    b.urinalysis(b.day(-b.randint(400, 600), 10))  # long before the baseline window
    normal_renal(b, b.day(-b.randint(20, 60), 10))
    depression_draft(b, b.randint(2, 6))
    return Outcome(
        "First ketamine course being ordered (0.5 mg/kg IV) with no urinalysis in the 90 days before it "
        "(last one > 1 year ago): KB-06 info on the order hooks; no prior exposure, so patient-view is silent.",
        orders=("KB-06",),
    )


@scenario("depression-new-course-with-baseline-ua")
def depression_new_course_with_baseline_ua(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    b.weight(b.day(-b.randint(3, 20), 10), kg)
    negative_ua(b, b.day(-b.randint(7, 40), 10))
    normal_renal(b, b.day(-b.randint(7, 40), 10))
    depression_draft(b, b.randint(2, 6))
    return Outcome(
        "First ketamine course being ordered with a negative baseline urinalysis and microscopy in the last "
        "90 days: nothing should fire (control for KB-06)."
    )


@scenario("depression-maintenance-weekly-long-term")
def depression_maintenance_weekly_long_term(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    times, draft_day = _weekly_maintenance(b, start=(-230, -200), kg=kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    for back in (b.randint(100, 130), b.randint(20, 45)):
        negative_ua(b, b.day(-back, 10))
    normal_renal(b, b.day(-b.randint(20, 45), 10))
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Depression: induction then weekly maintenance 0.5-0.75 mg/kg for ~7 months without a break, urinalysis "
        "every ~3 months (last < 90 days ago, negative): KB-04 info (continuous exposure ≥ 6 months) on the "
        "order hooks only.",
        orders=("KB-04",),
    )


@scenario("depression-maintenance-fortnightly-unmonitored")
def depression_maintenance_fortnightly_unmonitored(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    start_day, last_day = -b.randint(120, 140), -b.randint(2, 10)
    times = depression_course(b, start_day=start_day, last_day=last_day, kg=kg, interval=(12, 13))
    negative_ua(b, times[0] - timedelta(days=b.randint(8, 30)))
    depression_draft(b, max(1, last_day + b.randint(12, 13)), 0.5)
    return Outcome(
        "Depression: induction then fortnightly (every 12-13 days) maintenance for 4-5 months; the only "
        "urinalysis was before the course (> 90 days ago): KB-15 info (monitoring due) on the order hooks; "
        "continuous exposure < 6 months, so no KB-04.",
        orders=("KB-15",),
    )


@scenario("depression-maintenance-monthly")
def depression_maintenance_monthly(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    last = -b.randint(22, 26)
    days = [last]
    for _ in range(b.randint(4, 5)):
        days.append(days[-1] - b.randint(30, 35))
    days.sort()
    ind = induction_offsets(b)
    first = days[0] - 30 - ind[-1]
    ind_times = [b.day(first + o, b.clinic_hour()) for o in ind]
    times = [b.day(d, b.clinic_hour()) for d in days]
    negative_ua(b, ind_times[0] - timedelta(days=b.randint(5, 15)))
    weights_along(b, ind_times + times, kg)
    for t in ind_times:
        ketamine_iv_session(b, t, 0.5)
    mgkg = b.choice((0.5, 0.6, 0.75))
    for t in times:  # recorded as a rate ratio: mg per 40 min
        mg = round(mgkg * kg)
        b.administration("ketamine-10", t, minutes=40, route="intravenous", text=f"{mg} mg over 40 minutes",
                         rate_ratio={"numerator": qty(mg, "mg"), "denominator": qty(40, "min")},
                         reason="mdd-recurrent-severe")
    negative_ua(b, b.day(-b.randint(30, 50), 10))
    draft_day = last + b.randint(32, 35)
    b.draft("ketamine-10", b.day(draft_day, b.clinic_hour()), text=f"Ketamine {round(mgkg * kg)} mg IV over 40 min",
            route="intravenous", dose=qty(round(mgkg * kg), "mg"), duration_h=40 / 60, reason="mdd-recurrent-severe")
    return Outcome(
        "Depression: monthly maintenance (every 30-35 days, doses recorded as a rate ratio mg per 40 min) after "
        "an induction; each session starts a new course (gap > 28 days) and a urinalysis was done within 90 days "
        "before the planned session: nothing should fire."
    )


@scenario("depression-induction-dipstick-blood")
def depression_induction_dipstick_blood(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b, gender="female")
    _depression(b)
    offsets = induction_offsets(b)
    gap = offsets[4] - offsets[3]
    draft_day = 1 if gap < 3 else b.randint(1, 2)
    first = draft_day - offsets[4]
    times = [b.day(first + o, b.clinic_hour()) for o in offsets[:4]]
    check_past(b, times)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 15)))
    b.weight(times[0] - timedelta(days=b.randint(2, 8)), kg)
    for t in times:
        ketamine_iv_session(b, t, 0.5)
    blood = b.choice(("1+", "2+", "str:1+", "str:2+", "str:Moderate"))
    b.urinalysis(times[-1] - timedelta(hours=1), blood=blood)
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Depression induction in progress (4 of 6 sessions): pre-infusion dipstick positive for blood (1+/2+, "
        "coded SNOMED or as text), no microscopy yet: KB-02 warning (confirm with microscopy) on every hook.",
        patient_view=("KB-02",), orders=("KB-02",),
    )


@scenario("depression-maintenance-microhematuria")
def depression_maintenance_microhematuria(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    times, draft_day = _weekly_maintenance(b, start=(-70, -50), kg=kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    b.urinalysis(b.day(-b.randint(1, 2), 10), blood=b.choice(("str:trace", "str:Trace", "1+")),
                 rbc=b.randint(4, 20), wbc=b.randint(0, 4))
    b.culture(b.day(-b.randint(1, 2), 10))
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance for 2 months; urine microscopy now shows 4-20 RBC/HPF (≥ 3, AUA microhaematuria) with "
        "trace/1+ dipstick blood and a sterile culture: KB-02 warning on every hook.",
        patient_view=("KB-02",), orders=("KB-02",),
    )


@scenario("depression-gross-hematuria-pain")
def depression_gross_hematuria_pain(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    times, draft_day = _weekly_maintenance(b, start=(-70, -50), kg=kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    b.condition("dysuria", b.day(-b.randint(10, 20), 10))
    b.condition("suprapubic-pain", b.day(-b.randint(10, 20), 10))
    b.urinalysis(b.day(-b.randint(14, 18), 10), blood="str:trace", rbc=b.randint(3, 6), wbc=b.randint(0, 4))
    b.condition("gross-hematuria", b.day(-b.randint(3, 6), 10), category="encounter-diagnosis")
    ua_day = -b.randint(1, 3)
    b.urinalysis(b.day(ua_day, 11), blood="3+", rbc=b.randint(40, 100), wbc=b.randint(0, 4))
    b.culture(b.day(ua_day, 11))
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; new dysuria and suprapubic pain for 2-3 weeks with trace blood (3-6 RBC/HPF), then "
        "visible haematuria, > 25 RBC/HPF, sterile culture: KB-02 critical on every hook, KB-01 warning (painful "
        "LUTS) on the order hooks.",
        patient_view=("KB-02",), orders=("KB-01", "KB-02"),
    )


@scenario("depression-sterile-pyuria")
def depression_sterile_pyuria(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    times, draft_day = _weekly_maintenance(b, start=(-70, -40), kg=kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    at = b.day(-b.randint(3, 8), 10)
    b.urinalysis(at, le=b.choice(("1+", "str:trace", "str:1+", "str:Small")), rbc=b.randint(0, 2),
                 wbc=b.randint(8, 30))
    b.culture(at + timedelta(hours=b.randint(0, 48)))
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; leukocyte esterase positive and 8-30 WBC/HPF with a urine culture showing no growth "
        "within 2 days, no blood: KB-03 warning (sterile pyuria) on every hook.",
        patient_view=("KB-03",), orders=("KB-03",),
    )


@scenario("depression-unparseable-dose")
def depression_unparseable_dose(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    start_day, last_day = -b.randint(40, 60), -b.randint(2, 6)
    days = [start_day + o for o in induction_offsets(b)]
    days += maintenance_days(b, after=days[-1], last=last_day, interval=(6, 8))
    times = [b.day(d, b.clinic_hour()) for d in days]
    weights_along(b, times, kg)
    odd = {len(times) - 2: "vial", len(times) - 4: "text"}
    for i, t in enumerate(times):
        if odd.get(i) == "vial":
            b.administration("ketamine-local", t, minutes=40, route="intravenous", text="1 vial as per protocol",
                             dose={"value": 1, "unit": "vial"}, reason="mdd-recurrent-severe")
        elif odd.get(i) == "text":
            b.administration("ketamine-local", t, minutes=40, route="intravenous", text="as per protocol",
                             reason="mdd-recurrent-severe")
        else:
            ketamine_iv_session(b, t, 0.5)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 15)))
    negative_ua(b, b.day(-b.randint(10, 20), 10))
    depression_draft(b, max(1, last_day + b.randint(6, 8)), 0.5)
    return Outcome(
        "Induction then weekly maintenance for 1-2 months; two sessions have no usable dose (\"1 vial\" without a "
        "UCUM unit or strength, and a text-only dosage) — they count as sessions but not toward mg. Known doses "
        "are far below every threshold and urine is negative: nothing should fire."
    )


@scenario("hematuria-before-course")
def hematuria_before_course(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    times, draft_day = _weekly_maintenance(b, start=(-45, -35), kg=kg)
    b.urinalysis(times[0] - timedelta(days=b.randint(20, 40)), blood="1+", rbc=b.randint(5, 10))
    negative_ua(b, b.day(-b.randint(3, 10), 10))
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Microscopic haematuria (5-10 RBC/HPF) found before the course started (baseline window, worked up); "
        "urinalysis during the course negative: the on-treatment window starts at the course start, so KB-02 "
        "stays silent."
    )


@scenario("hematuria-after-follow-up-window")
def hematuria_after_follow_up_window(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    last = -b.randint(150, 170)
    depression_course(b, start_day=last - b.randint(60, 80), last_day=last, kg=kg)
    b.urinalysis(b.day(-b.randint(5, 15), 10), blood="1+", rbc=b.randint(4, 12))
    return Outcome(
        "Course ended 5-6 months ago (exposed within 365 days), microscopic haematuria now — more than 90 days after "
        "the last session, outside the on-treatment window: KB-02 stays silent. No draft order."
    )


@scenario("depression-long-term-unmonitored")
def depression_long_term_unmonitored(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    times, draft_day = _weekly_maintenance(b, start=(-290, -250), kg=kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance for 8-9 months without a break; no urinalysis or symptom score since the baseline "
        "before the course: KB-04 info (≥ 6 months continuous) and KB-15 info (monitoring due) on the order hooks.",
        orders=("KB-04", "KB-15"),
    )


@scenario("maintenance-short-interval-draft")
def maintenance_short_interval_draft(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    planned = b.ago(hours=-b.uniform(0.5, 1.5, 2))
    last = b.ago(hours=b.uniform(20, 22, 2))
    start_day = -b.randint(40, 60)
    days = [start_day + o for o in induction_offsets(b)]
    last_day_prev = (last - b.base).days - b.randint(6, 8)
    days += maintenance_days(b, after=days[-1], last=last_day_prev, interval=(6, 8))
    times = [b.day(d, b.clinic_hour()) for d in days] + [last]
    weights_along(b, times, kg)
    for i, t in enumerate(times):
        ketamine_iv_session(b, t, 0.5 if i < 6 else 0.6)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 15)))
    negative_ua(b, b.day(-b.randint(10, 25), 10))
    b.draft("ketamine-10", planned, text="Ketamine 0.6 mg/kg IV over 40 minutes", route="intravenous",
            dose=qty(0.6, "mg/kg"), duration_h=40 / 60, reason="mdd-recurrent-severe")
    return Outcome(
        "Weekly maintenance; the last session ended ~20 h ago and another session is being ordered to start within "
        "the next 2 hours (< 24 h after the previous one): KB-05 info on the order hooks.",
        orders=("KB-05",),
    )


@scenario("induction-fourth-session-in-week")
def induction_fourth_session_in_week(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    planned = b.ago(hours=-b.uniform(2, 4, 2))
    times = [
        planned - timedelta(days=6) + timedelta(hours=b.uniform(0, 4, 2)),
        planned - timedelta(days=4) + timedelta(hours=b.uniform(-2, 2, 2)),
        planned - timedelta(days=2) + timedelta(hours=b.uniform(-2, 2, 2)),
    ]
    b.weight(times[0] - timedelta(days=b.randint(1, 5)), kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 15)))
    for t in times:
        ketamine_iv_session(b, t, 0.5)
    draft = b.draft("ketamine-10", planned, text="Ketamine 0.5 mg/kg IV over 40 minutes", route="intravenous",
                    dose=qty(0.5, "mg/kg"), duration_h=40 / 60, reason="mdd-recurrent-severe")
    b.book(draft, planned, minutes=40)
    return Outcome(
        "Induction started 6 days ago with 3 sessions (every 2 days); the draft would be a 4th session within 7 days "
        "(> 3 in 7 days), > 24 h after the previous one: KB-05 info on the order hooks, and at appointment-book "
        "when the same session is booked as a proposed appointment.",
        orders=("KB-05",),
        booking=("KB-05",),
    )


# =============================================================== distractors (no current exposure)


@scenario("uti-positive-culture-unexposed")
def uti_positive_culture_unexposed(b: PatientBuilder) -> Outcome:
    b.patient("female", b.randint(19, 45))
    onset = b.day(-b.randint(2, 4), 10)
    b.condition("dysuria", onset)
    b.condition("frequency", onset)
    b.condition("uti", onset + timedelta(hours=30), category="encounter-diagnosis")
    at = onset + timedelta(hours=28)
    b.urinalysis(at, blood="1+", le="1+", nitrite="pos", rbc=b.randint(5, 15), wbc=b.randint(30, 80))
    b.culture(at, "Escherichia coli >100,000 CFU/mL")
    b.draft("nitrofurantoin", b.day(1, 8), text="Nitrofurantoin 100 mg twice daily for 5 days", route="oral",
            dose=qty(100, "mg"), frequency=(2, 1, "d"))
    return Outcome(
        "Uncomplicated E. coli cystitis (dysuria, frequency, blood and leukocytes on dipstick, nitrite positive, "
        "positive culture) in a woman never given ketamine; draft order is nitrofurantoin: nothing should fire."
    )


@scenario("bph-man-no-ketamine")
def bph_man_no_ketamine(b: PatientBuilder) -> Outcome:
    b.patient("male", b.randint(60, 78))
    b.condition("bph", b.day(-b.randint(700, 1500), 10))
    b.condition("nocturia", b.day(-b.randint(400, 800), 10))
    b.condition("frequency", b.day(-b.randint(200, 400), 10))
    b.observation("ipss", b.day(-b.randint(330, 400), 10), value=b.randint(8, 11), digits=0)
    b.observation("ipss", b.day(-b.randint(10, 30), 10), value=b.randint(13, 19), digits=0)
    b.observation("pvr", b.day(-b.randint(10, 30), 10), value=b.randint(40, 85), digits=0)
    negative_ua(b, b.day(-b.randint(10, 30), 10))
    normal_renal(b, b.day(-b.randint(10, 30), 10), molar=False)
    return Outcome(
        "Older man with BPH, nocturia and frequency, IPSS rising into the moderate band, PVR < 100 mL; never "
        "given ketamine and no draft order: nothing should fire."
    )


@scenario("anaesthesia-ketamine-ten-years-ago")
def anaesthesia_ketamine_ten_years_ago(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b, 40, 70)
    when = b.day(-b.randint(3560, 3740), b.clinic_hour())
    b.condition("fracture", when - timedelta(hours=5), clinical="resolved", abated=when + timedelta(days=120),
                category="encounter-diagnosis")
    b.administration("ketamine-50", when, dose=qty(round(kg * b.uniform(1.0, 2.0), -1), "mg"),
                     route="intravenous", text="Induction of anaesthesia")
    b.urinalysis(b.day(-b.randint(5, 20), 10), blood="1+", rbc=b.randint(4, 15))
    return Outcome(
        "A single ketamine dose for induction of anaesthesia ~10 years ago; now microscopic haematuria: not "
        "exposed (nothing in the last 365 days), no draft — nothing should fire."
    )


@scenario("remote-course-over-a-year")
def remote_course_over_a_year(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b, onset_years=4)
    last = -b.randint(430, 540)
    depression_course(b, start_day=last - b.randint(120, 180), last_day=last, kg=kg)
    b.condition("nocturia", b.day(-b.randint(20, 40), 10))
    b.urinalysis(b.day(-b.randint(10, 20), 10), blood="str:trace", rbc=b.randint(3, 8))
    return Outcome(
        "Depression course (induction + 4-6 months weekly) that ended 14-18 months ago; now nocturia and "
        "microscopic haematuria: not exposed in the last 365 days, no draft — nothing should fire."
    )


@scenario("entered-in-error-administration")
def entered_in_error_administration(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    b.weight(b.day(-b.randint(20, 40), 9), kg)
    b.administration("ketamine-10", b.day(-b.randint(15, 30), b.clinic_hour()), minutes=40,
                     dose=qty(0.5, "mg/kg"), status="entered-in-error", text="charted on the wrong patient")
    b.administration("ketamine-10", b.day(-b.randint(8, 12), b.clinic_hour()), minutes=40,
                     dose=qty(0.5, "mg/kg"), status="not-done", text="session cancelled: hypertension")
    b.urinalysis(b.day(-b.randint(2, 5), 10), blood="1+", rbc=b.randint(5, 10))
    return Outcome(
        "Two ketamine administrations, one entered-in-error and one not-done; microscopic haematuria now: no real "
        "exposure, no draft — nothing should fire."
    )


# =============================================================== pain: infusions


def _pain_patient(b: PatientBuilder, reason: str = "chronic-pain") -> float:
    _, kg = _adult(b, 28, 70)
    b.condition(reason, b.day(-b.randint(400, 1500), 10))
    return kg


@scenario("pain-daily-infusions-next-day-draft")
def pain_daily_infusions_next_day_draft(b: PatientBuilder) -> Outcome:
    kg = _pain_patient(b, "crps")
    rate = b.choice((0.6, 0.75, 0.8, 1.0))
    planned = b.ago(hours=-b.uniform(0.5, 2, 2))
    times = [planned - timedelta(days=k) for k in range(9, 0, -1)]
    b.weight(times[0] - timedelta(days=b.randint(2, 10)), kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    normal_lfts(b, times[0] - timedelta(days=b.randint(5, 20)))
    for t in times:
        b.administration("ketamine-50", t, minutes=240, rate=qty(rate, "mg/kg/h"), route="intravenous",
                         text=f"{rate:g} mg/kg/h for 4 hours", reason="crps")
    b.draft("ketamine-50", planned, text=f"Ketamine {rate:g} mg/kg/h IV for 4 hours (day 10)", route="intravenous",
            rate=qty(rate, "mg/kg/h"), duration_h=4, reason="crps")
    return Outcome(
        "CRPS: 9 consecutive daily 4-hour infusions at 0.6-1.0 mg/kg/h (≥ 1,100 mg in 9 days, > 3 sessions a week "
        "for 2 weeks); the 10th is ordered for today, ~20 h after the last ended: KB-04 (intensive) and KB-05 "
        "(< 24 h, > 3 in 7 days) on the order hooks.",
        orders=("KB-04", "KB-05"),
    )


@scenario("pain-continuous-infusion-72h")
def pain_continuous_infusion_72h(b: PatientBuilder) -> Outcome:
    kg = _pain_patient(b)
    start = b.day(-b.randint(8, 12), b.clinic_hour())
    hours = b.randint(72, 96)
    rate = b.randint(10, 20)
    b.weight(start - timedelta(days=1), kg)
    negative_ua(b, start - timedelta(days=b.randint(5, 20)))
    b.administration("ketamine-50", start, end=start + timedelta(hours=hours), rate=qty(rate, "mg/h"),
                     route="intravenous", text=f"{rate} mg/h continuous infusion", reason="chronic-pain")
    b.draft("ketamine-50", b.day(b.randint(10, 14), 9), text=f"Ketamine {rate} mg/h IV continuous for 72 hours",
            route="intravenous", rate=qty(rate, "mg/h"), duration_h=72, reason="chronic-pain")
    return Outcome(
        f"Refractory chronic pain: continuous infusion {hours} h at 10-20 mg/h ending ~1 week ago; a repeat 72-h "
        "infusion is ordered in 10-14 days: KB-04 (continuous infusion ≥ 48 h) on the order hooks.",
        orders=("KB-04",),
    )


@scenario("pain-infusion-ml-per-hour-alp")
def pain_infusion_ml_per_hour_alp(b: PatientBuilder) -> Outcome:
    kg = _pain_patient(b)
    per_ml = b.choice((1, 2))
    ml_h = b.randint(30, 50) // per_ml
    bag = b.medication("ketamine-product", (per_ml, "mg", 1, "mL"),
                       text=f"Ketamine {per_ml} mg/mL in sodium chloride 0.9% infusion bag")
    last = -b.randint(4, 6)
    days = [last - 14 - b.randint(-1, 1), last - 7 - b.randint(-1, 0), last]
    times = [b.day(d, b.clinic_hour()) for d in days]
    b.weight(times[0] - timedelta(days=2), kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    normal_lfts(b, times[0] - timedelta(days=b.randint(10, 20)))
    for t in times:
        b.administration("ketamine-product", t, minutes=240, rate=qty(ml_h, "mL/h"), medication_ref=bag,
                         route="intravenous", text=f"{ml_h} mL/h for 4 hours", reason="chronic-pain")
    lab = b.day(-b.randint(1, 3), 9)
    b.observation("alp", lab, value=b.randint(135, 190), digits=0, lln=40, uln=120)
    b.observation("ggt", lab, value=b.randint(55, 90), digits=0, uln=50)
    b.observation("alt", lab, value=b.randint(30, 70), digits=0, uln=40)
    b.draft("ketamine-product", b.day(last + 7, b.clinic_hour()), text=f"Ketamine {ml_h} mL/h IV for 4 hours",
            route="intravenous", rate=qty(ml_h, "mL/h"), duration_h=4,
            contained=b.contained_medication("ketamine-product", (per_ml, "mg", 1, "mL")), reason="chronic-pain")
    return Outcome(
        "Chronic pain: weekly 4-hour infusions charted in mL/h of a 1 or 2 mg/mL bag (Medication ingredient "
        "strength), ≤ 200 mg a session; ALP has risen to 135-190 U/L (≥ 113, > ULN) with GGT < 2× and ALT < 3× ULN: "
        "KB-12 warning on every hook; cumulative dose stays < 1000 mg/28 d.",
        patient_view=("KB-12",), orders=("KB-12",),
    )


@scenario("crps-s-ketamine-100h-liver")
def crps_s_ketamine_100h_liver(b: PatientBuilder) -> Outcome:
    kg = _pain_patient(b, "crps")
    first = b.day(-b.randint(38, 40), 9)
    second = first + timedelta(hours=100, days=16)
    rates = (b.randint(10, 20), b.randint(10, 20))
    b.weight(first - timedelta(days=1), kg)
    negative_ua(b, first - timedelta(days=b.randint(5, 15)))
    normal_lfts(b, first - timedelta(days=b.randint(3, 10)))
    for start, rate in zip((first, second), rates, strict=True):
        b.administration("esketamine-iv", start, end=start + timedelta(hours=100), rate=qty(rate, "mg/h"),
                         route="intravenous", text=f"S-ketamine {rate} mg/h for 100 hours", reason="crps")
    lab = b.day(-b.randint(6, 10), 9)
    b.observation("alt", lab, value=b.randint(150, 260), digits=0, uln=40)
    b.observation("alp", lab, value=b.randint(200, 320), digits=0, lln=40, uln=120)
    b.observation("ggt", lab, value=b.randint(150, 400), digits=0, uln=50)
    b.observation("bilirubin", lab, value=b.uniform(0.9, 1.6, 1), uln=1.2)
    rate = b.randint(10, 20)
    b.draft("esketamine-iv", b.day(b.randint(2, 5), 9), text=f"S-ketamine {rate} mg/h IV for 100 hours",
            route="intravenous", rate=qty(rate, "mg/h"), duration_h=100, reason="crps")
    return Outcome(
        "CRPS (Noppers 2011 pattern): two 100-h IV S-ketamine infusions at 10-20 mg/h 16 days apart; ALT > 3×, GGT "
        "> 2× ULN and ALP ≥ 113 after the second; a third 100-h infusion is ordered. KB-12 on every hook; on the "
        "order hooks also KB-04 (infusion ≥ 48 h, > 84 mg esketamine a session) and KB-13 (esketamine order).",
        patient_view=("KB-12",), orders=("KB-04", "KB-12", "KB-13"),
    )


@scenario("pain-ug-kg-min-hydronephrosis")
def pain_ug_kg_min_hydronephrosis(b: PatientBuilder) -> Outcome:
    kg = _pain_patient(b)
    rate = b.randint(5, 8)
    start_day, last_day = -b.randint(120, 140), -b.randint(2, 8)
    days = [start_day, *maintenance_days(b, after=start_day, last=last_day, interval=(10, 13))]
    times = [b.day(d, b.clinic_hour()) for d in days]
    weights_along(b, times, kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    normal_renal(b, times[0] - timedelta(days=b.randint(5, 20)))
    for t in times:
        b.administration("ketamine-50", t, minutes=240, rate=qty(rate, "ug/kg/min", "mcg/kg/min"),
                         route="intravenous", text=f"{rate} mcg/kg/min for 4 hours", reason="chronic-pain")
    negative_ua(b, b.day(-b.randint(15, 30), 10))
    normal_renal(b, b.day(-b.randint(5, 12), 10))
    b.condition("hydronephrosis", b.day(-b.randint(3, 8), 14), category="encounter-diagnosis",
                note="Renal ultrasound for flank discomfort: moderate bilateral hydronephrosis, thick-walled bladder.")
    b.draft("ketamine-50", b.day(max(1, last_day + b.randint(10, 13)), 9),
            text=f"Ketamine {rate} mcg/kg/min IV for 4 hours", route="intravenous",
            rate=qty(rate, "ug/kg/min", "mcg/kg/min"), duration_h=4, reason="chronic-pain")
    return Outcome(
        "Chronic pain: 4-hour infusions at 5-8 mcg/kg/min every 10-13 days for 4-5 months (urinalysis current); "
        "renal ultrasound now shows hydronephrosis: KB-11 critical on every hook.",
        patient_view=("KB-11",), orders=("KB-11",),
    )


@scenario("pain-high-cumulative")
def pain_high_cumulative(b: PatientBuilder) -> Outcome:
    kg = _pain_patient(b)
    rate = b.choice((1.0, 1.25, 1.5, 2.0))
    planned = b.day(b.randint(1, 2), b.clinic_hour(12, 14))
    times = [t for t in backward(planned, TWICE_WEEKLY, 8, phase=b.randint(0, 1))
             if t > b.day(-27, 0)]
    check_past(b, times)
    b.weight(times[0] - timedelta(days=b.randint(1, 5)), kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 15)))
    normal_lfts(b, times[0] - timedelta(days=b.randint(5, 15)))
    for t in times:
        b.administration("ketamine-50", t, minutes=240, rate=qty(rate, "mg/kg/h"), route="intravenous",
                         text=f"{rate:g} mg/kg/h for 4 hours", reason="chronic-pain")
    b.draft("ketamine-50", planned, text=f"Ketamine {rate:g} mg/kg/h IV for 4 hours", route="intravenous",
            rate=qty(rate, "mg/kg/h"), duration_h=4, reason="chronic-pain")
    return Outcome(
        "Chronic pain: twice-weekly 4-hour infusions at 1-2 mg/kg/h for 4 weeks (≥ 1,500 mg in 28 days, never > 3 a "
        "week): KB-04 (cumulative dose) on the order hooks.",
        orders=("KB-04",),
    )


@scenario("icu-infusion-creatinine-rise")
def icu_infusion_creatinine_rise(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b, 25, 60)
    start = b.ago(days=6, hours=b.uniform(0, 12, 2))
    b.condition("burn", start - timedelta(days=2), category="encounter-diagnosis")
    b.weight(start - timedelta(days=1), kg)
    rate = b.choice((0.1, 0.15, 0.2))
    b.administration("ketamine-50", start, end=start + timedelta(hours=96), rate=qty(rate, "mg/kg/h"),
                     route="intravenous", text=f"{rate:g} mg/kg/h continuous (analgosedation)", reason=None)
    base = b.randint(55, 60)
    c1 = base + b.randint(0, 3)
    c2 = c1 + b.randint(28, 32)
    b.observation("creatinine-molar", start - timedelta(days=b.randint(2, 4)), value=base, digits=0, lln=45, uln=90)
    t1 = b.ago(days=4, hours=b.uniform(0, 3, 2))
    b.observation("creatinine-molar", t1, value=c1, digits=0, lln=45, uln=90)
    b.observation("creatinine-molar", t1 + timedelta(hours=b.randint(30, 40)), value=c2, digits=0, lln=45, uln=90)
    b.draft("ketamine-50", b.ago(hours=-b.uniform(2, 6, 2)), text=f"Ketamine {rate:g} mg/kg/h IV for 48 hours",
            route="intravenous", rate=qty(rate, "mg/kg/h"), duration_h=48)
    return Outcome(
        "Burns ICU: 96-h ketamine infusion (mg/kg/h) ended 2 days ago; creatinine rose by 28-32 µmol/L within 48 h "
        "(KDIGO, still < 100 µmol/L); a 48-h restart is ordered: KB-07 warning on every hook, KB-04 (continuous "
        "infusion ≥ 48 h) on the order hooks.",
        patient_view=("KB-07",), orders=("KB-04", "KB-07"),
    )


# =============================================================== esketamine (Spravato)


def _esketamine_patient(b: PatientBuilder) -> None:
    _adult(b, 22, 70)
    _depression(b)


@scenario("esketamine-induction-56mg")
def esketamine_induction_56mg(b: PatientBuilder) -> Outcome:
    _esketamine_patient(b)
    planned = b.day(1, b.clinic_hour(11, 14))
    times = esketamine_course(b, planned, twice_weekly=b.randint(4, 5))
    check_past(b, times)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    esketamine_sessions(b, times, doses=(56,))
    esketamine_draft(b, planned, 56)
    return Outcome(
        "Esketamine (Spravato) induction, 56 mg twice weekly in week 2-3, no urinary findings: KB-13 info "
        "(label monitoring) on the order hooks only.",
        orders=("KB-13",),
    )


@scenario("esketamine-suicidal-84mg-devices")
def esketamine_suicidal_84mg_devices(b: PatientBuilder) -> Outcome:
    _esketamine_patient(b)
    device = b.medication("esketamine-nasal", (28, "mg", 1, "{device}"))
    planned = b.day(1, b.clinic_hour(11, 14))
    times = esketamine_course(b, planned, twice_weekly=b.randint(2, 6))
    check_past(b, times)
    negative_ua(b, times[0] - timedelta(days=b.randint(3, 10)))
    esketamine_sessions(b, times, doses=(84,), devices=device)
    esketamine_draft(b, planned, 84, devices=True)
    return Outcome(
        "MDD with acute suicidal ideation: Spravato 84 mg twice weekly, charted as 3 × 28 mg devices (Medication "
        "strength 28 mg/device): KB-13 info on the order hooks only.",
        orders=("KB-13",),
    )


@scenario("esketamine-draft-above-84mg")
def esketamine_draft_above_84mg(b: PatientBuilder) -> Outcome:
    _esketamine_patient(b)
    planned = b.day(b.randint(1, 3), b.clinic_hour(13, 15))
    times = esketamine_course(b, planned, weekly=b.randint(1, 3), twice_weekly=8)
    check_past(b, times)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    esketamine_sessions(b, times, doses=(84,))
    esketamine_draft(b, planned, 112)
    return Outcome(
        "Spravato weekly phase (weeks 5-8) at 84 mg; the draft asks for 112 mg, above the 84 mg label maximum: "
        "KB-04 and KB-13 on the order hooks.",
        orders=("KB-04", "KB-13"),
    )


@scenario("esketamine-three-sessions-a-week")
def esketamine_three_sessions_a_week(b: PatientBuilder) -> Outcome:
    _esketamine_patient(b)
    planned = b.day(1, b.clinic_hour(12, 14))
    times = esketamine_course(b, planned, three_per_week=b.randint(5, 7))
    check_past(b, times)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    esketamine_sessions(b, times, doses=(56, 84))
    esketamine_draft(b, planned, 56)
    return Outcome(
        "Spravato given three times a week (off-label, Mon/Wed/Fri pattern) for 2 weeks; draft continues it: KB-04 "
        "info (> 2 esketamine sessions in 7 days) and KB-13 on the order hooks; never > 3 in 7 days.",
        orders=("KB-04", "KB-13"),
    )


@scenario("esketamine-twice-weekly-beyond-week-8")
def esketamine_twice_weekly_beyond_week_8(b: PatientBuilder) -> Outcome:
    _esketamine_patient(b)
    planned = b.day(1, b.clinic_hour(15, 16))
    times = esketamine_course(b, planned, twice_weekly=21)
    check_past(b, times)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 10)))
    negative_ua(b, b.day(-b.randint(20, 40), 10))
    esketamine_sessions(b, times, doses=(56, 84))
    esketamine_draft(b, planned, 84)
    return Outcome(
        "Spravato still twice weekly in week 11 (label: weekly from week 5, weekly or fortnightly from week 9): "
        "KB-04 info and KB-13 on the order hooks; the course is < 3 months and urine was checked.",
        orders=("KB-04", "KB-13"),
    )


@scenario("esketamine-transient-frequency")
def esketamine_transient_frequency(b: PatientBuilder) -> Outcome:
    _esketamine_patient(b)
    last = b.day(b.choice((-3, -2)), b.clinic_hour(13, 15))
    planned = last + timedelta(days=7, minutes=40)
    times = [*esketamine_course(b, last, weekly=b.randint(4, 5), twice_weekly=8), last]
    check_past(b, times)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    negative_ua(b, b.day(-b.randint(20, 40), 10))
    esketamine_sessions(b, times, doses=(56, 84))
    b.condition("frequency", last + timedelta(hours=b.randint(4, 14)), note="Frequent voiding the evening after dosing")
    esketamine_draft(b, planned, 84)
    return Outcome(
        "Spravato maintenance (weekly after a twice-weekly induction); urinary frequency began within hours of the "
        "last dose (≤ 72 h, nothing else): KB-01 info (transient LUTS) and KB-13 on the order hooks.",
        orders=("KB-01", "KB-13"),
    )


@scenario("esketamine-persistent-luts")
def esketamine_persistent_luts(b: PatientBuilder) -> Outcome:
    _esketamine_patient(b)
    planned = b.day(b.randint(2, 4), b.clinic_hour(13, 15))
    times = esketamine_course(b, planned, weekly=b.randint(2, 3), twice_weekly=8)
    check_past(b, times)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    esketamine_sessions(b, times, doses=(56, 84))
    b.condition("urgency", b.day(-b.randint(18, 25), 10))
    b.condition("nocturia", b.day(-b.randint(15, 22), 10))
    esketamine_draft(b, planned, 84)
    return Outcome(
        "Spravato weeks 5-8; new urgency and nocturia persisting for ~3 weeks (2 symptom classes, > 14 days): KB-01 "
        "warning on the order hooks; KB-13 info is suppressed by the urinary warning.",
        orders=("KB-01",),
    )


@scenario("esketamine-dysuria-hematuria")
def esketamine_dysuria_hematuria(b: PatientBuilder) -> Outcome:
    _esketamine_patient(b)
    planned = b.day(b.randint(1, 2), b.clinic_hour(12, 14))
    times = esketamine_course(b, planned, twice_weekly=b.randint(7, 9))
    check_past(b, times)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    esketamine_sessions(b, times, doses=(56, 84))
    b.condition("dysuria", b.day(-b.randint(5, 10), 10))
    at = b.day(-b.randint(1, 3), 10)
    b.urinalysis(at, blood="2+", rbc=b.randint(8, 20), wbc=b.randint(0, 4))
    b.culture(at)
    esketamine_draft(b, planned, 84)
    return Outcome(
        "Spravato induction; new dysuria, dipstick blood 2+ with 8-20 RBC/HPF and a sterile culture: KB-02 on every "
        "hook, KB-01 warning on the order hooks; KB-13 suppressed.",
        patient_view=("KB-02",), orders=("KB-01", "KB-02"),
    )


# =============================================================== renal


def _racemic_weekly(b: PatientBuilder, start: tuple[int, int] = (-75, -55)) -> tuple[list, int]:
    _, kg = _adult(b, 25, 64)
    _depression(b)
    times, draft_day = _weekly_maintenance(b, start=start, kg=kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    return times, draft_day


@scenario("renal-creatinine-above-100")
def renal_creatinine_above_100(b: PatientBuilder) -> Outcome:
    times, draft_day = _racemic_weekly(b)
    pre = times[0] - timedelta(days=b.randint(10, 40))
    b.observation("creatinine-molar", pre, value=b.randint(62, 80), digits=0, lln=45, uln=90)
    b.observation("egfr", pre, value=b.randint(95, 110), digits=0)
    lab = b.day(-b.randint(2, 5), 10)
    b.observation("creatinine-molar", lab, value=b.randint(108, 135), digits=0, lln=45, uln=90)
    b.observation("egfr", lab, value=b.randint(50, 65), digits=0)
    negative_ua(b, lab)
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; creatinine rose from 62-80 before the course to 108-135 µmol/L (> 100, new) and eGFR "
        "fell from ~100 to 50-65: KB-07 on every hook.",
        patient_view=("KB-07",), orders=("KB-07",),
    )


@scenario("oral-ketamine-egfr-fall")
def oral_ketamine_egfr_fall(b: PatientBuilder) -> Outcome:
    _adult(b, 25, 64)
    _depression(b)
    start = b.day(-b.randint(70, 80), 10)
    end = b.day(b.randint(1, 2), 10)
    b.supply("ketamine-oral", authored=start - timedelta(days=1), start=start, end=end, dose=qty(50, "mg"),
             frequency=(1, 3, "d"), text="Ketamine 50 mg by mouth every 3 days", route="oral",
             reason="mdd-recurrent-severe", supply_days=84)
    pre = start - timedelta(days=b.randint(10, 40))
    baseline = b.randint(100, 112)
    b.observation("creatinine-mass", pre, value=b.uniform(0.68, 0.75, 2), digits=2, lln=0.5, uln=1.0)
    b.observation("egfr", pre, value=baseline, digits=0)
    lab = b.day(-b.randint(2, 6), 10)
    b.observation("creatinine-mass", lab, value=b.uniform(0.95, 1.05, 2), digits=2, lln=0.5, uln=1.0)
    b.observation("egfr", lab, value=round(baseline * b.uniform(0.62, 0.72, 3)), digits=0)
    negative_ua(b, pre)
    negative_ua(b, b.day(-b.randint(20, 40), 10))
    b.draft("ketamine-oral", end + timedelta(days=3), text="Ketamine 50 mg by mouth every 3 days (renewal)",
            route="oral", dose=qty(50, "mg"), frequency=(1, 3, "d"), reason="mdd-recurrent-severe")
    return Outcome(
        "Off-label oral ketamine 50 mg every 3 days for ~2.5 months (active MedicationRequest supply); eGFR fell "
        "28-38 % from the pre-course baseline (creatinine in mg/dL still < 1.13); renewal drafted: KB-07 warning on "
        "every hook.",
        patient_view=("KB-07",), orders=("KB-07",),
    )


@scenario("renal-egfr-below-30")
def renal_egfr_below_30(b: PatientBuilder) -> Outcome:
    kg = _pain_patient(b)
    start_day, last_day = -b.randint(50, 70), -b.randint(2, 6)
    days = [start_day, *maintenance_days(b, after=start_day, last=last_day, interval=(6, 8))]
    times = [b.day(d, b.clinic_hour()) for d in days]
    b.weight(times[0] - timedelta(days=2), kg)
    mg = b.randint(80, 150)
    for t in times:
        b.administration("ketamine-50", t, minutes=b.randint(150, 240), dose=qty(mg, "mg"), route="intravenous",
                         text=f"{mg} mg over 2-4 hours", reason="chronic-pain")
    pre = times[0] - timedelta(days=b.randint(10, 40))
    b.observation("creatinine-mass", pre, value=b.uniform(0.8, 0.95, 2), digits=2, lln=0.5, uln=1.0)
    b.observation("egfr", pre, value=b.randint(80, 95), digits=0)
    negative_ua(b, pre)
    lab = b.day(-b.randint(1, 4), 10)
    b.observation("creatinine-mass", lab, value=b.uniform(2.3, 2.9, 2), digits=2, lln=0.5, uln=1.0)
    b.observation("egfr", lab, value=b.randint(20, 27), digits=0)
    negative_ua(b, lab)
    b.draft("ketamine-50", b.day(max(1, last_day + b.randint(6, 8)), 10), text=f"Ketamine {mg} mg IV over 3 hours",
            route="intravenous", dose=qty(mg, "mg"), duration_h=3, reason="chronic-pain")
    return Outcome(
        "Weekly pain infusions (80-150 mg in mg) for 2 months; eGFR fell from 80-95 to 20-27 (new < 30, > 40 % fall): "
        "KB-07 critical on every hook.",
        patient_view=("KB-07",), orders=("KB-07",),
    )


# =============================================================== voiding, scores


@scenario("voiding-pvr-raised")
def voiding_pvr_raised(b: PatientBuilder) -> Outcome:
    _, draft_day = _racemic_weekly(b, start=(-70, -40))
    b.observation("pvr", b.day(-b.randint(2, 6), 11), value=b.randint(120, 180), digits=0)
    negative_ua(b, b.day(-b.randint(2, 6), 11))
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; bladder scan post-void residual 120-180 mL (≥ 100): KB-08 warning on every hook.",
        patient_view=("KB-08",), orders=("KB-08",),
    )


@scenario("voiding-retention")
def voiding_retention(b: PatientBuilder) -> Outcome:
    _, draft_day = _racemic_weekly(b, start=(-70, -40))
    at = b.day(-b.randint(2, 5), 16)
    b.condition("retention", at, category="encounter-diagnosis", note="Catheterised in the emergency department")
    b.observation("pvr", at, value=b.randint(250, 450), digits=0)
    negative_ua(b, at)
    b.culture(at)
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; urinary retention with a residual of 250-450 mL, catheterised: KB-08 critical on every "
        "hook.",
        patient_view=("KB-08",), orders=("KB-08",),
    )


@scenario("voiding-small-bladder-frequency")
def voiding_small_bladder_frequency(b: PatientBuilder) -> Outcome:
    _, draft_day = _racemic_weekly(b, start=(-70, -50))
    b.condition("frequency", b.day(-b.randint(21, 35), 10))
    b.observation("voided-volume-max", b.day(-b.randint(3, 7), 20), value=b.randint(70, 140), digits=0)
    b.observation("pvr", b.day(-b.randint(3, 7), 11), value=b.randint(10, 40), digits=0)
    negative_ua(b, b.day(-b.randint(3, 7), 11))
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; frequency for 3-5 weeks and a 3-day bladder diary with a maximum voided volume of "
        "70-140 mL (< 150), PVR normal: KB-08 warning on every hook, KB-01 warning (persisting > 14 days) on the "
        "order hooks.",
        patient_view=("KB-08",), orders=("KB-01", "KB-08"),
    )


@scenario("ipss-rise-with-luts")
def ipss_rise_with_luts(b: PatientBuilder) -> Outcome:
    times, draft_day = _racemic_weekly(b, start=(-70, -50))
    b.observation("ipss", times[0] - timedelta(days=b.randint(5, 30)), value=b.randint(2, 6), digits=0)
    b.observation("ipss", b.day(-b.randint(2, 6), 10), value=b.randint(13, 19), digits=0)
    b.condition("nocturia", b.day(-b.randint(15, 30), 10))
    b.condition("urgency", b.day(-b.randint(15, 30), 10))
    negative_ua(b, b.day(-b.randint(2, 6), 10))
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; IPSS rose from 2-6 at baseline to 13-19 with new nocturia and urgency for 2-4 weeks: "
        "KB-01 warning and KB-10 warning on the order hooks (neither runs on patient-view).",
        orders=("KB-01", "KB-10"),
    )


@scenario("icsi-icpi-with-pain")
def icsi_icpi_with_pain(b: PatientBuilder) -> Outcome:
    times, draft_day = _racemic_weekly(b, start=(-70, -50))
    pre = times[0] - timedelta(days=b.randint(5, 30))
    b.observation("icsi", pre, value=b.randint(1, 3), digits=0)
    b.observation("icpi", pre, value=b.randint(1, 3), digits=0)
    lab = b.day(-b.randint(2, 6), 10)
    b.observation("icsi", lab, value=b.randint(10, 14), digits=0)
    b.observation("icpi", lab, value=b.randint(9, 12), digits=0)
    b.condition("frequency", b.day(-b.randint(15, 30), 10))
    b.condition("suprapubic-pain", b.day(-b.randint(10, 20), 10))
    negative_ua(b, lab)
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; O'Leary-Sant ICSI 10-14 (from 1-3) and ICPI 9-12 with new frequency and suprapubic "
        "pain: KB-01 warning and KB-10 warning on the order hooks.",
        orders=("KB-01", "KB-10"),
    )


@scenario("puf-score-elevated")
def puf_score_elevated(b: PatientBuilder) -> Outcome:
    times, draft_day = _racemic_weekly(b, start=(-70, -50))
    b.observation("puf", times[0] - timedelta(days=b.randint(5, 30)), value=b.randint(2, 5), digits=0)
    b.observation("puf", b.day(-b.randint(2, 6), 10), value=b.randint(12, 18), digits=0)
    negative_ua(b, b.day(-b.randint(2, 6), 10))
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; PUF score 12-18 (from 2-5) with no coded urinary symptom: KB-10 warning on the order "
        "hooks.",
        orders=("KB-10",),
    )


@scenario("lft-mild-distractor")
def lft_mild_distractor(b: PatientBuilder) -> Outcome:
    times, draft_day = _racemic_weekly(b, start=(-70, -40))
    normal_lfts(b, times[0] - timedelta(days=b.randint(5, 20)))
    lab = b.day(-b.randint(2, 6), 10)
    b.observation("alt", lab, value=round(40 * b.uniform(1.6, 2.4, 2)), digits=0, uln=40)
    b.observation("ggt", lab, value=round(50 * b.uniform(1.2, 1.7, 2)), digits=0, uln=50)
    b.observation("alp", lab, value=b.randint(60, 100), digits=0, lln=40, uln=120)
    negative_ua(b, lab)
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; ALT 1.6-2.4× ULN (< 3×), GGT 1.2-1.7× ULN (< 2×), ALP normal (< 113): below every KB-12 "
        "threshold — nothing should fire."
    )


@scenario("uti-positive-culture-exposed")
def uti_positive_culture_exposed(b: PatientBuilder) -> Outcome:
    _, draft_day = _racemic_weekly(b, start=(-70, -40))
    onset = b.day(-b.randint(3, 6), 10)
    b.condition("uti", onset, category="encounter-diagnosis")
    b.urinalysis(onset, le="1+", nitrite="pos", rbc=b.randint(0, 2), wbc=b.randint(20, 60))
    b.culture(onset, "Escherichia coli >100,000 CFU/mL")
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; pyuria with nitrite and a positive culture (E. coli > 10^5 CFU/mL), no blood, UTI "
        "diagnosed: infective, not sterile pyuria — KB-03 (and everything else) stays silent."
    )


# =============================================================== history, substance use, palliative, advanced


@scenario("known-ku-new-order")
def known_ku_new_order(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b, 25, 50)
    _depression(b)
    b.statement("ketamine-street", b.day(-b.randint(1500, 1800), 12), end=b.day(-b.randint(800, 900), 12),
                status="completed", dose=qty(1, "g"), text="about 1 g a day, insufflated", route="intranasal",
                note="Reported past recreational use; abstinent since.")
    b.condition("ketamine-uropathy", b.day(-b.randint(850, 950), 10), clinical="resolved",
                abated=b.day(-b.randint(400, 500), 10), note="Cystoscopy: ulcerative cystitis; improved on abstinence")
    b.weight(b.day(-b.randint(5, 15), 10), kg)
    negative_ua(b, b.day(-b.randint(10, 30), 10))
    depression_draft(b, b.randint(2, 5), 0.5)
    return Outcome(
        "Ketamine uropathy diagnosed ~2.5 years ago (recreational use, abstinent since); a therapeutic ketamine "
        "course for depression is now being ordered (baseline urinalysis done): KB-09 critical on the order hooks.",
        orders=("KB-09",),
    )


@scenario("substance-use-new-order")
def substance_use_new_order(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b, 20, 45)
    _depression(b)
    b.condition("hallucinogen-dependence", b.day(-b.randint(200, 600), 10))
    b.weight(b.day(-b.randint(5, 15), 10), kg)
    negative_ua(b, b.day(-b.randint(10, 30), 10))
    depression_draft(b, b.randint(2, 5), 0.5)
    return Outcome(
        "Active hallucinogen (ketamine) dependence F16.20; a first therapeutic ketamine course is ordered with a "
        "baseline urinalysis: KB-14 warning on the order hooks.",
        orders=("KB-14",),
    )


@scenario("palliative-sc-syringe-driver")
def palliative_sc_syringe_driver(b: PatientBuilder) -> Outcome:
    b.patient(b.choice(("female", "male")), b.randint(55, 85))
    b.condition("pancreatic-cancer", b.day(-b.randint(200, 400), 10))
    days = b.randint(35, 56)
    end = b.ago(hours=b.uniform(0.5, 3, 2))
    mg = 100
    for k in range(days, 0, -1):
        start = end - timedelta(days=k)
        if k % 10 == 0 and mg < 300:
            mg += 50
        dose = qty(mg / 1000, "g") if k % 7 == 3 else qty(mg, "mg")
        b.administration("ketamine-100", start, end=start + timedelta(days=1), dose=dose, route="subcutaneous",
                         text=f"{mg} mg over 24 hours via syringe driver")
    b.draft("ketamine-100", b.ago(hours=-b.uniform(0.25, 1, 2)),
            text=f"Ketamine {mg} mg SC over 24 hours via syringe driver", route="subcutaneous",
            dose=qty(mg, "mg"), duration_h=24)
    return Outcome(
        "Palliative care: ketamine by continuous subcutaneous syringe driver, one 24-h administration a day "
        "(100-300 mg/24 h, some charted in g) for 5-8 weeks; tomorrow's syringe is drafted: KB-04 warning "
        "(≥ 2000 mg/28 d, continuous ≥ 48 h) and KB-05 info (> 3 sessions in 7 days) on the order hooks.",
        orders=("KB-04", "KB-05"),
    )


@scenario("palliative-sc-statement")
def palliative_sc_statement(b: PatientBuilder) -> Outcome:
    b.patient(b.choice(("female", "male")), b.randint(55, 85))
    b.condition("pancreatic-cancer", b.day(-b.randint(300, 500), 10))
    mg = b.choice((100, 150, 200))
    b.statement("ketamine-100", b.day(-b.randint(210, 260), 12), dose=qty(mg, "mg"),
                text=f"{mg} mg over 24 hours by subcutaneous syringe driver (community palliative team)",
                route="subcutaneous", frequency=(1, 1, "d"))
    b.urinalysis(b.day(-b.randint(300, 400), 10))
    new = mg + b.choice((50, 100))
    b.draft("ketamine-100", b.day(1, 10), text=f"Ketamine {new} mg SC over 24 hours (dose increase)",
            route="subcutaneous", dose=qty(new, "mg"), duration_h=24, frequency=(1, 1, "d"))
    return Outcome(
        "Palliative care: daily subcutaneous ketamine 100-200 mg/24 h for 7-8 months recorded as an active "
        "MedicationStatement (≥ 2800 mg/28 d); dose increase drafted; no urinalysis for > 9 months: KB-04 "
        "(cumulative dose, ≥ 6 months continuous) and KB-15 (monitoring due) on the order hooks.",
        orders=("KB-04", "KB-15"),
    )


@scenario("advanced-ku-recreational")
def advanced_ku_recreational(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b, 20, 35)
    start = b.day(-b.randint(900, 1100), 12)
    pre = start - timedelta(days=b.randint(20, 60))
    b.observation("creatinine-molar", pre, value=b.randint(65, 80), digits=0, lln=45, uln=90)
    b.observation("egfr", pre, value=b.randint(105, 120), digits=0)
    b.statement("ketamine-street", start, end=b.day(-b.randint(5, 10), 12), status="completed",
                dose=qty(b.choice((1, 1.5, 2)), "g"), text="1-2 g a day, insufflated", route="intranasal",
                note="Recreational use reported at admission")
    b.condition("hallucinogen-dependence", start + timedelta(days=b.randint(300, 500)))
    b.condition("frequency", b.day(-b.randint(200, 400), 10))
    b.condition("urgency", b.day(-b.randint(200, 400), 10))
    b.condition("suprapubic-pain", b.day(-b.randint(60, 120), 10))
    b.condition("gross-hematuria", b.day(-b.randint(10, 20), 10), category="encounter-diagnosis")
    b.condition("hydronephrosis", b.day(-b.randint(3, 8), 15), category="encounter-diagnosis",
                note="CT urogram: bilateral hydronephrosis, small thick-walled bladder")
    at = b.day(-b.randint(3, 8), 10)
    b.urinalysis(at, blood="3+", le="1+", rbc=b.randint(30, 80), wbc=b.randint(10, 30))
    b.culture(at)
    lab = b.day(-b.randint(2, 5), 10)
    b.observation("creatinine-molar", lab, value=b.randint(150, 220), digits=0, lln=45, uln=90)
    b.observation("egfr", lab, value=b.randint(32, 45), digits=0)
    b.observation("alp", lab, value=b.randint(180, 260), digits=0, lln=40, uln=120)
    b.observation("ggt", lab, value=b.randint(250, 600), digits=0, uln=50)
    b.observation("alt", lab, value=b.randint(40, 90), digits=0, uln=40)
    b.observation("voided-volume-max", b.day(-b.randint(2, 4), 20), value=b.randint(40, 90), digits=0)
    b.observation("pvr", b.day(-b.randint(2, 4), 11), value=b.randint(10, 40), digits=0)
    b.weight(b.day(-b.randint(2, 4), 9), kg)
    return Outcome(
        "Recreational ketamine 1-2 g/day for 2.5-3 years (MedicationStatement, stopped a week ago): visible "
        "haematuria with > 25 RBC/HPF, sterile pyuria, creatinine > 100 µmol/L with eGFR down > 55 %, maximum voided "
        "volume < 100 mL, hydronephrosis, ALP/GGT raised. Patient-view: KB-02, KB-03, KB-07, KB-08, KB-11, KB-12. "
        "No draft order.",
        patient_view=("KB-02", "KB-03", "KB-07", "KB-08", "KB-11", "KB-12"),
    )


# =============================================================== issue 11: rules that say what the evidence says


@scenario("single-anaesthetic-dose-retention")
def single_anaesthetic_dose_retention(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b, 40, 80, gender="male")
    surgery = b.day(-b.randint(2, 4), 8)
    b.condition("fracture", surgery - timedelta(hours=6), category="encounter-diagnosis")
    b.weight(surgery - timedelta(hours=3), kg)
    b.administration("ketamine-10", surgery, dose=qty(b.choice((100, 120, 150)), "mg"), route="intravenous",
                     text="Induction of anaesthesia for femoral fixation")
    b.condition("retention", surgery + timedelta(hours=b.randint(14, 30)), category="encounter-diagnosis")
    return Outcome(
        "One 100-150 mg ketamine induction dose for femoral fixation 2-4 days ago, post-operative urinary "
        "retention. A single peri-procedural dose is not a cause of ketamine bladder injury (Corrections 1): "
        "KB-08 gives only an info card that names the dose and does not attribute the retention. No draft order.",
        patient_view=("KB-08",),
    )


@scenario("infected-hematuria-exposed")
def infected_hematuria_exposed(b: PatientBuilder) -> Outcome:
    _, draft_day = _racemic_weekly(b, start=(-70, -45))
    at = b.day(-b.randint(3, 6), 10)
    b.condition("dysuria", at - timedelta(days=1), category="encounter-diagnosis")
    b.urinalysis(at, blood="2+", le="1+", nitrite="pos", rbc=b.randint(30, 60), wbc=b.randint(20, 60))
    b.culture(at, "Escherichia coli >100,000 CFU/mL")
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; painful haematuria (> 25 RBC/HPF, dysuria) with a positive nitrite and E. coli "
        "> 10^5 CFU/mL: infection first — KB-02 is capped at a warning that says treat and repeat the urinalysis "
        "after treatment, never critical (Corrections 3). On the order hooks also KB-01 (new dysuria: warning).",
        patient_view=("KB-02",), orders=("KB-01", "KB-02"),
    )


@scenario("dipstick-negative-microscopy")
def dipstick_negative_microscopy(b: PatientBuilder) -> Outcome:
    _, draft_day = _racemic_weekly(b, start=(-70, -45))
    b.urinalysis(b.day(-b.randint(3, 8), 10), blood=b.choice(("1+", "2+")), rbc=b.randint(0, 2))
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; dipstick blood 1+/2+ but microscopy of the same sample shows 0-2 RBC/HPF: microscopy "
        "defines microhaematuria (≥ 3 RBC/HPF, AUA/SUFU) and overrides the dipstick — no card (Corrections 4)."
    )


@scenario("trace-dipstick-no-microscopy")
def trace_dipstick_no_microscopy(b: PatientBuilder) -> Outcome:
    _, draft_day = _racemic_weekly(b, start=(-70, -45))
    b.urinalysis(b.day(-b.randint(3, 8), 10), blood="str:trace")
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; a trace of blood on the dipstick and no microscopy: KB-02 information only, "
        "'confirm with urine microscopy' (Corrections 4), on every hook.",
        patient_view=("KB-02",), orders=("KB-02",),
    )


@scenario("alp-within-lab-range")
def alp_within_lab_range(b: PatientBuilder) -> Outcome:
    kg = _pain_patient(b)
    first = b.day(-b.randint(30, 40), 9)
    b.weight(first - timedelta(days=1), kg)
    for k in range(5):
        at = first + timedelta(days=k)
        b.administration("ketamine-100", at, end=at + timedelta(hours=4), rate=qty(0.5, "mg/kg/h"),
                         route="intravenous", text="0.5 mg/kg/h IV for 4 hours", reason="chronic-pain")
    lab = b.day(-b.randint(3, 10), 9)
    b.observation("alp", lab, value=b.randint(114, 125), digits=0, lln=40, uln=129)
    b.observation("ggt", lab, value=b.randint(30, 60), digits=0, uln=55)
    b.observation("alt", lab, value=b.randint(20, 40), digits=0, uln=45)
    return Outcome(
        "Five 4-hour pain infusions a month ago; ALP 114-125 U/L with the laboratory's upper limit of 129 U/L, "
        "GGT and ALT normal: above the recreational 113 U/L cut-off but within the lab's own range — no KB-12 "
        "card (Corrections 6). No draft order."
    )


@scenario("stable-pre-existing-ic-scores")
def stable_pre_existing_ic_scores(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b, 30, 60, gender="female")
    _depression(b)
    b.condition("interstitial-cystitis", b.day(-b.randint(800, 1500), 10))
    times, draft_day = _weekly_maintenance(b, start=(-75, -55), kg=kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    icsi, icpi = b.randint(12, 15), b.randint(10, 13)
    before = times[0] - timedelta(days=b.randint(10, 30))
    b.observation("icsi", before, value=icsi, digits=0)
    b.observation("icpi", before, value=icpi, digits=0)
    now = b.day(-b.randint(2, 6), 10)
    b.observation("icsi", now, value=icsi + b.randint(-1, 1), digits=0)
    b.observation("icpi", now, value=icpi, digits=0)
    negative_ua(b, now)
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Known interstitial cystitis for years; ICSI 12-15 and ICPI 10-13 before ketamine and unchanged during "
        "weekly maintenance: a high but stable score is not a rise — no KB-10 card (Corrections 7)."
    )


@scenario("chronic-active-problem-not-new")
def chronic_active_problem_not_new(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b, 30, 60, gender="female")
    _depression(b)
    b.condition("dysuria", b.day(-b.randint(700, 1200), 10))  # long-standing, still active
    times, draft_day = _weekly_maintenance(b, start=(-75, -55), kg=kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    b.condition("dysuria", b.day(-b.randint(5, 10), 10), category="encounter-diagnosis")
    b.culture(b.day(-b.randint(3, 4), 10))
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Dysuria on the problem list for 2-3 years and still active, recorded again at a visit during weekly "
        "maintenance: a problem active before the course is not new, whatever its onset (Corrections 8) — "
        "no KB-01 card."
    )


@scenario("monitored-long-term-maintenance")
def monitored_long_term_maintenance(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    times, draft_day = _weekly_maintenance(b, start=(-290, -250), kg=kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    check = b.day(-b.randint(20, 60), 10)
    negative_ua(b, check)
    b.observation("ipss", check, value=b.randint(2, 5), digits=0)
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance for 8-9 months without a break, with a negative urinalysis and an IPSS of 2-5 within "
        "the last 90 days: monitoring is up to date, so neither the KB-04 long-term information nor KB-15 repeats "
        "(issue 11 B10)."
    )


@scenario("visible-hematuria-after-stopping")
def visible_hematuria_after_stopping(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    last = -b.randint(200, 280)
    depression_course(b, start_day=last - b.randint(60, 80), last_day=last, kg=kg)
    b.condition("gross-hematuria", b.day(-b.randint(5, 20), 10), category="encounter-diagnosis")
    return Outcome(
        "A depression course that ended 7-9 months ago; visible haematuria now. Injury can persist or worsen after "
        "stopping (Corrections 2): KB-02 critical, worded 'after stopping ketamine'. No draft order.",
        patient_view=("KB-02",),
    )


@scenario("automated-strip-hematuria")
def automated_strip_hematuria(b: PatientBuilder) -> Outcome:
    _, draft_day = _racemic_weekly(b, start=(-70, -45))
    at = b.day(-b.randint(3, 8), 10)
    b.observation("urine-blood-auto", at, coded="blood-2+")
    b.observation("urine-le-auto", at, text="negative")
    b.observation("urine-nitrite-auto", at, text="negative")
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; the analyser reports blood 2+ under the automated-test-strip LOINC codes (57751-0, "
        "with 60026-2 and 50558-6 negative), no microscopy: recognised like a manual dipstick — KB-02 warning "
        "(Corrections 5).",
        patient_view=("KB-02",), orders=("KB-02",),
    )


@scenario("chronic-daily-use-retention")
def chronic_daily_use_retention(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b, 20, 35)
    start = b.day(-b.randint(900, 1100), 12)
    b.statement("ketamine-street", start, end=b.day(-b.randint(20, 40), 12), status="completed",
                dose=qty(b.choice((1, 1.5, 2)), "g"), text="1-2 g a day, insufflated", route="intranasal",
                note="Recreational use reported at admission")
    b.weight(b.day(-b.randint(2, 4), 9), kg)
    b.observation("pvr", b.day(-b.randint(2, 4), 11), value=b.randint(220, 400), digits=0)
    return Outcome(
        "Recreational ketamine 1-2 g a day for about 3 years (MedicationStatement, stopped 3-6 weeks ago), no "
        "administrations on record; post-void residual 220-400 mL. A chronic-use statement is repeated exposure "
        "(Corrections 1): KB-08 critical on patient-view. No draft order.",
        patient_view=("KB-08",),
    )
