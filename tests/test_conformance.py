"""CDS Hooks 2.0 conformance of the service over real HTTP: every test name starts with its checklist row.

Row ids (G, D, R, P, A, C, F, J) are those of shared/docs/cds-hooks-checklist.md; docs/conformance.md maps
every row to its tests here or says why it is not covered. The app runs under werkzeug's threaded server on
a loopback port and is called with requests. FHIR servers are pytest-httpserver fakes that record what they
are asked (P4, P5, A1-A4, R3) or the real sekmet server of conftest (P6, P8).

Patient data makes KB-02 fire (ketamine 35 mg given a few days ago, then dipstick blood "1+"). The rule set
is growing, so tests find KB-02's card by its ``source.topic`` code or check every card generically, and
prefetch is built from the templates discovery publishes, never from a fixed list of keys.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from hookdata import (
    KETAMINE,
    bundle,
    dipstick,
    draft_order,
    gross_hematuria,
    ketamine_by_reference,
    ketamine_given,
    ketamine_product,
    patient,
    request_body,
    serving,
)
from outcomes import error_field, error_issue
from pytest_httpserver import HTTPServer
from sqlalchemy import func, select
from werkzeug.wrappers import Request, Response

from cds_service.app import create_app
from cds_service.cdshooks import (
    HOOKS,
    discovery_problems,
    empty_value_problems,
    prefetch_tokens,
    response_problems,
    template_problems,
)
from cds_service.config import ConfigError, Settings
from cds_service.fhir.client import FetchLimits
from cds_service.governance.service import Governance
from cds_service.http.state import EXTENSION
from cds_service.logjson import JsonFormatter
from cds_service.rules_state import RulesState
from cds_service.store import Store
from cds_service.store.schema import CardIssueRow

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"
PV, OSEL, OSIGN = "kbladder-patient-view", "kbladder-order-select", "kbladder-order-sign"
SERVICE_FOR_HOOK = {hook: definition.service.id for hook, definition in HOOKS.items()}
PARACETAMOL = {"coding": [{"system": "http://snomed.info/sct", "code": "322236009"}], "text": "Paracetamol"}
DIPSTICK_CODE = "http://loinc.org|5794-3"
SANDBOX = "https://sandbox.cds-hooks.org"
# CDS Hooks 2.0 #prefetch-tokens: root-level context fields marked "Prefetch Token: Yes" in the Hook
# Library for our hooks, and the four user tokens. Written out here, not taken from cds_service.
SPEC_TOKENS = frozenset({"context.userId", "context.patientId", "context.encounterId", "userPractitionerId",
                         "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"})
# Reverse-domain extension member names (G3), e.g. org.kbladder-cds.rule.
EXTENSION_NAME = re.compile(r"^[a-z][a-z0-9-]*(\.[a-z0-9-]+)+\.[A-Za-z][A-Za-z0-9_-]*$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# -- the service over HTTP -----------------------------------------------------------------------------------


class Service:
    """A running service: base URL, its store and database folder, discovery fetched once."""

    def __init__(self, url: str, store: Store, db_dir: Path, governance: Governance | None = None) -> None:
        self.url, self.store, self.db_dir, self.governance = url, store, db_dir, governance
        self._discovery: dict[str, Any] | None = None

    def discovery(self) -> dict[str, Any]:
        if self._discovery is None:
            response = requests.get(f"{self.url}/cds-services", timeout=10)
            assert response.status_code == 200, response.text
            self._discovery = response.json()
        return self._discovery

    def templates(self, hook: str) -> dict[str, str]:
        """The prefetch templates discovery publishes for *hook*."""
        return next(s for s in self.discovery()["services"] if s["hook"] == hook)["prefetch"]

    def post(self, path: str, body: Any, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=30, **kwargs)

    def call(self, body: dict[str, Any], service_id: str | None = None) -> requests.Response:
        """POST *body* to the service for its hook (or to *service_id*)."""
        return self.post(f"/cds-services/{service_id or SERVICE_FOR_HOOK[body['hook']]}", body)

    def issued(self, hook_instance: str) -> int:
        """Cards the store logged for one hook instance (after the background writer drained)."""
        if self.governance is not None:
            self.governance.flush()
        query = select(func.count()).select_from(CardIssueRow).where(CardIssueRow.hook_instance == hook_instance)
        with self.store.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())


@contextmanager
def running(rules: RulesState, db_dir: Path, **settings: Any) -> Iterator[Service]:
    """The app with the repository's rules, a SQLite store in *db_dir* and *settings* overrides."""
    database_url = f"sqlite:///{db_dir / 'kbladder.sqlite3'}"
    store = Store(database_url)
    # Each check here is one independent call: no order-select -> order-sign de-duplication between them.
    settings.setdefault("order_dedupe_window_s", 0)
    config = Settings(database_url=database_url, reload_interval_s=0,
                      fetch_limits=FetchLimits(time_budget_s=10, request_timeout_s=5), **settings)
    try:
        app = create_app(config, rules_state=rules, store=store)
        with serving(app) as url:
            yield Service(url, store, db_dir, app.extensions[EXTENSION].governance)
    finally:
        store.dispose()


@pytest.fixture(scope="module")
def rules() -> RulesState:
    state = RulesState([RULES], reload_interval_s=0)
    if state.ruleset is None:
        pytest.fail(f"rules/ does not load: {state.current.last_error}")
    return state


