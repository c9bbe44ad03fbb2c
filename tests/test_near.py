"""The `near` / `not_near` filter: pairing a finding with another finding or a session in time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rulekit import ESKETAMINE, admin, load, obs, result_of, rule_text, ruleset, run

from cds_service.engine.blocks.filters import Intervals
from cds_service.engine.evaluate import FIRED, NOT_FIRED, UNDECIDED
from cds_service.engine.model import RuleSet

STERILE_PYURIA = """\
data:
  ketamine: {resources: [MedicationAdministration], valueset: ketamine}
  le: {resources: [Observation], valueset: urine-le}
  culture: {resources: [Observation], valueset: urine-culture}
conditions:
  sterile_pyuria:
    count:
      data: le
      where:
        value: {at_least: trace}
        near: {data: culture, within: P7D, where: {value: {in: culture-no-growth}}}
  after_session:
    count: {data: le, where: {near: {data: ketamine, after: PT72H}}}
  outside_sessions:
    count: {data: le, where: {not_near: {data: ketamine, within: PT24H}}}
tiers:
  - indicator: warning
    when: sterile_pyuria
  - indicator: info
    when: {any: [after_session, outside_sessions]}
"""

VALUESETS = {
    "urine-le.yaml": """\
        id: urine-le
        title: leukocyte esterase
        concepts:
          - {system: http://loinc.org, code: 5799-2, display: Leukocyte esterase, source: test}
    """,
    "urine-culture.yaml": """\
        id: urine-culture
        title: urine culture
        concepts:
          - {system: http://loinc.org, code: 630-4, display: Bacteria identified in Urine by Culture, source: test}
    """,
    "culture-no-growth.yaml": """\
        id: culture-no-growth
        title: no growth
        text: [no growth]
        concepts:
          - {system: http://snomed.info/sct, code: "264868006", display: No growth, source: test}
    """,
}
LE, CULTURE = "LOINC#5799-2", "LOINC#630-4"
NO_GROWTH = "SNOMED#264868006 No growth"


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    return ruleset(tmp_path_factory.mktemp("near"), {"T-01.yaml": rule_text(STERILE_PYURIA)}, VALUESETS)


@pytest.mark.parametrize(
    ("culture_at", "fires"),
    [("-10d", True), ("-3d", True), ("-17d", True), ("-18d", False), ("-2d", False)],
)
def test_culture_within_seven_days_either_side(rules: RuleSet, culture_at: str, fires: bool) -> None:
    # pyuria at -10d; a sterile culture counts from -17d to -3d inclusive
    evaluation = run(rules, [obs(LE, "-10d", "1+"), obs(CULTURE, culture_at, NO_GROWTH)])
    outcome = result_of(evaluation).conditions["sterile_pyuria"]
    assert bool(outcome.truth) is fires


def test_a_positive_culture_is_not_sterile(rules: RuleSet) -> None:
    evaluation = run(rules, [obs(LE, "-10d", "1+"), obs(CULTURE, "-9d", "SNOMED#112283007 Escherichia coli")])
    assert not result_of(evaluation).conditions["sterile_pyuria"].truth


def test_culture_text_result_matches_by_value_set_text(rules: RuleSet) -> None:
    evaluation = run(rules, [obs(LE, "-10d", "trace"), obs(CULTURE, "-9d", "No growth after 48 hours")])
    assert result_of(evaluation).status == FIRED


def test_symptom_within_72_hours_after_a_session_only(rules: RuleSet) -> None:
    after = run(rules, [admin("-5d"), obs(LE, "-3d", "negative")])
    before = run(rules, [admin("-5d"), obs(LE, "-6d", "negative")])
    assert after.results[0].conditions["after_session"].truth
    assert not before.results[0].conditions["after_session"].truth


def test_not_near_a_session(rules: RuleSet) -> None:
    during = run(rules, [admin("-5d"), obs(LE, "-5d", "negative")])
    apart = run(rules, [admin("-5d"), obs(LE, "-2d", "negative")])
    assert not during.results[0].conditions["outside_sessions"].truth
    assert apart.results[0].conditions["outside_sessions"].truth


def test_no_pairing_no_card(rules: RuleSet) -> None:
    evaluation = run(rules, [obs(LE, "-10d", "1+")])
    assert result_of(evaluation).status == FIRED  # info: outside sessions
    assert result_of(evaluation).fired.indicator == "info"  # type: ignore[union-attr]
    lone = run(rules, [])
    assert result_of(lone).status == NOT_FIRED


def test_undecidable_pairing_is_unknown(rules: RuleSet) -> None:
    # the culture's result is a number without unit: cannot tell "in culture-no-growth" -> still a decision
    evaluation = run(rules, [obs(LE, "-10d", "see comment"), obs(CULTURE, "-9d", NO_GROWTH)])
    assert result_of(evaluation).conditions["sterile_pyuria"].truth.value == "unknown"
    assert result_of(evaluation).status in (FIRED, UNDECIDED)


def test_near_needs_exactly_one_span(tmp_path: Path) -> None:
    broken = STERILE_PYURIA.replace("within: P7D,", "within: P7D, after: P1D,")
    result = load(tmp_path, {"T-01.yaml": rule_text(broken)}, VALUESETS)
    assert result.ruleset is None
    assert any("exactly one of within" in p.message for p in result.errors)


def test_near_unknown_data_is_reported_at_its_line(tmp_path: Path) -> None:
    broken = STERILE_PYURIA.replace("near: {data: culture,", "near: {data: cultur,")
    text = rule_text(broken)
    result = load(tmp_path, {"T-01.yaml": text}, VALUESETS)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "cultur," in row)
    assert any(p.line == line and "unknown data 'cultur'" in p.message for p in result.errors), result.problems


def test_describe_mentions_the_pairing(rules: RuleSet) -> None:
    node = rules.rules[0].conditions["sterile_pyuria"]
    assert "culture where value in culture-no-growth within ± 7 d" in node.describe()


def test_near_takes_several_data_keys_of_one_kind(tmp_path: Path) -> None:
    body = STERILE_PYURIA.replace("  ketamine: {resources: [MedicationAdministration], valueset: ketamine}",
                                  "  ketamine: {resources: [MedicationAdministration], valueset: ketamine}\n"
                                  "  esketamine: {resources: [MedicationAdministration], valueset: esketamine}")
    body = body.replace("{data: ketamine, within: PT24H}", "{data: [ketamine, esketamine], within: PT24H}")
    rules = ruleset(tmp_path, {"T-01.yaml": rule_text(body)}, VALUESETS)
    near_esketamine = run(rules, [admin("-5d", "56 mg", medication=ESKETAMINE), obs(LE, "-5d", "negative")])
    apart = run(rules, [admin("-5d", "56 mg", medication=ESKETAMINE), obs(LE, "-2d", "negative")])
    assert not result_of(near_esketamine).conditions["outside_sessions"].truth
    assert result_of(apart).conditions["outside_sessions"].truth
    mixed = body.replace("[ketamine, esketamine]", "[ketamine, le]")
    result = load(tmp_path / "mixed", {"T-01.yaml": rule_text(mixed)}, VALUESETS)
    assert result.ruleset is None and any("not both" in p.message for p in result.errors)


# ---------------------------------------------------------------- the interval index behind near


@settings(max_examples=300, deadline=None, derandomize=True)
@given(spans=st.lists(st.tuples(st.integers(0, 60), st.integers(-5, 20)), max_size=12),
       latest=st.integers(-5, 70), earliest=st.integers(-5, 80), besides=st.integers(-1, 11))
def test_interval_index_answers_as_pairing_every_partner_does(spans: list[tuple[int, int]], latest: int,
                                                               earliest: int, besides: int) -> None:
    """Intervals.reaches (bisect + running latest end) against the quadratic scan it replaced; ends may
    precede starts (bad data), and the finding being paired never pairs with itself."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    day = timedelta(days=1)
    items = [(base + start * day, base + (start + length) * day, object()) for start, length in spans]
    skip = items[besides][2] if 0 <= besides < len(items) else None
    expected = any(start <= base + latest * day and end >= base + earliest * day
                   for start, end, what in items if what is not skip)
    assert Intervals(items).reaches(base + latest * day, base + earliest * day, skip) is expected
