"""Prefetch templates and `gather`: unit tests with a fake client, then against a real FHIR server."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from cds_service.fhir.client import CallBudget, FetchLimits, FhirClient, QueryResult
from cds_service.fhir.prefetch import GatheredData, PrefetchUnavailable, gather, render_template

pytestmark = pytest.mark.usefixtures("no_token_in_logs")

LIMITS = FetchLimits(time_budget_s=2.0)
TEMPLATES = {
    "patient": "Patient/{{context.patientId}}",
    "urinalysis": "Observation?patient={{context.patientId}}&code=http://loinc.org|5794-3&_count=10",
    "conditions": "Condition?patient={{context.patientId}}",
}


def obs(i: int, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"o{i}", **extra}


def searchset(*resources: dict[str, Any], next_url: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                            "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}
    if next_url:
        body["link"] = [{"relation": "next", "url": next_url}]
    return body


def outcome(severity: str, text: str = "boom") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": "processing",
                                                           "diagnostics": text}]}


# ---------------------------------------------------------------- render_template


@pytest.mark.parametrize(("template", "context", "expected"), [
    ("Patient/{{context.patientId}}", {"patientId": "123"}, "Patient/123"),
    ("Patient/{{ context.patientId }}", {"patientId": "123"}, "Patient/123"),
    ("Observation?patient={{context.patientId}}&encounter={{context.encounterId}}",
     {"patientId": "p", "encounterId": "e"}, "Observation?patient=p&encounter=e"),
    ("Patient/{{context.patientId}}", {"patientId": "a b/c&d=e?"}, "Patient/a%20b%2Fc%26d%3De%3F"),
    ("Observation?_count={{context.n}}&x={{context.flag}}", {"n": 5, "flag": True},
     "Observation?_count=5&x=true"),
    ("Observation?code=http://loinc.org|5794-3", {}, "Observation?code=http://loinc.org|5794-3"),
])
def test_render_template_fills_context_tokens(template, context, expected):
    assert render_template(template, context, None) == expected


@pytest.mark.parametrize(("template", "context"), [
    ("Patient/{{context.patientId}}", {}),
    ("Patient/{{context.patientId}}", {"patientId": ""}),
    ("Patient/{{context.patientId}}", {"patientId": None}),
    ("MedicationRequest/{{context.draftOrders.id}}", {"draftOrders": {"id": "x"}}),  # not root level
    ("MedicationRequest?x={{context.draftOrders}}", {"draftOrders": {"resourceType": "Bundle"}}),  # object
    ("MedicationRequest?x={{context.selections}}", {"selections": ["MedicationRequest/1"]}),
    ("Observation?date=ge{{today()}}", {}),  # no date tokens in 2.0 (P2)
    ("Patient/{{Patient.id}}", {"patientId": "1"}),  # pre-1.0 syntax
    ("Practitioner/{{userPractitionerId}}", {"userId": "PractitionerRole/1"}),
])
def test_render_template_returns_none_when_a_token_cannot_be_filled(template, context):
    assert render_template(template, context, None) is None


@pytest.mark.parametrize(("token", "user_id", "expected"), [
    ("userPractitionerId", "Practitioner/abc", "abc"),
    ("userPractitionerRoleId", "PractitionerRole/r1", "r1"),
    ("userPatientId", "Patient/p9", "p9"),
    ("userRelatedPersonId", "RelatedPerson/rp", "rp"),
    ("userPractitionerId", "https://ehr.example/fhir/Practitioner/7", "7"),
    ("userPractitionerId", "PractitionerRole/r1", None),
    ("userPatientId", "Practitioner/abc", None),
    ("userPractitionerId", "", None),
])
def test_render_template_user_tokens(token, user_id, expected):
    template = "X/{{" + token + "}}"
    assert render_template(template, {"userId": user_id}, None) == (f"X/{expected}" if expected else None)
    assert render_template(template, {}, user_id) == (f"X/{expected}" if expected else None)


def test_render_template_user_id_argument_wins_over_context():
    context = {"userId": "Practitioner/from-context"}
    rendered = render_template("Practitioner/{{userPractitionerId}}", context, "Practitioner/arg")
    assert rendered == "Practitioner/arg"


# ---------------------------------------------------------------- gather with a fake client


class FakeClient:
    """Answers fetch_all from `answers` (query -> (resources, error)) and records every use."""

    def __init__(self, answers: dict[str, tuple[list[dict[str, Any]], str | None]] | None = None) -> None:
        self.answers = answers or {}
        self.made: list[tuple[str, str | None]] = []
        self.calls: list[dict[str, str]] = []

    def factory(self, base_url: str, access_token: str | None, *, limits: FetchLimits,
                budget: CallBudget | None = None) -> FakeClient:
        self.made.append((base_url, access_token))
        return self

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def fetch_all(self, queries: dict[str, str]) -> dict[str, QueryResult]:
        self.calls.append(dict(queries))
        return {key: QueryResult(key, *self.answers.get(query, ([], None)), pages=1)
                for key, query in queries.items()}


def run(prefetch: dict[str, Any] | None, fake: FakeClient | None = None, *,
        templates: dict[str, str] = TEMPLATES, fhir_server: str | None = "https://ehr.example/fhir",
        access_token: str | None = "tok", **kwargs: Any) -> GatheredData:
    fake = fake or FakeClient()
    context = {"patientId": "p1", "userId": "Practitioner/u1"}
    return gather(templates, prefetch, context, fhir_server=fhir_server, access_token=access_token,
                  limits=LIMITS, client_factory=fake.factory, **kwargs)


def test_all_keys_prefetched_needs_no_fhir_access():
    fake = FakeClient()
    patient = {"resourceType": "Patient", "id": "p1"}
    data = run({"patient": patient, "urinalysis": searchset(obs(1), obs(2)), "conditions": searchset()},
               fake, fhir_server=None, access_token=None)
    assert fake.made == []
    assert data.by_key == {"patient": [patient], "urinalysis": [obs(1), obs(2)], "conditions": []}
    assert data.resources == [patient, obs(1), obs(2)]
    assert data.sources == {"patient": "prefetch", "urinalysis": "prefetch", "conditions": "prefetch"}
    assert data.missing == {}


def test_null_prefetch_value_is_no_data():
    fake = FakeClient()
    data = run({"patient": None, "urinalysis": searchset(), "conditions": searchset()}, fake)
    assert fake.made == []
    assert (data.by_key["patient"], data.sources["patient"], data.missing) == ([], "empty", {})


def test_operation_outcome_prefetch_is_missing_and_not_requeried():
    fake = FakeClient()
    data = run({"patient": outcome("error"), "urinalysis": searchset(), "conditions": searchset()}, fake)
    assert fake.calls == []
    assert data.missing == {"patient": "prefetch OperationOutcome"}
    assert data.sources["patient"] == "prefetch"


def test_bundle_with_error_outcome_entry_is_missing_and_keeps_partial_data():
    fake = FakeClient()
    bundle = searchset(obs(1))
    bundle["entry"].append({"resource": outcome("fatal"), "search": {"mode": "outcome"}})
    data = run({"patient": None, "urinalysis": bundle, "conditions": searchset()}, fake)
    assert fake.calls == []
    assert data.missing == {"urinalysis": "prefetch OperationOutcome"}
    assert data.by_key["urinalysis"] == [obs(1)]  # shows what happened, never what did not


def test_warning_outcome_entries_are_dropped():
    bundle = searchset(obs(1))
    bundle["entry"].append({"resource": outcome("warning", "unknown parameter ignored"),
                            "search": {"mode": "outcome"}})
    data = run({"patient": None, "urinalysis": bundle, "conditions": searchset()})
    assert data.missing == {}
    assert data.by_key["urinalysis"] == [obs(1)]


@pytest.mark.parametrize("value", ["Patient/1", 42, [], {"entry": []}, {"resourceType": 5}])
def test_invalid_prefetch_value_is_missing_not_an_exception(value):
    fake = FakeClient()
    data = run({"patient": value, "urinalysis": searchset(), "conditions": searchset()}, fake)
    assert data.missing == {"patient": "invalid prefetch value"}
    assert data.by_key["patient"] == []
    assert fake.calls == []


def test_absent_keys_are_fetched_in_one_batch_with_the_token():
    patient = {"resourceType": "Patient", "id": "p1"}
    fake = FakeClient({"Patient/p1": ([patient], None),
                       "Condition?patient=p1": ([], "HTTP 500")})
    data = run({"urinalysis": searchset(obs(1))}, fake)
    assert fake.made == [("https://ehr.example/fhir", "tok")]
    assert fake.calls == [{"patient": "Patient/p1", "conditions": "Condition?patient=p1"}]
    assert data.sources == {"urinalysis": "prefetch", "patient": "fhir", "conditions": "fhir"}
    assert data.missing == {"conditions": "HTTP 500"}
    assert list(data.by_key) == list(TEMPLATES)  # template order
    assert data.resources == [patient, obs(1)]


@pytest.mark.parametrize(("server", "token"), [(None, None), (None, "tok"), ("https://ehr.example/fhir", "")])
def test_absent_keys_without_fhir_access_raise_prefetch_unavailable(server, token):
    with pytest.raises(PrefetchUnavailable) as excinfo:
        run({"urinalysis": searchset()}, fhir_server=server, access_token=token)
    assert excinfo.value.keys == ["patient", "conditions"]
    assert "patient, conditions" in str(excinfo.value)


def test_unauthenticated_fhir_only_when_allowed():
    fake = FakeClient()
    data = run({}, fake, access_token=None, allow_unauthenticated_fhir=True)
    assert fake.made == [("https://ehr.example/fhir", None)]
    assert set(fake.calls[0]) == set(TEMPLATES)
    assert data.sources == dict.fromkeys(TEMPLATES, "fhir")


def test_read_not_found_is_no_data_like_a_prefetched_null():
    fake = FakeClient({"Patient/p1": ([], "HTTP 404"), "Condition?patient=p1": ([], "HTTP 404")})
    data = run({"urinalysis": searchset()}, fake)
    assert (data.sources["patient"], data.by_key["patient"]) == ("empty", [])
    assert data.missing == {"conditions": "HTTP 404"}  # a search answered 404: something is wrong


def test_template_that_cannot_be_filled_is_missing_without_412():
    templates = {"encounter": "Encounter/{{context.encounterId}}", "patient": "Patient/{{context.patientId}}"}
    data = run({"patient": None}, templates=templates, fhir_server=None, access_token=None)
    assert data.missing == {"encounter": "template token not available"}
    assert data.sources == {"encounter": "empty", "patient": "empty"}


def test_prefetched_bundle_with_next_link_is_continued():
    fake = FakeClient({"https://ehr.example/fhir/Observation?page=2": ([obs(2), obs(3)], None)})
    prefetch = {"patient": None, "conditions": searchset(),
                "urinalysis": searchset(obs(1), next_url="https://ehr.example/fhir/Observation?page=2")}
    data = run(prefetch, fake)
    assert fake.calls == [{"urinalysis": "https://ehr.example/fhir/Observation?page=2"}]
    assert data.by_key["urinalysis"] == [obs(1), obs(2), obs(3)]
    assert (data.sources["urinalysis"], data.missing) == ("prefetch", {})


def test_prefetched_bundle_with_next_link_without_fhir_access_is_partial():
    prefetch = {"patient": None, "conditions": searchset(),
                "urinalysis": searchset(obs(1), next_url="https://ehr.example/fhir/Observation?page=2")}
    data = run(prefetch, fhir_server=None, access_token=None)
    assert data.by_key["urinalysis"] == [obs(1)]
    assert data.missing == {"urinalysis": "prefetch has more pages, no FHIR server access"}


def test_resources_are_deduplicated_across_keys():
    shared = obs(1, status="final")
    no_id = {"resourceType": "Observation", "status": "final"}
    templates = {"a": "Observation?code=a", "b": "Observation?code=b"}
    data = run({"a": searchset(shared, no_id), "b": searchset(obs(1), obs(2), no_id)}, templates=templates)
    assert data.resources == [shared, no_id, obs(2), no_id]
    assert len(data.by_key["b"]) == 3


def test_prefetch_keys_without_template_are_ignored():
    data = run({"patient": None, "urinalysis": searchset(), "conditions": searchset(),
                "extra": searchset(obs(9))})
    assert "extra" not in data.by_key and data.resources == []


# ---------------------------------------------------------------- gather against a real FHIR server


class SpySession(requests.Session):
    """A real session that remembers each URL requested and whether it carried the bearer token."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, bool]] = []

    def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        headers = kwargs.get("headers") or {}
        self.requests.append((str(url), headers.get("Authorization", "").startswith("Bearer ")))
        return super().request(method, url, *args, **kwargs)


