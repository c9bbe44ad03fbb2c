"""Terminology: the project's value sets, its own code system, and a site's local codes.

Every code the rules match on must be traceable to a public source (clinical.md §3 or a cited page);
codes clinical.md marks UNVERIFIED must not slip in; every project-local code must be defined once in
rules/codesystem/kbladder.yaml. A hospital adds its own codes to a value set in its site file, and
those codes then match for every rule; a wrong mapping is an error at the site file's line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from rulekit import RULES, VALUESETS, load, obs, result_of, rule_text, run

from cds_service.clinical.valueset import PROJECT
from cds_service.engine.loader import LoadResult, load_valuesets
from cds_service.engine.model import RuleSet
from cds_service.engine.yamlpos import Problem

CODESYSTEM = RULES / "codesystem" / "kbladder.yaml"
LOCAL_LAB = "http://hospital.example/lab"

# The value sets the fifteen rules of clinical.md §2.1 read.
NEEDED = {
    "ketamine", "esketamine", "body-weight", "urine-blood-dipstick", "urine-rbc-microscopy", "gross-hematuria",
    "urine-dipstick-results", "urinalysis-any", "urine-leukocyte-esterase", "urine-wbc-microscopy",
    "urine-culture", "culture-no-growth", "uti-diagnosis", "luts", "retention", "hydronephrosis", "creatinine",
    "egfr", "alt", "alp", "ggt", "ast", "bilirubin", "ipss", "cystitis-disorders", "ketamine-adverse-effect",
    "substance-use", "pvr", "voided-volume-max", "icsi", "icpi", "puf", "ketamine-uropathy",
    "urine-ketamine-screen",
}
LUTS_KINDS = {"frequency", "urgency", "nocturia", "dysuria", "suprapubic_pain", "incomplete_emptying",
              "urge_incontinence", "hesitancy", "poor_stream", "straining"}
# clinical.md §3 UNVERIFIED (or contested) codes that must not be matched on until someone verifies them.
UNVERIFIED = {
    ("http://www.nlm.nih.gov/research/umls/rxnorm", "6130"),  # ketamine ingredient: candidate only
    ("http://loinc.org", "19501-6"),  # ketamine urine screen: result or cutoff? sources disagree
    ("http://loinc.org", "46419-8"),  # RBC automated count: single source
    ("http://loinc.org", "46702-7"),  # WBC automated count: single source
    # 24356-8 (complete urinalysis panel) left this list in 1.1: verified V2 for issue 16, source in
    # rules/valuesets/observation-panels.yaml; it only widens the prefetch filter, no rule matches on it.
    ("http://snomed.info/sct", "373464007"),  # ketamine substance: candidate only
}


@pytest.fixture(scope="module")
def valuesets() -> dict[str, Any]:
    problems: list[Problem] = []
    found, _ = load_valuesets(VALUESETS, problems)
    assert problems == [], "\n".join(map(str, problems))
    return found


@pytest.fixture(scope="module")
def codesystem() -> dict[str, Any]:
    return yaml.safe_load(CODESYSTEM.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- the project's value sets


def test_every_value_set_file_loads_and_is_named_by_its_id(valuesets: dict[str, Any]) -> None:
    files = sorted(VALUESETS.glob("*.yaml"))
    assert len(files) == len(valuesets)
    for path in files:
        assert yaml.safe_load(path.read_text(encoding="utf-8"))["id"] == path.stem, path.name


def test_every_value_set_the_rules_need_is_there(valuesets: dict[str, Any]) -> None:
    assert NEEDED - set(valuesets) == set()
    assert all(valuesets[vs_id].concepts for vs_id in NEEDED)


def test_every_concept_names_its_source(valuesets: dict[str, Any]) -> None:
    missing = [f"{vs.id}: {c.system}|{c.code}" for vs in valuesets.values() for c in vs.concepts.values()
               if not c.source.strip()]
    assert missing == []


def test_no_unverified_code_is_matched_on(valuesets: dict[str, Any]) -> None:
    used = {key: vs.id for vs in valuesets.values() for key in vs.concepts}
    assert {key: used[key] for key in UNVERIFIED if key in used} == {}


def test_luts_sorts_every_code_into_one_of_the_ten_symptom_classes(valuesets: dict[str, Any]) -> None:
    kinds = {c.kind for c in valuesets["luts"].concepts.values()}
    assert kinds == LUTS_KINDS


def test_medication_sets_count_one_substance_each(valuesets: dict[str, Any]) -> None:
    assert valuesets["ketamine"].substance == "ketamine"
    assert valuesets["esketamine"].substance == "esketamine"
    assert not set(valuesets["ketamine"].concepts) & set(valuesets["esketamine"].concepts)


def test_a_textual_no_growth_result_counts_as_a_negative_culture(valuesets: dict[str, Any]) -> None:
    no_growth = valuesets["culture-no-growth"]
    assert no_growth.match({"coding": [{"system": "http://snomed.info/sct", "code": "264868006"}]}).method == "code"
    assert no_growth.match_text("No significant growth at 48 hours")
    assert not no_growth.match_text("Escherichia coli > 10^5 CFU/mL")


# ---------------------------------------------------------------- the project code system


def test_code_system_file_is_valid(codesystem: dict[str, Any]) -> None:
    schema = json.loads((RULES / "schema" / "codesystem.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(codesystem, schema)
    assert codesystem["url"] == PROJECT
    codes = [c["code"] for c in codesystem["concepts"]]
    assert len(codes) == len(set(codes))


def test_every_project_code_is_defined_in_the_code_system(valuesets: dict[str, Any],
                                                         codesystem: dict[str, Any]) -> None:
    defined = {c["code"] for c in codesystem["concepts"]}
    used = {c.code for vs in valuesets.values() for c in vs.concepts.values() if c.system == PROJECT}
    assert used - defined == set(), "project codes used in value sets but not defined"
    assert defined - used == set(), "project codes defined but used by no value set"


def test_quantity_codes_carry_a_ucum_unit(codesystem: dict[str, Any]) -> None:
    units = {c["code"]: c.get("unit") for c in codesystem["concepts"] if c["value"] == "Quantity"}
    assert units["pvr"] == "mL" and units["voided-volume-max"] == "mL"
    assert all(units.values())


# ---------------------------------------------------------------- site mapping of local codes

PVR_RULE = """\
parameters:
  pvr_warning: {type: quantity, default: 100, unit: mL}
