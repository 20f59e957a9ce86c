"""The index worker's pure step: what each Kafka record notifies."""

from __future__ import annotations

import orjson

from ingest.consumer import Record
from ingest.index_worker import parse_records
from schemas import GENESIS_HASH, Chunk, SessionInfo, chain_hash, encode_chunk
from schemas.models import EVENT_VERSION
from sessionvault.settings import Settings
from storage.persist_logic import parse_time


def _event(uid: str, event: str = "exec", sid: str | None = None) -> bytes:
    doc = {
        "sv_version": EVENT_VERSION,
        "tenant": "t1",
        "event": event,
        "uid": uid,
        "time": "2026-11-21T10:00:00.000001Z",
    }
    if sid:
        doc["sid"] = sid
    return orjson.dumps(doc)


def test_records_give_event_keys_chunk_keys_resyncs_and_skip_what_does_not_decode(
    offline_settings: Settings,
) -> None:
    s = offline_settings
    h = chain_hash(GENESIS_HASH, "s1", 0, ())
    chunk = Chunk(
        "t1", "s1", 0, (), GENESIS_HASH, h, False, None, SessionInfo("2026-11-21T10:00:00Z", 80, 24)
    )
    records = [
        Record(s.topic_events, 0, 0, None, _event("u1")),
        Record(s.topic_events, 0, 1, None, _event("u2", "session.start", sid="s1")),
        Record(s.topic_chunks, 1, 0, None, encode_chunk(chunk)),
        Record(s.topic_events, 0, 2, None, b"{not json"),
        Record(s.topic_chunks, 1, 1, None, b"garbage"),
        Record("other.topic", 0, 0, None, b"{}"),
    ]
    parsed = parse_records(records, s)
    when = parse_time("2026-11-21T10:00:00.000001Z")
    assert parsed.events == {("t1", "u1", when): 0, ("t1", "u2", when): 1}
    assert parsed.chunks == {("s1", 0): (2, "t1")}
    assert parsed.resync == {("t1", "s1"): 1}
    assert parsed.skipped == 3
