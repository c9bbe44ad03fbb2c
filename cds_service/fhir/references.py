"""Fetch the Medication resources that medication events only reference (``medicationReference``).

The prefetch templates ask for them with ``_include=<type>:medication`` (outside the CDS Hooks query
subset, P3, on purpose: docs/service.md), but a client may ignore it, and without the Medication a
ketamine administration coded only by reference would not match any value set: a silent false "not
exposed". So after gathering, referenced Medications that are not already at hand are read from
``fhirServer`` in one ``_id`` search; when that is impossible the gap is reported, never ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .client import CallBudget, FetchLimits, FhirClient

MEDICATION_KEY = "medication"
ORDER_KEY = "order"
_MEDICATION_TYPES = frozenset({"MedicationAdministration", "MedicationRequest", "MedicationStatement",
                               "MedicationDispense"})
_MEDICATION_REF = re.compile(r"^(?:.*/)?Medication/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_REQUEST_REF = re.compile(r"^(?:.*/)?MedicationRequest/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_MAX_IDS = 100  # one search; more referenced products than this in one record is not plausible


@dataclass
class ResolvedMedications:
    resources: list[dict[str, Any]] = field(default_factory=list)
    missing: str | None = None  # why some referenced Medications are unknown


def referenced_medication_ids(resources: Iterable[Mapping[str, Any]]) -> list[str]:
    """Ids of Medications referenced by medication events and not among *resources* (contained excluded)."""
    have = {r.get("id") for r in resources if r.get("resourceType") == "Medication"}
    wanted: list[str] = []
    for resource in resources:
        if resource.get("resourceType") not in _MEDICATION_TYPES:
            continue
        reference = resource.get("medicationReference")
        target = reference.get("reference") if isinstance(reference, Mapping) else None
        match = _MEDICATION_REF.match(target) if isinstance(target, str) else None
        if match and match.group(1) not in have and match.group(1) not in wanted:
            wanted.append(match.group(1))
    return wanted


def resolve_medications(
    resources: list[dict[str, Any]],
    *,
    fhir_server: str | None,
    access_token: str | None,
    limits: FetchLimits,
    allow_unauthenticated_fhir: bool = False,
    client_factory: Callable[..., FhirClient] = FhirClient,
    budget: CallBudget | None = None,
) -> ResolvedMedications:
    """The referenced Medications that are missing from *resources*, fetched when possible.

    Pass the hook call's *budget*: the read then gets what is left of the call's time and bytes, not a fresh
    allowance of its own.
    """
    ids = referenced_medication_ids(resources)
    if not ids:
        return ResolvedMedications()
    if not fhir_server or not (access_token or allow_unauthenticated_fhir):
        return ResolvedMedications(missing=f"{len(ids)} referenced Medication(s) not available (no FHIR access)")
    query = f"Medication?_id={','.join(ids[:_MAX_IDS])}&_count={min(len(ids), _MAX_IDS)}"
    with client_factory(fhir_server, access_token or None, limits=limits, budget=budget) as client:
        result = client.fetch(MEDICATION_KEY, query)
    # Not yet checked as FHIR (the caller does that next): read ids defensively.
    found = [r for r in result.resources if r.get("resourceType") == "Medication"]
    unknown = len(set(ids) - {r.get("id") for r in found if isinstance(r.get("id"), str)})
    if result.error:
        return ResolvedMedications(found, f"referenced Medications: {result.error}")
    if unknown:
        return ResolvedMedications(found, f"{unknown} referenced Medication(s) not found")
    return ResolvedMedications(found)


def referenced_order_ids(resources: Iterable[Mapping[str, Any]]) -> list[str]:
    """Ids of MedicationRequests that administrations carry out (``request``) and that are not at hand."""
    have = {r.get("id") for r in resources if r.get("resourceType") == "MedicationRequest"}
    wanted: list[str] = []
    for resource in resources:
        if resource.get("resourceType") != "MedicationAdministration":
            continue
        reference = resource.get("request")
        target = reference.get("reference") if isinstance(reference, Mapping) else None
        match = _REQUEST_REF.match(target) if isinstance(target, str) else None
        if match and match.group(1) not in have and match.group(1) not in wanted:
            wanted.append(match.group(1))
    return wanted


def resolve_orders(
    resources: list[dict[str, Any]],
    *,
    fhir_server: str | None,
    access_token: str | None,
    limits: FetchLimits,
    allow_unauthenticated_fhir: bool = False,
    client_factory: Callable[..., FhirClient] = FhirClient,
    budget: CallBudget | None = None,
) -> ResolvedMedications:
    """The orders (MedicationRequest) that administrations reference and the record lacks, fetched when possible.

    An infusion often records only its start and end: the rate is on the order. Without the order the dose
    is unknown, so an order that cannot be read is reported as missing data, never ignored.
    """
    ids = referenced_order_ids(resources)
    if not ids:
        return ResolvedMedications()
    if not fhir_server or not (access_token or allow_unauthenticated_fhir):
        return ResolvedMedications(missing=f"{len(ids)} referenced order(s) not available (no FHIR access)")
    query = f"MedicationRequest?_id={','.join(ids[:_MAX_IDS])}&_count={min(len(ids), _MAX_IDS)}"
    with client_factory(fhir_server, access_token or None, limits=limits, budget=budget) as client:
        result = client.fetch(ORDER_KEY, query)
    found = [r for r in result.resources if r.get("resourceType") == "MedicationRequest"]
    unknown = len(set(ids) - {r.get("id") for r in found if isinstance(r.get("id"), str)})  # not yet checked
    if result.error:
        return ResolvedMedications(found, f"referenced orders: {result.error}")
    if unknown:
        return ResolvedMedications(found, f"{unknown} referenced order(s) not found")
    return ResolvedMedications(found)
