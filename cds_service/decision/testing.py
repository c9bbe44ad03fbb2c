"""``kbladder rules test``: rule unit tests that assert on cards, like ``promtool test rules``.

A test file fixes ``now``, describes patients in shorthand (or FHIR files), names the
hook and draft orders, and says which cards must appear (rule, indicator, summary text,
suggestions, override reasons) and which must not. A failure prints a diff of expected
against what the engine produced, plus the rule's trace, so the author sees why. Each case is decided by
``decide()``, the function the service calls, so a passing test means the service gives those cards.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cds_service.clinical.timeutil import TimeError, parse_instant
from cds_service.decision.decide import MISSING_DATA, Decision, decide
from cds_service.engine.evaluate import Evaluation
from cds_service.engine.explain import explain_result
from cds_service.engine.loader import LoadResult, load_ruleset, schema_problems
from cds_service.engine.model import RuleSet
from cds_service.engine.shorthand import Expander, ShorthandError
from cds_service.engine.yamlpos import Located, Problem, YamlError, load_file
from cds_service.fhir.parse import bundle_resources, parse_resources

TEST_PATIENT_ID = "test-patient"


@dataclass(slots=True)
class CaseResult:
    file: str
    line: int
    name: str
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(slots=True)
class TestReport:
    cases: list[CaseResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.passed for c in self.cases)


def test_files(paths: Sequence[Path]) -> list[Path]:
    """Test files named, or all ``*.yaml`` under the folders named."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.y*ml") if p.is_file()))
        else:
            found.append(path)
    return found


def run_tests(paths: Sequence[Path]) -> TestReport:
    """Run every test file; rule sets are loaded once per distinct rules/site combination."""
    report = TestReport()
    loaded: dict[tuple[tuple[str, ...], str | None], LoadResult] = {}
    for path in test_files(paths):
        run_file(path, report, loaded)
    return report


def run_file(path: Path, report: TestReport, cache: dict[tuple[tuple[str, ...], str | None], LoadResult]) -> None:
    try:
        located = load_file(path)
    except YamlError as exc:
        report.problems.append(exc.problem)
        return
    problems = schema_problems(located, "test")
    if problems:
        report.problems.extend(problems)
        return
    doc = located.data
    rule_paths = tuple(str((path.parent / p).resolve()) for p in doc.get("rules", [".."]))
    site = str((path.parent / doc["site"]).resolve()) if doc.get("site") else None
    if (rule_paths, site) not in cache:
        cache[(rule_paths, site)] = load_ruleset([Path(p) for p in rule_paths], site=site)
    loaded = cache[(rule_paths, site)]
    if loaded.ruleset is None:
        report.problems.append(located.problem(("rules",), "the rules under test do not load:"))
        report.problems.extend(loaded.errors)
        return
    for i, case in enumerate(doc["tests"]):
        here: tuple[str | int, ...] = ("tests", i)
        result = CaseResult(str(path), located.where(here)[0], case["name"])
        try:
            run_case(loaded.ruleset, located, here, case, doc.get("now"), result)
        except (ShorthandError, TimeError, OSError, json.JSONDecodeError) as exc:
            line, col = located.where(here)
            report.problems.append(Problem(str(path), line, col, f"test {case['name']!r}: {exc}"))
            continue
        report.cases.append(result)


