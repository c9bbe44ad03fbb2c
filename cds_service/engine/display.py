"""The one display filter: how numbers, units, durations and exposure read on a card.

Rules compute in UCUM and full precision; clinicians read "60 mg", "3 /HPF", "112 µmol/L" and
"daily use for 2.8 years". Every value a card shows (template output, evidence cells, the
exposure phrase) passes through :func:`display`, so no card prints ``1.029e+06 mg``,
``59.925 mg`` or ``/[HPF]`` — whichever block or template produced it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from cds_service.clinical.timeutil import duration_seconds, format_duration

# UCUM codes as people write them. Curly-brace annotations are words (UCUM §6: they mean "1").
HUMAN_UNITS: dict[str, str] = {
    "/[HPF]": "/HPF",
    "[HPF]": "HPF",
    "/[LPF]": "/LPF",
    "umol/L": "µmol/L",
    "ug": "µg",
    "ug/L": "µg/L",
    "ug/kg": "µg/kg",
    "ug/kg/min": "µg/kg/min",
    "ug/kg/h": "µg/kg/h",
    "mL/min/{1.73_m2}": "mL/min/1.73 m²",
    "{CFU}/mL": "CFU/mL",
    "[IU]/L": "IU/L",
    "{score}": "",
    "{episodes}": "episodes",
    "{episode}": "episodes",
    "{voids}": "voids",
    "{RBC}/[HPF]": "/HPF",
    "{WBC}/[HPF]": "/HPF",
    "mo_j": "months",
    "a_j": "years",
}

_CURLY = re.compile(r"^\{([^{}]+)\}$")
# Units embedded in text made by the engine ("rise 35 umol/L", "3 /[HPF]"): the keys above, longest first.
_UNIT_IN_TEXT = re.compile(
    "|".join((" ?" if u.startswith("/") else "") + re.escape(u)
             for u in sorted((u for u in HUMAN_UNITS if len(u) > 2), key=len, reverse=True))
)
_DECIMAL_MG = re.compile(r"(?<![\w.,])(\d{2,}\.\d+) mg\b(?!/)")
# Numbers a machine wrote: exponent notation, or three or more decimals.
_MACHINE_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?e[+-]?\d+(?![\w.])|(?<![\w.])-?\d+\.\d{3,}(?![\w.])",
                             re.IGNORECASE)
_SPACES = re.compile(r"[ \t]{2,}")
_BIG_MG = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d{5,})(?:\.\d+)? mg\b")


def human_unit(unit: str | None) -> str:
    """A UCUM code as clinicians write it (``/[HPF]`` → ``/HPF``, ``{episodes}`` → ``episodes``)."""
    if not unit:
        return ""
    if unit in HUMAN_UNITS:
        return HUMAN_UNITS[unit]
    curly = _CURLY.match(unit)
    if curly:
        return curly.group(1).replace("_", " ")
    return unit


def human_number(value: float) -> str:
    """A number rounded the way people write it: no exponent, at most three significant figures
    below 100, whole numbers from 100 up, thousands grouped (``59.925`` → ``59.9``; ``1029000`` →
    ``1,029,000``)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    number = float(value)
    if not math.isfinite(number):
        return str(number)
    if number == 0:
        return "0"
    magnitude = abs(number)
    if magnitude >= 100:
        text = f"{round(number):,}"
    else:
        decimals = max(0, 2 - math.floor(math.log10(magnitude)))
        text = f"{number:.{min(decimals, 3)}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def human_quantity(value: float, unit: str | None) -> str:
    """``value unit`` for humans; masses of a gram or more in g (``1029000 mg`` → ``1,029 g``)."""
    if unit == "mg" and abs(value) >= 10_000:
        value, unit = value / 1000, "g"
    elif unit == "mg" and abs(value) >= 10:
        value = round(value)
    shown = human_unit(unit)
    number = human_number(value)
    if not shown:
        return number
    return f"{number}{shown}" if shown.startswith("/") else f"{number} {shown}"


def human_text(text: str) -> str:
    """Clean engine-made text: machine numbers rounded, UCUM codes written as people write them."""
    if not text:
        return text
    text = _MACHINE_NUMBER.sub(lambda m: human_number(float(m.group(0))), text)
    text = _BIG_MG.sub(lambda m: human_quantity(float(m.group(1).replace(",", "")), "mg"), text)
    text = _DECIMAL_MG.sub(lambda m: f"{round(float(m.group(1))):,} mg", text)
    text = _UNIT_IN_TEXT.sub(lambda m: HUMAN_UNITS[m.group(0).lstrip(" ")], text)
    return _SPACES.sub(" ", text).replace(" )", ")").rstrip()


def display(value: Any) -> Any:
    """The Jinja ``finalize`` hook and evidence-cell filter: every shown value, made human."""
    from cds_service.engine.model import Ordinal, Quantity  # model imports nothing from here

    if value is None:
        return ""
    if isinstance(value, bool):
        return value
    if isinstance(value, Quantity):
        return human_quantity(value.value, value.unit)
    if isinstance(value, Ordinal):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return human_number(value)
    if isinstance(value, timedelta):
        return human_duration(value.total_seconds())
    if isinstance(value, str):
        return human_text(value)
    try:
        return human_duration(duration_seconds(value))
    except (TypeError, ValueError, AttributeError):
        return value


def human_duration(seconds: float) -> str:
    """A span as people say it: ``40 min``, ``36 h``, ``12 days``, ``7 months``, ``2.8 years``."""
    days = seconds / 86400
    if days < 3:
        return format_duration(seconds)
    if days < 120:
        return f"{human_number(round(days))} day{'s' if round(days) != 1 else ''}"
    if days < 730:
        months = days / 30.4375
        shown = human_number(round(months, 1) if months < 10 else round(months))
        return f"{shown} month{'s' if shown != '1' else ''}"
    return f"{human_number(round(days / 365.25, 1))} years"


def exposure_phrase(
    drug: str,
    *,
    sessions: int,
    span_days: int,
    statements: Sequence[tuple[float, float | None, bool]] = (),
) -> str:
    """How much exposure, in words that fit the data.

    Sessions (administrations): "4 ketamine sessions in 23 days". A use statement or take-home
    supply (``(days, mg per day, taken daily)``) reads "daily ketamine use for 2.8 years, about 1 g a day". With
    both, the sessions come first.
    """
    parts: list[str] = []
    if sessions:
        text = f"{sessions} {drug} session{'s' if sessions != 1 else ''}"
        if sessions > 1 and span_days > 0:
            text += f" in {human_duration(span_days * 86400)}"
        parts.append(text)
    if statements:
        days = max(d for d, _, _ in statements)
        per_day = [mg for _, mg, _ in statements if mg is not None]
        text = f"{drug} use for {human_duration(days * 86400)}" if days >= 1 else f"{drug} use"
        if days >= 1 and all(daily for _, _, daily in statements):
            text = "daily " + text
        if per_day and days >= 1:
            text += f", about {daily_amount(max(per_day))} a day"
        parts.append(text)
    if not parts:
        return f"{drug} exposure"
    return " and ".join(parts)


def daily_amount(mg: float) -> str:
    """A daily amount rounded for speech: ``1 g``, ``1.5 g``, ``250 mg``."""
    if mg >= 1000:
        grams = round(mg / 1000, 1) if mg < 10_000 else round(mg / 1000)
        return f"{human_number(grams)} g"
    return f"{human_number(round(mg, -1) if mg >= 100 else mg)} mg"
