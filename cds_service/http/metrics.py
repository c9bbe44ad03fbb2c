"""GET /metrics (Prometheus text format) and the per-request bookkeeping that feeds it.

/metrics needs no token, like the probes: it carries counts by rule, hook, status and reason, nothing
about a patient or a user (see cds_service/metrics.py for the label rules).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request

from cds_service.engine.evaluate import SUPPRESSED, UNDECIDED, Evaluation
from cds_service.metrics import CONTENT_TYPE, Metrics
from cds_service.rules_state import RulesSnapshot, RulesState

METRICS = "kbladder.metrics"
HOOK_ENDPOINT = "hooks.invoke"

log = logging.getLogger("cds_service.http")

bp = Blueprint("metrics", __name__)


def metrics() -> Metrics:
    """The metrics of the app handling the current request."""
    return current_app.extensions[METRICS]


@bp.get("/metrics")
def scrape() -> Response:
    return Response(metrics().exposition(), mimetype=None, content_type=CONTENT_TYPE)


def count_decision(cards: list[dict[str, Any]], evaluation: Evaluation | None, missing: Mapping[str, str]) -> None:
    """Feed one hook call's decision to the metrics: the cards, the rules left undecided or suppressed."""
    results = evaluation.results if evaluation is not None else []
    with counting():
        metrics().decision(
            cards,
            undecided=[r.rule.id for r in results if r.status == UNDECIDED],
            suppressed=[r.rule.id for r in results if r.status == SUPPRESSED],
            missing=missing,
        )


@contextmanager
def counting() -> Iterator[None]:
    """Counting must never cost a clinician an answer: a metrics failure is logged and dropped."""
    try:
        yield
    except Exception as exc:
        log.warning("metrics not recorded", extra={"fields": {"error": type(exc).__name__}})


def install_metrics(app: Flask, rules: RulesState) -> Metrics:
    """Create the app's metrics, follow rule reloads, and count every request when it is answered."""
    found = Metrics()
    app.extensions[METRICS] = found
    ruleset = rules.ruleset
    found.serving(ruleset.version if ruleset else None, len(ruleset.rules) if ruleset else 0)

    def reloaded(ok: bool, snapshot: RulesSnapshot) -> None:
        live = snapshot.ruleset
        with counting():
            found.reloaded(ok, live.version if live else None, len(live.rules) if live else 0)

    rules.on_reload(reloaded)
    app.register_blueprint(bp)

    @app.before_request
    def _clock() -> None:
        g.metrics_started = time.monotonic()

    @app.after_request
    def _count(response: Response) -> Response:
        started = g.get("metrics_started", time.monotonic())
        hook = (g.get("hook") or "") if request.endpoint == HOOK_ENDPOINT else None
        rule = request.url_rule.rule if request.url_rule is not None else None
        with counting():
            found.request(rule, request.method, response.status_code, hook, time.monotonic() - started)
        return response

    return found
