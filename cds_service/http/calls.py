"""POST /cds-services/<id>: validate, answer with cards, log the cards issued.

Order of checks: JWT (401, http/auth.py, when auth is on) → unknown service (404) → media type (415) →
size (413) → JSON (400) → CDS Hooks shape (400 naming the field) → fhirServer allowed for the calling
client (403, when auth is on) → data (412 when neither prefetch nor FHIR access can supply it).
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

import orjson
from flask import Blueprint, Response, g

from cds_service.cdshooks import SERVICES, parse_hook_request
from cds_service.config import is_loopback_host
from cds_service.decision.call import run_hook
from cds_service.engine.evaluate import FIRED, SUPPRESSED, Evaluation
from cds_service.fhir.prefetch import PrefetchUnavailable

from .body import read_json
from .errors import error_response
from .metrics import count_decision
from .state import service_context

log = logging.getLogger("cds_service.http")

bp = Blueprint("hooks", __name__)  # endpoint hooks.invoke (metrics, access log)


@bp.post("/cds-services/<service_id>")
def invoke(service_id: str) -> Response:
    service = SERVICES.get(service_id)
    if service is None:
        return error_response(404, "unknown CDS service", field="id")
    ctx = service_context()
    body = read_json(ctx.settings.max_body_bytes)
    # D4: one id could serve several hooks; ours serve one each, so request.hook must be that one.
    request = parse_hook_request(body, served_hooks={service.hook},
                                 require_https=ctx.settings.require_https_fhir)
    g.hook_instance = request.hook_instance
    g.hook = request.hook
    g.patient_id = request.patient_id
    entries = prefetch_entries(request.prefetch)
    if entries > ctx.settings.max_prefetch_entries:
        return error_response(413, f"prefetch has {entries} resources; the limit is "
                                   f"{ctx.settings.max_prefetch_entries}", field="prefetch")
    if ctx.settings.auth.enabled and request.fhir_server is not None:
        problem = fhir_server_problem(request.fhir_server, g.get("client"))
        if problem is not None:  # before any outbound call: a forged fhirServer gets nothing from us
            log.warning("fhirServer refused", extra={"fields": {"reason": problem, "hookInstance": g.hook_instance}})
            return error_response(403, problem, field="fhirServer")
    ruleset = ctx.rules.ruleset
    if ruleset is None:
        return error_response(503, "no valid rule set is loaded")

    started = time.monotonic()
    now = ctx.clock()
    governance = ctx.governance
    call = governance.call_info(request, service.id, g.get("client"), now) if governance is not None else None
    hold = (lambda evaluation: governance.hold_back(call, evaluation)) if call is not None else None
    try:
        outcome = run_hook(request, ruleset, ctx.settings, now, hold_back=hold)
    except PrefetchUnavailable as exc:
        count_decision([], None, {key: "no FHIR server access" for key in exc.keys})
        # One expression per prefetch key we needed and could neither find nor fetch (P7).
        return error_response(412, "prefetch missing and no FHIR server access",
                              expression=[f"prefetch.{key}" for key in exc.keys] or ["prefetch"])
    decision = outcome.decision
    g.cards = len(decision.cards)
    g.rules_fired = fired_rules(decision.evaluation)
    count_decision(decision.cards, decision.evaluation, decision.missing)
    log.info("hook answered", extra={"fields": {
        "hook": request.hook, "hookInstance": request.hook_instance, "service": service.id,
        "cards": len(decision.cards), "missing": sorted(decision.missing), "skipped": len(decision.skipped),
        "sources": outcome.sources, "rulesVersion": ruleset.version, "suppressed": sorted(decision.held),
        "ms": round((time.monotonic() - started) * 1000, 1)}})

    # The card issue log and the decision log go to the background writer: never on the answer's path.
    if governance is not None and call is not None:
        governance.record(call, decision.evaluation, decision.cards, decision.held, decision.card_issues(),
                          decision.record)
    return Response(orjson.dumps(decision.body), mimetype="application/json")  # the JSON floor's encoder


def fhir_server_problem(fhir_server: str, client: object) -> str | None:
    """Why the calling client may not send us to *fhir_server* (allowlist and https), or None if it may."""
    allowed = getattr(getattr(client, "issuer", None), "fhir_servers", ())
    if fhir_server.rstrip("/") not in allowed:
        return "fhirServer is not allowed for this client"
    parts = urlsplit(fhir_server)
    if parts.scheme.lower() != "https" and not is_loopback_host(parts.hostname or ""):
        return "fhirServer must use https"
    return None


def prefetch_entries(prefetch: object) -> int:
    """Resources across all prefetch values: Bundle entries, or one per single resource."""
    if not isinstance(prefetch, dict):
        return 0
    total = 0
    for value in prefetch.values():
        if isinstance(value, dict):
            entries = value.get("entry") if value.get("resourceType") == "Bundle" else None
            total += len(entries) if isinstance(entries, list) else 1
    return total


def fired_rules(evaluation: Evaluation | None) -> list[str]:
    """Ids of the rules that fired (shown, silent or suppressed alike): rule ids name no patient."""
    if evaluation is None:
        return []
    return sorted({r.rule.id for r in evaluation.results if r.status in (FIRED, SUPPRESSED)})
