"""Compiled plans give the interpreter's answers (issue 15).

The interpreter (``evaluate_interpreted``: every named condition of every rule, walked per call) is the
reference; the plan shares equal leaves across rules and short-circuits on live calls. A randomised
comparison drives both with patients from the synthetic cohort's own scenario builders, perturbed: resources
dropped, ``now`` moved, data made unavailable, every hook. Cards (uuids fixed), every rule's status, reason,
indicator and missing data must be equal; with ``trace`` the whole trace too.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.cdshooks.hooks import HOOKS
from cds_service.clinical.record import PatientRecord
from cds_service.decision.catalog import PATIENT_KEY, build_templates
from cds_service.decision.decide import decide
from cds_service.engine.evaluate import evaluate, evaluate_interpreted
from cds_service.engine.loader import load_ruleset
from cds_service.engine.model import RuleSet
from cds_service.engine.plan import LEAF, Step, plan_of
from cds_service.fhir.references import MEDICATION_KEY, ORDER_KEY
from cds_service.synth import DEFAULT_NOW
from cds_service.synth.builder import PatientBuilder
from cds_service.synth.cohort import context_resources
from cds_service.synth.scenarios import SCENARIOS

RULES = Path(__file__).resolve().parent.parent / "rules"
# the module, not the function the package exports under the same name
decide_module = importlib.import_module("cds_service.decision.decide")
# What a hook call can fail to obtain: the prefetch keys of the bundled rules, referenced Medications, orders.
UNAVAILABLE = ("allergyIntolerance", "condition", "diagnosticReport", "medicationAdministration",
               "medicationRequest", "medicationStatement", "observation", MEDICATION_KEY, ORDER_KEY)


@functools.cache
def bundled() -> RuleSet:
    loaded = load_ruleset([RULES])
    assert loaded.ruleset is not None, loaded.problems[:3]
    return loaded.ruleset


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return bundled()


def _leaves(step: Step) -> Iterator[Step]:
    if step.op == LEAF:
        yield step
    for item in step.items:
        yield from _leaves(item)


def test_equal_leaves_reading_equal_data_share_a_slot(rules: RuleSet) -> None:
    plan = plan_of(rules)
    slots = [leaf.slot for rule in plan.rules for step in (*rule.conditions.values(), *rule.tiers)
             for leaf in _leaves(step)]
    assert len(slots) == plan.leaves
    assert plan.slots == len(set(slots)) < plan.leaves  # the bundled rules repeat conditions across rules
    by_slot: dict[int, list[Any]] = {}
    for rule in plan.rules:
        for step in (*rule.conditions.values(), *rule.tiers):
            for leaf in _leaves(step):
                by_slot.setdefault(leaf.slot, []).append(leaf.node)
    assert all(node == nodes[0] for nodes in by_slot.values() for node in nodes)  # one block per slot


def test_a_leaf_reading_differently_defined_data_gets_its_own_slot(rules: RuleSet) -> None:
    """Two rules may name the same data key with different lookbacks: equal blocks, different answers.
    An unchanged copy of a rule shares every slot with it; a copy with one lookback doubled shares none
    of the slots of the blocks reading that data."""
    import dataclasses

    def slots_reading(rule_plan: Any, key: str) -> set[int]:
        return {leaf.slot for step in rule_plan.conditions.values() for leaf in _leaves(step)
                if getattr(leaf.node, "data", None) == key}

    plan = plan_of(rules)
    rule, key = next((rp.rule, k) for rp in plan.rules for k, d in rp.rule.data.items()
                     if not d.is_medication and isinstance(d.lookback, timedelta) and slots_reading(rp, k))
    data = rule.data[key]
    copy = dataclasses.replace(rule, id="KB-COPY")
    twin = dataclasses.replace(rule, id="KB-TWIN", data={**rule.data, key: dataclasses.replace(
        data, lookback=data.lookback * 2)})
    both = plan_of(dataclasses.replace(rules, rules=(*rules.rules, copy, twin)))
    original = both.rules[rules.rules.index(rule)]
    assert slots_reading(both.rules[-2], key) == slots_reading(original, key)
    assert not slots_reading(original, key) & slots_reading(both.rules[-1], key)


def _patient(index: int, seed: int) -> PatientBuilder:
    name, build = SCENARIOS[index]
    builder = PatientBuilder(f"p{index}", DEFAULT_NOW, random.Random(f"compiled/{seed}/{name}"))
    build(builder)
    return builder


def _counter() -> Any:
    numbers = itertools.count()
    return lambda: f"uuid-{next(numbers)}"


def _decide(rules: RuleSet, resources: list[dict[str, Any]], hook: str, drafts: list[dict[str, Any]],
            when: Any, missing: dict[str, str], *, trace: bool) -> Any:
    return decide(rules, resources, hook=hook, now=when, drafts=drafts, missing=missing, new_id=_counter(),
                  trace=trace)


def _verdicts(decision: Any) -> list[tuple[Any, ...]]:
    return [(r.rule.id, r.status, r.reason, r.fired.indicator if r.fired else None, tuple(r.missing))
            for r in decision.evaluation.results]


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, len(SCENARIOS) - 1), seed=st.integers(0, 3),
       hook=st.sampled_from(sorted(HOOKS)), drop=st.lists(st.integers(0, 400), max_size=6),
       shift=st.integers(-120, 30), unavailable=st.lists(st.sampled_from(UNAVAILABLE), max_size=3, unique=True))
def test_compiled_and_interpreted_decide_the_same(monkeypatch: pytest.MonkeyPatch, index: int, seed: int, hook: str,
                                                  drop: list[int], shift: int, unavailable: list[str]) -> None:
    rules = bundled()
    builder = _patient(index, seed)
    resources = [r for i, r in enumerate(builder.resources) if i == 0 or i not in set(drop)]
    drafts = context_resources(hook, builder.drafts, builder.appointments)
    when = DEFAULT_NOW + timedelta(days=shift)
    missing = {key: "HTTP 503" for key in unavailable}

    live = _decide(rules, resources, hook, drafts, when, missing, trace=False)
    traced = _decide(rules, resources, hook, drafts, when, missing, trace=True)
    with monkeypatch.context() as patched:
        patched.setattr(decide_module, "evaluate",
                        lambda ruleset, record, *, hook, now, trace=True: evaluate_interpreted(
                            ruleset, record, hook=hook, now=now))
        reference = _decide(rules, resources, hook, drafts, when, missing, trace=True)

    assert live.cards == reference.cards
    assert traced.cards == reference.cards
    assert _verdicts(live) == _verdicts(reference)
    assert [r.as_json() for r in traced.evaluation.results] == [r.as_json() for r in reference.evaluation.results]
    for fast, full in zip(live.evaluation.results, reference.evaluation.results, strict=True):
        if fast.status in ("fired", "suppressed"):  # a fired rule is always traced: its card shows the evidence
            assert fast.as_json() == full.as_json()


def test_the_prefetch_keys_are_those_of_the_bundled_rules(rules: RuleSet) -> None:
    keys = {key for hook in HOOKS for key in build_templates(rules, hook)} - {PATIENT_KEY}
    assert keys == set(UNAVAILABLE) - {MEDICATION_KEY, ORDER_KEY}


def test_every_cohort_patient_on_every_hook(rules: RuleSet) -> None:
    """The whole cohort as built (no perturbation), every hook: plan and interpreter agree rule by rule."""
    for index in range(len(SCENARIOS)):
        builder = _patient(index, 0)
        for hook in sorted(HOOKS):
            drafts = context_resources(hook, builder.drafts, builder.appointments)
            record = PatientRecord(builder.resources, drafts=drafts, **rules.record_options())
            compiled = evaluate(rules, record, hook=hook, now=DEFAULT_NOW)
            record = PatientRecord(builder.resources, drafts=drafts, **rules.record_options())
            interpreted = evaluate_interpreted(rules, record, hook=hook, now=DEFAULT_NOW)
            assert [r.as_json() for r in compiled.results] == [r.as_json() for r in interpreted.results], \
                (SCENARIOS[index][0], hook)
