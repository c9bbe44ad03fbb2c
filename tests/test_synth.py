"""The deterministic synthetic cohort (cds_service.synth): determinism, validity, manifest, key facts, overlay."""

from __future__ import annotations

import gzip
import json
import random
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cds_service.cdshooks.hooks import HOOKS as HOOK_TABLE
from cds_service.fhir.parse import bundle_resources, check_resource
from cds_service.synth import DEFAULT_NOW, Cohort, SyntheticPatient, generate_cohort, main_synth, write_cohort
from cds_service.synth.codes import ALL_RULES, MEDICATIONS, PATIENT_VIEW_RULES, RACEMIC_KEYS

SEED = 20260601
HOOKS = tuple(HOOK_TABLE)  # the manifest has an expectation for every hook we answer
UCUM = "http://unitsofmeasure.org"
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
BACKGROUNDS = Path(__file__).resolve().parent / "data" / "synthetic-fhir-r4"
SMALL_BACKGROUND = "Crystle_Aufderhar_b42c4d81.json.gz"  # 462 entries; the smallest of the five
DISTRACTORS = (
    "uti-positive-culture-unexposed", "uti-positive-culture-exposed", "bph-man-no-ketamine",
    "anaesthesia-ketamine-ten-years-ago", "remote-course-over-a-year", "entered-in-error-administration",
    "lft-mild-distractor", "hematuria-before-course", "hematuria-after-follow-up-window",
    "depression-unparseable-dose", "depression-induction-complete", "depression-new-course-with-baseline-ua",
    "depression-maintenance-monthly",
)
RACEMIC_CODES = {c["code"] for k in RACEMIC_KEYS for c in MEDICATIONS[k].get("coding", [])}


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return generate_cohort(SEED)


def by_scenario(cohort: Cohort, name: str) -> SyntheticPatient:
    return next(p for p in cohort.patients if p.scenario == name)


def resources(patient: SyntheticPatient, rtype: str | None = None) -> list[dict[str, Any]]:
    found = bundle_resources(patient.bundle)
    return [r for r in found if rtype is None or r["resourceType"] == rtype]


def observations(patient: SyntheticPatient, code: str) -> list[dict[str, Any]]:
    return [r for r in resources(patient, "Observation") if any(c["code"] == code for c in r["code"]["coding"])]


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def session_bounds(resource: dict[str, Any]) -> tuple[datetime, datetime]:
    if "effectivePeriod" in resource:
        return when(resource["effectivePeriod"]["start"]), when(resource["effectivePeriod"]["end"])
    return when(resource["effectiveDateTime"]), when(resource["effectiveDateTime"])


def draft_bounds(draft: dict[str, Any]) -> tuple[datetime, datetime]:
    repeat = draft["dosageInstruction"][0]["timing"]["repeat"]
    start = when(repeat["boundsPeriod"]["start"])
    return start, start + timedelta(hours=repeat.get("duration", 0))


def is_ketamine(resource: dict[str, Any], patient: SyntheticPatient) -> bool:
    concept = resource.get("medicationCodeableConcept")
    if concept is None:
        ref = resource["medicationReference"]["reference"]
        med = (resource.get("contained") or [None])[0] if ref.startswith("#") else next(
            r for r in resources(patient, "Medication") if f"Medication/{r['id']}" == ref)
        concept = med["code"]
    text = json.dumps(concept).lower()
    return "ketamine" in text or "spravato" in text


def all_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------- size, ids, expectations


def test_cohort_has_at_least_40_distinct_patients(cohort: Cohort) -> None:
    assert len(cohort.patients) >= 40
    assert len({p.id for p in cohort.patients}) == len(cohort.patients)
    assert len({p.scenario for p in cohort.patients}) == len(cohort.patients)
    assert cohort.now == DEFAULT_NOW == datetime(2026, 6, 1, 9, tzinfo=UTC)


def test_expectations_are_well_formed(cohort: Cohort) -> None:
    for p in cohort.patients:
        assert tuple(p.expected) == HOOKS, p.id
        assert set(p.expected["patient-view"]) <= PATIENT_VIEW_RULES, p.id
        assert p.expected["order-select"] == p.expected["order-sign"], p.id
        for rules in p.expected.values():
            assert set(rules) <= ALL_RULES and rules == sorted(set(rules)), p.id
        if not p.draft_orders:
            assert p.expected["order-select"] == [], p.id
        assert p.expected["encounter-start"] == p.expected["patient-view"], p.id  # the same record review
        if not p.appointments:
            assert p.expected["appointment-book"] == [], p.id
        assert p.description and len(p.description) > 40, p.id
    for name in DISTRACTORS:
        assert by_scenario(cohort, name).expected == {hook: [] for hook in HOOKS}, name


