"""The one seam between the back-test and the service's decision path.

A back-test is only worth something if it decides exactly as the live service would: same parsing, same
patient record, same engine, same cards. This adapter is the only place the back-test calls into that path;
it takes what a hook call has after prefetch (the patient's resources, the drafts, the time) and returns
the cards plus what could not be decided. It follows ``http/pipeline.run_hook`` step for step after the
data is gathered (until the decision layer's ``decide()`` replaces both); ``tests/test_simulate.py`` holds
it to the live service's cards over HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cds_service.cdshooks.hooks import drafts_to_evaluate
from cds_service.clinical.record import PatientRecord
from cds_service.engine.cards import CardSettings, build_cards
from cds_service.engine.evaluate import Evaluation, evaluate
from cds_service.engine.incomplete import incomplete_checks_card
from cds_service.engine.model import RuleSet
from cds_service.fhir.parse import parse_resources
from cds_service.http.pipeline import _types_of_key, _unavailable_data, undecided_rules

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
    missing = dict(missing or {})
    valid, skipped = parse_resources(resources)
    valid_drafts, skipped_drafts = parse_resources(drafts_to_evaluate(hook, drafts))
    skipped = skipped + skipped_drafts
    incomplete: dict[str, str] = {}
    for key, why in missing.items():
        for rtype in sorted(_types_of_key(key)):
            incomplete.setdefault(rtype, f"{key}: {why}")
    for problem in skipped:
        incomplete.setdefault(problem.resource_type, f"{problem.resource_type}: malformed resource(s) skipped")
    record = PatientRecord(valid, drafts=valid_drafts, ordinal_codes=ruleset.ordinal_codes, unavailable=incomplete)
    evaluation = evaluate(ruleset, record, hook=hook, now=now)
    gaps = [f"{key}: {why}" for key, why in missing.items()]
    if skipped:
        gaps.append(f"{len(skipped)} FHIR resource(s) could not be read and were skipped")
    checks = incomplete_checks_card(evaluation, _unavailable_data(missing, skipped))
    cards = build_cards(evaluation, patient_id=patient_id, data_gaps=gaps, max_cards=max_cards, compose=True,
                        extra=[checks] if checks else [], settings=card_settings or CardSettings())
    return Verdict(evaluation, cards, undecided_rules(evaluation), len(skipped))