@pytest.fixture(scope="module")
def service(rules: RulesState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running(rules, tmp_path_factory.mktemp("conformance-db")) as svc:
        yield svc


# -- FHIR data ------------------------------------------------------------------------------------------------


def template_type(template: str) -> str:
    """The resource type a template reads or searches."""
    return template.split("?", 1)[0].split("/", 1)[0]


def prefetch_for(svc: Service, hook: str, *resources: dict[str, Any], pid: str = "p1",
                 omit: tuple[str, ...] = ()) -> dict[str, Any]:
    """A prefetch answering every published template: Patient reads get the patient, searches a Bundle."""
    data: dict[str, Any] = {}
    for key, template in svc.templates(hook).items():
        rtype = template_type(template)
        if key in omit:
            continue
        if "?" not in template:
            assert rtype == "Patient", f"unexpected read template {template}"
            data[key] = patient(pid)
        else:
            data[key] = bundle(*(r for r in resources if r["resourceType"] == rtype))
    types = {template_type(t) for t in svc.templates(hook).values()}
    assert all(r["resourceType"] in types for r in resources), "a resource type is not prefetched any more"
    return data


def authorization(token: str, pid: str = "p1", **changes: Any) -> dict[str, Any]:
    return {"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read",
            "subject": "kbladder-cds", "patient": pid, **changes}


def kb02_patient_view(svc: Service, pid: str = "p1") -> dict[str, Any]:
    """patient-view: ketamine 10 and 3 days ago (repeated exposure), dipstick blood 1+ (KB-02 warning)."""
    given = [ketamine_given(pid), ketamine_given(pid, days=-3, rid="ma2")]
    return request_body(pid=pid, prefetch=prefetch_for(svc, "patient-view", *given, dipstick(pid)))


def kb02_order(svc: Service, hook: str) -> dict[str, Any]:
    """order-select/-sign: a ketamine draft (plus paracetamol), history with visible blood (KB-02 critical)."""
    drafts = [draft_order("ket", KETAMINE), draft_order("para", PARACETAMOL)]
    history = prefetch_for(svc, hook, ketamine_given(days=-14, rid="ma0"), ketamine_given(days=-7), dipstick(),
                           gross_hematuria())
    selections = ["MedicationRequest/ket"] if hook == "order-select" else None
    return request_body(hook, drafts=drafts, selections=selections, prefetch=history)


def cards_of(response: requests.Response) -> list[dict[str, Any]]:
    """The cards of a 200 response that passes the conformance checker."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert response_problems(body) == []
    return body["cards"]


def kb02_card(response: requests.Response) -> dict[str, Any]:
    """KB-02's card (there must be exactly one), whatever other rules said."""
    found = [c for c in cards_of(response) if c["source"].get("topic", {}).get("code") == "KB-02"]
    assert len(found) == 1, f"expected one KB-02 card, got {[c['summary'] for c in cards_of(response)]}"
    return found[0]


def without_uuids(value: Any) -> Any:
    """*value* with every card/suggestion uuid removed (they are new on each call)."""
    if isinstance(value, dict):
        return {k: without_uuids(v) for k, v in value.items() if k != "uuid"}
    if isinstance(value, list):
        return [without_uuids(v) for v in value]
    return value


@pytest.fixture(scope="module")
def scenarios(service: Service) -> dict[str, dict[str, Any]]:
    """Response bodies of the three KB-02 scenarios, one per hook, called once for the card tests (C*)."""
    bodies = {}
    for name, body in (("patient-view", kb02_patient_view(service)),
                       ("order-select", kb02_order(service, "order-select")),
                       ("order-sign", kb02_order(service, "order-sign"))):
        response = service.call(body)
        kb02_card(response)
        bodies[name] = response.json()
    return bodies


def all_cards(scenarios: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    cards = [(f"{name}.cards[{i}]", card) for name, body in scenarios.items() for i, card in enumerate(body["cards"])]
    assert cards
    return cards


def kb02_in(body: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in body["cards"] if c["source"]["topic"]["code"] == "KB-02")


# -- a FHIR server that records what it is asked --------------------------------------------------------------


class FakeFhir:
    """A small FHIR server on pytest-httpserver: reads, searches by patient or _id, and scripted pages/faults.

    Every request stays in ``server.log``, so a test can prove what was (not) queried and with which headers.
    """

    def __init__(self, server: HTTPServer, prefix: str = "/fhir") -> None:
        self.server, self.prefix = server, prefix.rstrip("/")
        self.resources: list[dict[str, Any]] = []
        self.pages: dict[tuple[str, str], dict[str, Any]] = {}  # (type, page) -> Bundle for ?page=N
        self.next_link: dict[str, str] = {}  # type -> next link on the first page of its searches
        self.faults: dict[str, tuple[int, dict[str, Any]]] = {}  # type -> (status, body) for every query
        server.expect_request(re.compile("^" + re.escape(self.prefix) + "/"), method="GET") \
            .respond_with_handler(self._answer)

    @property
    def base(self) -> str:
        return self.server.url_for(self.prefix)

    def add(self, *resources: dict[str, Any]) -> FakeFhir:
        self.resources.extend(resources)
        return self

    @property
    def requests(self) -> list[Request]:
        return [req for req, _ in self.server.log]

    def requested_types(self) -> list[str]:
        return [req.path[len(self.prefix) + 1:].split("/")[0] for req in self.requests]

    @staticmethod
    def _json(body: dict[str, Any], status: int = 200) -> Response:
        return Response(json.dumps(body), status=status, content_type="application/fhir+json")

    def _answer(self, request: Request) -> Response:
        segments = request.path[len(self.prefix) + 1:].split("/")
        rtype = segments[0]
        if rtype in self.faults:
            status, body = self.faults[rtype]
            return self._json(body, status)
        if "page" in request.args:
            page = self.pages.get((rtype, request.args["page"]))
            return self._json(page) if page else self._json(outcome("no such page"), 404)
        matches = [r for r in self.resources if r["resourceType"] == rtype]
        if len(segments) == 2:  # a read
            found = [r for r in matches if r.get("id") == segments[1]]
            return self._json(found[0]) if found else self._json(outcome("not found"), 404)
        if "_id" in request.args:
            matches = [r for r in matches if r.get("id") in request.args["_id"].split(",")]
        if "patient" in request.args:
            ref = f"Patient/{request.args['patient']}"
            matches = [r for r in matches if ref in (r.get("subject", {}).get("reference"),
                                                     r.get("patient", {}).get("reference"))]
        body = bundle(*matches)
        if rtype in self.next_link:
            body["link"] = [{"relation": "next", "url": self.next_link[rtype]}]
        return self._json(body)


def outcome(diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": "processing", "diagnostics": diagnostics}]}


@pytest.fixture
def fake_fhir(threaded_httpserver: HTTPServer) -> FakeFhir:
    return FakeFhir(threaded_httpserver)


def missing_keys(body: dict[str, Any]) -> list[str]:
    return [m["key"] for m in body.get("extension", {}).get("org.kbladder-cds.missingData", [])]


# -- G: general ---------------------------------------------------------------------------------------------


def test_G2_no_null_or_empty_value_in_anything_we_emit(service: Service, scenarios: dict[str, Any]) -> None:
    """G2: "SHALL NOT" emit null, "", [] or {}; omit optional members (only cards: [] / services: [] allowed)."""
    bodies: dict[str, Any] = {"discovery": service.discovery(), **scenarios}
    nothing = service.call(request_body(prefetch=prefetch_for(service, "patient-view")))
    bodies["nothing to say"] = nothing.json()
    errors = {
        "400": service.call({**request_body(prefetch=prefetch_for(service, "patient-view")), "hookInstance": 7}),
        "404": service.post("/cds-services/no-such-service", request_body()),
        "412": service.call(request_body(prefetch=prefetch_for(service, "patient-view", omit=("observation",)))),
    }
    for status, response in errors.items():
        assert str(response.status_code) == status
        bodies[f"HTTP {status}"] = response.json()
    for name, body in bodies.items():
        allow = frozenset({"$.cards", "$.services"})
        assert empty_value_problems(body, allow_empty=allow) == [], name
    assert bodies["nothing to say"]["cards"] == []


def cds_objects(body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every CDS Hooks object of a response or discovery document (not the FHIR resources inside)."""
    yield "$", body
    for i, svc in enumerate(body.get("services", [])):
        yield f"$.services[{i}]", svc
    actions = [(f"$.systemActions[{i}]", a) for i, a in enumerate(body.get("systemActions", []))]
    for i, card in enumerate(body.get("cards", [])):
        path = f"$.cards[{i}]"
        yield path, card
        yield f"{path}.source", card["source"]
        if "topic" in card["source"]:
            yield f"{path}.source.topic", card["source"]["topic"]
        for j, suggestion in enumerate(card.get("suggestions", [])):
            yield f"{path}.suggestions[{j}]", suggestion
            actions += [(f"{path}.suggestions[{j}].actions[{k}]", a) for k, a in enumerate(suggestion["actions"])]
        for key in ("overrideReasons", "links"):
            for j, item in enumerate(card.get(key, [])):
                yield f"{path}.{key}[{j}]", item
    yield from actions


def test_G3_extensions_we_emit_are_objects_with_reverse_domain_names(service: Service,
                                                                      scenarios: dict[str, Any]) -> None:
    """G3: `extension` "MUST be a JSON object"; its keys SHOULD be globally unique (reverse-domain)."""
    seen = 0
    for name, body in {"discovery": service.discovery(), **scenarios}.items():
        for path, obj in cds_objects(body):
            if "extension" in obj:
                seen += 1
                assert isinstance(obj["extension"], dict), f"{name} {path}.extension"
                for key in obj["extension"]:
                    assert EXTENSION_NAME.match(key), f"{name} {path}.extension.{key}: not reverse-domain"
    assert seen >= len(scenarios)  # every KB-02 card carries its rule in an extension


def test_G3_extension_members_in_requests_are_tolerated(service: Service, fake_fhir: FakeFhir,
                                                         secret_token: str) -> None:
    """G3: "extension" is reserved on any object; the service must tolerate/ignore unknown extensions."""
    plain = kb02_patient_view(service)
    extended = copy.deepcopy(plain)
    vendor = {"com.example.ehr.session": {"id": "s-1", "flags": [1, 2]}, "org.example.trace": "t"}
    extended["extension"] = vendor
    extended["context"]["extension"] = vendor
    extended["prefetch"]["extension"] = vendor
    extended["fhirServer"] = fake_fhir.base
    extended["fhirAuthorization"] = {**authorization(secret_token), "extension": vendor}
    expected = kb02_card(service.call(plain))
    card = kb02_card(service.call(extended))
    assert (card["summary"], card["indicator"]) == (expected["summary"], expected["indicator"])
    assert fake_fhir.requests == []  # complete prefetch: extensions did not make any key look missing


# -- D: discovery -------------------------------------------------------------------------------------------


def test_D1_discovery_at_cds_services(service: Service) -> None:
    """D1: discovery "SHALL" be at {baseUrl}/cds-services (not the pre-1.0 /.well-known/cds-services)."""
    response = requests.get(f"{service.url}/cds-services", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert requests.get(f"{service.url}/.well-known/cds-services", timeout=10).status_code == 404


def test_D2_discovery_is_200_with_a_services_array(service: Service) -> None:
    """D2: 200 with {"services": [...]} (the sandbox rejects an empty list, so we list ours)."""
    body = requests.get(f"{service.url}/cds-services", timeout=10).json()
    assert discovery_problems(body) == []
    assert isinstance(body["services"], list) and body["services"]


def test_D3_each_service_has_hook_description_id_title_prefetch(service: Service) -> None:
    """D3: hook, description, id REQUIRED; title RECOMMENDED; prefetch object of string templates; usageRequirements."""
    services = service.discovery()["services"]
    assert {s["hook"] for s in services} == set(SERVICE_FOR_HOOK)
    for svc in services:
        for key in ("hook", "description", "id", "title", "usageRequirements"):
            assert isinstance(svc[key], str) and svc[key].strip(), f"{svc.get('id')}.{key}"
        assert re.fullmatch(r"[A-Za-z0-9._~-]+", svc["id"]), "id must be usable as a URL path segment"
        assert isinstance(svc["prefetch"], dict)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in svc["prefetch"].items())
        # the id is the {id} of POST {baseUrl}/cds-services/{id}
        body = request_body(svc["hook"], drafts=[draft_order("para", PARACETAMOL)],
                            selections=["MedicationRequest/para"], prefetch=prefetch_for(service, svc["hook"]))
        assert service.call(body, svc["id"]).status_code == 200


@pytest.mark.parametrize("service_id", [PV, OSEL, OSIGN])
def test_D4_service_dispatches_on_request_hook(service: Service, service_id: str) -> None:
    """D4: an id MAY be listed for several hooks, so POST /cds-services/{id} must go by `hook`."""
    pairs = [(s["id"], s["hook"]) for s in service.discovery()["services"]]
    assert len(pairs) == len(set(pairs))
    served = {hook for sid, hook in pairs if sid == service_id}
    for hook in SERVICE_FOR_HOOK:
        body = request_body(hook, drafts=[draft_order("para", PARACETAMOL)], selections=["MedicationRequest/para"],
                            prefetch=prefetch_for(service, hook))
        response = service.call(body, service_id)
        if hook in served:
            assert response.status_code == 200, response.text
        else:
            assert response.status_code == 400, hook
            assert error_field(response.json()) == "hook"


def test_D5_every_template_has_a_key_and_is_a_relative_fhir_url(service: Service) -> None:
    """D5: each prefetch template has a key; values are relative FHIR read/search URLs with tokens."""
    for svc in service.discovery()["services"]:
        assert svc["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        for key, template in svc["prefetch"].items():
            assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key), key
            parts = urlsplit(template)
            assert not parts.scheme and not parts.netloc and not template.startswith("/"), template
            assert re.fullmatch(r"[A-Z][A-Za-z]+(/\{\{[A-Za-z.]+\}\})?", parts.path), template
            assert template_problems(template, svc["hook"]) == [], template


def test_D6_discovery_is_reachable_without_authentication(service: Service) -> None:
    """D6: whether discovery requires the client JWT is our choice; today it does not (J1-J7 are later work)."""
    assert requests.get(f"{service.url}/cds-services", timeout=10).status_code == 200
    jwt_like = "eyJhbGciOiJFUzM4NCJ9.eyJpc3MiOiJodHRwczovL3NhbmRib3guY2RzLWhvb2tzLm9yZyJ9.c2ln"
    response = requests.get(f"{service.url}/cds-services", headers={"Authorization": f"Bearer {jwt_like}"},
                            timeout=10)
    assert response.status_code == 200  # a client that does send its JWT is not turned away either


def test_D7_no_cds_hooks_3_fields_outside_extension(service: Service) -> None:
    """D7: 3.0-ballot `version`/`hookVersion` only under `extension` (strict 2.0 validators reject them)."""
    body = service.discovery()
    assert set(body) <= {"services", "extension"}
    allowed = {"hook", "title", "description", "id", "prefetch", "usageRequirements", "extension"}
    for svc in body["services"]:
        assert set(svc) <= allowed, set(svc) - allowed
        assert "version" not in svc and "hookVersion" not in svc


def test_D7_version_and_hook_version_only_for_an_ehr_that_speaks_3_0(rules: RulesState, tmp_path: Path) -> None:
    """D7: with `cds_hooks_version: "3.0"` each service names the spec version and its hook's version."""
    with running(rules, tmp_path, cds_hooks_version="3.0") as v3:
        services = v3.discovery()["services"]
    for svc in services:
        assert svc["version"] == "3.0"
        assert svc["hookVersion"] == HOOKS[svc["hook"]].hook_version
    with pytest.raises(ConfigError, match="cds_hooks_version"):
        Settings(cds_hooks_version="2.1")


# -- R: the service request -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("member", "value", "field"), [
    ("hook", None, "hook"),
    ("hookInstance", None, "hookInstance"),
    ("hookInstance", "not-a-uuid", "hookInstance"),
    ("hookInstance", 42, "hookInstance"),
    ("context", None, "context"),
    ("context", "Patient/p1", "context"),
    ("fhirServer", "ehr.example/fhir", "fhirServer"),
])
def test_R1_required_request_members_are_checked(service: Service, member: str, value: Any, field: str) -> None:
    """R1: `hook`, `hookInstance` (a UUID) and `context` (object) REQUIRED; fhirServer is an absolute URL."""
    body = kb02_patient_view(service)
    if value is None:
        del body[member]
    else:
        body[member] = value
    response = service.call(body, PV)
    assert response.status_code == 400
    assert error_field(response.json()) == field


def test_R1_fhir_server_is_required_with_fhir_authorization(service: Service, secret_token: str) -> None:
    """R1: `fhirServer` is CONDITIONAL: REQUIRED if `fhirAuthorization` is present."""
    response = service.call({**kb02_patient_view(service), "fhirAuthorization": authorization(secret_token)})
    assert response.status_code == 400
    assert error_field(response.json()) == "fhirServer"


def test_R1_http_fhir_server_is_refused_when_https_is_required(rules: RulesState, tmp_path: Path,
                                                              secret_token: str) -> None:
    """R1: fhirServer scheme "MUST be https" for production data (require_https_fhir in production)."""
    with running(rules, tmp_path, require_https_fhir=True) as strict:
        auth = authorization(secret_token)
        plain = strict.call({**kb02_patient_view(strict), "fhirServer": "http://ehr.example/fhir",
                             "fhirAuthorization": auth})
        assert plain.status_code == 400
        assert error_field(plain.json()) == "fhirServer"
        # Complete prefetch: nothing is fetched, so the https server is never contacted.
        secure = strict.call({**kb02_patient_view(strict), "fhirServer": "https://ehr.example/fhir",
                              "fhirAuthorization": auth})
        kb02_card(secure)


@pytest.mark.parametrize(("change", "field"), [
    ({"access_token": None}, "fhirAuthorization.access_token"),
    ({"access_token": ""}, "fhirAuthorization.access_token"),
    ({"token_type": None}, "fhirAuthorization.token_type"),
    ({"token_type": "MAC"}, "fhirAuthorization.token_type"),
    ({"expires_in": None}, "fhirAuthorization.expires_in"),
    ({"expires_in": "300"}, "fhirAuthorization.expires_in"),
    ({"expires_in": -1}, "fhirAuthorization.expires_in"),
    ({"scope": None}, "fhirAuthorization.scope"),
    ({"subject": None}, "fhirAuthorization.subject"),
    ({"patient": "Patient/p 1"}, "fhirAuthorization.patient"),
])
def test_R2_fhir_authorization_shape_is_validated(service: Service, fake_fhir: FakeFhir, secret_token: str,
                                                  change: dict[str, Any], field: str) -> None:
    """R2: access_token, token_type "Bearer", expires_in (integer s), scope, subject REQUIRED; patient an id."""
    auth = {k: v for k, v in {**authorization(secret_token), **change}.items() if v is not None}
    body = {**kb02_patient_view(service), "fhirServer": fake_fhir.base, "fhirAuthorization": auth}
    response = service.call(body)
    assert response.status_code == 400
    assert error_field(response.json()) == field
    assert secret_token not in response.text  # R3: errors never echo the token
    assert fake_fhir.requests == []


@pytest.mark.parametrize("change", [{}, {"patient": None}, {"token_type": "bearer"}],
                         ids=["complete", "without-patient", "lower-case-bearer"])
def test_R2_valid_fhir_authorization_is_accepted(service: Service, fake_fhir: FakeFhir, secret_token: str,
                                                 change: dict[str, Any]) -> None:
    """R2: `patient` is CONDITIONAL (only with patient/ scopes); token_type "Bearer" (case-insensitive, RFC 6750)."""
    auth = {k: v for k, v in {**authorization(secret_token), **change}.items() if v is not None}
    kb02_card(service.call({**kb02_patient_view(service), "fhirServer": fake_fhir.base, "fhirAuthorization": auth}))


def test_R3_access_token_is_never_logged_stored_or_echoed(
    service: Service, fake_fhir: FakeFhir, secret_token: str, no_token_in_logs: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """R3: the access token "MUST" be treated as transient: never persisted or logged (S5: nor echoed)."""
    json_log = io.StringIO()
    handler = logging.StreamHandler(json_log)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        # A FHIR server that echoes the token back, in an OperationOutcome and with a 401.
        fake_fhir.add(patient(), ketamine_given())
        fake_fhir.faults["Observation"] = (200, outcome(f"token {secret_token} is not valid for Observation"))
        fake_fhir.faults["Condition"] = (401, outcome(f"Bearer {secret_token} rejected"))
        body = request_body(fhirServer=fake_fhir.base, fhirAuthorization=authorization(secret_token))
        answered = service.call(body)
        assert answered.status_code == 200
        assert {"observation", "condition"} <= set(missing_keys(answered.json()))
        # 400s about the authorization itself
        bad_type = service.call({**body, "hookInstance": str(uuid.uuid4()),
                                 "fhirAuthorization": authorization(secret_token, token_type="MAC")})
        no_server = service.call({**kb02_patient_view(service), "fhirAuthorization": authorization(secret_token)})
        assert (bad_type.status_code, no_server.status_code) == (400, 400)
        issued = service.call({**kb02_patient_view(service), "fhirServer": fake_fhir.base,
                               "fhirAuthorization": authorization(secret_token)})
        kb02_card(issued)  # a card stored in the issue log, for the store check below
    finally:
        root.removeHandler(handler)

    assert any(r.headers.get("Authorization") == f"Bearer {secret_token}" for r in fake_fhir.requests)
    for response in (answered, bad_type, no_server, issued):
        assert secret_token not in response.text
        assert all(secret_token not in v for v in response.headers.values())
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert any(line["msg"] == "hook answered" for line in lines)
    assert any("fhir query" in line["msg"] and "failed" in line["msg"] for line in lines)
    assert secret_token not in json_log.getvalue()
    assert caplog.records and all(secret_token not in r.getMessage() for r in caplog.records)
    stored = b"".join(p.read_bytes() for p in service.db_dir.iterdir() if p.is_file())
    assert stored and secret_token.encode() not in stored


def test_R4_unknown_request_members_do_not_break_parsing(service: Service) -> None:
    """R4: unknown members (e.g. from 3.0 or a vendor) are ignored, not rejected."""
    plain = kb02_patient_view(service)
    extra = copy.deepcopy(plain)
    extra["futureMember"] = {"a": [1, 2]}
    extra["hookVersion"] = "1.0"
    extra["context"]["futureContextField"] = "x"
    extra["context"]["encounterId"] = "e1"
    extra["prefetch"]["notOneOfOurKeys"] = bundle(dipstick(value="negative", rid="other"))
    expected, card = kb02_card(service.call(plain)), kb02_card(service.call(extra))
    assert (card["summary"], card["indicator"]) == (expected["summary"], expected["indicator"])


@pytest.mark.parametrize("defect", ["malformed JSON", "no hook", "no context.patientId", "hook of another id",
                                    "unknown id", "text/plain", "selection not in draftOrders",
                                    "prefetch value not a resource"])
def test_R5_invalid_requests_are_refused_before_rules_run(service: Service, defect: str) -> None:
    """R5 (derived): 400 for a malformed request or a hook not served by {id}, 404 for an unknown {id}."""
    body = kb02_order(service, "order-select")
    path, status, field = f"/cds-services/{OSEL}", 400, None
    data: bytes | None = None
    headers = {"Content-Type": "application/json"}
    if defect == "malformed JSON":
        data, field = json.dumps(body).encode()[:-5], "$"
    elif defect == "no hook":
        del body["hook"]
        field = "hook"
    elif defect == "no context.patientId":
        del body["context"]["patientId"]
        field = "context.patientId"
    elif defect == "hook of another id":
        path, field = f"/cds-services/{OSIGN}", "hook"
    elif defect == "unknown id":
        path, status, field = "/cds-services/kbladder-nothing", 404, "id"
    elif defect == "text/plain":
        headers, status = {"Content-Type": "text/plain"}, 415
    elif defect == "selection not in draftOrders":
        body["context"]["selections"] = ["MedicationRequest/elsewhere"]
        field = "context.selections[0]"
    else:
        body["prefetch"]["observation"] = "Observation?patient=p1"
        field = "prefetch.observation"
    response = requests.post(service.url + path, data=data or json.dumps(body), headers=headers, timeout=30)
    assert response.status_code == status, response.text
    assert "cards" not in response.json()
    if field:
        assert error_field(response.json()) == field
    assert service.issued(body.get("hookInstance", "")) == 0
    control = kb02_order(service, "order-select")  # the same data, valid: KB-02 fires and is logged
    kb02_card(service.call(control))
    assert service.issued(control["hookInstance"]) >= 1


# -- P: prefetch ----------------------------------------------------------------------------------------------


def tokens_of(template: str) -> list[str]:
    return re.findall(r"\{\{(.*?)\}\}", template)


def test_P1_templates_use_only_valid_prefetch_tokens(service: Service) -> None:
    """P1: tokens only `context.<root-level primitive, "Prefetch Token: Yes">` or the four user tokens."""
    used = 0
    for svc in service.discovery()["services"]:
        for template in svc["prefetch"].values():
            for token in tokens_of(template):
                used += 1
                assert token in SPEC_TOKENS, f"{svc['hook']}: {{{{{token}}}}}"
                assert token in prefetch_tokens(svc["hook"]), f"{svc['hook']}: {{{{{token}}}}}"
                assert token.count(".") <= 1 and "[" not in token  # no context.draftOrders.x paths
                assert token.removeprefix("context.") not in ("draftOrders", "selections")
            assert template_problems(template, svc["hook"]) == []
    assert used >= len(service.discovery()["services"])


def test_P2_no_date_or_relative_tokens(service: Service) -> None:
    """P2: CDS Hooks 2.0 has no {{today}} or FHIRPath tokens (3.0-ballot only); look-back is applied in code."""
    for svc in service.discovery()["services"]:
        for template in svc["prefetch"].values():
            for token in tokens_of(template):
                assert not re.search(r"today|now|\(|\)|%|\bdays?\b", token, re.I), template
            for name, value in parse_qsl(urlsplit(template).query):
                assert name not in ("date", "effective", "authoredon", "onset-date") or "{{" not in value


def test_P3_templates_stay_within_the_query_subset(service: Service) -> None:
    """P3: reads, type searches by patient reference, token params by equality (or :in), _count, _sort."""
    for svc in service.discovery()["services"]:
        for key, template in svc["prefetch"].items():
            _, _, query = template.partition("?")
            if not query:
                continue
            params = dict(parse_qsl(query, keep_blank_values=True))
            assert len(params) == len(parse_qsl(query)), f"{key}: repeated parameter"
            assert params["patient"] == "{{context.patientId}}", key
            assert params["_count"].isdigit() and int(params["_count"]) > 0, f"{key}: _count"
            # The one documented step outside the subset: a medication search includes the Medication it
            # references (docs/service.md); a client that ignores _include still runs a valid search.
            rtype = template.partition("?")[0]
            if "_include" in params:
                assert params.pop("_include") == f"{rtype}:medication", key
            for name in params:
                base, _, modifier = name.partition(":")
                assert modifier in ("", "in"), f"{key}: modifier :{modifier}"
                assert "." not in base and base not in ("_include", "_revinclude", "_has", "_filter"), key
                assert base in ("patient", "code", "category", "status", "date", "_count", "_sort"), f"{key}: {base}"
            for code in params.get("code", "").split(",") if "code" in params else []:
                system, _, value = code.partition("|")
                assert re.fullmatch(r"https?://\S+|urn:\S+", system) and value, f"{key}: code {code}"
        # The high-volume types are narrowed by code; the dipstick code KB-02 reads is among them.
        by_type = {template_type(t): t for t in svc["prefetch"].values()}
        for rtype in ("Observation", "Condition"):
            if rtype in by_type:  # (appointment-book's rules read no Condition)
                assert "&code=" in by_type[rtype], f"{svc['hook']}: {rtype} search is not code-filtered"
        assert DIPSTICK_CODE in by_type["Observation"]


def test_P4_absent_key_is_fetched_with_the_template_query(service: Service, fake_fhir: FakeFhir,
                                                           secret_token: str) -> None:
    """P4: key absent = the client did not satisfy it: the service fetches it itself (same query)."""
    fake_fhir.add(dipstick())
    body = request_body(prefetch=prefetch_for(service, "patient-view", ketamine_given(), omit=("observation",)),
                        fhirServer=fake_fhir.base, fhirAuthorization=authorization(secret_token))
    kb02_card(service.call(body))  # the dipstick exists only on the FHIR server
    assert fake_fhir.requested_types() == ["Observation"]
    asked = fake_fhir.requests[0]
    template = dict(parse_qsl(urlsplit(service.templates("patient-view")["observation"]).query))
    assert asked.args["patient"] == "p1"
    assert asked.args["code"] == template["code"] and asked.args["_count"] == template["_count"]


def test_P4_null_means_no_data_and_is_not_fetched(service: Service, fake_fhir: FakeFhir, secret_token: str) -> None:
    """P4: a `null` prefetch value means "no data" (a read found nothing): not missing, not re-fetched."""
    fake_fhir.add(patient(), gross_hematuria())  # re-fetching Condition would make KB-02 critical
    data = prefetch_for(service, "patient-view", ketamine_given(), ketamine_given(days=-3, rid="ma2"), dipstick())
    data["patient"] = None
    data["condition"] = None
    response = service.call(request_body(prefetch=data, fhirServer=fake_fhir.base,
                                         fhirAuthorization=authorization(secret_token)))
    card = kb02_card(response)
    assert card["indicator"] == "warning"
    assert fake_fhir.requests == []
    assert not {"patient", "condition"} & set(missing_keys(response.json()))


@pytest.mark.parametrize("shape", ["OperationOutcome", "Bundle with an OperationOutcome entry"])
def test_P4_operation_outcome_means_missing_and_is_not_requeried(service: Service, fake_fhir: FakeFhir,
                                                                  secret_token: str, shape: str) -> None:
    """P4: an OperationOutcome (alone or in the Bundle) = prefetch error: reported missing, not re-queried."""
    fake_fhir.add(gross_hematuria())
    error = outcome("Condition search timed out")
    data = prefetch_for(service, "patient-view", ketamine_given(), dipstick())
    if shape == "OperationOutcome":
        data["condition"] = error
    else:
        data["condition"]["entry"].append({"resource": error, "search": {"mode": "outcome"}})
    response = service.call(request_body(prefetch=data, fhirServer=fake_fhir.base,
                                         fhirAuthorization=authorization(secret_token)))
    assert response.status_code == 200
    assert "condition" in missing_keys(response.json())
    assert "Condition" not in fake_fhir.requested_types()
    assert fake_fhir.requests == []


def test_P5_prefetched_bundle_next_link_is_followed_with_the_token(service: Service, fake_fhir: FakeFhir,
                                                                    secret_token: str) -> None:
    """P5: prefetch Bundles MAY be paginated: follow Bundle.link[next] against fhirServer with the token."""
    fake_fhir.pages[("Observation", "2")] = bundle(dipstick())
    data = prefetch_for(service, "patient-view", ketamine_given(), ketamine_given(days=-3, rid="ma2"),
                        dipstick(value="negative", days=-2, rid="o0"))
    data["observation"]["link"] = [{"relation": "next", "url": f"{fake_fhir.base}/Observation?patient=p1&page=2"}]
    card = kb02_card(service.call(request_body(prefetch=data, fhirServer=fake_fhir.base,
                                               fhirAuthorization=authorization(secret_token))))
    assert card["indicator"] == "warning"  # the blood is on page 2 only
    assert [(r.path, r.args.get("page")) for r in fake_fhir.requests] == [("/fhir/Observation", "2")]
    assert fake_fhir.requests[0].headers["Authorization"] == f"Bearer {secret_token}"


def test_P5_next_link_without_fhir_access_is_reported_missing(service: Service, fake_fhir: FakeFhir) -> None:
    """P5: a paginated prefetch that cannot be continued is partial data, never "complete"."""
    data = prefetch_for(service, "patient-view", ketamine_given(), dipstick(value="negative", rid="o0"))
    data["observation"]["link"] = [{"relation": "next", "url": f"{fake_fhir.base}/Observation?patient=p1&page=2"}]
    response = service.call(request_body(prefetch=data))
    assert response.status_code == 200
    assert "observation" in missing_keys(response.json())
    assert fake_fhir.requests == []


def render(template: str, context: dict[str, Any]) -> str:
    """What a CDS client does with a template: substitute {{context.x}} tokens."""
    return re.sub(r"\{\{context\.(\w+)\}\}", lambda m: str(context[m.group(1)]), template)


@pytest.fixture(scope="module")
def sekmet_patient(fhir_server: Any) -> str:
    """A patient on the real FHIR server with ketamine given 3 days ago and dipstick blood 1+ yesterday."""
    mrn = f"kbladder-conformance-{uuid.uuid4().hex[:8]}"
    ref = f"urn:uuid:{uuid.uuid4()}"
    entries = []
    for resource in (ketamine_given(), ketamine_given(days=-3, rid="ma2"), dipstick()):
        resource = {k: v for k, v in resource.items() if k != "id"}
        resource["subject"] = {"reference": ref}
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource,
                        "request": {"method": "POST", "url": resource["resourceType"]}})
    fhir_server.post_bundle({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": ref, "request": {"method": "POST", "url": "Patient"},
         "resource": {"resourceType": "Patient", "gender": "male", "birthDate": "1990-05-06",
                      "identifier": [{"system": "http://hospital.smarthealthit.org", "value": mrn}]}},
        *entries]})
    return fhir_server.patient_by_mrn(mrn)


