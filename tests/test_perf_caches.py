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


# ---------------------------------------------------------------- per-resource facts across calls


def _rbc(value: float) -> dict:
    return {"resourceType": "Observation", "id": "rbc", "status": "final", "effectiveDateTime": "2026-01-02",
            "code": {"coding": [{"system": "http://loinc.org", "code": "5794-3"}]},
            "valueQuantity": {"value": value, "unit": "/[HPF]"}}


_RBC_SET = ValueSet("rbc", "RBC", {("http://loinc.org", "5794-3"): Concept("http://loinc.org", "5794-3", "RBC")})


def test_facts_are_read_once_across_calls_and_never_for_changed_content() -> None:
    from cds_service.clinical.facts import FactsCache

    cache = FactsCache()
    parse.clear_cache()

    def value_in_a_new_call(resource: dict) -> float | None:
        valid, _ = parse.parse_resources([resource])  # as every call does: checked resources carry a digest
        found = PatientRecord(valid, facts_cache=cache).findings(_RBC_SET, ("Observation",))
        return found[0].value.quantity if found and found[0].value else None

    assert value_in_a_new_call(_rbc(2)) == 2 and len(cache) == 1
    assert value_in_a_new_call(_rbc(2)) == 2 and len(cache) == 1  # the same content: looked up, not re-read
    assert value_in_a_new_call(_rbc(50)) == 50 and len(cache) == 2  # same id, new value: new facts
    # a resource without a digest (not checked by this call) is read as before and not cached
    assert PatientRecord([_rbc(7)], facts_cache=cache).findings(_RBC_SET, ("Observation",))[0].value.quantity == 7
    assert len(cache) == 2


def test_facts_depend_on_the_birth_date_too() -> None:
    """An onset given as an age is a time only with the patient's birth date: part of the key."""
    from cds_service.clinical.facts import FactsCache

    cache = FactsCache()
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p"},
                 "code": {"coding": [{"system": "http://loinc.org", "code": "5794-3"}]},
                 "onsetAge": {"value": 40, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}}
    onsets = []
    for born in ("1970-01-01", "1980-01-01"):
        patient = {"resourceType": "Patient", "id": "p", "birthDate": born}
        valid, problems = parse.parse_resources([patient, condition])
        assert not problems
        found = PatientRecord(valid, facts_cache=cache).findings(_RBC_SET, ("Condition",))
        onsets.append(found[0].time.year if found and found[0].time else None)
    assert onsets == [2010, 2020]


def test_the_facts_cache_travels_empty() -> None:
    import copy
    import pickle

    from cds_service.clinical.facts import FactsCache

    cache = FactsCache(size=5)
    cache.put(("k",), ("facts",))
    for clone in (pickle.loads(pickle.dumps(cache)), copy.deepcopy(cache)):
        assert clone.size == 5 and len(clone) == 0


def test_key_order_is_only_a_cache_miss_never_another_answer() -> None:
    """The digest is of the JSON as given (no key sort): the same resource in another key order is digested
    apart, validated again, and gets the same outcome; a bad one stays bad in any order."""
    parse.clear_cache()
    reordered_good = dict(reversed(list(GOOD.items())))
    reordered_bad = dict(reversed(list(BAD.items())))
    assert parse._digest(reordered_good) != parse._digest(GOOD)
    assert parse.check_resource(GOOD) is None and parse.check_resource(reordered_good) is None
    assert parse.check_resource(BAD) == parse.check_resource(reordered_bad) is not None