data:
  pvr: {resources: [Observation], valueset: pvr, unit: mL}
conditions:
  high_pvr: {count: {data: pvr, where: {value: {at_least: $pvr_warning}}}}
tiers:
  - indicator: warning
    when: high_pvr
"""

DYSURIA_RULE = """\
data:
  luts: {resources: [Condition, Observation], valueset: luts}
conditions:
  dysuria: {count: {data: luts, where: {kind: [dysuria]}}}
tiers:
  - indicator: warning
    when: dysuria
"""

SITE = f"""\
valuesets:
  pvr:
    - {{system: {LOCAL_LAB}, code: PVR-US, display: Bladder scan residual}}
  luts:
    - {{system: {LOCAL_LAB}, code: SYM-07, display: Burning on passing urine, kind: dysuria}}
"""


def position(text: str, needle: str, nth: int = 1) -> tuple[int, int]:
    """1-based line and column of the nth ``needle`` in ``text``."""
    index = -1
    for _ in range(nth):
        index = text.index(needle, index + 1)
    return text.count("\n", 0, index) + 1, index - text.rfind("\n", 0, index)


def errors_at(result: LoadResult, line: int, col: int) -> list[Problem]:
    return [p for p in result.errors if p.file.endswith("site.yaml") and (p.line, p.col) == (line, col)]


def loaded(tmp_path: Path, site: str | None = None, rule: str = PVR_RULE) -> RuleSet:
    result = load(tmp_path, {"rule.yaml": rule_text(rule)}, site=site)
    assert result.ruleset is not None, "\n".join(map(str, result.problems))
    return result.ruleset


def test_a_site_code_joins_the_value_set_and_names_its_site_line(tmp_path: Path) -> None:
    ruleset = loaded(tmp_path, SITE)
    match = ruleset.valuesets["pvr"].match({"coding": [{"system": LOCAL_LAB, "code": "PVR-US"}]})
    assert match is not None and match.method == "code"
    line, _ = position(SITE, "PVR-US")
    assert match.concept is not None and match.concept.source == f"site file {tmp_path / 'site.yaml'}:{line}"
    assert match.concept.display == "Bladder scan residual"
    assert (PROJECT, "pvr") in ruleset.valuesets["pvr"].concepts  # the project code stays


def test_a_site_code_fires_a_rule_that_did_not_know_it(tmp_path: Path) -> None:
    patient = [obs(f"{LOCAL_LAB}#PVR-US Bladder scan residual", "-1d", "180 mL")]
    plain = loaded(tmp_path / "plain")
    mapped = loaded(tmp_path / "mapped", SITE)
    assert result_of(run(plain, patient)).status == "not fired"
    assert result_of(run(mapped, patient)).status == "fired"
    assert plain.version != mapped.version  # the mapping is part of the rule set's identity


def test_a_site_code_keeps_its_kind_for_kind_filters(tmp_path: Path) -> None:
    ruleset = loaded(tmp_path, SITE, DYSURIA_RULE)
    patient = [{"Condition": {"code": f"{LOCAL_LAB}#SYM-07", "onset": "-2d"}}]
    assert result_of(run(ruleset, patient)).status == "fired"


def test_local_systems_get_no_code_format_check(tmp_path: Path) -> None:
    site = f"valuesets:\n  pvr:\n    - {{system: {LOCAL_LAB}, code: 'pvr us #1', display: x}}\n"
    assert loaded(tmp_path, site).valuesets["pvr"].match_coding(LOCAL_LAB, "pvr us #1") is not None


BAD_SITE = f"""\
valuesets:
  pvrr:
    - {{system: {LOCAL_LAB}, code: A, display: misspelt value set}}
  luts:
    - {{system: {LOCAL_LAB}, code: B, display: no kind}}
    - {{system: {LOCAL_LAB}, code: C, display: wrong kind, kind: dysuira}}
    - {{system: LOINC, code: "12345", display: not a LOINC code}}
    - {{system: {LOCAL_LAB}, code: D, display: twice, kind: nocturia}}
    - {{system: {LOCAL_LAB}, code: D, display: twice, kind: nocturia}}
