"""Pure retention rules: cutoffs, partition ranges, when a whole partition may be dropped."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sessionvault.errors import ValidationError
from storage.retention import (
    PartitionInfo,
    RetentionPolicy,
    check_days,
    cutoffs,
    droppable,
    events_index_query,
    partition_range,
)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def part(tenants: set[str], *, held: bool = False, month: int = 1) -> PartitionInfo:
    start, end = partition_range(f"events_y2026m{month:02d}") or (NOW, NOW)
    return PartitionInfo(f"events_y2026m{month:02d}", start, end, frozenset(tenants), held)


def test_cutoffs_are_now_minus_each_age() -> None:
    ev, se = cutoffs(RetentionPolicy("t", 30, 90), NOW)
    assert ev == datetime(2026, 10, 22, 12, 0, tzinfo=UTC)
    assert se == datetime(2026, 8, 23, 12, 0, tzinfo=UTC)


def test_partition_range_reads_the_writers_names_and_ignores_others() -> None:
    assert partition_range("events_y2025m12") == (
        datetime(2025, 12, 1, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert partition_range("events_default") is None
    assert partition_range("events_y2025m13") is None


def test_a_partition_is_droppable_only_when_every_tenant_in_it_is_past_its_cutoff() -> None:
    feb = datetime(2026, 2, 1, tzinfo=UTC)
    assert droppable(part({"a", "b"}), {"a": feb, "b": feb})
    # One tenant's cutoff falls inside the month: its newest rows there are still kept.
    assert not droppable(part({"a", "b"}), {"a": feb, "b": datetime(2026, 1, 20, tzinfo=UTC)})
    # A tenant without a policy keeps everything.
    assert not droppable(part({"a", "b"}), {"a": feb})
    # A held session's event lives there.
    assert not droppable(part({"a"}, held=True), {"a": feb})


def test_an_empty_partition_is_droppable_once_past_every_policy() -> None:
    feb = datetime(2026, 2, 1, tzinfo=UTC)
    assert droppable(part(set()), {"a": feb})
    assert not droppable(part(set()), {"a": feb, "b": datetime(2026, 1, 5, tzinfo=UTC)})
    assert not droppable(part(set()), {})


@pytest.mark.parametrize("days", [0, -1, 36501, True, 1.5])
def test_policy_days_must_be_a_sane_whole_number(days: object) -> None:
    with pytest.raises(ValidationError):
        check_days("events_days", days)  # type: ignore[arg-type]


def test_index_query_keeps_held_sessions_events() -> None:
    q = events_index_query("t", 123, ["s1"])
    assert {"range": {"time_us": {"lt": 123}}} in q["bool"]["filter"]
    assert q["bool"]["must_not"] == [{"terms": {"sid": ["s1"]}}]
    assert "must_not" not in events_index_query("t", 123, [])["bool"]
