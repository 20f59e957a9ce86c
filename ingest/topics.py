"""Topic admin and consumer-group inspection (kafka-python's admin client at the edge).

kafka-python's exceptions are translated to :class:`~sessionvault.errors.TransportError` here.

A quirk of the local broker (tansu 0.6) handled here: its ListOffsets answer for "latest" is the
base offset of the partition's last record batch plus one, not the end of the log, so a batch of
five records reads as one. :func:`end_offsets` corrects it by fetching that last batch (the Fetch
response's high watermark is right). On Apache Kafka the correction finds nothing to fix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import OffsetSpec

from ingest.kafka import security_config
from sessionvault.errors import TransportError
from sessionvault.settings import Settings, require

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36


def topic_names(settings: Settings) -> list[str]:
    """The topics this pipeline uses, in the settings' naming."""
    return [settings.topic_chunks, settings.topic_events, settings.topic_deadletter]


def consumer_tuning(settings: Settings) -> dict[str, int]:
    """Consumer-group timing keyword arguments for ``KafkaConsumer`` from the settings.

    With kafka-python's defaults a group's first join on the local broker takes over 20 s;
    with the settings' defaults about 3 s.
    """
    return {
        "session_timeout_ms": settings.consumer_session_timeout_ms,
        "heartbeat_interval_ms": settings.consumer_heartbeat_interval_ms,
        "max_poll_interval_ms": settings.consumer_max_poll_interval_ms,
        "fetch_max_wait_ms": settings.consumer_fetch_max_wait_ms,
    }


@contextmanager
def admin_client(
    bootstrap: str, *, timeout_ms: int = 10_000, security: Mapping[str, Any] | None = None
) -> Iterator[Any]:
    """A connected ``KafkaAdminClient``, closed on exit; connection errors -> TransportError.
    ``security``: :func:`ingest.kafka.security_config` of the settings (none: plaintext)."""
    try:
        client = KafkaAdminClient(
            **(security or {}),
            bootstrap_servers=bootstrap.split(","),
            request_timeout_ms=timeout_ms,
            client_id="sessionvault-admin",
        )
    except Exception as exc:
        raise TransportError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        yield client
    finally:
        client.close()


def group_offsets(admin: Any, group: str) -> dict[TopicPartition, int]:
    """The committed offsets of consumer group ``group`` (empty when it has none), through a
    client of :func:`admin_client`.

    The one place that calls kafka-python's offset-fetch admin API, whose name changed within
    3.0.x (``list_consumer_group_offsets`` became ``list_group_offsets`` in 3.0.12): the range
    in pyproject.toml starts at the release this call is tested with, and the lock pins it.
    """
    offsets = admin.list_group_offsets({group: None}).get(group, {})
    return {tp: int(meta.offset) for tp, meta in offsets.items()}


def ensure_topics(
    settings: Settings,
    *,
    names: Iterable[str] | None = None,
    partitions: int | None = None,
    timeout_ms: int = 10_000,
) -> list[str]:
    """Create the pipeline's topics if missing; return the names actually created.

    Idempotent: existing topics are left as they are (their partition count is not changed).
    Returns once every topic is visible in the broker's metadata.
    """
    require(settings, "kafka_bootstrap")
    wanted = list(names) if names is not None else topic_names(settings)
    count = partitions or settings.topic_partitions
    spec = {name: {"num_partitions": count, "replication_factor": 1} for name in wanted}
    created: list[str] = []
    with admin_client(
        settings.kafka_bootstrap, timeout_ms=timeout_ms, security=security_config(settings)
    ) as admin:
        try:
            response = admin.create_topics(
                spec, timeout_ms=timeout_ms, raise_errors=False, wait_for_metadata=True
            )
        except Exception as exc:
            raise TransportError(f"cannot create topics {wanted}: {exc}") from exc
        for result in response.get("topics", []):
            code = result.get("error_code", 0)
            if code == 0:
                created.append(result["name"])
            elif code != _TOPIC_ALREADY_EXISTS:
                raise TransportError(
                    f"cannot create topic {result['name']}: error {code} "
                    f"{result.get('error_message') or ''}".rstrip()
                )
    if created:
        log.info("created topics %s with %d partitions", created, count)
    return created