def run_on_server(fhir_server: Any, template: str, context: dict[str, Any]) -> dict[str, Any] | None:
    """The prefetch value a client would send for *template*: the resource/Bundle, or null for a 404 read."""
    response = requests.get(f"{fhir_server.base_url}/{render(template, context)}", headers=fhir_server.headers(),
                            timeout=30)
    if response.status_code == 404 and "?" not in template:
        return None
    assert response.status_code == 200, f"{template}: HTTP {response.status_code}"
    value = response.json()
    assert not any(link.get("relation") == "next" for link in value.get("link", [])), "one page expected"
    return value


@pytest.mark.parametrize("hook", ["patient-view", "order-sign"])
def test_P6_prefetched_and_fetched_data_give_the_same_cards(service: Service, fhir_server: Any,
                                                            sekmet_patient: str, no_token_in_logs: None,
                                                            hook: str) -> None:
    """P6: prefetch is equivalent to running the query on the FHIR server: both give the same cards."""
    pid = sekmet_patient
    drafts = [draft_order("ket", KETAMINE, pid)]
    context = request_body(hook, pid=pid, drafts=drafts)["context"]
    prefetched = {key: run_on_server(fhir_server, t, context) for key, t in service.templates(hook).items()}
    auth = authorization(fhir_server.token, pid)
    by_prefetch = service.call(request_body(hook, pid=pid, drafts=drafts, prefetch=prefetched))
    by_fetching = service.call(request_body(hook, pid=pid, drafts=drafts, fhirServer=fhir_server.base_url,
                                            fhirAuthorization=auth))
    kb02_card(by_prefetch)
    kb02_card(by_fetching)
    assert not missing_keys(by_fetching.json())
    assert without_uuids(by_prefetch.json()) == without_uuids(by_fetching.json())


