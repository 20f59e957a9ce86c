"""Splunk HTTP Event Collector: ``POST /services/collector/event``, token auth, batching,
optional indexer acknowledgement.

- Request: header ``Authorization: Splunk <token>``; body the concatenated JSON envelopes of
  :func:`siem.formats.hec_envelope` (``time`` epoch seconds with milliseconds, ``host``,
  ``source``, ``sourcetype``, ``index``, ``event``).
- Answers: 200 ``{"text":"Success","code":0}`` delivers the batch. 400 with
  ``invalid-event-number`` names the refused envelope (the worker dead-letters it and resends
  the others). 401/403 (token refused or disabled) are failures of the configuration, not of
  the events: retried within the retry policy, never bisected. 429/5xx and transport errors
  (refused connections, timeouts) are retriable.
- Indexer acknowledgement (``ack = true``): every request carries
  ``X-Splunk-Request-Channel: <uuid>``; the answer's ``ackId`` is polled with
  ``POST /services/collector/ack`` ``{"acks":[id]}`` until ``{"acks":{"<id>":true}}``. Only
  then is the batch delivered. An ack that does not come within ``ack_timeout_ms`` fails the
  try (the batch is sent again: at-least-once).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import orjson

from siem.config import HecOptions
from siem.formats.hec import hec_envelope
from siem.sinks.base import (
    SinkError,
    SinkRejectedError,
    formatter,
    http_status_error,
    ssl_context,
)

log = logging.getLogger(__name__)

EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"


def _body_function(fmt: str) -> Callable[[Mapping[str, Any]], Any] | None:
    """What goes in the envelope's ``event`` member for format ``fmt`` (None: native dict)."""
    if fmt == "native":
        return None
    if fmt == "cef":
        from siem.formats.cef import format_cef

        return format_cef
    if fmt == "ecs":
        from siem.formats.ecs import to_ecs

        return to_ecs
    if fmt == "ocsf":
        from siem.formats.ocsf import to_ocsf

        return to_ocsf
    fn = formatter(fmt)  # another registered format: its JSON payload as the event member

    def parsed(event: Mapping[str, Any]) -> Any:
        raw = fn(event)
        return None if raw is None else orjson.loads(raw)

    return parsed


class HecSink:
    """A Splunk HEC endpoint (see the module docstring)."""

    def __init__(
        self,
        name: str,
        options: HecOptions,
        fmt: str = "native",
        *,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.options = options
        self.format = fmt
        self._body = _body_function(fmt)
        self.channel = options.channel or (str(uuid.uuid4()) if options.ack else "")
        self._client = client
        self._sleep = sleep

    def _http(self) -> httpx.Client:
        if self._client is None:
            o = self.options
            verify: Any = ssl_context(o.tls) if o.url.startswith("https:") else True
            self._client = httpx.Client(
                base_url=o.url,
                timeout=httpx.Timeout(o.timeout_ms / 1000),
                verify=verify,
                headers=self._headers(),
            )
        return self._client

    def _headers(self) -> dict[str, str]:
        h = {
            "Authorization": f"Splunk {self.options.token.get()}",
            "Content-Type": "application/json",
        }
        if self.channel:
            h["X-Splunk-Request-Channel"] = self.channel
        return h

    def encode(self, event: Mapping[str, Any]) -> bytes | None:
        o = self.options
        body = self._body
        if body is not None:
            # Rendered once (every format strips secrets itself); an event the format does
            # not map (OCSF) is skipped, not sent as null.
            rendered = body(event)
            if rendered is None:
                return None

            def body(_: Mapping[str, Any]) -> Any:
                return rendered

        env = hec_envelope(
            event,
            index=o.index or None,
            source=o.source,
            sourcetype=o.sourcetype,
            host=o.host or None,
            body=body,
        )
        return orjson.dumps(env)

    def _post(self, path: str, body: bytes) -> httpx.Response:
        try:
            return self._http().post(path, content=body)
        except httpx.HTTPError as exc:
            raise SinkError(
                f"splunk hec {self.options.url}{path}: {type(exc).__name__}: {exc}"
            ) from exc

    def deliver(self, units: Sequence[bytes]) -> None:
        body = b"\n".join(units)
        resp = self._post(EVENT_PATH, body)
        if resp.status_code != 200:
            raise self._error(resp)
        if not self.options.ack:
            return
        try:
            ack_id = int(orjson.loads(resp.content)["ackId"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SinkError(
                "splunk hec: acknowledgement requested but the answer has no ackId "
                "(is indexer acknowledgement enabled on the token?)",
                retriable=False,
            ) from exc
        self._wait_ack(ack_id)

    def _wait_ack(self, ack_id: int) -> None:
        o = self.options
        deadline = time.monotonic() + o.ack_timeout_ms / 1000
        query = orjson.dumps({"acks": [ack_id]})
        while True:
            resp = self._post(ACK_PATH, query)
            if resp.status_code != 200:
                raise self._error(resp, what="ack poll")
            try:
                acks = orjson.loads(resp.content)["acks"]
                done = bool(acks.get(str(ack_id)))
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise SinkError('splunk hec: ack poll answer is not {"acks":{...}}') from exc
            if done:
                return
            if time.monotonic() >= deadline:
                raise SinkError(
                    f"splunk hec: ack {ack_id} on channel {self.channel} not confirmed within "
                    f"{o.ack_timeout_ms} ms"
                )
            self._sleep(o.ack_poll_ms / 1000)

    def _error(self, resp: httpx.Response, what: str = "event") -> SinkError:
        status = resp.status_code
        detail: dict[str, Any] = {}
        try:
            parsed = orjson.loads(resp.content)
            if isinstance(parsed, dict):
                detail = parsed
        except orjson.JSONDecodeError:
            pass
        text = str(detail.get("text", ""))[:200]
        prefix = f"splunk hec {what}: HTTP {status}"
        if detail.get("code") is not None:
            prefix += f" code {detail['code']}"
        message = f"{prefix}: {text}" if text else prefix
        if status in (401, 403):
            # The token, not the events: never dead-letter them one by one for it.
            return SinkError(message, retriable=False)
        if status == 400 and "invalid-event-number" in detail:
            try:
                index = int(detail["invalid-event-number"])
            except (TypeError, ValueError):
                index = None
            return SinkRejectedError(message, index=index)
        if detail:
            return (
                SinkError(message)
                if status in (408, 429) or status >= 500
                else SinkRejectedError(message)
            )
        return http_status_error(f"splunk hec {what}", status, resp.content)

    def sync(self) -> None:
        return None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


__all__ = ["ACK_PATH", "EVENT_PATH", "HecSink"]
