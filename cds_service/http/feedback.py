"""POST /cds-services/<id>/feedback: what clinicians did with our cards, stored idempotently (F1-F6)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from cds_service.cdshooks import SERVICES, parse_feedback

from .body import read_json
from .context import service_context
from .errors import error_response

log = logging.getLogger("cds_service.http")

bp = Blueprint("feedback", __name__)


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    if service_id not in SERVICES:
        return error_response(404, "unknown CDS service", field="id")
    ctx = service_context()
    items = parse_feedback(read_json(ctx.settings.max_body_bytes))
    if ctx.store is None:
        return error_response(503, "feedback store not configured")
    new = sum(ctx.store.record_feedback(service_id, item) for item in items)
    log.info("feedback stored", extra={"fields": {"service": service_id, "items": len(items), "new": new}})
    return jsonify({})
