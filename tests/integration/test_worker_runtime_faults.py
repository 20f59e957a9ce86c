"""The same injected faults through every worker give the same behaviour, because every worker
runs on one runtime (:mod:`ingest.runtime`). Real broker, PostgreSQL and OpenSearch-compatible
server; each worker in-process with its real dependencies, except the one injected fault:

1. a non-retriable driver error in the worker's durable step (PostgreSQL refusing the worker's
   password for persist, index and the segmenter; the broker refusing the detect worker's
   alerts; the SIEM peer refusing every delivery). Every worker keeps running, commits
   nothing, and reports ``stalled`` naming what fails (what ``status`` shows);
2. a stop signal while the batch is in hand (the worker is retrying it): every worker returns
   within seconds, still with nothing committed;
3. the fault cleared, a new member of the same group takes the batch again: stored, delivered
   or alerted once, everything committed, health ``running``;
4. a record that cannot be dead-lettered whole (10 MiB, which the broker accepts): every Kafka
   worker commits past it and the good record after it without stalling; where the stage
   dead-letters it (persist, a SIEM sink), the dead letter is a bounded prefix with the
   original's size and sha256. (``test_chaos_records.py`` adds ten more kinds of hostile
   record, all workers at once.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import pytest

from ingest.deadletter import iter_deadletters
from ingest.health import RUNNING, STALLED
from ingest.index_worker import IndexWorker
from ingest.kafka import make_producer
from ingest.persist import PersistWorker
from ingest.segmenter import Segmenter
from schemas import encode_chunk
from schemas.codec import CHUNK_MAGIC
from sessionvault.errors import TransportError
from sessionvault.settings import Settings
from siem.config import RetryPolicy, parse_siem_config
from siem.detect import DetectWorker
from siem.sinks.base import SinkError
from siem.worker import SinkWorker
from storage import pg
from tests.integration.import_support import drain
from tests.integration.persist_helpers import (
    build_session,
    drained,
    fetch_all,
    group_lag,
    produce,
    run_until_drained,
)
from tests.integration.siem_support import curl_pipe_shell, make_events, produce_events

pytestmark = pytest.mark.integration

#: How long the worker may keep failing before it must say ``stalled``.
STALL_AFTER_MS = 500
#: How soon a stopped worker must have returned.
STOP_WITHIN_S = 10.0


class Fault:
    """The injected fault, on until :meth:`clear`."""

    active = True

    def clear(self) -> None:
        self.active = False


def refused_connect(fault: Fault) -> Callable[[str], Awaitable[pg.Connection]]:
    """``pg.connect``, except that while the fault is on PostgreSQL refuses the password: a
    driver error that is not retriable (retrying the same password cannot help)."""

    async def connect(dsn: str) -> pg.Connection:
        if fault.active:
            err = asyncpg.exceptions.InvalidPasswordError("injected: password authentication")
            raise pg.translate(err, "cannot connect to PostgreSQL")
        return await pg.connect(dsn)

    return connect


class RefusingProducer:
    """The detect worker's alert producer: a real one, except that while the fault is on the
    broker refuses every send (not retriable: an authorization failure)."""

    def __init__(self, settings: Settings, fault: Fault) -> None:
        self._fault = fault
        self._real = make_producer(settings)

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> Any:
        if self._fault.active:
            err = TransportError("injected: topic authorization failed")
            err.retriable = False
            raise err
        return self._real.send(topic, key=key, value=value)

    def flush(self, timeout: float | None = None) -> None:
        self._real.flush(timeout=timeout)

    def close(self, timeout: float | None = None) -> None:
        self._real.close(timeout=timeout)


class RefusingSink:
    """A SIEM peer that keeps what it is sent, and refuses everything while the fault is on."""

    name = "refusing"

    def __init__(self, fault: Fault) -> None:
        self._fault = fault
        self.received: list[bytes] = []

    def encode(self, event: Any) -> bytes | None:
        return orjson.dumps(dict(event))

    def deliver(self, units: Sequence[bytes]) -> None:
        if self._fault.active:
            raise SinkError("injected: peer refuses the connection", retriable=False)
        self.received.extend(units)

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Case:
    """One worker: how to make it with the fault injected, what it is given, how much of it
    is done (0: nothing committed or stored) and what done means."""

    name: str
    group: str
    prepare: Callable[[Settings], None]
    make: Callable[[Settings, Fault], Any]
    progress: Callable[[Settings, Any], Awaitable[int]]
    done: Callable[[Settings, Any], Awaitable[bool]]


async def _count(settings: Settings, sql: str) -> int:
    rows = await fetch_all(settings.postgres_dsn.get(), sql)
    return int(rows[0]["n"])


def _committed(settings: Settings, group: str, topic: str) -> int:
    """1 when ``group`` has committed anything on ``topic``, else 0."""
    return int(topic in group_lag(settings, group))


def _chunks(settings: Settings) -> None:
    session = build_session(settings.tenant, str(uuid.uuid4()), 4, random.Random(11))
    produce(
        settings, settings.topic_chunks, ((c.sid.encode(), encode_chunk(c)) for c in session.chunks)
    )


def _stored_chunks(settings: Settings) -> None:
    """Chunks stored by the persist worker, not yet rendered (no segmenter beside it)."""
    _chunks(settings)
    asyncio.run(run_until_drained(settings, [settings.topic_chunks], segments=False))


def _events(settings: Settings) -> None:
    produce_events(settings, make_events(settings.tenant, sessions=2, per_session=3))


def _stored_events(settings: Settings) -> None:
    _events(settings)
    drain(settings, [settings.topic_events])


def _alerting_event(settings: Settings) -> None:
    produce_events(
        settings, [curl_pipe_shell(settings.tenant, "7e57c0de-0000-4000-8000-0000000fa017")]
    )


def _detect_group(settings: Settings) -> str:
    """A detect group of this test's own (the suite's other detect tests use ``detect``)."""
    return f"detect-{settings.tenant}"


def _sink_config(settings: Settings) -> Any:
    cfg = parse_siem_config(b'[[sink]]\nname = "faults"\ntype = "jsonl"\n').sinks[0]
    # Unbounded tries, as every other worker retries its durable step.
    return dataclasses.replace(cfg, retry=RetryPolicy(0, 10, 100))


CASES = [
    Case(
        "persist",
        "persist",
        _chunks,
        lambda s, f: PersistWorker(s, connect=refused_connect(f)),
        lambda s, w: _count(s, "SELECT count(*) AS n FROM chunks"),
        lambda s, w: _drained_and(s, "persist", s.topic_chunks, w.stats.chunks_inserted == 4),
    ),
    Case(
        "index",
        "index",
        _stored_events,
        lambda s, f: IndexWorker(
            s, connect=refused_connect(f), prefix=f"rt-{uuid.uuid4().hex[:10]}"
        ),
        lambda s, w: _as_async(_committed(s, "index", s.topic_events) + w.stats.indexed),
        lambda s, w: _drained_and(s, "index", s.topic_events, w.stats.indexed >= 6),
    ),
    Case(
        "segments",
        "",
        _stored_chunks,
        lambda s, f: Segmenter(s, connect=refused_connect(f)),
        lambda s, w: _count(s, "SELECT count(*) AS n FROM session_text"),
        lambda s, w: _queue_empty_and_rendered(s),
    ),
    Case(
        "detect",
        "detect",
        _alerting_event,
        lambda s, f: DetectWorker(
            s, group_id=_detect_group(s), producer_factory=lambda: RefusingProducer(s, f)
        ),
        lambda s, w: _as_async(_committed(s, _detect_group(s), s.topic_events) + w.stats.alerts),
        lambda s, w: _drained_and(s, _detect_group(s), s.topic_events, w.stats.alerts == 1),
    ),
    Case(
        "siem",
        "siem-faults",
        _events,
        lambda s, f: SinkWorker(s, _sink_config(s), sink=RefusingSink(f)),
        lambda s, w: _as_async(_committed(s, "siem-faults", s.topic_events) + w.stats.delivered),
        lambda s, w: _drained_and(s, "siem-faults", s.topic_events, w.stats.delivered == 6),
    ),
]


def _consumer_state(worker: Any) -> object:
    rt = getattr(worker, "rt", None)
    consumer = getattr(getattr(rt, "consumer", None), "_consumer", None)
    if consumer is None:
        return "no consumer"
    return {
        "assigned": sorted((tp.topic[-6:], tp.partition) for tp in consumer.assignment()),
        "paused": sorted((tp.topic[-6:], tp.partition) for tp in consumer.paused()),
    }


async def _as_async(value: int) -> int:
    return value


async def _drained_and(settings: Settings, group: str, topic: str, condition: bool) -> bool:
    return condition and drained(settings, [topic], group)


async def _queue_empty_and_rendered(settings: Settings) -> bool:
    queued = await _count(settings, "SELECT count(*) AS n FROM segment_queue")
    rendered = await _count(settings, "SELECT count(*) AS n FROM text_segments")
    return queued == 0 and rendered > 0


async def _until(
    what: str,
    check: Callable[[], Awaitable[bool]],
    task: Any,
    timeout_s: float,
    state: Callable[[], object] = lambda: "",
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if task.done():
            raise AssertionError(f"the worker returned before {what}: {task.exception()!r}")
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what} {state()}")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_non_retriable_driver_error_and_a_stop_mid_batch_behave_alike_in_every_worker(
    settings: Settings, case: Case
) -> None:
    s = dataclasses.replace(
        settings, worker_stall_after_ms=STALL_AFTER_MS, retry_backoff_max_ms=200
    )
    case.prepare(s)
    fault = Fault()

    async def failing_then_stopped() -> str:
        worker = case.make(s, fault)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop=stop))

        async def stalled() -> bool:
            return bool(worker.health.verdict().state == STALLED)

        await _until("the worker to report stalled", stalled, task, 60)
        reason = str(worker.health.verdict().reason)
        assert await case.progress(s, worker) == 0, "committed or stored despite the fault"
        # The stop signal arrives while the batch is in hand (being retried).
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        stop.set()
        await asyncio.wait_for(task, STOP_WITHIN_S)
        assert loop.time() - t0 < STOP_WITHIN_S
        assert await case.progress(s, worker) == 0, "committed when stopped mid-batch"
        return reason

    reason = asyncio.run(failing_then_stopped())
    assert "failing" in reason
    assert "injected" in reason

    fault.clear()

    async def recovered() -> None:
        worker = case.make(s, fault)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop=stop))
        try:
            await _until(
                "the batch to be done",
                lambda: case.done(s, worker),
                task,
                90,
                lambda: (
                    worker.stats,
                    worker.health.verdict(),
                    group_lag(s, case.group or "persist"),
                    _consumer_state(worker),
                ),
            )
            assert worker.health.verdict().state == RUNNING
        finally:
            stop.set()
            await asyncio.wait_for(task, STOP_WITHIN_S)
        if isinstance(worker, SinkWorker):
            received = worker.sink.received  # type: ignore[attr-defined]
            assert len(received) == len(set(received)) == 6  # each event once

    asyncio.run(recovered())


#: Far over ``max_record_bytes`` and over what a dead letter may carry; the broker accepts it.
OVERSIZED_BYTES = 10 * 1024 * 1024


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.name != "segments"],
    ids=[c.name for c in CASES if c.name != "segments"],
)
def test_a_record_that_cannot_be_dead_lettered_whole_is_committed_past_by_every_worker(
    settings: Settings, case: Case
) -> None:
    """A 10 MiB record the broker accepted, then a good one: every Kafka worker commits past
    both in bounded time and does not stall. A stage that dead-letters it (persist, a SIEM
    sink) sends a bounded prefix with the original's size and sha256; index and detect leave
    dead letters of broken records to persist (documented), and skip it."""
    s = dataclasses.replace(settings, worker_stall_after_ms=5_000)
    topic = s.topic_chunks if case.name == "persist" else s.topic_events
    big = (
        CHUNK_MAGIC + random.Random(1).randbytes(OVERSIZED_BYTES)
        if topic == s.topic_chunks
        else b'{"event":"x","pad":"' + b"A" * OVERSIZED_BYTES + b'"}'
    )
    producer = make_producer(s, max_request_size=12 * 1024 * 1024)
    try:
        producer.send(topic, key=b"big", value=big).get(timeout=60)
    finally:
        producer.close(timeout=5)
    case.prepare(s)  # the good records, after it
    if case.name == "index":
        drain(s, [topic])  # index reads what persist stored (and persist dead-letters it)
    group = _detect_group(s) if case.name == "detect" else case.group
    fault = Fault()
    fault.clear()

    async def run() -> Any:
        worker = case.make(s, fault)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop=stop))
        try:
            await _until(
                "the group to commit past both records",
                lambda: _drained_and(s, group, topic, True),
                task,
                120,
                lambda: (worker.stats, worker.health.verdict(), group_lag(s, group)),
            )
            assert worker.health.verdict().state == RUNNING
        finally:
            stop.set()
            await asyncio.wait_for(task, STOP_WITHIN_S)
        return worker

    asyncio.run(run())
    if case.name in ("persist", "siem"):
        worker_name = "persist" if case.name == "persist" else group
        letters = [d for d in iter_deadletters(s) if d.worker == worker_name]
        assert len(letters) == 1, letters
        letter = letters[0]
        assert letter.truncated  # it could not carry the whole original
        assert letter.original_bytes == len(big)
        assert letter.original_sha256 == hashlib.sha256(big).hexdigest()
