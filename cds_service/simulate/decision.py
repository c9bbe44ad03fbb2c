"""The one seam between the back-test and the service's decision path.

A back-test is only worth something if it decides exactly as the live service would: same parsing, same
patient record, same engine, same composed cards. So this adapter only calls the decision layer's
``decide()`` — the function the service calls after gathering a hook's data — and keeps what the summary
needs. ``tests/test_simulate.py`` holds it to the live service's cards over HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cds_service.decision import decide as decide_call
from cds_service.decision.decide import undecided_rules
from cds_service.engine.cards import CardSettings
from cds_service.engine.evaluate import Evaluation
from cds_service.engine.model import RuleSet

MAX_CARDS = 10  # the service's default (Settings.max_cards)


@dataclass(slots=True)
class Verdict:
    """What the service would have answered: its cards, its undecided rules, and the engine's results."""

    evaluation: Evaluation
    cards: list[dict[str, Any]]
    undecided: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0


def decide(ruleset: RuleSet, resources: Sequence[Mapping[str, Any]], *, hook: str, now: datetime,
           drafts: Sequence[Mapping[str, Any]] = (), patient_id: str | None = None,
           max_cards: int = MAX_CARDS, card_settings: CardSettings | None = None,
           missing: Mapping[str, str] | None = None) -> Verdict:
    """Decide one hook call from the data the EHR would have had (``missing``: data keys — prefetch keys,
    ``medication`` — that could not be obtained, key → why; an export is complete, a FHIR source may not be)."""
    decision = decide_call(ruleset, resources, hook=hook, now=now, patient_id=patient_id, drafts=drafts,
                           missing=missing, max_cards=max_cards, card_settings=card_settings or CardSettings())
    return Verdict(decision.evaluation, decision.cards, undecided_rules(decision.evaluation), len(decision.skipped))
