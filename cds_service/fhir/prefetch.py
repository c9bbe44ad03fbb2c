"""One data-gathering path: prefetched and fetched data become the same per-key results (checklist P4–P8).

`gather` reads what the CDS client prefetched, fetches what it left out from `fhirServer` (with the
token, or without one only when explicitly allowed for open test servers, A1–A2), and reports per key
where the data came from and why a key is missing. A missing key may still carry partial data in
`by_key`: partial data can show that something happened, never that it did not.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from cds_service.cdshooks.hooks import USER_PREFETCH_TOKENS

from .client import CallBudget, FetchLimits, FhirClient, QueryResult, is_read, next_link, searchset_resources

log = logging.getLogger("cds_service.fhir")

# {{ token }}: plain substitution, not an expression language (2.0 has none; P1, P2).
_TOKEN = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


class PrefetchUnavailable(Exception):
    """Keys that were not prefetched and cannot be fetched (no FHIR access): HTTP 412 (P7)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = list(keys)
        super().__init__(f"prefetch missing and no FHIR server access for: {', '.join(self.keys)}")


@dataclass
class GatheredData:
    """All data for one hook request, per prefetch key and merged."""

    resources: list[dict[str, Any]] = field(default_factory=list)  # all keys, de-duplicated by type+id
    by_key: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # key -> reason (data unknown or partial)
    sources: dict[str, str] = field(default_factory=dict)  # key -> "prefetch" | "fhir" | "empty"


def _token_value(token: str, context: Mapping[str, Any], user_id: str | None) -> str | None:
    """The value for one token, or None when it cannot be filled."""
    if token.startswith("context."):
        name = token.removeprefix("context.")
        value = context.get(name) if name.isidentifier() else None
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str | int | float) and str(value) != "":
            return str(value)
        return None  # absent, or not a root-level primitive (objects, arrays)
    resource_type = USER_PREFETCH_TOKENS.get(token)
    if resource_type is None or not user_id:
        return None
    parts = user_id.rstrip("/").split("/")  # "Practitioner/123", also an absolute reference
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return parts[-1]
    return None


def render_template(template: str, context: Mapping[str, Any], user_id: str | None) -> str | None:
    """Fill {{context.<field>}} and {{user...Id}} tokens (URL-encoded); None if any token cannot be filled.

    `user_id` defaults to `context.userId`.
    """
    if user_id is None and isinstance(context.get("userId"), str):
        user_id = context["userId"]
    unfilled = False

    def substitute(match: re.Match[str]) -> str:
        nonlocal unfilled
        value = _token_value(match.group(1), context, user_id)
        if value is None:
            unfilled = True
            return ""
        return quote(value, safe="")

    rendered = _TOKEN.sub(substitute, template)
    return None if unfilled else rendered


def gather(
    templates: Mapping[str, str],
    prefetch: Mapping[str, Any] | None,
    context: Mapping[str, Any],
    *,
    user_id: str | None = None,
    fhir_server: str | None,
    access_token: str | None,
    limits: FetchLimits,
    allow_unauthenticated_fhir: bool = False,
    client_factory: Callable[..., FhirClient] = FhirClient,
    budget: CallBudget | None = None,
) -> GatheredData:
    """Data for every template key, from prefetch where given, else from the FHIR server.

    Raises PrefetchUnavailable when keys are absent from the prefetch and FHIR access is not possible.
    `client_factory(fhir_server, access_token, limits=limits, budget=budget)` makes the client (e.g. with a
    shared session); *budget* is the hook call's one deadline and byte allowance (``CallBudget``).
    """
    prefetch = prefetch if isinstance(prefetch, Mapping) else {}
    can_fetch = bool(fhir_server) and (bool(access_token) or allow_unauthenticated_fhir)
    data = GatheredData()
    to_fetch: dict[str, str] = {}  # absent keys: rendered relative queries
    to_continue: dict[str, str] = {}  # prefetched Bundles with a next link

    for key, template in templates.items():
        if key not in prefetch:
            query = render_template(template, context, user_id)
            if query is None:  # the client could not have run it either
                data.sources[key] = "empty"
                data.missing[key] = "template token not available"
            else:
                to_fetch[key] = query
            continue
        data.sources[key] = "prefetch" if prefetch[key] is not None else "empty"
        resources, reason, link = _read_prefetch_value(prefetch[key])
        data.by_key[key] = resources
        if reason:
            data.missing[key] = reason
        elif link and can_fetch:
            to_continue[key] = link
        elif link:
            data.missing[key] = "prefetch has more pages, no FHIR server access"

    if to_fetch and not can_fetch:
        raise PrefetchUnavailable(list(to_fetch))
    if fhir_server and (to_fetch or to_continue):  # both imply can_fetch
        with client_factory(fhir_server, access_token or None, limits=limits, budget=budget) as client:
            results = client.fetch_all({**to_fetch, **to_continue})
        for key, result in results.items():
            read = is_read(to_fetch.get(key, ""))
            _merge_fetched(data, key, result, continued=key in to_continue, read=read)

    data.by_key = {key: data.by_key.get(key, []) for key in templates}  # template order
    data.resources = _dedupe(r for key in templates for r in data.by_key[key])
    log.debug("prefetch gathered: %d keys (%d fetched), %d resources, missing=%s",
              len(templates), len(to_fetch), len(data.resources), sorted(data.missing))
    return data


def _read_prefetch_value(value: Any) -> tuple[list[dict[str, Any]], str | None, str | None]:
    """(resources, missing reason, next link) for one prefetched value (P4)."""
    if value is None:  # a read that found nothing
        return [], None, None
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return [], "invalid prefetch value", None
    if value["resourceType"] == "OperationOutcome":
        return [], "prefetch OperationOutcome", None
    if value["resourceType"] != "Bundle":  # a read
        return [value], None, None
    resources, error = searchset_resources(value)
    if error and error.startswith("OperationOutcome"):  # the client says this search failed: don't re-query (P4)
        return resources, "prefetch OperationOutcome", None
    if error:
        return resources, f"invalid prefetch value ({error})", None
    return resources, None, next_link(value)


def _merge_fetched(data: GatheredData, key: str, result: QueryResult, *, continued: bool, read: bool) -> None:
    """Add one fetched result: a continuation of a prefetched Bundle, or a query of our own."""
    if continued:
        data.by_key[key] = data.by_key[key] + result.resources
    elif read and result.error in ("HTTP 404", "HTTP 410"):  # same as a prefetched null (P4, P6)
        data.sources[key] = "empty"
        data.by_key[key] = []
        return
    else:
        data.sources[key] = "fhir"
        data.by_key[key] = result.resources
    if result.error:
        data.missing[key] = result.error


def _dedupe(resources: Any) -> list[dict[str, Any]]:
    """Resources in order, each (resourceType, id) once; resources without an id are all kept."""
    seen: set[tuple[str, str]] = set()
    out = []
    for resource in resources:
        rid = resource.get("id")
        if isinstance(rid, str) and rid:
            ident = (str(resource.get("resourceType")), rid)
            if ident in seen:
                continue
            seen.add(ident)
        out.append(resource)
    return out
