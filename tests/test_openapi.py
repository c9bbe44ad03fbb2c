"""The OpenAPI 3.1 contract: served at /openapi.json, equal to docs/openapi.json, valid OpenAPI, and fuzzed by
schemathesis over real HTTP (fixed examples per operation, fixed seed): no 5xx, every response conforms."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hookdata import serving
from hypothesis import HealthCheck, given, settings
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


def _dead_fhir(body: Any) -> Any:
    if isinstance(body, dict) and "fhirServer" in body:
        body["fhirServer"] = DEAD_FHIR
    return body


def fuzz(operation: Any, base_url: str) -> set[int]:
    """Run *operation* on EXAMPLES generated cases (derandomized: the same cases every run); their statuses."""
    seen: set[int] = set()

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        case.body = _dead_fhir(case.body)
        response = case.call(base_url=base_url, timeout=30)
        seen.add(response.status_code)
        case.validate_response(response, checks=CHECKS)

    run()
    return seen


def test_schemathesis_finds_no_5xx_and_every_response_conforms(live: str) -> None:
    schema = schemathesis.openapi.from_dict(json.loads(DOCUMENT.read_text(encoding="utf-8")))
    started = time.monotonic()
    statuses = {operation.label: fuzz(operation, live)
                for operation in (result.ok() for result in schema.get_all_operations())}
    elapsed = time.monotonic() - started
    print(f"schemathesis: {len(statuses)} operations x {EXAMPLES} examples in {elapsed:.1f} s; statuses "
          + "; ".join(f"{label}: {sorted(codes)}" for label, codes in sorted(statuses.items())))
    assert all(code < 500 for codes in statuses.values() for code in codes)
    hook_codes = set().union(*(codes for label, codes in statuses.items() if label.startswith("POST")))
    assert 200 in hook_codes and 400 in hook_codes  # both valid and invalid bodies were generated
