"""How many examples a property test draws: its own figure, scaled by ``SVTEST_EXAMPLES_SCALE``.

The main test run searches at full depth (scale 1). The injected-date runs (``make
test-dates``) repeat the whole unit suite four times to show that no code path depends on the
calendar; they set a small scale because a property's depth does not change with the date, and
a full-depth search four more times was a third of CI's time. Every property test still draws
at least :data:`FLOOR` examples, so each one still runs at every date.
"""

from __future__ import annotations

import os

FLOOR = 25


def examples(n: int) -> int:
    """``n`` scaled by ``SVTEST_EXAMPLES_SCALE`` (a positive number, default 1), never below
    :data:`FLOOR` (nor above ``n``)."""
    raw = os.environ.get("SVTEST_EXAMPLES_SCALE", "1")
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"SVTEST_EXAMPLES_SCALE must be a number, not {raw!r}") from None
    if not scale > 0:
        raise ValueError(f"SVTEST_EXAMPLES_SCALE must be positive, not {raw!r}")
    return max(min(n, FLOOR), round(n * scale))