@pytest.mark.parametrize(("prefetch", "server"), [(True, False), (False, True)], ids=["no-prefetch", "no-server"])
def test_P7_412_when_data_cannot_be_obtained(service: Service, fake_fhir: FakeFhir, prefetch: bool,
                                             server: bool) -> None:
    """P7: no usable prefetch AND no FHIR access: "SHALL" answer 412 Precondition Failed."""
    extra: dict[str, Any] = {"fhirServer": fake_fhir.base} if server else {}
    if prefetch:
        extra["prefetch"] = prefetch_for(service, "patient-view", ketamine_given(), omit=("observation",))
    response = service.call(request_body(**extra))
    assert response.status_code == 412
    issue = error_issue(response.json())
    expected = ["observation"] if prefetch else list(service.templates("patient-view"))
    assert issue["code"] == "processing"  # the 3.0 ballot's 412 example
    assert sorted(issue["expression"]) == sorted(f"prefetch.{key}" for key in expected)
    assert fake_fhir.requests == []


def test_P8_data_from_prefetch_and_from_the_fhir_server_combine(service: Service, fhir_server: Any,
                                                                 sekmet_patient: str, no_token_in_logs: None) -> None:
    """P8: the service "should be capable" of prefetch or FHIR server: here part of each, one answer."""
    pid = sekmet_patient
    context = request_body(pid=pid)["context"]
    templates = service.templates("patient-view")
    partial = {key: run_on_server(fhir_server, t, context) for key, t in templates.items() if key != "observation"}
    assert all(k in partial for k in templates if k != "observation")
    only_prefetch = service.call(request_body(pid=pid, prefetch=partial))
    assert only_prefetch.status_code == 412  # the dipstick is not in the prefetch
    response = service.call(request_body(pid=pid, prefetch=partial, fhirServer=fhir_server.base_url,
                                         fhirAuthorization=authorization(fhir_server.token, pid)))
    assert kb02_card(response)["indicator"] == "warning"
    assert not missing_keys(response.json())


