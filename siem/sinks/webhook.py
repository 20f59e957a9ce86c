"""A generic webhook: a JSON batch POSTed with an HMAC-SHA256 signature.

Request::

    POST <url>
    Content-Type: application/json
    X-Sessionvault-Timestamp: <unix seconds>
    X-Sessionvault-Signature: sha256=<hex HMAC-SHA256(key, "<timestamp>." + body)>
    X-Sessionvault-Delivery: <hex sha256 of the body>    (same on every retry of a batch)

    {"sink": "<name>", "events": [<event>, ...]}

The timestamp is inside the signed data, so a captured request cannot be replayed later with
a fresh timestamp; receivers should refuse timestamps older than a few minutes
(:func:`verify_signature` does) and may drop repeated delivery ids. Events are in the sink's
format (a CEF line is a JSON string). 2xx delivers; 408/429/5xx and transport errors are
retried; other 4xx refuse the batch (the worker isolates and dead-letters the refused event).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import orjson

from siem.config import WebhookOptions
from siem.sinks.base import SinkError, http_status_error, json_unit, ssl_context

H_SIGNATURE = "X-Sessionvault-Signature"
H_TIMESTAMP = "X-Sessionvault-Timestamp"
H_DELIVERY = "X-Sessionvault-Delivery"
DEFAULT_TOLERANCE_S = 300


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value: ``sha256=<hex>`` over ``timestamp + "." + body``."""
    mac = hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    key: bytes,
    body: bytes,
    timestamp: str,
    signature: str,
    *,
    now: float | None = None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> bool:
    """What a receiver checks: the signature matches (constant time) and the timestamp is
    within ``tolerance_s`` of ``now``."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(key, timestamp, body), signature)


class WebhookSink:
    """See the module docstring."""

    def __init__(
        self,
        name: str,
        options: WebhookOptions,
        fmt: str = "native",
        *,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.options = options
        self.format = fmt
        self._unit = json_unit(fmt)
        self._client = client
        self._clock = clock
        self._prefix = b'{"sink":' + orjson.dumps(name) + b',"events":['

    def _http(self) -> httpx.Client:
        if self._client is None:
            o = self.options
            verify: Any = ssl_context(o.tls) if o.url.startswith("https:") else True
            self._client = httpx.Client(timeout=httpx.Timeout(o.timeout_ms / 1000), verify=verify)
        return self._client

    def encode(self, event: Mapping[str, Any]) -> bytes | None:
        return self._unit(event)

    def body(self, units: Sequence[bytes]) -> bytes:
        return self._prefix + b",".join(units) + b"]}"

    def deliver(self, units: Sequence[bytes]) -> None:
        body = self.body(units)
        ts = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            H_TIMESTAMP: ts,
            H_SIGNATURE: sign(self.options.hmac_key.get().encode(), ts, body),
            H_DELIVERY: hashlib.sha256(body).hexdigest(),
        }
        try:
            resp = self._http().post(self.options.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise SinkError(f"webhook {self.options.url}: {type(exc).__name__}: {exc}") from exc
        if not 200 <= resp.status_code < 300:
            err = http_status_error(f"webhook {self.options.url}", resp.status_code, resp.content)
            if resp.status_code in (401, 403):
                # The key or the receiver's configuration, not the events.
                err = SinkError(str(err), retriable=False)
            raise err

    def sync(self) -> None:
        return None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


__all__ = ["H_DELIVERY", "H_SIGNATURE", "H_TIMESTAMP", "WebhookSink", "sign", "verify_signature"]
