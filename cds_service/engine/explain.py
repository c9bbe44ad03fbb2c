"""Render an evaluation as text a rule author can read in a terminal.

The answer to "why didn't it fire?": for every rule, its verdict, every named condition
with its value and the sentence that explains it, each tier tried in order, the
evidence and the missing data.
"""

from __future__ import annotations

from cds_service.engine.evaluate import FIRED, SKIPPED, SUPPRESSED, UNDECIDED, Evaluation, RuleResult
from cds_service.engine.trace import Outcome, Truth

_MARK = {Truth.TRUE: "✓", Truth.FALSE: "✗", Truth.UNKNOWN: "?"}
_COLOR = {Truth.TRUE: "32", Truth.FALSE: "31", Truth.UNKNOWN: "33"}
_VERDICT_COLOR = {FIRED: "1;32", UNDECIDED: "1;33", SUPPRESSED: "1;35", SKIPPED: "2"}


def _paint(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def _mark(outcome: Outcome, color: bool) -> str:
    return _paint(_MARK[outcome.truth], _COLOR[outcome.truth], color)


def explain_result(result: RuleResult, *, color: bool = False, indent: str = "") -> str:
    """One rule: verdict line, conditions, tiers, evidence, missing data."""
    rule = result.rule
    verdict = result.status.upper()
    if result.fired is not None and result.status == FIRED:
        verdict += f" {result.fired.indicator}"
    if rule.status == "silent" and result.status == FIRED:
        verdict += " (silent rule: logged, no card)"
    head = (
        f"{rule.id} v{rule.version}  {rule.title}  → {_paint(verdict, _VERDICT_COLOR.get(result.status, '1'), color)}"
    )
    lines = [indent + head]
    if result.reason:
        lines.append(f"{indent}  {result.reason}")
    if result.status == SKIPPED:
        return "\n".join(lines)
    lines.append(f"{indent}  conditions:")
    width = max((len(n) for n in result.conditions), default=0)
    for name, outcome in result.conditions.items():
        node = rule.conditions[name]
        shown = "" if outcome.value is None else f" = {outcome.value}"
        lines.append(f"{indent}    {_mark(outcome, color)} {name.ljust(width)}{shown}")
        lines.append(f"{indent}        {node.describe()}")
        if outcome.detail:
            lines.append(f"{indent}        {outcome.detail}")
        for missing in outcome.missing:
            lines.append(f"{indent}        missing: {missing}")
    lines.append(f"{indent}  tiers (tried in order):")
    for tier, trace in zip(rule.tiers, result.tiers, strict=False):
        lines.append(f"{indent}    {_mark(trace.outcome, color)} {tier.indicator}: {tier.when.describe()}")
    for tier in rule.tiers[len(result.tiers) :]:
        lines.append(f"{indent}    - {tier.indicator}: not tried (a stronger tier fired)")
    fired = next((t.outcome for t in result.tiers if t.outcome.truth is Truth.TRUE), None)
    if fired and fired.evidence:
        lines.append(f"{indent}  evidence:")
        for row in fired.evidence:
            date = row.time.date().isoformat() if row.time else "—"
            note = f"  ({row.note})" if row.note else ""
            lines.append(f"{indent}    {date}  {row.item}: {row.value}  [{row.ref}]{note}")
    if result.missing:
        lines.append(f"{indent}  missing data:")
        lines.extend(f"{indent}    - {m}" for m in result.missing)
    return "\n".join(lines)


def explain(evaluation: Evaluation, *, color: bool = False) -> str:
    """Every rule of an evaluation, fired or not."""
    head = f"hook {evaluation.hook} at {evaluation.now.isoformat()} · rule set {evaluation.ruleset_version}"
    return "\n\n".join([head, *(explain_result(r, color=color) for r in evaluation.results)])