# -- A: FHIR resource access ------------------------------------------------------------------------------------


def test_A1_bearer_token_on_every_fhir_call_including_next_pages(service: Service, fake_fhir: FakeFhir,
                                                                 secret_token: str) -> None:
    """A1: with fhirServer + fhirAuthorization, send `Authorization: Bearer <access_token>` on every call."""
    fake_fhir.add(patient(), ketamine_by_reference(), ketamine_product())
    fake_fhir.next_link["Observation"] = f"{fake_fhir.base}/Observation?patient=p1&page=2"
    fake_fhir.pages[("Observation", "2")] = bundle(dipstick())
    body = request_body(fhirServer=fake_fhir.base, fhirAuthorization=authorization(secret_token))
    kb02_card(service.call(body))  # needs page 2 (the blood) and the Medication (the ketamine)
    asked = fake_fhir.requested_types()
    assert set(asked) >= {template_type(t) for t in service.templates("patient-view").values()} | {"Medication"}
    assert any(r.args.get("page") == "2" for r in fake_fhir.requests)
    assert [r.headers.get("Authorization") for r in fake_fhir.requests] == [f"Bearer {secret_token}"] * len(asked)


def test_A2_fhir_server_without_authorization_is_412_unless_allowed(rules: RulesState, service: Service,
                                                                    fake_fhir: FakeFhir, tmp_path: Path) -> None:
    """A2: no fhirAuthorization: rely on prefetch, else 412; unauthenticated fetch only by explicit config."""
    fake_fhir.add(dipstick())
    body = request_body(prefetch=prefetch_for(service, "patient-view", ketamine_given(), omit=("observation",)),
                        fhirServer=fake_fhir.base)
    assert service.call(body).status_code == 412
    assert fake_fhir.requests == []
    with running(rules, tmp_path, allow_unauthenticated_fhir=True) as open_service:  # e.g. the sandbox
        kb02_card(open_service.call({**body, "hookInstance": str(uuid.uuid4())}))
    assert fake_fhir.requested_types() == ["Observation"]
    assert "Authorization" not in fake_fhir.requests[0].headers


