"""POST /cds-services/<id>/feedback: what clinicians did with our cards, stored idempotently (F1-F6).

Feedback tells the truth: a card uuid we never issued, or issued by another service, is refused with 404
naming the field (it would otherwise be a row no report can attribute); a reason sent as a bare code (the
sandbox does) gets its display from the card's own override reasons. An override with a reason, or an
accepted suggestion, then snoozes the rule for the patient (governance).
"""

from __future__ import annotations

import dataclasses
import logging

from flask import Blueprint, Response, jsonify

from cds_service.cdshooks import SERVICES, parse_feedback
from cds_service.cdshooks.feedback_request import Coding, FeedbackItem
from cds_service.engine.model import RuleSet
from cds_service.store.outage import STORE_ERRORS, store_outage
from cds_service.store.store import IssuedCard

from .body import read_json
from .errors import error_response
from .state import service_context

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
    if ctx.store is None or ctx.governance is None:
        return _unavailable("feedback store not configured")
    ruleset = ctx.rules.ruleset
    try:
        cards: list[IssuedCard] = []
        for i, item in enumerate(items):  # every item checked before any is stored
            card = ctx.governance.issued_card(item.card)
            if card is None:
                return error_response(404, "no card with this uuid was issued by this service",
                                      field=f"feedback[{i}].card")
            if card.service_id != service_id:
                return error_response(404, "this card was issued by another CDS service; send its feedback there",
                                      field=f"feedback[{i}].card")
            cards.append(card)
        filled = [with_reason_display(item, card, ruleset) for item, card in zip(items, cards, strict=True)]
        new = ctx.store.record_feedback_items(service_id, filled,  # all items or none
                                              [(c.rule_id, c.rule_version) for c in cards])
    except STORE_ERRORS as exc:
        store_outage().failed("feedback", exc, ctx.clock())
        log.warning("feedback not stored: store unavailable", extra={"fields": {
            "service": service_id, "items": len(items), "error": type(exc).__name__}})
        return _unavailable("feedback could not be stored; retry later")
    learnt = 0
    for item, card in zip(filled, cards, strict=True):
        try:  # a snooze is learnt best-effort: the feedback itself is stored
            learnt += ctx.governance.learn(card, item, ruleset)
        except STORE_ERRORS as exc:
            log.error("snooze not recorded", extra={"fields": {"error": type(exc).__name__}})
    log.info("feedback stored", extra={"fields": {"service": service_id, "items": len(items), "new": new,
                                                  "snoozes": learnt}})
    return jsonify({})


def _unavailable(message: str) -> Response:
    """503 with Retry-After: the feedback was not stored and may be sent again unchanged."""
    response = error_response(503, message)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def with_reason_display(item: FeedbackItem, card: IssuedCard, ruleset: RuleSet | None) -> FeedbackItem:
    """The item with its override reason's display taken from the card's own overrideReasons when missing."""
    reason = item.override_reason.reason if item.override_reason else None
    if reason is None or reason.display or ruleset is None or item.override_reason is None:
        return item
    rule = next((r for r in ruleset.rules if r.id == card.rule_id), None)
    known = next((r for r in (rule.card.override_reasons if rule else ())
                  if r.code == reason.code and (reason.system in (None, r.system))), None)
    if known is None:
        return item
    coding = Coding(system=reason.system or known.system, code=reason.code, display=known.display)
    return dataclasses.replace(item, override_reason=dataclasses.replace(item.override_reason, reason=coding))
