"""A worker's fetch wait follows its load: short while records flow (latency), long once it has
been idle (CPU), and a record arriving while an idle worker's long fetch is held is taken well
before the wait is up (tansu answers the held fetch when it next looks at it: 1.5 s here, at
the default 5 s wait). Real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid

import pytest

from ingest.kafka import make_producer
from ingest.persist import PersistWorker
from schemas import encode_chunk
from sessionvault.settings import Settings
from tests.integration.persist_helpers import build_session, fetch_all

pytestmark = pytest.mark.integration

#: The production default (sessionvault.settings). It was 30 s here, to make a record that
#: waits for the held fetch to run out obvious; but tansu answers a held fetch only when it next
#: looks at it (here 0.04-1.6 s after the record at 5 s, 5-10 s after it at 30 s), so at 30 s
#: this test's "half the wait" bound passed at 14 of 15 s and could hardly fail.
IDLE_WAIT_MS = 5_000


def test_an_idle_worker_holds_long_fetches_and_still_takes_a_new_record_at_once(
    settings: Settings,
) -> None:
    s = dataclasses.replace(
        settings,
        consumer_fetch_max_wait_ms=100,
        consumer_idle_fetch_max_wait_ms=IDLE_WAIT_MS,
        consumer_idle_after_ms=1_000,
    )
    session = build_session(s.tenant, str(uuid.uuid4()), 2, random.Random(3))

    async def scenario() -> tuple[int, int, float, int]:
        worker = PersistWorker(s)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop=stop))
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while worker.rt.consumer is None or worker.rt.consumer.fetch_wait_ms != IDLE_WAIT_MS:
                assert loop.time() < deadline, "the idle worker never switched to long fetches"
                assert not task.done()
                await asyncio.sleep(0.1)
            idle_wait = worker.rt.consumer.fetch_wait_ms
            # A producer connected beforehand: the time below is the record's, not a client's
            # start-up.
            producer = await asyncio.to_thread(make_producer, s)
            await asyncio.sleep(1.0)  # a long fetch is now held by the broker
            t0 = time.monotonic()

            def send() -> None:
                for c in session.chunks:
                    producer.send(s.topic_chunks, key=c.sid.encode(), value=encode_chunk(c))
                producer.flush(timeout=30)

            try:
                await asyncio.to_thread(send)
            finally:
                await asyncio.to_thread(producer.close)
            dsn = s.postgres_dsn.get()
            while (await fetch_all(dsn, "SELECT count(*) AS n FROM chunks"))[0]["n"] < 2:
                assert loop.time() < deadline, "the chunks were never stored"
                await asyncio.sleep(0.05)
            stored_after_s = time.monotonic() - t0
            return idle_wait, worker.rt.consumer.fetch_wait_ms, stored_after_s, 2
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    idle_wait, wait_after, stored_after_s, _ = asyncio.run(scenario())
    assert idle_wait == IDLE_WAIT_MS
    assert wait_after == 100  # records flow again: short fetches
    # Taken well before the held fetch's wait is up, not when it ran out.
    assert stored_after_s < IDLE_WAIT_MS / 1000 / 2, stored_after_s
