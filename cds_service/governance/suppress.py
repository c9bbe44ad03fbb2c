"""Suppression learnt from feedback: which fired rules to hold back on this call, and why. Pure.

The store lookups (snoozes for this patient, cards shown at order-select) happen at the edge; this module
only decides. Three reasons to hold a card back:

- an override with a reason snoozed the rule for the patient (days per reason in the rule file,
  site-overridable; default 30 for info/warning, 7 for critical);
- an accepted suggestion ("order a urinalysis") holds the card until the result is due;
- the same card was shown at order-select for the same patient, user and draft within the window.

A snooze never outlives new evidence (a finding or exposure the clinician did not see) nor a rising
indicator: either brings the card back at once, whatever its indicator.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cds_service.engine.model import SEVERITY, Rule

__all__ = [
    "DEFAULT_RESULT_DUE_DAYS",
    "DEFAULT_SNOOZE_DAYS",
    "Fired",
    "ShownBefore",
    "SnoozeView",
    "accepted_until",
    "hold_back",
    "override_until",
]

DEFAULT_SNOOZE_DAYS = {"info": 30, "warning": 30, "critical": 7}
DEFAULT_RESULT_DUE_DAYS = 7


@dataclass(frozen=True, slots=True)
class Fired:
    """A rule that fired on this call, with what its card would show."""

    rule_id: str
    indicator: str
    evidence: frozenset[str]


@dataclass(frozen=True, slots=True)
class SnoozeView:
    """An active snooze as the decision needs it."""

    rule_id: str
    kind: str  # "overridden" | "accepted"
    reason_code: str
    indicator: str
    evidence: frozenset[str]
    until: datetime


@dataclass(frozen=True, slots=True)
class ShownBefore:
    """A card shown at order-select for this patient and user (drafts as keyed hashes)."""

    rule_id: str
    indicator: str | None
    drafts: frozenset[str]


def override_until(rule: Rule, indicator: str, reason_code: str, at: datetime) -> datetime | None:
    """End of the snooze an override with *reason_code* earns, or None when it earns none."""
    reason = next((r for r in rule.card.override_reasons if r.code == reason_code), None)
    days = reason.snooze_days if reason is not None and reason.snooze_days is not None else None
    if days is None:
        days = DEFAULT_SNOOZE_DAYS.get(indicator, 0) if reason_code else 0
    return at + timedelta(days=days) if days > 0 else None


def accepted_until(rule: Rule, at: datetime) -> datetime:
    """End of the hold an accepted suggestion earns: the longest result-due time of the rule's suggestions."""
    days = [s.result_due_days for s in rule.card.suggestions if s is not None and s.result_due_days is not None]
    return at + timedelta(days=max(days) if days else DEFAULT_RESULT_DUE_DAYS)


def _snooze_holds(fired: Fired, snooze: SnoozeView) -> str | None:
    if SEVERITY.get(fired.indicator, 0) > SEVERITY.get(snooze.indicator, 0):
        return None  # the indicator rose: the clinician has not seen this
    if not fired.evidence <= snooze.evidence:
        return None  # new evidence: a finding or exposure not on the card they dismissed
    until = snooze.until.isoformat().replace("+00:00", "Z")
    if snooze.kind == "accepted":
        return f"suggestion accepted; held until its result is due ({until})"
    reason = f" ({snooze.reason_code})" if snooze.reason_code else ""
    return f"snoozed after override{reason} until {until}; no new evidence, indicator not higher"


def hold_back(
    fired: Sequence[Fired],
    snoozes: Iterable[SnoozeView],
    shown_at_select: Iterable[ShownBefore] = (),
    *,
    hook: str,
    drafts: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """rule id → why its card is held back on this call (absent: show it)."""
    by_rule: dict[str, list[SnoozeView]] = {}
    for snooze in snoozes:
        by_rule.setdefault(snooze.rule_id, []).append(snooze)
    shown: dict[str, list[ShownBefore]] = {}
    if hook == "order-sign":
        for before in shown_at_select:
            shown.setdefault(before.rule_id, []).append(before)
    held: dict[str, str] = {}
    for rule in fired:
        why = next(filter(None, (_snooze_holds(rule, s) for s in by_rule.get(rule.rule_id, ()))), None)
        if why is None:
            why = next((
                "shown at order-select for the same patient, user and draft"
                for before in shown.get(rule.rule_id, ())
                if before.drafts & drafts
                and SEVERITY.get(rule.indicator, 0) <= SEVERITY.get(before.indicator or "", 0)
            ), None)
        if why is not None:
            held[rule.rule_id] = why
    return held
