"""One decision path: the HTTP service, a rule test and `rules explain --json` give the same cards.

The same patient (shorthand, expanded once), the same drafts and the same selection go through
(1) the real service over loopback HTTP, with a full prefetch, (2) the rule-test runner and (3) the
explain command; the cards must agree except for their uuids. The selection matters: the esketamine
draft that is not selected must not give its label card anywhere.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from click.testing import CliRunner

from cds_service import loopback
from cds_service.app import create_app
from cds_service.clinical.timeutil import parse_instant
from cds_service.config import Settings
from cds_service.decision.catalog import templates_for
from cds_service.decision.testing import TEST_PATIENT_ID, decide_case
from cds_service.demo import prefetch_for
from cds_service.engine.loader import load_ruleset
from cds_service.engine.shorthand import Expander
from cds_service.engine.yamlpos import load_file
from cds_service.rules_state import RulesState

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"
NOW = "2026-06-01T09:00:00Z"
KETAMINE = "SNOMED#781954001"
CASE: dict[str, Any] = {
    "name": "parity",
    "hook": "order-select",
    "patient": {"gender": "female", "age": 34},
    "data": [
        {"MedicationAdministration": {"medication": KETAMINE, "dose": "35 mg", "at": f"-{days}d"}}
        for days in (60, 53, 46, 39, 32, 25, 18, 11, 4)
    ]
    + [{"Observation": {"code": "LOINC#5794-3", "value": "1+", "at": "-3d"}}],
    "drafts": [
        {"MedicationRequest": {"id": "ket", "medication": KETAMINE, "dose": "35 mg", "start": "+1d"}},
        {"MedicationRequest": {"id": "esk", "medication": "Spravato", "dose": "84 mg", "start": "+2d"}},
    ],
    "selections": ["MedicationRequest/ket"],
    "expect": {"cards": []},
}


def _without_uuids(value: Any) -> Any:
    """Cards (and their suggestions) with every uuid blanked: each path mints its own."""
    if isinstance(value, dict):
        return {k: "<uuid>" if k == "uuid" else _without_uuids(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_uuids(v) for v in value]
    return value


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The case as a rule-test file; the same file is the shorthand patient `rules explain` reads."""
    folder = tmp_path_factory.mktemp("parity")
    path = folder / "case.yaml"
    path.write_text(yaml.safe_dump({"now": NOW, "rules": [str(RULES)], "tests": [CASE], **CASE}), encoding="utf-8")
    return path


def _rule_test_cards(path: Path) -> list[dict[str, Any]]:
    located = load_file(path)
    loaded = load_ruleset([RULES])
    assert loaded.ruleset is not None
    decision, problems = decide_case(loaded.ruleset, located, ("tests", 0), CASE, NOW)
    assert problems == []
    return decision.cards


def _explain(path: Path) -> dict[str, Any]:
    from cds_service.cli import main

    args = ["rules", "explain", "--patient", str(path), "--draft", str(path), "--hook", "order-select",
            "--select", "MedicationRequest/ket", "--rules", str(RULES), "--json"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _service_cards(tmp_path: Path) -> list[dict[str, Any]]:
    now = parse_instant(NOW)
    expander = Expander(now, TEST_PATIENT_ID)
    resources = [expander.patient(CASE["patient"])] + [expander.expand(item) for item in CASE["data"]]
    drafts = [expander.expand(item, draft=True) for item in CASE["drafts"]]
    rules = RulesState([RULES], reload_interval_s=0)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'parity.sqlite3'}", reload_interval_s=0)
    app = create_app(settings, rules_state=rules, clock=lambda: now)
    body = {
        "hook": "order-select",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/u1",
            "patientId": TEST_PATIENT_ID,
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": d} for d in drafts]},
            "selections": CASE["selections"],
        },
        "prefetch": prefetch_for(templates_for(rules.ruleset, "order-select"), TEST_PATIENT_ID, resources),
    }
    with loopback.serve(app) as url:
        response = requests.post(f"{url}/cds-services/kbladder-order-select", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["cards"]


def test_service_rule_test_and_explain_give_the_same_cards(inputs: Path, tmp_path: Path) -> None:
    from_test = _rule_test_cards(inputs)
    rules_fired = {card["source"]["topic"]["code"] for card in from_test}
    assert "KB-02" in rules_fired
    expected = _without_uuids(from_test)
    explained = _explain(inputs)
    assert _without_uuids(explained["cards"]) == expected
    kb13 = next(r for r in explained["results"] if r["rule"] == "KB-13")
    assert "indicator" not in kb13  # the unselected esketamine draft is not judged
    assert _without_uuids(_service_cards(tmp_path)) == expected


def test_explain_without_selection_judges_every_draft(inputs: Path) -> None:
    from cds_service.cli import main

    args = ["rules", "explain", "--patient", str(inputs), "--draft", str(inputs), "--hook", "order-select",
            "--rules", str(RULES), "--json"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    results = {r["rule"]: r for r in json.loads(result.output)["results"]}
    assert "indicator" in results["KB-13"]  # judged, fired (its card yields to KB-02's urinary warning)


def test_select_is_refused_for_a_hook_without_selections(inputs: Path) -> None:
    from cds_service.cli import main

    args = ["rules", "explain", "--patient", str(inputs), "--hook", "order-sign", "--select", "MedicationRequest/ket",
            "--rules", str(RULES)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--select" in result.output
