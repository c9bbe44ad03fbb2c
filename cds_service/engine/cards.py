"""Cards from fired rules: summary, evidence table, suggestions, override reasons, links.

Every card names the rule and version that produced it (``source.topic`` and an
extension), carries the evidence both as a Markdown table for the clinician and as
machine-readable references, and says what data was missing. Optional fields with no
value are omitted (checklist G2).
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cds_service.clinical import exposure as ex
from cds_service.clinical.booking import booking_of
from cds_service.engine.context import RuleContext
from cds_service.engine.display import display, exposure_phrase
from cds_service.engine.evaluate import Evaluation, RuleResult
from cds_service.engine.model import Reference, Suggestion
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
    """Variables a card template sees: rule, params, cond (values), holds (truths), course, tier, hook."""
    rule = result.rule
    ctx = result.context
    return {
        "rule": {"id": rule.id, "version": rule.version, "title": rule.title},
        "params": {name: _show(p.value) for name, p in rule.parameters.items()},
        "cond": {name: o.value for name, o in result.conditions.items()},
        "holds": {name: o.truth is Truth.TRUE for name, o in result.conditions.items()},
        "course": course_facts(ctx) if ctx is not None else dict(_NO_COURSE),
        "tier": result.fired.indicator if result.fired else "",
        "hook": ctx.hook if ctx is not None else "",
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


# ------------------------------------------------------------------ one card before rendering


@dataclass(slots=True)
class CardDraft:
    """One card before it is rendered: what composition merges, folds and de-duplicates.

    ``rules`` are the rules the card speaks for (the first is the one it is named after); ``also``
    are other findings on the same clinical topic, ``folded`` the summaries of cards over the
    per-response limit, each line naming its rule and version.
    """

    indicator: str
    summary: str
    body: str
    topic: str
    source_code: str
    source_display: str
    rules: list[dict[str, Any]]
    rows: list[Evidence] = field(default_factory=list)
    sessions: dict[str, ex.Session] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)
    suggestions: list[dict[str, Any]] = field(default_factory=list)
    selection: str = "any"
    override_reasons: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)
    also: list[str] = field(default_factory=list)
    folded: list[str] = field(default_factory=list)
    extension: dict[str, Any] = field(default_factory=dict)
    undecided: list[dict[str, Any]] = field(default_factory=list)  # rules whose checks could not be completed
    uuid: str = ""  # drawn before the suggestions', so injected ids number a card before its suggestions


def evidence_rows(result: RuleResult) -> list[Evidence]:
    """Evidence of the fired tier, each resource once (notes of repeated rows joined)."""
    if result.fired is None:
        return []
    # The tier that held, not the first tier of that indicator: a rule may have two tiers of one indicator.
    outcome = next((t.outcome for t in reversed(result.tiers)
                    if t.indicator == result.fired.indicator and t.outcome.truth is Truth.TRUE), None)
    return merge_rows(outcome.evidence if outcome else [])


def merge_rows(rows: Sequence[Evidence]) -> list[Evidence]:
    """Each resource once: a Condition matched by two conditions is one row, its notes joined."""
    merged: dict[str, Evidence] = {}
    for row in rows:
        key = row.ref or f"{row.item}|{row.time}"
        seen = merged.get(key)
        if seen is None:
            merged[key] = row
        elif row.note and row.note not in seen.note.split("; "):
            merged[key] = replace(seen, note="; ".join(n for n in (seen.note, row.note) if n))
    return list(merged.values())


def session_index(result: RuleResult) -> dict[str, ex.Session]:
    """The sessions a rule read, by resource reference (for totals in the evidence table)."""
    ctx = result.context
    if ctx is None:
        return {}
    return {s.ref: s for key, data in result.rule.data.items() if data.is_medication
            for s in ctx.sessions(key)}


def draft_card(
    result: RuleResult,
    *,
    patient_id: str | None,
    data_gaps: Sequence[str] = (),
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> CardDraft:
    """The draft of one fired rule's card: templates rendered, evidence and suggestions gathered."""
    rule, tier = result.rule, result.fired
    assert tier is not None, "only fired rules become cards"
    card_id = new_id()
    variables = template_context(result)
    summary = (tier.summary or rule.card.summary).render(variables).strip()
    template = tier.detail or rule.card.detail
    body = template.render(variables).strip() if template is not None else ""
    suggestions = [
        s
        for s in (
            _suggestion(sugg, result, patient_id, new_id)
            for sugg in rule.card.suggestions
            if tier.indicator in sugg.tiers
        )
        if s
    ]
    return CardDraft(
        indicator=tier.indicator,
        summary=" ".join(summary.split()),
        body=body,
        topic=rule.topic or rule.id,
        source_code=rule.id,
        source_display=f"{rule.title} (v{rule.version})",
        rules=[{"id": rule.id, "version": rule.version, "indicator": tier.indicator, "title": rule.title}],
        rows=evidence_rows(result),
        sessions=session_index(result),
        gaps=list(dict.fromkeys([*result.missing, *data_gaps])),
        suggestions=suggestions,
        selection=rule.card.selection,
        override_reasons=[{"system": r.system, "code": r.code, "display": r.display}
                          for r in rule.card.override_reasons],
        links=[_link(link) for link in rule.card.links],
        references=list(rule.references),
        uuid=card_id,
    )


