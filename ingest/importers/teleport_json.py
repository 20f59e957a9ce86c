"""Teleport audit event exports (JSON lines, or one JSON array) -> audit events.

What ``tctl audit`` / the audit log file / the web UI export give: one Teleport event per
object, already with Teleport's field names. Each becomes an event-v1 dict: every field kept
as it came (unknown ones included), plus ``sv_version`` and ``tenant``. An event without a
``uid`` gets a deterministic one (UUIDv5 of tenant and the event's canonical JSON), so
re-importing the same export changes nothing downstream. Events only: exports carry no
terminal bytes (``print`` events have no data outside the protobuf stream).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from ingest.importers.base import import_session_id, stamp_event
from schemas.codec import validate_event
from sessionvault.errors import ValidationError

__all__ = ["iter_events", "load", "parse_export"]


def parse_export(lines: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    """The raw event objects of an export: JSON lines, or a JSON array spread over lines."""
    buffered: list[bytes | str] | None = None
    for n, line in enumerate(lines, 1):
        if buffered is not None:
            buffered.append(line)
            continue
        stripped = line.strip()
        if not stripped:
            continue
        if stripped[:1] in ("[", b"["):
            buffered = [line]  # a JSON array: parse it whole at the end
            continue
        try:
            doc = orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            raise ValidationError("bad_json", f"line {n} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ValidationError("wrong_type", f"line {n}: an event must be a JSON object")
        yield doc
    if buffered is not None:
        text = b"".join(x.encode() if isinstance(x, str) else x for x in buffered)
        try:
            docs = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValidationError("bad_json", f"JSON array export is not valid: {exc}") from exc
        if not isinstance(docs, list):
            raise ValidationError("wrong_type", "export must be JSON lines or one JSON array")
        for i, doc in enumerate(docs):
            if not isinstance(doc, dict):
                raise ValidationError("wrong_type", f"array item {i}: must be a JSON object")
            yield doc


def iter_events(lines: Iterable[bytes | str], *, tenant: str) -> Iterator[dict[str, Any]]:
    """Event-v1 dicts of an export, each validated against ``event.v1.json``.

    Raises :class:`ValidationError` naming the event at fault (by position and uid).
    """
    for i, raw in enumerate(parse_export(lines)):
        fields = stamp_event(raw, tenant=tenant)
        if not fields.get("uid"):
            canonical = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS).decode()
            fields["uid"] = import_session_id(tenant, "teleport-json-event", canonical)
        try:
            validate_event(fields)
        except ValidationError as exc:
            raise ValidationError(exc.reason, f"event {i} (uid {fields['uid']}): {exc}") from exc
        yield fields


def load(path: str | Path, *, tenant: str) -> list[dict[str, Any]]:
    """Read an export file and return its events (the I/O edge of this module)."""
    try:
        with Path(path).open("rb") as fh:
            return list(iter_events(fh, tenant=tenant))
    except OSError as exc:
        raise ValidationError("unreadable", f"cannot read {path}: {exc}") from exc
