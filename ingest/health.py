"""Whether a worker makes progress, as ``sessionvault status`` and the worker's metrics show it.

A worker that is alive is not necessarily working: one retrying a write PostgreSQL keeps
refusing, a dead letter the broker keeps refusing, or an OpenSearch that never answers holds
every record behind it while its process looks fine. So every worker keeps a :class:`Health`:
its retry loops report each failed attempt (:meth:`Health.failed`) and each success
(:meth:`Health.succeeded`), its loop reports progress (:meth:`Health.progressed`: a batch
committed, or a poll that found nothing to do). The verdict (:func:`judge`, pure) is
``stalled`` once one operation has kept failing for ``stall_after_s`` (the reason names it and
the last error), else ``running``.

The worker shell (:func:`sessionvault.cli.run_async_worker`) writes the verdict and the worker's
counters to ``<home>/workers/<name>.<pid>.json`` about once a second (atomically; best effort),
and puts ``STALLED`` into its status lines; ``status`` reads the file of each worker process
it started (:func:`read_health`) and reports a stalled worker as unhealthy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

STATE_DIR = "workers"
RUNNING = "running"
STALLED = "stalled"
#: How long one operation may keep failing before the worker counts as stalled.
DEFAULT_STALL_AFTER_S = 30.0


@dataclass(frozen=True)
class Verdict:
    """A worker's state: ``running`` or ``stalled`` (with why, and for how long)."""

    state: str
    reason: str = ""
    blocked_s: float = 0.0
    attempts: int = 0
    since_progress_s: float = 0.0


def judge(
    now: float,
    *,
    blocked_since: float | None,
    blocked_on: str,
    attempts: int,
    last_progress: float,
    stall_after_s: float,
) -> Verdict:
    """The verdict at ``now`` (pure): stalled when one operation has failed continuously for
    ``stall_after_s`` or more."""
    since_progress = max(0.0, now - last_progress)
    if blocked_since is None:
        return Verdict(RUNNING, since_progress_s=since_progress)
    blocked = max(0.0, now - blocked_since)
    if blocked < stall_after_s:
        return Verdict(RUNNING, blocked_on, blocked, attempts, since_progress)
    return Verdict(STALLED, blocked_on, blocked, attempts, since_progress)


class Health:
    """What one worker's loops report (see the module docstring). Thread-safe enough for its
    use: single assignments from the worker's loop or its Kafka thread, read by the shell."""

    def __init__(
        self,
        stall_after_s: float = DEFAULT_STALL_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._blocked_since: float | None = None
        self._blocked_on = ""
        self._attempts = 0
        self._last_progress = clock()

    def failed(self, what: str, exc: BaseException | str) -> None:
        """An attempt at ``what`` failed (the worker will retry it)."""
        if self._blocked_since is None:
            self._blocked_since = self._clock()
        self._attempts += 1
        self._blocked_on = f"{what} failing ({self._attempts} attempts): {exc}"[:500]

    def succeeded(self) -> None:
        """The operation that was failing went through."""
        self._blocked_since = None
        self._blocked_on = ""
        self._attempts = 0

    def progressed(self) -> None:
        """A batch was committed, or there was nothing to do."""
        self.succeeded()
        self._last_progress = self._clock()

    def verdict(self) -> Verdict:
        return judge(
            self._clock(),
            blocked_since=self._blocked_since,
            blocked_on=self._blocked_on,
            attempts=self._attempts,
            last_progress=self._last_progress,
            stall_after_s=self.stall_after_s,
        )


def health_path(home: Path, name: str, pid: int) -> Path:
    return Path(home) / STATE_DIR / f"{name}.{pid}.json"


def write_health(home: Path, name: str, verdict: Verdict, stats: Any = None) -> None:
    """Replace this process's health file (best effort: a full disk must not stop a worker).
    ``stats``: the worker's counters (a dataclass), written as its metrics."""
    path = health_path(home, name, os.getpid())
    tmp = path.with_name(f".{path.name}.tmp")
    metrics = (
        dataclasses.asdict(stats)
        if dataclasses.is_dataclass(stats) and not isinstance(stats, type)
        else {}
    )
    doc = {
        "name": name,
        "pid": os.getpid(),
        "updated_at": time.time(),
        **dataclasses.asdict(verdict),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float | str)},
    }
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(orjson.dumps(doc))
        os.replace(tmp, path)


def remove_health(home: Path, name: str) -> None:
    with contextlib.suppress(OSError):
        health_path(home, name, os.getpid()).unlink()


class Reporter:
    """A daemon thread writing ``worker``'s health file every ``every_s`` (its ``health`` and
    ``stats`` attributes) until :meth:`close`, which removes the file: a stopped worker leaves
    no verdict behind. A thread, so a worker blocked in a call (sync or async) still reports."""

    def __init__(self, home: Path, name: str, worker: Any, every_s: float = 1.0) -> None:
        self.home, self.name, self.worker, self.every_s = Path(home), name, worker, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"sv-health-{name}", daemon=True)
        self._thread.start()

    def write(self) -> None:
        health = getattr(self.worker, "health", None)
        if isinstance(health, Health):
            write_health(
                self.home, self.name, health.verdict(), getattr(self.worker, "stats", None)
            )

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.write()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        remove_health(self.home, self.name)


def status_suffix(worker: Any) -> str:
    """`` | STALLED 45 s: why`` for a worker's status line when it is stalled, else ``""``."""
    health = getattr(worker, "health", None)
    if not isinstance(health, Health):
        return ""
    v = health.verdict()
    return f" | STALLED {v.blocked_s:.0f} s: {v.reason}" if v.state == STALLED else ""


def read_health(home: Path) -> dict[int, dict[str, Any]]:
    """Every health file under ``home``, by process id (unreadable files are skipped)."""
    folder = Path(home) / STATE_DIR
    out: dict[int, dict[str, Any]] = {}
    if not folder.is_dir():
        return out
    for path in folder.glob("*.json"):
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("pid"), int):
            out[data["pid"]] = data
    return out


__all__ = [
    "DEFAULT_STALL_AFTER_S",
    "RUNNING",
    "STALLED",
    "Health",
    "Reporter",
    "Verdict",
    "health_path",
    "judge",
    "read_health",
    "remove_health",
    "status_suffix",
    "write_health",
]
