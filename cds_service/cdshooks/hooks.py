"""The ONE hook table: every hook we answer, from the CDS Hooks Library STU1 1.0.1, plus our service for it.

Everything about hooks derives from :data:`HOOKS`: request validation (context fields and their types),
discovery (one service per hook: id, title, description), prefetch tokens and the template self-check
(checklist §1.10, P1-P3), which draft orders a hook evaluates (:func:`drafts_to_evaluate`), the CLI's
``--hook`` choices, the demo, the synthetic cohort and the ``hooks`` enums of the rule and test schemas.
Adding a hook is one entry here (plus any context check the generic field checks do not cover).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "HOOKS",
    "SERVICES",
    "USER_PREFETCH_TOKENS",
    "ContextField",
    "DraftPolicy",
    "HookDefinition",
    "Service",
    "drafts_to_evaluate",
    "prefetch_tokens",
    "service_for",
    "template_problems",
]

ContextType = Literal["string", "array", "object"]
#: What a hook evaluates as planned exposure: nothing (patient-view, encounter-start), the selected draft
#: orders of ``context.draftOrders`` (order-select: the others were judged when they were selected), all of
#: them (order-sign), or the sessions the proposed Appointments of ``context.appointments`` book
#: (appointment-book: see ``decision/appointments.py``).
DraftPolicy = Literal["none", "selected", "all", "appointments"]


@dataclass(frozen=True, slots=True)
class ContextField:
    """One row of a hook's context table (name, JSON type, optionality, prefetch-token eligibility)."""

    name: str
    type: ContextType
    required: bool
    prefetch_token: bool
    description: str
    #: For ``userId``: the FHIR resource types the hook allows the user to be.
    reference_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Service:
    """Our CDS service for one hook, as discovery publishes it (prefetch comes from the rules)."""

    id: str
    hook: str
    title: str
    description: str


@dataclass(frozen=True, slots=True)
class HookDefinition:
    """A hook as published in the Hook Library (metadata, context fields) and how we answer it."""

    id: str
    description: str
    hook_version: str
    specification_version: str
    maturity: int
    fields: tuple[ContextField, ...]
    drafts: DraftPolicy
    service_title: str
    service_description: str

    @property
    def order_hook(self) -> bool:
        """True when the hook carries draft orders (``context.draftOrders``) that rules may judge."""
        return self.drafts in ("selected", "all")

    @property
    def plans_exposure(self) -> bool:
        """True when the call is about a session still to come (a draft order or a booked appointment)."""
        return self.drafts != "none"

    @property
    def bundle_field(self) -> str | None:
        """The context field whose Bundle holds what the call is about: draftOrders, appointments or none."""
        return {"selected": "draftOrders", "all": "draftOrders", "appointments": "appointments"}.get(self.drafts)

    @property
    def service(self) -> Service:
        """Our service for this hook: one service per hook, id ``kbladder-<hook>``."""
        return Service(f"kbladder-{self.id}", self.id, self.service_title, self.service_description)

    def field(self, name: str) -> ContextField | None:
        """Return the context field called *name*, or None when the hook does not define it."""
        return next((f for f in self.fields if f.name == name), None)

    @property
    def required_fields(self) -> tuple[ContextField, ...]:
        return tuple(f for f in self.fields if f.required)

    @property
    def context_tokens(self) -> frozenset[str]:
        """``context.<field>`` tokens usable in prefetch templates (root-level primitives marked 'Yes')."""
        return frozenset(f"context.{f.name}" for f in self.fields if f.prefetch_token)

    @property
    def user_types(self) -> tuple[str, ...]:
        """Resource types allowed for ``context.userId`` by this hook."""
        user = self.field("userId")
        return user.reference_types if user else ()


#: User tokens of CDS Hooks 2.0 (#prefetch-tokens): each resolves to the FHIR id of ``userId`` when
#: ``userId`` is of the named resource type.
USER_PREFETCH_TOKENS: Mapping[str, str] = MappingProxyType(
    {
        "userPractitionerId": "Practitioner",
        "userPractitionerRoleId": "PractitionerRole",
        "userPatientId": "Patient",
        "userRelatedPersonId": "RelatedPerson",
    }
)

_CLINICIAN = ("Practitioner", "PractitionerRole")


def _user(types: tuple[str, ...]) -> ContextField:
    return ContextField(
        "userId",
        "string",
        True,
        True,
        "The id of the current user, as [ResourceType]/[id].",
        reference_types=types,
    )


_PATIENT = ContextField("patientId", "string", True, True, "The FHIR Patient.id of the current patient.")
_ENCOUNTER = ContextField(
    "encounterId", "string", False, True, "The FHIR Encounter.id of the current encounter."
)
_DRAFT_ORDERS = ContextField(
    "draftOrders",
    "object",
    True,
    False,
    "Bundle of FHIR request resources (draft status) from the current ordering session.",
)
_SELECTIONS = ContextField(
    "selections",
    "array",
    True,
    False,
    "Type/id references of the newly selected orders; each points into draftOrders.",
)