def list_topics(bootstrap: str, *, timeout_ms: int = 10_000) -> list[str]:
    with admin_client(bootstrap, timeout_ms=timeout_ms) as admin:
        try:
            return sorted(admin.list_topics())
        except Exception as exc:
            raise TransportError(f"cannot list topics at {bootstrap}: {exc}") from exc


def end_offsets(
    bootstrap: str, partitions: Iterable[TopicPartition], *, timeout_ms: int = 10_000
) -> dict[TopicPartition, int]:
    """The offset one past the last record of each partition (the log end offset).

    See the module docstring: the broker's answer is corrected by reading the last batch.
    """
    tps = list(partitions)
    if not tps:
        return {}
    with admin_client(bootstrap, timeout_ms=timeout_ms) as admin:
        try:
            listed = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in tps})
        except Exception as exc:
            raise TransportError(f"cannot list offsets at {bootstrap}: {exc}") from exc
    result = {tp: int(listed[tp].offset) for tp in tps}
    non_empty = [tp for tp in tps if result[tp] > 0]
    if not non_empty:
        return result
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap.split(","),
            enable_auto_commit=False,
            request_timeout_ms=max(timeout_ms, 5_000) + 1,
            client_id="sessionvault-offsets",
        )
    except Exception as exc:
        raise TransportError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        consumer.assign(non_empty)
        for tp in non_empty:
            consumer.seek(tp, result[tp] - 1)
        pending = set(non_empty)
        deadline = time.monotonic() + timeout_ms / 1000
        while pending and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200).items():
                if records:
                    result[tp] = max(result[tp], records[-1].offset + 1)
            for tp in list(pending):
                high = consumer.highwater(tp)
                if high is not None:
                    result[tp] = max(result[tp], int(high))
                    pending.discard(tp)
                    consumer.pause(tp)
        if pending:
            log.warning("end offsets of %s not confirmed by a fetch; lag may read low", pending)
    except Exception as exc:
        raise TransportError(f"cannot read end offsets at {bootstrap}: {exc}") from exc
    finally:
        consumer.close()
    return result


@dataclass(frozen=True)
class GroupLag:
    """Committed position versus log end, summed over a topic's partitions, for one group."""

    group: str
    topic: str
    committed: int
    end: int
    lag: int
    partitions: int


def consumer_lag(
    bootstrap: str,
    *,
    groups: Iterable[str] | None = None,
    timeout_ms: int = 10_000,
    known: Iterable[str] = (),
) -> list[GroupLag]:
    """Lag per consumer group and topic, for every group (or ``groups``) with committed offsets.

    A partition that has records but no committed offset counts from 0 (all of it is lag).
    ``known``: groups asked for by name besides those the broker lists (tansu's s3 storage
    engine answers ListGroups with nothing, while it keeps and returns their offsets).
    """
    with admin_client(bootstrap, timeout_ms=timeout_ms) as admin:
        try:
            wanted = (
                sorted(groups)
                if groups is not None
                else sorted({g["group_id"] for g in admin.list_groups()} | set(known))
            )
            committed: dict[str, dict[TopicPartition, int]] = {
                group: group_offsets(admin, group) for group in wanted
            }
            wanted = [g for g in wanted if committed[g]]
            topics = {tp.topic for offs in committed.values() for tp in offs}
            described = admin.describe_topics(sorted(topics)) if topics else []
        except TransportError:
            raise
        except Exception as exc:
            raise TransportError(f"cannot read consumer groups at {bootstrap}: {exc}") from exc
    all_tps = [
        TopicPartition(t["name"], p["partition_index"])
        for t in described
        if t.get("error_code", 0) == 0
        for p in t["partitions"]
    ]
    ends = end_offsets(bootstrap, all_tps, timeout_ms=timeout_ms)
    rows: list[GroupLag] = []
    for group in wanted:
        for topic in sorted({tp.topic for tp in committed[group]}):
            tps = [tp for tp in all_tps if tp.topic == topic]
            done = sum(max(committed[group].get(tp, 0), 0) for tp in tps)
            end = sum(ends.get(tp, 0) for tp in tps)
            lag = sum(max(ends.get(tp, 0) - max(committed[group].get(tp, 0), 0), 0) for tp in tps)
            rows.append(GroupLag(group, topic, done, end, lag, len(tps)))
    return rows
