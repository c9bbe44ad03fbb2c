"""One hook call without HTTP: gather the data (prefetch, else the EHR's FHIR server) → decide → response.

The Flask view (http/calls.py) and the warm-up (warmup.py) call :func:`run_hook`; it touches the FHIR
server through ``gather``/``resolve_medications`` and never the clock (``now`` is read by the caller).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cds_service.cdshooks import HookRequest
from cds_service.config import Settings
from cds_service.decision.catalog import templates_for
from cds_service.decision.decide import Decision, decide
from cds_service.engine.cards import CardSettings
from cds_service.engine.evaluate import Evaluation
from cds_service.engine.model import RuleSet
from cds_service.fhir.client import CallBudget
from cds_service.fhir.parse import parse_resources
from cds_service.fhir.prefetch import gather
from cds_service.fhir.references import MEDICATION_KEY, ORDER_KEY, resolve_medications, resolve_orders

log = logging.getLogger("cds_service.decision")


@dataclass(slots=True)
class HookOutcome:
    """The decision plus where its data came from (``sources``: prefetch key → prefetch or fetched)."""

    decision: Decision
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def body(self) -> dict[str, Any]:
        return self.decision.body

    @property
    def cards(self) -> list[dict[str, Any]]:
        return self.decision.cards


def run_hook(request: HookRequest, ruleset: RuleSet, settings: Settings, now: datetime,
             hold_back: Callable[[Evaluation], dict[str, str]] | None = None) -> HookOutcome:
    """Everything between a validated request and its response body.

    Raises ``PrefetchUnavailable`` (→ 412) when data is missing and there is no FHIR access.
    """
    auth = request.fhir_authorization
    budget = CallBudget(settings.fetch_limits)  # ONE deadline and byte allowance for all FHIR reads of this call
    gathered = gather(
        templates_for(ruleset, request.hook),
        request.prefetch,
        request.context,
        fhir_server=request.fhir_server,
        access_token=auth.access_token if auth else None,
        limits=settings.fetch_limits,
        allow_unauthenticated_fhir=settings.allow_unauthenticated_fhir,
        budget=budget,
    )
    # Follow-up reads (the orders administrations carry out, then the Medications events and orders name)
    # take what is left of the call's ONE budget, and read references from checked resources only
    # (decide() reports the skipped ones).
    valid, skipped = parse_resources(gathered.resources)
    orders = resolve_orders(
        valid,
        fhir_server=request.fhir_server,
        access_token=auth.access_token if auth else None,
        limits=settings.fetch_limits,
        allow_unauthenticated_fhir=settings.allow_unauthenticated_fhir,
        budget=budget,
    )
    checked_orders, skipped_orders = parse_resources(orders.resources)
    medications = resolve_medications(
        valid + checked_orders,
        fhir_server=request.fhir_server,
        access_token=auth.access_token if auth else None,
        limits=settings.fetch_limits,
        allow_unauthenticated_fhir=settings.allow_unauthenticated_fhir,
        budget=budget,
    )
    checked_medications, skipped_medications = parse_resources(medications.resources)
    missing = dict(gathered.missing)
    if orders.missing:
        missing[ORDER_KEY] = orders.missing
    if medications.missing:
        missing[MEDICATION_KEY] = medications.missing
    decision = decide(
        ruleset,
        gathered.resources + orders.resources + medications.resources,
        hook=request.hook,
        now=now,
        patient_id=request.patient_id,
        drafts=request.draft_orders,
        selections=request.selections,
        draft_urls=request.draft_urls,
        missing=missing,
        card_settings=CardSettings(source_label=settings.source_label),
        max_cards=settings.max_cards,
        hold_back=hold_back,
        checked=(valid + checked_orders + checked_medications, skipped + skipped_orders + skipped_medications),
    )
    if decision.skipped:
        log.warning(
            "skipped %d malformed resource(s): %s",
            len(decision.skipped),
            "; ".join(map(str, decision.skipped[:10])),
        )
    return HookOutcome(decision, dict(gathered.sources))

