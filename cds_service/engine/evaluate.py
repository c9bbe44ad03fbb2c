"""Evaluate a rule set for one patient: (rules, record, hook, now) → results with traces.

Pure: no network, no clock, no global state. Every rule gets a result — fired or not,
skipped for its hook, undecided for missing data — each with the value of every
condition, so "why didn't it fire?" always has an answer. Precedence (which cards drop
when a stronger card fires) comes from the rule files, never from code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cds_service.clinical.record import PatientRecord
from cds_service.clinical.timeutil import as_utc
from cds_service.engine.context import RuleContext
from cds_service.engine.model import SEVERITY, Rule, RuleSet, Tier
from cds_service.engine.plan import RulePlan, RuleRun, Run, plan_of
from cds_service.engine.trace import Outcome, Truth

FIRED, NOT_FIRED, UNDECIDED, SKIPPED, SUPPRESSED = "fired", "not fired", "undecided", "skipped", "suppressed"


@dataclass(slots=True)
class TierTrace:
    indicator: str
    outcome: Outcome


@dataclass(slots=True)
class RuleResult:
    """One rule's verdict with its full trace."""

    rule: Rule
    status: str
    reason: str = ""
    conditions: dict[str, Outcome] = field(default_factory=dict)
    tiers: list[TierTrace] = field(default_factory=list)
    fired: Tier | None = None
    missing: list[str] = field(default_factory=list)
    context: RuleContext | None = None

    @property
    def shows_card(self) -> bool:
        """A fired, active, unsuppressed rule shows a card; a silent rule only logs."""
        return self.status == FIRED and self.rule.status == "active"

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"rule": self.rule.id, "version": self.rule.version, "status": self.status}
        if self.fired is not None:
            data["indicator"] = self.fired.indicator
        if self.reason:
            data["reason"] = self.reason
        if self.conditions:
            data["conditions"] = {name: o.as_json() for name, o in self.conditions.items()}
        if self.missing:
            data["missing"] = list(self.missing)
        return data


@dataclass(slots=True)
class Evaluation:
    hook: str
    now: datetime
    ruleset_version: str
    results: list[RuleResult]

    def shown(self) -> list[RuleResult]:
        """Results that become cards, strongest first (critical → warning → info)."""
        shown = [r for r in self.results if r.shows_card]
        return sorted(shown, key=lambda r: -SEVERITY[r.fired.indicator] if r.fired else 0)

    def undecided(self) -> list[RuleResult]:
        return [r for r in self.results if r.status == UNDECIDED]


def evaluate_rule(rule: Rule, record: PatientRecord, hook: str, now: datetime) -> RuleResult:
    """Evaluate one rule by walking its condition trees: every named condition (for the trace), then the
    tiers strongest first. The reference semantics: compiled plans (``evaluate``) must give the same answers."""
    skipped = _skipped(rule, hook)
    if skipped is not None:
        return skipped
    ctx = RuleContext(rule, record, now, hook)
    for name in rule.conditions:
        ctx.condition(name)
    return _verdict(rule, record, ctx, [lambda tier=tier: tier.when.evaluate(ctx) for tier in rule.tiers])


def run_rule(plan: RulePlan, record: PatientRecord, hook: str, now: datetime, run: Run, *,
             trace: bool) -> RuleResult:
    """Evaluate one rule from its compiled plan; ``trace``: every named condition and every part, as
    ``evaluate_rule`` does. Without it only what decides the tiers is evaluated, and a rule that fires is
    traced (its card shows the evidence of every true part)."""
    rule = plan.rule
    skipped = _skipped(rule, hook)
    if skipped is not None:
        return skipped
    ctx = RuleContext(rule, record, now, hook)
    if not trace:
        fast = RuleRun(plan, ctx, run, trace=False)
        result = _verdict(rule, record, ctx, [lambda tier=tier: fast.step(tier) for tier in plan.tiers])
        if result.status != FIRED:
            return result
        ctx.outcomes = {}  # short-circuit outcomes are not a trace; the call's slots already hold the leaves
    steps = RuleRun(plan, ctx, run, trace=True)
    for name in rule.conditions:
        steps.condition(name)
    return _verdict(rule, record, ctx, [lambda tier=tier: steps.step(tier) for tier in plan.tiers])


