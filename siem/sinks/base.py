"""The sink contract: encode one event (pure), deliver a batch (I/O), confirm durability.

A sink is driven by :class:`siem.worker.SinkWorker` from one thread:

1. :meth:`Sink.encode` turns one event (decoded dict) into its wire unit (bytes), or None
   when the sink's format has no mapping for it (OCSF for an unmapped type: skipped). Pure;
   a :class:`FormatError` dead-letters that event alone.
2. :meth:`Sink.deliver` sends a batch of units and returns only once the peer confirmed them
   (HTTP 2xx, HEC indexer ack, a TLS/TCP write that completed, a file write). It raises
   :class:`SinkError`; ``retriable`` says whether the same batch may succeed later (peer down,
   5xx, timeout) or is refused for what it is (4xx). :class:`SinkRejectedError` may name the
   unit the peer refused (``index``) so the worker can dead-letter exactly that one.
3. :meth:`Sink.sync` makes what was delivered durable (fsync for files); called before the
   worker commits offsets.

Event bodies are never logged by sinks; error messages name status codes and peers only.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import orjson

from sessionvault.errors import ConfigError, SessionVaultError
from siem.config import TlsOptions

MAX_ERROR_BODY_CHARS = 200


class SinkError(SessionVaultError):
    """A delivery failed. Retriable by default (peer unreachable, 5xx, timeout)."""

    retriable = True

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class SinkRejectedError(SinkError):
    """The peer refused the batch for its content (4xx); retrying it unchanged cannot help.

    ``index``: the position in the batch of the unit the peer named, when it did.
    """

    retriable = False

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message, retriable=False)
        self.index = index


class FormatError(SessionVaultError):
    """One event cannot be encoded for this sink (e.g. too large for a UDP datagram)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Sink(Protocol):
    """What :class:`siem.worker.SinkWorker` needs from a sink (see the module docstring)."""

    name: str

    def encode(self, event: Mapping[str, Any]) -> bytes | None: ...

    def deliver(self, units: Sequence[bytes]) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


def ssl_context(tls: TlsOptions) -> ssl.SSLContext:
    """A client TLS context from the sink's options (system CAs unless ``ca_file``)."""
    ctx = ssl.create_default_context(cafile=tls.ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file or None)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def http_status_error(what: str, status: int, body: bytes) -> SinkError:
    """The error for a non-2xx HTTP answer: 408/429/5xx retriable, other 4xx a rejection.

    Only a short prefix of the peer's answer is kept (it is the peer's text, not an event)."""
    text = body[:MAX_ERROR_BODY_CHARS].decode("utf-8", "replace").strip()
    message = f"{what}: HTTP {status}" + (f": {text}" if text else "")
    if status in (408, 429) or status >= 500:
        return SinkError(message)
    return SinkRejectedError(message)


def formatter(name: str) -> Callable[[Mapping[str, Any]], bytes | None]:
    """The payload function of format ``name`` from :data:`siem.formats.FORMATS`."""
    from siem.formats import FORMATS

    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(f"unknown format {name!r} (known: {sorted(FORMATS)})") from None


def json_unit(name: str) -> Callable[[Mapping[str, Any]], bytes | None]:
    """Like :func:`formatter`, but always a JSON value: a CEF line becomes a JSON string."""
    fn = formatter(name)
    if name != "cef":
        return fn

    def as_json_string(event: Mapping[str, Any]) -> bytes | None:
        line = fn(event)
        return None if line is None else orjson.dumps(line.decode("utf-8"))

    return as_json_string


__all__ = [
    "FormatError",
    "Sink",
    "SinkError",
    "SinkRejectedError",
    "formatter",
    "http_status_error",
    "json_unit",
    "ssl_context",
]
