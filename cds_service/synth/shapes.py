"""Patients whose warning signs are written the way production EHRs and laboratories send them (issue 16).

A urinalysis as one panel Observation with components, microscopy as ranges and lab unit strings, a
resolved childhood problem dated only by text but recorded during the course, infusions whose rate is
only on the order, and a culture and an ultrasound sent as DiagnosticReports. The expectations are the
same cards the plain form of each finding gives (clinical.md §2), so the cohort checks the reading layer
end to end.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from cds_service.synth.builder import PatientBuilder, iso, qty
from cds_service.synth.codes import CONDITIONS, LOINC, MEDICATIONS, OBS_CATEGORY, RESULTS, SNOMED, UCUM
from cds_service.synth.regimens import depression_course, depression_draft, negative_ua, weights_along
from cds_service.synth.scenarios import Outcome, _adult, _depression, _pain_patient, scenario

COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"


def _loinc(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display}


def _hpf(value: Any) -> dict[str, Any]:
    return {"valueQuantity": {"value": value, "unit": "/HPF", "system": UCUM, "code": "/[HPF]"}}


def _course(b: PatientBuilder, kg: float) -> tuple[list[datetime], int]:
    start_day, last_day = -b.randint(50, 70), b.randint(-6, -2)
    times = depression_course(b, start_day=start_day, last_day=last_day, kg=kg)
    return times, max(1, last_day + b.randint(6, 8))


@scenario("ua-component-panel-heavy-hematuria")
def ua_component_panel(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    times, draft_day = _course(b, kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    at = b.day(-b.randint(1, 3), 10)
    b.add({
        "resourceType": "Observation", "id": b.rid("Observation"), "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
        "code": _loinc("24356-8", "Urinalysis complete panel - Urine"), "subject": b.subject(),
        "effectiveDateTime": iso(at), "issued": iso(at + timedelta(hours=2)),
        "component": [
            {"code": _loinc("5794-3", "Hemoglobin [Presence] in Urine by Test strip"),
             "valueCodeableConcept": {"coding": [RESULTS["blood-3+"]]}},
            {"code": _loinc("5799-2", "Leukocyte esterase [Presence] in Urine by Test strip"),
             "valueString": "negative"},
            {"code": _loinc("5802-4", "Nitrite [Presence] in Urine by Test strip"), "valueString": "negative"},
            {"code": _loinc("13945-1", "Erythrocytes [#/area] in Urine sediment by Microscopy high power field"),
             **_hpf(b.randint(40, 100)), "referenceRange": [{"high": {"value": 2, "unit": "/HPF",
                                                                       "system": UCUM, "code": "/[HPF]"}}]},
            {"code": _loinc("5821-4", "Leukocytes [#/area] in Urine sediment by Microscopy high power field"),
             **_hpf(b.randint(0, 3))},
        ],
    })
    b.culture(at)
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; the latest urinalysis arrives as ONE complete-urinalysis Observation (24356-8) whose "
        "dipstick blood 3+ and 40-100 RBC/HPF are components, with a sterile culture: KB-02 critical (> 25 "
        "RBC/HPF) on every hook, exactly as the same results sent separately.",
        patient_view=("KB-02",), orders=("KB-02",),
    )


@scenario("ua-range-valued-microscopy")
def ua_range_microscopy(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    times, draft_day = _course(b, kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    at = b.day(-b.randint(1, 3), 10)
    low = b.randint(5, 10)
    b.add({"resourceType": "Observation", "id": b.rid("Observation"), "status": "final",
           "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
           "code": _loinc("13945-1", "Erythrocytes [#/area] in Urine sediment by Microscopy high power field"),
           "subject": b.subject(), "effectiveDateTime": iso(at), "valueString": f"{low}-{low + 10} RBC/HPF"})
    b.add({"resourceType": "Observation", "id": b.rid("Observation"), "status": "final",
           "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
           "code": _loinc("5821-4", "Leukocytes [#/area] in Urine sediment by Microscopy high power field"),
           "subject": b.subject(), "effectiveDateTime": iso(at),
           "valueRange": {"low": {"value": 0, "unit": "cells/HPF"}, "high": {"value": 2, "unit": "cells/HPF"}}})
    b.culture(at)
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; microscopy written as text ranges with lab units ('5-15 RBC/HPF' to '10-20 RBC/HPF', "
        "WBC as a valueRange 0-2 cells/HPF), sterile culture: the whole red-cell range is ≥ 3 and ≤ 25, so KB-02 "
        "warning (microhaematuria, not heavy) on every hook.",
        patient_view=("KB-02",), orders=("KB-02",),
    )


@scenario("resolved-childhood-hematuria-recorded-in-course")
def resolved_childhood_hematuria(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    times, draft_day = _course(b, kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    negative_ua(b, b.day(-b.randint(2, 10), 10))
    recorded = b.day(-b.randint(5, 20), 11)
    b.add({"resourceType": "Condition", "id": b.rid("Condition"),
           "clinicalStatus": {"coding": [{"system": COND_CLINICAL, "code": "resolved"}]},
           "code": CONDITIONS["gross-hematuria"], "subject": b.subject(),
           "onsetString": b.choice(("in childhood", "age 6, after a fall", "as a child")),
           "recordedDate": iso(recorded), "note": [{"text": "Past history taken at the ketamine clinic."}]})
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance with negative urinalyses; a visible haematuria from childhood (resolved, onset only "
        "as text) was typed into the problem list during the course: it is history, not a finding of the "
        "course — nothing fires (it once gave a critical KB-02).",
    )


@scenario("infusion-dose-on-the-order")
def infusion_dose_on_order(b: PatientBuilder) -> Outcome:
    kg = _pain_patient(b)
    rate = b.randint(40, 50)
    order = b.add(b.request("ketamine-50", status="completed", authored=b.day(-30, 8),
                            text=f"Ketamine {rate} mg/h IV for 8 hours per session", route="intravenous",
                            rate=qty(rate, "mg/h"), reason="chronic-pain"))
    days = [-25, -21, -17, -13, -9, -5, -2]
    times = [b.day(d, b.clinic_hour(7, 9)) for d in days]
    weights_along(b, times, kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    negative_ua(b, b.day(-b.randint(3, 12), 10))
    for start in times:
        b.add({"resourceType": "MedicationAdministration", "id": b.rid("MedicationAdministration"),
               "status": "completed", "medicationCodeableConcept": MEDICATIONS["ketamine-50"],
               "subject": b.subject(), "effectivePeriod": {"start": iso(start), "end": iso(start + timedelta(hours=8))},
               "request": {"reference": f"MedicationRequest/{order['id']}"},
               "dosage": {"route": {"text": "intravenous"}}})  # the route only: dose and rate are on the order
    b.draft("ketamine-50", b.day(b.randint(1, 3), 8), text=f"Ketamine {rate} mg/h IV for 8 hours",
            route="intravenous", rate=qty(rate, "mg/h"), duration_h=8, reason="chronic-pain")
    return Outcome(
        "Chronic pain: seven 8-hour infusions in 4 weeks whose administrations record only start and end and "
        "reference the order; the rate (40-50 mg/h) is only on the order: 2240-2800 mg in 28 days, so KB-04 "
        "warning (≥ 2000 mg) on the order hooks, the dose marked 'dose from the order'.",
        orders=("KB-04",),
    )


@scenario("culture-report-sterile-pyuria")
def culture_report_sterile_pyuria(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    times, draft_day = _course(b, kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    at = b.day(-b.randint(3, 8), 10)
    b.urinalysis(at, le=b.choice(("1+", "str:1+")), rbc=b.randint(0, 2), wbc=b.randint(8, 30))
    reported = at + timedelta(hours=b.randint(24, 48))
    b.add({"resourceType": "DiagnosticReport", "id": b.rid("DiagnosticReport"), "status": "final",
           "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "MB"}]}],
           "code": _loinc("630-4", "Bacteria identified in Urine by Culture"), "subject": b.subject(),
           "effectiveDateTime": iso(at), "issued": iso(reported), "conclusion": "No growth after 48 hours.",
           "conclusionCode": [{"coding": [RESULTS["no-growth"]]}]})
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; leukocyte esterase positive and 8-30 WBC/HPF; the urine culture arrives only as a "
        "DiagnosticReport (630-4) concluding 'No growth' (SNOMED 264868006): KB-03 warning on every hook.",
        patient_view=("KB-03",), orders=("KB-03",),
    )


@scenario("ultrasound-report-hydronephrosis")
def ultrasound_report_hydronephrosis(b: PatientBuilder) -> Outcome:
    _, kg = _adult(b)
    _depression(b)
    times, draft_day = _course(b, kg)
    negative_ua(b, times[0] - timedelta(days=b.randint(5, 20)))
    negative_ua(b, b.day(-b.randint(3, 12), 10))
    at = b.day(-b.randint(1, 5), 14)
    b.add({"resourceType": "DiagnosticReport", "id": b.rid("DiagnosticReport"), "status": "final",
           "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
           "code": _loinc("38036-0", "US Kidney"), "subject": b.subject(), "effectiveDateTime": iso(at),
           "conclusion": "Moderate bilateral hydronephrosis. Small, thick-walled bladder.",
           "conclusionCode": [{"coding": [{"system": SNOMED, "code": "43064006", "display": "Hydronephrosis"}]}]})
    depression_draft(b, draft_day, 0.5)
    return Outcome(
        "Weekly maintenance; a kidney ultrasound report (DiagnosticReport 38036-0) concludes hydronephrosis "
        "(conclusionCode SNOMED 43064006), no Condition recorded: KB-11 critical on every hook.",
        patient_view=("KB-11",), orders=("KB-11",),
    )
