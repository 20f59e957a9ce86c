"""The worker runtime: what every pipeline stage shares, written once.

A stage is a handler: a function from a polled batch of records to a report, which writes
durably and returns the dead letters it wants sent. The runtime does the rest, in this order:

1. **poll** a batch (records in offset order per partition) on the runtime's Kafka thread
   (kafka-python's consumer is not thread-safe; everything else runs on the event loop);
2. **handle** it (the stage's durable write; its retries go through :meth:`Runtime.retry`);
3. **dead-letter** the records the stage refused and wait until the broker confirms them
   (:class:`ingest.deadletter.DeadLetterProducer` bounds every dead letter, so one can always
   be sent);
4. **commit** the offsets (last handled + 1 per partition), only now. A commit the group
   refuses after a rebalance is harmless: writes are idempotent and the new owner redoes
   them.

Invariant: a record's offset is committed only after its stage's write and its dead letter (if
any) are durable, so a crash anywhere redelivers, never loses.

Cross-cutting behaviour lives here and only here:

- **retry policy** (:meth:`Runtime.retry`): capped exponential backoff with jitter
  (:mod:`sessionvault.backoff`, the one formula), one log line per attempt (a warning when the
  error is retriable, an error when it is not: an operator should look), every attempt reported
  to the
  worker's :class:`~ingest.health.Health`, so a worker that cannot progress shows
  ``STALLED`` in ``status`` instead of looking alive;
- **graceful stop**: the stop event interrupts every wait; a batch in hand is then left
  uncommitted (:class:`Stopped`) and redelivered to the next member;
- **lag reporting** (:meth:`KafkaRuntime.lag`) and the health reports of the loop.

Workers driven by PostgreSQL alone (the segmenter) use :class:`Runtime` for retry, backoff,
health and stop; Kafka consumers use :class:`KafkaRuntime`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from ingest import metrics
from ingest.consumer import BatchConsumer, CommitRejectedError, Record, next_offsets
from ingest.deadletter import DeadLetterProducer
from ingest.health import Health
from sessionvault.backoff import jittered_s
from sessionvault.errors import SessionVaultError, TransportError
from sessionvault.settings import Settings

T = TypeVar("T")

#: How often the run loop refreshes the per-partition lag gauge.
LAG_EVERY_S = 5.0
#: Seconds between polls after a failed poll (the consumer reconnects meanwhile).
POLL_RETRY_S = 1.0
#: Longest single sleep while waiting to retry: the consumer is polled (kept in its group)
#: at least this often.
KEEPALIVE_S = 1.0


class Stopped(Exception):
    """The stop event was set while waiting: leave now, without committing the batch in hand."""


@dataclass
class StageStats:
    """The running totals every Kafka stage keeps (its own stats class adds its fields);
    :meth:`KafkaRuntime.finish` counts them, once for every stage."""

    batches: int = 0
    records: int = 0
    dead_letters: int = 0
    commits: int = 0


@dataclass(frozen=True, slots=True)
class PollLimits:
    """How a poll gathers a batch: up to ``max_records`` / ``max_bytes``, lingering
    ``linger_ms`` after the first record, waiting ``wait_ms`` for one."""

    max_records: int
    max_bytes: int
    linger_ms: int
    wait_ms: int

    @classmethod
    def from_settings(cls, settings: Settings) -> PollLimits:
        return cls(
            settings.persist_batch_max_records,
            settings.persist_batch_max_bytes,
            settings.persist_linger_ms,
            settings.worker_poll_wait_ms,
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record a stage refused: ``ref`` indexes the polled batch."""

    ref: int
    reason: str
    message: str