def build_patient(
    located: Located, path: tuple[str | int, ...], case: Mapping[str, Any], now_text: str | None
) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(now, resources, drafts, problems) of one test case, expanded; problems: what is not valid FHIR."""
    if not (case.get("now") or now_text):
        raise TimeError("no now: set now for the file or the test")
    now = parse_instant(str(case.get("now") or now_text))
    expander = Expander(now, TEST_PATIENT_ID)
    base = Path(located.file).parent
    resources = [expander.patient(case.get("patient"))]
    for item in case.get("data") or []:
        resources.extend(_items(item, expander, base, draft=False))
    drafts = [r for item in case.get("drafts") or [] for r in _items(item, expander, base, draft=True)]
    _, problems = parse_resources(resources + drafts)
    return now, resources, drafts, [str(p) for p in problems]


def _items(item: Any, expander: Expander, base: Path, *, draft: bool) -> list[dict[str, Any]]:
    if isinstance(item, str):
        data = json.loads((base / item).read_text(encoding="utf-8"))
        return [expander.expand(r, draft=draft) for r in bundle_resources(data)]
    return [expander.expand(item, draft=draft)]


def decide_case(
    ruleset: RuleSet, located: Located, path: tuple[str | int, ...], case: Mapping[str, Any], now_text: str | None
) -> tuple[Decision, list[str]]:
    """The decision for one test case (as the service would decide it), and the case's invalid-FHIR problems.

    A case without ``selections`` on order-select selects every draft (``drafts_to_evaluate``).
    """
    now, resources, drafts, problems = build_patient(located, path, case, now_text)
    counter = iter(range(1, 10_000))
    decision = decide(
        ruleset,
        resources,
        hook=case["hook"],
        now=now,
        patient_id=TEST_PATIENT_ID,
        drafts=drafts,
        selections=case.get("selections") or None,
        new_id=lambda: f"uuid-{next(counter)}",
    )
    return decision, problems


def run_case(
    ruleset: RuleSet,
    located: Located,
    path: tuple[str | int, ...],
    case: Mapping[str, Any],
    now_text: str | None,
    result: CaseResult,
) -> None:
    decision, problems = decide_case(ruleset, located, path, case, now_text)
    evaluation, cards = decision.evaluation, decision.cards_per_rule()
    for problem in problems:
        result.failures.append(f"test data is not valid FHIR: {problem}")
    expect = case["expect"]
    by_rule = {card["source"]["topic"]["code"]: card for card in cards}
    for wanted in expect.get("cards") or []:
        got = by_rule.get(wanted["rule"])
        if got is None:
            result.failures.append(
                f"expected a card from {wanted['rule']}, got none\n" + _why(evaluation, wanted["rule"])
            )
            continue
        projected = project(got, wanted)
        if projected != _normal(wanted):
            result.failures.append(f"card from {wanted['rule']} differs\n" + diff(_normal(wanted), projected))
    for rule_id in expect.get("no_cards") or []:
        if rule_id in by_rule:
            result.failures.append(
                f"expected no card from {rule_id}, got {by_rule[rule_id]['indicator']}: "
                f"{by_rule[rule_id]['summary']!r}\n" + _why(evaluation, rule_id)
            )
    if expect.get("only"):
        extra = sorted(set(by_rule) - {w["rule"] for w in expect.get("cards") or []})
        for rule_id in extra:
            result.failures.append(f"unexpected card from {rule_id}: {by_rule[rule_id]['summary']!r}")
    undecided = {r.rule.id for r in evaluation.undecided()}
    for rule_id in expect.get("unknown") or []:
        if rule_id not in undecided:
            result.failures.append(f"expected {rule_id} to be undecided for missing data\n" + _why(evaluation, rule_id))


def _normal(wanted: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (sorted(v) if isinstance(v, list) else v) for k, v in wanted.items()}


def project(card: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a card that the expectation talks about, in the expectation's terms."""
    got: dict[str, Any] = {"rule": card["source"]["topic"]["code"]}
    if "indicator" in wanted:
        got["indicator"] = card["indicator"]
    if "summary_contains" in wanted:
        got["summary_contains"] = (
            wanted["summary_contains"] if wanted["summary_contains"] in card["summary"] else card["summary"]
        )
    if "detail_contains" in wanted:
        detail = card.get("detail", "")
        got["detail_contains"] = wanted["detail_contains"] if wanted["detail_contains"] in detail else detail
    if "suggestions" in wanted:
        got["suggestions"] = sorted(s["label"] for s in card.get("suggestions", []))
    if "override_reasons" in wanted:
        got["override_reasons"] = sorted(r["code"] for r in card.get("overrideReasons", []))
    if "missing_data" in wanted:
        got["missing_data"] = MISSING_DATA in card.get("extension", {})
    return got


def diff(expected: Mapping[str, Any], got: Mapping[str, Any]) -> str:
    """A unified diff of two YAML renderings."""
    left = yaml.safe_dump(dict(expected), sort_keys=True, allow_unicode=True, width=1000).splitlines()
    right = yaml.safe_dump(dict(got), sort_keys=True, allow_unicode=True, width=1000).splitlines()
    return "\n".join(difflib.unified_diff(left, right, "expected", "got", lineterm=""))


def _why(evaluation: Evaluation, rule_id: str) -> str:
    result = next((r for r in evaluation.results if r.rule.id == rule_id), None)
    if result is None:
        return f"  (no rule {rule_id} in the rule set)"
    return explain_result(result, color=False, indent="  ")


def format_report(report: TestReport) -> str:
    """Human report: every failure in full, then a closing count line."""
    lines = [str(p) for p in report.problems]
    for case in report.cases:
        if case.passed:
            continue
        lines.append(f"FAIL {case.file}:{case.line}: {case.name}")
        for failure in case.failures:
            lines.extend("  " + line for line in failure.splitlines())
    passed = sum(1 for c in report.cases if c.passed)
    failed = len(report.cases) - passed + len(report.problems)
    lines.append(f"rule tests: {passed} passed, {failed} failed")
    return "\n".join(lines)
