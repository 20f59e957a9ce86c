"""replay.bridge: an async stream consumed from sync code, bounded and closable."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from replay.bridge import iterate_in_thread


def test_items_arrive_in_order_and_the_async_side_runs_on_another_thread() -> None:
    threads: set[int] = set()

    async def numbers() -> AsyncIterator[int]:
        for i in range(1000):
            threads.add(threading.get_ident())
            if i % 100 == 0:
                await asyncio.sleep(0)
            yield i

    assert list(iterate_in_thread(numbers, maxsize=8)) == list(range(1000))
    assert threads
    assert threading.get_ident() not in threads


def test_an_exception_of_the_async_side_reaches_the_consumer_after_earlier_items() -> None:
    async def failing() -> AsyncIterator[int]:
        yield 1
        raise LookupError("session vanished")

    it = iterate_in_thread(failing)
    assert next(it) == 1
    with pytest.raises(LookupError, match="vanished"):
        next(it)


def test_producer_stays_at_most_maxsize_ahead_and_stops_when_the_consumer_closes() -> None:
    produced = 0
    closed = threading.Event()

    async def endless() -> AsyncIterator[int]:
        nonlocal produced
        try:
            while True:
                produced += 1
                yield produced
        finally:
            closed.set()

    it = iterate_in_thread(endless, maxsize=4)
    assert [next(it) for _ in range(3)] == [1, 2, 3]
    # 3 consumed + at most 4 queued + 1 waiting to be put.
    assert produced <= 3 + 4 + 1
    it.close()
    assert closed.wait(5), "the async generator was not closed"
