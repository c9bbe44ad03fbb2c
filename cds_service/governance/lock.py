"""Rule changes go live only when proven: the lock file and the project code system.

``rules/rules.lock.json`` maps rule id → version → SHA-256 of the rule file, written by
``kbladder rules lock``. ``rules check`` (and every hot reload) refuses a rule whose content changed while
its version did not, so a card's "rule KB-02 v1.1.0" always means one text. Project codes
(``https://kbladder-cds.org/fhir/CodeSystem/kbladder``) used by a value set must be defined in the project
code system (``rules/codesystem/*.yaml``). Problems come back as :class:`Problem` (``file:line:col``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from cds_service.clinical.valueset import PROJECT
from cds_service.engine.model import RuleSet
from cds_service.engine.yamlpos import Problem

__all__ = ["LOCK_NAME", "governance_problems", "lock_entries", "write_lock"]

LOCK_NAME = "rules.lock.json"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lock_entries(ruleset: RuleSet) -> dict[str, dict[str, str]]:
    """rule id → {version, sha256, file} for the lock file."""
    return {rule.id: {"version": rule.version, "sha256": _digest(Path(rule.file)), "file": Path(rule.file).name}
            for rule in sorted(ruleset.rules, key=lambda r: r.id)}


def write_lock(ruleset: RuleSet, folder: Path) -> Path:
    """Write (or refresh) the lock file in *folder*; returns its path."""
    path = folder / LOCK_NAME
    path.write_text(json.dumps(lock_entries(ruleset), indent=2) + "\n", encoding="utf-8")
    return path


def _lock_problems(ruleset: RuleSet, folders: Sequence[Path]) -> list[Problem]:
    problems: list[Problem] = []
    for folder in folders:
        lock_path = folder / LOCK_NAME
        if not lock_path.is_file():
            continue
        try:
            locked = json.loads(lock_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            problems.append(Problem(str(lock_path), 1, 1, f"unreadable lock file: {exc}"))
            continue
        for rule in ruleset.rules:
            if Path(rule.file).resolve().parent != folder.resolve():
                continue
            entry = locked.get(rule.id)
            if entry is None:
                problems.append(Problem(rule.file, 1, 1, f"{rule.id} is not in {LOCK_NAME}: run `kbladder rules lock`",
                                        severity="warning"))
            elif entry.get("version") == rule.version and entry.get("sha256") != _digest(Path(rule.file)):
                problems.append(Problem(rule.file, 1, 1, f"{rule.id} changed but its version is still {rule.version}:"
                                        " bump the version, then run `kbladder rules lock`"))
            elif entry.get("version") != rule.version:
                problems.append(Problem(rule.file, 1, 1, f"{rule.id} {rule.version} is not locked (lock has "
                                        f"{entry.get('version')}): run `kbladder rules lock`", severity="warning"))
    return problems


def _project_code_problems(ruleset: RuleSet, folders: Sequence[Path]) -> list[Problem]:
    defined: set[str] = set()
    systems = [p for folder in folders for p in sorted((folder / "codesystem").glob("*.yaml"))]
    for path in systems:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if doc.get("url") == PROJECT:
            defined |= {str(c.get("code")) for c in doc.get("concepts") or []}
    if not systems:
        return []
    problems = []
    for valueset in ruleset.valuesets.values():
        for code in valueset.codes(PROJECT):
            if code not in defined:
                problems.append(Problem(f"valueset {valueset.id}", 1, 1, f"project code {code!r} is not defined in "
                                        "the project code system (rules/codesystem/)"))
    return problems


def governance_problems(ruleset: RuleSet, folders: Sequence[Path | str]) -> list[Problem]:
    """Lock-file and project-code problems of a loaded rule set (errors refuse it; warnings inform)."""
    paths = [Path(f) for f in folders if Path(f).is_dir()]
    return _lock_problems(ruleset, paths) + _project_code_problems(ruleset, paths)
