"""Write a back-test's results: summary.json, CSV files and one self-contained report.html with charts."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cds_service.reports import chart, render
from cds_service.simulate import summary
from cds_service.simulate.pipeline import RunResult

MAX_PROBLEMS_LISTED = 1000  # in summary.json and the report; problems.csv has them all


def build_summary(result: RunResult, labels: Mapping[str, Mapping[str, str]], *, export: str,
                  ruleset_versions: Mapping[str, str], plan: Mapping[str, Any]) -> dict[str, Any]:
    """The whole back-test as one JSON document (``labels``: rule set label → {rule id: version})."""
    replays = result.replays  # may be files read back a bucket at a time: iterated, never held whole
    hooks = Counter(row["hook"] for replay in replays for row in replay.rows)
    data: dict[str, Any] = {
        "export": export,
        "plan": plan,
        "patients_in_export": result.patients_in_export,
        "patients_exposed": result.exposed,
        "patients_replayed": len(replays),
        "lines_read": result.lines_read,
        "files_read": result.files_read,
        "files_not_read": result.files_not_read,
        "bad_lines": len(result.problems),
        "problems": [str(p) for p in result.problems[:MAX_PROBLEMS_LISTED]],
        "replayed": {
            "order_sign_calls": hooks["order-sign"],
            "orders": summary.order_count(replays),
            "patient_view_calls": hooks["patient-view"],
            "orders_without_authoredOn": sum(r.undated_orders for r in replays),
            "undated_resources_kept": sum(r.undated_resources for r in replays),
            "patients_without_Patient_resource": sum(1 for r in replays if not r.has_patient),
        },
        "rulesets": {},
    }
    for label, rules in labels.items():
        data["rulesets"][label] = {
            "version": ruleset_versions[label],
            "rules": summary.rule_table(replays, label, rules),
            "alert_burden_per_order_sign": summary.burden(replays, label),
            "cards_by_month": summary.cards_by_month(replays, label),
        }
    if len(labels) == 2:
        base, other = list(labels)
        changes = summary.compare(replays, base, other)
        data["compare"] = {
            "base": base, "other": other,
            "patients_changed": len({c["patient"] for c in changes}),
            "calls_changed": len({(c["patient"], c["at"], c["hook"]) for c in changes}),
            "by_rule": summary.compare_table(changes),
        }
    return data


def write_outputs(out: Path, result: RunResult, data: Mapping[str, Any]) -> list[Path]:
    """summary.json, rules.csv, calls.csv, first_card.csv, problems.csv (+ compare.csv), report.html."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    path = out / "summary.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    written.append(path)
    labels = list(data["rulesets"])
    rule_rows = [_flat_rule(row) for label in labels for row in data["rulesets"][label]["rules"]]
    written.append(_csv(out / "rules.csv", rule_rows))
    written.append(_csv(out / "calls.csv", (
        {"patient": row["patient"], "hook": row["hook"], "at": row["at"], "orders": " ".join(row["orders"]),
         "ruleset": label,
         "cards": " ".join(f"{c['rule']}:{c['indicator']}" for c in row["by"][label]["cards"]),
         "fired": " ".join(f"{c['rule']}:{c['indicator']}" for c in row["by"][label]["fired"]),
         "undecided": " ".join(u["rule"] for u in row["by"][label]["undecided"]),
         "skipped_resources": row["by"][label]["skipped"]}
        for replay in result.replays for row in replay.rows for label in labels
    ), ["patient", "hook", "at", "orders", "ruleset", "cards", "fired", "undecided", "skipped_resources"]))
    written.append(_csv(out / "first_card.csv", [
        {"ruleset": label, **item} for label in labels for item in summary.first_card_delays(result.replays, label)
    ], ["ruleset", "patient", "rule", "version", "first_card", "first_sign", "days"]))
    written.append(_csv(out / "problems.csv", [{"file": p.file, "line": p.line, "problem": p.message}
                                               for p in result.problems], ["file", "line", "problem"]))
    changes: list[dict[str, Any]] = []
    if "compare" in data:
        changes = summary.compare(result.replays, data["compare"]["base"], data["compare"]["other"])
        written.append(_csv(out / "compare.csv", changes,
                            ["patient", "hook", "at", "orders", "rule", "change", "before", "after"]))
    path = out / "report.html"
    path.write_text(report_html(data, changes), encoding="utf-8")
    written.append(path)
    return written


