"""event_time_ms (the time every SIEM format stamps) parses RFC 3339 times with any number of
fractional digits, either zone spelling, and never raises on a malformed one."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from siem.formats.common import event_time_ms
from tests.examples import examples


def _reference(value: str) -> int:
    """Regex-trim the fraction to microseconds, then parse: the rule, spelled out slowly."""
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    m = re.match(r"^(.*?\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if m:
        head, frac, tz = m.groups()
        text = head + ((frac or "")[:7]) + tz
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return 0
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


times = st.builds(
    lambda dt, digits, zone, sep: (
        dt.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
        + ("." + f"{dt.microsecond:06d}987"[:digits] if digits else "")
        + zone
    ),
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
    st.integers(min_value=0, max_value=9),
    st.sampled_from(["Z", "z", "+00:00", "-07:30", "+05:45", ""]),
    st.sampled_from(["T", " ", "t"]),
)


@settings(max_examples=examples(2000), deadline=None)
@given(value=st.one_of(times, st.text(max_size=30), times.map(lambda t: f" {t} ")))
def test_event_time_ms_matches_the_slow_rule(value: str) -> None:
    assert event_time_ms({"time": value}) == _reference(value)


def test_event_time_ms_of_common_spellings() -> None:
    assert event_time_ms({"time": "1970-01-01T00:00:01.5Z"}) == 1500
    assert event_time_ms({"time": "1970-01-01T01:00:00.123456789+01:00"}) == 123
    assert event_time_ms({"time": "not a time"}) == 0
    assert event_time_ms({}) == 0
