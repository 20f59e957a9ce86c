"""The console bundle in the package is the one its sources build (api/console/build_info.py)."""

from __future__ import annotations

from api.console.build_info import BUILD_FILE, expected


def test_the_shipped_bundle_was_built_from_the_committed_sources() -> None:
    assert BUILD_FILE.read_text() == expected(), (
        "api/console/frontend changed or api/console/assets was edited by hand: run `make console`"
    )
