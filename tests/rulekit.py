"""Helpers for tests that build small rules in tmp_path and evaluate them at a fixed ``now``.

A rule folder is ``<tmp>/rules/*.yaml`` with the project's value sets copied into
``<tmp>/rules/valuesets/`` (plus any inline ones), exactly the layout ``load_ruleset`` reads.
Patients are written in the rule-test shorthand (``{Observation: {code: LOINC#…, at: -3d}}``).
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from cds_service.clinical.record import PatientRecord
from cds_service.engine.evaluate import Evaluation, RuleResult, evaluate
from cds_service.engine.loader import LoadResult, load_ruleset
from cds_service.engine.model import RuleSet
from cds_service.engine.shorthand import Expander

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"
VALUESETS = RULES / "valuesets"
NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
PATIENT_ID = "p1"

KETAMINE = "SNOMED#781954001"  # ketamine 50 mg/mL injection (ketamine value set)
ESKETAMINE = "RXNORM#2201625"  # esketamine nasal spray [Spravato] (esketamine value set)

# The head every small test rule shares; tests append data/windows/conditions/tiers.
HEAD = """\
id: {rule_id}
version: 1.0.0
title: {title}
status: {status}
hooks: [patient-view, order-select, order-sign]
"""

CARD = """\
card:
  summary: "{summary}"
references:
  - {{id: R1, citation: "Test citation", strength: L}}
"""


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def rule_text(
    body: str,
    *,
    rule_id: str = "T-01",
    title: str = "Test rule",
    status: str = "active",
    summary: str = "Test card for {{ rule.id }}",
    extra: str = "",
) -> str:
    """A complete rule file: the shared head, ``body`` (data … tiers), a card and a reference."""
    return (
        HEAD.format(rule_id=rule_id, title=title, status=status)
        + dedent(body)
        + CARD.format(summary=summary)
        + dedent(extra)
    )


def rules_dir(tmp_path: Path, files: Mapping[str, str], valuesets: Mapping[str, str] | None = None) -> Path:
    """Write rule files (name → text) into ``tmp_path/rules`` with the project value sets beside them."""
    folder = tmp_path / "rules"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "valuesets").exists():
        shutil.copytree(VALUESETS, folder / "valuesets")
    for name, text in (valuesets or {}).items():
        (folder / "valuesets" / name).write_text(dedent(text), encoding="utf-8")
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def load(tmp_path: Path, files: Mapping[str, str], valuesets: Mapping[str, str] | None = None,
         site: str | None = None) -> LoadResult:
    folder = rules_dir(tmp_path, files, valuesets)
    site_path = None
    if site is not None:
        site_path = tmp_path / "site.yaml"
        site_path.write_text(dedent(site), encoding="utf-8")
    return load_ruleset([folder], site=site_path)


def ruleset(tmp_path: Path, files: Mapping[str, str], valuesets: Mapping[str, str] | None = None,
            site: str | None = None) -> RuleSet:
    """Load and insist the rules are valid (the problems are the assertion message)."""
    result = load(tmp_path, files, valuesets, site)
    assert result.ruleset is not None, "\n".join(map(str, result.problems))
    return result.ruleset


def record(items: Iterable[Mapping[str, Any]], *, drafts: Sequence[Mapping[str, Any]] = (),
           now: datetime = NOW, rules: RuleSet | None = None) -> PatientRecord:
    """A PatientRecord from shorthand items (relative times against ``now``)."""
    expander = Expander(now, PATIENT_ID)
    resources = [expander.patient({"gender": "female", "age": 40})]
    resources += [expander.expand(item) for item in items]
    draft_resources = [expander.expand(item, draft=True) for item in drafts]
    return PatientRecord(resources, drafts=draft_resources, **(rules.record_options() if rules else {}))


def run(rules: RuleSet, items: Iterable[Mapping[str, Any]], *, hook: str = "patient-view",
        drafts: Sequence[Mapping[str, Any]] = (), now: datetime = NOW) -> Evaluation:
    return evaluate(rules, record(items, drafts=drafts, now=now, rules=rules), hook=hook, now=now)


def result_of(evaluation: Evaluation, rule_id: str = "T-01") -> RuleResult:
    return next(r for r in evaluation.results if r.rule.id == rule_id)


def admin(at: str, dose: str | None = "35 mg", medication: str = KETAMINE, **fields: Any) -> dict[str, Any]:
    """Shorthand MedicationAdministration."""
    body: dict[str, Any] = {"medication": medication, "at": at, **fields}
    if dose is not None:
        body["dose"] = dose
    return {"MedicationAdministration": body}


def obs(code: str, at: str, value: Any = None, **fields: Any) -> dict[str, Any]:
    """Shorthand Observation."""
    body: dict[str, Any] = {"code": code, "at": at, **fields}
    if value is not None:
        body["value"] = value
    return {"Observation": body}


def rule_version(rule_id: str) -> str:
    """The version of a bundled rule, read from its file (rules change; tests follow)."""
    path = next((REPO / "rules").glob(f"{rule_id}-*.yaml"))
    return str(yaml.safe_load(path.read_text(encoding="utf-8"))["version"])