def test_A4_fhir_server_is_the_base_for_every_query(service: Service, threaded_httpserver: HTTPServer,
                                                    other_httpserver: HTTPServer, secret_token: str) -> None:
    """A4: use `fhirServer` as the FHIR base (with its path); the token goes nowhere else."""
    fake = FakeFhir(threaded_httpserver, prefix="/ehr/api/FHIR/R4").add(patient(), ketamine_given())
    elsewhere = FakeFhir(other_httpserver).add(dipstick())
    fake.next_link["Observation"] = f"{elsewhere.base}/Observation?patient=p1"
    body = request_body(fhirServer=fake.base + "/", fhirAuthorization=authorization(secret_token))
    response = service.call(body)
    assert response.status_code == 200
    assert fake.requests and all(r.path.startswith("/ehr/api/FHIR/R4/") and "//" not in r.path
                                 for r in fake.requests)
    assert elsewhere.requests == []  # a next link to another server is not followed
    assert "observation" in missing_keys(response.json())
    assert not any(c["source"]["topic"]["code"] == "KB-02" for c in response.json()["cards"])


# -- C: the response ----------------------------------------------------------------------------------------------


def test_C1_success_is_200_with_a_cards_array(service: Service, scenarios: dict[str, Any]) -> None:
    """C1: HTTP 200 with `cards` (REQUIRED array); nothing to say: {"cards": []}."""
    for name, body in scenarios.items():
        assert isinstance(body["cards"], list) and body["cards"], name
        assert set(body) <= {"cards", "systemActions", "extension"}, name
    response = service.call(request_body(prefetch=prefetch_for(service, "patient-view")))
    assert response.status_code == 200
    body = response.json()
    assert body["cards"] == []
    assert set(body) <= {"cards", "extension"}
    assert response_problems(body) == []


def test_C2_summary_under_140_chars(scenarios: dict[str, Any]) -> None:
    """C2: `summary` REQUIRED, one sentence, "<140 characters"."""
    for where, card in all_cards(scenarios):
        assert isinstance(card["summary"], str) and card["summary"].strip(), where
        assert len(card["summary"]) < 140, where
        assert "\n" not in card["summary"], where
    summary = kb02_in(scenarios["patient-view"])["summary"]
    assert summary.startswith("Blood in urine after 2 ketamine sessions in 7 days")


def test_C3_indicator_is_info_warning_or_critical(scenarios: dict[str, Any]) -> None:
    """C3: `indicator` REQUIRED, one of info, warning, critical (no pre-1.0 success/hard-stop)."""
    for where, card in all_cards(scenarios):
        assert card["indicator"] in ("info", "warning", "critical"), where
    assert kb02_in(scenarios["patient-view"])["indicator"] == "warning"
    assert kb02_in(scenarios["order-sign"])["indicator"] == "critical"


def test_C4_source_has_a_label_and_a_topic_coding(scenarios: dict[str, Any]) -> None:
    """C4: `source.label` REQUIRED; url/icon absolute URLs; `topic` a Coding (code + system)."""
    for where, card in all_cards(scenarios):
        source = card["source"]
        assert isinstance(source["label"], str) and source["label"].strip(), where
        for key in ("url", "icon"):
            if key in source:
                assert re.match(r"https?://[^/\s]+", source[key]), f"{where}.source.{key}"
        topic = source["topic"]
        assert set(topic) <= {"system", "code", "display", "extension"}, where
        assert re.match(r"https?://\S+$", topic["system"]) and topic["code"].strip(), where
    assert kb02_in(scenarios["order-sign"])["source"]["topic"]["code"] == "KB-02"


def markdown_problems(text: str) -> list[str]:
    """Structural GFM checks: no raw HTML, every table has header, delimiter and rows of equal width."""
    problems = []
    if re.search(r"<\s*/?\s*[A-Za-z][^>]*>", text):
        problems.append("raw HTML")
    lines = text.split("\n")

    def cells(line: str) -> int:
        return len(re.split(r"(?<!\\)\|", line.strip())) - 2

    for i, line in enumerate(lines):
        if re.fullmatch(r"\|(\s*:?-{3,}:?\s*\|)+", line.strip()):
            width = cells(line)
            if i == 0 or cells(lines[i - 1]) != width:
                problems.append(f"line {i}: table header does not match its delimiter row")
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                if cells(lines[j]) != width:
                    problems.append(f"line {j}: table row has {cells(lines[j])} cells, not {width}")
                j += 1
    return problems


