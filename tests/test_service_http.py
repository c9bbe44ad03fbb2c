"""The service over real HTTP: werkzeug's threaded server on a free loopback port, called with requests.

Covers discovery, the three hooks, every 4xx path, feedback, CORS, /healthz, live rule reload, and one
call that fetches a missing prefetch key from a real FHIR server with the bearer token.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from hookdata import (
    KETAMINE,
    dipstick,
    draft_order,
    gross_hematuria,
    ketamine_by_reference,
    ketamine_given,
    ketamine_product,
    prefetch,
    request_body,
    serving,
)
from outcomes import error_field, error_issue
from rulekit import rule_version

from cds_service.app import create_app
from cds_service.cdshooks import discovery_problems, response_problems, template_problems
from cds_service.cdshooks.hooks import SERVICES
from cds_service.config import Settings
from cds_service.fhir.client import FetchLimits
from cds_service.governance.service import Governance
from cds_service.http.state import EXTENSION
from cds_service.rules_state import RulesState
from cds_service.store import Store

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"
EXT = "org.kbladder-cds"
PV, OSEL, OSIGN = "kbladder-patient-view", "kbladder-order-select", "kbladder-order-sign"
MAX_BODY = 64 * 1024
PARACETAMOL = {"coding": [{"system": "http://snomed.info/sct", "code": "322236009"}], "text": "Paracetamol"}


# -- serving ---------------------------------------------------------------------------------------------


class Service:
    """A running service: base URL plus the store behind it (read after the background log writer drained)."""

    def __init__(self, url: str, store: Store, rules: RulesState, governance: Governance | None = None) -> None:
        self.url, self._store, self.rules, self.governance = url, store, rules, governance

    @property
    def store(self) -> Store:
        if self.governance is not None:
            self.governance.flush()
        return self._store

    def post(self, path: str, body: Any, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=30, **kwargs)

    def hook(self, service_id: str, body: Any) -> requests.Response:
        return self.post(f"/cds-services/{service_id}", body)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The app with the repository's rules and a SQLite file store, for the whole module."""
    db = tmp_path_factory.mktemp("db") / "kbladder.sqlite3"
    store = Store(f"sqlite:///{db}")
    rules = RulesState([RULES], reload_interval_s=0)
    settings = Settings(database_url=f"sqlite:///{db}", max_body_bytes=MAX_BODY, reload_interval_s=0,
                        fetch_limits=FetchLimits(time_budget_s=10, request_timeout_s=10))  # a busy CI machine
    app = create_app(settings, rules_state=rules, store=store)
    with serving(app) as url:
        yield Service(url, store, rules, app.extensions[EXTENSION].governance)
    store.dispose()


# -- FHIR test data ---------------------------------------------------------------------------------------


def repeated(pid: str = "p1", days: float = -10) -> list[dict[str, Any]]:
    """Two ketamine sessions a week apart: repeated exposure, which severe urinary attributions need (issue 11 B4)."""
    return [ketamine_given(pid, days=days, rid="ma1"), ketamine_given(pid, days=days + 7, rid="ma1b")]


def repeated_by_reference(pid: str = "p1", medication_id: str = "ket-50") -> list[dict[str, Any]]:
    """Repeated ketamine administrations that name the product only by medicationReference."""
    first = ketamine_by_reference(pid, medication_id)
    second = {**ketamine_by_reference(pid, medication_id), "id": "ma-ref2",
              "effectiveDateTime": ketamine_given(pid, days=-3)["effectiveDateTime"]}
    return [first, second]


