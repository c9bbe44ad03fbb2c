"""GET /cds-services: one service per hook, prefetch generated from the rules loaded right now."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from cds_service.decision.catalog import discovery_document

from .state import service_context

bp = Blueprint("discovery", __name__)


@bp.get("/cds-services")
def discovery() -> Response:
    ctx = service_context()
    return jsonify(discovery_document(ctx.rules.ruleset, cds_hooks_version=ctx.settings.cds_hooks_version))
