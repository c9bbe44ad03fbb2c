"""Hook request validation: every branch names the right field and never leaks token or patient data."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cds_service.cdshooks import FhirAuthorization, HookRequest, RequestError, parse_hook_request

TOKEN = "SECRET-ACCESS-TOKEN-7f3a9c"
PATIENT = "pat-4711-SECRET"
ALL_HOOKS = frozenset({"patient-view", "order-select", "order-sign"})
DELETE = object()


def _auth() -> dict[str, Any]:
    return {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/Patient.read user/Observation.read",
        "subject": "kbladder-cds",
    }


def _draft_orders() -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "NutritionOrder", "id": "pureeddiet-simple", "status": "draft"}},
            {
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": "smart-MedicationRequest-103",
                    "status": "draft",
                    "intent": "order",
                    "subject": {"reference": f"Patient/{PATIENT}"},
                }
            },
        ],
    }


def patient_view() -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "fhirServer": "https://ehr.example.org/fhir/R4",
        "fhirAuthorization": _auth(),
        "context": {"userId": "Practitioner/example", "patientId": PATIENT, "encounterId": "89284"},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": PATIENT, "birthDate": "1990-01-01"},
            "ketamine": {"resourceType": "Bundle", "type": "searchset", "total": 0},
            "missing": None,
        },
    }


def order_select() -> dict[str, Any]:
    return {
        "hook": "order-select",
        "hookInstance": "0b4f3bd2-9a5e-4c1f-8d4a-2f1f0d9a6c11",
        "fhirServer": "https://ehr.example.org/fhir/R4",
        "fhirAuthorization": _auth(),
        "context": {
            "userId": "PractitionerRole/123",
            "patientId": PATIENT,
            "encounterId": "89284",
            "selections": ["MedicationRequest/smart-MedicationRequest-103"],
            "draftOrders": _draft_orders(),
        },
    }


def order_sign() -> dict[str, Any]:
    return {
        "hook": "order-sign",
        "hookInstance": "5e6f7a8b-1c2d-4e3f-9a0b-1c2d3e4f5a6b",
        "context": {"userId": "Practitioner/abc", "patientId": PATIENT, "draftOrders": _draft_orders()},
    }


def mutate(body: dict[str, Any], path: tuple[str | int, ...], value: object = DELETE) -> dict[str, Any]:
    """Copy *body* and set (or delete) the member at *path*."""
    body = copy.deepcopy(body)
    target: Any = body
    for step in path[:-1]:
        target = target[step]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


def _error(body: object, served: frozenset[str] = ALL_HOOKS) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_hook_request(body, served_hooks=served)
    return info.value


# -- valid requests ------------------------------------------------------------------------------------


def test_patient_view_valid() -> None:
    request = parse_hook_request(patient_view(), served_hooks={"patient-view"})
    assert request.hook == "patient-view"
    assert request.hook_instance == "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
    assert request.patient_id == PATIENT
    assert request.user_id == "Practitioner/example"
    assert request.encounter_id == "89284"
    assert request.fhir_server == "https://ehr.example.org/fhir/R4"
    assert request.fhir_authorization is not None
    assert request.fhir_authorization.access_token == TOKEN
    assert request.fhir_authorization.scopes == {"user/Patient.read", "user/Observation.read"}
    assert request.prefetch is not None and request.prefetch["missing"] is None
    assert request.draft_orders == [] and request.selections == []


@pytest.mark.parametrize("user", ["Patient/123", "RelatedPerson/r-1", "PractitionerRole/x.y"])
def test_patient_view_accepts_patient_and_proxy_users(user: str) -> None:
    body = mutate(patient_view(), ("context", "userId"), user)
    assert parse_hook_request(body, served_hooks=ALL_HOOKS).user_id == user


def test_patient_view_minimal() -> None:
    body = {
        "hook": "patient-view",
        "hookInstance": "D1577C69-DFBE-44AD-BA6D-3E05E953B2EA",
        "context": {"userId": "Practitioner/1", "patientId": "1"},
    }
    request = parse_hook_request(body, served_hooks=ALL_HOOKS)
    assert request.fhir_server is None and request.fhir_authorization is None
    assert request.prefetch is None and request.encounter_id is None


def test_order_select_valid() -> None:
    request = parse_hook_request(order_select(), served_hooks=ALL_HOOKS)
    assert request.selections == ["MedicationRequest/smart-MedicationRequest-103"]
    assert [r["resourceType"] for r in request.draft_orders] == ["NutritionOrder", "MedicationRequest"]


def test_order_select_selection_may_match_full_url() -> None:
    body = order_select()
    entry = body["context"]["draftOrders"]["entry"][1]
    entry["fullUrl"] = "https://ehr.example.org/fhir/R4/MedicationRequest/abc"
    del entry["resource"]["id"]
    body["context"]["selections"] = ["MedicationRequest/abc"]
    assert parse_hook_request(body, served_hooks=ALL_HOOKS).selections == ["MedicationRequest/abc"]


def test_order_sign_valid() -> None:
    request = parse_hook_request(order_sign(), served_hooks={"order-sign"})
    assert len(request.draft_orders) == 2
    assert request.selections == []
    assert request.fhir_server is None


def test_order_sign_bundle_without_entries_is_empty() -> None:
    body = mutate(order_sign(), ("context", "draftOrders"), {"resourceType": "Bundle", "type": "collection"})
    assert parse_hook_request(body, served_hooks=ALL_HOOKS).draft_orders == []


def test_unknown_members_and_extensions_are_ignored() -> None:
    body = patient_view()
    body["extension"] = {"org.example.foo": {"a": 1}}
    body["futureMember"] = [1, 2]
    body["context"]["extension"] = {"org.example.bar": True}
    body["context"]["somethingNew"] = "x"
    body["fhirAuthorization"]["patient"] = PATIENT.replace("SECRET", "x")
    body["fhirAuthorization"]["extension"] = {"org.example.baz": 1}
    request = parse_hook_request(body, served_hooks=ALL_HOOKS)
    assert request.context["somethingNew"] == "x"


def test_token_type_is_case_insensitive_and_normalised() -> None:
    body = mutate(patient_view(), ("fhirAuthorization", "token_type"), "bearer")
    auth = parse_hook_request(body, served_hooks=ALL_HOOKS).fhir_authorization
    assert auth is not None and auth.token_type == "Bearer"


def test_http_fhir_server_is_accepted_for_test_servers() -> None:
    body = mutate(patient_view(), ("fhirServer",), "http://localhost:8080/fhir")
    assert parse_hook_request(body, served_hooks=ALL_HOOKS).fhir_server == "http://localhost:8080/fhir"


def test_require_https_refuses_plain_http_fhir_server() -> None:
    body = mutate(patient_view(), ("fhirServer",), "http://ehr.example.org/fhir")
    with pytest.raises(RequestError) as info:
        parse_hook_request(body, served_hooks=ALL_HOOKS, require_https=True)
    assert info.value.field == "fhirServer"
    assert parse_hook_request(patient_view(), served_hooks=ALL_HOOKS, require_https=True).fhir_server


def test_error_as_operation_outcome() -> None:
    outcome = _error(mutate(patient_view(), ("context", "patientId"))).operation_outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    (issue,) = outcome["issue"]
    assert issue["code"] == "required" and issue["expression"] == ["context.patientId"]
    assert issue["diagnostics"] == "is required" and issue["severity"] == "error"
    invalid = _error(mutate(patient_view(), ("hookInstance",), "x")).operation_outcome()
    assert invalid["issue"][0]["code"] == "invalid"


def test_served_hook_without_definition_gets_generic_checks() -> None:
    body = {"hook": "encounter-discharge", "hookInstance": "5e6f7a8b-1c2d-4e3f-9a0b-1c2d3e4f5a6b",
            "context": {"anything": 1}}
    request = parse_hook_request(body, served_hooks={"encounter-discharge"})
    assert request.context == {"anything": 1}


# -- invalid requests ----------------------------------------------------------------------------------

PV = patient_view
OS = order_select
SG = order_sign
DO = ("context", "draftOrders")
FA = ("fhirAuthorization",)
SEL = ("context", "selections")
MR = "MedicationRequest/smart-MedicationRequest-103"
E = "context.draftOrders.entry"

INVALID: list[tuple[str, dict[str, Any], str]] = [
    # top level
    ("hook missing", mutate(PV(), ("hook",)), "hook"),
    ("hook not a string", mutate(PV(), ("hook",), 3), "hook"),
    ("hook empty", mutate(PV(), ("hook",), ""), "hook"),
    ("hook unknown", mutate(PV(), ("hook",), "medication-prescribe"), "hook"),
    ("hookInstance missing", mutate(PV(), ("hookInstance",)), "hookInstance"),
    ("hookInstance null", mutate(PV(), ("hookInstance",), None), "hookInstance"),
    ("hookInstance not uuid", mutate(PV(), ("hookInstance",), "1234"), "hookInstance"),
    ("hookInstance number", mutate(PV(), ("hookInstance",), 12), "hookInstance"),
    ("context missing", mutate(PV(), ("context",)), "context"),
    ("context array", mutate(PV(), ("context",), []), "context"),
    # context primitives
    ("userId missing", mutate(PV(), ("context", "userId")), "context.userId"),
    ("userId number", mutate(PV(), ("context", "userId"), 5), "context.userId"),
    ("userId bare id", mutate(PV(), ("context", "userId"), "example"), "context.userId"),
    ("userId wrong type", mutate(PV(), ("context", "userId"), "Device/1"), "context.userId"),
    ("userId patient on order-sign", mutate(SG(), ("context", "userId"), "Patient/1"), "context.userId"),
    ("userId relatedperson on order-select", mutate(OS(), ("context", "userId"), "RelatedPerson/1"),
     "context.userId"),
    ("patientId missing", mutate(PV(), ("context", "patientId")), "context.patientId"),
    ("patientId empty", mutate(PV(), ("context", "patientId"), ""), "context.patientId"),
    ("patientId number", mutate(PV(), ("context", "patientId"), 1288992), "context.patientId"),
    ("patientId with query chars", mutate(PV(), ("context", "patientId"), "1&_id=2"), "context.patientId"),
    ("patientId as reference", mutate(PV(), ("context", "patientId"), "Patient/1"), "context.patientId"),
    ("encounterId object", mutate(PV(), ("context", "encounterId"), {"id": "1"}), "context.encounterId"),
    ("encounterId empty", mutate(SG(), ("context", "encounterId"), ""), "context.encounterId"),
    # draftOrders
    ("draftOrders missing (sign)", mutate(SG(), DO), "context.draftOrders"),
    ("draftOrders missing (select)", mutate(OS(), DO), "context.draftOrders"),
    ("draftOrders array", mutate(SG(), DO, []), "context.draftOrders"),
    ("draftOrders not a Bundle", mutate(SG(), (*DO, "resourceType"), "List"),
     "context.draftOrders.resourceType"),
    ("draftOrders no resourceType", mutate(SG(), (*DO, "resourceType")), "context.draftOrders.resourceType"),
    ("entry not array", mutate(SG(), (*DO, "entry"), {"resource": {}}), "context.draftOrders.entry"),
    ("entry item not object", mutate(SG(), (*DO, "entry", 1), "MedicationRequest/1"),
     E + "[1]"),
    ("entry without resource", mutate(SG(), (*DO, "entry", 1, "resource")), E + "[1].resource"),
    ("entry resource string", mutate(SG(), (*DO, "entry", 0, "resource"), "x"),
     E + "[0].resource"),
    ("resource without resourceType", mutate(SG(), (*DO, "entry", 1, "resource", "resourceType")),
     E + "[1].resource.resourceType"),
    ("resource bad resourceType",
     mutate(SG(), (*DO, "entry", 1, "resource", "resourceType"), "medication request"),
     E + "[1].resource.resourceType"),
    ("resource bad id", mutate(SG(), (*DO, "entry", 1, "resource", "id"), "a/b"),
     E + "[1].resource.id"),
    # selections
    ("selections missing", mutate(OS(), SEL), "context.selections"),
    ("selections string", mutate(OS(), SEL, MR),
     "context.selections"),
    ("selections empty", mutate(OS(), SEL, []), "context.selections"),
    ("selection not a reference", mutate(OS(), SEL, ["smart-MedicationRequest-103"]),
     "context.selections[0]"),
    ("selection number", mutate(OS(), SEL, [MR, 7]),
     "context.selections[1]"),
    ("selection not in draftOrders", mutate(OS(), SEL,
                                            ["NutritionOrder/pureeddiet-simple", "MedicationRequest/999"]),
     "context.selections[1]"),
    ("selection type mismatch", mutate(OS(), SEL, ["ServiceRequest/smart-MedicationRequest-103"]),
     "context.selections[0]"),
    # fhirServer / fhirAuthorization
    ("fhirServer relative", mutate(PV(), ("fhirServer",), "/fhir"), "fhirServer"),
    ("fhirServer ftp", mutate(PV(), ("fhirServer",), "ftp://ehr.example.org/fhir"), "fhirServer"),
    ("fhirServer number", mutate(PV(), ("fhirServer",), 443), "fhirServer"),
    ("fhirServer bad port", mutate(PV(), ("fhirServer",), "https://ehr.example.org:99999/"), "fhirServer"),
    ("fhirServer missing with auth", mutate(PV(), ("fhirServer",)), "fhirServer"),
    ("fhirAuthorization string", mutate(PV(), ("fhirAuthorization",), TOKEN), "fhirAuthorization"),
    ("access_token missing", mutate(PV(), (*FA, "access_token")), "fhirAuthorization.access_token"),
    ("access_token number", mutate(PV(), (*FA, "access_token"), 42), "fhirAuthorization.access_token"),
    ("token_type missing", mutate(PV(), (*FA, "token_type")), "fhirAuthorization.token_type"),
    ("token_type mac", mutate(PV(), (*FA, "token_type"), "MAC"), "fhirAuthorization.token_type"),
    ("expires_in missing", mutate(PV(), (*FA, "expires_in")), "fhirAuthorization.expires_in"),
    ("expires_in string", mutate(PV(), (*FA, "expires_in"), "300"), "fhirAuthorization.expires_in"),
    ("expires_in float", mutate(PV(), (*FA, "expires_in"), 300.5), "fhirAuthorization.expires_in"),
    ("expires_in bool", mutate(PV(), (*FA, "expires_in"), True), "fhirAuthorization.expires_in"),
    ("expires_in negative", mutate(PV(), (*FA, "expires_in"), -1), "fhirAuthorization.expires_in"),
    ("scope missing", mutate(PV(), (*FA, "scope")), "fhirAuthorization.scope"),
    ("scope list", mutate(PV(), (*FA, "scope"), ["user/*.read"]), "fhirAuthorization.scope"),
    ("subject missing", mutate(PV(), (*FA, "subject")), "fhirAuthorization.subject"),
    ("patient bad", mutate(PV(), (*FA, "patient"), "Patient/1"), "fhirAuthorization.patient"),
    # prefetch
    ("prefetch array", mutate(PV(), ("prefetch",), [{"resourceType": "Patient"}]), "prefetch"),
    ("prefetch value string", mutate(PV(), ("prefetch", "patient"), f"Patient/{PATIENT}"),
     "prefetch.patient"),
    ("prefetch value no resourceType", mutate(PV(), ("prefetch", "patient"), {"id": PATIENT}),
     "prefetch.patient"),
]


@pytest.mark.parametrize(("body", "field"), [(b, f) for _, b, f in INVALID], ids=[n for n, _, _ in INVALID])
def test_invalid_request_names_field(body: dict[str, Any], field: str) -> None:
    error = _error(body)
    assert error.field == field
    assert error.status == 400
    assert error.message
    text = f"{error} {error!r} {error.message} {error.args}"
    assert TOKEN not in text
    assert PATIENT not in text
    assert "SECRET" not in text


@pytest.mark.parametrize("body", [None, [], "x", 3, True])
def test_body_must_be_an_object(body: object) -> None:
    assert _error(body).field == "$"


def test_hook_not_served_by_this_service() -> None:
    error = _error(order_sign(), served=frozenset({"patient-view"}))
    assert error.field == "hook"


def test_error_values_never_echoed_even_when_token_is_in_a_bad_field() -> None:
    """A client that puts the token in the wrong place must not get it written into our logs."""
    for body in (
        mutate(PV(), ("hookInstance",), TOKEN),
        mutate(PV(), ("context", "userId"), TOKEN),
        mutate(PV(), ("fhirServer",), TOKEN),
        mutate(PV(), (*FA, "token_type"), TOKEN),
        mutate(PV(), (*FA, "expires_in"), TOKEN),
        mutate(OS(), SEL, [TOKEN]),
    ):
        error = _error(body)
        assert TOKEN not in str(error) and TOKEN not in repr(error)


def test_authorization_repr_hides_token() -> None:
    request = parse_hook_request(patient_view(), served_hooks=ALL_HOOKS)
    assert isinstance(request.fhir_authorization, FhirAuthorization)
    auth = request.fhir_authorization
    for text in (repr(auth), str(auth), repr(request), str(request)):
        assert TOKEN not in text
    assert "<redacted>" in repr(request.fhir_authorization)


def test_request_repr_hides_patient_data() -> None:
    request = parse_hook_request(order_select(), served_hooks=ALL_HOOKS)
    assert isinstance(request, HookRequest)
    assert PATIENT not in repr(request)
    assert "order-select" in repr(request)


def test_request_is_frozen() -> None:
    request = parse_hook_request(order_sign(), served_hooks=ALL_HOOKS)
    with pytest.raises(AttributeError):
        request.hook = "patient-view"  # type: ignore[misc]


def test_access_token_must_fit_an_authorization_header() -> None:
    """Found by schemathesis: a non-ASCII token crashed the outbound request (500) instead of a 400."""
    body = mutate(patient_view(), ("fhirAuthorization", "access_token"), "tok\u00e9n")
    with pytest.raises(RequestError) as info:
        parse_hook_request(body, served_hooks=ALL_HOOKS)
    assert info.value.field == "fhirAuthorization.access_token"
    assert "\u00e9" not in info.value.message


# -- appointment-book and encounter-start (CDS Hooks Library STU1 1.0.1) -----------------------------------

NEW_HOOKS = frozenset({"appointment-book", "encounter-start"})


def _appointment(**changes: Any) -> dict[str, Any]:
    return {"resourceType": "Appointment", "id": "appt-1", "status": "proposed", "start": "2026-12-09T09:00:00Z",
            "supportingInformation": [{"reference": "MedicationRequest/course-1"}],
            "participant": [{"actor": {"reference": f"Patient/{PATIENT}"}, "status": "accepted"}], **changes}


def appointment_book(*entries: dict[str, Any]) -> dict[str, Any]:
    body = patient_view()
    body["hook"] = "appointment-book"
    body["context"]["appointments"] = {"resourceType": "Bundle", "type": "collection",
                                       "entry": [{"resource": r} for r in (entries or (_appointment(),))]}
    return body


def encounter_start() -> dict[str, Any]:
    body = patient_view()
    body["hook"] = "encounter-start"
    return body


def test_appointment_book_valid_and_carries_its_appointments() -> None:
    order = {"resourceType": "MedicationRequest", "id": "course-1", "status": "active", "intent": "order",
             "subject": {"reference": f"Patient/{PATIENT}"}}
    request = parse_hook_request(appointment_book(_appointment(), order), served_hooks=NEW_HOOKS)
    assert [r["resourceType"] for r in request.draft_orders] == ["Appointment", "MedicationRequest"]
    assert request.selections == []


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda b: b["context"].pop("appointments"), "context.appointments"),
    (lambda b: b["context"].update(appointments=[]), "context.appointments"),
    (lambda b: b["context"]["appointments"].update(resourceType="Appointment"), "context.appointments.resourceType"),
    (lambda b: b["context"]["appointments"]["entry"][0]["resource"].update(status="booked"),
     "context.appointments.entry[0].resource.status"),
    (lambda b: b["context"]["appointments"].update(entry=[]), "context.appointments.entry"),
    (lambda b: b["context"].update(userId="Device/kiosk"), "context.userId"),
])
def test_appointment_book_context_is_validated_as_the_library_defines_it(mutate: Any, field: str) -> None:
    body = appointment_book()
    mutate(body)
    with pytest.raises(RequestError) as caught:
        parse_hook_request(body, served_hooks=NEW_HOOKS)
    assert caught.value.field == field


def test_appointment_book_may_be_booked_by_the_patient() -> None:
    body = appointment_book()
    body["context"]["userId"] = f"Patient/{PATIENT}"
    assert parse_hook_request(body, served_hooks=NEW_HOOKS).hook == "appointment-book"


def test_encounter_start_requires_the_encounter_and_a_clinician() -> None:
    assert parse_hook_request(encounter_start(), served_hooks=NEW_HOOKS).encounter_id == "89284"
    body = encounter_start()
    del body["context"]["encounterId"]
    with pytest.raises(RequestError) as caught:
        parse_hook_request(body, served_hooks=NEW_HOOKS)
    assert caught.value.field == "context.encounterId"
    body = encounter_start()
    body["context"]["userId"] = f"Patient/{PATIENT}"
    with pytest.raises(RequestError) as caught:
        parse_hook_request(body, served_hooks=NEW_HOOKS)
    assert caught.value.field == "context.userId"