def _flat_rule(row: Mapping[str, Any]) -> dict[str, Any]:
    flat = {"ruleset": row["ruleset"], "rule": row["rule"], "version": row["version"],
            "patients_any": row["patients_any"]}
    flat.update({f"patients_{k}": v for k, v in row["patients"].items()})
    flat.update({f"time_points_{k}": v for k, v in row["time_points"].items()})
    flat.update({"order_sign_cards": row["order_sign_cards"], "cards_per_1000_orders": row["cards_per_1000_orders"],
                 "undecided_time_points": row["undecided_time_points"],
                 "undecided_patients": row["undecided_patients"],
                 "top_missing": "; ".join(f"{m['data']} ({m['count']})" for m in row["top_missing"]),
                 "sign_to_card_patients": row["sign_to_card_days"]["patients"],
                 "sign_to_card_median_days": row["sign_to_card_days"]["median"],
                 "sign_to_card_max_days": row["sign_to_card_days"]["max"]})
    return flat


def _csv(path: Path, rows: Iterable[Mapping[str, Any]], fields: Sequence[str] | None = None) -> Path:
    """Rows written as they come (``fields`` required for a generator)."""
    if fields is None:
        rows = list(rows)
    names = list(fields or (rows[0].keys() if rows else []))  # type: ignore[index]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------- the HTML report


def _cards_over_time(label: str, by_month: Mapping[str, Mapping[str, int]]) -> Any:
    fig, ax = chart.figure(height=3.4)
    months = _month_range({m for series in by_month.values() for m in series})
    for rule, series in by_month.items():
        ax.plot(range(len(months)), [series.get(m, 0) for m in months], marker="o", markersize=3, label=rule)
    step = max(1, len(months) // 12)
    ax.set_xticks(range(0, len(months), step), months[::step], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("cards")
    ax.set_title(f"Cards per month by rule ({label})", fontsize=10)
    if by_month:
        ax.legend(fontsize=7, ncol=2, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        ax.text(0.5, 0.5, "no cards", ha="center", va="center", transform=ax.transAxes)
    return chart.svg(fig, f"Cards per month by rule, rule set {label}")


def _month_range(seen: set[str]) -> list[str]:
    """Every month from the first to the last with a card: a month without cards is a zero, not a gap."""
    if not seen:
        return []
    first, last = min(seen), max(seen)
    year, month = int(first[:4]), int(first[5:7])
    out = []
    while f"{year:04d}-{month:02d}" <= last:
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def _burden(rulesets: Mapping[str, Any]) -> Any:
    fig, ax = chart.figure(height=3.0)
    keys = ("0", "1", "2", "3+")
    width = 0.8 / max(1, len(rulesets))
    for i, (label, info) in enumerate(rulesets.items()):
        counts = info["alert_burden_per_order_sign"]
        bars = ax.bar([k + i * width for k in range(len(keys))], [counts[k] for k in keys], width, label=label)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks([k + width * (len(rulesets) - 1) / 2 for k in range(len(keys))], [f"{k} cards" for k in keys])
    ax.set_ylabel("order-sign calls")
    ax.set_title("Alert burden per ketamine order signed", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    return chart.svg(fig, "Alert burden: cards shown per order-sign call")


def _compare(by_rule: Sequence[Mapping[str, Any]], base: str, other: str) -> Any:
    fig, ax = chart.figure(height=3.0)
    rules = [row["rule"] for row in by_rule]
    kinds = (("appeared", "#2e7d32"), ("disappeared", "#b3261e"), ("indicator changed", "#e8a317"))
    width = 0.27
    for i, (kind, colour) in enumerate(kinds):
        ax.bar([k + i * width for k in range(len(rules))], [row[f"patients {kind}"] for row in by_rule], width,
               label=kind, color=colour)
    ax.set_xticks([k + width for k in range(len(rules))], rules, fontsize=8)
    ax.set_ylabel("patients")
    ax.set_title(f"Patients whose cards change: {base} → {other}", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    if not rules:
        ax.text(0.5, 0.5, "no changes", ha="center", va="center", transform=ax.transAxes)
    return chart.svg(fig, f"Patients whose cards change from {base} to {other}")


def report_html(data: Mapping[str, Any], changes: Sequence[Mapping[str, Any]]) -> str:
    """The committee report: facts of the run, per-rule tables, charts, the compare diff, bad lines."""
    charts = {label: _cards_over_time(label, info["cards_by_month"]) for label, info in data["rulesets"].items()}
    compare = data.get("compare")
    return render(
        "simulate_report.html", package="cds_service.simulate", title="k-bladder back-test", data=data,
        indicators=summary.INDICATORS, over_time=charts, burden=_burden(data["rulesets"]),
        compare_chart=_compare(compare["by_rule"], compare["base"], compare["other"]) if compare else None,
        changes=changes[:500], changes_total=len(changes))
