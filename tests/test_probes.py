"""/livez, /readyz and /healthz over real HTTP: what a load balancer and Kubernetes see of one replica."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from hookdata import serving
from sqlalchemy import create_engine

from cds_service.app import create_app
from cds_service.config import AuthSettings, Issuer, Settings
from cds_service.rules_state import RulesState
from cds_service.store import Store

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"
#: Public key material is never checked at start-up; a JWKS of the right shape enables auth.
JWKS = {"keys": [{"kid": "k1", "kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}]}


@pytest.fixture(scope="module")
def rules() -> RulesState:
    return RulesState([RULES], reload_interval_s=0)


@contextmanager
def replica(rules: RulesState, tmp_path: Path, **settings: Any) -> Iterator[tuple[str, Store]]:
    database_url = f"sqlite:///{tmp_path / 'probe.sqlite3'}"
    store = Store(database_url)
    app = create_app(Settings(database_url=database_url, reload_interval_s=0, **settings),
                     rules_state=rules, store=store)
    try:
        with serving(app) as url:
            yield url, store
    finally:
        store.dispose()


def test_livez_answers_even_without_rules(tmp_path: Path) -> None:
    with replica(RulesState([tmp_path / "nothing"], reload_interval_s=0), tmp_path) as (url, _):
        assert requests.get(f"{url}/livez", timeout=10).json() == {"status": "ok"}
        ready = requests.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["checks"]["rules"] == {"ok": False, "version": None}


def test_readyz_is_ready_with_rules_and_a_reachable_store(rules: RulesState, tmp_path: Path) -> None:
    with replica(rules, tmp_path) as (url, _):
        response = requests.get(f"{url}/readyz", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["rules"] == {"ok": True, "version": rules.ruleset.version}
    assert body["checks"]["store"] == {"ok": True}
    assert "pinnedRulesVersion" not in body["checks"]


def test_readyz_is_503_while_the_store_is_unreachable(rules: RulesState, tmp_path: Path) -> None:
    with replica(rules, tmp_path) as (url, store):
        store.dispose()
        reachable = store.engine
        store.engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none",
                                     connect_args={"connect_timeout": 1})
        down = requests.get(f"{url}/readyz", timeout=10)
        alive = requests.get(f"{url}/livez", timeout=10)  # liveness ignores the store: a restart cannot fix it
        store.engine = reachable
        back = requests.get(f"{url}/readyz", timeout=10)
    assert down.status_code == 503 and down.json()["checks"]["store"] == {"ok": False}
    assert down.json()["status"] == "not ready"
    assert alive.status_code == 200
    assert back.status_code == 200


def test_readyz_can_keep_replicas_that_share_one_database_in_rotation(rules: RulesState, tmp_path: Path) -> None:
    """readiness_requires_store: false — every replica shares one database; its outage must not take them
    all out of the load balancer, since hook calls are answered without it (store/outage.py)."""
    with replica(rules, tmp_path, readiness_requires_store=False) as (url, store):
        store.dispose()
        reachable = store.engine
        store.engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none",
                                     connect_args={"connect_timeout": 1})
        down = requests.get(f"{url}/readyz", timeout=10)
        health = requests.get(f"{url}/healthz", timeout=10)
        store.engine = reachable
    assert down.status_code == 200
    assert down.json()["checks"]["store"] == {"ok": True, "reachable": False, "required": False}
    assert health.json()["status"] == "degraded"


def test_readyz_holds_a_replica_back_whose_rules_are_not_the_pinned_version(rules: RulesState,
                                                                          tmp_path: Path) -> None:
    version = rules.ruleset.version
    with replica(rules, tmp_path, pinned_rules_version=version) as (url, _):
        pinned = requests.get(f"{url}/readyz", timeout=10)
    assert pinned.status_code == 200
    assert pinned.json()["checks"]["pinnedRulesVersion"] == {"ok": True, "expected": version, "actual": version}
    with replica(rules, tmp_path, pinned_rules_version="000000000000") as (url, _):
        other = requests.get(f"{url}/readyz", timeout=10)
        health = requests.get(f"{url}/healthz", timeout=10).json()
    assert other.status_code == 503
    assert other.json()["checks"]["pinnedRulesVersion"] == {"ok": False, "expected": "000000000000",
                                                             "actual": version}
    assert health["rules"]["pinnedVersion"] == "000000000000"


def test_probes_need_no_token_when_auth_is_on(rules: RulesState, tmp_path: Path) -> None:
    auth = AuthSettings(enabled=True, issuers=(Issuer(iss="https://ehr.example", jwks=JWKS),))
    with replica(rules, tmp_path, auth=auth, public_url="https://cds.example") as (url, _):
        assert requests.post(f"{url}/cds-services/kbladder-patient-view", json={}, timeout=10).status_code == 401
        for path in ("/livez", "/readyz", "/healthz"):
            assert requests.get(f"{url}{path}", timeout=10).status_code == 200, path
