"""Time arguments, one grammar for every front end (CLI options, API query parameters).

A time is either RFC 3339 (``2026-11-21T10:00:00Z``, ``...+02:00``; digits past microseconds
are truncated, as the stored ``time_us`` is) or a span back from now: a whole number and a
unit, ``s`` ``m`` ``h`` ``d`` ``w`` (``90m``, ``24h``, ``7d``, ``2w``). Spans are exact
durations in UTC: ``7d`` is 7 x 86,400 s before now whatever the local time zone, daylight
saving change or month length. ``until`` defaults to now.

Pure: "now" is a parameter (callers pass their clock; None reads the system clock once).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sessionvault.errors import ConfigError, ValidationError

__all__ = ["SPAN_HELP", "expiry", "parse_rfc3339", "parse_when", "span", "window"]

SPAN_HELP = "RFC 3339, or a span back from now: 90m, 24h, 7d, 2w"
_SPAN = re.compile(r"^(\d{1,7})([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)$")


def parse_rfc3339(value: str) -> datetime:
    """RFC 3339 text -> aware UTC datetime; an offset is required (a time without one names
    no instant); digits beyond microseconds are dropped. ValidationError ``bad_time``."""
    m = _RFC3339.match(value.strip())
    if not m:
        raise ValidationError("bad_time", f"{value!r} is not an RFC 3339 time with an offset")
    head, frac, tz = m.groups()
    tz = "+00:00" if tz in ("Z", "z") else tz
    try:
        dt = datetime.fromisoformat(head.replace("t", "T").replace(" ", "T") + tz)
    except ValueError as exc:
        raise ValidationError("bad_time", f"{value!r}: {exc}") from exc
    us = int(((frac or "") + "000000")[:6])
    return dt.astimezone(UTC) + timedelta(microseconds=us)


def span(name: str, value: str) -> timedelta:
    """A span such as ``90m``, ``24h``, ``7d``, ``2w`` as a timedelta; ValidationError
    ``bad_query`` naming ``name`` otherwise."""
    m = _SPAN.match(value.strip())
    if not m:
        raise ValidationError("bad_query", f"{name}: {value!r} is not a span like 24h, 7d, 2w")
    return timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])


def parse_when(name: str, value: str | None, *, now: datetime | None = None) -> datetime | None:
    """``value`` as an aware UTC datetime (see the module's grammar); None for None or blank.
    ValidationError ``bad_query`` names the argument ``name``."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if _SPAN.match(value):
        return _now(now) - span(name, value)
    try:
        return parse_rfc3339(value)
    except ValidationError as exc:
        raise ValidationError(
            "bad_query", f"{name}: {value!r} is neither an RFC 3339 time nor a span like 24h"
        ) from exc


def window(
    since: str | None, until: str | None, *, now: datetime | None = None
) -> tuple[datetime | None, datetime]:
    """(since, until) of a time window: ``until`` defaults to now; since <= until or
    ValidationError."""
    now = _now(now)
    start = parse_when("since", since, now=now)
    end = parse_when("until", until, now=now) or now
    if start is not None and start > end:
        raise ValidationError("bad_query", f"since ({since}) is after until ({until or 'now'})")
    return start, end


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def expiry(
    expires_in: str | None, expires_at: str | None, *, now: datetime | None = None
) -> datetime | None:
    """When something given ``--expires-in SPAN`` or ``--expires-at RFC3339`` expires (None:
    never); both at once is a :class:`ConfigError`."""
    if expires_in and expires_at:
        raise ConfigError("give --expires-in or --expires-at, not both")
    if expires_in:
        return (now or datetime.now(UTC)) + span("--expires-in", expires_in)
    return parse_rfc3339(expires_at) if expires_at else None
