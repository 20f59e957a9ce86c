"""Sink counters that ``sessionvault status`` shows: one small JSON file per sink.

Each sink worker rewrites ``<home>/siem/<sink>.json`` (atomically: write a temporary file,
then rename) at most about once a second and at every failure, dead letter and stop. Lag is
not in the file: ``status`` reads it from the consumer group ``siem-<sink>``.

The file holds counters, times and the last error message (status codes, peers; never an
event body or a secret).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import orjson

STATE_DIR = "siem"


def state_path(home: Path, sink: str) -> Path:
    return Path(home) / STATE_DIR / f"{sink}.json"


def write_state(home: Path, sink: str, state: dict[str, Any]) -> None:
    """Replace the sink's state file (best effort: a full disk must not stop delivery)."""
    path = state_path(home, sink)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(orjson.dumps({"sink": sink, **state}))
        os.replace(tmp, path)


def read_states(home: Path) -> list[dict[str, Any]]:
    """Every sink's last written state, by sink name (unreadable files are skipped)."""
    out = []
    folder = Path(home) / STATE_DIR
    if not folder.is_dir():
        return []
    for path in sorted(folder.glob("*.json")):
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("sink"), str):
            out.append(data)
    return out


__all__ = ["read_states", "state_path", "write_state"]