def test_C5_detail_is_github_flavored_markdown(scenarios: dict[str, Any]) -> None:
    """C5: `detail` OPTIONAL; if present "MUST" be GitHub Flavored Markdown."""
    for where, card in all_cards(scenarios):
        if "detail" in card:
            assert isinstance(card["detail"], str) and card["detail"].strip(), where
            assert markdown_problems(card["detail"]) == [], where
    detail = kb02_in(scenarios["patient-view"])["detail"]
    assert "**Evidence**" in detail and "| Date | Item | Value |" in detail  # the table check above bit


def test_C6_every_card_and_suggestion_has_a_unique_uuid(service: Service, scenarios: dict[str, Any]) -> None:
    """C6: `uuid` (OPTIONAL) is needed for feedback: set on every card and suggestion, unique."""
    ids = []
    for where, card in all_cards(scenarios):
        ids.append(card["uuid"])
        ids += [s["uuid"] for s in card.get("suggestions", [])]
        assert all(UUID.match(i) for i in ids), where
    assert len(ids) == len(set(ids))
    again = service.call(kb02_patient_view(service)).json()
    assert kb02_in(again)["uuid"] != kb02_in(scenarios["patient-view"])["uuid"]


def test_C7_selection_behavior_with_suggestions(scenarios: dict[str, Any]) -> None:
    """C7: if `suggestions` are present, `selectionBehavior` "MUST" be present: at-most-one or any."""
    with_suggestions = 0
    for where, card in all_cards(scenarios):
        if "suggestions" in card:
            with_suggestions += 1
            assert card["suggestions"], where
            assert card["selectionBehavior"] in ("at-most-one", "any"), where
        else:
            assert "selectionBehavior" not in card, where
    assert with_suggestions >= len(scenarios)


def test_C8_suggestions_have_label_uuid_and_at_most_one_recommended_unless_any(scenarios: dict[str, Any]) -> None:
    """C8: suggestion `label` REQUIRED; `isRecommended` boolean; more than one only with selectionBehavior any."""
    for where, card in all_cards(scenarios):
        suggestions = card.get("suggestions", [])
        for suggestion in suggestions:
            assert isinstance(suggestion["label"], str) and suggestion["label"].strip(), where
            assert isinstance(suggestion.get("isRecommended", False), bool), where
            assert suggestion["actions"], where  # omitted, never [] (G2)
        if sum(1 for s in suggestions if s.get("isRecommended")) > 1:
            assert card["selectionBehavior"] == "any", where
    assert any(s.get("isRecommended") is True for s in kb02_in(scenarios["patient-view"])["suggestions"])


def test_C9_actions_have_type_description_and_the_right_resource_member(scenarios: dict[str, Any]) -> None:
    """C9: action `type` create/update/delete + `description`; create/update carry `resource`; delete `resourceId`."""
    for where, card in all_cards(scenarios):
        for suggestion in card.get("suggestions", []):
            for action in suggestion["actions"]:
                assert action["type"] in ("create", "update", "delete"), where
                assert isinstance(action["description"], str) and action["description"].strip(), where
                if action["type"] == "delete":
                    assert re.fullmatch(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}", action["resourceId"]), where
                    assert "resource" not in action, where  # the deprecated 1.0 form
                else:
                    assert isinstance(action["resource"]["resourceType"], str), where
                    if action["type"] == "update":
                        assert action["resource"]["id"], where

    def deletes(body: dict[str, Any]) -> list[str]:
        return [a["resourceId"] for s in kb02_in(body).get("suggestions", []) for a in s["actions"]
                if a["type"] == "delete"]

    creates = [a["resource"] for s in kb02_in(scenarios["patient-view"])["suggestions"] for a in s["actions"]
               if a["type"] == "create"]
    assert creates and all(r["subject"] == {"reference": "Patient/p1"} for r in creates)
    assert deletes(scenarios["order-sign"]) == ["MedicationRequest/ket"]
    assert deletes(scenarios["order-select"]) == ["MedicationRequest/ket"]  # the selected draft only
    assert deletes(scenarios["patient-view"]) == []  # no draft to delete


def test_C10_override_reasons_are_codings_with_display(scenarios: dict[str, Any]) -> None:
    """C10: `overrideReasons` OPTIONAL array of Coding; each "MUST" have a `display` (and code, system)."""
    for where, card in all_cards(scenarios):
        for reason in card.get("overrideReasons", []):
            assert set(reason) <= {"system", "code", "display", "extension"}, where
            assert reason["display"].strip() and reason["code"].strip(), where
            assert re.match(r"https?://\S+$", reason["system"]), where
    assert kb02_in(scenarios["patient-view"])["overrideReasons"]


def test_C11_links_have_label_url_and_type(scenarios: dict[str, Any]) -> None:
    """C11: link `label`, `url`, `type` (absolute|smart) REQUIRED; `appContext` only on smart links."""
    for where, card in all_cards(scenarios):
        for link in card.get("links", []):
            assert link["label"].strip(), where
            assert re.match(r"https?://[^/\s]+", link["url"]), where
            assert link["type"] in ("absolute", "smart"), where
            if link["type"] == "absolute":
                assert "appContext" not in link, where
            assert isinstance(link.get("autolaunchable", False), bool), where
    assert kb02_in(scenarios["patient-view"])["links"][0]["type"] == "absolute"


def test_C13_system_actions_absent_or_valid_actions(service: Service, scenarios: dict[str, Any]) -> None:
    """C13: `systemActions` OPTIONAL array of Action: never [] (G2), each item a valid Action."""
    nothing = service.call(request_body(prefetch=prefetch_for(service, "patient-view"))).json()
    for name, body in {**scenarios, "nothing to say": nothing}.items():
        if "systemActions" in body:
            assert body["systemActions"], name
            assert response_problems(body) == [], name
        else:
            assert set(body) <= {"cards", "extension"}, name


def test_C14_each_invocation_gets_fresh_card_ids_and_the_same_guidance(service: Service) -> None:
    """C14: clients replace a service's earlier cards on a new invocation: same data, same cards, new uuids."""
    body = kb02_order(service, "order-sign")
    first = service.call(body).json()
    second = service.call({**body, "hookInstance": str(uuid.uuid4())}).json()
    assert without_uuids(first) == without_uuids(second)
    assert {c["uuid"] for c in first["cards"]}.isdisjoint(c["uuid"] for c in second["cards"])


# -- E: error bodies (CDS Hooks 3.0 ballot: a non-2xx response SHOULD carry an OperationOutcome) -----------------


def test_E1_every_error_status_carries_an_operation_outcome(service: Service, rules: RulesState,
                                                             tmp_path: Path) -> None:
    """3.0b: non-2xx bodies are FHIR OperationOutcomes; the field is `expression`, the status stays the status."""
    url = f"{service.url}/cds-services/{PV}"
    no_user = request_body(prefetch=prefetch_for(service, "patient-view"))
    del no_user["context"]["userId"]
    calls = {
        400: requests.post(url, json=no_user, timeout=10),
        404: requests.post(f"{service.url}/cds-services/nothing", json=request_body(), timeout=10),
        405: requests.get(url, timeout=10),
        412: service.call(request_body()),
        413: requests.post(url, data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                           headers={"Content-Type": "application/json"}, timeout=30),
        415: requests.post(url, data=b"{}", headers={"Content-Type": "text/plain"}, timeout=10),
    }
    expected = {400: ("required", ["context.userId"]), 404: ("not-found", ["id"]), 405: ("not-supported", None),
                412: ("processing", None), 413: ("too-costly", None), 415: ("not-supported", None)}
    for status, response in calls.items():
        assert response.status_code == status, (status, response.text)
        assert response.headers["Content-Type"].startswith("application/json")
        issue = error_issue(response.json())  # validated as an R4 OperationOutcome
        code, expression = expected[status]
        assert issue["severity"] == "error" and issue["code"] == code, (status, issue)
        assert issue["diagnostics"].strip()
        if expression is not None:
            assert issue["expression"] == expression
    assert all(e.startswith("prefetch.") for e in error_issue(calls[412].json())["expression"])
    with running(RulesState([tmp_path / "none"], reload_interval_s=0), tmp_path) as empty:
        unavailable = empty.call(request_body())
    assert unavailable.status_code == 503
    assert error_issue(unavailable.json())["code"] == "transient"


# -- F: feedback ----------------------------------------------------------------------------------------------------


