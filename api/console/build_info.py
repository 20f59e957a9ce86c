"""Which sources the shipped console bundle was built from (``api/console/assets/BUILD``).

``make console`` builds the bundle with the pinned npm packages and then writes BUILD: a digest
of the front-end sources (``api/console/frontend``: src/, package.json, package-lock.json,
tsconfig.json) and one of the built files. A unit test recomputes both, so a source change
without a rebuild, or a built file edited by hand, fails the suite without needing Node.

    python -m api.console.build_info --write    # after npm run build (make console does both)
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).parent
FRONTEND = HERE / "frontend"
ASSETS = HERE / "assets"
BUILD_FILE = ASSETS / "BUILD"
#: What the build produces (index.html and console.css are written by hand, not built).
BUILT = ("console.js", "xterm.css")


def _digest(paths: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def sources_digest(frontend: Path = FRONTEND) -> str:
    """Digest of the front-end sources the bundle is built from."""
    files = [p for p in (frontend / "src").rglob("*") if p.is_file()]
    files += [frontend / n for n in ("package.json", "package-lock.json", "tsconfig.json")]
    return _digest(files, frontend)


def bundle_digest(assets: Path = ASSETS) -> str:
    """Digest of the built files."""
    return _digest([assets / n for n in BUILT], assets)


def expected() -> str:
    """BUILD's content for the sources and built files as they are now."""
    return f"sources {sources_digest()}\nbundle {bundle_digest()}\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m api.console.build_info --write")
    BUILD_FILE.write_text(expected())
    print(f"wrote {BUILD_FILE}")
