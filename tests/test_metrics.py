"""Prometheus metrics scraped over real HTTP: after a few hook calls, after reloads, after refused tokens, and
summed over two gunicorn workers. No label may carry a patient, user, token or free text."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from hookdata import dipstick, ketamine_given, serving
from prometheus_client.parser import text_string_to_metric_families
from test_service_http import prefetch, request_body
from test_service_run import _start, _stop

from cds_service.app import create_app
from cds_service.cdshooks import HOOKS
from cds_service.config import AuthSettings, Issuer, Settings
from cds_service.engine.cards import EXT
from cds_service.metrics import fhir_failure_reason, jwt_reason
from cds_service.rules_state import RulesState
from cds_service.store import Store

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"
PV = "kbladder-patient-view"
JWKS = {"keys": [{"kid": "k1", "kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}]}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> tuple[str, Samples]:
    """The exposition text and its samples keyed by (name, sorted labels)."""
    response = requests.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return response.text, samples


def rule_of(card: dict[str, Any]) -> str:
    """The rule a card names; cards about the check itself (checks incomplete) count under "none"."""
    return card.get("extension", {}).get(f"{EXT}.rule", {}).get("id", "none")


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def assert_labels_are_closed_sets(samples: Samples, ruleset_version: str) -> None:
    """Every label value comes from a known vocabulary: never an id, a path or a message."""
    rule_ids = {p.stem.split("-", 2)[0] + "-" + p.stem.split("-", 2)[1] for p in RULES.glob("KB-*.yaml")}
    allowed = {
        "hook": set(HOOKS) | {"none"},
        "rule": rule_ids | {"none"},
        "indicator": {"info", "warning", "critical", "other"},
        "method": {"GET", "POST", "OPTIONS", "HEAD", "PUT", "DELETE", "PATCH", "other"},
        "outcome": {"ok", "refused"},
    }
    for (name, labels), _ in samples.items():
        for key, val in labels:
            if key in allowed:
                assert val in allowed[key], (name, key, val)
            elif key == "status":
                assert val.isdigit() and len(val) == 3, (name, val)
            elif key == "route":
                assert val == "unmatched" or val.startswith("/"), (name, val)
                assert "{" not in val and "p1" not in val
            elif key == "reason":
                assert val.replace("_", "").isalnum() and val == val.lower(), (name, val)
            elif key == "version":
                assert len(val) == len(ruleset_version) and val.isalnum(), (name, val)
            elif key != "le":
                pytest.fail(f"unexpected label {key} on {name}")


@contextmanager
def app_at(rules: RulesState, tmp_path: Path, **settings: Any) -> Iterator[str]:
    database_url = f"sqlite:///{tmp_path / 'metrics.sqlite3'}"
    store = Store(database_url)
    try:
        with serving(create_app(Settings(database_url=database_url, reload_interval_s=0, **settings),
                                rules_state=rules, store=store)) as url:
            yield url
    finally:
        store.dispose()


def test_metrics_after_a_few_hook_calls(tmp_path: Path) -> None:
    rules = RulesState([RULES], reload_interval_s=0)
    pid = f"phi-{uuid.uuid4().hex[:10]}"
    with app_at(rules, tmp_path) as url:
        calls = [
            request_body(pid=pid, prefetch=prefetch(ketamine_given(pid), dipstick(pid), pid=pid)),
            request_body(pid=pid, prefetch=prefetch(dipstick(pid, value="negative"), pid=pid)),
            # a malformed Observation: the rule that reads it is undecided
            request_body(pid=pid, prefetch=prefetch(ketamine_given(pid), {**dipstick(pid, rid="bad"),
                                                                          "effectiveDateTime": "x"}, pid=pid)),
            # the client says the Observation search failed (P4)
            request_body(pid=pid, prefetch={**prefetch(ketamine_given(pid), pid=pid), "observation": {
                "resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "too-costly"}]}}),
        ]
        responses = [requests.post(f"{url}/cds-services/{PV}", json=body, timeout=30) for body in calls]
        assert [r.status_code for r in responses] == [200, 200, 200, 200]
        no_access = requests.post(f"{url}/cds-services/{PV}", json=request_body(pid=pid), timeout=30)
        assert no_access.status_code == 412
        bad = requests.post(f"{url}/cds-services/{PV}", json={"hook": "patient-view"}, timeout=30)
        assert bad.status_code == 400
        assert requests.get(f"{url}/cds-services", timeout=10).status_code == 200
        text, samples = scrape(url)

    assert pid not in text and "Practitioner" not in text
    assert not any(body["hookInstance"] in text for body in calls)
    version = rules.ruleset.version
    assert_labels_are_closed_sets(samples, version)

    hook = "kbladder_hook_duration_seconds"
    assert value(samples, f"{hook}_count", hook="patient-view", status="200") == 4
    assert value(samples, f"{hook}_count", hook="patient-view", status="412") == 1
    assert value(samples, f"{hook}_count", hook="none", status="400") == 1  # refused before the hook was known
    assert value(samples, f"{hook}_sum", hook="patient-view", status="200") > 0

    cards = Counter((rule_of(c), c["indicator"]) for r in responses for c in r.json()["cards"])
    assert sum(cards.values()) >= 1
    for (rule, indicator), count in cards.items():
        assert value(samples, "kbladder_cards_total", rule=rule, indicator=indicator) == count
    undecided = Counter(u["rule"] for r in responses for u in r.json().get("extension", {}).get(f"{EXT}.undecided", []))
    assert undecided["KB-02"] >= 1
    for rule, count in undecided.items():
        assert value(samples, "kbladder_rule_undecided_total", rule=rule) == count

    missing_keys = len(no_access.json()["issue"][0]["expression"])
    assert value(samples, "kbladder_fhir_fetch_failures_total", reason="no_fhir_access") == missing_keys
    assert value(samples, "kbladder_fhir_fetch_failures_total", reason="prefetch_outcome") == 1

    assert value(samples, "kbladder_rule_set_info", version=version) == 1
    assert value(samples, "kbladder_rules_loaded") == len(rules.ruleset.rules)
    assert value(samples, "kbladder_http_requests_total", route="/cds-services", method="GET", status="200") == 1
    assert value(samples, "kbladder_http_requests_total", route="/cds-services/<service_id>", method="POST",
                 status="200") == 4
    assert ("kbladder_rule_suppressed_total", ()) not in samples  # a labelled family: no bare sample


def test_reloads_ok_and_refused_and_the_live_version(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    shutil.copytree(RULES, folder, ignore=shutil.ignore_patterns("tests"))
    rules = RulesState([folder], reload_interval_s=0)
    first = rules.ruleset.version
    rule_file = next(folder.glob("KB-02-*.yaml"))
    good = rule_file.read_text(encoding="utf-8")
    with app_at(rules, tmp_path) as url:
        rule_file.write_text(good + "\nnot: [valid", encoding="utf-8")
        assert rules.reload() is False
        rule_file.write_text(good + "\n# edited\n", encoding="utf-8")
        assert rules.reload() is True
        _, samples = scrape(url)
    second = rules.ruleset.version
    assert second != first
    assert value(samples, "kbladder_rule_reloads_total", outcome="refused") == 1
    assert value(samples, "kbladder_rule_reloads_total", outcome="ok") == 1
    assert value(samples, "kbladder_rule_set_info", version=second) == 1
    assert value(samples, "kbladder_rule_set_info", version=first) == 0


def test_jwt_refusals_are_counted_by_reason(tmp_path: Path) -> None:
    auth = AuthSettings(enabled=True, issuers=(Issuer(iss="https://ehr.example", jwks=JWKS),))
    token = f"secret-{uuid.uuid4().hex}"
    with app_at(RulesState([RULES], reload_interval_s=0), tmp_path, auth=auth,
                public_url="https://cds.example") as url:
        hook = f"{url}/cds-services/{PV}"
        assert requests.post(hook, json={}, timeout=10).status_code == 401
        assert requests.post(hook, json={}, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 401
        text, samples = scrape(url)  # /metrics needs no token, like the probes
    assert token not in text
    assert value(samples, "kbladder_jwt_refusals_total", reason="no_authorization_header") == 1
    assert value(samples, "kbladder_jwt_refusals_total", reason="not_a_jws_compact_token") == 1


@pytest.mark.parametrize(("text", "reason"), [
    ("HTTP 404", "http_404"), ("HTTP 503", "http_503"), ("time budget exceeded", "timeout"),
    ("connection failed", "connection"), ("invalid JSON", "invalid_json"), ("response too large", "too_large"),
    ("page limit reached (10 pages)", "limit"), ("paging loop", "paging"), ("redirect refused", "redirect"),
    ("prefetch OperationOutcome", "prefetch_outcome"), ("no FHIR server access", "no_fhir_access"),
    ("Patient p123 not found for token abc", "other"),
])
def test_fhir_failure_texts_map_to_a_closed_set(text: str, reason: str) -> None:
    assert fhir_failure_reason(text) == reason


def test_jwt_reasons_are_slugs() -> None:
    assert jwt_reason("jti replayed") == "jti_replayed"
    assert jwt_reason("not yet valid (nbf)") == "not_yet_valid_nbf"
    assert jwt_reason("") == "other"


def test_two_gunicorn_workers_report_one_sum(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    """Multi-process mode: whichever worker answers the scrape, the counts cover both workers."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")  # a previous run's file: removed at start
    proc, url = _start(processes, tmp_path, "--workers", "2", "--rules", "rules",
                       env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    calls, cards = 12, Counter()
    for _ in range(calls):
        body = request_body(prefetch=prefetch(ketamine_given(), dipstick()))
        response = requests.post(f"{url}/cds-services/{PV}", json=body, timeout=30)
        assert response.status_code == 200
        cards.update((rule_of(c), c["indicator"]) for c in response.json()["cards"])
    assert cards
    for _ in range(6):  # several scrapes land on both workers; each must see all calls
        _, samples = scrape(url)
        assert value(samples, "kbladder_hook_duration_seconds_count", hook="patient-view", status="200") == calls
        for (rule, indicator), count in cards.items():
            assert value(samples, "kbladder_cards_total", rule=rule, indicator=indicator) == count
    assert not (metrics_dir / "counter_999999.db").exists()
    assert any(p.name.startswith("counter_") for p in metrics_dir.glob("*.db"))
    _stop(proc)
    assert metrics_dir.exists()  # the operator's folder is kept


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()



def test_serve_makes_and_removes_its_own_metrics_folder(tmp_path: Path,
                                                        processes: list[subprocess.Popen[bytes]]) -> None:
    """No folder given: a private one under TMPDIR, removed by the master (not by a worker leaving early)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc, url = _start(processes, tmp_path, "--workers", "2", "--rules", "rules", env={"TMPDIR": str(scratch)})
    body = request_body(prefetch=prefetch(ketamine_given(), dipstick()))
    response = requests.post(f"{url}/cds-services/{PV}", json=body, timeout=30)
    assert response.status_code == 200
    (folder,) = scratch.glob("kbladder-metrics-*")
    assert any(folder.glob("*.db"))
    _, samples = scrape(url)
    card = response.json()["cards"][0]
    assert value(samples, "kbladder_cards_total", rule=rule_of(card), indicator=card["indicator"]) == 1
    _stop(proc)
    assert not folder.exists()
