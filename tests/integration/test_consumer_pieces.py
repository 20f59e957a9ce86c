"""A poll hands each fetch's records to ``on_records`` as they come: together the pieces are
exactly the batch (the same objects, each once), each partition's records in offset order.
The persist worker starts its CPU stage on these pieces; real broker."""

from __future__ import annotations

import uuid

import pytest

from ingest.consumer import BatchConsumer, Record
from sessionvault.settings import Settings
from tests.integration.persist_helpers import produce

pytestmark = pytest.mark.integration


def test_the_pieces_of_a_poll_are_its_records_each_once_in_partition_order(
    settings: Settings,
) -> None:
    items = [(f"k{i % 17}".encode(), bytes([i % 256]) * (1000 + i)) for i in range(600)]
    produce(settings, settings.topic_chunks, items)
    consumer = BatchConsumer(settings, f"pieces-{uuid.uuid4().hex[:8]}", [settings.topic_chunks])
    got: list[Record] = []
    calls = 0
    try:
        for _ in range(60):
            pieces: list[list[Record]] = []
            batch = consumer.poll_batch(
                max_records=250,
                max_bytes=1 << 30,
                linger_ms=50,
                wait_ms=3_000,
                on_records=lambda rs: pieces.append(list(rs)),
            )
            calls += len(pieces)
            flat = [r for p in pieces for r in p]
            assert sorted(map(id, flat)) == sorted(map(id, batch))
            assert len(set(map(id, flat))) == len(flat)
            for p in pieces:
                assert p, "a piece is never empty"
            for part in {r.partition for r in flat}:
                offsets = [r.offset for r in flat if r.partition == part]
                assert offsets == sorted(offsets)
            got += batch
            if len(got) >= len(items):
                break
    finally:
        consumer.close()
    assert sorted(r.value or b"" for r in got) == sorted(v for _, v in items)
    assert calls >= 3  # several polls' worth of pieces were seen, not one
