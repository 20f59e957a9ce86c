"""Splunk HEC sink against a strict HEC receiver (a real HTTP server on 127.0.0.1), the real
broker, and (for the outage test) the real persist worker on PostgreSQL.

The receiver checks Splunk's documented format on every request: ``Authorization: Splunk
<token>``, POST /services/collector/event, a body of concatenated JSON envelopes with only
time/host/source/sourcetype/index/event/fields, ``time`` epoch seconds with at most
millisecond precision, string metadata, flat string ``fields``; with indexer
acknowledgement a channel header on every request and ack polling.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ingest.deadletter import iter_deadletters
from schemas import encode_event
from sessionvault.settings import Settings
from siem.config import parse_siem_config
from siem.formats.common import event_time_ms
from tests.integration.persist_helpers import fetch_all, run_until_drained
from tests.integration.siem_support import (
    NASTY_USERS,
    HecReceiver,
    make_events,
    produce_events,
    running_sink,
)

pytestmark = pytest.mark.integration

TOKEN = "0f9d2a6e-hec-token-for-tests"


def hec_config(url: str, **extra: Any) -> bytes:
    retry = extra.pop("retry", {"max_attempts": 0, "backoff_base_ms": 50, "backoff_max_ms": 400})
    batch = extra.pop("batch", {"max_events": 10, "linger_ms": 20})
    lines = [
        "[[sink]]",
        'name = "splunk"',
        'type = "splunk_hec"',
        f'url = "{url}"',
        f'token = "{TOKEN}"',
        'index = "audit"',
        *(f"{k} = {_toml(v)}" for k, v in extra.items()),
        "[sink.batch]",
        *(f"{k} = {v}" for k, v in batch.items()),
        "[sink.retry]",
        *(f"{k} = {v}" for k, v in retry.items()),
    ]
    return "\n".join(lines).encode()


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


def expected_events(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["uid"]: e for e in events if e["event"] != "print"}


def check_received(receiver: HecReceiver, events: list[dict[str, Any]]) -> list[str]:
    """Every non-output event arrived as specified; returns the uids in arrival order."""
    assert receiver.violations == []
    want = expected_events(events)
    uids = []
    for env in receiver.events:
        ev = env["event"]
        uid = ev["uid"]
        uids.append(uid)
        orig = want[uid]
        assert ev == orig  # native JSON: the event itself, every field intact
        assert env["time"] == round(event_time_ms(orig) / 1000, 3)
        assert env["index"] == "audit"
        assert env["sourcetype"] == "sessionvault:audit"
        assert env["source"] == "sessionvault"
        assert env["fields"]["tenant"] == orig["tenant"]
    assert set(uids) == set(want), "events missing"
    return uids


def first_occurrences_in_session_order(uids: list[str], events: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    got: dict[str, list[int]] = {}
    for uid in uids:
        if uid in seen:
            continue
        seen.add(uid)
        sid, ei = uid.rsplit("-", 1)
        got.setdefault(sid, []).append(int(ei))
    for sid, eis in got.items():
        assert eis == sorted(eis), f"session {sid} out of order: {eis}"


def test_hec_with_indexer_ack_receives_every_event_as_specified(settings: Settings) -> None:
    events = make_events(settings.tenant, sessions=6, per_session=8)
    want = expected_events(events)
    receiver = HecReceiver(TOKEN, ack=True)
    receiver.start()
    try:
        cfg = parse_siem_config(hec_config(receiver.url, ack=True, ack_poll_ms=20)).sinks[0]
        produce_events(settings, events)
        with running_sink(settings, cfg) as run:
            run.wait(lambda: run.worker.stats.records >= len(events), 60, "all records")
            assert run.worker.stats.delivered == len(want)
            assert run.worker.stats.skipped == len(events) - len(want)  # print: skipped
    finally:
        receiver.stop()
    uids = check_received(receiver, events)
    assert len(uids) == len(want), "duplicates on a healthy receiver"
    first_occurrences_in_session_order(uids, events)
    # Each event request was acknowledged through at least two polls before the commit.
    event_requests = receiver.requests - receiver.ack_polls
    assert receiver.ack_polls >= 2 * event_requests


def test_hec_outage_loses_nothing_keeps_order_and_never_slows_persistence(
    settings: Settings,
) -> None:
    """Refused connections, then 503s, then timeouts, then recovery: every event arrives,
    per-session order holds, nothing is dead-lettered, and the persist worker (its own group)
    stores every event while the sink is still failing."""
    events = make_events(settings.tenant, sessions=4, per_session=15)
    expected_events(events)
    receiver = HecReceiver(TOKEN)  # not started yet: connections are refused
    cfg = parse_siem_config(
        hec_config(receiver.url, timeout_ms=500, batch={"max_events": 7, "linger_ms": 20})
    ).sinks[0]
    produce_events(settings, events)
    try:
        with running_sink(settings, cfg) as run:
            # Phase 1: refused. Persistence drains everything meanwhile.
            t0 = time.monotonic()
            asyncio.run(run_until_drained(settings, [settings.topic_events], timeout_s=60))
            persist_s = time.monotonic() - t0
            rows = asyncio.run(
                fetch_all(
                    settings.postgres_dsn.get(),
                    "SELECT uid FROM events WHERE tenant = $1",
                    settings.tenant,
                )
            )
            assert {r["uid"] for r in rows} == {e["uid"] for e in events}
            run.wait(lambda: run.worker.stats.failures >= 3, 30, "failed tries")
            assert run.worker.stats.delivered == 0, "the sink cannot have delivered yet"
            # Phase 2: the receiver answers 503.
            receiver.mode = "error"
            receiver.start()
            run.wait(lambda: receiver.failed_requests >= 3, 30, "503 answers")
            # Phase 3: the receiver answers too late (client timeout 500 ms).
            receiver.mode = "slow"
            failed = receiver.failed_requests
            run.wait(lambda: receiver.failed_requests >= failed + 2, 30, "timed-out requests")
            assert run.worker.stats.delivered == 0
            assert receiver.events == []
            # Phase 4: recovery.
            receiver.mode = "ok"
            run.wait(lambda: run.worker.stats.records >= len(events), 60, "all records")
            assert run.worker.stats.dead_letters == 0
    finally:
        receiver.stop()
    uids = check_received(receiver, events)
    first_occurrences_in_session_order(uids, events)
    assert run.worker.stats.failures >= 7
    print(f"persist drained {len(events)} events in {persist_s:.1f}s while the sink failed")


def test_hec_dead_letters_refused_event_and_exhausted_batches_then_moves_on(
    settings: Settings,
) -> None:
    """An event HEC refuses (400 invalid-event-number) is dead-lettered alone with its
    original bytes; batches that fail past max_attempts are dead-lettered (sink_unavailable)
    and the worker moves on to deliver later events."""
    rejected_user = NASTY_USERS[1]
    first = make_events(settings.tenant, sessions=5, per_session=4)
    receiver = HecReceiver(TOKEN)
    receiver.reject_user = rejected_user
    receiver.start()
    retry = {"max_attempts": 3, "backoff_base_ms": 20, "backoff_max_ms": 100}
    cfg = parse_siem_config(
        hec_config(receiver.url, retry=retry, batch={"max_events": 50, "linger_ms": 50})
    ).sinks[0]
    try:
        produce_events(settings, first)
        with running_sink(settings, cfg) as run:
            run.wait(lambda: run.worker.stats.records >= len(first), 60, "first records")
            refused = [e for e in first if e.get("user") == rejected_user and e["event"] != "print"]
            assert run.worker.stats.dead_letters == len(refused) > 0
            # Now the receiver is down for good (503): the next events exhaust their tries.
            receiver.mode = "error"
            second = make_events(settings.tenant, 1, 3, t0="2026-11-22T00:00:00")
            for e in second:
                e["uid"] = "second-" + e["uid"]
            produce_events(settings, second)
            total = len(first) + len(second)
            run.wait(lambda: run.worker.stats.records >= total, 60, "second records")
            # The worker moved on: a third wave is delivered once the receiver is back.
            receiver.mode = "ok"
            third = make_events(settings.tenant, 1, 3, t0="2026-11-23T00:00:00")
            for e in third:
                e["uid"] = "third-" + e["uid"]
                e["sid"] = "third-" + e["sid"]
            produce_events(settings, third)
            run.wait(lambda: run.worker.stats.records >= total + len(third), 60, "third records")
    finally:
        receiver.stop()
    assert receiver.violations == []
    got = {env["event"]["uid"] for env in receiver.events}
    deliverable = {e["uid"] for e in first if e["event"] != "print" and e not in refused}
    assert got == deliverable | {e["uid"] for e in third if e["event"] != "print"}
    letters = [d for d in iter_deadletters(settings) if d.worker == "siem-splunk"]
    by_reason: dict[str, set[bytes]] = {}
    for d in letters:
        assert d.source_topic == settings.topic_events
        by_reason.setdefault(d.reason, set()).add(d.value or b"")
    assert by_reason["sink_rejected"] == {encode_event(e) for e in refused}
    unavailable = {encode_event(e) for e in second if e["event"] != "print"}
    assert by_reason["sink_unavailable"] == unavailable
