"""What every format shares: secret stripping, the output filter, times, severities.

Invariants:

- Secrets never leave through a format. :func:`strip_secrets` runs inside every format
  function (on top of the redaction that ingest already applied upstream, e.g.
  :func:`ingest.kube_audit.redact_event`). It drops, at any depth:
  * keys whose name looks secret (``password``, ``token``, ``secret``, ``api_key``,
    ``private_key``, ``credentials`` ... as the last word of the key, the same rule as
    ingest.kube_audit);
  * the top-level fields a producer marked secret by listing their names in the event's
    ``secret_fields`` (dotted names reach into nested objects: ``"db.dsn"``);
  * the request/response bodies of a Kubernetes audit event kept under ``kube_audit``
    (they may hold object data; reviewers get them from sessionvault, not from the SIEM).
- Terminal output is not an audit event for a SIEM: :func:`is_terminal_output` says which
  records carry (or describe) session output; sinks skip them unless told otherwise.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from sessionvault import __version__

__all__ = [
    "PRODUCT_NAME",
    "PRODUCT_VERSION",
    "SECRET_FIELDS_KEY",
    "VENDOR_NAME",
    "dumps",
    "event_time_ms",
    "is_secret_key",
    "is_terminal_output",
    "level_of",
    "strip_secrets",
]

VENDOR_NAME = "sessionvault"
PRODUCT_NAME = "sessionvault"
PRODUCT_VERSION = __version__
SECRET_FIELDS_KEY = "secret_fields"

# Same rule as ingest.kube_audit._SECRET_KEY: the key's last word names a secret.
_SECRET_KEY = re.compile(
    r"(?i)(password|passwd|passphrase|token|secret|api[-_]?key|private[-_]?key|"
    r"access[-_]?key|secret[-_]?key|credentials?)$"
)
# Kubernetes audit bodies: dropped whole from SIEM output (see module docstring).
_KUBE_AUDIT_BODIES = ("requestObject", "responseObject")

# Event types that carry or describe terminal output (Teleport's print/session.data, and the
# rendered output segments of storage.search, kind "output").
TERMINAL_OUTPUT_EVENTS = frozenset({"print", "session.print", "session.data", "output"})


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """True when a key's name says its value is a secret. Cached: events repeat the same few
    hundred keys, and this runs on every key of every event a sink sends (bounded, so keys an
    attacker varies only evict entries)."""
    return bool(_SECRET_KEY.search(key))


def _strip(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip(v) for k, v in value.items() if not is_secret_key(str(k))}
    if isinstance(value, list | tuple):
        return [_strip(v) for v in value]
    return value


def _drop_path(obj: dict[str, Any], path: list[str]) -> None:
    head, rest = path[0], path[1:]
    if not rest:
        obj.pop(head, None)
        return
    inner = obj.get(head)
    if isinstance(inner, dict):
        inner = dict(inner)
        obj[head] = inner
        _drop_path(inner, rest)


def strip_secrets(event: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``event`` without anything secret (see the module docstring).

    ``secret_fields`` itself is kept (names only), so a reader knows something was withheld.
    Never mutates its argument.
    """
    marked = event.get(SECRET_FIELDS_KEY)
    out: dict[str, Any] = _strip(event)
    if isinstance(marked, list | tuple):
        for name in marked:
            if isinstance(name, str) and name:
                # Both the flat key ("addr.remote" style) and the nested path.
                out.pop(name, None)
                _drop_path(out, name.split("."))
    audit = out.get("kube_audit")
    if isinstance(audit, dict):
        out["kube_audit"] = {k: v for k, v in audit.items() if k not in _KUBE_AUDIT_BODIES}
    return out


def is_terminal_output(record: Mapping[str, Any]) -> bool:
    """True for records that are (or describe) terminal output: skipped by sinks by default."""
    if record.get("kind") == "output":
        return True
    return str(record.get("event", "")) in TERMINAL_OUTPUT_EVENTS


def event_time_ms(event: Mapping[str, Any]) -> int:
    """The event's ``time`` (RFC 3339) as integer milliseconds since the epoch (0 if absent
    or malformed: formats never raise on one odd event)."""
    value = event.get("time")
    if not isinstance(value, str):
        return 0
    try:
        # The common case (up to 6 fractional digits) parses at once.
        dt = datetime.fromisoformat(value)
    except ValueError:
        return _slow_time_ms(value)
    return _epoch_ms(dt)


def _slow_time_ms(value: str) -> int:
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    # fromisoformat in 3.11 accepts up to 6 fractional digits; trim nanoseconds.
    m = re.match(r"^(.*?\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if m:
        head, frac, tz = m.groups()
        text = head + ((frac or "")[:7]) + tz
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return 0
    return _epoch_ms(dt)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


# Sigma levels, also used for alert events.
LEVELS = ("informational", "low", "medium", "high", "critical")


def level_of(event: Mapping[str, Any]) -> str:
    """A severity level name for any event: an alert's own ``level``, else from the Teleport
    code suffix (``I`` informational, ``W`` medium, ``E`` high)."""
    level = event.get("level")
    if isinstance(level, str) and level in LEVELS:
        return level
    code = event.get("code")
    if isinstance(code, str) and code:
        return {"W": "medium", "E": "high"}.get(code[-1], "informational")
    return "informational"


# Line and paragraph separators (and NEL) are legal raw inside JSON strings, but some
# receivers (JavaScript-based ones, log shippers) end lines there. orjson only emits them inside
# strings, so replacing their UTF-8 bytes with the JSON escape keeps the same JSON value.
_RAW_CONTROL = re.compile(b"\x7f|\xc2[\x80-\x9f]")
_LINE_SEPARATORS = (
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
    (b"\xc2\x85", b"\\u0085"),
)


def _scrub_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, Mapping):
        return {_scrub_surrogates(str(k)): _scrub_surrogates(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_surrogates(v) for v in value]
    return value


def dumps(obj: Any) -> bytes:
    """Compact JSON by orjson, one line: no raw control character (JSON escapes C0; DEL, the
    C1 controls and U+2028/U+2029 are escaped here). Lone surrogates, which are not UTF-8,
    become ``?`` instead of failing the whole record; values orjson cannot serialise become
    strings."""
    try:
        out = orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        out = orjson.dumps(_scrub_surrogates(obj), default=str, option=orjson.OPT_NON_STR_KEYS)
    for raw, escaped in _LINE_SEPARATORS:
        if raw in out:
            out = out.replace(raw, escaped)
    # JSON may carry DEL and the C1 controls raw; a terminal or a lenient receiver acts on them
    # (ESC-less CSI is U+009B). They only occur inside strings, where \u00XX means the same.
    return _RAW_CONTROL.sub(lambda m: b"\\u%04x" % ord(m.group().decode()), out)