"""


@pytest.mark.parametrize(("needle", "nth", "message"), [
    ("pvrr", 1, "site file adds codes to unknown value set 'pvrr' (did you mean 'pvr'?)"),
    ("{system: http://hospital.example/lab, code: B", 1, "luts: kind must be one of dysuria, frequency,"),
    ("dysuira", 1, "luts: kind must be one of dysuria, frequency,"),
    ('"12345"', 1, "'12345' is not a valid code of http://loinc.org"),
    ("{system: http://hospital.example/lab, code: D", 2, "duplicate site code http://hospital.example/lab|D in 'luts'"),
])
def test_a_bad_site_mapping_is_an_error_at_its_line(tmp_path: Path, needle: str, nth: int, message: str) -> None:
    result = load(tmp_path, {"rule.yaml": rule_text(PVR_RULE)}, site=BAD_SITE)
    assert result.ruleset is None
    found = errors_at(result, *position(BAD_SITE, needle, nth))
    assert found and message in found[0].message, "\n".join(map(str, result.problems))
    assert len(result.errors) == 5


def test_a_malformed_site_entry_is_a_schema_error_at_its_line(tmp_path: Path) -> None:
    site = (f"valuesets:\n  pvr:\n    - {{system: {LOCAL_LAB}, code: PVR-US}}\n"
            f"    - {{system: {LOCAL_LAB}, code: 7, display: x}}\n")
    result = load(tmp_path, {"rule.yaml": rule_text(PVR_RULE)}, site=site)
    assert result.ruleset is None
    assert [(p.line, p.col) for p in result.errors] == [(3, 7), (4, 51)]
    assert "'display' is a required property" in result.errors[0].message
    assert "7 is not of type 'string'" in result.errors[1].message


def test_a_code_already_in_the_value_set_is_only_a_warning(tmp_path: Path) -> None:
    site = f"valuesets:\n  pvr:\n    - {{system: {PROJECT}, code: pvr, display: again}}\n"
    result = load(tmp_path, {"rule.yaml": rule_text(PVR_RULE)}, site=site)
    assert result.ruleset is not None
    (warning,) = result.problems
    assert warning.severity == "warning" and (warning.line, warning.col) == (3, 7)
    assert "is already in value set 'pvr'" in warning.message
