"""The one backoff formula of every retry in the project (workers, OpenSearch bulk requests,
SIEM deliveries): capped exponential, optionally with jitter. Pure."""

from __future__ import annotations

import random

#: The first delay, in ms, unless a caller's policy says otherwise.
BACKOFF_BASE_MS = 100


def backoff_ms(attempt: int, cap_ms: int, *, base_ms: int = BACKOFF_BASE_MS) -> int:
    """Delay before retry ``attempt`` (1-based): ``base_ms * 2^(attempt-1)``, at most
    ``cap_ms``."""
    return int(min(cap_ms, base_ms * 2 ** min(attempt - 1, 30)))


def jittered_s(
    attempt: int, cap_ms: int, *, base_ms: int = BACKOFF_BASE_MS, jitter: float = 0.2
) -> float:
    """:func:`backoff_ms` in seconds, stretched by up to ``jitter`` (spreads the reconnect storm
    of many workers) and still within the cap."""
    delay = backoff_ms(attempt, cap_ms, base_ms=base_ms) / 1000
    return float(min(cap_ms / 1000, delay * (1 + random.random() * jitter)))


__all__ = ["BACKOFF_BASE_MS", "backoff_ms", "jittered_s"]
