"""`kbladder simulate`: the synthetic cohort as a Bulk Data export, replayed on Dask without look-ahead."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_service.clinical.timeutil import parse_instant
from cds_service.demo import prefetch_for
from cds_service.simulate.ndjson import export_files, partitions, patient_of, read_part
from cds_service.simulate.pipeline import RunResult, run
from cds_service.simulate.replay import Plan
from cds_service.simulate.rulesource import RuleSource, snapshot
from cds_service.simulate.timeline import ExposureCheck, as_of, order_moments, visible
from cds_service.synth.bulk import write_export

REPO = Path(__file__).resolve().parents[1]
KBLADDER = str(Path(sys.executable).with_name("kbladder"))
NOW = "2026-06-01T09:00:00Z"
SEED = 4


def kbladder(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KBLADDER, *args], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def rules() -> tuple[RuleSource, Any]:
    return snapshot("rules", REPO / "rules")


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export")
    write_export(SEED, out, NOW)
    return out


@pytest.fixture(scope="module")
def synchronous(export: Path, rules: tuple[RuleSource, Any]) -> RunResult:
    source, ruleset = rules
    return run(export, [source], [ruleset], Plan(as_of=(parse_instant(NOW),)), patients_per_bucket=10,
               block_bytes=64 * 1024)


def rows_by_patient(result: RunResult) -> dict[str, list[dict[str, Any]]]:
    return {replay.patient: replay.rows for replay in result.replays}


def fired(row: dict[str, Any], label: str = "rules") -> list[str]:
    return sorted(card["rule"] for card in row["by"][label]["fired"])


# ---------------------------------------------------------------- the cohort's expectations


def test_every_replayed_order_of_the_cohort_export_gets_the_cards_its_manifest_expects(
        export: Path, synchronous: RunResult) -> None:
    expected = json.loads((export / "expected.json").read_text(encoding="utf-8"))["patients"]
    rows = rows_by_patient(synchronous)
    exposed = [p for p in expected if p["id"] in rows]
    assert len(exposed) >= 40 and synchronous.patients_in_export == len(expected)
    checked_orders = 0
    for patient in exposed:
        replayed = rows[patient["id"]]
        views = [r for r in replayed if r["hook"] == "patient-view"]
        assert [r["at"] for r in views] == [NOW]
        assert fired(views[0]) == sorted(patient["patient-view"]), patient["id"]
        for order_id, rules_expected in patient["orders"].items():
            signing = [r for r in replayed if r["hook"] == "order-sign" and order_id in r["orders"]]
            assert len(signing) == 1 and signing[0]["at"] == NOW, (patient["id"], order_id)
            assert fired(signing[0]) == sorted(rules_expected), (patient["id"], order_id)
            checked_orders += 1
    assert checked_orders >= 40
    # Patients without any ketamine/esketamine are never replayed (pass 1 keeps only the exposed).
    assert synchronous.exposed == len(rows) < len(expected)


def test_a_local_dask_cluster_on_loopback_gives_the_same_results_as_the_synchronous_scheduler(
        export: Path, rules: tuple[RuleSource, Any], synchronous: RunResult) -> None:
    from distributed import Client, LocalCluster

    source, ruleset = rules
    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                       scheduler_port=0, dashboard_address=None) as cluster, Client(cluster) as client):
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        distributed = run(export, [source], [ruleset], Plan(as_of=(parse_instant(NOW),)), client=client,
                          patients_per_bucket=10, block_bytes=64 * 1024)
    assert synchronous.buckets > 1  # several buckets and split files: the shuffle-free grouping is exercised
    assert [(r.patient, r.rows) for r in distributed.replays] == [(r.patient, r.rows) for r in synchronous.replays]
    assert distributed.problems == synchronous.problems
    assert (distributed.lines_read, distributed.exposed) == (synchronous.lines_read, synchronous.exposed)


# ---------------------------------------------------------------- no look-ahead, unit level


def test_the_record_as_of_a_moment_hides_later_data_and_later_facts() -> None:
    moment = parse_instant("2026-01-10T00:00:00Z")
    late_result = {"resourceType": "Observation", "id": "o", "effectiveDateTime": "2026-01-05T00:00:00Z",
                   "issued": "2026-01-11T00:00:00Z"}
    assert as_of(late_result, moment) is None  # sampled before, reported after: not on screen yet
    abated = {"resourceType": "Condition", "id": "c", "recordedDate": "2025-12-01",
              "abatementDateTime": "2026-02-01", "clinicalStatus": {"coding": [{"code": "resolved"}]}}
    then = as_of(abated, moment)
    assert then is not None and "abatementDateTime" not in then
    assert then["clinicalStatus"]["coding"][0]["code"] == "active"
    running = {"resourceType": "MedicationStatement", "id": "s", "dateAsserted": "2026-01-01",
               "effectivePeriod": {"start": "2025-11-01", "end": "2026-03-01"}}
    assert as_of(running, moment)["effectivePeriod"] == {"start": "2025-11-01"}
    at_moment = {"resourceType": "Observation", "id": "x", "effectiveDateTime": "2026-01-10T00:00:00Z"}
    assert visible([at_moment, {"resourceType": "Patient", "id": "p"}], moment) == [
        {"resourceType": "Patient", "id": "p"}]


def test_orders_signed_at_the_same_moment_are_one_order_sign_call_and_undated_orders_are_counted(
        rules: tuple[RuleSource, Any]) -> None:
    ketamine = {"coding": [{"system": "http://snomed.info/sct", "code": "781952002"}]}
    def order(oid: str, authored: str | None, status: str = "active") -> dict[str, Any]:
        resource = {"resourceType": "MedicationRequest", "id": oid, "status": status, "intent": "order",
                    "medicationCodeableConcept": ketamine, "subject": {"reference": "Patient/p"}}
        if authored:
            resource["authoredOn"] = authored
        return resource
    moments, undated = order_moments(
        [order("a", "2026-01-01T10:00:00Z"), order("b", "2026-01-01T10:00:00Z"), order("c", "2026-02-01"),
         order("d", None), order("e", "2026-03-01", status="entered-in-error"), order("f", "2026-03-01", "draft")],
        ExposureCheck(rules[1], {}))
    assert [m.order_ids for m in moments] == [("a", "b"), ("c",)]
    assert all(d["status"] == "draft" for m in moments for d in m.drafts)
    assert undated == 1


# ---------------------------------------------------------------- the same cards as the live service


@pytest.fixture
def live_service(tmp_path: Path) -> Iterator[tuple[str, list[Any]]]:
    """The real app on a loopback port; its clock is whatever the test puts in ``clock[0]``."""
    from cds_service import loopback
    from cds_service.app import create_app
    from cds_service.config import Settings
    from cds_service.rules_state import RulesState
    from cds_service.store import Store

    clock: list[Any] = [parse_instant(NOW)]
    database_url = f"sqlite:///{tmp_path / 'live.sqlite3'}"
    store = Store(database_url)
    app = create_app(Settings(database_url=database_url, rules_dir=str(REPO / "rules"), reload_interval_s=0),
                     rules_state=RulesState([REPO / "rules"], reload_interval_s=0), store=store,
                     clock=lambda: clock[0])
    try:
        with loopback.serve(app) as base_url:
            yield base_url, clock
    finally:
        store.dispose()


def _patient_resources(export: Path, patient: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    resources, medications = [], {}
    for rtype, paths in export_files(export).items():
        for path in paths:
            for part in partitions(path, rtype):
                for _, item in read_part(part):
                    assert isinstance(item, dict)
                    if rtype == "Medication":
                        medications[f"Medication/{item['id']}"] = item
                    elif patient_of(item) == patient:
                        resources.append(item)
    return resources, medications


def test_a_back_test_and_the_live_http_service_give_the_same_cards_for_the_same_data_and_time(
        export: Path, rules: tuple[RuleSource, Any], live_service: tuple[str, list[Any]]) -> None:
    base_url, clock = live_service
    source, ruleset = rules
    discovery = requests.get(f"{base_url}/cds-services", timeout=30).json()
    templates = {s["hook"]: (s["id"], s.get("prefetch", {})) for s in discovery["services"]}
    # Every 60 days from first exposure too: moments in the past, each with its own visible record.
    result = run(export, [source], [ruleset], Plan(as_of=(parse_instant(NOW),), every_days=60,
                                                   end=parse_instant(NOW)))
    chosen = [r for r in result.replays if any(card for row in r.rows for card in row["by"]["rules"]["cards"])][:6]
    compared = 0
    for replay in chosen:
        resources, medications = _patient_resources(export, replay.patient)
        for row in replay.rows:
            moment = parse_instant(row["at"])
            leave_out = frozenset(f"MedicationRequest/{o}" for o in row["orders"])
            view = visible(resources, moment, leave_out) + [
                m for key, m in medications.items() if any(key in json.dumps(r) for r in resources)]
            service_id, template = templates[row["hook"]]
            context: dict[str, Any] = {"userId": "Practitioner/backtest", "patientId": replay.patient}
            if row["hook"] == "order-sign":
                drafts = [dict(r, status="draft") for r in resources
                          if r["resourceType"] == "MedicationRequest" and r["id"] in row["orders"]]
                context["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                          "entry": [{"resource": d} for d in drafts]}
            clock[0] = moment
            answer = requests.post(f"{base_url}/cds-services/{service_id}", timeout=60, json={
                "hook": row["hook"], "hookInstance": str(uuid.uuid4()), "context": context,
                "prefetch": prefetch_for(template, replay.patient, view)}).json()
            live = [(c["source"]["topic"]["code"], c["indicator"], c["summary"]) for c in answer["cards"]]
            backtest = [(c["rule"], c["indicator"], c["summary"]) for c in row["by"]["rules"]["cards"]]
            assert backtest == live, (replay.patient, row["hook"], row["at"])
            compared += 1
    assert compared >= 12 and any(row["at"] != NOW for r in chosen for row in r.rows)


# ---------------------------------------------------------------- bad input is counted, never fatal


def _damaged_export(export: Path, target: Path) -> dict[str, int]:
    """A copy with a truncated line, a Condition inside Observation.ndjson and a patient without Patient."""
    shutil.copytree(export, target)
    observations = (target / "Observation.ndjson").read_text(encoding="utf-8").splitlines()
    condition = (target / "Condition.ndjson").read_text(encoding="utf-8").splitlines()[0]
    observations.insert(3, observations[3][: len(observations[3]) // 2])  # truncated mid-resource
    observations.insert(10, condition)  # a resource of the wrong type in the file
    invalid = json.loads(observations[19])
    invalid["valueQuantity"] = {"value": "a lot"}  # parses as JSON, is not FHIR (decimal expected)
    observations[19] = json.dumps(invalid)
    (target / "Observation.ndjson").write_text("\n".join(observations) + "\n", encoding="utf-8")
    patients = (target / "Patient.ndjson").read_text(encoding="utf-8").splitlines()
    gone = json.loads(patients[0])["id"]
    (target / "Patient.ndjson").write_text("\n".join(patients[1:]) + "\n", encoding="utf-8")
    first_line = next(i for i, line in enumerate((target / "Condition.ndjson").read_text().splitlines(), 1)
                      if f'"Patient/{gone}"' in line)
    return {"truncated": 4, "wrong_type": 11, "invalid": 20, "gone_line": first_line,  # type: ignore[dict-item]
            "gone": gone}


def test_bad_lines_are_counted_and_reported_with_file_and_line_and_the_run_completes(
        export: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    where = _damaged_export(export, damaged)
    out = tmp_path / "out"
    result = kbladder("simulate", str(damaged), "--out", str(out), "--as-of", NOW, "--workers", "1",
                      "--no-progress")
    assert result.returncode == 0, result.stderr
    problems = list(csv.DictReader((out / "problems.csv").open(encoding="utf-8")))
    found = {(p["file"], int(p["line"])): p["problem"] for p in problems}
    assert "not valid JSON" in found[("Observation.ndjson", where["truncated"])]
    assert "'Condition' in a Observation file" in found[("Observation.ndjson", where["wrong_type"])]
    assert "not valid FHIR R4: invalid at " in found[("Observation.ndjson", where["invalid"])]
    # The patient without a Patient resource is named where its data first appears (files in name order).
    missing = [p for p in problems if f"patient {where['gone']} has no Patient resource" in p["problem"]]
    assert len(missing) == 1 and missing[0]["file"] == "Condition.ndjson"
    assert int(missing[0]["line"]) == where["gone_line"]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["bad_lines"] == len(problems) == 4
    assert summary["replayed"]["patients_without_Patient_resource"] == 1
    assert f"Observation.ndjson:{where['truncated']}: not valid JSON" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "not a folder"),
    (["{empty}"], "no *.ndjson"),
    (["{export}", "--rules", "{empty}"], "--rules"),
    (["{export}", "--compare", str(REPO / "rules")], "nothing to compare"),
    (["{export}", "--as-of", "yesterday"], "--as-of"),
    (["{export}", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "exclude each other"),
])
def test_unusable_input_exits_2_with_a_clear_message(export: Path, tmp_path: Path, args: list[str],
                                                     message: str) -> None:
    from click.testing import CliRunner

    from cds_service.cli import main

    (tmp_path / "empty").mkdir()
    names = {"missing": str(tmp_path / "nope"), "empty": str(tmp_path / "empty"), "export": str(export)}
    extra = [] if "--workers" in args else ["--workers", "1"]
    result = CliRunner().invoke(main, ["simulate", *[a.format(**names) for a in args], "--out",
                                       str(tmp_path / "out"), *extra, "--no-progress"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an uncaught error


# ---------------------------------------------------------------- the export writer


def test_synth_ndjson_is_deterministic_scales_to_n_patients_and_gzipped_split_files_read_the_same(
        tmp_path: Path, rules: tuple[RuleSource, Any]) -> None:
    a, b, split = tmp_path / "a", tmp_path / "b", tmp_path / "split"
    result = kbladder("synth", "--format", "ndjson", "--patients", "120", "--seed", "2", "--out", str(a))
    assert result.returncode == 0, result.stderr
    assert "120 patients" in result.stdout
    write_export(2, b, patients=120)
    write_export(2, split, patients=120, compress=True, files_per_type=3)
    assert {p.name: p.read_bytes() for p in a.iterdir()} == {p.name: p.read_bytes() for p in b.iterdir()}
    patients = [json.loads(line) for line in (a / "Patient.ndjson").read_text(encoding="utf-8").splitlines()]
    assert len(patients) == 120 == len({p["id"] for p in patients})
    manifest = json.loads((split / "manifest.json").read_text(encoding="utf-8"))
    assert {o["url"] for o in manifest["output"] if o["type"] == "Observation"} == {
        f"Observation.00{i}.ndjson.gz" for i in (1, 2, 3)}
    assert sum(o["count"] for o in manifest["output"] if o["type"] == "Patient") == 120
    source, ruleset = rules
    plain = run(a, [source], [ruleset], Plan())
    gzipped = run(split, [source], [ruleset], Plan())
    assert [(r.patient, r.rows) for r in plain.replays] == [(r.patient, r.rows) for r in gzipped.replays]
    assert plain.patients_in_export == 120 and not plain.problems
    spread = {row["at"][:7] for r in plain.replays for row in r.rows}
    assert len(spread) > 1  # copies of the cohort spread their orders over time


def test_synth_rejects_ndjson_options_with_bundles(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cds_service.cli import main

    result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "x"), "--patients", "10"])
    assert result.exit_code == 2 and "--format ndjson" in result.output


# ---------------------------------------------------------------- compare and the committee report


@pytest.fixture(scope="module")
def compared(export: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The bundled rules against a variant with one threshold changed (KB-04: more than 2 sessions a week)."""
    from cds_service.simulate import command

    variant = tmp_path_factory.mktemp("variant") / "rules"
    shutil.copytree(REPO / "rules", variant)
    kb04 = variant / "KB-04-intensive-exposure.yaml"
    text = kb04.read_text(encoding="utf-8")
    changed = text.replace("sessions_per_week: {type: number, default: 3,",
                           "sessions_per_week: {type: number, default: 2,")
    assert changed != text
    kb04.write_text(changed, encoding="utf-8")
    out = tmp_path_factory.mktemp("compared")
    _, data = command.simulate(command.Request(export=export, out=out, rules=REPO / "rules", compare=variant,
                                               as_of=(NOW,), every_days=45, workers=1, progress=False))
    return out, data


