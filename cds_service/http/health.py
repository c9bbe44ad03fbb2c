"""Probes: /livez (the process answers), /readyz (it may take traffic), /healthz (the whole picture, for people).

Kubernetes-style split: a failing liveness probe restarts the process, so /livez checks nothing that a
restart cannot fix; a failing readiness probe only takes the replica out of the load balancer, so /readyz
checks what a request needs (rules, store) and, when pinned, that the rules are the agreed version.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from cds_service.store.outage import store_outage

from .state import ServiceContext, service_context

bp = Blueprint("health", __name__)

AUTH_OFF_WARNING = ("AUTHENTICATION IS OFF: any caller can invoke the CDS services. Development only; "
                    "enable auth in the config file before connecting an EHR (docs/security.md).")


@bp.get("/livez")
def livez() -> Response:
    """200 whenever the process can answer HTTP at all (no dependency is consulted)."""
    return jsonify({"status": "ok"})


def readiness(ctx: ServiceContext) -> dict[str, Any]:
    """Each readiness check with its outcome; ``ready`` is whether all of them passed."""
    ruleset = ctx.rules.ruleset
    version = ruleset.version if ruleset else None
    checks: dict[str, Any] = {"rules": {"ok": ruleset is not None, "version": version}}
    if ctx.store is not None:
        reachable = bool(ctx.store.ping())
        checks["store"] = {"ok": reachable} if ctx.settings.readiness_requires_store else \
            {"ok": True, "reachable": reachable, "required": False}
    pinned = ctx.settings.pinned_rules_version
    if pinned:
        checks["pinnedRulesVersion"] = {"ok": version == pinned, "expected": pinned, "actual": version}
    return {"status": "ready" if all(c["ok"] for c in checks.values()) else "not ready", "checks": checks}


@bp.get("/readyz")
def readyz() -> Response:
    """200 when rules are loaded, the store answers and (if pinned) the rule-set version matches; else 503."""
    body = readiness(service_context())
    response = jsonify(body)
    response.status_code = 200 if body["status"] == "ready" else 503
    return response


@bp.get("/healthz")
def healthz() -> Response:
    ctx = service_context()
    snapshot = ctx.rules.current
    ruleset = snapshot.ruleset
    store_ok = ctx.store.ping() if ctx.store is not None else None
    # A store outage degrades the service (hook calls are still verified and answered, store/outage.py);
    # only a missing rule set makes it unavailable.
    healthy = ruleset is not None
    degraded = bool(snapshot.last_error) or store_ok is False
    body = {
        "status": "ok" if healthy and not degraded else ("degraded" if healthy else "unavailable"),
        "rules": {
            "loaded": len(ruleset.rules) if ruleset else 0,
            "version": ruleset.version if ruleset else None,
            "loadedAt": snapshot.loaded_at.isoformat() if snapshot.loaded_at else None,
            "lastError": list(snapshot.last_error) or None,
            "lastErrorAt": snapshot.last_error_at.isoformat() if snapshot.last_error_at else None,
        },
        "store": {"configured": ctx.store is not None, "reachable": store_ok, **store_outage().status(),
                  **(ctx.governance.log_status() if ctx.governance is not None else {})},
        "auth": {"enabled": ctx.settings.auth.enabled},
    }
    if ctx.settings.pinned_rules_version:
        body["rules"]["pinnedVersion"] = ctx.settings.pinned_rules_version
    if not ctx.settings.auth.enabled:
        body["auth"]["warning"] = AUTH_OFF_WARNING
    response = jsonify(body)
    response.status_code = 200 if healthy else 503
    return response