class Runtime:
    """Stop, retry, backoff and health of one worker (see the module docstring).

    ``on_failure(exc)`` runs after each failed attempt of :meth:`retry` (drop a broken
    connection, mark a backend for a readiness check); ``retried`` are the error types retried
    (others propagate at once).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        health: Health | None = None,
        retried: tuple[type[SessionVaultError], ...] = (SessionVaultError,),
        on_failure: Callable[[SessionVaultError], Awaitable[None]] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.health = health or Health(settings.worker_stall_after_ms / 1000)
        self.retried = retried
        self.on_failure = on_failure
        self.log = logger or logging.getLogger(f"ingest.runtime.{name}")
        self.stop = asyncio.Event()
        self.retries = 0

    @contextlib.asynccontextmanager
    async def watching(self, stop: asyncio.Event | None) -> AsyncIterator[None]:
        """Relay an outside stop event into :attr:`stop` for the duration of the block."""
        if stop is None:
            yield
            return

        async def relay() -> None:
            await stop.wait()
            self.stop.set()

        watcher = asyncio.create_task(relay())
        try:
            yield
        finally:
            watcher.cancel()

    async def sleep_or_stop(self, seconds: float) -> None:
        """Sleep ``seconds``; raise :class:`Stopped` as soon as the worker is asked to stop."""
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            return
        raise Stopped

    async def retry(
        self,
        what: str,
        op: Callable[[], Awaitable[T]],
        *,
        passthrough: tuple[type[BaseException], ...] = (),
    ) -> tuple[T, int]:
        """Run ``op`` until it succeeds; returns (result, attempts).

        Every failure of a :attr:`retried` type backs off (:func:`jittered_s`) and is reported
        to :attr:`health`, which turns a failure that lasts into ``STALLED``; a non-retriable
        one is retried too (the worker must not die on, say, a missing table an operator can
        create) but logged as an error. ``passthrough`` types, and :class:`CommitRejectedError`,
        propagate at once. Raises :class:`Stopped` when asked to stop while waiting.
        """
        propagate: tuple[type[BaseException], ...] = (*passthrough, CommitRejectedError)
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await op()
                self.health.succeeded()
                return result, attempt
            except propagate:
                raise
            except self.retried as exc:
                self.health.failed(what, exc)
                self.retries += 1
                metrics.RETRIES.labels(self.name, what).inc()
                if self.on_failure is not None:
                    await self.on_failure(exc)
                delay = jittered_s(attempt, self.settings.retry_backoff_max_ms)
                self.log.log(
                    logging.WARNING if exc.retriable else logging.ERROR,
                    "%s: %s failed (attempt %d), retrying in %.1fs: %s",
                    self.name,
                    what,
                    attempt,
                    delay,
                    exc,
                )
                await self.sleep_or_stop(delay)


#: A stage's handler: the polled batch -> (its report, the dead letters it wants sent).
Handler = Callable[[Sequence[Record]], Awaitable[tuple[T, Sequence[DeadLetter]]]]


@dataclass(frozen=True)
class BatchReport:
    """What one batch did, as every stage reports it (passed to ``on_batch``); a stage's own
    report adds its figures."""

    records: int
    dead_letters: int
    offsets: dict[tuple[str, int], int]
    committed: bool
    seconds: float


@dataclass(frozen=True)
class Committed:
    """What the runtime did after a handler: dead letters sent, offsets, whether committed."""

    dead_letters: int
    offsets: dict[tuple[str, int], int]
    committed: bool


class KafkaRuntime(Runtime):
    """:class:`Runtime` plus one consumer-group membership: poll, dead-letter, commit."""

    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        group_id: str,
        topics: Sequence[str],
        consumer_factory: Callable[[], BatchConsumer] | None = None,
        deadletter_factory: Callable[[], DeadLetterProducer] | None = None,
        health: Health | None = None,
        retried: tuple[type[SessionVaultError], ...] = (SessionVaultError,),
        on_failure: Callable[[SessionVaultError], Awaitable[None]] | None = None,
        logger: logging.Logger | None = None,
        limits: PollLimits | None = None,
        stats: StageStats | None = None,
    ) -> None:
        self.limits = limits or PollLimits.from_settings(settings)
        self.stats = stats if stats is not None else StageStats()
        super().__init__(
            settings,
            name=name,
            health=health,
            retried=retried,
            on_failure=on_failure,
            logger=logger,
        )
        self.group_id = group_id
        self._consumer_factory = consumer_factory or (
            lambda: BatchConsumer(settings, group_id, list(topics))
        )
        self._deadletter_factory = deadletter_factory or (
            lambda: DeadLetterProducer(settings, worker=group_id)
        )
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"sv-{group_id}-kafka")
        self.consumer: BatchConsumer | None = None
        self._deadletters: DeadLetterProducer | None = None
        self._idle_since: float | None = None
        self._last_lag: int | None = None
        # Offsets whose records are durable but whose commit the group refused (a rebalance
        # was in progress): committed after the next poll for the partitions still owned.
        self._refused: dict[tuple[str, int], int] = {}
        self._lag_read_at = 0.0

    async def sleep_or_stop(self, seconds: float) -> None:
        """:meth:`Runtime.sleep_or_stop`, keeping the consumer in its group meanwhile (its
        partitions paused, so nothing is fetched ahead): a long retry does not cost the
        member its partitions."""
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            if self.consumer is not None:
                await self.kafka(self.consumer.hold)
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await super().sleep_or_stop(min(left, KEEPALIVE_S))
        if self.stop.is_set():
            raise Stopped

    async def kafka(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a Kafka client call on the runtime's own thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(*args, **kwargs))

    async def open(self) -> BatchConsumer:
        """Join the consumer group (retried until it works or the worker stops)."""
        if self.consumer is not None:
            return self.consumer
        opened, _ = await self.retry(
            "joining the consumer group", lambda: self.kafka(self._consumer_factory)
        )
        self.consumer = opened
        return opened

    async def poll(
        self, on_records: Callable[[Sequence[Record]], object] | None = None
    ) -> list[Record]:
        """One bounded batch (the settings' batch limits); [] when none came or the poll failed
        (reported to health, then a pause). ``on_records``: see
        :meth:`ingest.consumer.BatchConsumer.poll_batch` (called on the Kafka thread)."""
        consumer = await self.open()
        lim = self.limits

        def poll() -> list[Record]:
            consumer.release()  # a wait to retry paused the partitions
            return consumer.poll_batch(
                max_records=lim.max_records,
                max_bytes=lim.max_bytes,
                linger_ms=lim.linger_ms,
                wait_ms=lim.wait_ms,
                on_records=on_records,
            )

        try:
            records = await self.kafka(poll)
        except TransportError as exc:
            self.log.warning("%s: poll failed: %s", self.name, exc)
            self.health.failed("polling Kafka", exc)
            await self.sleep_or_stop(POLL_RETRY_S)
            return []
        await self._adapt_fetch_wait(consumer, bool(records))
        return records

    async def _adapt_fetch_wait(self, consumer: BatchConsumer, got: bool) -> None:
        """Short fetch waits while records flow (latency), long ones once the worker has seen
        none for ``consumer_idle_after_ms`` (idle CPU); see the settings."""
        now = asyncio.get_running_loop().time()
        if got:
            self._idle_since = None
            if consumer.fetch_wait_ms != consumer.busy_fetch_wait_ms:
                await self.kafka(consumer.set_idle, False)
            return
        if self._idle_since is None:
            self._idle_since = now
        idle_for_ms = (now - self._idle_since) * 1000
        if (
            idle_for_ms >= self.settings.consumer_idle_after_ms
            and consumer.fetch_wait_ms != consumer.idle_fetch_wait_ms
        ):
            await self.kafka(consumer.set_idle, True)

    async def send_deadletters(
        self, records: Sequence[Record], letters: Sequence[DeadLetter]
    ) -> None:
        """Send ``letters`` and wait for the broker's confirmation (retried)."""
        if not letters:
            return

        async def send() -> None:
            if self._deadletters is None:
                self._deadletters = await self.kafka(self._deadletter_factory)
            dl = self._deadletters

            def send_all() -> int:
                for letter in letters:
                    rec = records[letter.ref]
                    self.log.warning(
                        "%s: dead letter %s key=%r reason=%s: %s",
                        self.name,
                        rec.where,
                        (rec.key or b"")[:64],
                        letter.reason,
                        letter.message[:300],
                    )
                    dl.send(rec, letter.reason, letter.message)
                return dl.flush()

            await self.kafka(send_all)

        await self.retry("dead-letter delivery", send)

    async def commit(self, records: Sequence[Record]) -> tuple[dict[tuple[str, int], int], bool]:
        """Commit the offsets after ``records`` (retried); (offsets, whether committed: False
        when the group refused it after a rebalance, and the batch will be redelivered)."""
        offsets = next_offsets(records)
        if not offsets:
            return offsets, False
        consumer = await self.open()
        try:
            await self.retry("offset commit", lambda: self.kafka(consumer.commit, offsets))
        except CommitRejectedError as exc:
            self.log.warning(
                "%s: %s; committing again after the rebalance if the partitions stay ours",
                self.name,
                exc,
            )
            for key, offset in offsets.items():
                self._refused[key] = max(offset, self._refused.get(key, -1))
            return offsets, False
        self.stats.commits += 1
        for key, offset in offsets.items():
            if self._refused.get(key, -1) <= offset:
                self._refused.pop(key, None)
        return offsets, True

    async def commit_refused(self) -> None:
        """Commit what a rebalance refused, for the partitions this member still owns.

        Why: kafka-python keeps its fetch position on a partition it owns before and after a
        rebalance, so a batch whose commit was refused is not fetched again. Its records are
        durable; without this, nothing would commit them until a later batch on the same
        partition did, and at the end of a stream the group's lag would stay above 0 for
        ever. A partition that moved is left to its new owner, which redoes it from the last
        commit (idempotent writes)."""
        if not self._refused or self.consumer is None:
            return
        consumer = self.consumer
        try:
            owned = await self.kafka(consumer.assigned)
            offsets = {k: v for k, v in self._refused.items() if k in owned}
            if offsets:
                await self.kafka(consumer.commit, offsets)
                self.stats.commits += 1
        except CommitRejectedError:
            return  # still rebalancing: after the next poll
        except TransportError as exc:
            self.log.debug("%s: refused offsets not committed yet: %s", self.name, exc)
            return
        self._refused.clear()

    async def finish(
        self, records: Sequence[Record], letters: Sequence[DeadLetter], *, commit: bool = True
    ) -> Committed:
        """Steps 3 and 4 of the module docstring for a handled batch (counted in
        :attr:`stats`)."""
        await self.send_deadletters(records, letters)
        if commit:
            offsets, committed = await self.commit(records)
        else:
            offsets, committed = next_offsets(records), False
        self.stats.batches += 1
        self.stats.records += len(records)
        self.stats.dead_letters += len(letters)
        for letter in letters:
            metrics.DEAD_LETTERS.labels(self.name, letter.reason).inc()
        return Committed(len(letters), offsets, committed)

    async def lag(self) -> int | None:
        """Records behind the high watermark on this member's partitions (None: unknown);
        also sets the per-partition lag gauge."""
        if self.consumer is None:
            return None
        try:
            lags = await self.kafka(self.consumer.partition_lags)
        except TransportError as exc:
            self.log.debug("%s: lag unavailable: %s", self.name, exc)
            return self._last_lag
        self._last_lag = None if lags is None else sum(lags.values())
        for (topic, partition), behind in (lags or {}).items():
            metrics.LAG.labels(self.name, topic, str(partition)).set(behind)
        self._lag_read_at = time.monotonic()
        return self._last_lag

    async def run(
        self,
        handle: Callable[[Sequence[Record]], Awaitable[T]],
        *,
        stop: asyncio.Event | None = None,
        on_batch: Callable[[T], object] | None = None,
        on_idle: Callable[[], Awaitable[None]] | None = None,
        on_start: Callable[[], Awaitable[None]] | None = None,
        after_poll: Callable[[], Awaitable[None]] | None = None,
        prefetch: bool = False,
        ahead: Callable[[Sequence[Record]], object] | None = None,
        ahead_piece: Callable[[Sequence[Record]], object] | None = None,
    ) -> None:
        """Poll and handle until stopped. ``handle`` is the stage's whole batch step (it calls
        :meth:`finish`); ``on_idle`` runs after a poll that found nothing, ``after_poll`` after
        every poll. A stop while a batch is in hand leaves it uncommitted (redelivered).

        With ``prefetch`` the next batch is polled (on the Kafka thread) while this one is
        handled, so fetching overlaps decoding and writing. The invariant is unchanged: a
        batch's offsets are still committed only by its own ``handle``, after its durable
        write, and batches are handled in poll order. What it adds is a window in which a
        rebalance inside the prefetching poll can hand back records of the batch in hand
        (they are handled twice, which idempotent writes make harmless) or revoke its
        partitions (its commit is then refused and the new owner redoes it, as without
        prefetch). A prefetched batch not yet handled at a stop is dropped, uncommitted.
        ``ahead(records)`` is called with a prefetched batch as soon as it arrives, while the
        batch before it is still being handled: a stage may start work for it there (and find
        that work again in ``handle``); it must not store or commit anything. ``ahead_piece``
        is called earlier still, on the Kafka thread, with the records of each fetch of a
        prefetching poll as they arrive (the same objects ``ahead`` then gets in batch order,
        see :meth:`ingest.consumer.BatchConsumer.poll_batch`); the same rule holds, and the
        stage must expect pieces of a poll whose batch it then never handles (at a stop).
        """
        async with self.watching(stop):
            ahead_poll: asyncio.Future[list[Record]] | None = None
            try:
                await self.open()
                if on_start is not None:
                    await on_start()
                while not self.stop.is_set():
                    if ahead_poll is not None:
                        records, ahead_poll = await ahead_poll, None
                    else:
                        records = await self.poll()
                    if not records:
                        self.health.progressed()
                        if on_idle is not None:
                            await on_idle()
                    else:
                        if prefetch:
                            ahead_poll = asyncio.ensure_future(self._poll_ahead(ahead, ahead_piece))
                        started = time.monotonic()
                        report = await handle(records)
                        metrics.observe_batch(
                            self.name,
                            time.monotonic() - started,
                            len(records),
                            sum(len(r.value or b"") for r in records),
                        )
                        self.health.progressed()
                        if on_batch is not None:
                            res = on_batch(report)
                            if inspect.isawaitable(res):
                                await res
                    await self.commit_refused()
                    if after_poll is not None:
                        await after_poll()
                    if time.monotonic() - self._lag_read_at >= LAG_EVERY_S:
                        await self.lag()  # the lag gauge stays fresh between scrapes
            except Stopped:
                self.log.info("%s: stopping with an uncommitted batch; it will be redelivered",
                              self.name)  # fmt: skip
            finally:
                if ahead_poll is not None:
                    # Its records are dropped uncommitted; wait for the poll so the Kafka
                    # thread is free for close().
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await ahead_poll

    async def _poll_ahead(
        self,
        ahead: Callable[[Sequence[Record]], object] | None,
        piece: Callable[[Sequence[Record]], object] | None,
    ) -> list[Record]:
        records = await self.poll(piece)
        if records and ahead is not None:
            ahead(records)
        return records

    async def close(self) -> None:
        """Leave the group and close the dead-letter producer and the Kafka thread."""
        if self.consumer is not None:
            await self.kafka(self.consumer.close)
            self.consumer = None
        if self._deadletters is not None:
            await self.kafka(self._deadletters.close)
            self._deadletters = None
        self._thread.shutdown(wait=True)


#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: glibc refuses an mmap threshold above this on 64-bit systems.
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


@dataclass(frozen=True)
class SettledHeap:
    """What :func:`settle_heap` did."""

    frozen_objects: int
    malloc_tuned: bool


def _keep_freed_memory(keep_bytes: int) -> bool:
    """Ask glibc's malloc to serve blocks up to 32 MiB (or ``keep_bytes``) from its heap and
    to keep up to ``keep_bytes`` of freed memory; False where there is no glibc ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, min(keep_bytes, _MMAP_THRESHOLD_MAX))
        and mallopt(_M_TRIM_THRESHOLD, min(keep_bytes, 2**31 - 1))
    )


def settle_heap(keep_freed_bytes: int = 0) -> SettledHeap:
    """Prepare the process that runs a long-lived worker, once start-up is over: called by the
    process's owner (the CLI's worker shell does, with ``SESSIONVAULT_WORKER_HEAP_KEEP_BYTES``),
    never by library code: like logging, these are the process's to configure.

    1. Collect once, then move every object alive now out of the cyclic garbage collector's
       view (:func:`gc.freeze`). Why: a worker allocates tens of thousands of short-lived
       containers per batch (a keystroke-heavy chunk header alone is about 240 small lists),
       which sets off collections that also walked every module, class and function imported
       at start-up, objects that never become garbage. Garbage made later is still collected;
       only what is frozen here is never freed, and that is the start-up heap, which lives as
       long as the process anyway.
    2. With ``keep_freed_bytes`` > 0 (glibc only), have malloc keep that much freed memory for
       reuse and serve blocks up to 32 MiB from its heap. Why: every Kafka fetch allocates and
       frees buffers of megabytes (kafka-python copies a response several times); by default
       each is a fresh mmap whose pages fault in one by one, with the interpreter lock held.
       The price is a resident size that stays near its peak (bounded by ``keep_freed_bytes``
       above what is in use).

    Measured on the persist worker (issue 16, docs/benchmarks.md): the first gave 20% on the
    mixed corpus, the second raised kafka-python's MB per CPU-second by about 40%.
    """
    gc.collect()
    gc.freeze()
    tuned = keep_freed_bytes > 0 and _keep_freed_memory(keep_freed_bytes)
    return SettledHeap(gc.get_freeze_count(), tuned)


def run_blocking(main: Callable[[asyncio.Event], Awaitable[None]], stop: threading.Event) -> None:
    """Run an async worker, ``main(stop_event)``, in this thread until ``stop`` (a
    :class:`threading.Event`) is set: for callers that run workers in threads (tests,
    benches). The worker shell of the CLI stops workers on SIGTERM/SIGINT instead."""

    async def bridge() -> None:
        astop = asyncio.Event()
        loop = asyncio.get_running_loop()
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                if stop.wait(0.5):
                    loop.call_soon_threadsafe(astop.set)
                    return

        threading.Thread(target=watch, name="sv-stop-bridge", daemon=True).start()
        try:
            await main(astop)
        finally:
            done.set()

    asyncio.run(bridge())


__all__ = [
    "KEEPALIVE_S",
    "Committed",
    "DeadLetter",
    "Handler",
    "KafkaRuntime",
    "PollLimits",
    "Runtime",
    "SettledHeap",
    "Stopped",
    "run_blocking",
    "settle_heap",
]