@pytest.fixture
def issued_card(service: Service) -> dict[str, Any]:
    """A KB-02 card the service has just issued (and logged) on patient-view, for a patient of its own: an
    override snoozes the rule for that patient, which must not leak into the next test."""
    return kb02_card(service.call(kb02_patient_view(service, pid=f"p-{uuid.uuid4().hex[:12]}")))


def overridden(card: dict[str, Any], **reason: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-23T10:00:00Z"}
    if reason:
        item["overrideReason"] = reason
    return item


@pytest.mark.parametrize("service_id", [PV, OSEL, OSIGN])
def test_F1_each_service_has_a_feedback_endpoint(service: Service, service_id: str) -> None:
    """F1: a feedback endpoint {baseUrl}/cds-services/{id}/feedback is OPTIONAL (MAY); ours exists per service.
    It takes feedback for the cards that service issued, and refuses (404, naming the field) any other uuid."""
    hook = next(h for h, s in SERVICE_FOR_HOOK.items() if s == service_id)
    card = kb02_card(service.call(kb02_patient_view(service) if hook == "patient-view" else kb02_order(service, hook)))
    response = service.post(f"/cds-services/{service_id}/feedback", {"feedback": [overridden(card)]})
    assert response.status_code == 200, response.text
    assert service.store.feedback_count(card_uuid=card["uuid"]) == 1
    other = next(s for s in (PV, OSEL, OSIGN) if s != service_id)
    for target, item in ((other, overridden(card)), (service_id, overridden({"uuid": str(uuid.uuid4())}))):
        refused = service.post(f"/cds-services/{target}/feedback", {"feedback": [item]})
        assert refused.status_code == 404 and error_field(refused.json()) == "feedback[0].card"
    assert service.post("/cds-services/kbladder-nothing/feedback", {"feedback": []}).status_code == 404


def test_F2_accepted_feedback_with_suggestions_is_stored(service: Service, issued_card: dict[str, Any]) -> None:
    """F2: `card`, `outcome` accepted|overridden, `acceptedSuggestions` ({id}) when accepted, `outcomeTimestamp`."""
    chosen = issued_card["suggestions"][0]["uuid"]
    item = {"card": issued_card["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": chosen}],
            "outcomeTimestamp": "2026-11-23T10:00:00.52+01:00"}
    assert service.post(f"/cds-services/{PV}/feedback", {"feedback": [item]}).status_code == 200
    stored = service.store.feedback_for_card(issued_card["uuid"])
    assert [(s.outcome, s.accepted_suggestions, s.rule_id) for s in stored] == [("accepted", (chosen,), "KB-02")]
    assert stored[0].outcome_timestamp == datetime(2026, 11, 23, 9, 0, 0, 520000, tzinfo=UTC)


@pytest.mark.parametrize(("change", "field"), [
    ({"card": None}, "feedback[0].card"),
    ({"card": "card-1"}, "feedback[0].card"),
    ({"outcome": "ignored"}, "feedback[0].outcome"),
    ({"outcome": "accepted"}, "feedback[0].acceptedSuggestions"),
    ({"outcome": "accepted", "acceptedSuggestions": [{"id": "s1"}]}, "feedback[0].acceptedSuggestions[0].id"),
    ({"outcomeTimestamp": None}, "feedback[0].outcomeTimestamp"),
    ({"outcomeTimestamp": "2026-11-23 10:00"}, "feedback[0].outcomeTimestamp"),
    ({"outcomeTimestamp": "2026-11-23T10:00:00"}, "feedback[0].outcomeTimestamp"),
])
def test_F2_invalid_feedback_items_are_400_naming_the_field(service: Service, issued_card: dict[str, Any],
                                                            change: dict[str, Any], field: str) -> None:
    """F2: the shape of each feedback item is checked (card uuid, outcome enum, RFC 3339 timestamp)."""
    item = {k: v for k, v in {**overridden(issued_card), **change}.items() if v is not None}
    response = service.post(f"/cds-services/{PV}/feedback", {"feedback": [item]})
    assert response.status_code == 400
    assert error_field(response.json()) == field
    assert service.store.feedback_count(card_uuid=issued_card["uuid"]) == 0


def test_F3_feedback_is_stored_idempotently_and_in_batches(service: Service, issued_card: dict[str, Any]) -> None:
    """F3: the same card may be reported several times, several cards in one POST: store each outcome once."""
    other = kb02_card(service.call(kb02_patient_view(service)))
    reason = issued_card["overrideReasons"][0]
    batch = {"feedback": [overridden(issued_card, reason=reason), overridden(other, userComment="seen")]}
    for _ in range(2):
        assert service.post(f"/cds-services/{PV}/feedback", batch).status_code == 200
    assert service.store.feedback_count(card_uuid=issued_card["uuid"]) == 1
    assert service.store.feedback_count(card_uuid=other["uuid"]) == 1
    stored = service.store.feedback_for_card(issued_card["uuid"])[0]
    assert (stored.reason_code, stored.reason_display, stored.rule_id) == (reason["code"], reason["display"], "KB-02")


def test_F5_feedback_status_codes(service: Service, issued_card: dict[str, Any]) -> None:
    """F5 (derived; 2.0 defines none): 200 on accept, 400 invalid body, 404 unknown service, 415 not JSON."""
    url = f"{service.url}/cds-services/{PV}/feedback"
    ok = service.post(f"/cds-services/{PV}/feedback", {"feedback": [overridden(issued_card)]})
    assert ok.status_code == 200 and ok.headers["Content-Type"].startswith("application/json")
    assert ok.json() == {}
    malformed = requests.post(url, data=b'{"feedback": [', headers={"Content-Type": "application/json"}, timeout=10)
    assert malformed.status_code == 400 and error_field(malformed.json()) == "$"
    assert service.post(f"/cds-services/{PV}/feedback", {"items": []}).status_code == 400
    not_json = requests.post(url, data=json.dumps({"feedback": []}), headers={"Content-Type": "text/plain"},
                             timeout=10)
    assert not_json.status_code == 415
    assert service.post("/cds-services/kbladder-nothing/feedback", {"feedback": []}).status_code == 404


@pytest.mark.parametrize("reason", [
    {"system": "https://kbladder-cds.org/fhir/CodeSystem/override-reason", "code": "alternative-cause"},
    {"code": "alternative-cause"},
], ids=["code-and-system", "code-only"])
def test_F6_sandbox_override_reason_without_display_is_accepted(service: Service, issued_card: dict[str, Any],
                                                                reason: dict[str, Any]) -> None:
    """F6: the sandbox sends overrideReason.reason with code (+ system) but no display: accept it, and take the
    display from the card's own overrideReasons."""
    response = service.post(f"/cds-services/{PV}/feedback", {"feedback": [overridden(issued_card, reason=reason)]})
    assert response.status_code == 200, response.text
    stored = service.store.feedback_for_card(issued_card["uuid"])
    display = next(r["display"] for r in issued_card["overrideReasons"] if r["code"] == "alternative-cause")
    assert [(s.reason_code, s.reason_display) for s in stored] == [("alternative-cause", display)]


# -- J: CORS ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "method"), [("/cds-services", "GET"), (f"/cds-services/{PV}", "POST"),
                                              (f"/cds-services/{PV}/feedback", "POST")])
def test_J8_cors_preflight_on_discovery_service_and_feedback(service: Service, path: str, method: str) -> None:
    """J8: browser clients (the sandbox) need CORS: preflight OPTIONS allows the method, Authorization, Content-Type."""
    preflight = requests.options(service.url + path, timeout=10, headers={
        "Origin": SANDBOX, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code in (200, 204)
    assert preflight.headers["Access-Control-Allow-Origin"] in ("*", SANDBOX)
    allowed = {h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert method in {m.strip() for m in preflight.headers["Access-Control-Allow-Methods"].split(",")}


def test_J8_cors_headers_on_actual_responses(service: Service) -> None:
    """J8: the actual (non-preflight) responses carry Access-Control-Allow-Origin as well."""
    discovery = requests.get(f"{service.url}/cds-services", headers={"Origin": SANDBOX}, timeout=10)
    hook = service.post(f"/cds-services/{PV}", kb02_patient_view(service), headers={"Origin": SANDBOX})
    refused = service.post(f"/cds-services/{PV}", {"hook": "patient-view"}, headers={"Origin": SANDBOX})
    for response in (discovery, hook, refused):
        assert response.headers["Access-Control-Allow-Origin"] in ("*", SANDBOX)
