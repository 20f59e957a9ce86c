"""A worker's health verdict: stalled only when one operation keeps failing past the limit."""

from __future__ import annotations

from pathlib import Path

from ingest.health import RUNNING, STALLED, Health, judge, read_health, write_health


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_worker_is_stalled_once_one_operation_failed_for_the_whole_limit() -> None:
    clock = Clock()
    h = Health(30.0, clock=clock)
    assert h.verdict().state == RUNNING
    h.failed("PostgreSQL write", "connection refused")
    clock.t += 29
    h.failed("PostgreSQL write", "connection refused")
    assert h.verdict().state == RUNNING  # failing, not yet for 30 s
    clock.t += 1
    v = h.verdict()
    assert v.state == STALLED
    assert v.attempts == 2
    assert "PostgreSQL write failing (2 attempts): connection refused" in v.reason
    assert v.blocked_s == 30


def test_success_or_progress_clears_a_stall() -> None:
    clock = Clock()
    h = Health(5.0, clock=clock)
    h.failed("dead-letter delivery", "MessageSizeTooLarge")
    clock.t += 60
    assert h.verdict().state == STALLED
    h.succeeded()
    assert h.verdict() == judge(
        clock.t, blocked_since=None, blocked_on="", attempts=0, last_progress=1000.0,
        stall_after_s=5.0,
    )  # fmt: skip
    h.failed("offset commit", "broker down")
    clock.t += 10
    h.progressed()
    v = h.verdict()
    assert v.state == RUNNING
    assert v.since_progress_s == 0


def test_the_health_file_round_trips_by_pid(tmp_path: Path) -> None:
    h = Health(0.0)
    h.failed("indexing into OpenSearch", "bulk request failed")
    write_health(tmp_path, "worker-index", h.verdict())
    (report,) = read_health(tmp_path).values()
    assert report["name"] == "worker-index"
    assert report["state"] == STALLED
    assert "bulk request failed" in report["reason"]
