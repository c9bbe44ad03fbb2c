"""What a committee reads from a back-test: per rule and version, who and when it fires, how often per order,
what it could not decide and why, how long after the first warning sign the first card came; and, with a
second rule set, which patients' cards change.

Pure: replay rows in, plain dicts out (written as JSON and CSV by :mod:`cds_service.simulate.output`).
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from cds_service.clinical.timeutil import parse_instant
from cds_service.simulate.replay import PatientReplay

INDICATORS = ("critical", "warning", "info")
TOP_MISSING = 3
_REF = re.compile(r"^([A-Z][A-Za-z]+)/[^\s:]+:\s*")


def missing_kind(text: str) -> str:
    """``MedicationAdministration/x-ma-7: no dose recorded`` → ``MedicationAdministration: no dose recorded``:
    what is missing, counted across patients (the resource id is one patient's, never a category)."""
    return _REF.sub(r"\1: ", text)


def _rows(replays: Iterable[PatientReplay]) -> Iterable[dict[str, Any]]:
    for replay in replays:
        yield from replay.rows


def order_count(replays: Iterable[PatientReplay]) -> int:
    """Ketamine/esketamine orders replayed (an order-sign call may sign several)."""
    return sum(len(row["orders"]) for row in _rows(replays) if row["hook"] == "order-sign")


def rule_table(replays: Iterable[PatientReplay], label: str, rules: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per rule of rule set ``label`` (``rules``: id → version), every rule listed even if silent."""
    orders = order_count(replays)
    patients: dict[tuple[str, str], set[str]] = defaultdict(set)
    moments: Counter[tuple[str, str]] = Counter()
    order_cards: Counter[str] = Counter()
    undecided_moments: Counter[str] = Counter()
    undecided_patients: dict[str, set[str]] = defaultdict(set)
    missing: dict[str, Counter[str]] = defaultdict(Counter)
    for row in _rows(replays):
        verdict = row["by"][label]
        for card in verdict["fired"]:
            patients[(card["rule"], card["indicator"])].add(row["patient"])
            moments[(card["rule"], card["indicator"])] += 1
            if row["hook"] == "order-sign":
                order_cards[card["rule"]] += 1
        for item in verdict["undecided"]:
            undecided_moments[item["rule"]] += 1
            undecided_patients[item["rule"]].add(row["patient"])
            missing[item["rule"]].update(missing_kind(m) for m in item["missing"] or ["(data incomplete)"])
    delays = first_card_delays(replays, label)
    table = []
    for rule, version in sorted(rules.items()):
        days = [d["days"] for d in delays if d["rule"] == rule and d["days"] is not None]
        table.append({
            "ruleset": label,
            "rule": rule,
            "version": version,
            "patients": {ind: len(patients[(rule, ind)]) for ind in INDICATORS},
            "patients_any": len(set().union(*(patients[(rule, ind)] for ind in INDICATORS))),
            "time_points": {ind: moments[(rule, ind)] for ind in INDICATORS},
            "order_sign_cards": order_cards[rule],
            "cards_per_1000_orders": round(1000 * order_cards[rule] / orders, 1) if orders else None,
            "undecided_time_points": undecided_moments[rule],
            "undecided_patients": len(undecided_patients[rule]),
            "top_missing": [{"data": what, "count": n} for what, n in missing[rule].most_common(TOP_MISSING)],
            "sign_to_card_days": {
                "patients": len(days),
                "median": round(statistics.median(days), 1) if days else None,
                "max": round(max(days), 1) if days else None,
            },
        })
    return table


def first_card_delays(replays: Iterable[PatientReplay], label: str) -> list[dict[str, Any]]:
    """Per patient and rule: the first card, the first warning sign in its evidence, and the days between.

    The warning sign is the earliest dated non-medication evidence of the first card (a rule that fires on
    exposure alone has none: days is None, never a made-up zero).
    """
    out = []
    for replay in replays:
        first: dict[str, tuple[datetime, dict[str, Any]]] = {}
        for row in replay.rows:
            at = parse_instant(row["at"])
            for card in row["by"][label]["fired"]:
                if card["rule"] not in first or at < first[card["rule"]][0]:
                    first[card["rule"]] = (at, card)
        for rule, (at, card) in sorted(first.items()):
            sign = parse_instant(card["sign"]) if card.get("sign") else None
            out.append({"patient": replay.patient, "rule": rule, "version": card["version"],
                        "first_card": row_time(at), "first_sign": row_time(sign) if sign else None,
                        "days": round((at - sign).total_seconds() / 86400, 1) if sign else None})
    return out


def row_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def burden(replays: Iterable[PatientReplay], label: str) -> dict[str, int]:
    """Alert burden per order: how many order-sign calls showed 0, 1, 2, 3+ cards."""
    counts: Counter[str] = Counter()
    for row in _rows(replays):
        if row["hook"] == "order-sign":
            n = len(row["by"][label]["cards"])
            counts["3+" if n >= 3 else str(n)] += 1
    return {key: counts[key] for key in ("0", "1", "2", "3+")}


def cards_by_month(replays: Iterable[PatientReplay], label: str) -> dict[str, dict[str, int]]:
    """rule → month (YYYY-MM) → replayed calls that month at which the rule fired (showed a card)."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for row in _rows(replays):
        for card in row["by"][label]["fired"]:
            out[card["rule"]][row["at"][:7]] += 1
    return {rule: dict(sorted(months.items())) for rule, months in sorted(out.items())}


def compare(replays: Iterable[PatientReplay], base: str, other: str) -> list[dict[str, Any]]:
    """Every replayed call whose cards differ between two rule sets: appeared, disappeared, indicator changed."""
    changes = []
    for row in _rows(replays):
        before = {c["rule"]: c["indicator"] for c in row["by"][base]["fired"]}
        after = {c["rule"]: c["indicator"] for c in row["by"][other]["fired"]}
        for rule in sorted(set(before) | set(after)):
            if before.get(rule) == after.get(rule):
                continue
            kind = ("appeared" if rule not in before else "disappeared" if rule not in after
                    else "indicator changed")
            changes.append({"patient": row["patient"], "hook": row["hook"], "at": row["at"],
                            "orders": " ".join(row["orders"]), "rule": rule, "change": kind,
                            "before": before.get(rule, ""), "after": after.get(rule, "")})
    return changes


def compare_table(changes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per rule: patients (and calls) whose card appeared, disappeared or changed indicator."""
    patients: dict[tuple[str, str], set[str]] = defaultdict(set)
    calls: Counter[tuple[str, str]] = Counter()
    for change in changes:
        patients[(change["rule"], change["change"])].add(change["patient"])
        calls[(change["rule"], change["change"])] += 1
    kinds = ("appeared", "disappeared", "indicator changed")
    return [{"rule": rule, **{f"patients {k}": len(patients[(rule, k)]) for k in kinds},
             **{f"calls {k}": calls[(rule, k)] for k in kinds}}
            for rule in sorted({r for r, _ in patients})]
