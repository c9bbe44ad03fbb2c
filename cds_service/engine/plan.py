"""Rules compiled into a plan at load: shared conditions computed once per call, traces on demand.

The interpreted path (``evaluate_rule`` in :mod:`cds_service.engine.evaluate`) walks each rule's condition
trees and evaluates every named condition, for every rule, on every call. A plan does less for the same
answers:

* **Shared leaves.** Every building block (``count``, ``latest`` …) of every rule gets a *slot*. Two blocks
  share a slot when they are equal and read the same data the same way: the data keys they name have equal
  requirements (same value set object, resources, lookback, unit …; followed through ``body_weight``), the
  rules cut courses the same way, and — for blocks that hold FHIRPath — the rules' parameters are equal.
  Those are everything a block can read besides the call's record, ``now`` and hook (it reaches the rule
  only through the context's ``data``/``findings``/``sessions``/``incomplete``/course methods, by key), so a
  shared slot's outcome is the outcome either rule would compute. A call computes each slot at most once.
* **Traces on demand.** A live call evaluates only the tiers, strongest first, with short-circuit Kleene
  logic (``all`` stops at a false part, ``any`` at a true one), and only the named conditions the tiers
  reach. That gives the same truth for every tier, and the same missing-data reasons for every undecided
  one (an undecided ``all`` has no false part, an undecided ``any`` no true part, so every part was
  evaluated). A rule that fires is evaluated again with its full trace — every named condition, no
  short-circuit — from the slots already computed: its card needs the evidence of every true part.
  ``rules explain``, rule tests and the interpreted comparison ask for the full trace of every rule.

Pure, like the rest of the engine: the per-call state lives in a :class:`Run` the caller drops after the
call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cds_service.engine.blocks.base import Node
from cds_service.engine.blocks.logic import Combine, Ref, combine
from cds_service.engine.context import RuleContext, fhirpath_value
from cds_service.engine.fhirpath import FhirPath
from cds_service.engine.model import DataRequirement, Rule, RuleSet
from cds_service.engine.trace import Outcome, Truth

LEAF, ALL, ANY, NOT, REF = "leaf", "all", "any", "not", "ref"


@dataclass(frozen=True, slots=True)
class Step:
    """One compiled node: a leaf with its shared slot, a Kleene combinator, or a named condition."""

    op: str
    node: Any = None  # LEAF: the building block
    slot: int = -1  # LEAF: where a call keeps its outcome
    items: tuple[Step, ...] = ()
    name: str = ""  # REF: the named condition


@dataclass(frozen=True, slots=True)
class RulePlan:
    rule: Rule
    conditions: Mapping[str, Step]
    tiers: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """A rule set's compiled rules, and how many distinct leaves a call may compute."""

    rules: tuple[RulePlan, ...]
    slots: int
    leaves: int  # leaf blocks in the rule files; ``leaves - slots`` are computed once for several rules


def plan_of(ruleset: RuleSet) -> Plan:
    """The rule set's plan, compiled on first use (the loader compiles it when rules load)."""
    plan = ruleset.compiled.get("plan")
    if plan is None:
        plan = ruleset.compiled.setdefault("plan", compile_plan(ruleset))
    return plan


class Run:
    """One call's shared outcomes, by slot."""

    __slots__ = ("outcomes",)

    def __init__(self, plan: Plan) -> None:
        self.outcomes: list[Outcome | None] = [None] * plan.slots


# ------------------------------------------------------------------ compiling


def compile_plan(ruleset: RuleSet) -> Plan:
    """Compile every rule of ``ruleset``; equal leaves reading equal data share a slot."""
    slots: dict[Any, int] = {}
    count = 0  # slots so far: shared ones, and one of its own per leaf that cannot be hashed

    def slot_for(signature: Any) -> int:
        nonlocal count
        try:
            found = slots.get(signature)
        except TypeError:  # a block holding something unhashable: computed on its own
            found = None
            signature = None
        if found is None:
            found, count = count, count + 1
            if signature is not None:
                slots[signature] = found
        return found

    rules = []
    leaves = 0
    for rule in ruleset.rules:
        course = _course_signature(rule)
        params = tuple(sorted((name, repr(fhirpath_value(p.value))) for name, p in rule.parameters.items()))

        def build(node: Node, rule: Rule = rule, course: Any = course, params: Any = params) -> Step:
            nonlocal leaves
            if isinstance(node, Ref):
                return Step(REF, name=node.name)
            if isinstance(node, Combine):
                return Step(node.op, items=tuple(build(item) for item in node.items))
            leaves += 1
            keys = sorted(_data_keys(node, rule.data))
            signature = (node, tuple(_data_signature(rule, key) for key in keys), course,
                         params if _holds_fhirpath(node) else None)
            return Step(LEAF, node=node, slot=slot_for(signature))

        rules.append(RulePlan(rule, {name: build(node) for name, node in rule.conditions.items()},
                              tuple(build(tier.when) for tier in rule.tiers)))
    return Plan(tuple(rules), count, leaves)


