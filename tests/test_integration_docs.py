"""docs/integration.md is executed: its curl lines against a live service, its JWT walk-through with the
sample key pair, and both registration configs. An integrator copying from the page gets what it says."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from hookdata import serving

from cds_service.app import create_app
from cds_service.cdshooks import HOOKS, response_problems
from cds_service.config import Settings
from cds_service.rules_state import RulesState
from cds_service.store import Store

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "integration.md"
EXAMPLES = REPO / "docs" / "examples"
JWT_DIR = EXAMPLES / "jwt"
#: The examples are dated for this instant (the page says so).
EXAMPLE_NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
DOC_BASE = "http://127.0.0.1:8080"
CURL = re.compile(r"^curl .*$", re.M)
#: The card each example answers with, where it is not KB-02's warning (the page says which).
EXPECTED = {"appointment-book": ("KB-05", "info")}


@pytest.fixture(scope="module")
def rules() -> RulesState:
    return RulesState([REPO / "rules"], reload_interval_s=0)


def curl_lines() -> list[str]:
    return CURL.findall(DOC.read_text(encoding="utf-8"))


def test_every_served_hook_has_an_example_and_a_curl_line() -> None:
    documented = {re.search(r"@docs/examples/([a-z-]+)\.json", line).group(1) for line in curl_lines()}
    examples = {p.stem for p in EXAMPLES.glob("*.json")}
    assert documented == examples == set(HOOKS)


def test_the_curl_lines_answer_as_the_page_says(rules: RulesState, tmp_path: Path) -> None:
    # Each line is its own EHR session: a card shown at order-select is, by design, not repeated at
    # order-sign for the same patient, user and draft (issue 12), so each line gets a fresh store.
    for n, line in enumerate(curl_lines()):
        database_url = f"sqlite:///{tmp_path / f'docs-{n}.sqlite3'}"
        store = Store(database_url)
        app = create_app(Settings(database_url=database_url, reload_interval_s=0), rules_state=rules, store=store,
                         clock=lambda: EXAMPLE_NOW)
        try:
            with serving(app) as url:
                argv = shlex.split(line.replace(DOC_BASE, url))
                done = subprocess.run(argv, cwd=REPO, capture_output=True, timeout=60, check=True)
                body = json.loads(done.stdout)
                assert response_problems(body) == [], line
                (card,) = body["cards"]
                rule, indicator = EXPECTED.get(re.search(r"examples/([a-z-]+)\.json", line).group(1),
                                               ("KB-02", "warning"))
                assert card["indicator"] == indicator, line
                assert card["extension"]["org.kbladder-cds.rule"]["id"] == rule
                assert card["summary"] in DOC.read_text(encoding="utf-8")
                if rule == "KB-05":  # the booking is what a clinician may drop, never the standing order
                    actions = [a for s in card["suggestions"] for a in s["actions"]]
                    assert actions == [{"type": "delete", "resourceId": "Appointment/proposed-session-1",
                                        "description": "Do not book this appointment (the proposed session)"}]
        finally:
            store.dispose()


def sample_token(aud: str, **header: Any) -> str:
    """The page's Python snippet, verbatim in substance."""
    claims = json.loads((JWT_DIR / "claims.json").read_text(encoding="utf-8"))
    now = int(time.time())
    claims.update(iat=now, nbf=now - 300, exp=now + 300, jti=str(uuid.uuid4()), aud=aud)
    key = (JWT_DIR / "sample-private-key.pem").read_text(encoding="utf-8")
    return jwt.encode(claims, key, algorithm="RS384", headers={"kid": "sample-ehr-2026", "typ": "JWT", **header})


@pytest.fixture
def epic(rules: RulesState, tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    database_url = f"sqlite:///{tmp_path / 'epic.sqlite3'}"
    settings = Settings.load({}, config=EXAMPLES / "config-epic.yaml", database_url=database_url,
                             host="127.0.0.1")
    store = Store(database_url)
    try:
        with serving(create_app(settings, rules_state=rules, store=store)) as url:
            yield url, settings
    finally:
        store.dispose()


def test_jwt_walk_through_with_the_epic_config(epic: tuple[str, Settings]) -> None:
    url, settings = epic
    assert settings.public_url == "https://cds.hospital.example/kbladder"
    assert settings.auth.issuers[0].algorithms == ("RS384",)
    path = "/cds-services/kbladder-patient-view"
    body = json.loads((EXAMPLES / "patient-view.json").read_text(encoding="utf-8"))
    call = requests.post(url + path, json=body, timeout=30,
                         headers={"Authorization": f"Bearer {sample_token(settings.public_url + path)}"})
    assert call.status_code == 200, call.text
    issued = call.json()["cards"][0]["uuid"]  # feedback is accepted only for a card this service issued
    # The same claims with the hook's aud are refused on the feedback URL: aud is the exact path.
    feedback = {"feedback": [{"card": issued, "outcome": "overridden",
                              "outcomeTimestamp": "2026-12-02T09:01:00Z"}]}
    wrong = requests.post(url + path + "/feedback", json=feedback, timeout=30,
                          headers={"Authorization": f"Bearer {sample_token(settings.public_url + path)}"})
    assert wrong.status_code == 401
    right = requests.post(url + path + "/feedback", json=feedback, timeout=30,
                          headers={"Authorization": f"Bearer {sample_token(settings.public_url + path + '/feedback')}"})
    assert right.status_code == 200, right.text
    assert requests.post(url + path, json=body, timeout=30).status_code == 401  # no token


def test_oracle_config_refuses_a_jku_outside_the_published_list(rules: RulesState, tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'oracle.sqlite3'}"
    settings = Settings.load({}, config=EXAMPLES / "config-oracle.yaml", database_url=database_url,
                             host="127.0.0.1")
    issuer = settings.auth.issuers[0]
    assert issuer.iss == "https://cds-hooks.cerner.com" and issuer.jku == ("https://authorization.cerner.com/jwk",)
    store = Store(database_url)
    path = "/cds-services/kbladder-patient-view"
    try:
        with serving(create_app(settings, rules_state=rules, store=store)) as url:
            token = sample_token(settings.public_url + path, jku="https://keys.attacker.example/jwk")
            refused = requests.post(url + path, timeout=30, headers={"Authorization": f"Bearer {token}"},
                                    json=json.loads((EXAMPLES / "patient-view.json").read_text(encoding="utf-8")))
    finally:
        store.dispose()
    assert refused.status_code == 401
    assert refused.json()["issue"][0]["code"] == "login"
