"""A batch prepared piece by piece, as its fetches arrive, equals the batch prepared whole."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.consumer import Record
from ingest.persist import PreparedBatch, merge_pieces, prepare_batch
from schemas import GENESIS_HASH, Chunk, Frame, Stream, chain_hash, encode_chunk
from schemas.codec import encode_event
from sessionvault.settings import Settings
from storage.codec import Compressor
from tests.examples import examples

SETTINGS = Settings(topic_chunks="c", topic_events="e")


def _records(kinds: list[int]) -> list[Record]:
    """Records over three partitions of two topics, good and bad, in (topic, partition,
    offset) order as a batch holds them."""
    out: list[Record] = []
    offsets: dict[tuple[str, int], int] = {}
    for n, kind in enumerate(kinds):
        part = n % 3
        if kind == 0:  # a chunk (its hash is wrong on purpose for some: a reject)
            sid = f"s{part}"
            seq = offsets.get(("c", part), 0)
            frames = (Frame(seq, Stream.OUTPUT, bytes([n % 256]) * 40),)
            prev = GENESIS_HASH
            h = chain_hash(prev, sid, seq, frames) if n % 5 else "0" * 64
            value: bytes | None = encode_chunk(Chunk("acme", sid, seq, frames, prev, h))
            topic = "c"
        elif kind == 1:
            value = encode_event(
                {
                    "sv_version": 1,
                    "tenant": "acme",
                    "event": "exec",
                    "uid": f"u{n}",
                    "time": "2026-11-21T10:00:00Z",
                }
            )
            topic = "e"
        elif kind == 2:
            value, topic = b"{nope", "e"
        else:
            value, topic = None, "c"
        off = offsets.get((topic, part), 0)
        offsets[(topic, part)] = off + 1
        out.append(Record(topic, part, off, b"k", value))
    out.sort(key=lambda r: (r.topic, r.partition, r.offset))
    return out


def _fetches(records: list[Record], rng: random.Random) -> list[list[Record]]:
    """The records as a poll may have fetched them: each fetch a run of each partition's
    next records, the partitions of one fetch in any order."""
    queues: dict[tuple[str, int], list[Record]] = {}
    for r in records:
        queues.setdefault((r.topic, r.partition), []).append(r)
    fetches: list[list[Record]] = []
    while any(queues.values()):
        fetch: list[Record] = []
        keys = [k for k, q in queues.items() if q]
        rng.shuffle(keys)
        for k in keys[: rng.randint(1, len(keys))]:
            take = rng.randint(1, len(queues[k]))
            fetch += queues[k][:take]
            del queues[k][:take]
        fetches.append(fetch)
    return fetches


def _shape(b: PreparedBatch) -> tuple[object, ...]:
    return (
        [(c.ref, c.chunk.sid, c.chunk.seq, c.stored, c.frames_index) for c in b.chunks],
        b.events,
        b.rejects,
    )


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=40), st.randoms(use_true_random=False))
def test_pieces_merged_equal_the_batch_prepared_whole(kinds: list[int], rng: random.Random) -> None:
    records = _records(kinds)
    whole = prepare_batch(records, SETTINGS, Compressor(3))
    pieces = [prepare_batch(f, SETTINGS, Compressor(3)) for f in _fetches(records, rng)]
    merged = merge_pieces(records, pieces)
    assert merged is not None
    assert merged.records is records
    assert _shape(merged) == _shape(whole)


def test_pieces_of_other_records_are_refused_so_the_batch_is_prepared_whole() -> None:
    records = _records([0, 1, 2, 0, 1, 3])

    def prep(rs: list[Record]) -> PreparedBatch:
        return prepare_batch(rs, SETTINGS, Compressor(3))

    twin = [Record(r.topic, r.partition, r.offset, r.key, r.value) for r in records]
    # Equal records that are not the batch's own objects (a poll the batch did not come from).
    assert merge_pieces(records, [prep(twin)]) is None
    # One missing, one twice, or an extra piece of an abandoned poll.
    assert merge_pieces(records, [prep(records[:-1])]) is None
    assert merge_pieces(records, [prep(records[:-1]), prep(records[:1])]) is None
    assert merge_pieces(records, [prep(records), prep(twin[:1])]) is None
    assert merge_pieces(records, [prep(records)]) is not None
