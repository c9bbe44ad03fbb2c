"""Fewer cards, no repetition: what a response shows after every rule has drafted its card.

One patient got six cards, three of them critical and each saying "urgent urology review". So:
one card per clinical topic (the strongest; findings on the same topic pointing the same way are
listed in it, with their evidence); a suggestion offered once per response (the strongest card
keeps it); at most ``max_cards`` cards, the rest folded into the strongest card's detail. Every
rule that contributed is still named with its version, in the card's footer and extension.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from cds_service.engine.cards import CardDraft, merge_rows
from cds_service.engine.model import SEVERITY

DEFAULT_MAX_CARDS = 3


def compose_cards(drafts: Sequence[CardDraft], *, max_cards: int | None = DEFAULT_MAX_CARDS) -> list[CardDraft]:
    """Merge by topic, de-duplicate suggestions, fold beyond ``max_cards``; strongest first."""
    ordered = sorted(drafts, key=lambda d: -SEVERITY[d.indicator])  # stable: rule order within a tier
    by_topic: dict[str, CardDraft] = {}
    for draft in ordered:
        lead = by_topic.get(draft.topic)
        if lead is None:
            by_topic[draft.topic] = draft
        else:
            merge_into(lead, draft)
    cards = list(by_topic.values())
    limit = max_cards if max_cards is not None and max_cards > 0 else len(cards)
    keep, rest = cards[:limit], cards[limit:]
    offered: set[str] = set()
    for card in keep:
        card.suggestions = [s for s in card.suggestions if _first_offer(s, offered)]
    for card in rest:
        fold_into(keep[0], card, offered)
    return keep


def merge_into(lead: CardDraft, other: CardDraft) -> None:
    """``other`` (same topic, not stronger) becomes a line of ``lead`` with its evidence and actions."""
    lead.also.append(line_of(other))
    lead.also.extend(other.also)
    lead.rows = merge_rows([*lead.rows, *other.rows])
    lead.sessions = {**other.sessions, **lead.sessions}
    _absorb(lead, other)


def fold_into(lead: CardDraft, other: CardDraft, offered: set[str]) -> None:
    """A card over the limit: its summary (and what it merged) becomes a line of the strongest card."""
    lead.folded.append(line_of(other))
    lead.folded.extend(other.also)
    lead.folded.extend(other.folded)
    lead.suggestions.extend(s for s in other.suggestions if _first_offer(s, offered))
    _absorb(lead, other, suggestions=False)


def _absorb(lead: CardDraft, other: CardDraft, *, suggestions: bool = True) -> None:
    lead.rules.extend(other.rules)
    lead.gaps = list(dict.fromkeys([*lead.gaps, *other.gaps]))
    if suggestions:
        lead.suggestions.extend(other.suggestions)
    codes = {r["code"] for r in lead.override_reasons}
    lead.override_reasons.extend(r for r in other.override_reasons if r["code"] not in codes)
    urls = {link["url"] for link in lead.links}
    lead.links.extend(link for link in other.links if link["url"] not in urls)
    lead.references.extend(other.references)
    lead.undecided.extend(other.undecided)
    for key, value in other.extension.items():
        lead.extension.setdefault(key, value)


def line_of(draft: CardDraft) -> str:
    """"<summary> (KB-01 v1.2.0, warning)" — a merged or folded card in one line."""
    names = ", ".join(f"{r['id']} v{r['version']}" for r in draft.rules[:1])
    return f"{draft.summary} ({names}, {draft.indicator})" if names else f"{draft.summary} ({draft.indicator})"


def suggestion_key(suggestion: dict[str, Any]) -> list[str]:
    """What makes two suggestions the same: the label, and each action (type + what it creates or touches)."""
    keys = [f"label:{suggestion.get('label', '').strip().casefold()}"]
    actions = suggestion.get("actions") or []
    if actions:
        keys.append("actions:" + json.dumps([_action_key(a) for a in actions], sort_keys=True))
    return keys


def _action_key(action: dict[str, Any]) -> Any:
    if action.get("type") == "delete":
        return ["delete", action.get("resourceId")]
    resource = dict(action.get("resource") or {})
    if action.get("type") == "update":
        return ["update", resource.get("resourceType"), resource.get("id")]
    return ["create", resource.get("resourceType"), resource.get("code")]


def _first_offer(suggestion: dict[str, Any], offered: set[str]) -> bool:
    """True the first time a suggestion (by label or by identical actions) is offered in a response."""
    keys = suggestion_key(suggestion)
    if any(k in offered for k in keys):
        return False
    offered.update(keys)
    return True
