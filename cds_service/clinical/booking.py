"""Which Appointment a booked-session draft stands for (appointment-book; see decision/appointments.py).

A session being booked is judged as a draft order planned at the appointment's start; this extension on
that draft keeps the link, so what a card suggests (cancel) is addressed to the booking, not the order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

BOOKED_BY = "https://kbladder-cds.org/fhir/StructureDefinition/booked-by"


def booking_of(resource: Mapping[str, Any]) -> str | None:
    """The ``Appointment/<id>`` a booked-session draft stands for, or None for a real draft order."""
    extensions = resource.get("extension")
    for extension in extensions if isinstance(extensions, list) else ():
        if isinstance(extension, Mapping) and extension.get("url") == BOOKED_BY:
            value = extension.get("valueReference")
            ref = value.get("reference") if isinstance(value, Mapping) else None
            return ref if isinstance(ref, str) else None
    return None
