"""The evidence table a clinician reads: decisive findings first, newest first, about eight rows.

A long ketamine course would otherwise bury the one urine result that triggered the card under
thirty administrations. Findings (and a draft order being placed) come first, newest first;
administrations fill the rest, and the older ones are summed in one line: "and 22 earlier
administrations (total 770 mg)". Every resource appears once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cds_service.clinical import exposure as ex
from cds_service.engine.display import display, human_quantity
from cds_service.engine.trace import Evidence

MAX_ROWS = 8
MEDICATION_PREFIXES = ("MedicationAdministration/", "MedicationRequest/", "MedicationStatement/",
                       "MedicationDispense/")


def _newest_first(rows: Sequence[Evidence]) -> list[Evidence]:
    """Newest first; undated rows last (stable, so equal times keep the rule's order)."""
    return sorted(rows, key=lambda r: r.time.timestamp() if r.time else float("-inf"), reverse=True)


def is_exposure(row: Evidence, sessions: Mapping[str, ex.Session]) -> bool:
    """A row of past exposure (an administration, statement or supply); a draft order is decisive."""
    session = sessions.get(row.ref)
    if session is not None:
        return not session.planned
    return row.ref.startswith(MEDICATION_PREFIXES) and "draft order" not in row.item


def layout(rows: Sequence[Evidence], sessions: Mapping[str, ex.Session]) -> tuple[list[Evidence], str]:
    """(rows to show, the summary line of the rows left out) — at most ``MAX_ROWS`` rows."""
    decisive = _newest_first([r for r in rows if not is_exposure(r, sessions)])
    exposure = _newest_first([r for r in rows if is_exposure(r, sessions)])
    shown_findings = decisive[: MAX_ROWS - min(len(exposure), 2)]  # keep room for the exposure itself
    shown_exposure = exposure[: MAX_ROWS - len(shown_findings)]
    hidden_findings = decisive[len(shown_findings):]
    hidden_exposure = exposure[len(shown_exposure):]
    notes = []
    if hidden_findings:
        notes.append(f"{len(hidden_findings)} earlier result{'s' if len(hidden_findings) != 1 else ''}")
    if hidden_exposure:
        notes.append(_earlier_exposure(hidden_exposure, sessions))
    return shown_findings + shown_exposure, ("and " + " and ".join(notes)) if notes else ""


def _earlier_exposure(rows: Sequence[Evidence], sessions: Mapping[str, ex.Session]) -> str:
    """ "22 earlier administrations (total 770 mg)"; doses that are unknown are said, not summed as 0."""
    known = [sessions[r.ref].dose.mg for r in rows if r.ref in sessions and sessions[r.ref].dose.mg is not None]
    unknown = len(rows) - len(known)
    kinds = {sessions[r.ref].kind for r in rows if r.ref in sessions}
    noun = "administration" if kinds <= {"administration"} else "exposure record"
    text = f"{len(rows)} earlier {noun}{'s' if len(rows) != 1 else ''}"
    if known:
        total = f"total {human_quantity(sum(k for k in known if k is not None), 'mg')}"
        text += f" ({total}{f'; {unknown} without a known dose' if unknown else ''})"
    elif unknown:
        text += " (doses not known)"
    return text


def _cell(text: str) -> str:
    return str(display(text)).replace("|", "\\|").replace("\n", " ")


def evidence_table(rows: Sequence[Evidence], more: str = "") -> str:
    """The Markdown table: date, item, value (plus a note column when any row has one)."""
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
    table = "\n".join(lines)
    return f"{table}\n\n{_cell(more)}" if more else table


def evidence_section(rows: Sequence[Evidence], sessions: Mapping[str, ex.Session]) -> str:
    """The **Evidence** block of a card's detail ("" without evidence)."""
    shown, more = layout(rows, sessions)
    table = evidence_table(shown, more)
    return f"**Evidence**\n\n{table}" if table else ""