def test_the_cohort_books_at_least_one_session_as_an_appointment(cohort: Cohort) -> None:
    booked = [p for p in cohort.patients if p.appointments]
    assert booked and any(p.expected["appointment-book"] for p in booked)
    for p in booked:
        appointments = [r for r in p.appointments if r["resourceType"] == "Appointment"]
        assert appointments and all(a["status"] == "proposed" for a in appointments), p.id
        linked = {ref["reference"] for a in appointments for ref in a["supportingInformation"]}
        assert linked <= {f"MedicationRequest/{r['id']}" for r in p.appointments if r["resourceType"] != "Appointment"}


def test_every_rule_is_exercised(cohort: Cohort) -> None:
    fired = {rule for p in cohort.patients for rules in p.expected.values() for rule in rules}
    assert fired == ALL_RULES


def test_ids_are_stable_unique_and_prefixed(cohort: Cohort) -> None:
    seen: set[tuple[str, str]] = set()
    for p in cohort.patients:
        first = resources(p)[0]
        assert (first["resourceType"], first["id"]) == ("Patient", p.id)
        for r in [*resources(p), *p.draft_orders]:
            assert FHIR_ID.match(r["id"]), r["id"]
            assert r["id"] == p.id or r["id"].startswith(f"{p.id}-"), r["id"]
            key = (r["resourceType"], r["id"])
            assert key not in seen, key
            seen.add(key)


# ---------------------------------------------------------------- FHIR validity and shape


def test_every_resource_is_valid_fhir_r4(cohort: Cohort) -> None:
    from cds_service.synth import drafts_bundle

    problems = []
    for p in cohort.patients:
        for r in [*resources(p), *p.draft_orders, p.bundle]:
            problem = check_resource(r)
            if problem:
                problems.append(f"{p.id}: {problem}")
        if p.draft_orders and (problem := check_resource(drafts_bundle(p))):
            problems.append(f"{p.id} drafts: {problem}")
    assert problems == []


def test_bundles_are_put_transactions_with_resolvable_references(cohort: Cohort) -> None:
    for p in cohort.patients:
        assert p.bundle["type"] == "transaction"
        present = set()
        for entry in p.bundle["entry"]:
            r = entry["resource"]
            assert entry["request"] == {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
            present.add(f"{r['resourceType']}/{r['id']}")
        for r in [*resources(p), *p.draft_orders]:
            for ref in re.findall(r'"reference": "([^"]+)"', json.dumps(r)):
                if ref.startswith("#"):
                    assert any(c["id"] == ref[1:] for c in r.get("contained", [])), ref
                else:
                    assert ref in present, f"{p.id}: {ref} does not resolve"
            if "subject" in r:
                assert r["subject"] == {"reference": f"Patient/{p.id}"}
        for draft in p.draft_orders:
            assert draft["resourceType"] == "MedicationRequest"
            assert (draft["status"], draft["intent"]) == ("draft", "order")
            assert draft_bounds(draft)[0] > cohort.now, f"{p.id}: a draft is planned in the past"


@pytest.mark.parametrize("now", [DEFAULT_NOW, datetime(2027, 1, 15, 23, 50, tzinfo=UTC)])
def test_nothing_in_the_record_happens_after_now(now: datetime) -> None:
    keys = ("effectiveDateTime", "onsetDateTime", "recordedDate", "issued", "abatementDateTime", "authoredOn",
            "dateAsserted")
    for p in generate_cohort(SEED, now).patients:
        for r in resources(p):
            times = [r[k] for k in keys if k in r]
            if r["resourceType"] in ("MedicationAdministration", "Observation"):
                times += list(r.get("effectivePeriod", {}).values())
            for t in times:
                assert when(t) <= now, f"{p.id} {r['resourceType']}/{r['id']} at {t} is after now"


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    random.seed(1)
    write_cohort(generate_cohort(SEED), tmp_path / "a")
    random.seed(99)  # the global RNG must play no part
    random.random()
    write_cohort(generate_cohort(SEED), tmp_path / "b")
    a, b = all_files(tmp_path / "a"), all_files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[name] == b[name] for name in a)


