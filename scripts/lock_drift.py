"""Print which installed packages differ from the lock (used by ``make test-latest``, whose
venv holds the newest versions pyproject.toml allows, the build backend included).

Usage: python scripts/lock_drift.py requirements/dev.txt
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(path: str) -> int:
    pins: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = _PIN.match(line)
            if m:
                pins[_norm(m.group(1))] = m.group(2)
    installed = {_norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
    drift = sorted(
        (name, locked, installed[name])
        for name, locked in pins.items()
        if name in installed and installed[name] != locked
    )
    if not drift:
        print(f"lock drift: none (every package of {path} is at its locked version)")
    for name, locked, now in drift:
        print(f"lock drift: {name} {locked} (locked) -> {now} (newest allowed)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