def test_compare_lists_the_patients_whose_cards_change_and_every_output_file_is_written(
        compared: tuple[Path, dict[str, Any]]) -> None:
    out, data = compared
    assert {p.name for p in out.iterdir()} == {"summary.json", "rules.csv", "calls.csv", "first_card.csv",
                                               "problems.csv", "compare.csv", "report.html"}
    base = {r["rule"]: r for r in data["rulesets"]["rules"]["rules"]}
    variant = {r["rule"]: r for r in data["rulesets"]["compare"]["rules"]}
    assert len(base) == 15 and variant["KB-04"]["patients_any"] > base["KB-04"]["patients_any"]
    assert all(variant[r]["patients_any"] == base[r]["patients_any"] for r in base if r != "KB-04")
    by_rule = {row["rule"]: row for row in data["compare"]["by_rule"]}
    assert set(by_rule) == {"KB-04"} and by_rule["KB-04"]["patients appeared"] >= 1
    changes = list(csv.DictReader((out / "compare.csv").open(encoding="utf-8")))
    assert {c["rule"] for c in changes} == {"KB-04"} and {c["change"] for c in changes} <= {
        "appeared", "indicator changed"}
    assert data["compare"]["patients_changed"] == len({c["patient"] for c in changes})
    # Per 1,000 orders, per indicator, undecided with what was missing, first sign → first card.
    assert base["KB-02"]["cards_per_1000_orders"] > 0 and base["KB-02"]["patients"]["critical"] >= 1
    assert base["KB-04"]["undecided_time_points"] >= 1
    assert any("no dose or rate recorded" in m["data"] for m in base["KB-04"]["top_missing"])
    assert base["KB-02"]["sign_to_card_days"]["patients"] >= 1
    assert data["replayed"]["patient_view_calls"] > data["patients_exposed"]  # --every adds past moments