_APPOINTMENTS = ContextField(
    "appointments",
    "object",
    True,
    False,
    "Bundle of FHIR Appointment resources in 'proposed' state, being booked.",
)

HOOKS: Mapping[str, HookDefinition] = MappingProxyType(
    {
        "patient-view": HookDefinition(
            id="patient-view",
            description="The user has just opened a patient's record.",
            hook_version="1.0",
            specification_version="1.0",
            maturity=5,
            fields=(_user((*_CLINICIAN, "Patient", "RelatedPerson")), _PATIENT, _ENCOUNTER),
            drafts="none",
            service_title="Ketamine bladder injury: record review",
            service_description="Warns when a patient's record shows ketamine exposure together with signs of "
            "bladder injury.",
        ),
        "order-select": HookDefinition(
            id="order-select",
            description="A clinician selects one or more new orders, before signing.",
            hook_version="1.0",
            specification_version="1.0",
            maturity=4,
            fields=(_user(_CLINICIAN), _PATIENT, _ENCOUNTER, _SELECTIONS, _DRAFT_ORDERS),
            drafts="selected",
            service_title="Ketamine bladder injury: order selection",
            service_description="Checks newly selected ketamine or esketamine orders against signs of bladder "
            "injury.",
        ),
        "order-sign": HookDefinition(
            id="order-sign",
            description="A clinician is ready to sign one or more orders.",
            hook_version="1.0",
            specification_version="1.0",
            maturity=5,
            fields=(_user(_CLINICIAN), _PATIENT, _ENCOUNTER, _DRAFT_ORDERS),
            drafts="all",
            service_title="Ketamine bladder injury: order signing",
            service_description="Checks ketamine or esketamine orders about to be signed against signs of "
            "bladder injury.",
        ),
        "appointment-book": HookDefinition(
            id="appointment-book",
            description="The user is scheduling one or more future encounters/visits for the patient.",
            hook_version="1.0",
            specification_version="1.0",
            maturity=1,
            fields=(_user((*_CLINICIAN, "Patient", "RelatedPerson")), _PATIENT, _ENCOUNTER, _APPOINTMENTS),
            drafts="appointments",
            service_title="Ketamine bladder injury: session booking",
            service_description="Checks the interval and the urine and symptom monitoring due at the date of a "
            "ketamine or esketamine session being booked.",
        ),
        "encounter-start": HookDefinition(
            id="encounter-start",
            description="The user is initiating a new encounter (the infusion visit begins).",
            hook_version="1.0",
            specification_version="1.0",
            maturity=1,
            fields=(_user(_CLINICIAN), _PATIENT,
                    ContextField("encounterId", "string", True, True,
                                 "The FHIR Encounter.id of the Encounter being started.")),
            drafts="none",
            service_title="Ketamine bladder injury: visit start",
            service_description="At the start of a visit, warns when the record shows ketamine exposure "
            "together with signs of bladder injury (the checks of record review).",
        ),
    }
)

#: Our services by id (discovery, POST /cds-services/<id>, feedback), derived from the hook table.
SERVICES: Mapping[str, Service] = MappingProxyType({h.service.id: h.service for h in HOOKS.values()})


def service_for(hook: str) -> Service:
    """Our service answering *hook*."""
    return HOOKS[hook].service


def drafts_to_evaluate(
    hook: str,
    drafts: Sequence[Mapping[str, Any]],
    selections: Collection[str] | None = None,
    full_urls: Sequence[str | None] = (),
) -> list[Mapping[str, Any]]:
    """The draft orders *hook* evaluates: the ONE definition the service, rule tests, explain and demo share.

    ``selections`` are ``Type/id`` references; a draft is selected by its ``Type/id`` or by its entry's
    ``fullUrl`` (*full_urls*, parallel to *drafts*), as a client may identify a draft only by fullUrl.
    ``selections=None`` (a rule test or ``rules explain`` that names none) selects every draft; the service
    always passes the request's validated, non-empty selections.
    """
    definition = HOOKS.get(hook)
    policy = definition.drafts if definition is not None else "none"
    if policy in ("none", "appointments"):  # appointments book sessions of orders: decision/appointments.py
        return []
    if policy == "all" or selections is None:
        return list(drafts)
    chosen = set(selections)
    picked = []
    for i, resource in enumerate(drafts):
        ref = f"{resource.get('resourceType')}/{resource.get('id')}"
        full_url = full_urls[i] if i < len(full_urls) else None
        by_url = isinstance(full_url, str) and any(full_url == s or full_url.endswith("/" + s) for s in chosen)
        if ref in chosen or by_url:
            picked.append(resource)
    return picked


def prefetch_tokens(hook: str) -> frozenset[str]:
    """All tokens (without braces) a prefetch template of *hook* may contain (checklist P1).

    User tokens are included only when the hook's ``userId`` can be of that type; otherwise the client
    could never resolve them and would silently skip the template.
    """
    definition = HOOKS.get(hook)
    if definition is None:
        return frozenset()
    users = {tok for tok, rtype in USER_PREFETCH_TOKENS.items() if rtype in definition.user_types}
    return definition.context_tokens | users


