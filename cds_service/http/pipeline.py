"""One hook call, HTTP-free: gather data → check FHIR → patient record → evaluate → cards → response body.

Kept apart from the Flask view so the whole path can be read top to bottom; the only edges it touches
are the FHIR server (through ``gather``) and the clock (``now`` is read once, by the caller).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cds_service.cdshooks import HookRequest, drafts_to_evaluate
from cds_service.clinical.record import PatientRecord
from cds_service.config import Settings
from cds_service.engine.cards import EXT, CardSettings, build_cards
from cds_service.engine.evaluate import Evaluation, evaluate
from cds_service.engine.incomplete import incomplete_checks_card
from cds_service.engine.model import MEDICATION_RESOURCES, RuleSet
from cds_service.fhir.parse import ParseProblem, parse_resources
from cds_service.fhir.prefetch import gather
from cds_service.fhir.references import MEDICATION_KEY, resolve_medications

from .services import resource_type_of, templates_for

log = logging.getLogger("cds_service.http")


@dataclass(slots=True)
class HookOutcome:
    """The response body plus what the edge logs and stores (no PHI in any of it)."""

    body: dict[str, Any]
    cards: list[dict[str, Any]] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    skipped: list[ParseProblem] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    evaluation: Evaluation | None = None


def run_hook(request: HookRequest, ruleset: RuleSet, settings: Settings, now: datetime) -> HookOutcome:
    """Everything between a validated request and its response body.

    Raises ``PrefetchUnavailable`` (→ 412) when data is missing and there is no FHIR access.
    """
    auth = request.fhir_authorization
    gathered = gather(
        templates_for(ruleset, request.hook),
        request.prefetch,
        request.context,
        fhir_server=request.fhir_server,
        access_token=auth.access_token if auth else None,
        limits=settings.fetch_limits,
        allow_unauthenticated_fhir=settings.allow_unauthenticated_fhir,
    )
    medications = resolve_medications(
        gathered.resources,
        fhir_server=request.fhir_server,
        access_token=auth.access_token if auth else None,
        limits=settings.fetch_limits,
        allow_unauthenticated_fhir=settings.allow_unauthenticated_fhir,
    )
    missing = dict(gathered.missing)
    if medications.missing:
        missing[MEDICATION_KEY] = medications.missing
    valid, skipped = parse_resources(gathered.resources + medications.resources)
    drafts, skipped_drafts = parse_resources(
        drafts_to_evaluate(request.hook, request.draft_orders, request.selections, request.draft_urls)
    )
    skipped = skipped + skipped_drafts
    if skipped:
        log.warning("skipped %d malformed resource(s): %s", len(skipped), "; ".join(map(str, skipped[:10])))

    unavailable: dict[str, str] = {}
    for key, why in missing.items():
        for rtype in sorted(_types_of_key(key)):
            unavailable.setdefault(rtype, f"{key}: {why}")
    for problem in skipped:
        unavailable.setdefault(problem.resource_type, f"{problem.resource_type}: malformed resource(s) skipped")
    record = PatientRecord(valid, drafts=drafts, ordinal_codes=ruleset.ordinal_codes, unavailable=unavailable)
    evaluation = evaluate(ruleset, record, hook=request.hook, now=now)
    gaps = [f"{key}: {reason}" for key, reason in missing.items()]
    if skipped:
        gaps.append(f"{len(skipped)} FHIR resource(s) could not be read and were skipped")
    incomplete = incomplete_checks_card(evaluation, _unavailable_data(missing, skipped))
    cards = build_cards(
        evaluation,
        patient_id=request.patient_id,
        data_gaps=gaps,
        max_cards=settings.max_cards,
        compose=True,
        extra=[incomplete] if incomplete else [],
        settings=CardSettings(source_label=settings.source_label),
    )

    body: dict[str, Any] = {"cards": cards}
    extension: dict[str, Any] = {}
    undecided = undecided_rules(evaluation)
    if undecided:
        extension[f"{EXT}.undecided"] = undecided
    if missing:
        extension[f"{EXT}.missingData"] = [{"key": k, "reason": v} for k, v in missing.items()]
    if skipped:
        extension[f"{EXT}.skippedResources"] = [
            {"resourceType": p.resource_type, **({"id": p.resource_id} if p.resource_id else {}),
             "reason": p.message}
            for p in skipped
        ]
    if extension:
        extension[f"{EXT}.ruleSetVersion"] = ruleset.version
        body["extension"] = extension
    return HookOutcome(body, cards, missing, skipped, dict(gathered.sources), evaluation)


def undecided_rules(evaluation: Evaluation) -> list[dict[str, Any]]:
    """Rules the engine could not decide: missing values, or silent while data they read was incomplete."""
    out: list[dict[str, Any]] = []
    for result in evaluation.undecided():
        rule = result.rule
        entry: dict[str, Any] = {"rule": rule.id, "version": rule.version, "missing": list(result.missing)}
        if result.reason == "not fired on partial data":
            entry["reason"] = result.reason
        out.append(entry)
    return out


def _unavailable_data(missing: Mapping[str, str], skipped: list[ParseProblem]) -> dict[str, str]:
    """Resource type → why, as the incomplete-checks card words it (``Medication`` for unread products)."""
    out: dict[str, str] = {}
    for key, why in missing.items():
        rtype = "Medication" if key == MEDICATION_KEY else resource_type_of(key)
        out.setdefault(rtype, f"could not be retrieved ({why})")
    bad: dict[str, int] = {}
    for problem in skipped:
        bad[problem.resource_type] = bad.get(problem.resource_type, 0) + 1
    for rtype, count in bad.items():
        out.setdefault(rtype, f"{count} could not be read (malformed) and {'were' if count > 1 else 'was'} skipped")
    return out


def _types_of_key(key: str) -> frozenset[str]:
    """Resource types whose data a missing key leaves incomplete (Medications: every medication event)."""
    return MEDICATION_RESOURCES if key == MEDICATION_KEY else frozenset({resource_type_of(key)})


def card_issues(cards: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(card uuid, rule id, rule version, indicator) for the store's issue log."""
    issues = []
    for card in cards:
        rule = card.get("extension", {}).get(f"{EXT}.rule") or {}
        if card.get("uuid") and rule.get("id"):
            issues.append((card["uuid"], rule["id"], str(rule.get("version", "")), card["indicator"]))
    return issues
