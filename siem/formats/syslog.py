"""RFC 5424 syslog messages and their framings (RFC 5425/6587 octet counting, LF, UDP).

Message: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG``

- HOSTNAME, APP-NAME, PROCID, MSGID are PRINTUSASCII (33..126) of at most 255/48/128/32
  characters; anything else is replaced by ``_`` and the field is cut (an empty field is ``-``).
- STRUCTURED-DATA: one element ``[sessionvault@32473 ...]`` (32473 is the IANA example
  enterprise number of RFC 5612; pass ``sd_id`` for your own). SD-NAMEs are fixed here;
  PARAM-VALUEs escape ``"``, ``\\`` and ``]`` with a backslash (RFC 5424 6.3.3) and control
  characters as ``#ooo`` (:func:`sd_escape`). With MSG in any of the formats (JSON escapes
  control characters, CEF replaces them), no message carries a raw control character.
- MSG: the event in the chosen payload format (native JSON by default, or CEF, ECS, OCSF),
  UTF-8, with the BOM when ``bom=True`` (RFC 5424 6.4 says MSG starting with the BOM is UTF-8).

Framing, and why newlines cannot split records:

- :func:`octet_frame` (RFC 5425 TLS, RFC 6587 3.4.1 TCP): ``LEN SP MSG``. The receiver reads
  exactly LEN bytes, so newlines inside the message are harmless. This is the default.
- :func:`lf_frame` (RFC 6587 3.4.2 non-transparent framing, "plain TCP"): a record ends at
  LF. Every CR, LF and NUL byte inside the message is therefore written as ``#015``, ``#012``,
  ``#000`` (rsyslog's own notation for escaped control characters, what rsyslog itself shows
  for them), so the only LF is the terminator. JSON and CEF payloads never contain raw
  newlines anyway; this protects the structured data and any other MSG.
- UDP (RFC 5426): one message per datagram, no framing; :func:`syslog_message` output as is
  (cut to ``max_bytes`` by the sender).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from siem.formats.common import event_time_ms, level_of, strip_secrets

__all__ = [
    "DEFAULT_SD_ID",
    "FACILITY_AUTHPRIV",
    "lf_frame",
    "octet_frame",
    "sd_escape",
    "syslog_message",
    "syslog_severity",
]

BOM = b"\xef\xbb\xbf"
DEFAULT_SD_ID = "sessionvault@32473"
FACILITY_AUTHPRIV = 10  # security/authorization messages (RFC 5424 table 1)
# RFC 5424 numerical severities.
_SEVERITY = {"informational": 6, "low": 5, "medium": 4, "high": 3, "critical": 2}
_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")
_SD_NAME_BAD = re.compile(r'[^\x21-\x7e]|[=\]"]')
# Structured-data parameters: (SD-NAME, event field).
_SD_PARAMS = (
    ("tenant", "tenant"),
    ("event", "event"),
    ("code", "code"),
    ("uid", "uid"),
    ("sid", "sid"),
    ("user", "user"),
    ("login", "login"),
)


def _header_field(value: str, max_len: int) -> str:
    """PRINTUSASCII only, at most ``max_len`` characters, ``-`` when empty (NILVALUE)."""
    value = _NOT_PRINTUSASCII.sub("_", value)[:max_len]
    return value or "-"


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def sd_escape(value: str) -> str:
    """An RFC 5424 PARAM-VALUE: ``\\``, ``"`` and ``]`` escaped with a backslash, and every
    control character (C0, DEL, C1: CR, LF, NUL, ESC, NEL, ...) written as ``#ooo`` (its code in
    octal, rsyslog's notation), whatever the transport: over UDP nothing else would stop a
    user-controlled field from splitting a receiver's records or driving a terminal."""
    value = _CONTROL.sub(lambda m: f"#{ord(m.group()):03o}", value)
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_severity(event: Mapping[str, Any]) -> int:
    """RFC 5424 severity (0 emergency .. 7 debug) from the event's level."""
    return _SEVERITY[level_of(event)]


def _timestamp(event: Mapping[str, Any]) -> str:
    ms = event_time_ms(event)
    if ms <= 0:
        return "-"
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _default_payload(event: Mapping[str, Any]) -> bytes:
    from siem.formats.native import format_native

    return format_native(event)


def syslog_message(
    event: Mapping[str, Any],
    *,
    app_name: str = "sessionvault",
    hostname: str = "-",
    procid: str = "-",
    msgid: str | None = None,
    facility: int = FACILITY_AUTHPRIV,
    sd_id: str = DEFAULT_SD_ID,
    payload: Callable[[Mapping[str, Any]], bytes] = _default_payload,
    bom: bool = False,
) -> bytes:
    """One RFC 5424 message for ``event`` (no framing; secrets stripped).

    ``msgid`` defaults to the event type (``session.start``, ``alert.sigma``). ``payload``
    renders MSG (a function from :data:`siem.formats.FORMATS`; native JSON by default).
    """
    if not 0 <= facility <= 23:
        raise ValueError(f"syslog facility {facility} is not 0..23")
    ev = strip_secrets(event)
    pri = facility * 8 + syslog_severity(ev)
    sd_name = _SD_NAME_BAD.sub("_", sd_id)[:32] or DEFAULT_SD_ID
    params = "".join(
        f' {name}="{sd_escape(str(ev[field]))}"'
        for name, field in _SD_PARAMS
        if ev.get(field) not in (None, "")
    )
    header = " ".join(
        [
            f"<{pri}>1",
            _timestamp(ev),
            _header_field(hostname, 255),
            _header_field(app_name, 48),
            _header_field(procid, 128),
            _header_field(msgid if msgid is not None else str(ev.get("event", "")), 32),
            f"[{sd_name}{params}]",
        ]
    )
    msg = payload(ev)
    return header.encode("utf-8", "replace") + b" " + (BOM if bom else b"") + msg


def octet_frame(msg: bytes) -> bytes:
    """RFC 5425/6587 octet-counted framing: ``MSG-LEN SP SYSLOG-MSG`` (length in bytes)."""
    return b"%d %s" % (len(msg), msg)


_LF_ESCAPES = {b"\r": b"#015", b"\n": b"#012", b"\x00": b"#000"}
_LF_BAD = re.compile(rb"[\r\n\x00]")


def lf_frame(msg: bytes) -> bytes:
    """RFC 6587 non-transparent framing: CR, LF and NUL inside ``msg`` written as ``#015``,
    ``#012``, ``#000``, then one LF ends the record."""
    return _LF_BAD.sub(lambda m: _LF_ESCAPES[m.group()], msg) + b"\n"
