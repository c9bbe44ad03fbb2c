"""Cards from fired rules: summary, evidence table, suggestions, override reasons, links.

Every card names the rule and version that produced it (``source.topic`` and an
extension), carries the evidence both as a Markdown table for the clinician and as
machine-readable references, and says what data was missing. Optional fields with no
value are omitted (checklist G2).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cds_service.clinical.timeutil import duration_seconds, format_duration
from cds_service.engine.evaluate import Evaluation, RuleResult
from cds_service.engine.model import Ordinal, Quantity, Rule, Suggestion
from cds_service.engine.trace import Evidence, Truth

SUMMARY_MAX = 139
EXT = "org.kbladder-cds"


@dataclass(frozen=True, slots=True)
class CardSettings:
    """Site-level card settings (the rule files say what, the site says who is speaking)."""

    source_label: str = "k-bladder CDS"
    source_url: str | None = None
    topic_system: str = "https://kbladder-cds.org/fhir/CodeSystem/rule"


def template_context(result: RuleResult) -> dict[str, Any]:
    """Variables a card template sees: rule, params, cond (values), holds (truths), course, tier."""
    rule = result.rule
    ctx = result.context
    course: dict[str, Any] = {"sessions": 0, "planned": 0, "days": 0, "start": "", "mg": 0}
    if ctx is not None:
        sessions = ctx.course_sessions()
        actual = [s for s in sessions if not s.planned]
        if sessions:
            last = max(s.end for s in actual) if actual else sessions[0].start
            course = {
                "sessions": len(actual),
                "planned": len(sessions) - len(actual),
                "days": max(1, round((max(last, sessions[0].start) - sessions[0].start).total_seconds() / 86400)),
                "start": sessions[0].start.date().isoformat(),
                "mg": round(sum(s.dose.mg or 0 for s in actual)),
            }
    return {
        "rule": {"id": rule.id, "version": rule.version, "title": rule.title},
        "params": {name: _show(p.value) for name, p in rule.parameters.items()},
        "cond": {name: o.value for name, o in result.conditions.items()},
        "holds": {name: o.truth is Truth.TRUE for name, o in result.conditions.items()},
        "course": course,
        "tier": result.fired.indicator if result.fired else "",
    }


def _show(value: Any) -> Any:
    if isinstance(value, Quantity | Ordinal):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int | float | str | bool):
        return value
    return format_duration(duration_seconds(value))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def evidence_rows(result: RuleResult) -> list[Evidence]:
    """Evidence of the fired tier, de-duplicated, in time order."""
    if result.fired is None:
        return []
    outcome = next((t.outcome for t in result.tiers if t.indicator == result.fired.indicator), None)
    seen, rows = set(), []
    for row in outcome.evidence if outcome else []:
        key = (row.ref, row.note)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return sorted(rows, key=lambda r: (r.time is None, r.time or datetime.min))


def evidence_table(rows: Sequence[Evidence]) -> str:
    """The Markdown evidence table: date, item, value (plus a note column when any row has one)."""
    if not rows:
        return ""
    with_notes = any(r.note for r in rows)
    head = "| Date | Item | Value |" + (" Note |" if with_notes else "")
    rule = "|---|---|---|" + ("---|" if with_notes else "")
    lines = [head, rule]
    for row in rows:
        date = row.time.date().isoformat() if row.time else "—"
        line = f"| {date} | {_cell(row.item)} | {_cell(row.value) or '—'} |"
        if with_notes:
            line += f" {_cell(row.note)} |"
        lines.append(line)
    return "\n".join(lines)


def build_card(
    result: RuleResult,
    *,
    patient_id: str | None,
    settings: CardSettings = CardSettings(),
    data_gaps: Sequence[str] = (),
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> dict[str, Any]:
    """One CDS Hooks card for one fired rule."""
    rule, tier = result.rule, result.fired
    assert tier is not None, "only fired rules become cards"
    variables = template_context(result)
    summary = (tier.summary or rule.card.summary).render(variables).strip()
    if len(summary) > SUMMARY_MAX:
        summary = summary[: SUMMARY_MAX - 1].rstrip() + "…"
    rows = evidence_rows(result)
    detail_parts = []
    template = tier.detail or rule.card.detail
    if template is not None:
        detail_parts.append(template.render(variables).strip())
    if rows:
        detail_parts.append("**Evidence**\n\n" + evidence_table(rows))
    gaps = [*result.missing, *data_gaps]
    if gaps:
        detail_parts.append(
            "**Data not available** (advice based on partial data):\n\n" + "\n".join(f"- {_cell(g)}" for g in gaps)
        )
    detail_parts.append(_footer(rule, tier.indicator))
    card: dict[str, Any] = {
        "uuid": new_id(),
        "summary": summary,
        "indicator": tier.indicator,
        "detail": "\n\n".join(p for p in detail_parts if p),
        "source": _source(rule, settings),
    }
    suggestions = [
        s
        for s in (
            _suggestion(sugg, result, patient_id, new_id)
            for sugg in rule.card.suggestions
            if tier.indicator in sugg.tiers
        )
        if s
    ]
    if suggestions:
        card["suggestions"] = suggestions
        recommended = sum(1 for s in suggestions if s.get("isRecommended"))
        card["selectionBehavior"] = "any" if recommended > 1 else rule.card.selection
    if rule.card.override_reasons:
        card["overrideReasons"] = [
            {"system": r.system, "code": r.code, "display": r.display} for r in rule.card.override_reasons
        ]
    links = [_link(link) for link in rule.card.links]
    if links:
        card["links"] = links
    card["extension"] = {
        f"{EXT}.rule": {"id": rule.id, "version": rule.version, "indicator": tier.indicator, "title": rule.title},
        **({f"{EXT}.evidence": [row.as_json() for row in rows]} if rows else {}),
        **({f"{EXT}.missingData": gaps} if gaps else {}),
    }
    return card


def _footer(rule: Rule, indicator: str) -> str:
    refs = "; ".join(f"{r.citation} [{r.strength}]" for r in rule.references)
    return f"*Rule {rule.id} v{rule.version} ({rule.title}), tier {indicator}. Evidence: {refs}*"


def _source(rule: Rule, settings: CardSettings) -> dict[str, Any]:
    source: dict[str, Any] = {
        "label": settings.source_label,
        "topic": {"system": settings.topic_system, "code": rule.id, "display": f"{rule.title} (v{rule.version})"},
    }
    if settings.source_url:
        source["url"] = settings.source_url
    return source


def _link(link: Any) -> dict[str, Any]:
    data = {"label": link.label, "url": link.url, "type": link.type}
    if link.type == "smart" and link.app_context:
        data["appContext"] = link.app_context
    return data


def _suggestion(
    suggestion: Suggestion, result: RuleResult, patient_id: str | None, new_id: Callable[[], str]
) -> dict[str, Any] | None:
    actions: list[dict[str, Any]] = []
    for action in suggestion.actions:
        if action.type == "create" and action.resource is not None:
            resource = copy.deepcopy(dict(action.resource))
            if patient_id and "subject" not in resource:
                resource["subject"] = {"reference": f"Patient/{patient_id}"}
            actions.append({"type": "create", "description": action.description, "resource": resource})
            continue
        record = result.context.record if result.context else None
        drafts = record.draft_matches(result.rule.data[action.draft].valueset) if record and action.draft else []
        for ref, draft, _ in drafts:
            if action.type == "delete":
                actions.append({"type": "delete", "description": action.description, "resourceId": ref})
            else:
                updated = _merge(copy.deepcopy(dict(draft)), action.patch or {})
                actions.append({"type": "update", "description": action.description, "resource": updated})
    if not actions:
        return None  # e.g. "change the draft order" on patient-view, where there is no draft
    data: dict[str, Any] = {"label": suggestion.label, "uuid": new_id(), "actions": actions}
    if suggestion.recommended:
        data["isRecommended"] = True
    return data


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def build_cards(
    evaluation: Evaluation,
    *,
    patient_id: str | None,
    settings: CardSettings = CardSettings(),
    data_gaps: Sequence[str] = (),
    max_cards: int | None = None,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> list[dict[str, Any]]:
    """Cards for every shown result, strongest first, at most ``max_cards``."""
    shown = evaluation.shown()
    if max_cards is not None:
        shown = shown[:max_cards]
    return [build_card(r, patient_id=patient_id, settings=settings, data_gaps=data_gaps, new_id=new_id) for r in shown]
