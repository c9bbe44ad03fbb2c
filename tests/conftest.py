"""Shared test fixtures.

- `fhir_server`: a real FHIR R4 server (sekmet-fhir 0.1.1, bearer auth) loaded with synthetic patients,
  one per test session. Installed into `.venv-fhir` by scripts/ensure-fhir-server.sh on first use.
- `secret_token`, `no_token_in_logs`: a per-test bearer token, and a guard that fails the test if that
  token (or `fhir_server.token`) shows up in any log record (checklist R3).
- `threaded_httpserver`, `other_httpserver`: pytest-httpserver servers that answer requests concurrently
  (for slow and faulty FHIR servers), cleared between tests.
- `postgres_url`: a reachable PostgreSQL (fails, never skips, when there is none); `database_url`: a fresh
  empty database per test, parametrised over SQLite (a file) and PostgreSQL (a unique schema).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import secrets
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from browser import browser  # noqa: F401  (the session-wide headless Chromium fixture)
from pytest_httpserver import HTTPServer
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError

from cds_service.store import normalise_database_url

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = REPO / "tests" / "data" / "synthetic-fhir-r4"  # inside the repo: a bare clone must pass
SEKMET = REPO / ".venv-fhir" / "bin" / "sekmet"
MRN_SYSTEM = "http://hospital.smarthealthit.org"
# Loaded into every fhir_server: the smallest patient (462 entries, 289 Observations, a control without
# urinalysis or MedicationAdministration; see the README next to the files). Others on demand with
# `fhir_server.load_synthetic(stem)`: loading costs ~1 s per 1,000 entries.
DEFAULT_SYNTHETIC = ("Crystle_Aufderhar_b42c4d81",)
PAGING_OBSERVATIONS = 27  # > 20 (sekmet's default page size) so paging is really exercised
PAGING_MRN = "kbladder-paging-1"
PG_ENV = "KBLADDER_TEST_POSTGRES_URL"
PG_CANDIDATES = tuple(f"postgresql+psycopg://{user}@127.0.0.1:5432/test" for user in ("postgres", "root"))
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


@dataclass
class FhirTestServer:
    """A running sekmet FHIR server: `base_url` (…/fhir) and a valid bearer `token`."""

    base_url: str
    token: str
    patient_ids: dict[str, str] = field(default_factory=dict)  # file stem / PAGING_MRN -> server Patient.id
    paging_patient_id: str = ""  # has exactly `paging_observations` Observations, nothing else
    paging_observations: int = PAGING_OBSERVATIONS
    log_path: Path | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Accept": "application/fhir+json",
                "Content-Type": "application/fhir+json"}

    def post_bundle(self, body: bytes | dict[str, Any]) -> dict[str, Any]:
        """POST a transaction Bundle; returns the transaction-response."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        resp = requests.post(self.base_url, data=data, headers=self.headers(), timeout=120)
        assert resp.status_code == 200, f"transaction failed: HTTP {resp.status_code} {resp.text[:500]}"
        return resp.json()

    def load_synthetic(self, stem: str) -> str:
        """Load `<stem>.json.gz` from tests/data/synthetic-fhir-r4 once; returns the server Patient.id."""
        if stem not in self.patient_ids:
            response = self.post_bundle(gzip.decompress((SYNTHETIC / f"{stem}.json.gz").read_bytes()))
            locations = [e["response"]["location"] for e in response["entry"]]
            self.patient_ids[stem] = next(
                loc.split("Patient/")[1].split("/")[0] for loc in locations if "/Patient/" in loc)
        return self.patient_ids[stem]

    def patient_by_mrn(self, mrn: str, system: str = MRN_SYSTEM) -> str:
        """Server id of the Patient with this identifier (the server assigns ids on load)."""
        resp = requests.get(f"{self.base_url}/Patient", params={"identifier": f"{system}|{mrn}"},
                            headers=self.headers(), timeout=10)
        resp.raise_for_status()
        entries = [e for e in resp.json().get("entry", []) if e["resource"]["resourceType"] == "Patient"]
        assert len(entries) == 1, f"expected one Patient with identifier {system}|{mrn}"
        return entries[0]["resource"]["id"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _paging_bundle() -> dict[str, Any]:
    """One patient with PAGING_OBSERVATIONS urine haemoglobin dipstick Observations."""
    patient_ref = "urn:uuid:7f3b6c1e-0000-4000-8000-000000000001"
    entries: list[dict[str, Any]] = [{
        "fullUrl": patient_ref,
        "resource": {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": PAGING_MRN}],
                     "name": [{"family": "Paging", "given": ["Test"]}], "gender": "female",
                     "birthDate": "1990-01-01"},
        "request": {"method": "POST", "url": "Patient"},
    }]
    for i in range(PAGING_OBSERVATIONS):
        entries.append({
            "fullUrl": f"urn:uuid:7f3b6c1e-0000-4000-8000-{i + 2:012d}",
            "resource": {
                "resourceType": "Observation", "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                          "code": "laboratory"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "5794-3",
                                     "display": "Hemoglobin [Presence] in Urine by Test strip"}]},
                "subject": {"reference": patient_ref},
                "effectiveDateTime": f"2026-01-{(i % 28) + 1:02d}T10:{i % 60:02d}:00Z",
                "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "167297006",
                                                     "display": "Urine blood test = negative"}]},
            },
            "request": {"method": "POST", "url": "Observation"},
        })
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _ensure_sekmet() -> float:
    """Install sekmet if needed; returns the seconds it took (≈0 when already installed)."""
    started = time.monotonic()
    proc = subprocess.run([str(REPO / "scripts" / "ensure-fhir-server.sh")], cwd=REPO,
                          capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0 or not SEKMET.exists():
        pytest.fail(f"could not install sekmet-fhir (scripts/ensure-fhir-server.sh):\n{proc.stderr[-2000:]}")
    return time.monotonic() - started


def _sekmet_env(config: Path) -> dict[str, str]:
    """Our environment without SEKMET_* overrides (they would beat settings.yaml), plus the config path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
    env["SEKMET_CONFIG"] = str(config)
    return env


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirTestServer]:
    """A real sekmet FHIR R4 server on a free loopback port, bearer auth, synthetic data loaded."""
    install_s = _ensure_sekmet()
    workdir = tmp_path_factory.mktemp("sekmet")
    port = _free_port()
    token = f"test-token-{secrets.token_hex(8)}"
    base_url = f"http://127.0.0.1:{port}/fhir"
    (workdir / "settings.yaml").write_text(
        f"base_url: {base_url}\n"
        f"host: 127.0.0.1\n"
        f"port: {port}\n"
        f"data_dir: {workdir / 'data'}\n"
        f"server_auth:\n  types: [bearer]\n  tokens: [{token}]\n"
        f"simulator:\n  enabled: false\n"
        f"log_inbound: false\n"
    )
    log_path = workdir / "sekmet.log"
    started = time.monotonic()
    with log_path.open("wb") as log_file:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([str(SEKMET), "serve"], cwd=workdir, stdout=log_file,
                                stderr=subprocess.STDOUT, env=_sekmet_env(workdir / "settings.yaml"))
    try:
        # /fhir/metadata answers 200 without a token even in bearer mode (everything else: 401).
        while True:
            if proc.poll() is not None:
                pytest.fail(f"sekmet exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
            try:
                if requests.get(f"{base_url}/metadata", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() - started > 30:
                pytest.fail(f"sekmet did not answer within 30 s:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        up_s = time.monotonic() - started

        server = FhirTestServer(base_url=base_url, token=token, log_path=log_path)
        for stem in DEFAULT_SYNTHETIC:
            server.load_synthetic(stem)
        server.post_bundle(_paging_bundle())
        server.paging_patient_id = server.patient_ids[PAGING_MRN] = server.patient_by_mrn(PAGING_MRN)
        print(f"\nsekmet: install/check {install_s:.1f} s, up in {up_s:.1f} s, "
              f"data loaded in {time.monotonic() - started - up_s:.1f} s")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def _threaded_httpservers() -> Iterator[list[HTTPServer]]:
    """Two loopback servers that answer concurrently, started once (stopping one costs up to 0.5 s)."""
    servers = [HTTPServer(host="127.0.0.1", port=0, threaded=True) for _ in range(2)]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.clear()
        server.stop()


@pytest.fixture
def threaded_httpserver(_threaded_httpservers: list[HTTPServer]) -> Iterator[HTTPServer]:
    """Like pytest-httpserver's `httpserver`, but handlers run concurrently (slow-server tests)."""
    server = _threaded_httpservers[0]
    server.clear()
    yield server
    server.clear()


@pytest.fixture
def other_httpserver(_threaded_httpservers: list[HTTPServer]) -> Iterator[HTTPServer]:
    """A second server on another port, e.g. to prove that nothing is sent to it."""
    server = _threaded_httpservers[1]
    server.clear()
    yield server
    server.clear()


@pytest.fixture
def secret_token() -> str:
    """A bearer token unique to this test, for fake servers."""
    return f"secret-token-{secrets.token_hex(8)}"


@pytest.fixture
def no_token_in_logs(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Capture all logging at DEBUG; fail if a token this test uses appears in any record or traceback."""
    tokens = [request.getfixturevalue("secret_token")] if "secret_token" in request.fixturenames else []
    if "fhir_server" in request.fixturenames:
        tokens.append(request.getfixturevalue("fhir_server").token)
    caplog.set_level(logging.DEBUG)
    yield
    # caplog.records/text hold only the current phase (teardown here): look at every phase.
    records = [r for when in ("setup", "call", "teardown") for r in caplog.get_records(when)]
    formatter = logging.Formatter("%(message)s")  # format() adds traceback and stack info
    for token in tokens:
        for record in records:
            assert token not in formatter.format(record), f"bearer token logged by {record.name}"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A reachable PostgreSQL URL; fails (never skips) with instructions when there is none."""
    candidates = (os.environ[PG_ENV],) if os.environ.get(PG_ENV) else PG_CANDIDATES
    errors: list[str] = []
    for candidate in candidates:
        engine = create_engine(normalise_database_url(candidate), connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return candidate
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", exc)).strip()[:200]
            errors.append(f"{make_url(candidate).render_as_string()}: {reason}")
        finally:
            engine.dispose()
    pytest.fail(
        "PostgreSQL is not reachable, so the PostgreSQL store tests cannot run.\n"
        + "\n".join(errors)
        + f"\nStart it with: {PG_START}\n(or point {PG_ENV} at a server)",
        pytrace=False,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database per test: a new SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/nested/dir/kbladder.db"
        return
    base = request.getfixturevalue("postgres_url")
    schema = f"kbt_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalise_database_url(base), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = normalise_database_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