def spy_factory(spy: SpySession):
    def make(base_url: str, access_token: str | None, *, limits: FetchLimits,
             budget: CallBudget | None = None) -> FhirClient:
        return FhirClient(base_url, access_token, limits=limits, session=spy, budget=budget)
    return make


def test_gather_fetches_absent_keys_and_does_not_requery_present_ones(fhir_server):
    pid = fhir_server.paging_patient_id
    url = f"{fhir_server.base_url}/Patient/{pid}"
    patient = requests.get(url, headers=fhir_server.headers(), timeout=5).json()
    spy = SpySession()
    data = gather(TEMPLATES, {"patient": patient}, {"patientId": pid}, fhir_server=fhir_server.base_url,
                  access_token=fhir_server.token, limits=LIMITS, client_factory=spy_factory(spy))
    assert data.missing == {}
    assert data.sources == {"patient": "prefetch", "urinalysis": "fhir", "conditions": "fhir"}
    assert [len(data.by_key[k]) for k in TEMPLATES] == [1, fhir_server.paging_observations, 0]
    assert len(data.resources) == 1 + fhir_server.paging_observations
    urls = [url for url, _ in spy.requests]
    assert not any("/Patient/" in url for url in urls)  # the prefetched key was not re-queried
    assert sum("/Observation?" in url for url in urls) == 3  # 27 at _count=10
    assert sum("/Condition?" in url for url in urls) == 1
    assert all(with_token for _, with_token in spy.requests)


