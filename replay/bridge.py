"""Consume an asynchronous stream from synchronous code (the real-time player) with bounded
memory: the async side runs on its own event loop in a thread and hands items over through a
bounded queue, so it never runs more than ``maxsize`` items ahead of the consumer."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Generator
from typing import TypeVar

T = TypeVar("T")

_POLL_S = 0.1


class _Done:
    pass


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def iterate_in_thread(
    make: Callable[[], AsyncIterator[T]], *, maxsize: int = 256
) -> Generator[T, None, None]:
    """Iterate ``make()`` (an async iterator, created on the worker thread's loop).

    Exceptions of the async side are re-raised to the consumer. Closing the returned iterator
    early (a player that quits) stops the async side at its next item.
    """
    q: queue.Queue[T | _Done | _Failed] = queue.Queue(maxsize)
    stop = threading.Event()

    def put(item: T | _Done | _Failed) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    async def pump() -> None:
        agen = make()
        try:
            async for item in agen:
                if not put(item):
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                await aclose()

    def run() -> None:
        try:
            asyncio.run(pump())
        except BaseException as exc:
            put(_Failed(exc))
        else:
            put(_Done())

    worker = threading.Thread(target=run, name="replay-reader", daemon=True)
    worker.start()

    def consume() -> Generator[T, None, None]:
        try:
            while True:
                item = q.get()
                if isinstance(item, _Done):
                    return
                if isinstance(item, _Failed):
                    raise item.exc
                yield item
        finally:
            stop.set()
            worker.join(timeout=10)

    return consume()
