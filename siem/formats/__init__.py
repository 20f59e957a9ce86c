"""Event formats for SIEMs. Pure functions of one event; secrets are stripped inside each.

:data:`FORMATS` maps a format name to a function rendering one event as the bytes of one
record payload (no framing, no trailing newline), or None when the format has no mapping for
that event (OCSF for an event type it does not map). Transports wrap these payloads:
:func:`syslog_message` + :func:`octet_frame` / :func:`lf_frame`, :func:`hec_envelope`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from siem.formats.cef import format_cef
from siem.formats.common import dumps, is_terminal_output, strip_secrets
from siem.formats.ecs import to_ecs
from siem.formats.hec import hec_batch, hec_envelope
from siem.formats.native import format_native, to_native
from siem.formats.ocsf import to_ocsf
from siem.formats.syslog import lf_frame, octet_frame, syslog_message

__all__ = [
    "FORMATS",
    "Formatter",
    "format_cef",
    "format_ecs",
    "format_native",
    "format_ocsf",
    "hec_batch",
    "hec_envelope",
    "is_terminal_output",
    "lf_frame",
    "octet_frame",
    "strip_secrets",
    "syslog_message",
    "to_ecs",
    "to_native",
    "to_ocsf",
]

Formatter = Callable[[Mapping[str, Any]], bytes | None]


def format_ecs(event: Mapping[str, Any]) -> bytes:
    """The ECS document of ``event`` as compact JSON."""
    return dumps(to_ecs(event))


def format_ocsf(event: Mapping[str, Any]) -> bytes | None:
    """The OCSF event of ``event`` as compact JSON, or None when no OCSF class is mapped."""
    doc = to_ocsf(event)
    return None if doc is None else dumps(doc)


def _format_cef_bytes(event: Mapping[str, Any]) -> bytes:
    return format_cef(event).encode("utf-8", "replace")  # lone surrogates -> ?


FORMATS: dict[str, Formatter] = {
    "native": format_native,
    "cef": _format_cef_bytes,
    "ecs": format_ecs,
    "ocsf": format_ocsf,
}