def _walk(value: Any) -> Iterator[Any]:
    """Every value inside a block: its fields, recursively through dataclasses, tuples, lists and mappings."""
    yield value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _walk(getattr(value, f.name))
    elif isinstance(value, tuple | list | frozenset | set):
        for item in value:
            yield from _walk(item)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(key)
            yield from _walk(item)


def _data_keys(node: Node, data: Mapping[str, DataRequirement]) -> set[str]:
    """The rule's data keys a block names (any string field equal to a key: a label that happens to equal
    one only makes sharing stricter), with the body-weight keys they point at."""
    keys = {value for value in _walk(node) if isinstance(value, str) and value in data}
    pending = list(keys)
    while pending:
        weight = data[pending.pop()].body_weight
        if weight and weight in data and weight not in keys:
            keys.add(weight)
            pending.append(weight)
    return keys


def _holds_fhirpath(node: Node) -> bool:
    return any(isinstance(value, FhirPath) for value in _walk(node))


def _data_signature(rule: Rule, key: str) -> tuple[Any, ...]:
    """A data requirement as a hashable value; the value set by identity (one object per set in a rule set)."""
    data = rule.data[key]
    return tuple(id(data.valueset) if f.name == "valueset" else getattr(data, f.name)
                 for f in dataclasses.fields(data))


def _course_signature(rule: Rule) -> tuple[Any, ...]:
    """What cuts a rule's courses (anchors, windows, course-incomplete reasons read it)."""
    keys = rule.course.exposure if rule.course else tuple(k for k, d in rule.data.items() if d.is_medication)
    weights = sorted({w for k in keys if k in rule.data and (w := rule.data[k].body_weight) and w in rule.data})
    return (rule.course, tuple(_data_signature(rule, k) for k in keys if k in rule.data),
            tuple(_data_signature(rule, w) for w in weights))


# ------------------------------------------------------------------ evaluating


class RuleRun:
    """One rule's evaluation in one mode: named conditions memoised, leaves from the call's shared slots."""

    __slots__ = ("_evaluating", "ctx", "plan", "run", "trace")

    def __init__(self, plan: RulePlan, ctx: RuleContext, run: Run, *, trace: bool) -> None:
        self.plan = plan
        self.ctx = ctx
        self.run = run
        self.trace = trace
        self._evaluating: set[str] = set()

    def condition(self, name: str) -> Outcome:
        """A named condition, once (cycles are refused at load, guarded here as the interpreter does)."""
        outcomes = self.ctx.outcomes
        found = outcomes.get(name)
        if found is None:
            if name in self._evaluating:
                return Outcome(Truth.UNKNOWN, None, f"cycle through {name}")
            self._evaluating.add(name)
            found = outcomes[name] = self.step(self.plan.conditions[name])
            self._evaluating.discard(name)
        return found

    def step(self, step: Step) -> Outcome:
        op = step.op
        if op == LEAF:
            outcomes = self.run.outcomes
            found = outcomes[step.slot]
            if found is None:
                found = outcomes[step.slot] = step.node.evaluate(self.ctx)
            return found
        if op == REF:
            return self.condition(step.name)
        if self.trace or op == NOT:
            return combine(op, [self.step(item) for item in step.items])
        # Short-circuit: the first part that decides ends the walk; an undecided answer saw every part.
        stop = Truth.FALSE if op == ALL else Truth.TRUE
        parts = []
        for item in step.items:
            part = self.step(item)
            if part.truth is stop:  # no evidence: a rule that fires is traced again before its card is built
                return Outcome(stop)
            parts.append(part)
        return combine(op, parts)
