"""GET /healthz: is there a rule set, which version, is the store reachable, why did the last reload fail."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .context import service_context

bp = Blueprint("health", __name__)

AUTH_OFF_WARNING = ("AUTHENTICATION IS OFF: any caller can invoke the CDS services. Development only; "
                    "enable auth in the config file before connecting an EHR (docs/security.md).")


@bp.get("/healthz")
def healthz() -> Response:
    ctx = service_context()
    snapshot = ctx.rules.current
    ruleset = snapshot.ruleset
    store_ok = ctx.store.ping() if ctx.store is not None else None
    healthy = ruleset is not None and store_ok is not False
    body = {
        "status": "ok" if healthy and not snapshot.last_error else ("degraded" if healthy else "unavailable"),
        "rules": {
            "loaded": len(ruleset.rules) if ruleset else 0,
            "version": ruleset.version if ruleset else None,
            "loadedAt": snapshot.loaded_at.isoformat() if snapshot.loaded_at else None,
            "lastError": list(snapshot.last_error) or None,
            "lastErrorAt": snapshot.last_error_at.isoformat() if snapshot.last_error_at else None,
        },
        "store": {"configured": ctx.store is not None, "reachable": store_ok},
        "auth": {"enabled": ctx.settings.auth.enabled},
    }
    if not ctx.settings.auth.enabled:
        body["auth"]["warning"] = AUTH_OFF_WARNING
    response = jsonify(body)
    response.status_code = 200 if healthy else 503
    return response
