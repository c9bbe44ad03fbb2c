"""The loader's problems: every error of a run, each at the exact file:line:col of its cause.

Each test writes a rule with one mistake and asserts the problem points at the offending
token, found by searching the text, so the expected position is visible in the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rulekit import dedent, load, rule_text, rules_dir, run

from cds_service.engine.loader import LoadResult, load_ruleset
from cds_service.engine.model import Quantity
from cds_service.engine.yamlpos import Problem

GOOD = """\
parameters:
  lookback: {type: duration, default: P365D}
  heavy: {type: quantity, default: 25, unit: "/[HPF]"}
data:
  ketamine: {resources: [MedicationAdministration], valueset: ketamine, lookback: $lookback}
  rbc: {resources: [Observation], valueset: urine-rbc-microscopy, unit: "/[HPF]"}
windows:
  recent: {last: $lookback}
conditions:
  exposed: {count: {data: ketamine, window: recent}}
  heavy_rbc: {count: {data: rbc, where: {value: {above: $heavy}}}}
tiers:
  - indicator: warning
    when: {all: [exposed, heavy_rbc]}
"""


def position(text: str, needle: str, *, after: str | None = None, offset: int = 0) -> tuple[int, int]:
    """1-based line and column of ``needle`` in ``text`` (the first one after ``after``)."""
    start = text.index(after) if after else 0
    index = text.index(needle, start) + offset
    return text.count("\n", 0, index) + 1, index - text.rfind("\n", 0, index)


def problem_at(result: LoadResult, file: Path, line: int, col: int) -> Problem:
    found = [p for p in result.problems if Path(p.file) == file and (p.line, p.col) == (line, col)]
    assert found, f"no problem at {file.name}:{line}:{col}; got:\n" + "\n".join(map(str, result.problems))
    return found[0]


def broken(tmp_path: Path, text: str, needle: str, message: str, *, after: str | None = None,
           offset: int = 0, name: str = "rule.yaml") -> LoadResult:
    """Load a rule file and assert an error containing ``message`` at ``needle``; return the result."""
    result = load(tmp_path, {name: text})
    line, col = position(text, needle, after=after, offset=offset)
    problem = problem_at(result, tmp_path / "rules" / name, line, col)
    assert problem.severity == "error"
    assert message in problem.message, str(problem)
    assert str(problem).startswith(f"{tmp_path / 'rules' / name}:{line}:{col}: ")
    assert result.ruleset is None  # atomic: no rule set with an error in it
    return result


def test_good_rule_loads_complete(tmp_path: Path) -> None:
    result = load(tmp_path, {"rule.yaml": rule_text(GOOD)})
    assert result.errors == []
    ruleset = result.ruleset
    assert ruleset is not None
    (rule,) = ruleset.rules
    assert rule.id == "T-01" and rule.key == "T-01@1.0.0"
    assert set(rule.conditions) == {"exposed", "heavy_rbc"}
    assert [t.indicator for t in rule.tiers] == ["warning"]
    assert {"ketamine", "esketamine", "urine-rbc-microscopy"} <= set(ruleset.valuesets)
    assert ruleset.sources == (str(tmp_path / "rules" / "rule.yaml"),)
    assert len(ruleset.version) == 12


def test_yaml_syntax_error(tmp_path: Path) -> None:
    text = rule_text(GOOD.replace("  heavy_rbc: {count: {", "  heavy_rbc: {count: [: {"))
    broken(tmp_path, text, ": {data: rbc", "YAML syntax", after="heavy_rbc")


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    text = rule_text(GOOD.replace("  heavy_rbc:", "  exposed: {count: {data: rbc}}\n  heavy_rbc:"))
    broken(tmp_path, text, "exposed: {count: {data: rbc}}", "duplicate key 'exposed'")


def test_unknown_top_level_key_with_suggestion(tmp_path: Path) -> None:
    text = rule_text(GOOD).replace("title:", "titel:")
    broken(tmp_path, text, "titel", "unknown key 'titel' (did you mean 'title'?)")


def test_unknown_key_inside_a_condition_with_suggestion(tmp_path: Path) -> None:
    text = rule_text(GOOD.replace("{data: ketamine, window: recent}", "{data: ketamine, windw: recent}"))
    broken(tmp_path, text, "windw", "unknown key 'windw' (did you mean 'window'?)")


def test_misspelt_condition_block_with_suggestion(tmp_path: Path) -> None:
    text = rule_text(GOOD.replace("exposed: {count:", "exposed: {cuont:"))
    broken(tmp_path, text, "cuont", "unknown key 'cuont' (did you mean 'count'?)")


def test_missing_required_field(tmp_path: Path) -> None:
    text = rule_text(GOOD).replace("version: 1.0.0\n", "")
    result = broken(tmp_path, text, "id:", "'version' is a required property")
    assert len(result.errors) == 1


def test_missing_required_field_of_a_block(tmp_path: Path) -> None:
    text = rule_text(GOOD.replace("{data: ketamine, window: recent}", "{window: recent}"))
    broken(tmp_path, text, "{window: recent}", "conditions.exposed.count: 'data' is a required property")


def test_parameter_default_of_the_wrong_type(tmp_path: Path) -> None:
    text = rule_text(GOOD.replace("default: P365D", "default: 365 days"))
    result = broken(tmp_path, text, "365 days", "not an ISO 8601 duration")
    # reported once, where declared; not again as an "unknown" parameter or window where it is used
    assert len(result.errors) == 1, "\n".join(map(str, result.errors))


def test_parameter_used_as_the_wrong_kind(tmp_path: Path) -> None:
    text = rule_text(GOOD.replace("above: $heavy", "above: $lookback"))
    broken(tmp_path, text, "$lookback}}}}", "parameter $lookback is a duration; expected quantity")


@pytest.mark.parametrize(
    ("default", "message"),
    [('"lots"', "not a quantity"), ("true", "must be a number")],
)
def test_quantity_parameter_default_must_be_a_number(tmp_path: Path, default: str, message: str) -> None:
    text = rule_text(GOOD.replace("default: 25,", f"default: {default},"))
    broken(tmp_path, text, default, message, after="heavy:")


def test_non_ucum_unit_in_data(tmp_path: Path) -> None:
    text = rule_text(GOOD.replace('unit: "/[HPF]"}\nwindows', 'unit: "per hpf field"}\nwindows'))
    broken(tmp_path, text, '"per hpf field"', "unit 'per hpf field' is not UCUM")


def test_non_ucum_unit_in_a_parameter(tmp_path: Path) -> None:
    text = rule_text(GOOD.replace('default: 25, unit: "/[HPF]"', 'default: 25, unit: "cells/hpf"'))
    broken(tmp_path, text, '"cells/hpf"', "unit 'cells/hpf' is not UCUM")


def test_non_ucum_unit_in_a_threshold(tmp_path: Path) -> None:
    text = rule_text(GOOD.replace("above: $heavy", "above: 3 hpfs"))
    broken(tmp_path, text, "3 hpfs", "unit 'hpfs' is not UCUM")


def test_rules_must_write_strict_ucum_not_ehr_aliases(tmp_path: Path) -> None:
    text = rule_text(GOOD.replace('default: 25, unit: "/[HPF]"', 'default: 25, unit: "mcg"'))
    broken(tmp_path, text, '"mcg"', "unit 'mcg' is not UCUM")


def test_unknown_value_set_with_suggestion(tmp_path: Path) -> None:
    text = rule_text(GOOD.replace("valueset: urine-rbc-microscopy", "valueset: urine-rbc-microscop"))
    broken(tmp_path, text, "urine-rbc-microscop,", "unknown value set 'urine-rbc-microscop' (did you mean "
           "'urine-rbc-microscopy'?)")


BAD_CODES = """\
id: bad-codes
title: codes with mistakes
concepts:
  - {system: http://snomed.info/sct, code: "5794-3", display: a LOINC code in a SNOMED row, source: test}
  - {system: http://example.org/codes, code: "abc", display: an unknown code system, source: test}
  - {system: LOINC, code: "5794-3", display: short system names are fine, source: test}
  - {system: http://hl7.org/fhir/sid/icd-10-cm, code: "R31", display: a valid ICD-10-CM category, source: test}
  - {system: http://hl7.org/fhir/sid/icd-10-cm, code: "31.0", display: not ICD-10-CM, source: test}
"""


def test_value_set_codes_are_checked_against_their_system(tmp_path: Path) -> None:
    result = load(tmp_path, {"rule.yaml": rule_text(GOOD)}, {"bad.yaml": BAD_CODES})
    file = tmp_path / "rules" / "valuesets" / "bad.yaml"
    wrong = problem_at(result, file, *position(BAD_CODES, '"5794-3"'))
    assert wrong.message == "'5794-3' is not a valid code of http://snomed.info/sct"
    unknown = problem_at(result, file, *position(BAD_CODES, "http://example.org/codes"))
    assert unknown.message.startswith("unknown code system 'http://example.org/codes'; known: ")
    icd = problem_at(result, file, *position(BAD_CODES, '"31.0"'))
    assert "not a valid code of http://hl7.org/fhir/sid/icd-10-cm" in icd.message
    assert len(result.errors) == 3
    assert result.ruleset is None


def test_fhirpath_syntax_error_points_into_the_expression(tmp_path: Path) -> None:
    body = GOOD.replace("  heavy_rbc: {count: {data: rbc, where: {value: {above: $heavy}}}}",
                        '  heavy_rbc: {fhirpath: {expression: "entry.resource.where(value > )"}}')
    broken(tmp_path, rule_text(body), ")\"}}", "FHIRPath: mismatched input ')'")


def test_fhirpath_syntax_error_in_a_block_scalar(tmp_path: Path) -> None:
    body = GOOD.replace(
        "  heavy_rbc: {count: {data: rbc, where: {value: {above: $heavy}}}}",
        "  heavy_rbc:\n    fhirpath:\n      expression: |\n        entry.resource\n          .where(value > )\n",
    )
    broken(tmp_path, rule_text(body), ")\n", "FHIRPath: mismatched input ')'", after=".where(value >")


def test_fhirpath_syntax_error_in_a_folded_scalar(tmp_path: Path) -> None:
    body = GOOD.replace(
        "  heavy_rbc: {count: {data: rbc, where: {value: {above: $heavy}}}}",
        "  heavy_rbc:\n    fhirpath:\n      expression: >-\n"
        "        entry.resource\n          .where(value > ).exists()\n",
    )
    broken(tmp_path, rule_text(body), ").exists()", "FHIRPath: mismatched input ')'")


def test_fhirpath_that_reads_the_clock_is_refused(tmp_path: Path) -> None:
    body = GOOD.replace("  heavy_rbc: {count: {data: rbc, where: {value: {above: $heavy}}}}",
                        "  heavy_rbc: {fhirpath: {expression: \"entry.resource.where(issued > now() - 7 days)"
                        ".exists()\"}}")
    broken(tmp_path, rule_text(body), "now()", "now() reads the clock; use %now")


def test_fhirpath_unknown_variable(tmp_path: Path) -> None:
    body = GOOD.replace("above: $heavy}}}}", "above: $heavy}, fhirpath: \"value.value > %heavvy\"}}}")
    broken(tmp_path, rule_text(body), '"value.value',
           "FHIRPath variable %heavvy is neither a parameter, %now nor %hook")


def test_unknown_parameter_with_suggestion(tmp_path: Path) -> None:
    text = rule_text(GOOD.replace("above: $heavy", "above: $heavvy"))
    broken(tmp_path, text, "$heavvy", "unknown parameter '$heavvy' (did you mean 'heavy'?)")


def test_unknown_window_with_suggestion(tmp_path: Path) -> None:
    text = rule_text(GOOD.replace("window: recent}", "window: recnt}"))
    broken(tmp_path, text, "recnt", "unknown window 'recnt' (did you mean 'recent'?)")


def test_unknown_anchor(tmp_path: Path) -> None:
    text = rule_text(GOOD.replace("recent: {last: $lookback}", "recent: {start: course_begin}"))
    broken(tmp_path, text, "course_begin", "'course_begin' is not one of ['now', 'course_start'")


def test_current_anchor_only_in_a_change_baseline(tmp_path: Path) -> None:
    text = rule_text(GOOD.replace("recent: {last: $lookback}", "recent: {start: current}"))
    broken(tmp_path, text, "current}", "unknown anchor 'current'")


def test_unknown_condition_name(tmp_path: Path) -> None:
    text = rule_text(GOOD.replace("[exposed, heavy_rbc]", "[exposed, heavy_rbcs]"))
    broken(tmp_path, text, "heavy_rbcs", "unknown condition 'heavy_rbcs'")


def test_condition_cycle(tmp_path: Path) -> None:
    body = GOOD.replace("  exposed: {count: {data: ketamine, window: recent}}",
                        "  exposed: {all: [heavy_rbc, again]}\n  again: {any: [exposed]}")
    result = broken(tmp_path, rule_text(body), "{all: [heavy_rbc, again]}",
                    "condition refers to itself: exposed → again → exposed")
    problem_at(result, tmp_path / "rules" / "rule.yaml", *position(rule_text(body), "{any: [exposed]}"))


def test_unreachable_tier(tmp_path: Path) -> None:
    body = GOOD + "  - indicator: info\n    when: {all: [heavy_rbc, exposed, heavy_rbc]}\n"
    broken(tmp_path, rule_text(body), "{all: [heavy_rbc, exposed, heavy_rbc]}",
           "unreachable tier (info): whenever it holds, tier 1 (warning) holds too")


def test_a_weaker_later_tier_is_reachable(tmp_path: Path) -> None:
    body = GOOD + "  - indicator: info\n    when: exposed\n"
    assert load(tmp_path, {"rule.yaml": rule_text(body)}).ok


def test_template_with_an_unknown_variable(tmp_path: Path) -> None:
    text = rule_text(GOOD, summary="Blood in urine ({{ patient.name }})")
    broken(tmp_path, text, '"Blood in urine', "template uses unknown variable 'patient'")


def test_template_syntax_error_in_a_block_scalar_points_at_its_line(tmp_path: Path) -> None:
    text = rule_text(GOOD).replace(
        'summary: "Test card for {{ rule.id }}"\n',
        'summary: "Test card"\n  detail: |\n    First line\n    Second {{ rule.id }\n',
    )
    broken(tmp_path, text, "Second", "template: unexpected '}'")


def test_duplicate_rule_ids_across_two_files(tmp_path: Path) -> None:
    result = load(tmp_path, {"a.yaml": rule_text(GOOD), "b.yaml": rule_text(GOOD)})
    problem = problem_at(result, tmp_path / "rules" / "b.yaml", 1, 5)
    assert problem.message == f"duplicate rule id 'T-01' (first in {tmp_path / 'rules' / 'a.yaml'}:1)"
    assert result.ruleset is None


SITE_PROBLEMS = """\
rules:
  T-01:
    parameters:
      heavy: lots
      lookbak: P2Y
  T-99:
    status: silent
"""


def test_site_file_problems(tmp_path: Path) -> None:
    result = load(tmp_path, {"rule.yaml": rule_text(GOOD)}, site=SITE_PROBLEMS)
    site = tmp_path / "site.yaml"
    bad_value = problem_at(result, site, *position(SITE_PROBLEMS, "heavy"))
    assert bad_value.message == "T-01: not a quantity (number and unit, e.g. '35 mg'): 'lots'"
    unknown_parameter = problem_at(result, site, *position(SITE_PROBLEMS, "lookbak"))
    assert unknown_parameter.message == "T-01 has no parameter 'lookbak' (did you mean 'lookback'?)"
    unknown_rule = problem_at(result, site, *position(SITE_PROBLEMS, "T-99"))
    assert unknown_rule.message == "site file names unknown rule 'T-99'"
    assert len(result.errors) == 3
    assert result.ruleset is None


def test_site_file_with_an_unknown_key(tmp_path: Path) -> None:
    site = "rules:\n  T-01:\n    parameter:\n      heavy: 30\n"
    result = load(tmp_path, {"rule.yaml": rule_text(GOOD)}, site=site)
    problem = problem_at(result, tmp_path / "site.yaml", 3, 5)
    assert "unknown key 'parameter' (did you mean 'parameters'?)" in problem.message


def test_all_errors_of_a_run_are_reported(tmp_path: Path) -> None:
    many = GOOD.replace("valueset: ketamine", "valueset: ketamin").replace(
        "above: $heavy", "above: $heavvy").replace("[exposed, heavy_rbc]", "[exposed, heavy_rbcs]")
    many_text = rule_text(many, summary="{{ patient }}").replace("title:", "titel: x\ntitle:")
    syntax_text = rule_text(GOOD, rule_id="T-02").replace("data:\n", "data: [\n")
    result = load(tmp_path, {"many.yaml": many_text, "syntax.yaml": syntax_text}, {"bad.yaml": BAD_CODES})
    messages = [p.message for p in result.errors]
    expected = [
        "unknown key 'titel'",
        "unknown value set 'ketamin'",
        "unknown parameter '$heavvy'",
        "unknown condition 'heavy_rbcs'",
        "template uses unknown variable 'patient'",
        "YAML syntax",
        "is not a valid code of http://snomed.info/sct",
        "unknown code system 'http://example.org/codes'",
    ]
    for fragment in expected:
        assert any(fragment in m for m in messages), f"{fragment!r} not reported; got {messages}"
    assert result.ruleset is None


def test_load_is_atomic_one_bad_file_means_no_rule_set(tmp_path: Path) -> None:
    bad = rule_text(GOOD.replace("above: $heavy", "above: $nope"), rule_id="T-02")
    result = load(tmp_path, {"good.yaml": rule_text(GOOD), "bad.yaml": bad})
    assert not result.ok and result.ruleset is None
    assert [Path(p.file).name for p in result.errors] == ["bad.yaml"]


def test_warnings_do_not_block_a_load(tmp_path: Path) -> None:
    body = GOOD.replace("  heavy_rbc:", "  unused: {count: {data: rbc}}\n  heavy_rbc:")
    result = load(tmp_path, {"rule.yaml": rule_text(body)})
    assert result.ok
    (warning,) = [p for p in result.problems if p.severity == "warning"]
    assert "condition 'unused' is not used by any tier" in warning.message
    assert str(warning).split(": ", 1)[1].startswith("warning: ")


def test_parameter_used_only_in_fhirpath_is_not_reported_unused(tmp_path: Path) -> None:
    body = GOOD.replace("above: $heavy}}}}", "above: 1}, fhirpath: \"value.value > %heavy\"}}}")
    result = load(tmp_path, {"rule.yaml": rule_text(body)})
    assert result.ok
    assert result.problems == [], "\n".join(map(str, result.problems))


def test_no_rule_files(tmp_path: Path) -> None:
    folder = rules_dir(tmp_path, {})
    result = load_ruleset([folder])
    assert result.ruleset is None
    assert [p.message for p in result.errors] == ["no rule files found"]


def test_rule_set_version_follows_the_content(tmp_path: Path) -> None:
    first = load(tmp_path / "a", {"rule.yaml": rule_text(GOOD)}).ruleset
    same = load(tmp_path / "b", {"rule.yaml": rule_text(GOOD)}).ruleset
    other = load(tmp_path / "c", {"rule.yaml": rule_text(GOOD, title="Another title")}).ruleset
    assert first is not None and same is not None and other is not None
    assert first.version == same.version != other.version


SITE_OVERRIDE = """\
rules:
  T-01:
    parameters:
      heavy: "10 /[HPF]"
"""


def test_site_file_overrides_a_parameter_without_editing_the_rule(tmp_path: Path) -> None:
    text = rule_text(GOOD)
    plain = load(tmp_path / "plain", {"rule.yaml": text}).ruleset
    site = load(tmp_path / "site", {"rule.yaml": text}, site=SITE_OVERRIDE).ruleset
    assert plain is not None and site is not None
    assert (tmp_path / "site" / "rules" / "rule.yaml").read_text() == text  # the rule file is untouched
    parameter = site.rules[0].parameters["heavy"]
    assert parameter.value == Quantity(10, "/[HPF]") and parameter.default == Quantity(25, "/[HPF]")
    assert parameter.overridden
    assert plain.version != site.version  # the site file is part of the rule set's identity

    patient = [
        {"MedicationAdministration": {"medication": "SNOMED#781954001", "dose": "35 mg", "at": "-3d"}},
        {"Observation": {"code": "LOINC#13945-1", "value": "20 /[HPF]", "at": "-1d"}},
    ]
    assert run(plain, patient).results[0].status == "not fired"  # 20 is not above 25
    assert run(site, patient).results[0].status == "fired"  # but above the site's 10


def test_site_file_can_silence_a_rule(tmp_path: Path) -> None:
    ruleset = load(tmp_path, {"rule.yaml": rule_text(GOOD)}, site="rules:\n  T-01: {status: silent}\n").ruleset
    assert ruleset is not None and ruleset.rules[0].status == "silent"


def test_project_rules_load_clean() -> None:
    result = load_ruleset([Path(__file__).resolve().parents[1] / "rules"])
    assert result.ok, "\n".join(map(str, result.problems))
    assert result.problems == []


def test_dedent_helper_keeps_yaml_valid() -> None:
    assert dedent("\n    a: 1\n    b: 2\n") == "a: 1\nb: 2\n"
