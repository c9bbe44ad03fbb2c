"""The synthetic cohort's manifest against the engine: every patient gets exactly the cards its scenario expects.

The manifest is written from each scenario's clinical intent (clinical.md §2), not computed by the engine,
so a disagreement is either a rule bug or a scenario bug — both worth a red test. Three seeds, two of them
overlaid on the Synthea backgrounds in tests/data, and two evaluation times, keep the scenarios honest.
"""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cds_service.cdshooks.hooks import HOOKS  # every hook: the manifest has an expectation for each
from cds_service.clinical.record import PatientRecord
from cds_service.decision.appointments import booked_sessions
from cds_service.engine.evaluate import evaluate
from cds_service.engine.loader import load_ruleset
from cds_service.engine.model import RuleSet
from cds_service.fhir.parse import bundle_resources, parse_resources
from cds_service.synth import generate_cohort

REPO = Path(__file__).resolve().parents[1]
BACKGROUNDS = REPO / "tests" / "data" / "synthetic-fhir-r4"


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    loaded = load_ruleset([REPO / "rules"])
    assert loaded.ruleset is not None, "\n".join(map(str, loaded.problems))
    return loaded.ruleset


def cards_for(rules: RuleSet, resources: list[dict], drafts: list[dict], hook: str, now: datetime) -> set[str]:
    valid, problems = parse_resources(resources)
    assert not problems, problems
    if hook == "order-select":
        drafts = drafts[:1]  # the demo and the manifest select the first draft order
    if HOOKS[hook].drafts == "appointments":
        drafts = booked_sessions(drafts, resources)  # the sessions the appointments book
    record = PatientRecord(valid, drafts=drafts if HOOKS[hook].plans_exposure else [], **rules.record_options())
    return {r.rule.id for r in evaluate(rules, record, hook=hook, now=now).shown()}


@pytest.mark.parametrize(
    ("seed", "now", "overlay"),
    [
        (1, None, False),
        (7, datetime(2026, 9, 15, 14, 30, tzinfo=UTC), True),
        (2026, datetime(2027, 1, 3, 8, 0, tzinfo=UTC), True),
    ],
)
def test_every_patient_gets_the_cards_its_scenario_expects(rules: RuleSet, seed: int, now: datetime | None,
                                                           overlay: bool) -> None:
    cohort = generate_cohort(seed, now, backgrounds=BACKGROUNDS if overlay else None)
    assert len(cohort.patients) >= 40
    overlaid = [p for p in cohort.patients if p.background]
    if overlay:  # the overlay must really add background records, or the case tests nothing more than seed 1
        assert len(overlaid) >= 10, f"only {len(overlaid)} patients got a background"
        assert all(len(bundle_resources(p.bundle)) > 20 for p in overlaid)
    else:
        assert not overlaid
    mismatches = []
    for patient in cohort.patients:
        resources = bundle_resources(patient.bundle)
        for hook in HOOKS:
            carried = patient.context_resources(hook)
            if HOOKS[hook].plans_exposure and not carried:
                got: set[str] = set()  # the EHR would not call: nothing is being ordered or booked
            else:
                got = cards_for(rules, resources, carried, hook, cohort.now)
            expected = set(patient.expected[hook])
            if got != expected:
                mismatches.append(f"{patient.id} {hook}: expected {sorted(expected)}, got {sorted(got)}")
    assert not mismatches, "\n".join(mismatches)


def test_the_cohort_names_only_existing_rules_and_reports_rules_without_a_scenario(rules: RuleSet) -> None:
    """A new rule needs no Python: a rule without a cohort scenario is reported (a warning in the test
    summary), never a failure; a scenario expecting a rule that no longer exists is a failure."""
    cohort = generate_cohort(1)
    expected = {rule for patient in cohort.patients for hook in HOOKS for rule in patient.expected[hook]}
    ids = {rule.id for rule in rules.rules}
    assert expected <= ids, f"cohort expects rules that do not exist: {sorted(expected - ids)}"
    uncovered = sorted(ids - expected)
    if uncovered:
        warnings.warn(f"rules without a cohort scenario (covered by their rule tests only): {uncovered}",
                      stacklevel=1)


def test_a_missing_background_folder_is_an_error(tmp_path: Path) -> None:
    """An overlay from a folder that is absent or holds no bundle fails loudly instead of overlaying nothing."""
    with pytest.raises(FileNotFoundError):
        generate_cohort(1, backgrounds=tmp_path / "absent")
    with pytest.raises(ValueError, match="no Synthea bundle"):
        generate_cohort(1, backgrounds=tmp_path)
