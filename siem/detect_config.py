"""Pure parsing of the detection settings (no Kafka, no PostgreSQL).

- ``SESSIONVAULT_BUSINESS_HOURS``: ``"TIMEZONE HH-HH DAYS"``, e.g. ``"Europe/Berlin 08-18
  mon-fri"``; see :func:`parse_business_hours`.
- ``SESSIONVAULT_SIGMA_RULES``: colon-separated rule files and directories, loaded after the
  starter set; see :func:`rule_paths`.
"""

from __future__ import annotations

import re
from pathlib import Path

from sessionvault.errors import ConfigError
from siem.rules import BusinessHours, RuleError

__all__ = ["DAYS", "parse_business_hours", "parse_days", "rule_paths"]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_EXAMPLE = 'e.g. "Europe/Berlin 08-18 mon-fri"'
_HOURS = re.compile(r"(\d{1,2})(?::00)?-(\d{1,2})(?::00)?")


def _day(name: str, text: str) -> int:
    n = name.strip().lower()
    for i, day in enumerate(DAYS):
        if n in (day, _FULL_DAYS[i]):
            return i
    raise ConfigError(
        f"SESSIONVAULT_BUSINESS_HOURS={text!r}: unknown weekday {name.strip()!r}"
        f" (use {', '.join(DAYS)})"
    )


def parse_days(spec: str, text: str = "") -> tuple[int, ...]:
    """Weekday numbers (0 Monday .. 6 Sunday) of ``"mon-fri"``, ``"mon,wed,fri"``,
    ``"sat-sun"`` or a wrapping range such as ``"fri-mon"``; sorted, no duplicates."""
    text = text or spec
    out: set[int] = set()
    for item in spec.split(","):
        if not item.strip():
            raise ConfigError(f"SESSIONVAULT_BUSINESS_HOURS={text!r}: empty weekday in {spec!r}")
        if "-" in item:
            a_name, b_name = item.split("-", 1)
            d, b = _day(a_name, text), _day(b_name, text)
            out.add(d)
            while d != b:
                d = (d + 1) % 7
                out.add(d)
        else:
            out.add(_day(item, text))
    return tuple(sorted(out))


def parse_business_hours(text: str) -> BusinessHours:
    """:class:`BusinessHours` from ``"TIMEZONE HH-HH DAYS"`` (``DAYS`` optional, default
    mon-fri); empty text gives the default (UTC 08-18 mon-fri). Hours are whole hours,
    ``08-18`` meaning 08:00 up to (not including) 18:00 local time; ``08:00-18:00`` is
    accepted too. Raises :class:`~sessionvault.errors.ConfigError` saying what is wrong."""
    text = text.strip()
    if not text:
        return BusinessHours()
    parts = text.split()
    if len(parts) not in (2, 3):
        raise ConfigError(
            f"SESSIONVAULT_BUSINESS_HOURS={text!r}: expected TIMEZONE HH-HH [DAYS], {_EXAMPLE}"
        )
    tz, hours = parts[0], parts[1]
    m = _HOURS.fullmatch(hours)
    if m is None:
        raise ConfigError(
            f"SESSIONVAULT_BUSINESS_HOURS={text!r}: hours {hours!r} are not HH-HH, {_EXAMPLE}"
        )
    start, end = int(m.group(1)), int(m.group(2))
    if not 0 <= start < end <= 24:
        raise ConfigError(
            f"SESSIONVAULT_BUSINESS_HOURS={text!r}: need 0 <= start < end <= 24 "
            f"(got {start}-{end}; a range over midnight is not supported)"
        )
    days = parse_days(parts[2], text) if len(parts) == 3 else (0, 1, 2, 3, 4)
    try:
        return BusinessHours(timezone=tz, start_hour=start, end_hour=end, weekdays=days)
    except RuleError as exc:
        raise ConfigError(f"SESSIONVAULT_BUSINESS_HOURS={text!r}: {exc}") from exc


def rule_paths(text: str) -> list[Path]:
    """The paths of ``SESSIONVAULT_SIGMA_RULES`` (colon-separated; empty items ignored)."""
    return [Path(p) for p in text.split(":") if p.strip()]
