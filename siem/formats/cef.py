"""CEF (ArcSight Common Event Format) payloads with escaping that cannot forge records.

``CEF:0|Vendor|Product|Version|SignatureID|Name|Severity|k1=v1 k2=v2 ...``

Escaping (CEF Implementation Standard, and this module's stricter choices):

- Header fields: ``\\`` -> ``\\\\``, ``|`` -> ``\\|``. Newlines are not allowed in the header;
  CR and LF are written as ``\\r`` / ``\\n`` (as in extension values) so the record stays one line.
- Extension values: ``\\`` -> ``\\\\``, ``=`` -> ``\\=``, LF -> ``\\n``, CR -> ``\\r``. A value
  therefore never contains a bare ``=``, so ``x=1 suser=admin`` inside a value cannot forge a key.
- Other control characters (NUL, TAB, the other C0/C1 controls) and the Unicode line and
  paragraph separators U+2028/U+2029 (and NEL U+0085), which some receivers treat as line
  ends, are replaced by U+FFFD. Lossy on purpose: CEF defines no escape for them.
- Values longer than ``max_value_chars`` are cut (before escaping, so an escape is never cut
  in half) and end in ``…``.
- Extension keys are a fixed set chosen here (standard CEF keys and ``csN``/``csNLabel``
  custom strings); event fields never become keys, so no key can be injected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from siem.formats.common import (
    PRODUCT_NAME,
    PRODUCT_VERSION,
    VENDOR_NAME,
    event_time_ms,
    level_of,
    strip_secrets,
)

__all__ = ["CEF_SEVERITY", "cef_escape_header", "cef_escape_value", "format_cef"]

DEFAULT_MAX_VALUE_CHARS = 4000
CEF_SEVERITY = {"informational": 1, "low": 3, "medium": 5, "high": 8, "critical": 10}

_UNSAFE = re.compile("[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")


def _clean(text: str, max_chars: int) -> str:
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return _UNSAFE.sub("\ufffd", text)


def cef_escape_header(text: str, *, max_chars: int = 512) -> str:
    """A CEF header field: backslash and pipe escaped, CR/LF as ``\\r``/``\\n``."""
    text = _clean(text, max_chars)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "\\r").replace("\n", "\\n")


def cef_escape_value(text: str, *, max_chars: int = DEFAULT_MAX_VALUE_CHARS) -> str:
    """A CEF extension value: backslash, equals sign, CR and LF escaped."""
    text = _clean(text, max_chars)
    return text.replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r").replace("\n", "\\n")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return " ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return ""
    return str(value)


def _host_port(addr: Any) -> tuple[str, str]:
    """``1.2.3.4:22`` / ``[::1]:22`` / ``1.2.3.4`` -> (host, port)."""
    s = _text(addr)
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        return host, rest.lstrip(":")
    if s.count(":") == 1:
        host, _, port = s.partition(":")
        return host, port
    return s, ""


def _command(event: Mapping[str, Any]) -> str:
    exe = _text(event.get("path")) or _text(event.get("program"))
    argv = _text(event.get("argv"))
    if exe or argv:
        return f"{exe} {argv}".strip()
    return _text(event.get("command"))


def format_cef(event: Mapping[str, Any], *, max_value_chars: int = DEFAULT_MAX_VALUE_CHARS) -> str:
    """One event as one CEF record (no trailing newline; secrets stripped).

    SignatureID is the Teleport code (or the rule id for alerts), Name the event type (or the
    rule title), Severity 0-10 from the level. Extension keys: ``rt`` (ms), ``externalId``
    (uid), ``act`` (event type), ``suser`` (user), ``duser`` (login), ``src``/``spt``
    (client address), ``dhost`` (server), ``dvchost`` (cluster), ``requestMethod``,
    ``request`` (request path), ``outcome``, ``cs1`` sid, ``cs2`` tenant, ``cs3`` command,
    ``cs4`` Kubernetes cluster, ``cs5`` replay command and ``cs6`` replay API path (alerts in
    a session, :mod:`schemas.links`), ``cn1`` response code.
    """
    ev = strip_secrets(event)
    etype = _text(ev.get("event"))
    is_alert = etype.startswith("alert.")
    sig = _text(ev.get("rule_id") if is_alert else ev.get("code")) or etype
    name = _text(ev.get("title") if is_alert else etype) or etype
    severity = CEF_SEVERITY[level_of(ev)]
    header = "|".join(
        [
            "CEF:0",
            cef_escape_header(VENDOR_NAME),
            cef_escape_header(PRODUCT_NAME),
            cef_escape_header(PRODUCT_VERSION),
            cef_escape_header(sig),
            cef_escape_header(name),
            str(severity),
        ]
    )
    src, spt = _host_port(ev.get("addr.remote"))
    success = ev.get("success")
    pairs: list[tuple[str, str]] = [
        ("rt", str(event_time_ms(ev) or "")),
        ("externalId", _text(ev.get("uid"))),
        ("act", etype),
        ("suser", _text(ev.get("user"))),
        ("duser", _text(ev.get("login"))),
        ("src", src),
        ("spt", spt if spt.isdigit() else ""),
        ("dhost", _text(ev.get("server_hostname")) or _text(ev.get("server_id"))),
        ("dvchost", _text(ev.get("cluster_name"))),
        ("requestMethod", _text(ev.get("verb"))),
        ("request", _text(ev.get("request_path"))),
        ("outcome", "" if success is None else ("success" if success else "failure")),
        ("cn1", _text(ev.get("response_code"))),
        ("cn1Label", "response_code" if ev.get("response_code") is not None else ""),
        ("cs1", _text(ev.get("sid"))),
        ("cs1Label", "sid" if ev.get("sid") else ""),
        ("cs2", _text(ev.get("tenant"))),
        ("cs2Label", "tenant" if ev.get("tenant") else ""),
        ("cs3", _command(ev)),
        ("cs3Label", "command" if _command(ev) else ""),
        ("cs4", _text(ev.get("kubernetes_cluster"))),
        ("cs4Label", "kubernetes_cluster" if ev.get("kubernetes_cluster") else ""),
        ("cs5", _text(ev.get("replay"))),
        ("cs5Label", "replay" if ev.get("replay") else ""),
        ("cs6", _text(ev.get("replay_api"))),
        ("cs6Label", "replay_api" if ev.get("replay_api") else ""),
    ]
    ext = " ".join(
        f"{k}={cef_escape_value(v, max_chars=max_value_chars)}" for k, v in pairs if v != ""
    )
    return f"{header}|{ext}"
