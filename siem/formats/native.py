"""Native format: the event as Teleport-shaped JSON (sessionvault's own field names).

JSON is produced by orjson only (never by string building), so no value can break out of
its string: quotes and control characters are escaped as JSON defines, and U+2028/U+2029/
U+0085 are escaped too (:func:`siem.formats.common.dumps`). The line never contains a raw
line break, so it is safe for JSON-lines files and newline-framed transports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from siem.formats.common import dumps, strip_secrets

__all__ = ["format_native", "to_native"]


def to_native(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event as a dict, secrets stripped (see :func:`siem.formats.common.strip_secrets`)."""
    return strip_secrets(event)


def format_native(event: Mapping[str, Any]) -> bytes:
    """The event as one line of compact JSON (UTF-8, no trailing newline)."""
    return dumps(to_native(event))
