"""appointment-book: the sessions a proposed Appointment books, as draft orders planned at its start.

A booked infusion is a planned exposure on the appointment's date, so the checks that judge a planned
session (the interval since the last one, the urine and symptom monitoring due by then) judge the booking
exactly as they judge a draft order, through the same rules and the same decision path. Which medication
an Appointment books is taken from what the EHR links to it: the MedicationRequests its
``supportingInformation`` or ``basedOn`` reference, found among the resources sent with the Appointments
or in the patient's record. An Appointment that links no order books no session we can judge: nothing is
guessed from free text, so a dentist's appointment never draws a ketamine card.

Each booked session is a copy of its order with status ``draft``, one administration at the appointment's
start (its duration from the order, else the appointment), and an extension naming the Appointment, so a
card's "remove" suggestion cancels the booking (``Appointment/<id>``) rather than the standing order.
Pure: JSON in, JSON out.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from cds_service.clinical.booking import BOOKED_BY

_ID_MAX = 64


def booked_sessions(appointments: Sequence[Mapping[str, Any]],
                    record: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Draft MedicationRequests for the sessions the proposed Appointments in *appointments* book."""
    orders: dict[str, Mapping[str, Any]] = {}
    for resource in [*record, *appointments]:  # what came with the booking wins over the record
        if isinstance(resource, Mapping) and resource.get("resourceType") == "MedicationRequest" \
                and isinstance(resource.get("id"), str):
            orders[f"MedicationRequest/{resource['id']}"] = resource
    sessions: list[dict[str, Any]] = []
    for appointment in appointments:
        if not isinstance(appointment, Mapping) or appointment.get("resourceType") != "Appointment":
            continue
        start = appointment.get("start")
        if not isinstance(start, str):
            continue  # a proposed slot without a time books no session at a date we could judge
        for ref in linked_orders(appointment):
            order = orders.get(ref)
            if order is not None:
                sessions.append(_session(order, appointment, start))
    return sessions


def linked_orders(appointment: Mapping[str, Any]) -> list[str]:
    """``MedicationRequest/<id>`` references of the Appointment (supportingInformation, basedOn), in order."""
    refs: list[str] = []
    for name in ("supportingInformation", "basedOn"):
        items = appointment.get(name)
        for item in items if isinstance(items, list) else ():
            ref = item.get("reference") if isinstance(item, Mapping) else None
            if isinstance(ref, str) and ref.startswith("MedicationRequest/") and ref not in refs:
                refs.append(ref)
    return refs


def _session(order: Mapping[str, Any], appointment: Mapping[str, Any], start: str) -> dict[str, Any]:
    draft = copy.deepcopy(dict(order))
    appointment_id = str(appointment.get("id") or "new")
    draft["id"] = f"{order.get('id')}-at-{appointment_id}"[:_ID_MAX]
    draft["status"] = "draft"
    draft["extension"] = [*(draft.get("extension") or []),
                          {"url": BOOKED_BY, "valueReference": {"reference": f"Appointment/{appointment_id}"}}]
    dosages = draft.get("dosageInstruction")
    dosage = dict(dosages[0]) if isinstance(dosages, list) and dosages and isinstance(dosages[0], Mapping) else {}
    timing = dosage.get("timing") if isinstance(dosage.get("timing"), Mapping) else {}
    repeat = {k: v for k, v in (timing.get("repeat") or {}).items() if k != "boundsPeriod"} \
        if isinstance(timing.get("repeat"), Mapping) else {}
    minutes = appointment.get("minutesDuration")
    if "duration" not in repeat and isinstance(minutes, int) and not isinstance(minutes, bool) and minutes > 0:
        repeat.update({"duration": minutes, "durationUnit": "min"})
    dosage["timing"] = {"event": [start], **({"repeat": repeat} if repeat else {})}
    draft["dosageInstruction"] = [dosage, *(dosages[1:] if isinstance(dosages, list) else [])]
    return draft
