"""The dead-letter topic: rejected records with their reason, source and ORIGINAL bytes.

A dead letter's value and key are the original record's, byte for byte (never re-encoded), so
it can be inspected, fixed and re-produced. Headers say why and where from:

=====================  =====================================================
``sv-reason``          short code (``bad_json``, ``unknown_version``, ...)
``sv-error``           human message naming the fault (at most 1000 bytes)
``sv-source-topic``    topic the record was consumed from
``sv-source-partition``, ``sv-source-offset``   its position there (decimal)
``sv-worker``          the worker that rejected it (``persist``, ...)
``sv-original-bytes``  size of the original value (decimal; absent: no value)
``sv-original-sha256`` sha256 of the original value (hex)
``sv-truncated``       present when the dead letter could not carry the whole original:
                       ``value`` and/or ``key``; what it carries is a prefix
=====================  =====================================================

A record the broker accepted may be larger than any record this producer may send (the broker's
limit is not ours; a 10 MiB chunk arrives fine). Its dead letter would then be refused on every
attempt and the worker would never commit past it: every dead letter is therefore cut to
``max_bytes`` (:func:`bounded_deadletter`), keeping a prefix of the original, its size and
sha256, so any accepted record ends dead-lettered in bounded time.

Delivery is at least once: after a failed flush the batch's dead letters are sent again, so
an operator may see the same source position twice.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import kafka.errors as kerr
from kafka import KafkaConsumer, TopicPartition

from ingest.consumer import Record
from ingest.kafka import (
    API_VERSION,
    confirmed_prefix,
    make_producer,
    max_request_bytes,
    security_config,
    to_transport_error,
)
from ingest.topics import end_offsets
from sessionvault.errors import TransportError
from sessionvault.settings import Settings, require

log = logging.getLogger(__name__)

H_REASON = "sv-reason"
H_ERROR = "sv-error"
H_TOPIC = "sv-source-topic"
H_PARTITION = "sv-source-partition"
H_OFFSET = "sv-source-offset"
H_WORKER = "sv-worker"
H_ORIGINAL_BYTES = "sv-original-bytes"
H_ORIGINAL_SHA256 = "sv-original-sha256"
H_TRUNCATED = "sv-truncated"
MAX_ERROR_BYTES = 1000
MAX_KEY_BYTES = 4096
# Room for the record framing and our headers inside max_bytes (headers are < 1.5 KiB).
_OVERHEAD_BYTES = 4096


def deadletter_headers(
    record: Record, reason: str, message: str, worker: str
) -> list[tuple[str, bytes]]:
    """The headers of the dead letter for ``record`` (pure)."""
    error = message.encode("utf-8", "replace")[:MAX_ERROR_BYTES]
    return [
        (H_REASON, reason.encode()),
        (H_ERROR, error),
        (H_TOPIC, record.topic.encode()),
        (H_PARTITION, str(record.partition).encode()),
        (H_OFFSET, str(record.offset).encode()),
        (H_WORKER, worker.encode()),
    ]


def bounded_deadletter(
    record: Record, reason: str, message: str, worker: str, max_bytes: int
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(key, value, headers) of the dead letter for ``record``, at most ``max_bytes`` in all
    (pure). The original key and value when they fit, else prefixes of them, and
    ``sv-truncated`` says which were cut; ``sv-original-bytes``/``-sha256`` always describe
    the whole original value."""
    headers = deadletter_headers(record, reason, message, worker)
    key, value = record.key, record.value
    if value is not None:
        headers += [
            (H_ORIGINAL_BYTES, str(len(value)).encode()),
            (H_ORIGINAL_SHA256, hashlib.sha256(value).hexdigest().encode()),
        ]
    cut: list[str] = []
    if key is not None and len(key) > MAX_KEY_BYTES:
        key, cut = key[:MAX_KEY_BYTES], ["key"]
    room = max(0, max_bytes - _OVERHEAD_BYTES - len(key or b""))
    if value is not None and len(value) > room:
        value, cut = value[:room], [*cut, "value"]
    if cut:
        headers.append((H_TRUNCATED, ",".join(cut).encode()))
    return key, value, headers


@dataclass(frozen=True)
class DeadLetter:
    """A record read back from the dead-letter topic."""

    partition: int
    offset: int
    reason: str
    error: str
    source_topic: str
    source_partition: int
    source_offset: int
    worker: str
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    original_bytes: int = -1
    original_sha256: str = ""
    truncated: str = ""

    @property
    def source(self) -> str:
        return f"{self.source_topic}[{self.source_partition}]@{self.source_offset}"


def parse_deadletter(record: Record) -> DeadLetter:
    """Read the headers of a dead-letter record (pure; missing headers read as empty / -1)."""
    h = {k: v for k, v in record.headers}

    def text(name: str) -> str:
        return h.get(name, b"").decode("utf-8", "replace")

    def number(name: str) -> int:
        try:
            return int(text(name))
        except ValueError:
            return -1

    return DeadLetter(
        partition=record.partition,
        offset=record.offset,
        reason=text(H_REASON),
        error=text(H_ERROR),
        source_topic=text(H_TOPIC),
        source_partition=number(H_PARTITION),
        source_offset=number(H_OFFSET),
        worker=text(H_WORKER),
        key=record.key,
        value=record.value,
        timestamp_ms=record.timestamp_ms,
        original_bytes=number(H_ORIGINAL_BYTES),
        original_sha256=text(H_ORIGINAL_SHA256),
        truncated=text(H_TRUNCATED),
    )


