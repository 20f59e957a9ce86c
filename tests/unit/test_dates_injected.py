"""The date-dependent pure paths at every injected today of tests/dates.py: retention
cutoffs and whole-partition drops, event partition routing and month bounds, and the time
arguments (``--since 7d``) of every front end. Each expectation is stated from the calendar,
not from the code under test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sessionvault.timespec import parse_when, window
from storage.persist_logic import month_bounds, month_of, partition_name
from storage.retention import PartitionInfo, RetentionPolicy, cutoffs, droppable, partition_range
from tests.dates import today_params


@pytest.fixture(params=today_params())
def today(request: pytest.FixtureRequest) -> datetime:
    when: datetime = request.param[0]
    return when


def test_spans_are_exact_utc_durations_back_from_today(today: datetime) -> None:
    assert parse_when("since", "7d", now=today) == today - timedelta(days=7)
    assert parse_when("since", "2w", now=today) == today - timedelta(seconds=14 * 86_400)
    assert parse_when("since", "90m", now=today) == today - timedelta(minutes=90)
    since, until = window("24h", None, now=today)
    assert (since, until) == (today - timedelta(hours=24), today)


def test_retention_cutoffs_are_exact_days_before_today(today: datetime) -> None:
    ev, ses = cutoffs(RetentionPolicy("t", events_days=30, sessions_days=365), today)
    assert today - ev == timedelta(days=30)
    assert today - ses == timedelta(days=365)


def test_this_month_and_last_month_partitions_by_the_calendar(today: datetime) -> None:
    year, month = today.year, today.month
    start, end = month_bounds(year, month)
    assert start <= today < end
    assert start.day == 1
    assert end.day == 1
    assert (end - timedelta(microseconds=1)).month == month
    assert month_of(today, now=today) == (year, month)
    assert partition_range(partition_name(year, month)) == (start, end)
    prev_end = start
    prev_start = datetime(year - (month == 1), (month - 2) % 12 + 1, 1, tzinfo=UTC)
    assert partition_range(partition_name(prev_start.year, prev_start.month)) == (
        prev_start,
        prev_end,
    )


def test_only_a_month_wholly_past_the_cutoff_is_dropped(today: datetime) -> None:
    events_cutoff, _ = cutoffs(RetentionPolicy("a", events_days=30, sessions_days=30), today)
    cut = {"a": events_cutoff}
    # The month holding the cutoff still has rows within retention.
    ys, ms = events_cutoff.year, events_cutoff.month
    start, end = month_bounds(ys, ms)
    holding = PartitionInfo(partition_name(ys, ms), start, end, frozenset({"a"}), False)
    assert not droppable(holding, cut) or end == events_cutoff
    # The month before it lies wholly before the cutoff.
    py, pm = (ys - 1, 12) if ms == 1 else (ys, ms - 1)
    p_start, p_end = month_bounds(py, pm)
    before = PartitionInfo(partition_name(py, pm), p_start, p_end, frozenset({"a"}), False)
    assert droppable(before, cut)
    assert not droppable(dataclass_replace_tenants(before, {"a", "b"}), cut)


def dataclass_replace_tenants(part: PartitionInfo, tenants: set[str]) -> PartitionInfo:
    return PartitionInfo(part.name, part.start, part.end, frozenset(tenants), part.has_held_rows)
