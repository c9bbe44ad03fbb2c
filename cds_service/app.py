"""Application factory: settings → live rule set → store → blueprints (as in Flask's own tutorial).

Tests pass their own ``rules_state`` and ``store``; ``kbladder serve`` (and each gunicorn worker) calls
``create_app(settings)`` and gets the polling rule state and the configured database.
"""

from __future__ import annotations

import atexit
import logging
import secrets
import time
from collections.abc import Callable
from datetime import datetime

from flask import Flask, Response, g, request

from cds_service.config import Settings
from cds_service.governance.decisionlog import keyed_hash
from cds_service.governance.service import Governance
from cds_service.http import calls, discovery, feedback, health, openapi
from cds_service.http.auth import install_auth
from cds_service.http.cors import install_cors
from cds_service.http.errors import register_error_handlers
from cds_service.http.metrics import install_metrics
from cds_service.http.state import EXTENSION, ServiceContext, wall_clock
from cds_service.rules_state import RulesState
from cds_service.store import ServiceStore, Store
from cds_service.store.outage import OUTAGE, StoreOutage

access_log = logging.getLogger("cds_service.access")


def create_app(
    settings: Settings | None = None,
    *,
    rules_state: RulesState | None = None,
    store: ServiceStore | None = None,
    clock: Callable[[], datetime] = wall_clock,
) -> Flask:
    """A ready Flask app. Without *rules_state*/*store*, they are built from *settings* (polling on).

    *clock* gives each hook call its ``now``; replaying a synthetic cohort passes a fixed one.
    """
    settings = settings or Settings.load()
    if rules_state is None:
        rules_state = RulesState([settings.rules_dir], site=settings.site_file,
                                 reload_interval_s=settings.reload_interval_s,
                                 require_proof=settings.reload_requires_tests)
        rules_state.start_polling()
    if store is None:
        store = Store(settings.database_url)

    app = Flask(__name__)
    # One byte over the limit: werkzeug silently truncates chunked bodies at MAX_CONTENT_LENGTH, so
    # http/body.py reads limit + 1 bytes to tell "exactly at the limit" from "too large" (413).
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    app.json.sort_keys = False  # keep card fields in the order the spec lists them
    key = log_key(settings)
    shadow = None
    if settings.shadow_rules_dir:
        shadow = RulesState([settings.shadow_rules_dir], site=settings.site_file,
                            reload_interval_s=settings.reload_interval_s)
        shadow.start_polling()
    outage = StoreOutage()  # how the service keeps advising while the store is down
    governance = Governance(settings, store, key, shadow, outage=outage, clock=clock)
    governance.start_pruning(clock)
    atexit.register(governance.close)  # gunicorn workers exit through here on SIGTERM: flush the log
    app.extensions[LOG_KEY] = key
    app.extensions[EXTENSION] = ServiceContext(settings, rules_state, store, clock, governance)
    app.extensions[OUTAGE] = outage
    for blueprint in (discovery.bp, calls.bp, feedback.bp, health.bp, openapi.bp):
        app.register_blueprint(blueprint)
    register_error_handlers(app)
    install_metrics(app, rules_state)  # before auth: refused calls are counted too
    install_cors(app, settings.cors_origins)
    _install_access_log(app, settings)  # before auth: refused calls are logged too
    install_auth(app, settings)  # JWT on discovery, service and feedback URLs when settings.auth.enabled
    return app


LOG_KEY = "kbladder.log_hash_key"


def log_key(settings: Settings) -> bytes:
    """The key of every keyed hash in logs and the decision log.

    Without a configured key each process draws its own: hashes then correlate one process's calls only,
    and snoozes do not cross processes. ``kbladder serve`` with several workers draws one in the master.
    """
    return (settings.log_hash_key or "").encode("utf-8") or secrets.token_bytes(32)


def patient_hash(key: bytes, patient_id: str) -> str:
    """HMAC-SHA256 of the patient id under the service's log key, shortened: stable, not reversible."""
    return keyed_hash(key, patient_id)


def _install_access_log(app: Flask, settings: Settings) -> None:
    """One JSON line per request: method, path, status, ms, the rules that fired (never headers, query values
    or bodies)."""

    @app.before_request
    def _start() -> None:
        g.started = time.monotonic()

    @app.after_request
    def _log(response: Response) -> Response:
        fields = {
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "ms": round((time.monotonic() - g.get("started", time.monotonic())) * 1000, 1),
        }
        if g.get("hook_instance"):
            fields["hook"] = g.get("hook")
            fields["hookInstance"] = g.hook_instance
        if g.get("patient_id"):  # the patient only as a keyed hash: correlates calls, reveals nobody
            fields["patient"] = patient_hash(app.extensions[LOG_KEY], g.patient_id)
        if g.get("cards") is not None:
            fields["cards"] = g.cards
            fields["rules"] = g.get("rules_fired") or []  # which rules fired: ids only, never their data
        client = g.get("client")
        if client is not None:  # who called (iss, tenant, jti may be logged; the JWT never is)
            fields["iss"] = client.issuer.iss
            if client.tenant:
                fields["tenant"] = client.tenant
        access_log.info("request", extra={"fields": fields})
        return response
