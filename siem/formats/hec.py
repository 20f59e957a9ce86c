"""Splunk HTTP Event Collector envelopes (``POST /services/collector/event``).

Envelope (Splunk docs, "Format events for HTTP Event Collector"): ``time`` (epoch seconds,
milliseconds as decimals), ``host``, ``source``, ``sourcetype``, ``index``, ``event`` (the
payload: a JSON object, or a string such as a CEF line), and optional ``fields`` (indexed
fields, flat string values). Several envelopes go in one request body, concatenated
(:func:`hec_batch`). Everything is serialised by orjson (:func:`siem.formats.common.dumps`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from siem.formats.common import dumps, event_time_ms, strip_secrets

__all__ = ["DEFAULT_SOURCETYPE", "hec_batch", "hec_envelope"]

DEFAULT_SOURCETYPE = "sessionvault:audit"
# Indexed fields: small, flat, useful for tstats and filters.
_INDEXED = ("tenant", "event", "code", "sid", "user", "uid")


def hec_envelope(
    event: Mapping[str, Any],
    *,
    index: str | None = None,
    source: str = "sessionvault",
    sourcetype: str = DEFAULT_SOURCETYPE,
    host: str | None = None,
    body: Callable[[Mapping[str, Any]], Any] | None = None,
    indexed_fields: bool = True,
) -> dict[str, Any]:
    """The HEC envelope of one event (secrets stripped).

    ``body`` renders the ``event`` member (default: the native dict; pass ``to_ecs``,
    ``to_ocsf`` or ``format_cef``). ``host`` defaults to the event's server hostname or
    cluster. ``index`` is left out when None (the token's default index applies).
    """
    ev = strip_secrets(event)
    payload = ev if body is None else body(ev)
    env: dict[str, Any] = {}
    ms = event_time_ms(ev)
    if ms > 0:  # without "time" HEC stamps the receive time
        env["time"] = round(ms / 1000, 3)
    env |= {
        "host": host or str(ev.get("server_hostname") or ev.get("cluster_name") or "sessionvault"),
        "source": source,
        "sourcetype": sourcetype,
    }
    if index:
        env["index"] = index
    env["event"] = payload
    if indexed_fields:
        fields = {k: str(ev[k]) for k in _INDEXED if ev.get(k) not in (None, "")}
        if fields:
            env["fields"] = fields
    return env


def hec_batch(envelopes: Iterable[Mapping[str, Any]]) -> bytes:
    """The request body for several envelopes: JSON objects, one per line (HEC accepts them
    concatenated; the newline only helps humans reading a capture)."""
    return b"\n".join(dumps(e) for e in envelopes)