def test_gather_continues_a_paginated_prefetch_on_the_server(fhir_server):
    pid = fhir_server.paging_patient_id
    first_page = requests.get(f"{fhir_server.base_url}/Observation", params={"patient": pid, "_count": 10},
                              headers=fhir_server.headers(), timeout=5).json()
    assert len(first_page["entry"]) == 10
    spy = SpySession()
    prefetch = {"patient": None, "urinalysis": first_page, "conditions": searchset()}
    data = gather(TEMPLATES, prefetch, {"patientId": pid}, fhir_server=fhir_server.base_url,
                  access_token=fhir_server.token, limits=LIMITS, client_factory=spy_factory(spy))
    assert data.missing == {}
    assert data.sources["urinalysis"] == "prefetch"
    assert len({r["id"] for r in data.by_key["urinalysis"]}) == fhir_server.paging_observations
    assert [url.split("_offset=")[1] for url, _ in spy.requests] == ["10", "20"]  # only the later pages


def test_gather_prefetch_operation_outcome_is_not_requeried_on_the_server(fhir_server):
    spy = SpySession()
    prefetch = {"patient": None, "urinalysis": outcome("error", "too costly"), "conditions": searchset()}
    data = gather(TEMPLATES, prefetch, {"patientId": fhir_server.paging_patient_id},
                  fhir_server=fhir_server.base_url, access_token=fhir_server.token, limits=LIMITS,
                  client_factory=spy_factory(spy))
    assert data.missing == {"urinalysis": "prefetch OperationOutcome"}
    assert spy.requests == []


def test_gather_unauthenticated_against_a_secured_server_reports_401(fhir_server):
    data = gather(TEMPLATES, {}, {"patientId": fhir_server.paging_patient_id},
                  fhir_server=fhir_server.base_url, access_token=None, limits=LIMITS,
                  allow_unauthenticated_fhir=True)
    assert data.missing == dict.fromkeys(TEMPLATES, "HTTP 401")
    assert data.resources == []
