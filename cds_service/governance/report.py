"""``kbladder report``: what each rule did and how clinicians answered, from the decision log and feedback.

Reading is streamed (the decision log can hold millions of rows); the summary is pure over the rows, so
the same numbers feed the terminal table, the JSON and the HTML page. Charts are drawn by matplotlib as
inline SVG: the HTML file is self-contained (no script, no network) and opens anywhere.
"""

from __future__ import annotations

import html
import io
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cds_service.store.store import StoredFeedback

__all__ = ["Report", "build_report", "render_html", "render_json", "render_text"]

INDICATORS = ("critical", "warning", "info")


@dataclass
class RuleStats:
    """One rule version in one rule set (live or shadow) over the period."""

    rule_set: str
    rule_id: str
    rule_version: str
    rule_set_versions: set[str] = field(default_factory=set)
    calls: int = 0
    shown: Counter[str] = field(default_factory=Counter)  # by indicator (shadow: would have shown)
    in_other_card: int = 0  # live: fired, its card merged into or folded under another rule's card
    silent: int = 0
    not_fired: int = 0
    undecided: int = 0
    missing: Counter[str] = field(default_factory=Counter)
    suppressed: int = 0
    suppressed_why: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    overridden: Counter[str] = field(default_factory=Counter)  # by reason code ("" = no reason)
    not_answered: int = 0
    shadow_only: int = 0  # shadow would have shown, live did not
    live_only: int = 0  # live showed, shadow would not

    @property
    def acceptance(self) -> float | None:
        answered = self.accepted + sum(self.overridden.values())
        return self.accepted / answered if answered else None

    def as_json(self) -> dict[str, Any]:
        return {
            "ruleSet": self.rule_set, "rule": self.rule_id, "version": self.rule_version,
            "ruleSetVersions": sorted(self.rule_set_versions), "calls": self.calls,
            "shown": {i: self.shown[i] for i in INDICATORS if self.shown[i]}, "inOtherCard": self.in_other_card,
            "silent": self.silent,
            "notFired": self.not_fired, "undecided": self.undecided,
            "topMissing": [{"data": k, "calls": v} for k, v in self.missing.most_common(3)],
            "suppressed": self.suppressed, "suppressedWhy": dict(self.suppressed_why.most_common(5)),
            "feedback": {"accepted": self.accepted, "overridden": dict(self.overridden),
                         "notAnswered": self.not_answered},
            "acceptanceRate": None if self.acceptance is None else round(self.acceptance, 4),
            **({"shadowOnly": self.shadow_only, "liveOnly": self.live_only} if self.rule_set == "shadow" else {}),
        }


@dataclass
class Report:
    since: datetime | None
    until: datetime | None
    rule: str | None
    rows: int = 0
    calls: int = 0
    rules: dict[tuple[str, str, str], RuleStats] = field(default_factory=dict)
    cards_per_week: Counter[tuple[str, str]] = field(default_factory=Counter)  # (week start, rule) -> cards
    reasons: Counter[str] = field(default_factory=Counter)  # override reason display/code -> count
    answers_per_week: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    def as_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "rule": self.rule, "decisions": self.rows, "calls": self.calls,
            "rules": [s.as_json() for s in sorted(self.rules.values(), key=_order)],
            "cardsPerWeek": [{"week": w, "rule": r, "cards": n} for (w, r), n in sorted(self.cards_per_week.items())],
            "overrideReasons": dict(self.reasons.most_common()),
            "acceptancePerWeek": [{"week": w, "accepted": a, "answered": n}
                                  for w, (a, n) in sorted(self.answers_per_week.items())],
        }


def _order(stats: RuleStats) -> tuple[str, int, str]:
    return (stats.rule_id, 0 if stats.rule_set == "live" else 1, stats.rule_version)


def _week(when: datetime) -> str:
    return (when - timedelta(days=when.weekday())).date().isoformat()


