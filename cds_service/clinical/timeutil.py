"""Instants and durations as FHIR and rule authors write them.

Every instant is made timezone-aware (UTC when the source gives no offset) so that
windows compare correctly across data from different time zones; a FHIR ``date``
(``2026-03-01``) is read as the start of that day in UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

import isodate

Duration = timedelta | isodate.Duration

_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?$")


class TimeError(ValueError):
    """A date, instant or duration that cannot be read."""


#: Instants the engine can compute with: windows, course gaps and lookbacks add and subtract durations of
#: years, so an instant near datetime's limits (0001, 9999) would overflow there. Outside: unreadable.
EARLIEST = datetime(1000, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _in_range(value: datetime, text: str) -> datetime:
    if not EARLIEST <= value < LATEST:
        raise TimeError(f"date outside {EARLIEST.year}-{LATEST.year - 1}: {text!r}")
    return value


def parse_instant(text: str) -> datetime:
    """Parse a FHIR date/dateTime/instant into an aware UTC datetime."""
    if not isinstance(text, str) or not text:
        raise TimeError(f"not a date or time: {text!r}")
    partial = _PARTIAL_DATE.match(text)
    if partial:
        year, month, day = partial.groups()
        try:
            return _in_range(datetime(int(year), int(month or 1), int(day or 1), tzinfo=UTC), text)
        except (ValueError, OverflowError) as exc:  # 2026-13-01, 2026-02-30: callers catch TimeError
            raise TimeError(f"not a date or time: {text!r}") from exc
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return _in_range(value.astimezone(UTC), text)  # 0001-01-01T00:00+14:00 overflows in astimezone
    except (ValueError, OverflowError) as exc:
        raise TimeError(f"not a date or time: {text!r}") from exc


def as_utc(value: datetime | date) -> datetime:
    """Make a datetime (or date) aware and UTC."""
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@lru_cache(maxsize=1024)
def parse_duration(text: str) -> Duration:
    """Parse an ISO 8601 duration (``P28D``, ``PT48H``, ``P6M``); months stay calendar months."""
    if not isinstance(text, str) or not text.startswith("P"):
        raise TimeError(f"not an ISO 8601 duration (e.g. P28D, PT48H, P6M): {text!r}")
    try:
        value = isodate.parse_duration(text)
    except (isodate.ISO8601Error, ValueError) as exc:
        raise TimeError(f"not an ISO 8601 duration (e.g. P28D, PT48H, P6M): {text!r}") from exc
    return value


def duration_seconds(value: Duration, at: datetime | None = None) -> float:
    """Length of a duration in seconds; calendar units are measured from ``at`` (default 2000-01-01)."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    anchor = at or datetime(2000, 1, 1, tzinfo=UTC)
    return ((anchor + value) - anchor).total_seconds()


def format_duration(seconds: float) -> str:
    """Human wording for a span: ``40 min``, ``52 h``, ``3.5 d``, ``7.2 months``."""
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:  # one decimal: "20 mg/h × 2.5 h" must multiply out to the 50 mg shown
        return f"{seconds / 3600:.1f} h".replace(".0 h", " h")
    days = seconds / 86400
    if days < 90:
        return f"{days:.1f} d".replace(".0 d", " d")
    return f"{days / 30.4375:.1f} months"


_RELATIVE = re.compile(r"^(?P<sign>[+-])(?P<n>\d+(?:\.\d+)?)(?P<unit>min|mo|h|d|w|y)$")
_UNIT_DAYS = {"d": 1.0, "w": 7.0}


def parse_relative(text: str, now: datetime) -> datetime:
    """Read a test-data time: ``now``, ``-3d``, ``-36h``, ``+2w``, ``-6mo``, ``-1y``, or an ISO instant."""
    text = str(text).strip()
    if text == "now":
        return now
    match = _RELATIVE.match(text)
    if not match:
        return parse_instant(text)
    n = float(match["n"]) * (-1 if match["sign"] == "-" else 1)
    unit = match["unit"]
    if unit == "min":
        return now + timedelta(minutes=n)
    if unit == "h":
        return now + timedelta(hours=n)
    if unit in _UNIT_DAYS:
        return now + timedelta(days=n * _UNIT_DAYS[unit])
    if not n.is_integer():  # isodate keeps whole calendar months; -1.5mo would silently become -1mo
        raise TimeError(f"months and years must be whole numbers: {text!r}")
    months = int(n) if unit == "mo" else int(n) * 12
    return now + isodate.Duration(months=months)


def iso(value: datetime) -> str:
    """An instant as FHIR writes it, in UTC with a ``Z``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
