"""FhirClient: against a real FHIR server (sekmet) for the happy paths, pytest-httpserver for the faults."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
import requests
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from cds_service.fhir.client import FetchLimits, FhirClient, QueryResult, is_read, outcome_error

pytestmark = pytest.mark.usefixtures("no_token_in_logs")

FHIR_JSON = "application/fhir+json"


def bundle(resources: list[dict[str, Any]], next_url: str | None = None, **extra: Any) -> dict[str, Any]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {"resourceType": "Bundle", "type": "searchset", "link": links,
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources], **extra}


def obs(i: int) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"o{i}", "status": "final"}


def client_for(server: HTTPServer, token: str | None, **limits: Any) -> FhirClient:
    return FhirClient(server.url_for("/fhir"), token, limits=FetchLimits(**limits))


def fhir_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "cds_service.fhir"]


# ---------------------------------------------------------------- real server (sekmet)


def test_token_is_sent_and_required(fhir_server):
    patient_id = fhir_server.patient_ids["Crystle_Aufderhar_b42c4d81"]
    with FhirClient(fhir_server.base_url, fhir_server.token) as client:
        read = client.fetch("patient", f"Patient/{patient_id}")
    assert read.ok, read.error
    assert [r["id"] for r in read.resources] == [patient_id]

    with FhirClient(fhir_server.base_url) as anonymous:
        refused = anonymous.fetch("patient", f"Patient/{patient_id}")
    assert refused == QueryResult("patient", [], "HTTP 401", 0)


def test_paging_is_followed(fhir_server, caplog):
    pid = fhir_server.paging_patient_id
    with FhirClient(fhir_server.base_url, fhir_server.token) as client:
        result = client.fetch("obs", f"Observation?patient={pid}&_count=10")
    assert result.ok, result.error
    assert result.pages == 3  # 10 + 10 + 7
    assert len(result.resources) == fhir_server.paging_observations == 27
    assert len({r["id"] for r in result.resources}) == 27
    assert {r["resourceType"] for r in result.resources} == {"Observation"}
    # logs say key, pages and time, never the query string with the patient id
    messages = [r.getMessage() for r in fhir_logs(caplog)]
    assert any("obs" in m and "3 pages" in m for m in messages)
    assert not any(pid in m or "patient=" in m for m in messages)


def test_paging_matches_summary_count_on_synthetic_patient(fhir_server):
    pid = fhir_server.patient_ids["Crystle_Aufderhar_b42c4d81"]
    total = requests.get(f"{fhir_server.base_url}/Observation", params={"patient": pid, "_summary": "count"},
                         headers={"Authorization": f"Bearer {fhir_server.token}"}, timeout=5).json()["total"]
    assert total == 289  # README of the synthetic data
    with FhirClient(fhir_server.base_url, fhir_server.token) as client:
        result = client.fetch("obs", f"Observation?patient={pid}&_count=50")
    assert result.ok, result.error
    assert (result.pages, len(result.resources)) == (6, total)


def test_page_limit_on_real_server(fhir_server):
    pid = fhir_server.paging_patient_id
    with FhirClient(fhir_server.base_url, fhir_server.token, limits=FetchLimits(max_pages=2)) as client:
        result = client.fetch("obs", f"Observation?patient={pid}&_count=10")
    assert result.error == "page limit reached (2 pages)"
    assert (result.pages, len(result.resources)) == (2, 20)  # partial data is kept


def test_concurrent_queries_on_real_server(fhir_server):
    pid = fhir_server.paging_patient_id
    queries = {"patient": f"Patient/{pid}", "obs": f"Observation?patient={pid}&_count=10",
               "conditions": f"Condition?patient={pid}", "missing": "Patient/does-not-exist"}
    with FhirClient(fhir_server.base_url, fhir_server.token) as client:
        results = client.fetch_all(queries)
    assert set(results) == set(queries)
    assert len(results["patient"].resources) == 1
    assert len(results["obs"].resources) == 27
    assert results["conditions"].ok and results["conditions"].resources == []
    assert results["missing"].error == "HTTP 404"


def test_warning_outcome_entry_from_real_server_is_dropped(fhir_server):
    """sekmet ignores unknown parameters and says so in a warning outcome entry."""
    pid = fhir_server.paging_patient_id
    with FhirClient(fhir_server.base_url, fhir_server.token) as client:
        result = client.fetch("obs", f"Observation?patient={pid}&bogus=1&_count=20")
    assert result.ok, result.error
    assert len(result.resources) == 27
    assert {r["resourceType"] for r in result.resources} == {"Observation"}


def test_server_error_responses(fhir_server):
    with FhirClient(fhir_server.base_url, fhir_server.token) as client:
        bad_date = client.fetch("bad", "Observation?date=not-a-date")
        unknown_type = client.fetch("unknown", "NoSuchType?x=1")
    assert bad_date.error == "HTTP 400"
    assert unknown_type.error == "HTTP 404"


# ---------------------------------------------------------------- faults (pytest-httpserver)


def test_headers_on_every_page_including_next_links(threaded_httpserver, secret_token):
    srv = threaded_httpserver
    srv.expect_request("/fhir/Observation", query_string="patient=p1").respond_with_json(
        bundle([obs(1), obs(2)], srv.url_for("/fhir/Observation?page=2")), content_type=FHIR_JSON)
    srv.expect_request("/fhir/Observation", query_string="page=2").respond_with_json(
        bundle([obs(3)], "Observation?page=3"), content_type=FHIR_JSON)  # relative next link
    srv.expect_request("/fhir/Observation", query_string="page=3").respond_with_json(
        bundle([obs(4)]), content_type=FHIR_JSON)
    result = client_for(srv, secret_token).fetch("obs", "Observation?patient=p1")
    assert result.ok, result.error
    assert ([r["id"] for r in result.resources], result.pages) == (["o1", "o2", "o3", "o4"], 3)
    assert len(srv.log) == 3
    for request, _ in srv.log:
        assert request.headers["Authorization"] == f"Bearer {secret_token}"
        assert request.headers["Accept"] == FHIR_JSON


def test_no_authorization_header_without_token(threaded_httpserver):
    patient = {"resourceType": "Patient", "id": "1"}
    threaded_httpserver.expect_request("/fhir/Patient/1").respond_with_json(patient)
    result = client_for(threaded_httpserver, None).fetch("p", "Patient/1")
    assert result.ok
    assert "Authorization" not in threaded_httpserver.log[0][0].headers


@pytest.mark.parametrize("status", [401, 403, 404, 500, 503])
def test_http_errors(threaded_httpserver, secret_token, status, caplog):
    outcome = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "error", "code": "login", "diagnostics": f"bad token {secret_token}"}]}
    threaded_httpserver.expect_request("/fhir/Observation").respond_with_json(outcome, status=status)
    result = client_for(threaded_httpserver, secret_token).fetch("obs", "Observation?patient=p1")
    assert result == QueryResult("obs", [], f"HTTP {status}", 0)
    warnings = [r for r in fhir_logs(caplog) if r.levelno == logging.WARNING]
    assert warnings and f"status={status}" in warnings[0].getMessage()


@pytest.mark.parametrize(("body", "content_type", "error"), [
    ("{not json", FHIR_JSON, "invalid JSON"),
    ("<html><body>Login</body></html>", "text/html", "invalid JSON"),
    ("", FHIR_JSON, "invalid JSON"),
    ("[1, 2]", FHIR_JSON, "not a FHIR Bundle"),
    ('{"resourceType": "Patient", "id": "1"}', FHIR_JSON, "not a FHIR Bundle"),
    ('{"hello": "world"}', FHIR_JSON, "not a FHIR Bundle"),
])
def test_bad_bodies(threaded_httpserver, secret_token, body, content_type, error):
    threaded_httpserver.expect_request("/fhir/Observation").respond_with_data(body, content_type=content_type)
    result = client_for(threaded_httpserver, secret_token).fetch("obs", "Observation?patient=p1")
    assert (result.error, result.resources) == (error, [])


def test_read_returns_the_resource(threaded_httpserver, secret_token):
    patient = {"resourceType": "Patient", "id": "p1"}
    threaded_httpserver.expect_request("/fhir/Patient/p1").respond_with_json(patient, content_type=FHIR_JSON)
    result = client_for(threaded_httpserver, secret_token).fetch("p", "Patient/p1")
    assert result == QueryResult("p", [patient], None, 1)


def test_read_with_a_non_resource_body(threaded_httpserver, secret_token):
    threaded_httpserver.expect_request("/fhir/Patient/p1").respond_with_json(["not", "a", "resource"])
    result = client_for(threaded_httpserver, secret_token).fetch("p", "Patient/p1")
    assert (result.error, result.resources) == ("not a FHIR resource", [])


def test_redirect_is_refused(threaded_httpserver, other_httpserver, secret_token):
    other_httpserver.expect_request("/fhir/Observation").respond_with_json(bundle([obs(1)]))
    threaded_httpserver.expect_request("/fhir/Observation").respond_with_data(
        "", status=302, headers={"Location": other_httpserver.url_for("/fhir/Observation?patient=p1")})
    result = client_for(threaded_httpserver, secret_token).fetch("obs", "Observation?patient=p1")
    assert result.error == "redirect refused"
    assert other_httpserver.log == []


def test_next_link_to_another_server_is_refused(threaded_httpserver, other_httpserver, secret_token):
    other_httpserver.expect_request("/fhir/Observation").respond_with_json(bundle([obs(9)]))
    threaded_httpserver.expect_request("/fhir/Observation").respond_with_json(
        bundle([obs(1)], other_httpserver.url_for("/fhir/Observation?page=2")))  # same host, other port
    result = client_for(threaded_httpserver, secret_token).fetch("obs", "Observation?patient=p1")
    assert result.error == "next link refused: another server"
    assert ([r["id"] for r in result.resources], result.pages) == (["o1"], 1)
    assert other_httpserver.log == []


@pytest.mark.parametrize("foreign", ["http://localhost:{port}/fhir/x", "https://127.0.0.1:{port}/fhir/x",
                                     "http://evil.example/fhir/x", "//evil.example/fhir/x",
                                     "http://127.0.0.1:99999/fhir/x", "http://[::1/fhir/x"])
def test_next_link_origin_must_match_exactly(threaded_httpserver, secret_token, foreign):
    srv = threaded_httpserver
    srv.expect_request("/fhir/Observation").respond_with_json(bundle([obs(1)], foreign.format(port=srv.port)))
    result = client_for(srv, secret_token).fetch("obs", "Observation")
    assert result.error.startswith("next link refused: ")
    assert len(srv.log) == 1


def test_absolute_query_to_another_server_is_refused(threaded_httpserver, other_httpserver, secret_token):
    result = client_for(threaded_httpserver, secret_token).fetch(
        "obs", other_httpserver.url_for("/fhir/Observation?page=2"))
    assert result.error == "next link refused: another server"
    assert other_httpserver.log == [] and threaded_httpserver.log == []


def test_paging_loop_same_url(threaded_httpserver, secret_token):
    srv = threaded_httpserver
    srv.expect_request("/fhir/Observation").respond_with_json(
        bundle([obs(1)], srv.url_for("/fhir/Observation?patient=p1")))
    result = client_for(srv, secret_token).fetch("obs", "Observation?patient=p1")
    assert (result.error, result.pages, len(srv.log)) == ("paging loop", 1, 1)


def test_paging_loop_between_two_urls(threaded_httpserver, secret_token):
    srv = threaded_httpserver
    srv.expect_request("/fhir/Observation", query_string="page=1").respond_with_json(
        bundle([obs(1)], srv.url_for("/fhir/Observation?page=2")))
    srv.expect_request("/fhir/Observation", query_string="page=2").respond_with_json(
        bundle([obs(2)], srv.url_for("/fhir/Observation?page=1")))
    result = client_for(srv, secret_token).fetch("obs", "Observation?page=1")
    assert (result.error, result.pages, len(srv.log)) == ("paging loop", 2, 2)


def test_page_limit(threaded_httpserver, secret_token):
    srv = threaded_httpserver

    def endless(request: Request) -> Response:
        page = int(request.args.get("page", "1"))
        body = bundle([obs(page)], srv.url_for(f"/fhir/Observation?page={page + 1}"))
        return Response(json.dumps(body), content_type=FHIR_JSON)

    srv.expect_request("/fhir/Observation").respond_with_handler(endless)
    result = client_for(srv, secret_token).fetch("obs", "Observation?page=1")
    assert result.error == "page limit reached (10 pages)"
    assert (result.pages, len(result.resources), len(srv.log)) == (10, 10, 10)


def test_resource_limit(threaded_httpserver, secret_token):
    srv = threaded_httpserver
    srv.expect_request("/fhir/Observation", query_string="page=1").respond_with_json(
        bundle([obs(1), obs(2), obs(3)], srv.url_for("/fhir/Observation?page=2")))
    srv.expect_request("/fhir/Observation", query_string="page=2").respond_with_json(
        bundle([obs(4), obs(5), obs(6)], srv.url_for("/fhir/Observation?page=3")))
    result = client_for(srv, secret_token, max_resources_per_query=5).fetch("obs", "Observation?page=1")
    assert result.error == "resource limit reached (5 resources)"
    assert [r["id"] for r in result.resources] == ["o1", "o2", "o3", "o4", "o5"]
    assert len(srv.log) == 2


def test_operation_outcome_alone(threaded_httpserver, secret_token):
    outcome = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "warning", "code": "informational", "diagnostics": "just saying"},
        {"severity": "error", "code": "too-costly", "diagnostics": "x" * 300 + f" {secret_token}"}]}
    threaded_httpserver.expect_request("/fhir/Observation").respond_with_json(outcome, content_type=FHIR_JSON)
    result = client_for(threaded_httpserver, secret_token).fetch("obs", "Observation?patient=p1")
    assert result.error == "OperationOutcome: " + "x" * 120
    assert result.resources == []


def test_token_echoed_by_server_is_redacted(threaded_httpserver, secret_token):
    issue = {"severity": "error", "code": "security", "diagnostics": f"token {secret_token} expired"}
    outcome = {"resourceType": "OperationOutcome", "issue": [issue]}
    threaded_httpserver.expect_request("/fhir/Observation").respond_with_json(outcome, content_type=FHIR_JSON)
    result = client_for(threaded_httpserver, secret_token).fetch("obs", "Observation?patient=p1")
    assert result.error == "OperationOutcome: token *** expired"


def test_operation_outcome_inside_bundle(threaded_httpserver, secret_token):
    srv = threaded_httpserver
    body = bundle([obs(1)])
    body["entry"].append({"resource": {"resourceType": "OperationOutcome", "issue": [
        {"severity": "fatal", "code": "exception", "details": {"text": "search\nfailed"}}]},
        "search": {"mode": "outcome"}})
    srv.expect_request("/fhir/Observation").respond_with_json(body, content_type=FHIR_JSON)
    result = client_for(srv, secret_token).fetch("obs", "Observation?patient=p1")
    assert result.error == "OperationOutcome: search failed"  # one line, details.text when no diagnostics
    assert [r["id"] for r in result.resources] == ["o1"]  # never the outcome itself


def test_warning_outcome_entries_are_dropped(threaded_httpserver, secret_token):
    body = bundle([obs(1)])
    body["entry"] += [
        {"resource": {"resourceType": "OperationOutcome",
                      "issue": [{"severity": "warning", "code": "not-supported", "diagnostics": "x?"}]},
         "search": {"mode": "outcome"}},
        {"resource": {"resourceType": "OperationOutcome",
                      "issue": [{"severity": "information", "code": "informational"}]}},
    ]
    threaded_httpserver.expect_request("/fhir/Observation").respond_with_json(body, content_type=FHIR_JSON)
    result = client_for(threaded_httpserver, secret_token).fetch("obs", "Observation?x=1")
    assert result == QueryResult("obs", [obs(1)], None, 1)


def test_slow_response_stops_at_the_budget(threaded_httpserver, secret_token):
    def slow(request: Request) -> Response:
        time.sleep(1.5)
        return Response(json.dumps(bundle([obs(1)])), content_type=FHIR_JSON)

    threaded_httpserver.expect_request("/fhir/Observation").respond_with_handler(slow)
    client = client_for(threaded_httpserver, secret_token, time_budget_s=0.4)
    started = time.monotonic()
    result = client.fetch("obs", "Observation?patient=p1")
    elapsed = time.monotonic() - started
    assert result.error == "time budget exceeded"
    assert elapsed < 0.4 + 0.25


def test_slow_response_hits_the_request_timeout(threaded_httpserver, secret_token):
    def slow(request: Request) -> Response:
        time.sleep(1.0)
        return Response(json.dumps(bundle([])), content_type=FHIR_JSON)

    threaded_httpserver.expect_request("/fhir/Observation").respond_with_handler(slow)
    client = client_for(threaded_httpserver, secret_token, time_budget_s=2.0, request_timeout_s=0.3)
    started = time.monotonic()
    assert client.fetch("obs", "Observation").error == "timeout"
    assert time.monotonic() - started < 0.3 + 0.25


def test_trickling_body_stops_at_the_budget(threaded_httpserver, secret_token):
    """Each chunk arrives well within the socket timeout, but the whole body would take 3 s."""
    def trickle(request: Request) -> Response:
        def chunks():
            yield b'{"resourceType": "Bundle", "type": "searchset", "entry": ['
            for _ in range(60):
                time.sleep(0.05)
                yield b" "
            yield b"]}"
        return Response(chunks(), content_type=FHIR_JSON)

    threaded_httpserver.expect_request("/fhir/Observation").respond_with_handler(trickle)
    client = client_for(threaded_httpserver, secret_token, time_budget_s=0.5)
    started = time.monotonic()
    assert client.fetch("obs", "Observation").error == "time budget exceeded"
    assert time.monotonic() - started < 0.5 + 0.25


def test_queries_run_concurrently(threaded_httpserver, secret_token):
    def delayed(request: Request) -> Response:
        time.sleep(0.3)
        return Response(json.dumps(bundle([obs(int(request.args["n"]))])), content_type=FHIR_JSON)

    threaded_httpserver.expect_request("/fhir/Observation").respond_with_handler(delayed)
    client = client_for(threaded_httpserver, secret_token)
    started = time.monotonic()
    results = client.fetch_all({f"q{n}": f"Observation?n={n}" for n in range(3)})
    elapsed = time.monotonic() - started
    assert all(r.ok for r in results.values())
    assert [results[f"q{n}"].resources[0]["id"] for n in range(3)] == ["o0", "o1", "o2"]
    assert elapsed < 0.6  # serial would be ≥ 0.9 s


def test_one_deadline_for_all_queries(threaded_httpserver, secret_token):
    """One worker, three 300 ms queries, 500 ms budget: the budget is shared, not per query."""
    def delayed(request: Request) -> Response:
        time.sleep(0.3)
        return Response(json.dumps(bundle([obs(1)])), content_type=FHIR_JSON)

    threaded_httpserver.expect_request("/fhir/Observation").respond_with_handler(delayed)
    client = client_for(threaded_httpserver, secret_token, time_budget_s=0.5, max_workers=1)
    started = time.monotonic()
    results = client.fetch_all({f"q{n}": f"Observation?n={n}" for n in range(3)})
    elapsed = time.monotonic() - started
    late = "time budget exceeded"
    assert [results[f"q{n}"].error for n in range(3)] == [None, late, late]
    assert elapsed < 0.5 + 0.25


def test_connection_failed(secret_token):
    with FhirClient("http://127.0.0.1:9/fhir", secret_token) as client:  # discard port: nothing listens
        assert client.fetch("obs", "Observation").error == "connection failed"


def test_token_not_in_repr_or_errors(secret_token):
    client = FhirClient("https://ehr.example/fhir/", secret_token)
    assert secret_token not in repr(client) and secret_token not in str(client)
    assert repr(client).startswith("FhirClient('https://ehr.example/fhir', auth=bearer")
    with pytest.raises(ValueError, match="absolute http") as excinfo:
        FhirClient("ehr.example/fhir", secret_token)
    assert secret_token not in str(excinfo.value)


def test_fetch_all_without_queries():
    assert FhirClient("https://ehr.example/fhir").fetch_all({}) == {}


@pytest.mark.parametrize(("query", "read"), [
    ("Patient/123", True), ("/Patient/123", True), ("Patient?_id=123", False), ("Observation", False),
    ("Patient/123/_history", False), ("Patient/$everything", False), ("Observation/_search", False),
])
def test_is_read(query, read):
    assert is_read(query) is read


def test_outcome_error_ignores_warnings():
    assert outcome_error({"issue": [{"severity": "warning", "diagnostics": "meh"}]}) is None
    error = {"issue": [{"severity": "error", "code": "processing"}]}
    assert outcome_error(error) == "OperationOutcome: processing"
    assert outcome_error({}) is None