def build_report(rows: Iterable[Any], feedback: Iterable[StoredFeedback], *, since: datetime | None = None,
                 until: datetime | None = None, rule: str | None = None,
                 on_row: Callable[[int], None] | None = None) -> Report:
    """Summarise decision-log *rows* (any objects with the DecisionRow columns) and *feedback*."""
    report = Report(since, until, rule)
    card_rule: dict[str, tuple[str, str, str]] = {}
    # hook instance -> rule -> (live shown, shadow would show): the live-vs-shadow difference
    per_call: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(lambda: [False, False]))
    shadow_key: dict[str, tuple[str, str, str]] = {}
    live_calls: set[str] = set()
    shadow_calls: set[str] = set()
    for row in rows:
        report.rows += 1
        if on_row is not None:
            on_row(1)
        key = (row.rule_set, row.rule_id, row.rule_version)
        stats = report.rules.get(key)
        if stats is None:
            stats = report.rules[key] = RuleStats(*key)
        stats.rule_set_versions.add(row.rule_set_version)
        stats.calls += 1
        outcome = row.outcome
        live = row.rule_set == "live"
        # Would the rule have shown a card, snoozes and card limits aside? (the live-vs-shadow comparison)
        held_by_feedback = live and outcome == "suppressed" and not (row.detail or "").startswith("suppressed:")
        if outcome == "fired" or held_by_feedback:
            per_call[row.hook_instance][row.rule_id][0 if live else 1] = True
        if outcome == "fired":
            if live and row.card_uuid:
                stats.shown[row.indicator or "info"] += 1
                card_rule[row.card_uuid] = key
                report.cards_per_week[(_week(row.logged_at), row.rule_id)] += 1
            elif live:
                stats.in_other_card += 1
            else:
                stats.shown[row.indicator or "info"] += 1
        elif outcome == "silent":
            stats.silent += 1
        elif outcome == "undecided":
            stats.undecided += 1
            for item in json.loads(row.missing or "[]"):
                stats.missing[str(item).split(":", 1)[0]] += 1
        elif outcome == "suppressed":
            stats.suppressed += 1
            stats.suppressed_why[(row.detail or "").split(" until ", 1)[0]] += 1
        else:
            stats.not_fired += 1
        (live_calls if live else shadow_calls).add(row.hook_instance)
        if not live:
            shadow_key.setdefault(row.rule_id, key)
    report.calls = len(live_calls | shadow_calls)

    for instance in live_calls & shadow_calls:
        for rule_id, (live, shadow) in per_call[instance].items():
            key = shadow_key.get(rule_id)
            if key is None or live == shadow:
                continue
            if shadow:
                report.rules[key].shadow_only += 1
            else:
                report.rules[key].live_only += 1

    answered: set[str] = set()
    for item in feedback:
        key = card_rule.get(item.card_uuid)
        if key is None:
            continue
        stats = report.rules[key]
        answered.add(item.card_uuid)
        week = report.answers_per_week[_week(item.outcome_timestamp)]
        week[1] += 1
        if item.outcome == "accepted":
            stats.accepted += 1
            week[0] += 1
        else:
            stats.overridden[item.reason_code] += 1
            report.reasons[item.reason_display or item.reason_code or "(no reason given)"] += 1
    for uuid, key in card_rule.items():
        if uuid not in answered:
            report.rules[key].not_answered += 1
    return report


# -- text -------------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def render_text(report: Report) -> str:
    """A terminal table: one line per rule version and rule set."""
    head = ["rule", "version", "set", "calls", "shown c/w/i", "silent", "undecided", "top missing", "suppr.",
            "accepted", "overridden", "no answer", "accept %", "shadow+/-"]
    lines = [head]
    for s in sorted(report.rules.values(), key=_order):
        lines.append([
            s.rule_id, s.rule_version, s.rule_set, str(s.calls), "/".join(str(s.shown[i]) for i in INDICATORS),
            str(s.silent), str(s.undecided), ", ".join(k for k, _ in s.missing.most_common(2)) or "—",
            str(s.suppressed), str(s.accepted), str(sum(s.overridden.values())), str(s.not_answered),
            _pct(s.acceptance), f"+{s.shadow_only}/-{s.live_only}" if s.rule_set == "shadow" else "",
        ])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    period = f"{report.since.isoformat() if report.since else 'start'} .. " \
             f"{report.until.isoformat() if report.until else 'now'}"
    summary = f"{report.calls} hook call(s), {report.rows} decision(s), period {period}"
    if report.reasons:
        summary += "\noverride reasons: " + ", ".join(f"{k} ({v})" for k, v in report.reasons.most_common(5))
    return "\n".join([*out, "", summary])


def render_json(report: Report) -> str:
    return json.dumps(report.as_json(), indent=2)


