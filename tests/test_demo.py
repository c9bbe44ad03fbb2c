"""`kbladder synth` and `kbladder demo` as a user runs them: write a cohort, replay it over HTTP."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from cds_service.demo import local_search

KBLADDER = str(Path(sys.executable).with_name("kbladder"))
REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KBLADDER, *args], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def test_synth_then_demo_replays_the_cohort_over_http_and_matches_its_manifest(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    synth = run("synth", "--seed", "3", "--out", str(out))
    assert synth.returncode == 0, synth.stderr
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert len(manifest["patients"]) >= 40 and manifest["seed"] == 3

    demo = run("demo", "--cohort", str(out))
    assert demo.returncode == 0, demo.stderr
    lines = demo.stdout.splitlines()
    assert lines[0].split()[:5] == ["patient", "scenario", "patient-view", "order-select", "order-sign"]
    rows = {line.split()[0]: line for line in lines[2:] if line.startswith("kb")}
    assert set(rows) == {p["id"] for p in manifest["patients"]}
    blood = next(p["id"] for p in manifest["patients"] if p["scenario"] == "depression-induction-dipstick-blood")
    assert "KB-02!" in rows[blood]
    summary = re.search(r"manifest matched for (\d+)/(\d+) patients", demo.stdout)
    assert summary and summary.group(1) == summary.group(2), demo.stdout[-2000:]
    assert "replaying" in demo.stderr  # the progress bar goes to stderr, the table to stdout


def test_bad_synth_arguments_are_a_usage_error(tmp_path: Path) -> None:
    result = run("synth", "--seed", "1", "--out", str(tmp_path / "x"), "--now", "not-a-time")
    assert result.returncode == 2 and "Error" in result.stderr


def test_local_search_filters_by_type_patient_and_code_and_includes_referenced_medications() -> None:
    resources = [
        {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p"},
         "code": {"coding": [{"system": "http://loinc.org", "code": "5794-3"}]}},
        {"resourceType": "Observation", "id": "o2", "subject": {"reference": "Patient/p"},
         "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]}},
        {"resourceType": "Observation", "id": "o3", "subject": {"reference": "Patient/other"},
         "code": {"coding": [{"system": "http://loinc.org", "code": "5794-3"}]}},
        {"resourceType": "MedicationAdministration", "id": "m1", "subject": {"reference": "Patient/p"},
         "medicationReference": {"reference": "Medication/k"}},
        {"resourceType": "Medication", "id": "k"},
        {"resourceType": "Medication", "id": "unrelated"},
    ]
    found = local_search("Observation?patient=p&code=http://loinc.org%7C5794-3&_count=10", "p", resources)
    assert [e["resource"]["id"] for e in found["entry"]] == ["o1"]
    meds = local_search("MedicationAdministration?patient=p", "p", resources)
    assert [(e["resource"]["id"], e["search"]["mode"]) for e in meds["entry"]] == [("m1", "match"), ("k", "include")]
    assert local_search("Patient/p", "p", resources) is None
