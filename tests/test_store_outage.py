"""A store outage never withholds advice and never lies about credentials (store/outage.py).

Against a REAL PostgreSQL that this test starts and stops itself (its own cluster from initdb on a free
port in a temporary folder, never the machine's shared server): with the database stopped, signed hook
calls are still verified and answered (replay check on the per-process fallback, one warning per outage,
visible in /healthz), card-log failures are counted, feedback answers 503 with Retry-After and a JSON
body; when the database is back, the claims made meanwhile are in it and feedback is stored once. A
multi-item feedback call whose second item fails inside PostgreSQL stores nothing.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hookdata import dipstick, ketamine_given
from sqlalchemy import text
from test_auth import ISS, PUBLIC, claims, keys, sign  # noqa: F401  (keys: session fixture)
from test_service_http import RULES, prefetch, request_body

from cds_service.app import create_app
from cds_service.config import AuthSettings, Issuer, Settings
from cds_service.governance.service import Governance
from cds_service.http.state import EXTENSION
from cds_service.rules_state import RulesState
from cds_service.store import Store
from cds_service.store.outage import OUTAGE, StoreOutage

PV = "kbladder-patient-view"


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
    return Path(found[-1]).parent


@dataclass
class OwnPostgres:
    """A throwaway PostgreSQL cluster: initdb'd in a temporary folder, on a free loopback port."""

    bin: Path
    data: Path
    port: int
    as_user: list[str]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", *args],
                       check=True, capture_output=True, timeout=90)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c fsync=off"
        self._ctl("-o", options, "-l", str(self.data / "server.log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[OwnPostgres]:
    bin_dir = _pg_bin()
    folder = Path(tempfile.mkdtemp(prefix="kbladder-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the postgres system user
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync"], check=True, capture_output=True, timeout=120)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pg = OwnPostgres(bin_dir, data, port, as_user)
    pg.start()
    try:
        yield pg
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Env:
    app: Flask
    store: Store
    outage: StoreOutage
    key: Any

    @property
    def governance(self) -> Governance:
        return self.app.extensions[EXTENSION].governance

    def token(self, jti: str | None = None, path: str = f"/cds-services/{PV}") -> str:
        return sign(self.key, claims(path, jti=jti or str(uuid.uuid4())), jku=None)

    def hook(self, token: str) -> Any:
        body = request_body(prefetch=prefetch(ketamine_given(), dipstick()))
        with self.app.test_client() as client:
            return client.post(f"/cds-services/{PV}", json=body, headers={"Authorization": f"Bearer {token}"})

    def feedback(self, items: list[dict[str, Any]]) -> Any:
        path = f"/cds-services/{PV}/feedback"
        with self.app.test_client() as client:
            return client.post(path, json={"feedback": items},
                               headers={"Authorization": f"Bearer {self.token(path=path)}"})

    def health(self) -> dict[str, Any]:
        with self.app.test_client() as client:
            return client.get("/healthz").get_json()


@pytest.fixture
def env(own_postgres: OwnPostgres, keys: Any) -> Iterator[Env]:  # noqa: F811
    key = keys["ES384"]
    store = Store(own_postgres.url)
    with store.engine.begin() as conn:  # a clean slate per test (the cluster is this module's own)
        conn.execute(text("TRUNCATE feedback, card_issue, jwt_replay"))
    issuer = Issuer(ISS, jwks={"keys": [key.public_jwk()]})
    settings = Settings(database_url=own_postgres.url, reload_interval_s=0, public_url=PUBLIC + "/",
                        auth=AuthSettings(enabled=True, issuers=(issuer,)))
    app = create_app(settings, rules_state=RulesState([RULES], reload_interval_s=0), store=store)
    yield Env(app, store, app.extensions[OUTAGE], key)
    app.extensions[EXTENSION].governance.close(5)
    store.dispose()


def feedback_items(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-23T10:00:00Z",
             "overrideReason": {"reason": card["overrideReasons"][0]}} for card in cards]


def test_hook_calls_are_verified_and_answered_while_postgres_is_down(
        env: Env, own_postgres: OwnPostgres, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cds_service.store")
    first = env.token()
    answered = env.hook(first)
    assert answered.status_code == 200 and answered.get_json()["cards"]
    assert env.hook(first).status_code == 401  # replay, decided by the store
    assert env.governance.flush(30)  # the first call's card log is written before the database stops

    own_postgres.stop()
    try:
        during = env.token()
        response = env.hook(during)
        assert response.status_code == 200, response.get_data(as_text=True)  # advice, not "invalid_token"
        cards = response.get_json()["cards"]
        assert cards
        assert env.hook(during).status_code == 401  # replay still refused: this process's cache
        assert env.hook(sign(env.key, {**claims(), "exp": 1}, jku=None)).status_code == 401  # still verified
        assert env.hook(env.token()).status_code == 200

        health = wait_for_health(env, lambda h: h["store"]["cardLogFailures"] >= 2)
        assert health["status"] == "degraded"
        store = health["store"]
        assert store["reachable"] is False and store["outage"] is True
        assert store["replayCheck"] == "per-process fallback" and store["fallbackClaims"] == 2
        # Both answered calls' card logs failed to write, none raised; they wait in the queue, none lost.
        assert store["cardLogFailures"] == 2 and store["cardLogPending"] == 2 and store["cardLogLost"] == 0
        warnings = [r for r in caplog.records if "store unreachable" in r.getMessage()]
        assert len(warnings) == 1  # once per outage, not once per call

        refused = env.feedback(feedback_items(cards[:2]))
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "30"
        assert refused.is_json and "retry" in refused.get_data(as_text=True)
    finally:
        own_postgres.start()

    env.outage.retry_interval_s = 0  # retry the store at once instead of after the back-off
    assert env.hook(env.token()).status_code == 200
    health = env.health()
    assert health["status"] == "ok" and health["store"]["outage"] is False
    assert env.hook(during).status_code == 401
    # The claim made during the outage was handed to the store: another process would refuse it too.
    now = datetime.now(UTC)
    assert env.store.claim_jti(ISS, jwt_id(during), now + timedelta(minutes=5), now) is False

    stored = env.feedback(feedback_items(cards[:2]))  # the EHR's retry after our 503
    assert stored.status_code == 200
    assert sum(env.store.feedback_count(card_uuid=c["uuid"]) for c in cards[:2]) == len(cards[:2])
    # The card log queued during the outage reaches the store once it answers: nothing issued was lost.
    assert env.governance.flush(30)
    assert all(env.store.issued_card(c["uuid"]) is not None for c in cards)
    assert wait_for_health(env, lambda h: h["store"]["cardLogPending"] == 0)["store"]["cardLogLost"] == 0


def wait_for_health(env: Env, ready: Callable[[dict[str, Any]], bool], timeout_s: float = 20.0) -> dict[str, Any]:
    """/healthz once *ready* holds (the card log is written by a background thread), or the last one seen."""
    deadline = time.monotonic() + timeout_s
    health = env.health()
    while not ready(health) and time.monotonic() < deadline:
        time.sleep(0.05)
        health = env.health()
    return health


def jwt_id(token: str) -> str:
    import jwt

    return jwt.decode(token, options={"verify_signature": False})["jti"]


def test_multi_item_feedback_is_stored_all_or_nothing(env: Env) -> None:
    """The second item fails inside PostgreSQL (a trigger raises): the first is not kept either; 503."""
    cards = [card for _ in range(2) for card in env.hook(env.token()).get_json()["cards"][:1]]
    assert len(cards) == 2
    assert env.governance.flush(30)  # both cards are in the issue log (feedback names issued cards only)
    items = feedback_items(cards[:2])
    first, second = cards[0]["uuid"], cards[1]["uuid"]
    with env.store.engine.begin() as conn:
        conn.execute(text(f"""
            CREATE OR REPLACE FUNCTION kbladder_fail_second() RETURNS trigger AS $$
            BEGIN
              IF NEW.card_uuid = '{second}' THEN RAISE EXCEPTION 'disk full (simulated)'; END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql"""))
        conn.execute(text("CREATE TRIGGER kbladder_fail_second BEFORE INSERT ON feedback "
                          "FOR EACH ROW EXECUTE FUNCTION kbladder_fail_second()"))
    try:
        refused = env.feedback(items)
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert env.store.feedback_count(card_uuid=first) == 0  # not half-stored
    finally:
        with env.store.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER kbladder_fail_second ON feedback"))
    assert env.feedback(items).status_code == 200
    assert env.store.feedback_count(card_uuid=first) == 1 and env.store.feedback_count(card_uuid=second) == 1