def only_card(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert response_problems(body) == []
    assert len(body["cards"]) == 1, body
    return body["cards"][0]


# -- discovery ----------------------------------------------------------------------------------------------


def test_discovery_lists_a_service_per_hook_with_valid_prefetch(service: Service) -> None:
    response = requests.get(f"{service.url}/cds-services", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert discovery_problems(body) == []
    by_id = {s["id"]: s for s in body["services"]}
    assert set(by_id) == {PV, OSEL, OSIGN, "kbladder-encounter-start", "kbladder-appointment-book"} == set(SERVICES)
    for sid, svc in by_id.items():
        assert svc["hook"] == SERVICES[sid].hook
        assert svc["title"] and svc["description"] and svc["usageRequirements"]
        templates = svc["prefetch"]
        assert templates["patient"] == "Patient/{{context.patientId}}"
        for template in templates.values():
            assert template_problems(template, svc["hook"]) == []
        # Medication types are matched by text too, so they must not be narrowed by code.
        # and bring the Medications they reference (outside the P3 subset on purpose; docs/service.md).
        for rtype in ("MedicationAdministration", "MedicationRequest", "MedicationStatement"):
            key = rtype[:1].lower() + rtype[1:]
            assert templates[key] == (
                f"{rtype}?patient={{{{context.patientId}}}}&_include={rtype}:medication&_count=1000")
        assert "http://loinc.org|5794-3" in templates["observation"]
        assert "_count=1000" in templates["observation"]
        if svc["hook"] != "appointment-book":  # KB-05 and KB-15 read no diagnosis
            assert "http://hl7.org/fhir/sid/icd-10-cm|R31.0" in templates["condition"]
        else:
            assert "condition" not in templates


# -- hooks ----------------------------------------------------------------------------------------------------


def test_patient_view_ketamine_and_dipstick_blood_gives_a_kb02_warning(service: Service) -> None:
    body = request_body(prefetch=prefetch(*repeated(), dipstick()))
    card = only_card(service.hook(PV, body))
    assert card["indicator"] == "warning"
    assert card["extension"][f"{EXT}.rule"]["id"] == "KB-02"
    assert card["summary"].startswith("Blood in urine after 2 ketamine sessions in 7 days")
    assert service.store.rule_for_card(card["uuid"]) == ("KB-02", rule_version("KB-02"))


def test_patient_view_with_nothing_to_say_returns_empty_cards(service: Service) -> None:
    response = service.hook(PV, request_body(prefetch=prefetch(dipstick(value="negative"))))
    assert response.status_code == 200
    assert response.json() == {"cards": []}


def test_malformed_resource_is_skipped_and_reported(service: Service) -> None:
    bad = {**dipstick(rid="bad"), "effectiveDateTime": "not-a-date"}
    given = [ketamine_given(), ketamine_given(days=-3, rid="ma2")]  # repeated exposure (KB-02 2.0)
    response = service.hook(PV, request_body(prefetch=prefetch(*given, dipstick(), bad)))
    assert response.status_code == 200
    # The unreadable Observation could be the same-day microscopy that overrules the dipstick (or a
    # positive culture): KB-02 cannot decide, and the response says so instead of guessing either way.
    card = only_card(response)
    assert card["summary"] == "Ketamine bladder checks incomplete: test results could not be read"
    assert "KB-02" in card["source"]["topic"]["display"]
    skipped = response.json()["extension"][f"{EXT}.skippedResources"]
    assert skipped == [{"resourceType": "Observation", "id": "bad",
                        "reason": "invalid at effectiveDateTime (value_error); 1 error(s)"}]
    assert "not-a-date" not in response.text
    assert "KB-02" in [u["rule"] for u in response.json()["extension"][f"{EXT}.undecided"]]


def test_silent_rule_with_a_malformed_resource_of_its_data_is_undecided(service: Service) -> None:
    bad = {**dipstick(rid="bad"), "effectiveDateTime": "not-a-date"}
    given = [ketamine_given(), ketamine_given(days=-3, rid="ma2")]
    response = service.hook(PV, request_body(prefetch=prefetch(*given, bad)))
    assert response.status_code == 200
    card = only_card(response)  # a ketamine patient: the silence is said, not left as "all clear"
    assert card["source"]["topic"]["code"] == "checks-incomplete" and card["indicator"] == "info"
    assert "Test results: 1 could not be read (malformed) and was skipped" in card["detail"]
    undecided = {u["rule"]: u for u in response.json()["extension"][f"{EXT}.undecided"]}
    # "No blood found" over Observations that could not all be read is unknown in the block itself.
    assert undecided["KB-02"]["version"] == rule_version("KB-02")
    assert "Observation: malformed resource(s) skipped" in undecided["KB-02"]["missing"]


def test_order_sign_evaluates_draft_orders(service: Service) -> None:
    body = request_body("order-sign", drafts=[draft_order("next-dose", KETAMINE)],
                        prefetch=prefetch(*repeated(days=-14), gross_hematuria()))
    card = only_card(service.hook(OSIGN, body))
    assert card["indicator"] == "critical"
    deletes = [a for s in card["suggestions"] for a in s["actions"] if a["type"] == "delete"]
    assert deletes == [{"type": "delete", "description": "Delete the draft ketamine order",
                        "resourceId": "MedicationRequest/next-dose"}]


@pytest.mark.parametrize(("selected", "deletes"), [("ket", ["MedicationRequest/ket"]), ("para", None)])
def test_order_select_evaluates_only_the_selected_drafts(service: Service, selected: str,
                                                         deletes: list[str] | None) -> None:
    """Only the selected draft is judged; selecting paracetamol is no occasion for a ketamine card (issue 11 B11)."""
    drafts = [draft_order("ket", KETAMINE), draft_order("para", PARACETAMOL)]
    body = request_body("order-select", drafts=drafts, selections=[f"MedicationRequest/{selected}"],
                        prefetch=prefetch(*repeated(days=-14), gross_hematuria()))
    response = service.hook(OSEL, body)
    if deletes is None:
        assert response.status_code == 200 and response.json()["cards"] == []
        return
    card = only_card(response)
    assert card["indicator"] == "critical"
    found = [a["resourceId"] for s in card.get("suggestions", []) for a in s["actions"] if a["type"] == "delete"]
    assert found == deletes


def test_medication_named_by_reference_is_matched_through_the_medication(service: Service) -> None:
    data = prefetch(*repeated_by_reference(), dipstick())
    data["medicationAdministration"]["entry"].append({"resource": ketamine_product(), "search": {"mode": "include"}})
    card = only_card(service.hook(PV, request_body(prefetch=data)))
    assert card["indicator"] == "warning"
    assert f"{EXT}.missingData" not in card["extension"]


def comparable(card: dict[str, Any]) -> tuple[Any, ...]:
    """What a clinician sees of a card, without uuids and the resource ids of the evidence."""
    return (card["indicator"], card["summary"], card["source"]["topic"]["code"],
            sorted(s["label"] for s in card.get("suggestions", [])))


@pytest.mark.parametrize("hook", ["patient-view", "order-sign"])
def test_prefetch_only_medication_reference_gives_the_same_cards_as_inline_coding(service: Service,
                                                                                   hook: str) -> None:
    """A prefetch-only EHR (no fhirServer) that honours ``_include=…:medication`` (issue 11 A3)."""
    drafts = [draft_order("d1", KETAMINE)] if hook == "order-sign" else None
    sid = PV if hook == "patient-view" else OSIGN
    inline = service.hook(sid, request_body(hook, drafts=drafts, prefetch=prefetch(
        {**ketamine_given(rid="ma-ref"), "id": "ma-ref"}, dipstick(), gross_hematuria())))
    data = prefetch(ketamine_by_reference(), dipstick(), gross_hematuria())
    data["medicationAdministration"]["entry"].append({"resource": ketamine_product(), "search": {"mode": "include"}})
    referenced = service.hook(sid, request_body(hook, drafts=drafts, prefetch=data))
    assert inline.status_code == referenced.status_code == 200
    assert inline.json()["cards"], "the inline-coded patient gets cards"
    assert ([comparable(c) for c in referenced.json()["cards"]]
            == [comparable(c) for c in inline.json()["cards"]])
    assert f"{EXT}.missingData" not in referenced.json().get("extension", {})


def test_contained_medication_is_read(service: Service) -> None:
    given = ketamine_by_reference()
    given["medicationReference"] = {"reference": "#k"}
    given["contained"] = [{**ketamine_product(None), "id": "k"}]
    inline = only_card(service.hook(PV, request_body(prefetch=prefetch(ketamine_given(), dipstick()))))
    card = only_card(service.hook(PV, request_body(prefetch=prefetch(given, dipstick()))))
    assert card["source"]["topic"]["code"] == "KB-02"
    assert (card["indicator"], card["summary"]) == (inline["indicator"], inline["summary"])
    assert f"{EXT}.missingData" not in card["extension"]


def test_unavailable_referenced_medication_is_reported_not_ignored(service: Service) -> None:
    response = service.hook(PV, request_body(prefetch=prefetch(ketamine_by_reference(), dipstick())))
    assert response.status_code == 200
    assert response.json()["cards"] == []
    extension = response.json()["extension"]
    assert extension[f"{EXT}.missingData"] == [
        {"key": "medication", "reason": "1 referenced Medication(s) not available (no FHIR access)"}]
    assert "KB-02" in [u["rule"] for u in extension[f"{EXT}.undecided"]]


OUTCOME = {"resourceType": "OperationOutcome",
           "issue": [{"severity": "error", "code": "exception", "diagnostics": "search failed"}]}


def test_known_exposure_with_unretrievable_results_gets_one_incomplete_checks_card(service: Service) -> None:
    """Issue 11 A2: never an empty "All clear" for a ketamine patient whose urine results could not be read."""
    data = prefetch(ketamine_given(), ketamine_given(days=-3, rid="ma2"))
    data["observation"] = OUTCOME
    response = service.hook(PV, request_body(prefetch=data))
    card = only_card(response)
    assert card["indicator"] == "info"
    assert card["summary"] == "Ketamine bladder checks incomplete: test results could not be retrieved"
    assert card["source"]["topic"]["code"] == "checks-incomplete"
    undecided = response.json()["extension"][f"{EXT}.undecided"]
    named = card["source"]["topic"]["display"]
    for entry in undecided:
        if entry["rule"] in ("KB-02", "KB-07"):
            assert f"{entry['rule']} v{entry['version']}" in named  # the card names rule ids and versions
            assert f"{entry['rule']} v{entry['version']}" in card["detail"]
    assert "not an all-clear" in card["detail"]
    assert "Test results: could not be retrieved (prefetch OperationOutcome)" in card["detail"]
    incomplete = card["extension"][f"{EXT}.incomplete"]
    assert {i["rule"] if "rule" in i else i["id"] for i in incomplete} >= {"KB-02"}


def test_a_draft_ketamine_order_is_known_exposure(service: Service) -> None:
    data = prefetch()
    data["observation"] = OUTCOME
    response = service.hook(OSIGN, request_body("order-sign", drafts=[draft_order("d1", KETAMINE)], prefetch=data))
    summaries = [c["summary"] for c in response.json()["cards"]]
    assert "Ketamine bladder checks incomplete: test results could not be retrieved" in " ".join(
        summaries + [c.get("detail", "") for c in response.json()["cards"]])


def test_without_known_exposure_the_gap_stays_in_the_extension(service: Service) -> None:
    """A medication-query outage on patient-view must not put a card on every chart."""
    data = prefetch(dipstick())
    data["medicationAdministration"] = OUTCOME
    response = service.hook(PV, request_body(prefetch=data))
    assert response.status_code == 200
    body = response.json()
    assert body["cards"] == []
    assert "KB-02" in [u["rule"] for u in body["extension"][f"{EXT}.undecided"]]
    assert {"key": "medicationAdministration", "reason": "prefetch OperationOutcome"} in body["extension"][
        f"{EXT}.missingData"]


# -- 4xx --------------------------------------------------------------------------------------------------------


def test_missing_context_field_is_400_naming_the_field(service: Service) -> None:
    body = request_body(prefetch=prefetch())
    del body["context"]["patientId"]
    response = service.hook(PV, body)
    assert response.status_code == 400
    assert error_field(response.json()) == "context.patientId"


def test_hook_not_served_by_that_id_is_400(service: Service) -> None:
    response = service.hook(OSIGN, request_body(prefetch=prefetch()))
    assert response.status_code == 400
    assert error_field(response.json()) == "hook"


def test_malformed_json_is_400(service: Service) -> None:
    response = requests.post(f"{service.url}/cds-services/{PV}", data=b'{"hook": ',
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400
    assert error_field(response.json()) == "$"


def test_unknown_service_is_404_json(service: Service) -> None:
    response = service.hook("no-such-service", request_body(prefetch=prefetch()))
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("application/json")
    assert error_issue(response.json())["code"] == "not-found"


def test_body_over_the_limit_is_413(service: Service) -> None:
    body = request_body(prefetch=prefetch(), padding="x" * (MAX_BODY + 10))
    response = service.hook(PV, body)
    assert response.status_code == 413
    assert error_issue(response.json())["code"] == "too-costly"


def test_chunked_body_over_the_limit_is_413(service: Service) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"padding": "'
        for _ in range(MAX_BODY // 1000 + 1):
            yield b"x" * 1000
        yield b'"}'

    response = requests.post(f"{service.url}/cds-services/{PV}", data=chunks(), timeout=10,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_body_at_the_limit_is_read(service: Service) -> None:
    body = json.dumps(request_body(prefetch=prefetch())).encode()
    body = body[:-1] + b"," + b'"pad": "' + b"x" * (MAX_BODY - len(body) - 10) + b'"}'
    assert len(body) == MAX_BODY
    response = requests.post(f"{service.url}/cds-services/{PV}", data=body, timeout=10,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 200


def test_wrong_content_type_is_415(service: Service) -> None:
    response = requests.post(f"{service.url}/cds-services/{PV}", data=json.dumps(request_body()),
                             headers={"Content-Type": "text/plain"}, timeout=10)
    assert response.status_code == 415
    assert error_issue(response.json())["code"] == "not-supported"


def test_fhir_json_content_type_is_accepted(service: Service) -> None:
    response = requests.post(f"{service.url}/cds-services/{PV}", data=json.dumps(request_body(prefetch=prefetch())),
                             headers={"Content-Type": "application/fhir+json; charset=utf-8"}, timeout=10)
    assert response.status_code == 200


def test_absent_prefetch_key_without_fhir_server_is_412(service: Service) -> None:
    response = service.hook(PV, request_body(prefetch=prefetch(omit=("observation",))))
    assert response.status_code == 412
    issue = error_issue(response.json())
    assert issue["code"] == "processing" and issue["expression"] == ["prefetch.observation"]


def test_unknown_route_and_method_are_json(service: Service) -> None:
    assert error_issue(requests.get(f"{service.url}/nothing", timeout=10).json())["code"] == "not-found"
    response = requests.get(f"{service.url}/cds-services/{PV}", timeout=10)
    assert response.status_code == 405
    assert error_issue(response.json())["code"] == "not-supported"


# -- feedback ------------------------------------------------------------------------------------------------


def test_feedback_is_stored_idempotently(service: Service) -> None:
    card = only_card(service.hook(PV, request_body(prefetch=prefetch(ketamine_given(), dipstick()))))
    feedback = {"feedback": [{
        "card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-23T10:00:00Z",
        "overrideReason": {"reason": card["overrideReasons"][0], "userComment": "seen by urology"},
    }]}
    for _ in range(2):
        response = service.post(f"/cds-services/{PV}/feedback", feedback)
        assert response.status_code == 200
        assert response.json() == {}
    assert service.store.feedback_count(card_uuid=card["uuid"]) == 1
    stored = service.store.feedback_for_card(card["uuid"])[0]
    assert (stored.rule_id, stored.outcome, stored.reason_code) == ("KB-02", "overridden", "alternative-cause")


def test_invalid_feedback_is_400_naming_the_field(service: Service) -> None:
    body = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "ignored", "outcomeTimestamp": "2026-11-23T10:00:00Z"}]}
    response = service.post(f"/cds-services/{PV}/feedback", body)
    assert response.status_code == 400
    assert error_field(response.json()) == "feedback[0].outcome"
    assert service.post("/cds-services/nope/feedback", {"feedback": []}).status_code == 404


# -- CORS and health ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/cds-services", f"/cds-services/{PV}", f"/cds-services/{PV}/feedback"])
def test_cors_preflight(service: Service, path: str) -> None:
    response = requests.options(service.url + path, timeout=10, headers={
        "Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_cors_allowlist_echoes_only_listed_origins() -> None:
    settings = Settings(database_url="sqlite:///:memory:", cors_origins=("https://ehr.example",), reload_interval_s=0)
    client = create_app(settings, rules_state=RulesState([RULES], reload_interval_s=0)).test_client()
    ok = client.get("/cds-services", headers={"Origin": "https://ehr.example"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://ehr.example"
    assert "Origin" in ok.headers["Vary"]
    other = client.get("/cds-services", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_healthz(service: Service) -> None:
    response = requests.get(f"{service.url}/healthz", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["rules"]["loaded"] == len(service.rules.ruleset.rules) >= 1
    assert body["rules"]["version"] == service.rules.ruleset.version
    assert body["rules"]["lastError"] is None
    assert body["store"]["reachable"] is True


def _wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_broken_rule_edit_keeps_the_last_good_set(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    shutil.copytree(RULES, rules_dir, ignore=shutil.ignore_patterns("tests"))
    rules = RulesState([rules_dir], reload_interval_s=0.05)
    rules.start_polling()
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}", reload_interval_s=0.05)
    try:
        with serving(create_app(settings, rules_state=rules, store=store)) as url:
            good = requests.get(f"{url}/healthz", timeout=10).json()["rules"]["version"]
            rule_file = rules_dir / "KB-02-hematuria-exposed.yaml"
            original = rule_file.read_text(encoding="utf-8")
            rule_file.write_text(original.replace("indicator: warning", "indicator: loud"), encoding="utf-8")

            def failed() -> dict[str, Any] | None:
                health = requests.get(f"{url}/healthz", timeout=10).json()
                return health if health["rules"]["lastError"] else None

            health = _wait_for(failed)
            assert health["rules"]["version"] == good
            assert health["status"] == "degraded"
            assert any("KB-02-hematuria-exposed.yaml:" in e for e in health["rules"]["lastError"])
            body = request_body(prefetch=prefetch(*repeated(), dipstick()))
            card = only_card(requests.post(f"{url}/cds-services/{PV}", json=body, timeout=30))
            assert card["indicator"] == "warning"  # still the last good rules

            rule_file.write_text(original.replace("assess for ketamine cystitis", "assess the bladder"),
                                 encoding="utf-8")
            health = _wait_for(lambda: (h := requests.get(f"{url}/healthz", timeout=10).json())
                               ["rules"]["lastError"] is None and h)
            assert health["rules"]["version"] != good
            card = only_card(requests.post(f"{url}/cds-services/{PV}", json=body, timeout=30))
            assert card["summary"].endswith("assess the bladder")
    finally:
        rules.stop_polling()
        store.dispose()


# -- a real FHIR server --------------------------------------------------------------------------------------


def _load_patient(fhir_server: Any) -> tuple[str, str]:
    """A patient with a positive dipstick, and a ketamine Medication, on the FHIR server: their ids."""
    mrn = f"kbladder-http-{uuid.uuid4().hex[:8]}"
    ref = f"urn:uuid:{uuid.uuid4()}"
    obs = dipstick()
    obs.pop("id")
    obs["subject"] = {"reference": ref}
    response = fhir_server.post_bundle({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": ref, "request": {"method": "POST", "url": "Patient"},
         "resource": {"resourceType": "Patient", "identifier": [{"system": "http://hospital.smarthealthit.org",
                                                                  "value": mrn}], "gender": "male"}},
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "Observation"},
         "resource": obs},
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "Medication"},
         "resource": ketamine_product(None)},
    ]})
    location = next(e["response"]["location"] for e in response["entry"] if "Medication/" in e["response"]["location"])
    return fhir_server.patient_by_mrn(mrn), location.split("Medication/")[1].split("/")[0]


def test_absent_prefetch_key_is_fetched_from_the_fhir_server_with_the_token(
    service: Service, fhir_server: Any, no_token_in_logs: None
) -> None:
    pid, _ = _load_patient(fhir_server)
    auth = {"access_token": fhir_server.token, "token_type": "Bearer", "expires_in": 300,
            "scope": "patient/*.read", "subject": "kbladder-cds", "patient": pid}
    data = prefetch(*repeated(pid), pid=pid, omit=("observation",))
    body = request_body(pid=pid, prefetch=data, fhirServer=fhir_server.base_url, fhirAuthorization=auth)
    card = only_card(service.hook(PV, body))  # the dipstick exists only on the FHIR server
    assert card["indicator"] == "warning"
    assert "extension" not in service.hook(PV, {**body, "hookInstance": str(uuid.uuid4())}).json()

    # A wrong token: the server refuses, the key is reported missing, and no card claims "no blood".
    wrong = {**body, "hookInstance": str(uuid.uuid4()), "fhirAuthorization": {**auth, "access_token": "wrong"}}
    response = service.hook(PV, wrong)
    assert response.status_code == 200
    (card,) = response.json()["cards"]  # known exposure: the incomplete checks are said, never "all clear"
    assert card["summary"] == "Ketamine bladder checks incomplete: test results could not be retrieved"
    assert "HTTP 401" in card["detail"]
    extension = response.json()["extension"]
    assert [m["key"] for m in extension[f"{EXT}.missingData"]] == ["observation"]
    undecided = {u["rule"]: u for u in extension[f"{EXT}.undecided"]}
    assert undecided["KB-02"]["version"] == rule_version("KB-02")
    assert "observation: HTTP 401" in undecided["KB-02"]["missing"]


def test_referenced_medication_is_read_from_the_fhir_server(
    service: Service, fhir_server: Any, no_token_in_logs: None
) -> None:
    pid, medication_id = _load_patient(fhir_server)
    auth = {"access_token": fhir_server.token, "token_type": "Bearer", "expires_in": 300,
            "scope": "patient/*.read", "subject": "kbladder-cds", "patient": pid}
    data = prefetch(*repeated_by_reference(pid, medication_id), dipstick(pid), pid=pid)
    body = request_body(pid=pid, prefetch=data, fhirServer=fhir_server.base_url, fhirAuthorization=auth)
    response = service.hook(PV, body)
    card = only_card(response)  # the administration names ketamine only through the server's Medication
    assert card["indicator"] == "warning"
    assert "extension" not in response.json()


def test_the_injected_clock_is_the_evaluation_time(tmp_path: Path) -> None:
    """Replaying data recorded three years ago: with the clock set to then, KB-02 fires; today it does not
    (beyond KB-02's two-year history lookback)."""
    year_ago = datetime.now(UTC) - timedelta(days=1100)
    old_admins = repeated(days=-1100 - 17)
    old_dipstick = dict(dipstick(days=-1100 - 2))
    body = request_body(prefetch=prefetch(*old_admins, old_dipstick))
    store = Store(f"sqlite:///{tmp_path / 'clock.sqlite3'}")
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'clock.sqlite3'}", reload_interval_s=0)
    answers = {}
    for label, clock in (("then", lambda: year_ago), ("now", lambda: datetime.now(UTC))):
        app = create_app(settings, rules_state=RulesState([RULES], reload_interval_s=0), store=store, clock=clock)
        with serving(app) as url:
            response = requests.post(f"{url}/cds-services/kbladder-patient-view", json=body, timeout=30)
        assert response.status_code == 200, response.text
        answers[label] = [c["source"]["topic"]["code"] for c in response.json()["cards"]]
    store.dispose()
    assert "KB-02" in answers["then"]
    assert "KB-02" not in answers["now"]


def test_prefetch_over_the_entry_limit_is_413_naming_prefetch(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'limit.sqlite3'}", reload_interval_s=0,
                        max_prefetch_entries=5)
    store = Store(settings.database_url)
    app = create_app(settings, rules_state=RulesState([RULES], reload_interval_s=0), store=store)
    many = [dipstick(rid=f"o{i}") for i in range(5)]
    with serving(app) as url:
        over = requests.post(f"{url}/cds-services/{PV}", json=request_body(prefetch=prefetch(ketamine_given(), *many)),
                             timeout=30)
        under = requests.post(f"{url}/cds-services/{PV}", json=request_body(prefetch=prefetch(ketamine_given())),
                              timeout=30)
    store.dispose()
    assert over.status_code == 413 and error_field(over.json()) == "prefetch", over.text
    assert under.status_code == 200, under.text


def test_access_log_names_the_patient_only_by_a_keyed_hash(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from cds_service.app import patient_hash

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'hash.sqlite3'}", reload_interval_s=0,
                        log_hash_key="site-secret")
    store = Store(settings.database_url)
    app = create_app(settings, rules_state=RulesState([RULES], reload_interval_s=0), store=store)
    pid = "Zebediah-Quux-4711"
    with caplog.at_level("INFO", logger="cds_service.access"), serving(app) as url:
        for _ in range(2):
            body = request_body(pid=pid, prefetch=prefetch(ketamine_given(pid), dipstick(pid), pid=pid))
            assert requests.post(f"{url}/cds-services/{PV}", json=body, timeout=30).status_code == 200
    store.dispose()
    lines = [r for r in caplog.records if r.name == "cds_service.access" and r.getMessage() == "request"
             and getattr(r, "fields", {}).get("hookInstance")]
    hashes = {r.fields["patient"] for r in lines}  # type: ignore[attr-defined]
    assert hashes == {patient_hash(b"site-secret", pid)}  # stable across calls, keyed by the site secret
    assert patient_hash(b"another-secret", pid) not in hashes
    assert all(pid not in r.getMessage() and pid not in str(getattr(r, "fields", "")) for r in caplog.records)


def test_access_log_names_the_rules_that_fired(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Operators see which rules fired in each request line: rule ids only, no patient data."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'rules.sqlite3'}", reload_interval_s=0)
    store = Store(settings.database_url)
    app = create_app(settings, rules_state=RulesState([RULES], reload_interval_s=0), store=store)
    with caplog.at_level("INFO", logger="cds_service.access"), serving(app) as url:
        fired = requests.post(f"{url}/cds-services/{PV}", timeout=30,
                              json=request_body(prefetch=prefetch(ketamine_given(), dipstick())))
        quiet = requests.post(f"{url}/cds-services/{PV}", timeout=30,
                              json=request_body(prefetch=prefetch(dipstick(value="negative"))))
    store.dispose()
    lines = [r.fields for r in caplog.records if r.name == "cds_service.access"  # type: ignore[attr-defined]
             and getattr(r, "fields", {}).get("hookInstance")]
    shown = sorted({c["extension"][f"{EXT}.rule"]["id"] for c in fired.json()["cards"]})
    assert shown and set(shown) <= set(lines[0]["rules"])
    assert all(rule.startswith("KB-") for rule in lines[0]["rules"])
    assert quiet.json()["cards"] == [] and lines[1]["rules"] == []
