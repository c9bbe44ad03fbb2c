"""POST /cds-services/<id>/feedback: what clinicians did with our cards, stored idempotently (F1-F6)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from cds_service.cdshooks import SERVICES, parse_feedback
from cds_service.store.outage import STORE_ERRORS, store_outage

from .body import read_json
from .context import service_context
from .errors import error_response

log = logging.getLogger("cds_service.http")

bp = Blueprint("feedback", __name__)

#: Seconds an EHR should wait before resending feedback we could not store (Retry-After).
RETRY_AFTER_S = 30


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    if service_id not in SERVICES:
        return error_response(404, "unknown CDS service", field="id")
    ctx = service_context()
    items = parse_feedback(read_json(ctx.settings.max_body_bytes))
    if ctx.store is None:
        return _unavailable("feedback store not configured")
    try:  # all items or none: a retry after our 503 loses nothing and duplicates nothing
        new = ctx.store.record_feedback_items(service_id, items)
    except STORE_ERRORS as exc:
        store_outage().failed("feedback", exc, ctx.clock())
        log.warning("feedback not stored: store unavailable", extra={"fields": {
            "service": service_id, "items": len(items), "error": type(exc).__name__}})
        return _unavailable("feedback could not be stored; retry later")
    log.info("feedback stored", extra={"fields": {"service": service_id, "items": len(items), "new": new}})
    return jsonify({})


def _unavailable(message: str) -> Response:
    """503 with Retry-After: the feedback was not stored and may be sent again unchanged."""
    response = error_response(503, message)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response