def test_the_report_renders_its_charts_in_headless_chromium_without_console_errors(
        compared: tuple[Path, dict[str, Any]], browser: object, tmp_path: Path) -> None:
    from browser import open_page

    out, data = compared
    shot = tmp_path / "report.png"
    seen = open_page(browser, out / "report.html", screenshot=shot, height=2400)
    assert seen.errors == []
    # Cards over time (one per rule set), alert burden, compare diff: four charts, each with drawn paths.
    assert seen.count("svg.chart") == 4
    assert seen.count("svg.chart path") > 40
    text = seen.text()
    assert "KB-04" in text and "What changes" in text and data["rulesets"]["rules"]["version"] in text
    assert shot.stat().st_size > 20_000


# ---------------------------------------------------------------- a FHIR server instead of an export


def test_patients_read_from_a_fhir_server_replay_like_the_same_patients_of_an_export(
        export: Path, rules: tuple[RuleSource, Any], synchronous: RunResult, fhir_server: Any) -> None:
    from cds_service.simulate.fhirsource import FhirSource, run_fhir
    from cds_service.synth import generate_cohort
    from cds_service.synth.bulk import signed_orders

    source, ruleset = rules
    cohort = generate_cohort(SEED, NOW)
    # A patient with a KB-02 critical card and a signed order, and one with a contained/referenced medication.
    chosen = [p for p in cohort.patients if p.draft_orders][:2]
    for patient in chosen:
        bundle = patient.bundle
        bundle["entry"] += [{"resource": o, "request": {"method": "PUT", "url": f"MedicationRequest/{o['id']}"}}
                            for o in signed_orders(patient)]
        fhir_server.post_bundle(bundle)
    ids = [p.id for p in chosen]
    from_fhir = run_fhir(FhirSource(fhir_server.base_url, fhir_server.token), [*ids, "no-such-patient"],
                         [source], [ruleset], Plan(as_of=(parse_instant(NOW),)))
    from_export = rows_by_patient(synchronous)
    assert [r.patient for r in from_fhir.replays] == sorted(ids)
    for replay in from_fhir.replays:
        assert replay.rows == from_export[replay.patient], replay.patient
    assert from_fhir.exposed == 2 and from_fhir.patients_in_export == 3
    # The unknown patient could not be read: listed as a problem, never a silent "no cards".
    assert any("no-such-patient" in p.file for p in from_fhir.problems)


