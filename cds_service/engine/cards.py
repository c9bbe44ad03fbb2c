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

from cds_service.clinical import exposure as ex
from cds_service.engine.context import RuleContext
from cds_service.engine.display import display, exposure_phrase
from cds_service.engine.evaluate import Evaluation, RuleResult
from cds_service.engine.model import Rule, Suggestion
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
    return {
        "rule": {"id": rule.id, "version": rule.version, "title": rule.title},
        "params": {name: _show(p.value) for name, p in rule.parameters.items()},
        "cond": {name: o.value for name, o in result.conditions.items()},
        "holds": {name: o.truth is Truth.TRUE for name, o in result.conditions.items()},
        "course": course_facts(ctx) if ctx is not None else dict(_NO_COURSE),
        "tier": result.fired.indicator if result.fired else "",
    }


_NO_COURSE: dict[str, Any] = {"sessions": 0, "planned": 0, "days": 0, "start": "", "mg": 0, "drug": "ketamine",
                              "phrase": "ketamine exposure"}


def course_facts(ctx: RuleContext) -> dict[str, Any]:
    """The latest course in numbers and in words (``course.phrase``) for card templates.

    ``sessions`` counts administrations only: a use statement or a take-home supply is one record of
    months of use, so "1 ketamine session in 1029 days" would misstate it; the phrase says
    "daily ketamine use for 2.8 years, about 1 g a day" instead.
    """
    sessions = ctx.course_sessions()
    if not sessions:
        return dict(_NO_COURSE, drug=course_drug(ctx, sessions), phrase=f"{course_drug(ctx, sessions)} exposure")
    given = [s for s in sessions if not s.planned]
    administered = [s for s in given if ex.is_session(s)]
    lasting = [s for s in given if not ex.is_session(s)]
    first = sessions[0].start
    last = max(s.end for s in given) if given else first
    days = max(1, round((max(last, first) - first).total_seconds() / 86400))
    drug = course_drug(ctx, sessions)
    span = 0
    if administered:
        span = max(1, round((administered[-1].end - administered[0].start).total_seconds() / 86400))
    phrase = exposure_phrase(
        drug,
        sessions=len(administered),
        span_days=span,
        statements=[_use_of(s, ctx) for s in lasting],
    )
    if not given:
        phrase = f"a first {drug} order"
    return {
        "sessions": len(administered),
        "planned": len(sessions) - len(given),
        "days": days,
        "start": first.date().isoformat(),
        "mg": round(sum(s.dose.mg or 0 for s in given)),
        "drug": drug,
        "phrase": phrase,
    }


def course_drug(ctx: RuleContext, sessions: Sequence[ex.Session]) -> str:
    """"esketamine" when every session of the course is esketamine, else "ketamine"."""
    refs = {s.ref for s in sessions}
    substances = set()
    for key, data in ctx.rule.data.items():
        if data.is_medication and data.valueset.substance and any(s.ref in refs for s in ctx.sessions(key)):
            substances.add(data.valueset.substance)
    return "esketamine" if substances == {"esketamine"} else "ketamine"


def _use_of(session: ex.Session, ctx: RuleContext) -> tuple[float, float | None, bool]:
    """(days, mg per day, taken at least daily) of a use statement or supply."""
    days = (session.end - session.start).total_seconds() / 86400
    per_day = session.dose.mg / max(days, 1.0) if session.dose.mg is not None else None
    daily = False
    rtype, _, rid = session.ref.partition("/")
    for ref, resource in ctx.record.by_type.get(rtype, ()):
        if ref == session.ref or resource.get("id") == rid:
            dosages = resource.get("dosage") or resource.get("dosageInstruction") or [{}]
            first = dosages[0] if isinstance(dosages, list) and dosages and isinstance(dosages[0], Mapping) else {}
            timing = first.get("timing") if isinstance(first.get("timing"), Mapping) else {}
            repeat = timing.get("repeat") if isinstance(timing.get("repeat"), Mapping) else {}
            rate = ex.doses_per_day(repeat)
            daily = rate is not None and rate >= 1
            break
    return days, per_day, daily


def _show(value: Any) -> Any:
    """A parameter as templates print it: numbers stay numbers (for arithmetic), the rest human text."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int | float | bool):
        return value
    return display(value)


def _cell(text: str) -> str:
    return str(display(text)).replace("|", "\\|").replace("\n", " ")


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
