"""FHIR instants normalised to UTC, ISO durations with calendar months, relative test times."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import isodate
import pytest

from cds_service.clinical.timeutil import (
    TimeError,
    as_utc,
    duration_seconds,
    format_duration,
    iso,
    parse_duration,
    parse_instant,
    parse_relative,
)

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T10:00:00Z", datetime(2026, 3, 1, 10, 0, tzinfo=UTC)),
        ("2026-03-01T10:00:00+02:00", datetime(2026, 3, 1, 8, 0, tzinfo=UTC)),
        ("2026-03-01T10:00:00.123-05:00", datetime(2026, 3, 1, 15, 0, 0, 123000, tzinfo=UTC)),
        # an offset can move the instant to another UTC day
        ("2026-03-01T23:30:00-01:00", datetime(2026, 3, 2, 0, 30, tzinfo=UTC)),
        # no offset: read as UTC
        ("2026-03-01T10:00:00", datetime(2026, 3, 1, 10, 0, tzinfo=UTC)),
    ],
)
def test_datetimes_and_instants_are_normalised_to_utc(text: str, expected: datetime) -> None:
    parsed = parse_instant(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01", datetime(2026, 3, 1, tzinfo=UTC)),
        ("2026-03", datetime(2026, 3, 1, tzinfo=UTC)),
        ("2026", datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
def test_partial_dates_are_the_start_of_the_day_in_utc(text: str, expected: datetime) -> None:
    assert parse_instant(text) == expected


def test_same_instant_in_two_time_zones_compares_equal() -> None:
    assert parse_instant("2026-03-01T12:00:00+01:00") == parse_instant("2026-03-01T06:00:00-05:00")


@pytest.mark.parametrize("text", ["", "yesterday", "2026-03-01T25:00:00Z", "2026-13-01", "2026-02-30", None, 20260301])
def test_unreadable_instants_raise_time_error(text: object) -> None:
    with pytest.raises(TimeError, match="not a date or time"):
        parse_instant(text)  # type: ignore[arg-type]


def test_as_utc_makes_naive_values_and_dates_aware() -> None:
    assert as_utc(datetime(2026, 1, 1, 12)) == datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert as_utc(date(2026, 1, 1)) == datetime(2026, 1, 1, tzinfo=UTC)
    cet = datetime.fromisoformat("2026-01-01T12:00:00+01:00")
    assert as_utc(cet) == datetime(2026, 1, 1, 11, tzinfo=UTC)


def test_iso_writes_utc_with_z() -> None:
    assert iso(datetime.fromisoformat("2026-06-01T11:00:00+02:00")) == "2026-06-01T09:00:00Z"


def test_day_and_hour_durations_are_exact() -> None:
    assert parse_duration("P28D") == timedelta(days=28)
    assert parse_duration("PT48H") == timedelta(hours=48)
    assert parse_duration("PT40M") == timedelta(minutes=40)


def test_month_durations_stay_calendar_months() -> None:
    six_months = parse_duration("P6M")
    assert isinstance(six_months, isodate.Duration)
    assert datetime(2026, 6, 1, tzinfo=UTC) - six_months == datetime(2025, 12, 1, tzinfo=UTC)
    assert datetime(2026, 8, 31, tzinfo=UTC) - six_months == datetime(2026, 2, 28, tzinfo=UTC)
    # its length depends on where it is measured
    assert duration_seconds(six_months, datetime(2026, 1, 1, tzinfo=UTC)) == 181 * 86400
    assert duration_seconds(six_months, datetime(2026, 7, 1, tzinfo=UTC)) == 184 * 86400


def test_year_duration() -> None:
    assert datetime(2026, 6, 1, tzinfo=UTC) - parse_duration("P1Y") == datetime(2025, 6, 1, tzinfo=UTC)


@pytest.mark.parametrize("text", ["28D", "P", "PX", "28 days", ""])
def test_bad_durations_raise_time_error(text: str) -> None:
    with pytest.raises(TimeError, match="ISO 8601 duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("-3d", NOW - timedelta(days=3)),
        ("-36h", NOW - timedelta(hours=36)),
        ("-90min", NOW - timedelta(minutes=90)),
        ("+2w", NOW + timedelta(weeks=2)),
        ("-1.5d", NOW - timedelta(hours=36)),
        ("-6mo", datetime(2025, 12, 1, 9, 0, tzinfo=UTC)),
        ("-1y", datetime(2025, 6, 1, 9, 0, tzinfo=UTC)),
        ("2026-01-01", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T10:00:00+01:00", datetime(2026, 1, 1, 9, 0, tzinfo=UTC)),
    ],
)
def test_relative_test_times(text: str, expected: datetime) -> None:
    assert parse_relative(text, NOW) == expected


def test_relative_months_are_calendar_months() -> None:
    assert parse_relative("-1mo", datetime(2026, 3, 31, tzinfo=UTC)) == datetime(2026, 2, 28, tzinfo=UTC)
    assert parse_relative("-1y", datetime(2024, 2, 29, tzinfo=UTC)) == datetime(2023, 2, 28, tzinfo=UTC)


@pytest.mark.parametrize("text", ["-1.5mo", "-0.5y"])
def test_fractional_months_are_refused_not_truncated(text: str) -> None:
    with pytest.raises(TimeError, match="whole numbers"):
        parse_relative(text, NOW)


def test_unreadable_relative_time_raises() -> None:
    with pytest.raises(TimeError):
        parse_relative("three days ago", NOW)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (40 * 60, "40 min"),
        (2 * 3600, "2 h"),
        (2.5 * 3600, "2.5 h"),  # "20 mg/h × 2.5 h" must multiply out to the 50 mg shown
        (52 * 3600, "52 h"),
        (3.5 * 86400, "3.5 d"),
        (28 * 86400, "28 d"),
        (200 * 86400, "6.6 months"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
