"""Running the service: settings from environment and options, rule reload on SIGHUP, `kbladder serve`
as a real process (threaded werkzeug and gunicorn) with JSON logs and a graceful SIGTERM shutdown."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from outcomes import error_field, error_message
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from cds_service.app import create_app
from cds_service.config import ConfigError, Settings
from cds_service.fhir.client import FetchLimits
from cds_service.rules_state import RulesState

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"
KBLADDER = Path(sys.executable).parent / "kbladder"


# -- settings ------------------------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    settings = Settings.load({})
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8080, 1)
    assert settings.database_url == "sqlite:///var/kbladder.sqlite3"
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.cors_origins == ("*",)
    assert settings.fetch_limits == FetchLimits()
    assert settings.site_file is None and settings.public_url is None
    assert settings.allow_unauthenticated_fhir is False


def test_settings_environment_then_options() -> None:
    env = {"KBLADDER_PORT": "9001", "KBLADDER_HOST": "0.0.0.0", "KBLADDER_CORS_ORIGINS": "https://a.example, https://b",
           "KBLADDER_ALLOW_UNAUTHENTICATED_FHIR": "yes", "KBLADDER_FETCH_TIME_BUDGET_S": "3.5",
           "KBLADDER_SITE_FILE": "site.yaml", "KBLADDER_RELOAD_INTERVAL_S": "0", "OTHER": "x"}
    settings = Settings.load(env, port=9100, host=None)
    assert settings.port == 9100  # option beats environment
    assert settings.host == "0.0.0.0"  # None = option not given
    assert settings.cors_origins == ("https://a.example", "https://b")
    assert settings.allow_unauthenticated_fhir is True
    assert settings.fetch_limits.time_budget_s == 3.5
    assert settings.site_file == "site.yaml"
    assert settings.reload_interval_s == 0.0


@pytest.mark.parametrize(("env", "named"), [
    ({"KBLADDER_PORT": "eighty"}, "KBLADDER_PORT"),
    ({"KBLADDER_ALLOW_UNAUTHENTICATED_FHIR": "maybe"}, "KBLADDER_ALLOW_UNAUTHENTICATED_FHIR"),
    ({"KBLADDER_WORKERS": "0"}, "workers"),
    ({"KBLADDER_FETCH_MAX_PAGES": "x"}, "KBLADDER_FETCH_MAX_PAGES"),
])
def test_settings_errors_name_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.load(env)


# -- rule state ------------------------------------------------------------------------------------------------


@pytest.fixture
def rules_copy(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target, ignore=shutil.ignore_patterns("tests"))
    return target


def test_rules_state_starts_without_rules_and_recovers(rules_copy: Path) -> None:
    rule_file = rules_copy / "KB-02-hematuria-exposed.yaml"
    original = rule_file.read_text(encoding="utf-8")
    rule_file.write_text("id: [", encoding="utf-8")
    state = RulesState([rules_copy], reload_interval_s=0)
    assert state.ruleset is None and state.current.last_error
    client = create_app(Settings(database_url="sqlite:///:memory:"), rules_state=state).test_client()
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json["status"] == "unavailable"
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/u1", "patientId": "p1"}, "prefetch": {}}
    hook = client.post("/cds-services/kbladder-patient-view", json=body)
    assert hook.status_code == 503 and error_message(hook.json) == "no valid rule set is loaded"
    rule_file.write_text(original, encoding="utf-8")
    assert state.reload_if_changed() is True
    assert state.ruleset is not None and state.current.last_error == ()
    assert client.get("/healthz").status_code == 200
    assert state.reload_if_changed() is False  # nothing changed since


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reloads_rules(rules_copy: Path) -> None:
    state = RulesState([rules_copy], reload_interval_s=0)
    before = state.ruleset.version if state.ruleset else None
    previous = signal.getsignal(signal.SIGHUP)
    try:
        assert state.install_sighup() is True
        rule_file = rules_copy / "KB-02-hematuria-exposed.yaml"
        text = rule_file.read_text(encoding="utf-8")
        rule_file.write_text(re.sub(r"(?m)^version: .*$", "version: 9.9.9", text, count=1), encoding="utf-8")
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (state.ruleset and state.ruleset.version) == before:
            time.sleep(0.05)
        assert state.ruleset is not None and state.ruleset.version != before
        kb02 = state.ruleset.rule("KB-02")
        assert kb02 is not None and kb02.version == "9.9.9"
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_unexpected_error_is_a_bare_json_500_without_details(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    def explode(*_args: Any, **_kwargs: Any) -> None:
        raise ValueError(secret)

    secret = "Jane" + " Doe, born 1970-01-01"

    monkeypatch.setattr("cds_service.http.calls.run_hook", explode)
    client = create_app(Settings(database_url="sqlite:///:memory:"),
                        rules_state=RulesState([RULES], reload_interval_s=0)).test_client()
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/u1", "patientId": "p1"}, "prefetch": {}}
    with caplog.at_level(logging.ERROR):
        response = client.post("/cds-services/kbladder-patient-view", json=body)
    assert response.status_code == 500
    assert response.json == {"resourceType": "OperationOutcome", "issue": [
        {"severity": "fatal", "code": "exception", "diagnostics": "internal error"}]}
    records = [r for r in caplog.records if r.name == "cds_service.http"]
    assert records and records[0].getMessage() == "unhandled ValueError"
    assert any("explode" in frame for frame in records[0].fields["frames"])
    assert "Jane Doe" not in caplog.text


def test_require_https_fhir_refuses_plain_http_fhir_servers() -> None:
    settings = Settings(database_url="sqlite:///:memory:", require_https_fhir=True)
    client = create_app(settings, rules_state=RulesState([RULES], reload_interval_s=0)).test_client()
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "fhirServer": "http://ehr.example/fhir",
            "context": {"userId": "Practitioner/u1", "patientId": "p1"}}
    response = client.post("/cds-services/kbladder-patient-view", json=body)
    assert response.status_code == 400
    assert error_field(response.json) == "fhirServer"


# -- kbladder serve -----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(started: list[subprocess.Popen[bytes]], tmp_path: Path, *args: str,
           env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start `kbladder serve` in *tmp_path* (added to *started* at once, so teardown always stops it)."""
    port = _free_port()
    shutil.copytree(RULES, tmp_path / "rules", ignore=shutil.ignore_patterns("tests"), dirs_exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KBLADDER_")}
    environ.update(env or {})
    environ["KBLADDER_PORT"] = str(port)  # via click's envvar
    proc = subprocess.Popen([str(KBLADDER), "serve", *args], cwd=tmp_path, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started.append(proc)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"kbladder serve exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:  # not listening yet, or workers still booting
            pass
        time.sleep(0.1)
    pytest.fail("kbladder serve did not answer in time")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM first: gunicorn's master then stops its workers too
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    return err.decode()


def _hook(url: str, patient_id: str, token: str) -> requests.Response:
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/u1", "patientId": patient_id},
            # fhirServer that refuses connections: the token must still never be logged.
            "fhirServer": "http://127.0.0.1:9/fhir",
            "fhirAuthorization": {"access_token": token, "token_type": "Bearer", "expires_in": 60,
                                  "scope": "patient/*.read", "subject": "kbladder"},
            "prefetch": {"patient": {"resourceType": "Patient", "id": patient_id}}}
    return requests.post(f"{url}/cds-services/kbladder-patient-view", json=body, timeout=30,
                         headers={"Authorization": f"Bearer {token}"})


def test_serve_threaded_logs_json_without_phi_and_stops_on_sigterm(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    proc, url = _start(processes, tmp_path, "--rules", "rules", env={"KBLADDER_FETCH_TIME_BUDGET_S": "1"})
    assert (tmp_path / "var" / "kbladder.sqlite3").exists()  # default database, folder created
    token, patient_id = f"tok-{uuid.uuid4().hex}", f"phi-{uuid.uuid4().hex[:12]}"
    response = _hook(url, patient_id, token)
    assert response.status_code == 200
    assert {m["key"] for m in response.json()["extension"]["org.kbladder-cds.missingData"]} >= {"observation"}
    err = _stop(proc)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert any(line.get("msg") == "serving" for line in lines)
    assert any(line.get("path") == "/cds-services/kbladder-patient-view" and line.get("status") == 200
               for line in lines)
    assert any(line.get("msg") == "stopped" for line in lines)
    assert token not in err and patient_id not in err


def test_serve_with_gunicorn_workers(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    proc, url = _start(processes, tmp_path, "--workers", "2",
                       "--database-url", f"sqlite:///{tmp_path / 'db' / 'k.sqlite3'}")
    assert requests.get(f"{url}/cds-services", timeout=10).json()["services"]
    token, patient_id = f"tok-{uuid.uuid4().hex}", f"phi-{uuid.uuid4().hex[:12]}"
    assert _hook(url, patient_id, token).status_code == 200
    err = _stop(proc)
    assert token not in err and patient_id not in err
    assert (tmp_path / "db" / "k.sqlite3").exists()
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # gunicorn's lines too
    assert any(line["logger"] == "gunicorn.error" for line in lines)
    assert any(line.get("path") == "/cds-services" for line in lines)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_lets_the_request_in_flight_finish(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], threaded_httpserver: HTTPServer, workers: str
) -> None:
    """The FHIR server answers after 1 s; SIGTERM arrives meanwhile; the EHR still gets its answer."""
    arrived = threading.Event()

    def slow(_request: Request) -> Response:
        arrived.set()
        time.sleep(1.0)
        return Response(json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": []}),
                        content_type="application/fhir+json")

    threaded_httpserver.expect_request("/fhir/Observation").respond_with_handler(slow)
    proc, url = _start(processes, tmp_path, "--workers", workers,
                       env={"KBLADDER_FETCH_TIME_BUDGET_S": "5", "KBLADDER_FETCH_REQUEST_TIMEOUT_S": "5"})
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/u1", "patientId": "p1"},
            "fhirServer": threaded_httpserver.url_for("/fhir"),
            "fhirAuthorization": {"access_token": "t", "token_type": "Bearer", "expires_in": 60,
                                  "scope": "patient/*.read", "subject": "kbladder"},
            "prefetch": {"patient": {"resourceType": "Patient", "id": "p1"}, **{
                key: {"resourceType": "Bundle", "type": "searchset"}
                for key in ("medicationAdministration", "medicationRequest", "medicationStatement", "condition",
                            "diagnosticReport")}}}
    result: dict[str, Any] = {}

    def call() -> None:
        result["response"] = requests.post(f"{url}/cds-services/kbladder-patient-view", json=body, timeout=30)

    caller = threading.Thread(target=call)
    caller.start()
    assert arrived.wait(10), "the service never queried the FHIR server"
    proc.send_signal(signal.SIGTERM)
    caller.join(timeout=30)
    assert result["response"].status_code == 200
    assert result["response"].json() == {"cards": []}
    proc.communicate(timeout=30)
    assert proc.returncode == 0