def build_card(
    result: RuleResult,
    *,
    patient_id: str | None,
    settings: CardSettings = CardSettings(),
    data_gaps: Sequence[str] = (),
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> dict[str, Any]:
    """One CDS Hooks card for one fired rule."""
    draft = draft_card(result, patient_id=patient_id, data_gaps=data_gaps, new_id=new_id)
    return render_card(draft, settings=settings, new_id=new_id)


def render_card(
    draft: CardDraft,
    *,
    settings: CardSettings = CardSettings(),
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> dict[str, Any]:
    """A CDS Hooks card from its draft: Markdown detail that reads the same in CommonMark and GFM."""
    from cds_service.engine.evidence import evidence_section  # the table layout lives with its limits

    summary = draft.summary
    if len(summary) > SUMMARY_MAX:
        summary = summary[: SUMMARY_MAX - 1].rstrip() + "…"
    parts = [draft.body]
    if draft.also:
        parts.append("**Also on this topic**\n\n" + "\n".join(f"- {_cell(line)}" for line in draft.also))
    parts.append(evidence_section(draft.rows, draft.sessions))
    if draft.folded:
        parts.append("**Other alerts**\n\n" + "\n".join(f"- {_cell(line)}" for line in draft.folded))
    if draft.gaps:
        parts.append(
            "**Data not available** (advice based on partial data):\n\n"
            + "\n".join(f"- {_cell(g)}" for g in draft.gaps)
        )
    parts.append(footer(draft))
    card: dict[str, Any] = {
        "uuid": draft.uuid or new_id(),
        "summary": summary,
        "indicator": draft.indicator,
        "detail": blank_line_before_blocks("\n\n".join(p for p in parts if p)),
        "source": _source(draft, settings),
    }
    if draft.suggestions:
        card["suggestions"] = draft.suggestions
        recommended = sum(1 for s in draft.suggestions if s.get("isRecommended"))
        card["selectionBehavior"] = "any" if recommended > 1 else draft.selection
    if draft.override_reasons:
        card["overrideReasons"] = draft.override_reasons
    if draft.links:
        card["links"] = draft.links
    first = draft.rules[0] if draft.rules else None
    card["extension"] = {
        **({f"{EXT}.rule": first} if first else {}),
        **({f"{EXT}.rules": draft.rules} if len(draft.rules) > 1 else {}),
        **({f"{EXT}.evidence": [row.as_json() for row in _chronological(draft.rows)]} if draft.rows else {}),
        **({f"{EXT}.missingData": draft.gaps} if draft.gaps else {}),
        **draft.extension,
    }
    if not card["extension"]:
        del card["extension"]
    return card


def _chronological(rows: Sequence[Evidence]) -> list[Evidence]:
    """Every row (the table shows at most eight), oldest first: the machine-readable record."""
    return sorted(rows, key=lambda r: r.time.timestamp() if r.time else float("inf"))


_LIST_OR_TABLE = re.compile(r"^\s{0,3}(?:[-*+] |\d{1,9}[.)] |\|)")


def blank_line_before_blocks(markdown: str) -> str:
    """A blank line before every list and table that follows a paragraph line.

    CommonMark lets a list interrupt a paragraph, but stricter renderers (and GFM tables after text)
    do not; with the blank line the detail renders the same in CommonMark and GFM.
    """
    out: list[str] = []
    for line in markdown.split("\n"):
        if _LIST_OR_TABLE.match(line) and out and out[-1].strip() and not _LIST_OR_TABLE.match(out[-1]):
            out.append("")
        out.append(line)
    return "\n".join(out)


_YEAR = re.compile(r"\b(19|20)\d{2}\b")


def short_citation(reference: Reference) -> str:
    """``Barocas 2020`` from "Barocas DA et al. Microhematuria: AUA/SUFU Guideline. J Urol 2020;…"."""
    citation = reference.citation.strip()
    first = re.split(r"[\s,.]", citation, maxsplit=1)[0] or reference.id
    year = _YEAR.search(citation)
    if year and len(first) > 1:
        label = f"{first} {year.group(0)}"
    else:  # a label or guideline without author and year: its title, cut at a word
        title = citation.split(". ")[0]
        label = title if len(title) <= 40 else title[:40].rsplit(" ", 1)[0] + "…"
    return f"[{label}]({reference.url})" if reference.url else label


def footer(draft: CardDraft) -> str:
    """One compact line: the rules (id, version, tier) and the references, not ten italic lines."""
    rules = ", ".join(f"{r['id']} v{r['version']} ({r['indicator']})" for r in draft.rules)
    seen: dict[str, str] = {}
    for reference in draft.references:
        seen.setdefault(reference.citation, short_citation(reference))
    line = f"Rule{'s' if len(draft.rules) > 1 else ''} {rules}" if rules else ""
    if draft.undecided:
        line += (" · " if line else "") + "Checks not completed: " + ", ".join(
            f"{r['id']} v{r['version']}" for r in draft.undecided)
    if seen:
        line += (" · " if line else "") + "References: " + "; ".join(seen.values())
    return line


def _source(draft: CardDraft, settings: CardSettings) -> dict[str, Any]:
    source: dict[str, Any] = {
        "label": settings.source_label,
        "topic": {"system": settings.topic_system, "code": draft.source_code, "display": draft.source_display},
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
            booking = booking_of(draft)
            if booking is not None:  # a session being booked: cancel the booking, never the standing order
                if action.type == "delete" and not any(a.get("resourceId") == booking for a in actions):
                    actions.append({"type": "delete", "resourceId": booking,
                                    "description": "Do not book this appointment (the proposed session)"})
                continue
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
    compose: bool = False,
    extra: Sequence[CardDraft] = (),
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> list[dict[str, Any]]:
    """Cards for every shown result, strongest first.

    ``compose`` (the service) merges cards on one clinical topic, removes repeated suggestions and
    folds cards beyond ``max_cards`` into the strongest card; without it (rule tests) every fired
    rule gets its own card, cut at ``max_cards``. ``extra`` drafts (the incomplete-checks card) join
    the composition.
    """
    from cds_service.engine.compose import DEFAULT_MAX_CARDS, compose_cards

    drafts = [draft_card(r, patient_id=patient_id, data_gaps=data_gaps, new_id=new_id) for r in evaluation.shown()]
    drafts += list(extra)
    if compose:
        drafts = compose_cards(drafts, max_cards=DEFAULT_MAX_CARDS if max_cards is None else max_cards)
    elif max_cards is not None:
        drafts = drafts[:max_cards]
    return [render_card(d, settings=settings, new_id=new_id) for d in drafts]