class DeadLetterProducer:
    """Sends dead letters; :meth:`flush` confirms every one since the last flush or raises."""

    def __init__(
        self,
        settings: Settings,
        worker: str,
        *,
        producer_factory: Callable[[Settings], Any] | None = None,
    ) -> None:
        self.topic = settings.topic_deadletter
        self.worker = worker
        self.max_bytes = max_request_bytes(settings)
        self._producer = (producer_factory or _default_producer)(settings)
        self._pending: list[Any] = []

    def send(self, record: Record, reason: str, message: str) -> None:
        key, value, headers = bounded_deadletter(
            record, reason, message, self.worker, self.max_bytes
        )
        try:
            fut = self._producer.send(self.topic, value=value, key=key, headers=headers)
        except (kerr.KafkaError, OSError) as exc:
            raise to_transport_error(exc, f"send dead letter for {record.where}") from exc
        self._pending.append(fut)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait until every dead letter sent so far is acknowledged; return how many.

        Raises a retriable TransportError when any failed; the caller re-sends them all.
        """
        pending, self._pending = self._pending, []
        if not pending:
            return 0
        confirmed, error = confirmed_prefix(self._producer, pending, timeout_s=timeout_s)
        if error is not None:
            err = to_transport_error(error, "deliver dead letters")
            err.retriable = True
            raise err from error
        return confirmed

    def close(self) -> None:
        try:
            self._producer.close(timeout=5)
        except Exception as exc:  # best effort at shutdown
            log.debug("closing dead-letter producer: %s", exc)


def _default_producer(settings: Settings) -> Any:
    # Not idempotent: a dead letter is sent again after any failed flush anyway, and it keeps
    # the producer usable after a delivery timeout without a new producer id.
    return make_producer(settings, client_id="sessionvault-deadletter", enable_idempotence=False)


def iter_deadletters(
    settings: Settings, *, timeout_ms: int = 10_000, topic: str | None = None
) -> Iterator[DeadLetter]:
    """Every dead letter now in the topic, partition by partition, oldest first.

    Reads without a consumer group (nothing is committed); stops at the end offsets seen at
    the start.
    """
    require(settings, "kafka_bootstrap")
    topic = topic or settings.topic_deadletter
    try:
        consumer = KafkaConsumer(
            **security_config(settings),
            bootstrap_servers=settings.kafka_bootstrap.split(","),
            enable_auto_commit=False,
            client_id="sessionvault-deadletter-reader",
            max_partition_fetch_bytes=max(settings.max_record_bytes + 64 * 1024, 1024 * 1024),
            api_version=API_VERSION,
        )
    except (kerr.KafkaError, OSError) as exc:
        raise to_transport_error(exc, "open dead-letter reader") from exc
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            return
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        ends = end_offsets(settings.kafka_bootstrap, tps, timeout_ms=timeout_ms)
        wanted = [tp for tp in tps if ends.get(tp, 0) > 0]
        if not wanted:
            return
        consumer.assign(wanted)
        consumer.seek_to_beginning(*wanted)
        got: dict[TopicPartition, list[Record]] = {tp: [] for tp in wanted}
        done: set[TopicPartition] = set()
        deadline = time.monotonic() + timeout_ms / 1000
        while len(done) < len(wanted):
            if time.monotonic() > deadline:
                raise TransportError(
                    f"kafka: reading {topic} timed out before the end offsets were reached"
                )
            for tp, batch in consumer.poll(timeout_ms=200).items():
                for m in batch:
                    if m.offset < ends[tp]:
                        got[tp].append(Record.of(tp.topic, tp.partition, m))
                if batch and batch[-1].offset + 1 >= ends[tp]:
                    done.add(tp)
                    consumer.pause(tp)
        for tp in wanted:
            for rec in got[tp]:
                yield parse_deadletter(rec)
    except (kerr.KafkaError, OSError) as exc:
        raise to_transport_error(exc, f"read {topic}") from exc
    finally:
        consumer.close(autocommit=False)


def format_deadletter(d: DeadLetter) -> str:
    """One line for ``sessionvault deadletter list``."""
    size = d.original_bytes if d.original_bytes >= 0 else len(d.value or b"")
    cut = f" (cut: {d.truncated})" if d.truncated else ""
    return (
        f"{d.partition}@{d.offset}  {d.reason:<16} {d.source:<32} {size:>9} B{cut}  "
        f"{d.worker}: {d.error}"
    )


def summarize(letters: Sequence[DeadLetter]) -> dict[str, int]:
    """Dead letters per reason code."""
    out: dict[str, int] = {}
    for d in letters:
        out[d.reason] = out.get(d.reason, 0) + 1
    return dict(sorted(out.items()))
