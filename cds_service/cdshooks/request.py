"""Parse and validate a CDS Hooks 2.0 service request body into a :class:`HookRequest`.

Validation happens before any rule runs (checklist R5) so the engine can trust the shape. Errors name the
JSON path and what was expected but never echo values: request bodies carry the FHIR access token (R3)
and patient data, and error texts end up in logs and HTTP responses.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cds_service.security.urls import url_problem

from .hooks import HOOKS, HookDefinition
from .outcome import operation_outcome

__all__ = [
    "FhirAuthorization",
    "HookRequest",
    "RequestError",
    "is_absolute_http_url",
    "is_uuid",
    "parse_hook_request",
]

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
#: FHIR ``id`` datatype (R4): what may legally appear after ``Type/``. Enforcing it also keeps ids safe to
#: substitute into prefetch/query URLs.
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
#: What an ``Authorization: Bearer`` header can carry (RFC 6750 tokens are a subset).
_HEADER_TOKEN = re.compile(r"^[\x21-\x7e]+$")
_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")


class RequestError(ValueError):
    """A request (or feedback) body that does not conform; *field* is a JSON path such as
    ``context.draftOrders.entry[2].resource``. The message never contains submitted values."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        return f"RequestError(field={self.field!r}, message={self.message!r}, status={self.status})"

    def operation_outcome(self) -> dict[str, Any]:
        """The error as a FHIR OperationOutcome: field → ``expression``, message → ``diagnostics``."""
        return operation_outcome(self.status, self.message, expression=[self.field])


