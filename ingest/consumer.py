"""A consumer-group member for the workers: bounded batches, explicit commits, error translation.

kafka-python's exceptions are translated to :class:`~sessionvault.errors.TransportError` here;
nothing above this module sees them. The consumer is synchronous and not thread-safe: the
persist worker calls it from one dedicated thread.

Batches keep Kafka's per-partition order: :meth:`BatchConsumer.poll_batch` returns records
sorted by (topic, partition, offset).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kafka.errors as kerr
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from ingest.kafka import API_VERSION, security_config, to_transport_error
from ingest.topics import consumer_tuning
from sessionvault.errors import TransportError
from sessionvault.settings import Settings, require

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record. ``value`` is the original bytes, untouched."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int = -1

    @classmethod
    def of(cls, topic: str, partition: int, message: Any) -> Record:
        """The record of a kafka-python ``ConsumerRecord`` (headers with None values as b"")."""
        return cls(
            topic,
            partition,
            message.offset,
            message.key,
            message.value,
            tuple((k, v or b"") for k, v in (message.headers or ())),
            message.timestamp,
        )

    @property
    def size(self) -> int:
        return len(self.value or b"") + len(self.key or b"")

    @property
    def where(self) -> str:
        """``topic[partition]@offset``, for log lines and dead-letter messages."""
        return f"{self.topic}[{self.partition}]@{self.offset}"


class CommitRejectedError(TransportError):
    """The group rebalanced and this member no longer owns some partitions: the commit is
    refused. Harmless with idempotent writes: the new owner reprocesses from the last commit."""

    retriable = False


def next_offsets(records: Sequence[Record]) -> dict[tuple[str, int], int]:
    """Offsets to commit after ``records``: last offset + 1 per (topic, partition)."""
    out: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        if r.offset + 1 > out.get(key, -1):
            out[key] = r.offset + 1
    return out


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        **security_config(settings),
        "bootstrap_servers": settings.kafka_bootstrap.split(","),
        "group_id": group_id,
        "client_id": f"sessionvault-{group_id}",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.persist_batch_max_records,
        # A record up to max_record_bytes must fit one fetch, or it could never be consumed
        # (and so never dead-lettered).
        "max_partition_fetch_bytes": max(settings.max_record_bytes + 64 * 1024, 1024 * 1024),
        "fetch_max_bytes": max(settings.persist_batch_max_bytes, settings.max_record_bytes * 2),
        "request_timeout_ms": 30_000,
        "reconnect_backoff_ms": 100,
        "reconnect_backoff_max_ms": 2_000,
        "api_version": API_VERSION,
        **consumer_tuning(settings),
    }
    config.update(overrides)
    return config


class BatchConsumer:
    """A consumer-group member subscribed to ``topics`` with manual, explicit offset commits."""

    def __init__(
        self,
        settings: Settings,
        group_id: str,
        topics: Sequence[str],
        *,
        factory: Callable[..., Any] = KafkaConsumer,
        **overrides: Any,
    ) -> None:
        require(settings, "kafka_bootstrap")
        self.group_id = group_id
        self.topics = list(topics)
        config = consumer_config(settings, group_id, **overrides)
        self.busy_fetch_wait_ms = int(config["fetch_max_wait_ms"])
        self.idle_fetch_wait_ms = max(
            self.busy_fetch_wait_ms, settings.consumer_idle_fetch_max_wait_ms
        )
        self.fetch_wait_ms = self.busy_fetch_wait_ms
        try:
            self._consumer = factory(**config)
            self._consumer.subscribe(self.topics)
        except (kerr.KafkaError, OSError) as exc:
            raise to_transport_error(exc, f"join consumer group {group_id}") from exc

    def poll_batch(
        self,
        *,
        max_records: int,
        max_bytes: int,
        linger_ms: int,
        wait_ms: int,
        on_records: Callable[[Sequence[Record]], object] | None = None,
    ) -> list[Record]:
        """Wait up to ``wait_ms`` for a first record, then gather more for up to ``linger_ms``
        or until ``max_records`` / ``max_bytes``. Sorted by (topic, partition, offset).

        ``on_records`` is called (on this thread) with the records of each fetch as it comes,
        before the batch is complete: the very objects the batch returns, each in exactly one
        call, in offset order per partition (the batch's own order may interleave them)."""
        records: list[Record] = []
        size = 0
        start = time.monotonic()
        first_at: float | None = None
        while True:
            now = time.monotonic()
            if first_at is None:
                timeout = max(0.0, start + wait_ms / 1000 - now)
            else:
                timeout = max(0.0, first_at + linger_ms / 1000 - now)
            try:
                got = self._consumer.poll(
                    timeout_ms=int(timeout * 1000), max_records=max_records - len(records)
                )
            except (kerr.KafkaError, OSError) as exc:
                raise to_transport_error(exc, "poll") from exc
            fresh = len(records)
            for tp, batch in got.items():
                for m in batch:
                    rec = Record.of(tp.topic, tp.partition, m)
                    records.append(rec)
                    size += rec.size
            if on_records is not None and len(records) > fresh:
                on_records(records[fresh:])
            now = time.monotonic()
            if records and first_at is None:
                first_at = now
            if len(records) >= max_records or size >= max_bytes:
                break
            if first_at is None and now >= start + wait_ms / 1000:
                break
            if first_at is not None and now >= first_at + linger_ms / 1000:
                break
        records.sort(key=lambda r: (r.topic, r.partition, r.offset))
        return records

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit the given next offsets; raises CommitRejectedError after (or during) a
        rebalance: the records are redelivered to whoever owns the partitions next."""
        if not offsets:
            return
        payload = {
            TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()
        }
        try:
            self._consumer.commit(payload)
        except (
            kerr.CommitFailedError,
            kerr.IllegalStateError,
            kerr.RebalanceInProgressError,
        ) as exc:
            raise CommitRejectedError(f"kafka: commit refused after a rebalance: {exc}") from exc
        except (kerr.KafkaError, OSError) as exc:
            raise to_transport_error(exc, "commit offsets") from exc

    def lag(self) -> int | None:
        """Records behind the high watermark over the assigned partitions (None: unknown yet)."""
        lags = self.partition_lags()
        return None if lags is None else sum(lags.values())

    def assigned(self) -> set[tuple[str, int]]:
        """The (topic, partition) pairs this member owns now."""
        try:
            return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        except (kerr.KafkaError, OSError) as exc:
            raise to_transport_error(exc, "read the assignment") from exc

    def partition_lags(self) -> dict[tuple[str, int], int] | None:
        """Records behind the high watermark per assigned (topic, partition); None while
        nothing is assigned or a watermark is not known yet."""
        try:
            assigned = self._consumer.assignment()
            if not assigned:
                return None
            out: dict[tuple[str, int], int] = {}
            for tp in assigned:
                high = self._consumer.highwater(tp)
                if high is None:
                    return None
                position = int(self._consumer.position(tp, timeout_ms=1000))
                out[(tp.topic, tp.partition)] = max(0, int(high) - position)
            return out
        except (kerr.KafkaError, OSError) as exc:
            raise to_transport_error(exc, "read lag") from exc

    def set_idle(self, idle: bool) -> bool:
        """Use the idle (long) or the busy fetch wait from the next fetch on; True when it
        changed. kafka-python has no public setter: its fetcher's config is changed, and where
        a kafka-python keeps it elsewhere nothing changes (the busy wait stays: more idle CPU,
        never more latency; ``tests/integration/test_consumer_fetch_wait.py`` notices)."""
        wanted = self.idle_fetch_wait_ms if idle else self.busy_fetch_wait_ms
        if wanted == self.fetch_wait_ms:
            return False
        config = getattr(getattr(self._consumer, "_fetcher", None), "config", None)
        if not isinstance(config, dict) or "fetch_max_wait_ms" not in config:
            return False
        config["fetch_max_wait_ms"] = wanted
        self.fetch_wait_ms = wanted
        return True

    def hold(self) -> None:
        """Pause every assigned partition and poll (fetching nothing), which keeps this member
        in its group while the worker waits to retry (``max_poll_interval_ms``). A record
        fetched anyway (new partitions after a rebalance) is put back by seeking to it, so
        nothing is skipped. Best effort: a failure here shows up at the commit."""
        c = self._consumer
        try:
            assigned = c.assignment()
            if not assigned:
                # Not a member yet (no poll joined the group): nothing to keep. A poll here
                # would start a join it never finishes, which kept the next member of the group
                # from getting partitions (seen with tansu).
                return
            c.pause(*assigned)
            got = c.poll(timeout_ms=0, max_records=1)
            for tp, msgs in got.items():
                if msgs:
                    c.seek(tp, msgs[0].offset)
                c.pause(tp)
        except Exception as exc:  # kafka-python errors: the commit will tell; keep retrying
            log.debug("keepalive poll of %s failed: %s", self.group_id, exc)

    def release(self) -> None:
        """Resume the partitions :meth:`hold` paused."""
        c = self._consumer
        try:
            paused = c.paused()
            if paused:
                c.resume(*paused)
        except Exception as exc:
            log.debug("resume of %s failed: %s", self.group_id, exc)

    def assignment(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def close(self) -> None:
        try:
            self._consumer.close(autocommit=False)
        except Exception as exc:  # closing is best effort: the process is going away
            log.debug("closing consumer of group %s: %s", self.group_id, exc)
