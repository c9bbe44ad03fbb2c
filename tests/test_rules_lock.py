"""Rule changes go live only when proven: the lock file (content changed without a version bump is refused),
project codes must be defined, and a hot reload keeps the last good set when the new one fails its own rule
tests (``/healthz`` then says why)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cds_service.cli import main
from cds_service.rules_state import RulesState

REPO = Path(__file__).resolve().parents[1]
KB02 = "KB-02-hematuria-exposed.yaml"


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    shutil.copytree(REPO / "rules", folder)
    return folder


def cli(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def edit(path: Path, old: str, new: str, *, bump: bool = False) -> None:
    text = path.read_text()
    assert old in text
    text = text.replace(old, new, 1)
    if bump:
        text = re.sub(r"^version: (\d+)\.(\d+)\.(\d+)$", lambda m: f"version: {m[1]}.{int(m[2]) + 1}.0", text,
                      count=1, flags=re.M)
    path.write_text(text)


def test_a_changed_rule_needs_a_version_bump(rules: Path) -> None:
    assert cli("rules", "lock", str(rules)).exit_code == 0
    assert cli("rules", "check", str(rules)).exit_code == 0
    edit(rules / KB02, "description: >-\n", "description: >-\n  Reworded.\n")
    refused = cli("rules", "check", str(rules))
    assert refused.exit_code == 1
    assert f"{KB02}:1:1: KB-02 changed but its version is still" in refused.output
    edit(rules / KB02, "Reworded.", "Reworded.", bump=True)
    bumped = cli("rules", "check", str(rules))
    assert bumped.exit_code == 0 and "warning: KB-02" in bumped.output and "rules lock" in bumped.output
    assert cli("rules", "lock", str(rules)).exit_code == 0
    clean = cli("rules", "check", str(rules))
    assert clean.exit_code == 0 and "warning: KB-02" not in clean.output


def test_project_codes_must_be_defined(rules: Path) -> None:
    edit(rules / "valuesets" / "pvr.yaml", "code: pvr,", "code: pvr-undefined,")
    refused = cli("rules", "check", str(rules))
    assert refused.exit_code == 1 and "'pvr-undefined' is not defined in the project code system" in refused.output


def test_hot_reload_goes_live_only_when_proven(rules: Path) -> None:
    cli("rules", "lock", str(rules))
    state = RulesState([rules], reload_interval_s=0, require_proof=True)
    good = state.ruleset
    assert good is not None
    # A threshold change that its own rule tests reject (bumped and locked, so only the tests object).
    edit(rules / KB02, "rbc_micro: {type: quantity, default: 3,", "rbc_micro: {type: quantity, default: 30,",
         bump=True)
    cli("rules", "lock", str(rules))
    assert state.reload() is False
    assert state.ruleset is good
    assert any("rule test failed" in e for e in state.current.last_error)
    # Content changed without a version bump: refused by the lock file.
    edit(rules / KB02, "default: 30,", "default: 3,")
    assert state.reload() is False and any("version is still" in e for e in state.current.last_error)
    # Bumped, locked and passing its tests: live.
    edit(rules / KB02, "default: 3,", "default: 3,", bump=True)
    cli("rules", "lock", str(rules))
    assert state.reload() is True and state.ruleset is not good and not state.current.last_error
    # Without the requirement (setting reload_requires_tests: false) a failing set goes live as before.
    loose = RulesState([rules], reload_interval_s=0)
    edit(rules / KB02, "rbc_micro: {type: quantity, default: 3,", "rbc_micro: {type: quantity, default: 30,",
         bump=True)
    assert loose.reload() is True
