"""``kbladder report`` after replaying the synthetic cohort for three weeks with a shadow rule set and
scripted feedback: the text table, the JSON numbers against what the replay did, the store chosen as
``kbladder serve`` chooses it, PostgreSQL, and the HTML page in a real headless Chromium."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import open_page
from click.testing import CliRunner

from cds_service.cli import main
from cds_service.demo import from_cohort
from cds_service.governance.replay import Clock, candidate_rules, replay_weeks, serving
from cds_service.synth import generate_cohort

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"


def replay(database_url: str, tmp: Path, *, weeks: int, patients: int | None = None) -> Counter[str]:
    now, cohort = from_cohort(generate_cohort(1))
    clock = Clock(now)
    with serving(RULES, database_url, clock, shadow_rules=candidate_rules(RULES, tmp / "candidate")) as (url, gov):
        counts = replay_weeks(cohort[:patients] if patients else cohort, url, clock, weeks=weeks)
        assert gov.flush()
    return counts


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Counter[str]]]:
    tmp = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{tmp / 'kbladder.sqlite3'}"
    yield url, replay(url, tmp, weeks=3)


def report(*args: str, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(main, ["report", *args], env=env, catch_exceptions=False)
    return result


def test_text_report_has_a_line_per_rule_version_and_rule_set(replayed: tuple[str, Counter[str]]) -> None:
    url, _ = replayed
    result = report("--database-url", url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["rule", "version", "set", "calls"]
    assert any(line.startswith("KB-02 ") and " live " in line for line in lines)
    assert any(line.startswith("KB-04 ") and "9.0.0-candidate" in line and " shadow " in line for line in lines)
    assert "override reasons:" in result.output


def test_json_report_counts_what_the_replay_did(replayed: tuple[str, Counter[str]]) -> None:
    url, counts = replayed
    result = report("--database-url", url, "--format", "json")
    data = json.loads(result.stdout)
    live = [r for r in data["rules"] if r["ruleSet"] == "live"]
    shadow = [r for r in data["rules"] if r["ruleSet"] == "shadow"]
    assert sum(sum(r["shown"].values()) for r in live) == counts["cards"]
    assert sum(r["feedback"]["accepted"] for r in live) == counts["accepted"]
    assert sum(sum(r["feedback"]["overridden"].values()) for r in live) == counts["overridden"]
    unanswered = counts["cards"] - counts["accepted"] - counts["overridden"]
    assert sum(r["feedback"]["notAnswered"] for r in live) == unanswered
    assert sum(r["suppressed"] for r in live) > 0  # the overrides and accepts snoozed later weeks' cards
    assert shadow and all(r["calls"] > 0 for r in shadow)
    kb04 = next(r for r in shadow if r["rule"] == "KB-04")
    assert kb04["version"] == "9.0.0-candidate" and kb04["shadowOnly"] >= 1  # the lower threshold fires more
    assert data["calls"] == counts["calls"]
    rated = [r for r in live if r["acceptanceRate"] is not None]
    assert rated and all(0 <= r["acceptanceRate"] <= 1 for r in rated)
    assert {w["week"] for w in data["cardsPerWeek"]} and len({w["week"] for w in data["cardsPerWeek"]}) >= 3


def test_period_and_rule_filters(replayed: tuple[str, Counter[str]]) -> None:
    url, _ = replayed
    one = json.loads(report("--database-url", url, "--format", "json", "--rule", "KB-02").stdout)
    assert {r["rule"] for r in one["rules"]} == {"KB-02"}
    empty = json.loads(report("--database-url", url, "--format", "json", "--since", "2100-01-01").stdout)
    assert empty["rules"] == [] and empty["decisions"] == 0
    bad = CliRunner().invoke(main, ["report", "--database-url", url, "--since", "last tuesday"])
    assert bad.exit_code == 2 and "--since" in bad.output


def test_store_is_chosen_as_serve_chooses_it(replayed: tuple[str, Counter[str]], tmp_path: Path) -> None:
    url, _ = replayed
    by_env = report("--format", "json", env={"KBLADDER_DATABASE_URL": url})
    config = tmp_path / "kbladder.yaml"
    config.write_text(f"database_url: {url}\n")
    by_config = report("--format", "json", "--config", str(config))
    assert json.loads(by_env.stdout)["decisions"] == json.loads(by_config.stdout)["decisions"] > 0


def test_html_report_renders_every_chart_in_chromium(replayed: tuple[str, Counter[str]], browser: object,
                                                     tmp_path: Path) -> None:
    url, _ = replayed
    out = tmp_path / "report.html"
    assert report("--database-url", url, "--format", "html", "--out", str(out)).exit_code == 0
    page = out.read_text()
    assert "<script" not in page and "http://" not in page.split("<svg", 1)[0]  # self-contained
    seen = open_page(browser, out, screenshot=tmp_path / "report.png", height=2400)
    assert seen.errors == []
    charts = seen.count("figure.chart")
    assert charts == 4  # cards per week, override reasons, acceptance over time, shadow vs live
    assert seen.count("figure.chart svg") == charts
    for cid in ("cards-per-week", "override-reasons", "acceptance"):
        assert seen.count(f"#{cid} svg path") > 3, cid  # bars / lines were drawn, not an empty frame
    assert "KB-02" in seen.text()


def test_report_over_postgresql(database_url: str, tmp_path: Path) -> None:
    counts = replay(database_url, tmp_path, weeks=2, patients=8)
    data = json.loads(report("--database-url", database_url, "--format", "json").stdout)
    assert data["calls"] == counts["calls"]
    assert sum(sum(r["shown"].values()) for r in data["rules"] if r["ruleSet"] == "live") == counts["cards"]
