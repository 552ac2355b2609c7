"""The date-time format check: RFC 3339 with offset, always parseable by fromisoformat."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chargegrid.ocpp.formats import is_date_time

# Independent oracle: RFC 3339 date-time with mandatory offset, upper-case T/Z, checked with
# a regex plus the datetime constructor for calendar ranges.
_ORACLE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:Z|[+-](\d{2}):(\d{2}))",
    re.ASCII,
)


def oracle(value: str) -> bool:
    match = _ORACLE.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second, off_h, off_m = match.groups()
    if off_h is not None and (int(off_h) > 23 or int(off_m) > 59):
        return False
    try:
        datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    "value",
    [
        "2024-01-15T10:30:00Z",
        "2024-01-15T10:30:00.123+02:00",
        "2024-01-15T10:30:00.1Z",
        "2024-01-15T10:30:00.123456789Z",
        "2024-01-15T10:30:00-05:30",
        "2024-01-15T10:30:00+00:00",
        "2024-01-15T10:30:00-00:00",
        "2024-02-29T00:00:00Z",
        "2024-12-31T23:59:59.999Z",
        "0001-01-01T00:00:00Z",
        "2024-01-15T10:30:00+23:59",
    ],
)
def test_accepts(value: str) -> None:
    assert is_date_time(value)
    assert datetime.fromisoformat(value).tzinfo is not None


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "",
        "2024-13-45T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-00-10T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2024-04-31T00:00:00Z",
        "2024-01-15T24:00:00Z",
        "2024-01-15T10:60:00Z",
        "2024-01-15T10:30:60Z",  # leap second: not representable in datetime
        "2024-01-15T10:30:00",  # no offset
        "2024-01-15T10:30:00.123",
        "2024-01-15",
        "2024-01-15T10:30Z",
        "2024-01-15 10:30:00Z",
        "2024-01-15t10:30:00Z",
        "2024-01-15T10:30:00z",
        "2024-01-15T10:30:00+0200",
        "2024-01-15T10:30:00+02",
        "2024-01-15T10:30:00+24:00",
        "2024-01-15T10:30:00+02:60",
        "2024-01-15T10:30:00+02:00:30",
        "2024-01-15T10:30:00.Z",
        "2024-01-15T10:30:00.",
        "2024-01-15T10:30:00.+02:00",
        "2024-01-15T10:30:00,5Z",
        "2024-01-15T10:30:00 Z",
        "2024-01-15T10:30:00Z+02:00",
        "20240115T103000Z",
        "0000-01-01T00:00:00Z",
        "\u0662\u0660\u0662\u0664-01-15T10:30:00Z",  # Arabic-Indic digits match \\d in a str regex
        "2024-01-15T10:30:00.\u0661Z",
        "+2024-01-15T10:30:00Z",
    ],
)
def test_rejects(value: str) -> None:
    assert not is_date_time(value)


_offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@given(st.datetimes(timezones=_offsets), st.sampled_from(["seconds", "milliseconds", "auto"]))
def test_every_aware_datetime_written_by_python_is_accepted(moment: datetime, spec: str) -> None:
    text = moment.isoformat(timespec=spec)
    assert is_date_time(text)
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() == moment.utcoffset()
    assert timedelta(0) <= moment - parsed < timedelta(seconds=1)


_near_miss = st.text(alphabet="0123456789-:T.Z+ tz,", min_size=18, max_size=32)


@st.composite
def _mutated(draw: st.DrawFn) -> str:
    text = draw(st.datetimes(timezones=_offsets)).isoformat().replace("+00:00", "Z")
    index = draw(st.integers(min_value=0, max_value=len(text) - 1))
    action = draw(st.sampled_from(["delete", "replace", "insert"]))
    char = draw(st.sampled_from("0123456789-:T.Z+ ,9x"))
    if action == "delete":
        return text[:index] + text[index + 1 :]
    if action == "replace":
        return text[:index] + char + text[index + 1 :]
    return text[:index] + char + text[index:]


@given(st.one_of(_near_miss, _mutated(), st.text()))
def test_agrees_with_an_independent_oracle(value: str) -> None:
    assert is_date_time(value) == oracle(value)


@given(st.text())
def test_accepted_strings_always_parse_to_an_aware_datetime(value: str) -> None:
    if is_date_time(value):
        assert datetime.fromisoformat(value).tzinfo is not None
