"""The ONE decision function: (rule set, patient resources, draft orders, hook, context, now) → Decision.

The service, ``kbladder rules test``, ``kbladder rules explain``, ``kbladder demo`` (through the service)
and the warm-up all decide a hook call here, so they cannot disagree: which drafts a hook evaluates comes
from the hook table, data that could not be obtained makes the same rules undecided and the same gaps
appear on the same cards. Pure: no network, no clock (``now`` is passed), no Flask.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cds_service.cdshooks.hooks import HOOKS, drafts_to_evaluate
from cds_service.clinical.record import PatientRecord
from cds_service.decision.appointments import booked_sessions
from cds_service.decision.catalog import resource_type_of
from cds_service.engine.cards import EXT, CardSettings, build_cards
from cds_service.engine.evaluate import SUPPRESSED, Evaluation, evaluate
from cds_service.engine.incomplete import TOPIC as INCOMPLETE_TOPIC
from cds_service.engine.incomplete import incomplete_checks_card
from cds_service.engine.model import MEDICATION_RESOURCES, RuleSet
from cds_service.fhir.parse import ParseProblem, parse_resources
from cds_service.fhir.references import MEDICATION_KEY, ORDER_KEY

MISSING_DATA = f"{EXT}.missingData"
UNDECIDED = f"{EXT}.undecided"
SKIPPED_RESOURCES = f"{EXT}.skippedResources"
DOSE_UNKNOWN = f"{EXT}.doseUnknown"  # sentences: how many administrations have no dose anywhere, and why
RULE_SET_VERSION = f"{EXT}.ruleSetVersion"
DEFAULT_CARD_SETTINGS = CardSettings()


@dataclass(slots=True)
class Decision:
    """What one hook call decided: the evaluation (per-rule results with traces), the cards, the gaps.

    ``body`` is the CDS Hooks response body (cards plus our extension); ``missing`` maps data keys that
    could not be obtained to why, ``skipped`` lists resources that were not valid FHIR. None of it
    carries the bearer token; cards and evaluation carry patient data, so log only ids and counts.
    """

    evaluation: Evaluation
    record: PatientRecord
    cards: list[dict[str, Any]]
    body: dict[str, Any]
    gaps: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    skipped: list[ParseProblem] = field(default_factory=list)
    patient_id: str | None = None
    card_settings: CardSettings = DEFAULT_CARD_SETTINGS
    new_id: Callable[[], str] = field(default=lambda: str(uuid.uuid4()), repr=False)
    #: rule id → why its card was held back (snooze, accepted suggestion, order-select de-duplication).
    held: dict[str, str] = field(default_factory=dict)

    def cards_per_rule(self) -> list[dict[str, Any]]:
        """One card per fired rule, before composition (merging a topic, folding, the incomplete-checks card).

        What a rule test asserts on: the rule's own card. ``cards`` is what the service answers.
        """
        return build_cards(
            self.evaluation,
            patient_id=self.patient_id,
            data_gaps=self.gaps,
            settings=self.card_settings,
            new_id=self.new_id,
        )

    def card_issues(self) -> list[tuple[str, str, str, str]]:
        """(card uuid, owner, version, indicator) of EVERY card, for the store's issue log.

        The owner is the rule that leads the card; the "checks incomplete" card has no rule, so it is
        issued under its topic and the rule-set version (feedback on it is attributable, and a report's
        card totals add up to what clinicians saw).
        """
        issues = []
        for card in self.cards:
            owner = card_owner(card, self.evaluation.ruleset_version)
            if card.get("uuid") and owner is not None:
                issues.append((card["uuid"], owner[0], owner[1], card["indicator"]))
        return issues


def card_owner(card: Mapping[str, Any], ruleset_version: str) -> tuple[str, str] | None:
    """(id, version) a card is attributed to: its leading rule, or for a card no rule leads (the
    "checks incomplete" card) its topic under the rule-set version; None for a card of neither kind."""
    extension = card.get("extension") or {}
    rule = extension.get(f"{EXT}.rule") or {}
    if rule.get("id"):
        return str(rule["id"]), str(rule.get("version", ""))
    if f"{EXT}.incomplete" in extension:
        return INCOMPLETE_TOPIC, ruleset_version
    return None


def decide(
    ruleset: RuleSet,
    resources: Sequence[Any],
    *,
    hook: str,
    now: datetime,
    patient_id: str | None = None,
    drafts: Sequence[Any] = (),
    selections: Collection[str] | None = None,
    draft_urls: Sequence[str | None] = (),
    missing: Mapping[str, str] | None = None,
    card_settings: CardSettings = DEFAULT_CARD_SETTINGS,
    max_cards: int | None = None,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    hold_back: Callable[[Evaluation], dict[str, str]] | None = None,
    checked: tuple[Sequence[dict[str, Any]], Sequence[ParseProblem]] | None = None,
    trace: bool = False,
) -> Decision:
    """Decide one hook call from data already in hand.

    *resources* are the patient's FHIR resources as JSON (invalid ones are skipped and reported, their
    type counted as incomplete); *drafts* the ``context.draftOrders`` resources (appointment-book: the
    ``context.appointments`` resources, whose booked sessions are judged), of which the hook table
    picks those the hook evaluates (*selections*/*draft_urls*: see ``drafts_to_evaluate``; None selects
    every draft). *missing* maps data (prefetch keys, ``medications``) that could not be obtained to why:
    rules reading it are undecided rather than silent, and the cards say what was missing. *hold_back*
    (governance, the store behind it) names fired rules whose cards feedback suppressed: they are logged as
    suppressed, never shown. *trace*: every rule's full trace (``rules explain``); a live call needs only
    the fired rules' traces, which it always gets.
    """
    missing = dict(missing or {})
    # *checked*: the caller already split *resources* into valid ones and problems (the service does, to
    # follow references from valid resources only); checking twice cost a digest per resource per call.
    valid, skipped = (list(checked[0]), list(checked[1])) if checked is not None else parse_resources(resources)
    definition = HOOKS.get(hook)
    if definition is not None and definition.drafts == "appointments":  # the sessions being booked
        planned = booked_sessions(drafts, resources)
    else:
        planned = drafts_to_evaluate(hook, drafts, selections, draft_urls)
    chosen, skipped_drafts = parse_resources(planned)
    skipped = skipped + skipped_drafts
    unavailable: dict[str, str] = {}
    for key, why in missing.items():
        for rtype in sorted(_types_of_key(key)):
            unavailable.setdefault(rtype, f"{key}: {why}")
    for problem in skipped:
        unavailable.setdefault(problem.resource_type, f"{problem.resource_type}: malformed resource(s) skipped")
    record = PatientRecord(valid, drafts=chosen, unavailable=unavailable, **ruleset.record_options())
    evaluation = evaluate(ruleset, record, hook=hook, now=now, trace=trace)
    held = hold_back(evaluation) if hold_back is not None else {}
    for result in evaluation.results:
        if result.rule.id in held and result.shows_card:
            result.status, result.reason = SUPPRESSED, held[result.rule.id]
    gaps = [f"{key}: {reason}" for key, reason in missing.items()]
    # Administrations whose dose is known nowhere (not on them, not on their order): dose totals leave them
    # out, and the cards (or the incomplete-checks card) say how many.
    undosed = record.undosed_administrations(
        [vs for vs in ruleset.valuesets.values() if vs.substance], ruleset.valuesets.get("body-weight"), now
    )
    gaps.extend(undosed)
    if skipped:
        gaps.append(f"{len(skipped)} FHIR resource(s) could not be read and were skipped")
    patient_id = patient_id if patient_id is not None else record.patient_id
    incomplete = incomplete_checks_card(evaluation, unavailable_data(missing, skipped, undosed))
    cards = build_cards(
        evaluation,
        patient_id=patient_id,
        data_gaps=gaps,
        max_cards=max_cards,
        compose=True,
        extra=[incomplete] if incomplete else [],
        settings=card_settings,
        new_id=new_id,
    )
    body = response_body(ruleset, evaluation, cards, missing, skipped, undosed)
    return Decision(evaluation, record, cards, body, gaps, missing, skipped, patient_id, card_settings, new_id,
                    held)


def response_body(
    ruleset: RuleSet,
    evaluation: Evaluation,
    cards: list[dict[str, Any]],
    missing: Mapping[str, str],
    skipped: Sequence[ParseProblem],
    undosed: Sequence[str] = (),
) -> dict[str, Any]:
    """The CDS Hooks response: the cards, and our extension when anything was undecided or missing."""
    body: dict[str, Any] = {"cards": cards}
    extension: dict[str, Any] = {}
    undecided = undecided_rules(evaluation)
    if undecided:
        extension[UNDECIDED] = undecided
    if missing:
        extension[MISSING_DATA] = [{"key": k, "reason": v} for k, v in missing.items()]
    if undosed:
        extension[DOSE_UNKNOWN] = list(undosed)
    if skipped:
        extension[SKIPPED_RESOURCES] = [
            {"resourceType": p.resource_type, **({"id": p.resource_id} if p.resource_id else {}), "reason": p.message}
            for p in skipped
        ]
    if extension:
        extension[RULE_SET_VERSION] = ruleset.version
        body["extension"] = extension
    return body


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


def unavailable_data(
    missing: Mapping[str, str], skipped: Sequence[ParseProblem], undosed: Sequence[str] = ()
) -> dict[str, str]:
    """Resource type → why, as the incomplete-checks card words it (``Medication`` for unread products).

    Orders that administrations reference but could not be read are medication orders not retrieved;
    administrations with no dose anywhere are data the dose checks lacked, and the card says how many.
    """
    out: dict[str, str] = {}
    for key, why in missing.items():
        rtype = {MEDICATION_KEY: "Medication", ORDER_KEY: "MedicationRequest"}.get(key) or resource_type_of(key)
        out.setdefault(rtype, f"could not be retrieved ({why})")
    bad: dict[str, int] = {}
    for problem in skipped:
        bad[problem.resource_type] = bad.get(problem.resource_type, 0) + 1
    for rtype, count in bad.items():
        out.setdefault(rtype, f"{count} could not be read (malformed) and {'were' if count > 1 else 'was'} skipped")
    if undosed:
        out.setdefault("MedicationAdministration", "; ".join(undosed))
    return out


def _types_of_key(key: str) -> frozenset[str]:
    """Resource types whose data a missing key leaves incomplete (Medications: every medication event)."""
    if key == ORDER_KEY:
        return frozenset({"MedicationAdministration"})  # their dose is on the order that could not be read
    return MEDICATION_RESOURCES if key == MEDICATION_KEY else frozenset({resource_type_of(key)})
