"""Test helper for replay integration tests: write a session's rows directly with SQL.

The persist worker is not involved: chunks are built with the contract's own pieces
(storage.codec, schemas.chain) and copied into ``sessions``/``chunks``, so the reader is tested
against exactly the stored layout.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from schemas.chain import chain_hash
from schemas.frameindex import pack_frames
from schemas.models import GENESIS_HASH, Frame
from storage.codec import Compressor, ZstdDict

STARTED = datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)


async def insert_dictionary(conn: Any, data: bytes) -> int:
    return int(
        await conn.fetchval(
            "INSERT INTO zstd_dicts (data, samples, sample_bytes) VALUES ($1, 0, 0) RETURNING id",
            data,
        )
    )


async def write_session(
    conn: Any,
    tenant: str,
    sid: str,
    chunks: Iterable[list[Frame]],
    *,
    dictionary: ZstdDict | None = None,
    exit_code: int | None = None,
    batch_rows: int = 64,
) -> int:
    """Store ``chunks`` (each a list of frames) as session ``sid``; returns the chunk count.

    Streams: only ``batch_rows`` chunk rows are held at a time.
    """
    comp = Compressor(level=1, dictionary=dictionary)
    prev = GENESIS_HASH
    seq = 0
    total = stored = last_ms = 0
    rows: list[tuple[Any, ...]] = []
    columns = [
        "sid",
        "seq",
        "tenant",
        "first_offset_ms",
        "last_offset_ms",
        "frames",
        "codec",
        "dict_id",
        "raw_len",
        "payload",
        "prev_hash",
        "hash",
    ]

    async def flush() -> None:
        if rows:
            await conn.copy_records_to_table("chunks", records=rows, columns=columns)
            rows.clear()

    for frames in chunks:
        payload = b"".join(f.data for f in frames)
        codec, dict_id, stored_payload = comp.compress(payload)
        h = chain_hash(prev, sid, seq, frames)
        rows.append(
            (
                sid,
                seq,
                tenant,
                frames[0].offset_ms,
                frames[-1].offset_ms,
                pack_frames(frames),
                codec,
                dict_id,
                len(payload),
                stored_payload,
                prev,
                h,
            )
        )
        total += len(payload)
        stored += len(stored_payload)
        last_ms = frames[-1].offset_ms
        prev = h
        seq += 1
        if len(rows) >= batch_rows:
            await flush()
    await flush()
    await conn.execute(
        "INSERT INTO sessions (sid, tenant, kind, user_name, login, server_id, started_at, cols,"
        " rows, duration_ms, bytes, stored_bytes, chunks, last_seq, last_hash, status, exit_code)"
        " VALUES ($1, $2, 'ssh', 'alice', 'root', 'node-1', $3, 80, 24, $4, $5, $6, $7, $8, $9,"
        " 'closed', $10)",
        sid,
        tenant,
        STARTED,
        last_ms,
        total,
        stored,
        seq,
        seq - 1,
        prev,
        exit_code,
    )
    return seq


def chunked(frames: Iterable[Frame], max_bytes: int) -> Iterable[list[Frame]]:
    """Group frames into chunks of at most ``max_bytes`` payload (like the SDK's batching)."""
    current: list[Frame] = []
    size = 0
    for f in frames:
        if current and size + len(f.data) > max_bytes:
            yield current
            current, size = [], 0
        current.append(f)
        size += len(f.data)
    if current:
        yield current
