"""One FHIR budget per hook call: one deadline and one byte allowance for searches, pages and Medication reads.

No timed assertion here (figures are in ``python -m bench.budget``): the tests check WHAT the service
reports when the budget runs out — a Medication read that starts late gets only what is left of the call's
time, and pages beyond the call's byte allowance are missing data, never a crash or a silent all-clear.
"""

from __future__ import annotations

import gzip
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from hookdata import bundle, dipstick, ketamine_by_reference, ketamine_product, patient
from pytest_httpserver import HTTPServer
from test_service_http import RULES, request_body
from werkzeug.wrappers import Request, Response

from cds_service.app import create_app
from cds_service.config import Settings
from cds_service.fhir.client import CallBudget, FetchLimits, FhirClient
from cds_service.rules_state import RulesState
from cds_service.store import Store

EXT = "org.kbladder-cds"


@pytest.fixture(scope="module")
def rules() -> RulesState:
    state = RulesState([RULES], reload_interval_s=0)
    assert state.ruleset is not None
    return state


@pytest.fixture
def app_with(rules: RulesState) -> Iterator[Any]:
    stores: list[Store] = []

    def make(limits: FetchLimits) -> Flask:
        store = Store("sqlite://")
        stores.append(store)
        return create_app(Settings(database_url="sqlite://", reload_interval_s=0, fetch_limits=limits),
                          rules_state=rules, store=store)

    yield make
    for store in stores:
        store.dispose()


class DelayedFhir:
    """Answers every search with its type's resources after a per-type delay (Medication reads too)."""

    def __init__(self, server: HTTPServer, resources: list[dict[str, Any]], delays: dict[str, float]) -> None:
        self.resources, self.delays = resources, delays
        server.expect_request(re.compile("^/fhir/"), method="GET").respond_with_handler(self._answer)
        self.base = server.url_for("/fhir")

    def _answer(self, request: Request) -> Response:
        rtype = request.path.removeprefix("/fhir/").split("/")[0]
        time.sleep(self.delays.get(rtype, 0))
        if rtype == "Patient":
            return Response(json.dumps(patient()), content_type="application/fhir+json")
        found = [r for r in self.resources if r["resourceType"] == rtype]
        return Response(json.dumps(bundle(*found)), content_type="application/fhir+json")


def fhir_call(base: str, token: str) -> dict[str, Any]:
    return request_body(fhirServer=base, fhirAuthorization={
        "access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read",
        "subject": "kbladder-cds"})


def missing_of(response: Any) -> dict[str, str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return {m["key"]: m["reason"] for m in response.get_json().get("extension", {}).get(f"{EXT}.missingData", [])}


def test_a_slow_medication_read_gets_only_what_is_left_of_the_calls_budget(
        app_with: Any, threaded_httpserver: HTTPServer, secret_token: str) -> None:
    """Searches use 0.7 s of a 1.0 s budget; the Medication read (0.8 s) must not get a fresh 1.0 s."""
    fhir = DelayedFhir(threaded_httpserver, [ketamine_by_reference(), ketamine_product(), dipstick()],
                       {"Observation": 0.7, "Medication": 0.8})
    app = app_with(FetchLimits(time_budget_s=1.0, request_timeout_s=1.0))
    with app.test_client() as client:
        response = client.post("/cds-services/kbladder-patient-view", json=fhir_call(fhir.base, secret_token))
    missing = missing_of(response)
    assert missing.get("medication") == "referenced Medications: time budget exceeded", missing


def test_with_time_left_the_medication_read_completes(app_with: Any, threaded_httpserver: HTTPServer,
                                                      secret_token: str) -> None:
    fhir = DelayedFhir(threaded_httpserver, [ketamine_by_reference(), ketamine_product(), dipstick()], {})
    app = app_with(FetchLimits(time_budget_s=10, request_timeout_s=10))
    with app.test_client() as client:
        response = client.post("/cds-services/kbladder-patient-view", json=fhir_call(fhir.base, secret_token))
    assert "medication" not in missing_of(response)


def bomb(size: int) -> bytes:
    """A valid searchset Bundle padded with whitespace to *size* bytes, gzip-compressed (~1000:1)."""
    body = json.dumps(bundle()).encode()
    return gzip.compress(body[:-1] + b" " * (size - len(body)) + b"}", compresslevel=9)


def test_gzip_bomb_pages_stop_at_the_calls_byte_allowance(app_with: Any, threaded_httpserver: HTTPServer,
                                                          secret_token: str) -> None:
    """Every search answers 8 MiB (decompressed); the call may hold 12 MiB in all: the rest is missing data."""
    page = bomb(8 * 1024 * 1024)
    threaded_httpserver.expect_request(re.compile("^/fhir/Patient/")).respond_with_json(patient())
    threaded_httpserver.expect_request(re.compile("^/fhir/")).respond_with_data(
        page, content_type="application/fhir+json", headers={"Content-Encoding": "gzip"})
    app = app_with(FetchLimits(time_budget_s=20, request_timeout_s=20, max_bytes_per_call=12 * 1024 * 1024))
    with app.test_client() as client:
        response = client.post("/cds-services/kbladder-patient-view",
                               json=fhir_call(threaded_httpserver.url_for("/fhir"), secret_token))
    missing = missing_of(response)
    refused = [key for key, reason in missing.items() if reason == "FHIR byte budget exceeded"]
    searches = len(response.get_json().get("extension", {}).get(f"{EXT}.missingData", []))
    assert refused and searches >= 4  # at most one 8 MiB page fits in 12 MiB: every other search is cut
    assert response.get_json()["cards"] is not None


def test_one_budget_is_shared_by_every_client_of_the_call(threaded_httpserver: HTTPServer, secret_token: str) -> None:
    """Two clients (searches, then Medication reads) under one CallBudget: bytes spent by one are gone for both."""
    threaded_httpserver.expect_request(re.compile("^/fhir/")).respond_with_data(
        b'{"resourceType":"Bundle","type":"searchset"' + b" " * 6000 + b"}", content_type="application/fhir+json")
    limits = FetchLimits(max_bytes_per_call=10_000)
    budget = CallBudget(limits)
    base = threaded_httpserver.url_for("/fhir")
    with FhirClient(base, secret_token, limits=limits, budget=budget) as first:
        assert first.fetch("a", "Observation").ok
    with FhirClient(base, secret_token, limits=limits, budget=budget) as second:
        assert second.fetch("b", "Medication?_id=x").error == "FHIR byte budget exceeded"