def _skipped(rule: Rule, hook: str) -> RuleResult | None:
    if rule.status == "retired":
        return RuleResult(rule, SKIPPED, "retired")
    if hook not in rule.hooks:
        return RuleResult(rule, SKIPPED, f"does not run on {hook} (runs on {', '.join(rule.hooks)})")
    return None


def _verdict(rule: Rule, record: PatientRecord, ctx: RuleContext,
             tiers: list[Callable[[], Outcome]]) -> RuleResult:
    """Tiers strongest first: the first that holds fires; else undecided when missing data could change it."""
    result = RuleResult(rule, NOT_FIRED, conditions=ctx.outcomes, context=ctx)
    for tier, outcome_of in zip(rule.tiers, tiers, strict=True):
        outcome = outcome_of()
        result.tiers.append(TierTrace(tier.indicator, outcome))
        if outcome.truth is Truth.TRUE:
            result.status, result.fired = FIRED, tier
            result.reason = f"tier {tier.indicator} holds"
            # A stronger tier that could not be decided might have applied: the card says what was missing.
            stronger = [t for t in result.tiers[:-1] if t.outcome.truth is Truth.UNKNOWN]
            if stronger:
                result.missing = sorted({f"{t.indicator} tier not assessable: {m}"
                                         for t in stronger for m in t.outcome.missing})
                result.reason += f"; the stronger {'/'.join(t.indicator for t in stronger)} tier could not be decided"
            return result
    unknown = [t for t in result.tiers if t.outcome.truth is Truth.UNKNOWN]
    partial = sorted({
        why for data in rule.data.values() for rtype in data.resources
        if (why := record.unavailable.get(rtype)) is not None
    })
    if unknown or partial:
        result.status = UNDECIDED
        result.missing = sorted({m for t in unknown for m in t.outcome.missing} | set(partial))
        result.reason = "missing data could change the answer" if unknown else "not fired on partial data"
    else:
        result.reason = "no tier holds"
    return result


def apply_precedence(results: list[RuleResult]) -> None:
    """Drop cards whose rule declares ``suppress_when`` and a stronger card on that topic fired."""
    shown = [r for r in results if r.shows_card]
    for result in shown:
        for suppression in result.rule.suppress_when:
            by = next(
                (
                    other
                    for other in shown
                    if other is not result
                    and other.rule.topic == suppression.topic
                    and other.fired
                    and other.fired.indicator in suppression.indicators
                ),
                None,
            )
            if by is not None:
                result.status = SUPPRESSED
                result.reason = (
                    f"suppressed: {by.rule.id} fired {by.fired.indicator if by.fired else ''} "
                    f"on topic {suppression.topic}"
                )
                break


def evaluate(ruleset: RuleSet, record: PatientRecord, *, hook: str, now: datetime,
             trace: bool = True) -> Evaluation:
    """Evaluate every rule of the set for one hook call at ``now``, from the rule set's compiled plan.

    ``trace``: every rule's full trace, every named condition with its value (``rules explain``). A live
    call passes False: fired rules are still traced (their cards show the evidence) and the others carry
    what decided them — status, reason, missing data — so the answers and cards are the same.
    """
    now = as_utc(now)
    plan = plan_of(ruleset)
    run = Run(plan)
    results = [run_rule(rule, record, hook, now, run, trace=trace) for rule in plan.rules]
    apply_precedence(results)
    return Evaluation(hook, now, ruleset.version, results)


def evaluate_interpreted(ruleset: RuleSet, record: PatientRecord, *, hook: str, now: datetime) -> Evaluation:
    """The same evaluation by walking the condition trees (no plan): the reference the plans are tested
    against, and the bench's before."""
    now = as_utc(now)
    results = [evaluate_rule(rule, record, hook, now) for rule in ruleset.rules]
    apply_precedence(results)
    return Evaluation(hook, now, ruleset.version, results)