_TOKEN = re.compile(r"\{\{(.*?)\}\}")
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")
_DATE_WORDS = re.compile(r"\b(today|now)\b|\(\)|[+-]\s*\d+\s*(day|week|month|year)s?", re.I)
_ALLOWED_MODIFIERS = frozenset({"in"})
_DATE_PREFIX_BAD = re.compile(r"^(ne|sa|eb|ap)\d")
_FORBIDDEN_PARAMS = frozenset({"_include", "_revinclude", "_has", "_type", "_filter", "_query", "_contained"})
# The one deliberate step outside the subset: medication events bring the Medication they reference.
# A client that ignores it still gets a valid search (the service then reads the Medications itself).
MEDICATION_INCLUDES = frozenset(
    f"{rtype}:medication" for rtype in ("MedicationAdministration", "MedicationRequest", "MedicationStatement",
                                        "MedicationDispense")
)


def _token_problems(inner: str, hook: str, valid: frozenset[str]) -> list[str]:
    token = inner.strip()
    shown = "{{" + inner + "}}"
    if token != inner:
        return [f"token {shown}: whitespace inside braces; clients substitute exact token text"]
    if token in valid:
        return []
    definition = HOOKS[hook]
    if _DATE_WORDS.search(token):
        return [f"token {shown}: date/relative tokens do not exist in CDS Hooks 2.0 (P2)"]
    if token in USER_PREFETCH_TOKENS:
        rtype = USER_PREFETCH_TOKENS[token]
        return [f"token {shown}: {hook} userId is never a {rtype}, so the token can never resolve"]
    if token.startswith("context."):
        path = token.removeprefix("context.")
        root = path.split(".", 1)[0].split("[", 1)[0]
        field = definition.field(root)
        if field is None:
            return [f"token {shown}: {hook} has no context field '{root}'"]
        if path != root:
            return [f"token {shown}: only root-level context fields may be tokens (P1)"]
        return [f"token {shown}: context.{root} is not a prefetch token for {hook} (P1)"]
    return [f"token {shown}: not a CDS Hooks 2.0 prefetch token (P1)"]


def _query_problems(query: str) -> list[str]:
    problems: list[str] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        base, _, modifier = name.partition(":")
        if not value:
            problems.append(f"query parameter '{name}' has no value")
        # _include of referenced Medications lies outside the recommended subset on purpose, and is harmless
        # when a client ignores it (docs/service.md).
        medication_include = base == "_include" and not modifier and value in MEDICATION_INCLUDES
        if base in _FORBIDDEN_PARAMS and not medication_include:
            problems.append(f"query parameter '{base}' is outside the prefetch query subset (P3)")
        if base == "sort":
            problems.append("'sort' is not a FHIR search parameter; use _sort=-date (P3)")
        if modifier and modifier not in _ALLOWED_MODIFIERS:
            problems.append(f"modifier ':{modifier}' on '{base}' is outside the subset (only :in) (P3)")
        if "." in base:
            problems.append(f"chained parameter '{base}' is outside the prefetch query subset (P3)")
        if base == "_count" and not value.isdigit():
            problems.append("_count must be a non-negative integer")
        if _DATE_PREFIX_BAD.match(value):
            problems.append(f"date prefix '{value[:2]}' on '{name}' is outside eq/lt/gt/ge/le (P3)")
    return problems


def template_problems(template: str, hook: str) -> list[str]:
    """Say what is wrong with one prefetch *template* published for *hook* (empty list = fine).

    Used to self-check generated discovery: an EHR silently drops templates it cannot resolve, which
    would turn every call into a slow self-fetch or a 412.
    """
    if hook not in HOOKS:
        return [f"unknown hook '{hook}'"]
    if not isinstance(template, str) or not template.strip():
        return ["template must be a non-empty string"]
    problems: list[str] = []
    valid = prefetch_tokens(hook)
    for match in _TOKEN.finditer(template):
        problems.extend(_token_problems(match.group(1), hook, valid))
    stripped = _TOKEN.sub("x", template)
    if "{" in stripped or "}" in stripped:
        problems.append("unbalanced or stray braces; tokens are written {{token}}")
    if any(ch.isspace() for ch in stripped):
        problems.append("template contains whitespace; encode it (%20)")

    parts = urlsplit(stripped)
    if parts.scheme or parts.netloc or stripped.startswith("/"):
        problems.append("template must be a relative FHIR URL (e.g. 'Patient/{{context.patientId}}')")
        return problems
    if parts.fragment:
        problems.append("template must not contain a fragment")
    segments = parts.path.split("/")
    if not _RESOURCE_TYPE.match(segments[0]):
        problems.append("template must start with a FHIR resource type (P3)")
    elif len(segments) > 2 or (len(segments) == 2 and (not segments[1] or segments[1].startswith("$"))):
        problems.append("only instance reads (Type/id) and type-level searches (Type?...) are allowed (P3)")
    elif len(segments) == 2 and parts.query:
        problems.append("an instance read (Type/id) takes no query parameters (P3)")
    if parts.query:
        problems.extend(_query_problems(parts.query))
    return problems