def test_different_seed_changes_doses_not_scenarios(cohort: Cohort) -> None:
    other = generate_cohort(SEED + 1)
    assert [(p.id, p.scenario, p.expected) for p in cohort.patients] == [
        (p.id, p.scenario, p.expected) for p in other.patients
    ]

    def doses(c: Cohort) -> list[Any]:
        return [json.dumps(r.get("dosage")) for p in c.patients for r in resources(p, "MedicationAdministration")]

    assert doses(cohort) != doses(other)
    assert sum(a.bundle != b.bundle for a, b in zip(cohort.patients, other.patients, strict=True)) >= 40


def test_scenario_rngs_are_independent() -> None:
    """Each scenario has its own RNG stream: generating again (or another seed) never shifts a neighbour."""
    a, b = generate_cohort(5), generate_cohort(5)
    assert [p.bundle for p in a.patients] == [p.bundle for p in b.patients]


# ---------------------------------------------------------------- manifest and files


def test_manifest_matches_the_files(tmp_path: Path, cohort: Cohort) -> None:
    written = write_cohort(cohort, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest == written
    assert manifest["seed"] == SEED and manifest["now"] == "2026-06-01T09:00:00Z"
    listed = {"manifest.json"}
    assert [e["id"] for e in manifest["patients"]] == [p.id for p in cohort.patients]
    for entry, patient in zip(manifest["patients"], cohort.patients, strict=True):
        assert entry["scenario"] == patient.scenario and entry["expected"] == patient.expected
        assert entry["description"] == patient.description
        bundle = json.loads((tmp_path / entry["files"]["bundle"]).read_text())
        assert bundle == patient.bundle and bundle["entry"][0]["resource"]["id"] == entry["id"]
        listed.add(entry["files"]["bundle"])
        if patient.draft_orders:
            drafts = json.loads((tmp_path / entry["files"]["drafts"]).read_text())
            assert drafts["type"] == "collection"
            assert [e["resource"] for e in drafts["entry"]] == patient.draft_orders
            listed.add(entry["files"]["drafts"])
        else:
            assert entry["files"]["drafts"] is None
        if patient.appointments:
            booked = json.loads((tmp_path / entry["files"]["appointments"]).read_text())
            assert [e["resource"] for e in booked["entry"]] == patient.appointments
            listed.add(entry["files"]["appointments"])
        else:
            assert entry["files"]["appointments"] is None
    assert {p.name for p in tmp_path.iterdir()} == listed


def test_main_synth_writes_the_cohort(tmp_path: Path) -> None:
    data = main_synth(7, tmp_path / "out", "2026-07-01T08:00:00Z", None)
    assert data["seed"] == 7 and data["now"] == "2026-07-01T08:00:00Z"
    assert (tmp_path / "out" / "manifest.json").exists()
    assert len(list((tmp_path / "out").glob("kb*.json"))) >= 40


# ---------------------------------------------------------------- key facts of the scenarios


def test_induction_has_six_half_mg_per_kg_sessions_and_a_weight(cohort: Cohort) -> None:
    p = by_scenario(cohort, "depression-induction-complete")
    admins = resources(p, "MedicationAdministration")
    assert len(admins) == 6
    for a in admins:
        assert a["dosage"]["dose"] == {"value": 0.5, "unit": "mg/kg", "system": UCUM, "code": "mg/kg"}
        assert a["dosage"]["route"]["text"] == "intravenous"
        start, end = session_bounds(a)
        assert end - start == timedelta(minutes=40)
    starts = sorted(session_bounds(a)[0] for a in admins)
    assert timedelta(days=11) <= starts[-1] - starts[0] <= timedelta(days=20)
    assert all(starts[i + 3] - starts[i] > timedelta(days=7) for i in range(3))  # never > 3 a week
    weights = observations(p, "29463-7")
    assert weights and weights[0]["valueQuantity"]["code"] == "kg"
    assert when(weights[0]["effectiveDateTime"]) < starts[0]


def test_esketamine_patients_have_no_racemic_doses(cohort: Cohort) -> None:
    names = [p for p in cohort.patients if p.scenario.startswith("esketamine-")]
    assert len(names) >= 7
    for p in names:
        meds = [*resources(p, "MedicationAdministration"), *p.draft_orders]
        assert meds
        for r in meds:
            text = json.dumps(r)
            assert "Spravato" in text or "esketamine" in text, p.id
            assert not RACEMIC_CODES & set(re.findall(r'"code": "(\d+)"', text)), p.id
        doses = [a["dosage"]["dose"] for a in resources(p, "MedicationAdministration")]
        assert all((d["code"], d["value"]) in {("mg", 56), ("mg", 84), ("{device}", 2), ("{device}", 3)}
                   for d in doses), p.id


def test_esketamine_devices_and_label_dosing(cohort: Cohort) -> None:
    p = by_scenario(cohort, "esketamine-suicidal-84mg-devices")
    (device,) = resources(p, "Medication")
    assert device["ingredient"][0]["strength"]["denominator"]["code"] == "{device}"
    assert device["ingredient"][0]["strength"]["numerator"] == {"value": 28, "unit": "mg", "system": UCUM,
                                                                "code": "mg"}
    too_high = by_scenario(cohort, "esketamine-draft-above-84mg").draft_orders[0]
    assert too_high["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] > 84


def test_pain_infusions_use_rates_and_periods(cohort: Cohort) -> None:
    daily = resources(by_scenario(cohort, "pain-daily-infusions-next-day-draft"), "MedicationAdministration")
    assert len(daily) == 9 and all(a["dosage"]["rateQuantity"]["code"] == "mg/kg/h" for a in daily)
    assert all(session_bounds(a)[1] - session_bounds(a)[0] == timedelta(hours=4) for a in daily)

    crps = by_scenario(cohort, "crps-s-ketamine-100h-liver")
    infusions = resources(crps, "MedicationAdministration")
    assert len(infusions) == 2
    (s1, e1), (s2, e2) = sorted(session_bounds(a) for a in infusions)
    assert e1 - s1 == e2 - s2 == timedelta(hours=100) and s2 - e1 == timedelta(days=16)
    assert all(a["dosage"]["rateQuantity"]["code"] == "mg/h" and 10 <= a["dosage"]["rateQuantity"]["value"] <= 20
               for a in infusions)
    assert all("esketamine" in a["medicationCodeableConcept"]["text"].lower() for a in infusions)
    alt = observations(crps, "1742-6")[-1]
    assert alt["valueQuantity"]["value"] > 3 * alt["referenceRange"][0]["high"]["value"]

    ml = by_scenario(cohort, "pain-infusion-ml-per-hour-alp")
    (bag,) = resources(ml, "Medication")
    assert bag["ingredient"][0]["strength"]["denominator"]["code"] == "mL"
    for a in resources(ml, "MedicationAdministration"):
        assert a["dosage"]["rateQuantity"]["code"] == "mL/h"
        assert a["medicationReference"]["reference"] == f"Medication/{bag['id']}"
    assert ml.draft_orders[0]["contained"][0]["ingredient"][0]["strength"]["denominator"]["code"] == "mL"

    mcg = resources(by_scenario(cohort, "pain-ug-kg-min-hydronephrosis"), "MedicationAdministration")
    assert {(a["dosage"]["rateQuantity"]["unit"], a["dosage"]["rateQuantity"]["code"]) for a in mcg} == {
        ("mcg/kg/min", "ug/kg/min")}


def test_unit_variety_and_an_unparseable_dose(cohort: Cohort) -> None:
    units = set()
    for p in cohort.patients:
        for r in resources(p, "MedicationAdministration"):
            for key in ("dose", "rateQuantity"):
                if key in r["dosage"]:
                    units.add(r["dosage"][key].get("code", r["dosage"][key].get("unit")))
            if "rateRatio" in r["dosage"]:
                units.add("rateRatio")
    assert {"mg", "g", "mg/kg", "mg/h", "mg/kg/h", "ug/kg/min", "mL/h", "{device}", "rateRatio", "vial"} <= units
    odd = resources(by_scenario(cohort, "depression-unparseable-dose"), "MedicationAdministration")
    assert any(a["dosage"].get("dose") == {"value": 1, "unit": "vial"} for a in odd)
    assert any("dose" not in a["dosage"] and "rateQuantity" not in a["dosage"] for a in odd)


def test_statements_and_supplies(cohort: Cohort) -> None:
    (statement,) = resources(by_scenario(cohort, "palliative-sc-statement"), "MedicationStatement")
    assert statement["status"] == "active" and "end" not in statement["effectivePeriod"]
    assert statement["dosage"][0]["route"]["text"] == "subcutaneous"
    (supply,) = resources(by_scenario(cohort, "oral-ketamine-egfr-fall"), "MedicationRequest")
    assert supply["status"] == "active"
    assert supply["dosageInstruction"][0]["timing"]["repeat"]["period"] == 3
    driver = resources(by_scenario(cohort, "palliative-sc-syringe-driver"), "MedicationAdministration")
    assert len(driver) >= 35 and {a["dosage"]["dose"]["code"] for a in driver} == {"mg", "g"}


def test_urinary_renal_and_liver_findings_are_coded_as_in_clinical_md(cohort: Cohort) -> None:
    dip = observations(by_scenario(cohort, "depression-induction-dipstick-blood"), "5794-3")[-1]
    assert dip.get("valueString") or dip["valueCodeableConcept"]["coding"][0]["code"] in {"167300001", "167301002"}
    pyuria = by_scenario(cohort, "depression-sterile-pyuria")
    assert observations(pyuria, "630-4")[0]["valueCodeableConcept"]["coding"][0]["code"] == "264868006"
    assert observations(pyuria, "5821-4")[0]["valueQuantity"]["code"] == "/[HPF]"
    assert observations(pyuria, "5799-2")
    rbc = observations(by_scenario(cohort, "depression-maintenance-microhematuria"), "13945-1")[-1]
    assert rbc["valueQuantity"]["value"] >= 3 and rbc["valueQuantity"]["code"] == "/[HPF]"
    creat = observations(by_scenario(cohort, "renal-creatinine-above-100"), "14682-9")
    assert creat[-1]["valueQuantity"]["value"] > 100 >= creat[0]["valueQuantity"]["value"]
    egfr = [o["valueQuantity"]["value"] for o in observations(by_scenario(cohort, "oral-ketamine-egfr-fall"),
                                                                "98979-8")]
    assert 0.6 < egfr[-1] / egfr[0] <= 0.75
    assert observations(by_scenario(cohort, "oral-ketamine-egfr-fall"), "2160-0")[0]["valueQuantity"]["code"] == "mg/dL"
    pvr = observations(by_scenario(cohort, "voiding-pvr-raised"), "pvr")[0]
    assert pvr["code"]["coding"][0]["system"] == "https://kbladder-cds.org/fhir/CodeSystem/kbladder"
    assert pvr["valueQuantity"]["code"] == "mL" and pvr["valueQuantity"]["value"] >= 100
    assert observations(by_scenario(cohort, "voiding-small-bladder-frequency"), "voided-volume-max")
    assert len(observations(by_scenario(cohort, "ipss-rise-with-luts"), "80976-4")) == 2
    alp = observations(by_scenario(cohort, "pain-infusion-ml-per-hour-alp"), "6768-6")[-1]
    assert alp["valueQuantity"]["value"] >= 113 and alp["referenceRange"][0]["high"]["value"] == 120
    hydro = resources(by_scenario(cohort, "pain-ug-kg-min-hydronephrosis"), "Condition")
    assert any(c["code"]["coding"][0]["code"] == "43064006" for c in hydro)


def test_distractors_are_what_they_claim(cohort: Cohort) -> None:
    bph = by_scenario(cohort, "bph-man-no-ketamine")
    assert resources(bph)[0]["gender"] == "male" and not bph.draft_orders
    assert not [r for r in resources(bph) if r["resourceType"].startswith("Medication")]
    assert max(o["valueQuantity"]["value"] for o in observations(bph, "pvr")) < 100
    uti = by_scenario(cohort, "uti-positive-culture-unexposed")
    assert not any(is_ketamine(d, uti) for d in uti.draft_orders)
    assert "coli" in json.dumps(observations(uti, "630-4"))
    old = resources(by_scenario(cohort, "anaesthesia-ketamine-ten-years-ago"), "MedicationAdministration")
    assert len(old) == 1 and cohort.now - when(old[0]["effectiveDateTime"]) > timedelta(days=9 * 365)
    remote = resources(by_scenario(cohort, "remote-course-over-a-year"), "MedicationAdministration")
    assert remote and all(cohort.now - session_bounds(a)[1] > timedelta(days=400) for a in remote)
    void = resources(by_scenario(cohort, "entered-in-error-administration"), "MedicationAdministration")
    assert {a["status"] for a in void} == {"entered-in-error", "not-done"}


def _sessions(p: SyntheticPatient) -> list[tuple[datetime, datetime]]:
    return sorted(session_bounds(a) for a in resources(p, "MedicationAdministration")
                  if a["status"] == "completed" and is_ketamine(a, p))


MARGIN = timedelta(minutes=30)  # schedules keep at least this far from every boundary
WEEK = timedelta(days=7)


def _most_in_a_week(starts: list[datetime], widen: timedelta) -> int:
    return max((sum(1 for s in starts if t - WEEK - widen <= s <= t) for t in starts), default=0)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_schedules_keep_clear_of_frequency_boundaries(seed: int) -> None:
    """KB-05 (< 24 h, or > 3 sessions in 7 days) and the esketamine > 2-a-week limit hold exactly where
    expected, with a margin, for every seed."""
    for p in generate_cohort(seed).patients:
        drafts = [d for d in p.draft_orders if is_ketamine(d, p)]
        sessions = _sessions(p)
        if "esketamine" in p.scenario:
            starts = [s for s, _ in sessions] + [draft_bounds(d)[0] for d in drafts]
            if "KB-04" in p.expected["order-select"] and "three" in p.scenario:
                assert _most_in_a_week(starts, -MARGIN) == 3, p.id
            else:
                assert _most_in_a_week(starts, MARGIN) <= 2, p.id
        if not drafts:
            continue
        planned, _ = draft_bounds(drafts[0])
        past = [s for s in sessions if s[0] < planned]
        gap = planned - max((end for _, end in past), default=planned - timedelta(days=365))
        starts = [s for s, _ in past] + [planned]
        crowded = sum(1 for s in starts if planned - WEEK + MARGIN <= s)
        roomy = sum(1 for s in starts if planned - WEEK - MARGIN <= s)
        if "KB-05" in p.expected["order-select"]:
            assert gap < timedelta(hours=24) - MARGIN or crowded >= 4, p.id
        else:
            assert gap > timedelta(hours=24) + MARGIN and roomy <= 3, (p.id, gap, roomy)


# ---------------------------------------------------------------- Synthea background overlay


@pytest.fixture(scope="module")
def one_background(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    source = BACKGROUNDS / SMALL_BACKGROUND
    assert source.exists(), f"synthetic FHIR backgrounds missing from the repository: {source}"
    folder = tmp_path_factory.mktemp("backgrounds")
    shutil.copy(source, folder / "background.json.gz")
    yield folder


def test_overlay_with_one_background(one_background: Path, cohort: Cohort, tmp_path: Path) -> None:
    overlaid = generate_cohort(SEED, backgrounds=one_background)
    assert [(p.id, p.expected) for p in overlaid.patients] == [(p.id, p.expected) for p in cohort.patients]
    women = [p for p in overlaid.patients if resources(p)[0]["gender"] == "female"]
    assert women and all(p.background and p.background.startswith("bg-") for p in women)
    assert all(p.background is None for p in overlaid.patients if p not in women)

    raw = json.loads(gzip.decompress((one_background / "background.json.gz").read_bytes()))
    source_patient = raw["entry"][0]["resource"]
    private = {w for n in source_patient.get("name", []) for w in [*n.get("given", []), n.get("family", "")]}
    private |= {w for a in source_patient.get("address", []) for w in [*a.get("line", []), a.get("city", "")]}
    private = {w for w in private if len(w) > 3}
    assert private

    seen: set[tuple[str, str]] = set()
    added = 0
    for p, plain in zip(overlaid.patients, cohort.patients, strict=True):
        extra = [r for r in resources(p) if re.fullmatch(re.escape(p.id) + r"-b\d+", r["id"])]
        added += len(extra)
        assert len(resources(p)) == len(resources(plain)) + len(extra)
        for r in extra:
            assert r["resourceType"] in ("Condition", "Observation", "Encounter")
            assert check_resource(r) is None, r["id"]
            assert r.get("subject", {"reference": f"Patient/{p.id}"}) == {"reference": f"Patient/{p.id}"}
            assert when(r.get("onsetDateTime") or r.get("effectiveDateTime") or r["period"]["start"]) < overlaid.now
        for r in resources(p):
            key = (r["resourceType"], r["id"])
            assert key not in seen, key
            seen.add(key)
    assert added > 0
    text = json.dumps([p.bundle for p in overlaid.patients])
    assert not [w for w in private if w in text]  # no background name or address in the output

    write_cohort(overlaid, tmp_path / "a")
    write_cohort(generate_cohort(SEED, backgrounds=one_background), tmp_path / "b")
    assert all_files(tmp_path / "a") == all_files(tmp_path / "b")
    assert SMALL_BACKGROUND.split("_")[0] not in (tmp_path / "a" / "manifest.json").read_text()