# -- HTML ---------------------------------------------------------------------------------------------------


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _charts(report: Report) -> list[tuple[str, str, str]]:
    """(id, title, inline SVG) for each chart; a chart without data says so instead of drawing nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9})
    charts: list[tuple[str, str, str]] = []

    fig, ax = plt.subplots(figsize=(8, 3.2))
    weeks = sorted({w for w, _ in report.cards_per_week})
    rules = sorted({r for _, r in report.cards_per_week})
    bottom = [0] * len(weeks)
    for rule in rules:
        values = [report.cards_per_week[(w, rule)] for w in weeks]
        ax.bar(weeks, values, bottom=bottom, label=rule)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    if not weeks:
        ax.text(0.5, 0.5, "no cards shown in this period", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=7, ncol=4, loc="upper left")
    ax.set_ylabel("cards shown")
    ax.set_xlabel("week starting")
    charts.append(("cards-per-week", "Cards shown per week, by rule", _svg(fig)))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, max(2.0, 0.4 * len(report.reasons) + 1)))
    reasons = report.reasons.most_common(10)[::-1]
    if reasons:
        ax.barh([r for r, _ in reasons], [n for _, n in reasons], color="#c0504d")
        ax.set_xlabel("overrides")
    else:
        ax.text(0.5, 0.5, "no overrides in this period", ha="center", va="center", transform=ax.transAxes)
    charts.append(("override-reasons", "Override reasons", _svg(fig)))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3))
    weeks = sorted(report.answers_per_week)
    if weeks:
        rates = [report.answers_per_week[w][0] / report.answers_per_week[w][1] * 100 for w in weeks]
        ax.plot(weeks, rates, marker="o", color="#4f81bd")
        ax.set_ylim(0, 100)
        ax.set_ylabel("accepted (% of answered)")
        ax.set_xlabel("week starting")
    else:
        ax.text(0.5, 0.5, "no feedback in this period", ha="center", va="center", transform=ax.transAxes)
    charts.append(("acceptance", "Acceptance over time", _svg(fig)))
    plt.close(fig)

    shadow = [s for s in report.rules.values() if s.rule_set == "shadow" and (s.shadow_only or s.live_only)]
    if shadow:
        fig, ax = plt.subplots(figsize=(8, 3))
        labels = [s.rule_id for s in shadow]
        ax.bar(labels, [s.shadow_only for s in shadow], label="shadow would show, live did not", color="#9bbb59")
        ax.bar(labels, [-s.live_only for s in shadow], label="live showed, shadow would not", color="#8064a2")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylabel("calls")
        ax.legend(fontsize=7)
        charts.append(("shadow-difference", "Shadow rule set against the live one", _svg(fig)))
        plt.close(fig)
    return charts


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f2f2f2}td:first-child,td:nth-child(3)
{text-align:left}figure{margin:1.5em 0}figcaption{font-weight:600;margin-bottom:.4em}"""


def render_html(report: Report) -> str:
    """One self-contained page: summary, charts (inline SVG), and the table."""
    summary = "<br>".join(html.escape(line) for line in render_text(report).split("\n\n", 1)[1].split("\n"))
    head = ["rule", "version", "set", "calls", "shown c/w/i", "in other card", "silent", "undecided", "top missing",
            "suppressed",
            "accepted", "overridden", "not answered", "acceptance", "shadow +/−"]
    body_rows = []
    for s in sorted(report.rules.values(), key=_order):
        cells = [s.rule_id, s.rule_version, s.rule_set, s.calls, "/".join(str(s.shown[i]) for i in INDICATORS),
                 s.in_other_card, s.silent, s.undecided, ", ".join(k for k, _ in s.missing.most_common(2)) or "—",
                 s.suppressed,
                 s.accepted, sum(s.overridden.values()), s.not_answered, _pct(s.acceptance),
                 f"+{s.shadow_only}/−{s.live_only}" if s.rule_set == "shadow" else ""]
        body_rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    figures = "\n".join(
        f'<figure class="chart" id="{cid}"><figcaption>{html.escape(title)}</figcaption>{svg}</figure>'
        for cid, title, svg in _charts(report)
    )
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>kbladder report</title>"
        f"<style>{_CSS}</style></head><body>\n<h1>k-bladder CDS: rules and feedback</h1>\n"
        f"<p>{summary}</p>\n{figures}\n<h2>Per rule</h2>\n<table><thead><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>" + "".join(body_rows) + "</tbody></table>\n</body></html>\n"
    )