def test_a_fhir_source_without_access_is_unusable_input(export: Path, tmp_path: Path) -> None:
    from cds_service.simulate import command

    with pytest.raises(command.UnusableInput, match="--patient"):
        command.simulate(command.Request(export=None, out=tmp_path, rules=REPO / "rules",
                                         fhir="http://127.0.0.1:9/fhir"))
    with pytest.raises(command.UnusableInput, match="either EXPORT"):
        command.simulate(command.Request(export=export, out=tmp_path, rules=REPO / "rules",
                                         fhir="http://127.0.0.1:9/fhir", patients=("p",)))
    with pytest.raises(command.UnusableInput, match="--fhir"):
        command.simulate(command.Request(export=None, out=tmp_path, rules=REPO / "rules",
                                         fhir="file:///etc/passwd", patients=("p",)))


def test_the_bundled_synthea_backgrounds_ride_along_in_the_export_without_changing_any_card(
        synchronous: RunResult, rules: tuple[RuleSource, Any], tmp_path: Path) -> None:
    out = tmp_path / "with-backgrounds"
    write_export(SEED, out, NOW, backgrounds=REPO / "tests" / "data" / "synthetic-fhir-r4")
    assert (out / "Encounter.ndjson").stat().st_size > 0  # Synthea encounters: no rule reads them
    source, ruleset = rules
    result = run(out, [source], [ruleset], Plan(as_of=(parse_instant(NOW),)))
    assert "Encounter.ndjson" in result.files_not_read
    assert result.lines_read > synchronous.lines_read  # the background Conditions and Observations were read
    assert [(r.patient, r.rows) for r in result.replays] == [(r.patient, r.rows) for r in synchronous.replays]
