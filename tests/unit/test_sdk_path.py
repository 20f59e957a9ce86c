"""The SDK has a stable import path under ``sessionvault``, and the distribution installs the
top-level names docs/architecture.md ("Install layout") lists, and no other."""

from __future__ import annotations

import importlib.metadata

import sessionvault.sdk as sdk
from ingest import sdk as implementation

#: Written down in docs/architecture.md; a new top-level package must be added there first.
INSTALLED_TOP_LEVEL = {
    "sessionvault",
    "api",
    "deploy",
    "ingest",
    "replay",
    "schemas",
    "siem",
    "storage",
}


def test_the_sdk_is_importable_from_sessionvault_sdk_and_is_the_implementation() -> None:
    assert sdk.SessionRecorder is implementation.SessionRecorder
    assert sdk.AuditEmitter is implementation.AuditEmitter
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None


def test_the_distribution_installs_exactly_the_documented_top_level_names() -> None:
    text = importlib.metadata.distribution("sessionvault").read_text("top_level.txt") or ""
    assert set(text.split()) == INSTALLED_TOP_LEVEL