@dataclass(frozen=True, slots=True)
class FhirAuthorization:
    """``fhirAuthorization`` of a request. The token is transient (R3): it is excluded from repr/str."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None

    def __repr__(self) -> str:
        return (
            f"FhirAuthorization(access_token=<redacted>, token_type={self.token_type!r}, "
            f"expires_in={self.expires_in}, scope={self.scope!r}, subject={self.subject!r})"
        )

    __str__ = __repr__

    @property
    def scopes(self) -> frozenset[str]:
        """The granted scopes as a set (space-separated in the wire format)."""
        return frozenset(self.scope.split())


@dataclass(frozen=True, slots=True)
class HookRequest:
    """A validated hook invocation.

    ``draft_orders`` are the resources of ``context.draftOrders`` (order hooks) or of ``context.appointments``
    (appointment-book: the proposed Appointments and any resources sent with them), else empty; and
    ``selections`` the ``Type/id`` strings of ``context.selections`` (order-select only, else empty).
    ``prefetch`` is None when the client sent none; a key mapping to None means "no data" (P4).
    """

    hook: str
    hook_instance: str
    context: dict[str, Any]
    fhir_server: str | None = None
    fhir_authorization: FhirAuthorization | None = None
    prefetch: dict[str, Any] | None = None
    draft_orders: list[dict[str, Any]] = field(default_factory=list)
    selections: list[str] = field(default_factory=list)
    #: ``fullUrl`` of each draft's Bundle entry (parallel to ``draft_orders``): selections may point at it.
    draft_urls: list[str | None] = field(default_factory=list)

    def __repr__(self) -> str:
        # Context and prefetch hold patient data: keep them out of logs and tracebacks.
        keys = sorted(self.prefetch) if self.prefetch is not None else None
        return (
            f"HookRequest(hook={self.hook!r}, hook_instance={self.hook_instance!r}, "
            f"fhir_server={self.fhir_server!r}, fhir_authorization={self.fhir_authorization!r}, "
            f"prefetch_keys={keys}, draft_orders={len(self.draft_orders)}, "
            f"selections={len(self.selections)})"
        )

    __str__ = __repr__

    @property
    def patient_id(self) -> str:
        return str(self.context["patientId"])

    @property
    def user_id(self) -> str:
        return str(self.context["userId"])

    @property
    def encounter_id(self) -> str | None:
        value = self.context.get("encounterId")
        return value if isinstance(value, str) else None


def is_uuid(value: object) -> bool:
    """True for a canonical 8-4-4-4-12 hex UUID string (what the spec's examples and clients use)."""
    return isinstance(value, str) and _UUID.match(value) is not None


def is_absolute_http_url(value: object) -> bool:
    """True for an absolute http(s) URL with a host (fhirServer, link and source URLs)."""
    if not isinstance(value, str) or not value or any(ch.isspace() for ch in value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _type_name(value: object) -> str:
    """JSON type name of *value* for error messages (type, never content)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _object(value: object, path: str, what: str = "an object") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RequestError(path, f"expected {what}, got {_type_name(value)}")
    return value


def _string(value: object, path: str, what: str = "a non-empty string") -> str:
    if not isinstance(value, str) or not value.strip():
        got = "an empty string" if isinstance(value, str) else _type_name(value)
        raise RequestError(path, f"expected {what}, got {got}")
    return value


def _required(obj: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in obj or obj[key] is None:
        raise RequestError(path, "is required")
    return obj[key]


def _parse_fhir_authorization(value: object) -> FhirAuthorization:
    auth = _object(value, "fhirAuthorization")
    token = _string(_required(auth, "access_token", "fhirAuthorization.access_token"),
                    "fhirAuthorization.access_token")
    if not _HEADER_TOKEN.match(token):  # it goes into an Authorization header, which carries visible ASCII only
        raise RequestError("fhirAuthorization.access_token", "expected visible ASCII characters (an OAuth token)")
    token_type = _string(_required(auth, "token_type", "fhirAuthorization.token_type"),
                         "fhirAuthorization.token_type")
    if token_type.lower() != "bearer":
        raise RequestError("fhirAuthorization.token_type", "expected 'Bearer'")
    expires_in = _required(auth, "expires_in", "fhirAuthorization.expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in < 0:
        raise RequestError("fhirAuthorization.expires_in", "expected a non-negative integer (seconds)")
    scope = _string(_required(auth, "scope", "fhirAuthorization.scope"), "fhirAuthorization.scope")
    subject = _string(_required(auth, "subject", "fhirAuthorization.subject"), "fhirAuthorization.subject")
    patient = auth.get("patient")
    if patient is not None and (not isinstance(patient, str) or not _FHIR_ID.match(patient)):
        raise RequestError("fhirAuthorization.patient", "expected a FHIR Patient id")
    return FhirAuthorization(token, "Bearer", expires_in, scope, subject, patient)


_JSON_TYPES: Mapping[str, type] = {"string": str, "array": list, "object": dict}


def _check_context_field_type(definition: HookDefinition, name: str, value: object, path: str) -> None:
    """Type checks from the hook table, then the formats of userId, patientId and encounterId."""
    ctx_field = definition.field(name)
    if ctx_field is not None and not isinstance(value, _JSON_TYPES[ctx_field.type]):
        article = "an" if ctx_field.type in ("array", "object") else "a"
        raise RequestError(path, f"expected {article} {ctx_field.type}, got {_type_name(value)}")
    if name == "userId":
        types = definition.user_types
        match = _REFERENCE.match(value) if isinstance(value, str) else None
        if match is None or match.group(1) not in types:
            raise RequestError(path, f"expected a reference 'Type/id' with Type one of {', '.join(types)}")
    elif name in ("patientId", "encounterId") and not (isinstance(value, str) and _FHIR_ID.match(value)):
        resource = "Patient" if name == "patientId" else "Encounter"
        raise RequestError(path, f"expected a FHIR {resource} id (1-64 of A-Z a-z 0-9 - .)")


def _parse_context_bundle(value: object, name: str) -> tuple[list[dict[str, Any]], list[str | None]]:
    """Return the resources of a context Bundle (draftOrders, appointments) and each entry's fullUrl."""
    path = f"context.{name}"
    bundle = _object(value, path, "a FHIR Bundle object")
    if bundle.get("resourceType") != "Bundle":
        raise RequestError(f"{path}.resourceType", "expected 'Bundle'")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise RequestError(f"{path}.entry", f"expected an array, got {_type_name(entries)}")
    resources: list[dict[str, Any]] = []
    full_urls: list[str | None] = []
    for i, entry in enumerate(entries):
        epath = f"{path}.entry[{i}]"
        entry = _object(entry, epath)
        resource = _object(_required(entry, "resource", f"{epath}.resource"), f"{epath}.resource")
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or not re.match(r"^[A-Z][A-Za-z]+$", rtype):
            raise RequestError(f"{epath}.resource.resourceType", "expected a FHIR resource type name")
        rid = resource.get("id")
        if rid is not None and (not isinstance(rid, str) or not _FHIR_ID.match(rid)):
            raise RequestError(f"{epath}.resource.id", "expected a FHIR id")
        if name == "appointments" and rtype == "Appointment" and resource.get("status") != "proposed":
            # appointment-book (CDS Hooks Library): "a FHIR Bundle of Appointments in 'proposed' state"
            raise RequestError(f"{epath}.resource.status", "expected 'proposed' (an appointment being booked)")
        full_url = entry.get("fullUrl")
        resources.append(resource)
        full_urls.append(full_url if isinstance(full_url, str) else None)
    if name == "appointments" and not any(r.get("resourceType") == "Appointment" for r in resources):
        raise RequestError(f"{path}.entry", "expected at least one Appointment")
    return resources, full_urls


def _parse_selections(
    value: object, resources: list[dict[str, Any]], full_urls: list[str | None]
) -> list[str]:
    path = "context.selections"
    if not isinstance(value, list) or not value:
        got = "an empty array" if isinstance(value, list) else _type_name(value)
        raise RequestError(path, f"expected a non-empty array of 'Type/id' references, got {got}")
    known = {f"{r['resourceType']}/{r['id']}" for r in resources if isinstance(r.get("id"), str)}
    selections: list[str] = []
    for i, item in enumerate(value):
        ipath = f"{path}[{i}]"
        if not isinstance(item, str) or not _REFERENCE.match(item):
            raise RequestError(ipath, "expected a 'Type/id' reference")
        # A client may identify a draft only by fullUrl (e.g. ".../MedicationRequest/103").
        by_url = any(u is not None and (u == item or u.endswith("/" + item)) for u in full_urls)
        if item not in known and not by_url:
            raise RequestError(ipath, "does not reference a resource in context.draftOrders")
        selections.append(item)
    return selections


def _parse_context(definition: HookDefinition | None, value: object) -> dict[str, Any]:
    context = _object(value, "context")
    if definition is None:
        return context
    for ctx_field in definition.fields:
        path = f"context.{ctx_field.name}"
        present = ctx_field.name in context and context[ctx_field.name] is not None
        if not present:
            if ctx_field.required:
                raise RequestError(path, "is required")
            continue
        _check_context_field_type(definition, ctx_field.name, context[ctx_field.name], path)
    return context


def _parse_prefetch(value: object) -> dict[str, Any]:
    prefetch = _object(value, "prefetch")
    for key, item in prefetch.items():
        # null = "no data" (P4); otherwise a resource (Bundle, single resource, OperationOutcome).
        if item is None:
            continue
        if key == "extension" and isinstance(item, dict):
            continue  # G3: "extension" is reserved on every object (never a template key of ours): ignore it
        if not isinstance(item, dict) or not isinstance(item.get("resourceType"), str):
            raise RequestError(f"prefetch.{key}", "expected a FHIR resource object or null")
    return prefetch


def parse_hook_request(
    body: object, *, served_hooks: Collection[str], require_https: bool = False
) -> HookRequest:
    """Validate a decoded JSON *body* for a service that answers *served_hooks*.

    Raises :class:`RequestError` on the first problem. Unknown members and ``extension`` are ignored
    (R4); a hook in *served_hooks* without a definition in :data:`HOOKS` gets only generic checks.
    *require_https* (production, R1) refuses an ``http://`` fhirServer, to which we would otherwise
    send the bearer token in clear; test servers and the sandbox often use http.
    """
    request = _object(body, "$", "a JSON object")

    hook = _string(_required(request, "hook", "hook"), "hook", "a hook name")
    if hook not in served_hooks:
        raise RequestError("hook", "this service does not answer that hook")

    hook_instance = _required(request, "hookInstance", "hookInstance")
    if not is_uuid(hook_instance):
        raise RequestError("hookInstance", "expected a UUID string")

    definition = HOOKS.get(hook)
    context = _parse_context(definition, _required(request, "context", "context"))

    draft_orders: list[dict[str, Any]] = []
    selections: list[str] = []
    full_urls: list[str | None] = []
    bundle_field = definition.bundle_field if definition is not None else None
    if bundle_field is not None:
        draft_orders, full_urls = _parse_context_bundle(context[bundle_field], bundle_field)
        if definition is not None and definition.field("selections") is not None:
            selections = _parse_selections(context["selections"], draft_orders, full_urls)

    fhir_server = request.get("fhirServer")
    if fhir_server is not None:
        refused = url_problem(fhir_server)  # the same judge as every outbound call (security/urls.py)
        if refused is not None:
            raise RequestError("fhirServer", f"expected an absolute http(s) URL ({refused})")
    if require_https and isinstance(fhir_server, str) and not fhir_server.lower().startswith("https:"):
        raise RequestError("fhirServer", "expected an https URL")

    authorization = None
    if request.get("fhirAuthorization") is not None:
        authorization = _parse_fhir_authorization(request["fhirAuthorization"])
        if fhir_server is None:
            raise RequestError("fhirServer", "is required when fhirAuthorization is present")

    prefetch = None
    if request.get("prefetch") is not None:
        prefetch = _parse_prefetch(request["prefetch"])

    return HookRequest(
        hook=hook,
        hook_instance=hook_instance,
        context=context,
        fhir_server=fhir_server,
        fhir_authorization=authorization,
        prefetch=prefetch,
        draft_orders=draft_orders,
        selections=selections,
        draft_urls=full_urls,
    )
