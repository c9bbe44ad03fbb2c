"""What the decision log records for one hook call: one entry per rule that ran, PHI-free.

Pure: built from the engine's Evaluation and the cards actually sent, plus the caller's identity as
keyed hashes. Patient, user, draft orders and evidence references only ever appear as HMACs under the
log key, so the log can be kept for a year and shared with a committee without exposing anybody.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cds_service.decision.decide import card_owner
from cds_service.engine.cards import EXT, evidence_rows
from cds_service.engine.evaluate import FIRED, NOT_FIRED, SUPPRESSED, UNDECIDED, Evaluation, RuleResult
from cds_service.engine.incomplete import TOPIC as INCOMPLETE_TOPIC

__all__ = [
    "LIVE",
    "SHADOW",
    "CallInfo",
    "CallLog",
    "DecisionEntry",
    "evidence_hashes",
    "keyed_hash",
    "log_entries",
]

LIVE, SHADOW = "live", "shadow"
#: Outcome names in the log (the engine's "not fired" has a space; the log's names are identifiers).
OUTCOMES = ("fired", "not_fired", "undecided", "suppressed", "silent")


_REFERENCE = re.compile(r"\b([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}")
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ][0-9:.]+(?:Z|[+-]\d{2}:\d{2})?)?")


def scrub(text: str) -> str:
    """Missing-data notes without resource ids or dates (they could point at a person): kinds of data only."""
    return _DATE.sub("<date>", _REFERENCE.sub(r"\1", text))


def keyed_hash(key: bytes, value: str) -> str:
    """HMAC-SHA256 of *value* under the log key, shortened: stable across workers sharing the key,
    not reversible without it."""
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class CallInfo:
    """Who called about whom, already hashed (no raw identifier leaves the edge)."""

    service_id: str
    hook: str
    hook_instance: str
    now: datetime
    patient_hash: str
    user_hash: str | None = None
    issuer: str | None = None
    tenant: str | None = None
    drafts: tuple[str, ...] = ()  # keyed hashes of the draft orders judged


@dataclass(frozen=True, slots=True)
class DecisionEntry:
    """One rule's outcome on one call."""

    rule_set: str
    rule_set_version: str
    rule_id: str
    rule_version: str
    outcome: str
    indicator: str | None = None
    card_uuid: str | None = None
    detail: str | None = None
    missing: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()

    def row(self, call: CallInfo) -> dict[str, Any]:
        """The decision_log row (column → value)."""
        return {
            "logged_at": call.now, "service_id": call.service_id, "hook": call.hook,
            "hook_instance": call.hook_instance, "rule_set": self.rule_set,
            "rule_set_version": self.rule_set_version, "rule_id": self.rule_id, "rule_version": self.rule_version,
            "outcome": self.outcome, "indicator": self.indicator, "card_uuid": self.card_uuid,
            "detail": self.detail, "missing": json.dumps(list(self.missing)) if self.missing else None,
            "issuer": call.issuer, "tenant": call.tenant, "patient_hash": call.patient_hash,
            "user_hash": call.user_hash, "drafts": json.dumps(list(call.drafts)) if call.drafts else None,
            "evidence": json.dumps(list(self.evidence)) if self.evidence else None,
        }


@dataclass(frozen=True, slots=True)
class CallLog:
    """Everything one hook call writes: its decision entries and the cards it issued."""

    call: CallInfo
    entries: tuple[DecisionEntry, ...]
    #: (card uuid, rule id, rule version, indicator) for the card issue log (feedback attribution).
    cards: tuple[tuple[str, str, str, str], ...] = field(default=())


def evidence_hashes(key: bytes, result: RuleResult) -> tuple[str, ...]:
    """Keyed hashes of the evidence a fired rule showed (resource reference + item): a new resource is new evidence."""
    hashes = {
        keyed_hash(key, f"{row.ref}|{row.item}")
        for row in evidence_rows(result)
    }
    return tuple(sorted(hashes))


def card_uuids(cards: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """rule id → uuid of the card that rule leads (a rule merged or folded into another card leads none)."""
    out: dict[str, str] = {}
    for card in cards:
        rule = (card.get("extension") or {}).get(f"{EXT}.rule") or {}
        if rule.get("id") and card.get("uuid"):
            out.setdefault(str(rule["id"]), str(card["uuid"]))
    return out


def incomplete_entries(evaluation: Evaluation, cards: Sequence[Mapping[str, Any]]) -> list[DecisionEntry]:
    """The "checks incomplete" card, logged under its topic: no rule leads it, yet clinicians saw it."""
    entries = []
    for card in cards:
        owner = card_owner(card, evaluation.ruleset_version)
        if owner is None or owner[0] != INCOMPLETE_TOPIC or not card.get("uuid"):
            continue
        checks = (card.get("extension") or {}).get(f"{EXT}.incomplete") or []
        missing = tuple(dict.fromkeys(scrub(str(m)) for check in checks for m in check.get("missing", ())))
        entries.append(DecisionEntry(
            rule_set=LIVE, rule_set_version=evaluation.ruleset_version, rule_id=owner[0], rule_version=owner[1],
            outcome="fired", indicator=str(card.get("indicator") or "info"), card_uuid=str(card["uuid"]),
            detail="rules undecided: " + ", ".join(str(c.get("id")) for c in checks), missing=missing))
    return entries


def log_entries(
    evaluation: Evaluation,
    cards: Sequence[Mapping[str, Any]],
    *,
    key: bytes,
    rule_set: str = LIVE,
    suppressed: Mapping[str, str] | None = None,
) -> tuple[DecisionEntry, ...]:
    """One entry per rule that ran on this hook (rules for other hooks and retired rules are not logged).

    *suppressed* maps rule id → why a snooze or de-duplication held its card back.
    """
    suppressed = suppressed or {}
    uuids = card_uuids(cards)
    entries: list[DecisionEntry] = []
    for result in evaluation.results:
        rule = result.rule
        if result.status not in (FIRED, NOT_FIRED, UNDECIDED, SUPPRESSED):
            continue
        indicator = result.fired.indicator if result.fired else None
        common: dict[str, Any] = {"rule_set": rule_set, "rule_set_version": evaluation.ruleset_version,
                                  "rule_id": rule.id, "rule_version": rule.version, "indicator": indicator,
                                  "missing": tuple(dict.fromkeys(scrub(m) for m in result.missing))}
        if result.status == FIRED:
            evidence = evidence_hashes(key, result)
            if rule.status == "silent":
                entry = DecisionEntry(outcome="silent", detail="status silent: evaluated, never shown",
                                      evidence=evidence, **common)
            elif rule.id in suppressed:
                entry = DecisionEntry(outcome="suppressed", detail=suppressed[rule.id], evidence=evidence, **common)
            elif rule_set != LIVE:
                entry = DecisionEntry(outcome="fired", detail="shadow rule set: never shown", evidence=evidence,
                                      **common)
            else:
                uuid = uuids.get(rule.id)
                entry = DecisionEntry(outcome="fired", card_uuid=uuid, evidence=evidence,
                                      detail=None if uuid else "fired, not shown: card limit or folded", **common)
        elif result.status == SUPPRESSED:
            entry = DecisionEntry(outcome="suppressed", detail=result.reason, **common)
        elif result.status == UNDECIDED:
            entry = DecisionEntry(outcome="undecided", detail=result.reason, **common)
        else:
            entry = DecisionEntry(outcome="not_fired", **common)
        entries.append(entry)
    if rule_set == LIVE:
        entries.extend(incomplete_entries(evaluation, cards))
    return tuple(entries)
