"""Replay links: the one place that spells how to replay a session from a moment.

Every producer of a link (search hits, alerts, SIEM payloads, the kube timeline, CLI hints)
calls these, so a link found anywhere has the same shape and names the same moment:

* ``replay`` is the CLI command ``sessionvault play SID --start-at SECONDS``;
* ``replay_api`` is the API path ``/v1/sessions/SID/export?format=asciicast-v2&start_ms=MS``,
  a route and format the API serves;
* the moment is a whole number of milliseconds (fractions are truncated, never rounded, so
  the CLI's seconds and the API's milliseconds always agree), clamped to the session:
  never before its start, never past its last frame when that is known.
"""

from __future__ import annotations

import shlex
from typing import Any
from urllib.parse import quote

__all__ = [
    "LEAF_API_PREFIX",
    "REPLAY_FORMAT",
    "replay_api",
    "replay_command",
    "replay_links",
    "replay_offset_ms",
    "via_leaf",
]

REPLAY_FORMAT = "asciicast-v2"


def replay_offset_ms(offset_ms: float | None, duration_ms: int | None = None) -> int:
    """``offset_ms`` as the whole milliseconds a link names: truncated, at least 0, and at
    most ``duration_ms`` (the session's last frame) when given."""
    off = max(0, int(offset_ms or 0))
    if duration_ms is not None and duration_ms >= 0:
        off = min(off, int(duration_ms))
    return off


def replay_command(sid: str, offset_ms: float | None = 0, duration_ms: int | None = None) -> str:
    """``sessionvault play SID --start-at SECONDS`` (seconds with exactly 3 decimals)."""
    off = replay_offset_ms(offset_ms, duration_ms)
    return f"sessionvault play {sid} --start-at {off // 1000}.{off % 1000:03d}"


def replay_api(sid: str, offset_ms: float | None = 0, duration_ms: int | None = None) -> str:
    """The API path that exports ``sid`` as asciicast v2 from the link's moment."""
    off = replay_offset_ms(offset_ms, duration_ms)
    return f"/v1/sessions/{quote(sid, safe='')}/export?format={REPLAY_FORMAT}&start_ms={off}"


def replay_links(
    sid: str, offset_ms: float | None = 0, duration_ms: int | None = None
) -> dict[str, str | int]:
    """``{"offset_ms", "replay", "replay_api"}`` for a record in session ``sid``."""
    off = replay_offset_ms(offset_ms, duration_ms)
    return {
        "offset_ms": off,
        "replay": replay_command(sid, off),
        "replay_api": replay_api(sid, off),
    }


#: Where a root serves one leaf's read routes (docs/federation.md).
LEAF_API_PREFIX = "/v1/federation/leaves/"


def via_leaf(leaf: str, item: dict[str, Any]) -> dict[str, Any]:
    """``item`` with its ``replay`` / ``replay_api`` links (where set) pointing through the root
    at leaf ``leaf``: ``sessionvault play --leaf LEAF SID ...`` and
    ``/v1/federation/leaves/LEAF/v1/sessions/SID/export?...``."""
    out = dict(item)
    command = out.get("replay")
    if isinstance(command, str) and command.startswith("sessionvault play "):
        out["replay"] = f"sessionvault play --leaf {shlex.quote(leaf)} " + command.removeprefix(
            "sessionvault play "
        )
    path = out.get("replay_api")
    if isinstance(path, str) and path.startswith("/"):
        out["replay_api"] = f"{LEAF_API_PREFIX}{quote(leaf, safe='')}{path}"
    return out
