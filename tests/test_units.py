"""UCUM conversions (clinical.md §4.4): mass, weight-based and rate doses, volumes, creatinine."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds_service.clinical.units import (
    UCUM_SYSTEM,
    UnitError,
    convert,
    convertible,
    factor,
    is_ucum,
    normalize_unit,
    quantity_unit,
)
from cds_service.engine.loader import load_ruleset

RULES = Path(__file__).resolve().parent.parent / "rules"

CREATININE_MOLAR_MASS = 113.12  # g/mol


@pytest.mark.parametrize(
    ("value", "unit", "mg"),
    [
        (35, "mg", 35.0),
        (0.035, "g", 35.0),
        (35_000, "ug", 35.0),
        (35_000, "mcg", 35.0),  # EHR alias for ug
        (35_000, "µg", 35.0),
    ],
)
def test_mass_doses_convert_to_mg(value: float, unit: str, mg: float) -> None:
    assert convert(value, unit, "mg") == pytest.approx(mg)


def test_mcg_alias_is_rewritten_inside_compound_units() -> None:
    assert normalize_unit("mcg") == "ug"
    assert normalize_unit("mcg/kg/min") == "ug/kg/min"
    assert normalize_unit("mg/hr") == "mg/h"
    # UCUM codes pass through unchanged
    assert normalize_unit("mg/kg/h") == "mg/kg/h"
    assert normalize_unit("/[HPF]") == "/[HPF]"


def test_weight_based_dose_units() -> None:
    assert convert(0.5, "mg/kg", "mg/kg") == 0.5
    assert convert(500, "ug/kg", "mg/kg") == pytest.approx(0.5)
    assert convertible("mg/kg", "mg") is False  # needs a body weight, never silently mg


def test_ug_per_kg_per_min_to_mg_per_kg_per_h() -> None:
    # 1 ug/kg/min = 60 ug/kg/h = 0.06 mg/kg/h
    assert convert(1, "ug/kg/min", "mg/kg/h") == pytest.approx(0.06)
    assert convert(5, "mcg/kg/min", "mg/kg/h") == pytest.approx(0.3)


def test_rate_units() -> None:
    assert convert(1, "mg/min", "mg/h") == pytest.approx(60)
    assert convert(52.5, "mL/h", "mL/min") == pytest.approx(0.875)
    assert convert(1, "L/h", "mL/h") == pytest.approx(1000)


def test_creatinine_mg_per_dl_to_umol_per_l_with_molar_mass() -> None:
    # clinical.md §4.4: umol/L = mg/dL × 88.4
    assert convert(1, "mg/dL", "umol/L", molar_mass=CREATININE_MOLAR_MASS) == pytest.approx(88.4, abs=0.01)
    assert convert(1.13, "mg/dL", "umol/L", molar_mass=CREATININE_MOLAR_MASS) == pytest.approx(99.9, abs=0.1)


def test_creatinine_umol_per_l_to_mg_per_dl_with_molar_mass() -> None:
    assert convert(100, "umol/L", "mg/dL", molar_mass=CREATININE_MOLAR_MASS) == pytest.approx(1.1312, abs=1e-4)
    round_trip = convert(
        convert(0.9, "mg/dL", "umol/L", molar_mass=CREATININE_MOLAR_MASS),
        "umol/L",
        "mg/dL",
        molar_mass=CREATININE_MOLAR_MASS,
    )
    assert round_trip == pytest.approx(0.9)


def test_mass_to_substance_needs_a_molar_mass() -> None:
    with pytest.raises(UnitError, match="cannot convert 'mg/dL' to 'umol/L'"):
        convert(1, "mg/dL", "umol/L")


@pytest.mark.parametrize(
    ("source", "target"),
    [("mg", "mL"), ("mg", "kg/h"), ("mg/h", "mg"), ("mL/h", "mg/h"), ("/[HPF]", "mg/dL")],
)
def test_incompatible_units_raise_unit_error(source: str, target: str) -> None:
    with pytest.raises(UnitError, match="cannot convert"):
        factor(source, target)
    assert convertible(source, target) is False


def test_molar_mass_does_not_bridge_unrelated_dimensions() -> None:
    with pytest.raises(UnitError):
        convert(1, "mg", "umol/L", molar_mass=CREATININE_MOLAR_MASS)


@pytest.mark.parametrize("unit", ["mg", "mg/kg/h", "ug/kg/min", "mL/h", "/[HPF]", "mL/min/{1.73_m2}", "{score}", "U/L"])
def test_ucum_units_are_recognised(unit: str) -> None:
    assert is_ucum(unit)


@pytest.mark.parametrize("unit", ["furlongs", "mgs", "per hpf field", "3 drops"])
def test_non_ucum_units_are_detected(unit: str) -> None:
    assert not is_ucum(unit)
    with pytest.raises(UnitError, match="not a UCUM unit"):
        factor(unit, "mg")


def test_aliases_are_ucum_for_data_but_not_in_strict_mode() -> None:
    assert is_ucum("mcg")
    assert not is_ucum("mcg", strict=True)  # rule files must write UCUM
    assert is_ucum("ug", strict=True)


def test_quantity_unit_prefers_the_ucum_code_over_the_display_unit() -> None:
    assert quantity_unit({"value": 1, "unit": "milligram", "system": UCUM_SYSTEM, "code": "mg"}) == "mg"
    assert quantity_unit({"value": 1, "unit": "mcg"}) == "mcg"  # free text when not coded
    assert quantity_unit({"value": 1, "unit": "vial", "system": "http://example.org", "code": "V"}) == "vial"
    assert quantity_unit({"value": 1}) is None


@pytest.mark.parametrize("written", ["mL/min/1.73m2", "mL/min/1.73 m2", "ml/min/1.73m^2", "mL/min/{1.73_m2}"])
def test_egfr_units_as_labs_write_them(written: str) -> None:
    aliases = load_ruleset([RULES]).ruleset.unit_aliases  # type: ignore[union-attr]
    unit = aliases.resolve(written, "mL/min/{1.73_m2}")
    assert convert(45, unit, "mL/min/{1.73_m2}") == pytest.approx(45)  # type: ignore[arg-type]


def test_egfr_spellings_are_not_guessed_outside_their_kind() -> None:
    with pytest.raises(UnitError):
        convert(45, "mL/min/1.73m2", "mL/min/{1.73_m2}")  # only the unit-alias table reads it, per kind
