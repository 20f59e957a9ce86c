"""Injected "todays" for the date-dependent paths (retention, partitions, ``--since``, month
bounds): pure code takes ``now`` as an argument; a ``sessionvault`` subprocess runs under
libfaketime (Debian's ``faketime``, installed by the test command) via :func:`at_date`.

Each date is one a calendar bug shows on: a month's last day (and February's), 31 December,
29 February of a leap year, and the night Central Europe moves its clocks forward, run with
``TZ=Europe/Berlin`` so that anything reading local time instead of UTC breaks there.
"""

from __future__ import annotations

import glob
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

TODAYS: tuple[tuple[datetime, str], ...] = (
    (datetime(2026, 2, 28, 23, 30, tzinfo=UTC), "UTC"),  # February's (a month's) last day
    (datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC), "UTC"),  # New Year's Eve
    (datetime(2028, 2, 29, 12, 0, tzinfo=UTC), "UTC"),  # leap day
    (datetime(2027, 3, 28, 1, 30, tzinfo=UTC), "Europe/Berlin"),  # 02:00 CET -> 03:00 CEST
    (datetime(2026, 5, 31, 0, 0, 1, tzinfo=UTC), "UTC"),  # first second of a 31st
)


def today_params() -> list[object]:
    """Parameters of one value, (today, TZ), with readable ids (for a parametrized fixture or
    ``parametrize("today_tz", ...)``)."""
    return [pytest.param((d, tz), id=f"{d:%Y-%m-%dT%H%M}-{tz}") for d, tz in TODAYS]


def libfaketime() -> str:
    """Path of libfaketime's shared library; AssertionError (never a skip) without it."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    assert found, "libfaketime is missing: the test command installs Debian's faketime"
    return found[0]


def at_date(env: dict[str, str], today: datetime, tz: str = "UTC") -> dict[str, str]:
    """``env`` for a subprocess whose wall clock starts at ``today`` and runs on from there.

    The fake clock runs at the real rate from ``today``; the monotonic clock stays real
    (timeouts and backoffs keep real durations), and ``tests/faketime/sitecustomize.py`` makes
    Python's ``time.sleep`` work under it (see there)."""
    return {
        **env,
        "LD_PRELOAD": libfaketime(),
        # libfaketime reads the timestamp in the process's local time (TZ).
        "FAKETIME": "@" + today.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M:%S"),
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_DONT_RESET": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parent / "faketime"),
        "TZ": tz,
    }
