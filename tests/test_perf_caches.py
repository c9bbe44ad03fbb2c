"""The caches added for speed (docs/performance.md) give the same answers as the uncached code."""

from __future__ import annotations

from datetime import date

import pytest

from cds_service.clinical.record import PatientRecord
from cds_service.clinical.units import UnitError, convertible, factor
from cds_service.clinical.valueset import Concept, ValueSet
from cds_service.fhir import parse

GOOD = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}}
BAD = {"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "x"},
       "effectiveDateTime": "yesterday"}


def test_parse_outcomes_are_the_same_cached_and_uncached() -> None:
    parse.clear_cache()
    first = [parse.check_resource(r) for r in (GOOD, BAD)]
    again = [parse.check_resource(r) for r in (GOOD, BAD)]
    assert first == again
    assert first[0] is None and first[1] is not None and first[1].resource_id == "o2"
    # a changed value is a different resource: never the cached outcome of the old one
    assert parse.check_resource({**GOOD, "effectiveDateTime": "yesterday"}) is not None
    assert parse.check_resource({**BAD, "effectiveDateTime": "2026-01-02"}) is None


def test_parse_cache_is_bypassed_for_what_json_cannot_hold() -> None:
    parse.clear_cache()
    odd = {**GOOD, "effectiveDateTime": date(2026, 1, 2)}  # a YAML date, not a JSON string
    assert parse._digest(odd) is None
    assert parse._digest({**GOOD, "valueQuantity": {"value": float("nan")}}) is None
    assert parse.check_resource(odd) == parse._check(odd)


def test_failed_unit_conversions_are_cached_and_still_raise() -> None:
    for _ in range(2):
        assert not convertible("mg/kg", "mg")
        with pytest.raises(UnitError, match="cannot convert"):
            factor("mg/kg", "mg")
    assert factor("g", "mg") == 1000.0


def test_code_index_finds_what_a_full_scan_finds() -> None:
    vs = ValueSet("blood", "Blood", {("http://loinc.org", "5794-3"): Concept("http://loinc.org", "5794-3", "Hgb")})
    resources = [
        {"resourceType": "Observation", "id": "a", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "5794-3"}]}, "effectiveDateTime": "2026-01-02"},
        {"resourceType": "Observation", "id": "b", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "0000-0"}]}, "effectiveDateTime": "2026-01-01"},
        {"resourceType": "Observation", "id": "c", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "1-1"},
                             {"system": "http://loinc.org", "code": "5794-3"}]}, "effectiveDateTime": "2026-01-01"},
    ]
    found = PatientRecord(resources).findings(vs, ("Observation",))
    assert [f.ref for f in found] == ["Observation/c", "Observation/a"]
