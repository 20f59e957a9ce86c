"""Loaded at start-up by every Python process of ``make test-dates`` (its PYTHONPATH).

libfaketime 0.9.10 (Debian's) injects the dates. It must leave the monotonic clock alone: when
it fakes it, every timed wait (``Event.wait``, ``Queue.get``, ``Lock.acquire`` with a timeout)
never times out, because the kernel compares a faked deadline with the real clock. Left alone,
it makes ``clock_nanosleep(TIMER_ABSTIME)`` fail with EINVAL, which is how Python's
``time.sleep`` waits. So, only under libfaketime (``FAKETIME`` set), ``time.sleep`` waits with
``select`` on the real monotonic clock instead; nothing else changes.
"""

from __future__ import annotations

import os
import select
import time
from typing import SupportsIndex


def _sleep(secs: float | SupportsIndex) -> None:
    seconds = float(secs)
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        select.select([], [], [], remaining)


if os.environ.get("FAKETIME"):
    time.sleep = _sleep
