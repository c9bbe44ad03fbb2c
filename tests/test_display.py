"""The one display filter: numbers, units, durations and exposure as clinicians write them (issue 11 C12)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from rulekit import NOW, PATIENT_ID, RULES

from cds_service.clinical.record import PatientRecord
from cds_service.engine.cards import build_cards
from cds_service.engine.display import (
    display,
    exposure_phrase,
    human_duration,
    human_number,
    human_quantity,
    human_text,
    human_unit,
)
from cds_service.engine.evaluate import evaluate
from cds_service.engine.loader import load_ruleset
from cds_service.engine.model import Ordinal, Quantity
from cds_service.engine.shorthand import Expander

MACHINE = re.compile(
    r"(?<![\w.])\d(?:\.\d+)?e[+-]?\d+|(?<![\w.])\d+\.\d{3,}(?![\w.])|\[HPF\]|umol/L|\{score\}|\{1\.73_m2\}")


@pytest.mark.parametrize(
    ("value", "shown"),
    [(59.925, "59.9"), (0.12345, "0.123"), (3.0, "3"), (112.4, "112"), (1029000.0, "1,029,000"), (0.0, "0"),
     (-2.5, "-2.5"), (1e-7, "0"), (99.96, "100"), (12.5, "12.5")],
)
def test_numbers_are_rounded_for_humans(value: float, shown: str) -> None:
    assert human_number(value) == shown
    assert "e" not in human_number(value).lower()


@pytest.mark.parametrize(
    ("unit", "shown"),
    [("/[HPF]", "/HPF"), ("umol/L", "µmol/L"), ("{episodes}", "episodes"), ("{score}", ""),
     ("mL/min/{1.73_m2}", "mL/min/1.73 m²"), ("mg", "mg"), ("{CFU}/mL", "CFU/mL"),
     ("{voided_volumes}", "voided volumes"),
     (None, "")],
)
def test_units_are_written_as_people_write_them(unit: str | None, shown: str) -> None:
    assert human_unit(unit) == shown


def test_quantities_read_as_doses_and_counts() -> None:
    assert human_quantity(59.925, "mg") == "60 mg"
    assert human_quantity(1_029_000, "mg") == "1,029 g"
    assert human_quantity(0.5, "mg") == "0.5 mg"
    assert human_quantity(3, "/[HPF]") == "3/HPF"
    assert human_quantity(4, "{episodes}") == "4 episodes"
    assert human_quantity(8, "{score}") == "8"
    assert display(Quantity(100.0, "umol/L")) == "100 µmol/L"
    assert display(Ordinal(0.5)) == "trace"


def test_engine_text_is_cleaned_wherever_it_came_from() -> None:
    assert human_text("1.029e+06 mg") == "1,029 g"
    assert human_text("35 mg × 1.713e+03 doses") == "35 mg × 1,713 doses"
    assert human_text("rise 35.123456 umol/L") == "rise 35.1 µmol/L"
    assert human_text("≥ 3 /[HPF]") == "≥ 3/HPF"
    assert human_text("IPSS of 8 {score}") == "IPSS of 8"
    assert human_text("59.925 mg in 2 session(s)") == "60 mg in 2 session(s)"
    # Versions, dates and mg/kg doses are left alone.
    assert human_text("v1.2.0 on 2026-01-01: 0.5 mg/kg") == "v1.2.0 on 2026-01-01: 0.5 mg/kg"


def test_durations_read_as_spoken() -> None:
    assert human_duration(40 * 60) == "40 min"
    assert human_duration(36 * 3600) == "36 h"
    assert human_duration(14 * 86400) == "14 days"
    assert human_duration(1 * 86400 * 200) == "6.6 months"
    assert human_duration(1029 * 86400) == "2.8 years"
    assert display(timedelta(days=90)) == "90 days"


def test_exposure_phrases_fit_the_data() -> None:
    assert exposure_phrase("ketamine", sessions=4, span_days=23) == "4 ketamine sessions in 23 days"
    assert exposure_phrase("esketamine", sessions=1, span_days=1) == "1 esketamine session"
    assert (exposure_phrase("ketamine", sessions=0, span_days=0, statements=[(1029, 1000.0, True)])
            == "daily ketamine use for 2.8 years, about 1 g a day")
    assert (exposure_phrase("ketamine", sessions=0, span_days=0, statements=[(400, 300.0, False)])
            == "ketamine use for 13 months, about 300 mg a day")
    assert (exposure_phrase("ketamine", sessions=2, span_days=7, statements=[(60, None, True)])
            == "2 ketamine sessions in 7 days and daily ketamine use for 60 days")


def chronic_daily_user() -> list[dict]:
    """1 g a day of street ketamine for 1029 days (a patient-reported statement) and blood on a dipstick."""
    expander = Expander(NOW, PATIENT_ID)
    start = (NOW - timedelta(days=1029)).isoformat()
    statement = {
        "resourceType": "MedicationStatement", "id": "use1", "status": "active",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "medicationCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "781954001"}]},
        "effectivePeriod": {"start": start},
        "dosage": [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                    "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "g", "system": "http://unitsofmeasure.org",
                                                      "code": "g"}}]}],
    }
    return [
        expander.patient({"gender": "male", "age": 27}),
        statement,
        expander.expand({"Observation": {"code": "LOINC#5794-3", "value": "2+", "at": "-3d"}}),
    ]


def test_chronic_daily_use_reads_as_daily_use_not_as_one_session() -> None:
    """The review's example: "after 1 ketamine session in 1029 days" with 1.029e+06 mg in the table."""
    rules = load_ruleset([RULES]).ruleset
    assert rules is not None
    evaluation = evaluate(rules, PatientRecord(chronic_daily_user(), ordinal_codes=rules.ordinal_codes),
                          hook="patient-view", now=NOW)
    cards = build_cards(evaluation, patient_id=PATIENT_ID)
    assert cards, "a chronic daily user with blood in urine gets a card"
    text = " ".join(c["summary"] + "\n" + c.get("detail", "") for c in cards)
    assert "daily ketamine use for 2.8 years, about 1 g a day" in text
    assert "1 ketamine session" not in text
    words = re.sub(r"\]\(https?://[^)]*\)", "]", text)  # reference links may hold DOIs like 10.1097
    assert not MACHINE.search(words), MACHINE.search(words)
