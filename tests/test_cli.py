"""The real ``kbladder`` console script on good and broken inputs: rules check | test | explain.

Each command costs a process start (about 1.5 s), so the module starts all of them at once
and each test asserts on the result of its own command.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from rulekit import REPO, RULES, dedent, rule_version

KBLADDER = Path(sys.executable).with_name("kbladder")
# Only a guard against a hung command: a command runs alone on its CPU, so this is never a speed limit.
HANG_GUARD_S = 600
KB02 = RULES / "KB-02-hematuria-exposed.yaml"
KB02_CONDITIONS = list(yaml.safe_load(KB02.read_text())["conditions"])
NOW = "2026-06-01T09:00:00Z"


@dataclass(frozen=True)
class Ran:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"kbladder {' '.join(self.args)} → exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def position(text: str, needle: str) -> tuple[int, int]:
    index = text.index(needle)
    return text.count("\n", 0, index) + 1, index - text.rfind("\n", 0, index)


@dataclass(frozen=True)
class Inputs:
    broken_rules: Path
    broken_rule: Path
    broken_valueset: Path
    failing_tests: Path
    bad_test_file: Path
    shorthand: Path
    quiet_shorthand: Path
    bundle: Path
    draft: Path


def write_inputs(root: Path) -> Inputs:
    broken = root / "broken-rules"
    shutil.copytree(RULES, broken, ignore=shutil.ignore_patterns("tests", "schema"))
    rule = broken / KB02.name
    rule.write_text(
        KB02.read_text()
        .replace("valueset: urine-rbc-microscopy,", "valueset: urine-rbc-microscop,")
        .replace("{above: $rbc_heavy}", "{above: $rbc_hevy}")
        .replace("title: Blood in urine", "titel: x\ntitle: Blood in urine")
    )
    valueset = broken / "valuesets" / "urine-blood-dipstick.yaml"
    valueset.write_text(valueset.read_text() + '  - {system: http://snomed.info/sct, code: "5799-2", display: wrong '
                                               'system for this code, source: test}\n')

    failing = root / "failing"
    failing.mkdir()
    (failing / "wrong.yaml").write_text(dedent(f"""
        rules: [{RULES}]
        now: {NOW}
        tests:
          - name: a dipstick 1+ is a warning, not critical
            hook: patient-view
            data:
              - MedicationAdministration: {{medication: SNOMED#781954001, dose: 35 mg, at: -17d}}
              - MedicationAdministration: {{medication: SNOMED#781954001, dose: 35 mg, at: -10d}}
              - Observation: {{code: LOINC#5794-3, value: 1+, at: -2d}}
            expect:
              cards: [{{rule: KB-02, indicator: critical}}]
          - name: this one passes
            hook: patient-view
            data:
              - MedicationAdministration: {{medication: SNOMED#781954001, dose: 35 mg, at: -10d}}
            expect:
              no_cards: [KB-02]
    """))
    bad_test = root / "bad-test.yaml"
    bad_test.write_text(dedent(f"""
        rules: [{RULES}]
        now: {NOW}
        tests:
          - name: misspelt expectation
            hook: patient-view
            expct: {{no_cards: [KB-02]}}
    """))

    shorthand = root / "patient.yaml"
    shorthand.write_text(dedent(f"""
        now: {NOW}
        patient: {{gender: female, age: 34}}
        data:
          - MedicationAdministration: {{medication: SNOMED#781954001, dose: 35 mg, at: -17d}}
          - MedicationAdministration: {{medication: SNOMED#781954001, dose: 35 mg, at: -10d}}
          - Observation: {{code: LOINC#5794-3, value: 1+, at: -2d}}
    """))
    quiet = root / "quiet.yaml"
    quiet.write_text(dedent(f"""
        now: {NOW}
        data:
          - MedicationAdministration: {{medication: SNOMED#781954001, dose: 35 mg, at: -10d}}
          - Observation: {{code: LOINC#5794-3, value: negative, at: -2d}}
    """))

    subject = {"reference": "Patient/pat-1"}
    ketamine = {"coding": [{"system": "http://snomed.info/sct", "code": "781954001"}], "text": "Ketamine 50 mg/mL"}
    bundle = root / "bundle.json"
    bundle.write_text(json.dumps({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "pat-1", "gender": "male", "birthDate": "1980-01-01"}},
            *({"resource": {"resourceType": "MedicationAdministration", "id": rid, "status": "completed",
                            "medicationCodeableConcept": ketamine, "subject": subject, "effectiveDateTime": when,
                            "dosage": {"dose": {"value": 35, "unit": "mg", "system": "http://unitsofmeasure.org",
                                                "code": "mg"}}}}
              for rid, when in (("ma-0", "2026-05-18T10:00:00+02:00"), ("ma-1", "2026-05-25T10:00:00+02:00"))),
            {"resource": {"resourceType": "Condition", "id": "gh-1", "subject": subject,
                          "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R31.0",
                                               "display": "Gross hematuria"}]},
                          "onsetDateTime": "2026-05-31"}},
        ],
    }))
    draft = root / "draft.json"
    draft.write_text(json.dumps({
        "resourceType": "MedicationRequest", "id": "next-dose", "status": "draft", "intent": "order",
        "medicationCodeableConcept": ketamine, "subject": subject,
    }))
    return Inputs(broken, rule, valueset, failing, bad_test, shorthand, quiet, bundle, draft)


def commands(inputs: Inputs) -> dict[str, list[str]]:
    explain = ["rules", "explain", "--rules", str(RULES)]
    return {
        "check_good": ["rules", "check", "rules"],
        "check_broken": ["rules", "check", str(inputs.broken_rules)],
        "test_good": ["rules", "test", "rules/tests"],
        "test_failing": ["rules", "test", str(inputs.failing_tests)],
        "test_bad_file": ["rules", "test", str(inputs.bad_test_file)],
        "explain_shorthand": [*explain, "--patient", str(inputs.shorthand), "--hook", "patient-view"],
        "explain_quiet": [*explain, "--patient", str(inputs.quiet_shorthand), "--hook", "patient-view"],
        "explain_bundle": [*explain, "--patient", str(inputs.bundle), "--draft", str(inputs.draft),
                           "--hook", "order-sign", "--now", NOW],
        "explain_json": [*explain, "--patient", str(inputs.bundle), "--draft", str(inputs.draft),
                         "--hook", "order-sign", "--now", NOW, "--json"],
        "explain_broken_rules": [*explain[:2], "--rules", str(inputs.broken_rules), "--patient",
                                 str(inputs.shorthand), "--hook", "patient-view"],
        "no_hook": [*explain, "--patient", str(inputs.shorthand)],
        "bad_hook": [*explain, "--patient", str(inputs.shorthand), "--hook", "patient-open"],
        "no_patient_file": [*explain, "--patient", str(inputs.shorthand.with_name("nobody.yaml")),
                            "--hook", "patient-view"],
    }


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ran]:
    """Run every command (from the repository root), at most one per CPU at a time, then collect the results.

    Starting all of them at once made each wait behind the others on a small, shared CI machine until the
    hang guard fired; a bounded pool keeps the wall time short without racing the timeout.
    """
    assert KBLADDER.exists(), f"console script not installed next to {sys.executable}"
    inputs = write_inputs(tmp_path_factory.mktemp("cli"))
    env = {**os.environ, "NO_COLOR": "1"}

    def run(args: list[str]) -> Ran:
        done = subprocess.run([str(KBLADDER), *args], cwd=REPO, env=env, text=True, capture_output=True,
                              timeout=HANG_GUARD_S, check=False)
        return Ran(tuple(args), done.returncode, done.stdout, done.stderr)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = {name: pool.submit(run, args) for name, args in commands(inputs).items()}
        results = {name: future.result() for name, future in futures.items()}
    results["_inputs"] = inputs  # type: ignore[assignment]
    return results


def inputs_of(ran: dict[str, Ran]) -> Inputs:
    return ran["_inputs"]  # type: ignore[return-value]


# ---------------------------------------------------------------- rules check


def test_check_good_rules(ran: dict[str, Ran]) -> None:
    result = ran["check_good"]
    assert result.code == 0, result
    rules = len(list((REPO / "rules").glob("*.yaml")))
    valuesets = len(list((REPO / "rules" / "valuesets").glob("*.yaml")))
    expected = rf"ok: {rules} rule\(s\), {valuesets} value set\(s\), rule set [0-9a-f]{{12}}\n"
    assert re.fullmatch(expected, result.out), result


def test_check_broken_rules_prints_every_error_at_its_place(ran: dict[str, Ran]) -> None:
    result, inputs = ran["check_broken"], inputs_of(ran)
    assert result.code == 1, result
    rule_text, vs_text = inputs.broken_rule.read_text(), inputs.broken_valueset.read_text()
    expected = [
        (inputs.broken_rule, position(rule_text, "titel"), "unknown key 'titel' (did you mean 'title'?)"),
        (inputs.broken_rule, position(rule_text, "urine-rbc-microscop,"),
         "unknown value set 'urine-rbc-microscop' (did you mean 'urine-rbc-microscopy'?)"),
        (inputs.broken_rule, position(rule_text, "$rbc_hevy"),
         "unknown parameter '$rbc_hevy' (did you mean 'rbc_heavy'?)"),
        (inputs.broken_valueset, position(vs_text, '"5799-2"'), "'5799-2' is not a valid code of http://snomed.info/sct"),
    ]
    lines = result.out.splitlines()
    for file, (line, col), message in expected:
        assert f"{file}:{line}:{col}: {message}" in lines, f"missing {file.name}:{line}:{col}\n{result}"
    for line in lines:
        assert re.match(r"^/.+\.yaml:\d+:\d+: ", line), f"not file:line:col: {line!r}"
    assert result.err.strip() == f"{len([x for x in lines if ': warning: ' not in x])} error(s)"


# ---------------------------------------------------------------- rules test


def test_rule_tests_pass(ran: dict[str, Ran]) -> None:
    result = ran["test_good"]
    assert result.code == 0, result
    cases = sum(len(yaml.safe_load(p.read_text())["tests"]) for p in (RULES / "tests").glob("*.yaml"))
    assert result.out.splitlines()[-1] == f"rule tests: {cases} passed, 0 failed"


def test_failing_rule_test_shows_a_diff(ran: dict[str, Ran]) -> None:
    result = ran["test_failing"]
    assert result.code == 1, result
    out = result.out
    assert re.search(r"^FAIL .*wrong\.yaml:\d+: a dipstick 1\+ is a warning, not critical$", out, re.MULTILINE), out
    assert "card from KB-02 differs" in out
    assert "  --- expected\n  +++ got\n" in out
    assert "  -indicator: critical\n  +indicator: warning\n" in out
    assert out.splitlines()[-1] == "rule tests: 1 passed, 1 failed"


def test_invalid_test_file_is_reported_with_its_place(ran: dict[str, Ran]) -> None:
    result = ran["test_bad_file"]
    assert result.code == 1, result
    text = inputs_of(ran).bad_test_file.read_text()
    line, col = position(text, "expct")
    assert f"{inputs_of(ran).bad_test_file}:{line}:{col}: unknown key 'expct' (did you mean 'expect'?)" in result.out
    assert result.out.splitlines()[-1].startswith("rule tests: 0 passed")


# ---------------------------------------------------------------- rules explain


def assert_explains_every_condition(result: Ran) -> None:
    for name in KB02_CONDITIONS:
        assert re.search(rf"^    [✓✗?] {name}\b", result.out, re.MULTILINE), f"condition {name} not shown\n{result}"
    assert "tiers (tried in order):" in result.out


def test_explain_shorthand_patient_that_fires(ran: dict[str, Ran]) -> None:
    result = ran["explain_shorthand"]
    assert result.code == 0, result
    assert f"KB-02 v{rule_version('KB-02')}  Blood in urine during ketamine exposure  → FIRED warning" in result.out
    assert_explains_every_condition(result)
    # the on-treatment window runs from the first session (-17 d) to 90 days after the last (-10 d)
    assert "1 match(es) from 2026-05-15 to 2026-08-20, need ≥ 1 (value ≥ trace" in result.out
    assert "cards: 1\n  [warning] Blood in urine after 2 ketamine sessions in 7 days" in result.out
    assert "\x1b[" not in result.out  # no colour when not a terminal


def test_explain_shorthand_patient_that_does_not_fire(ran: dict[str, Ran]) -> None:
    result = ran["explain_quiet"]
    assert result.code == 0, result
    assert "→ NOT FIRED" in result.out and "no tier holds" in result.out
    assert_explains_every_condition(result)
    assert result.out.rstrip().endswith("cards: 0")


def test_explain_fhir_bundle_with_a_draft_order(ran: dict[str, Ran]) -> None:
    result = ran["explain_bundle"]
    assert result.code == 0, result
    assert "hook order-sign at 2026-06-01T09:00:00+00:00" in result.out
    assert "→ FIRED critical" in result.out
    assert_explains_every_condition(result)
    assert "2026-05-31  Gross hematuria: active  [Condition/gh-1]" in result.out
    assert "[critical] Visible or heavy blood in urine" in result.out
    assert result.err == ""  # every resource was valid FHIR


def test_explain_json_carries_the_trace_and_the_cards(ran: dict[str, Ran]) -> None:
    result = ran["explain_json"]
    assert result.code == 0, result
    data = json.loads(result.out)
    trace = next(r for r in data["results"] if r["rule"] == "KB-02")
    assert trace["status"] == "fired" and trace["indicator"] == "critical"
    assert set(trace["conditions"]) == set(KB02_CONDITIONS)
    card = next(c for c in data["cards"] if c["source"]["topic"]["code"] == "KB-02")
    delete = [a for s in card["suggestions"] for a in s["actions"] if a["type"] == "delete"]
    assert delete == [{"type": "delete", "description": "Delete the draft ketamine order",
                       "resourceId": "MedicationRequest/next-dose"}]
    creates = [a for s in card["suggestions"] for a in s["actions"] if a["type"] == "create"]
    assert {a["resource"]["subject"]["reference"] for a in creates} == {"Patient/pat-1"}


def test_explain_with_broken_rules_fails_with_the_problems(ran: dict[str, Ran]) -> None:
    result = ran["explain_broken_rules"]
    assert result.code == 1, result
    assert "unknown parameter '$rbc_hevy'" in result.err
    assert result.out == ""


# ---------------------------------------------------------------- bad arguments


def test_missing_hook_is_a_usage_error(ran: dict[str, Ran]) -> None:
    result = ran["no_hook"]
    assert result.code == 2, result
    assert "Usage: kbladder rules explain" in result.err
    assert "Missing option '--hook'" in result.err


def test_unknown_hook_is_a_usage_error(ran: dict[str, Ran]) -> None:
    result = ran["bad_hook"]
    assert result.code == 2, result
    assert "'patient-open' is not one of 'patient-view', 'order-select', 'order-sign'" in result.err


def test_missing_patient_file_is_a_usage_error(ran: dict[str, Ran]) -> None:
    result = ran["no_patient_file"]
    assert result.code == 2, result
    assert "does not exist" in result.err


def test_explain_appointment_book_judges_the_booked_session(tmp_path: Path) -> None:
    """explain decides appointment-book as the service does: the booking's session at its start."""
    from click.testing import CliRunner

    from cds_service.cli import main

    patient = tmp_path / "patient.yaml"
    patient.write_text("now: 2026-06-01T09:00:00Z\ndata:\n"
                       "  - MedicationAdministration: {medication: SNOMED#781954001, dose: 35 mg, at: -4h}\n"
                       "  - MedicationRequest: {id: course, medication: SNOMED#781954001, dose: 35 mg, status: active,"
                       " authored: -30d}\n")
    booking = tmp_path / "booking.yaml"
    booking.write_text("now: 2026-06-01T09:00:00Z\ndrafts:\n"
                       "  - {resourceType: Appointment, id: next, status: proposed, start: +16h,"
                       " supportingInformation: [{reference: MedicationRequest/course}],"
                       " participant: [{actor: {reference: Patient/test-patient}, status: accepted}]}\n")
    result = CliRunner().invoke(main, ["rules", "explain", "--patient", str(patient), "--hook", "appointment-book",
                                       "--draft", str(booking)])
    assert result.exit_code == 0, result.output
    assert "[info] Ketamine booked 20 h after the last session: confirm the interval" in result.output
