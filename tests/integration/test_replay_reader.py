"""storage.reader against real PostgreSQL: byte-exact streaming, seek, tenant isolation,
dictionaries, hash-chain verification and bounded memory."""

from __future__ import annotations

import asyncio
import hashlib
import random
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from schemas.models import Frame, Stream
from sessionvault.errors import NotFoundError, StorageError
from sessionvault.settings import Settings
from storage import pg
from storage.codec import Decompressor, ZstdDict, train_dictionary
from storage.reader import get_session, iter_frames, list_sessions, verify_session
from tests.integration.replay_support import chunked, insert_dictionary, write_session

T = TypeVar("T")
STREAMS = [Stream.OUTPUT] * 6 + [Stream.INPUT, Stream.STDERR, Stream.RESIZE, Stream.MARKER]


def with_conn(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    async def main() -> T:
        pool = await pg.create_pool(settings.postgres_dsn.get(), min_size=1, max_size=2)
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(main())


async def collect(pool: Any, tenant: str, sid: str, **kw: Any) -> list[Frame]:
    return [f async for f in iter_frames(pool, tenant, sid, **kw)]


def awkward_frames(total_bytes: int, seed: int = 7) -> list[Frame]:
    """Frames of arbitrary bytes (invalid UTF-8, NULs, escapes), varied sizes, streams and
    timings, including runs of equal offsets."""
    rng = random.Random(seed)
    out: list[Frame] = []
    size = ms = 0
    while size < total_bytes:
        n = rng.choice([0, 1, 3, 17, 200, 1500, 4096, 9000])
        data = rng.randbytes(n) if rng.random() < 0.5 else (b"\x1b[31m\xff\xfe\xc3(" * 800)[:n]
        ms += rng.choice([0, 0, 1, 5, 40, 700])
        out.append(Frame(ms, rng.choice(STREAMS), data))
        size += len(data)
    return out


def test_five_megabyte_session_streams_back_byte_exact(settings: Settings) -> None:
    frames = awkward_frames(5 * 1024 * 1024)
    tenant = settings.tenant

    async def work(pool: Any) -> list[Frame]:
        async with pool.acquire() as conn:
            n = await write_session(conn, tenant, "s-5mb", chunked(frames, 64 * 1024))
        assert n > 60
        return await collect(pool, tenant, "s-5mb", chunk_batch=8)

    got = with_conn(settings, work)
    assert got == frames
    assert b"".join(f.data for f in got) == b"".join(f.data for f in frames)


def test_seek_returns_exactly_the_frames_at_or_after_the_offset(settings: Settings) -> None:
    # 10 frames per chunk, 10 ms apart, with a run of equal offsets spanning chunk boundaries.
    frames = [Frame(i * 10, Stream.OUTPUT, b"%05d|" % i) for i in range(300)]
    frames += [Frame(3000, Stream.OUTPUT, b"same%02d|" % i) for i in range(35)]
    frames += [Frame(3010 + i * 10, Stream.OUTPUT, b"t%03d|" % i) for i in range(30)]
    tenant = settings.tenant

    async def work(pool: Any) -> dict[int, list[Frame]]:
        async with pool.acquire() as conn:
            await write_session(
                conn, tenant, "s-seek", (frames[i : i + 10] for i in range(0, len(frames), 10))
            )
        out = {}
        for start in (0, 1, 10, 95, 100, 101, 1234, 2990, 3000, 3001, 3300, 99_999):
            out[start] = await collect(pool, tenant, "s-seek", start_ms=start, chunk_batch=3)
        return out

    for start, got in with_conn(settings, work).items():
        assert got == [f for f in frames if f.offset_ms >= start], start


def test_seek_does_not_read_chunks_before_the_seek_point(settings: Settings) -> None:
    frames = [Frame(i * 100, Stream.OUTPUT, b"frame %d\r\n" % i) for i in range(100)]
    tenant = settings.tenant

    async def work(pool: Any) -> tuple[list[Frame], str]:
        async with pool.acquire() as conn:
            await write_session(conn, tenant, "s-x", chunked(frames, 100))
            # Make chunk 0 undecodable: reading it at all would fail.
            await conn.execute(
                "UPDATE chunks SET codec = 1, payload = 'not zstd'::bytea WHERE sid = 's-x'"
                " AND seq = 0"
            )
        seeked = await collect(pool, tenant, "s-x", start_ms=5000)
        with pytest.raises(StorageError, match="seq 0: cannot decompress") as info:
            await collect(pool, tenant, "s-x")
        return seeked, str(info.value)

    seeked, _ = with_conn(settings, work)
    assert seeked == frames[50:]


def test_other_tenant_gets_the_same_not_found_as_a_missing_session(settings: Settings) -> None:
    tenant = settings.tenant
    frames = [Frame(0, Stream.OUTPUT, b"secret output")]

    async def work(pool: Any) -> list[str]:
        async with pool.acquire() as conn:
            await write_session(conn, tenant, "s-mine", [frames])
        messages = []
        for other_tenant, sid in (("intruder", "s-mine"), (tenant, "s-nope")):
            with pytest.raises(NotFoundError) as info:
                await get_session(pool, other_tenant, sid)
            messages.append(str(info.value).replace(sid, "SID"))
            with pytest.raises(NotFoundError):
                await collect(pool, other_tenant, sid)
            with pytest.raises(NotFoundError):
                await verify_session(pool, other_tenant, sid)
        assert await list_sessions(pool, "intruder") == []
        assert [s.sid for s in await list_sessions(pool, tenant)] == ["s-mine"]
        assert await collect(pool, tenant, "s-mine") == frames
        return messages

    first, second = with_conn(settings, work)
    assert first == second


def test_dictionary_compressed_chunks_are_decoded_with_their_dictionary(
    settings: Settings,
) -> None:
    rng = random.Random(3)
    words = [
        b"alice@node-1:~$ ",
        b"ls -la\r\n",
        b"drwxr-xr-x  2 root root 4096 ",
        b"kubectl ",
        b"get pods -n prod\r\n",
        b"\x1b[01;34m",
        b"\x1b[0m",
        b"Running   0   3d\r\n",
    ]
    samples = [b"".join(rng.choice(words) for _ in range(rng.randint(3, 30))) for _ in range(400)]
    frames = [Frame(i * 3, Stream.OUTPUT, s) for i, s in enumerate(samples)]
    tenant = settings.tenant

    async def work(pool: Any) -> tuple[list[Frame], int]:
        async with pool.acquire() as conn:
            data = train_dictionary(list(samples), dict_size=4096)
            dict_id = await insert_dictionary(conn, data)
            await write_session(
                conn, tenant, "s-dict", ([f] for f in frames), dictionary=ZstdDict(dict_id, data)
            )
            with_dict = await conn.fetchval(
                "SELECT count(*) FROM chunks WHERE sid = 's-dict' AND codec = 2"
            )
        return await collect(pool, tenant, "s-dict"), int(with_dict)

    got, with_dict = with_conn(settings, work)
    assert with_dict > 0
    assert got == frames


def test_verify_accepts_an_intact_chain_and_names_each_kind_of_tampering(
    settings: Settings,
) -> None:
    frames = awkward_frames(200_000, seed=11)
    tenant = settings.tenant

    async def work(pool: Any) -> list[tuple[bool, int, str]]:
        results = []
        async with pool.acquire() as conn:
            for sid in ("s-ok", "s-bytes", "s-gap", "s-tail", "s-time"):
                n = await write_session(conn, tenant, sid, chunked(frames, 8192))
            assert n > 10
            # One changed byte: store a re-compressed payload with a flipped byte in chunk 4.
            row = await conn.fetchrow(
                "SELECT codec, payload, raw_len FROM chunks WHERE sid = 's-bytes' AND seq = 4"
            )
            raw = bytearray(
                Decompressor().decompress(row["codec"], None, bytes(row["payload"]), row["raw_len"])
            )
            raw[len(raw) // 2] ^= 0x01
            await conn.execute(
                "UPDATE chunks SET codec = 0, payload = $1 WHERE sid = 's-bytes' AND seq = 4",
                bytes(raw),
            )
            await conn.execute("DELETE FROM chunks WHERE sid = 's-gap' AND seq = 6")
            await conn.execute(
                "DELETE FROM chunks WHERE sid = 's-tail' AND seq = (SELECT max(seq) FROM chunks"
                " WHERE sid = 's-tail')"
            )
            # A changed timing: same bytes, one frame moved by 1 ms in the packed index.
            idx = bytearray(
                await conn.fetchval("SELECT frames FROM chunks WHERE sid = 's-time' AND seq = 2")
            )
            idx[7] ^= 0x01  # lowest byte of the first frame's offset_ms
            await conn.execute(
                "UPDATE chunks SET frames = $1 WHERE sid = 's-time' AND seq = 2", bytes(idx)
            )
        for sid in ("s-ok", "s-bytes", "s-gap", "s-tail", "s-time"):
            r = await verify_session(pool, tenant, sid, chunk_batch=4)
            results.append((r.ok, r.chunks, r.message))
        return results

    ok, changed, gap, tail, timing = with_conn(settings, work)
    assert ok[0] is True
    assert "chunks verified" in ok[2]
    assert changed[:2] == (False, 4)
    assert "seq 4: content does not match" in changed[2]
    assert gap[:2] == (False, 6)
    assert "expected seq 6, found 7" in gap[2]
    assert tail[0] is False
    assert "tail missing" in tail[2]
    assert timing[:2] == (False, 2)
    assert "seq 2: content does not match" in timing[2]


def _big_frames(total_bytes: int, frame_bytes: int = 8192) -> Iterator[Frame]:
    """Varied output that zstd halves (4 bits of entropy per byte): slices of a 1 MiB random
    pool at pseudo-random positions, each led by a counter. Stored it is still far larger
    than the memory bound, so a reader that fetched the whole session would fail the test."""
    rng = random.Random(5)
    pool = bytes(rng.choices(b"abcdefghijklm \r\n\x1b", k=1 << 20))
    for i in range(total_bytes // frame_bytes):
        at = (i * 7919 * 4099) % (len(pool) - frame_bytes)
        yield Frame(i * 2, Stream.OUTPUT, b"%016d" % i + pool[at + 16 : at + frame_bytes])


@pytest.mark.slow
def test_iterating_a_100_megabyte_session_keeps_memory_bounded(settings: Settings) -> None:
    total = 100 * 1024 * 1024
    tenant = settings.tenant
    expected = hashlib.sha256()
    count = 0

    def source() -> Iterator[Frame]:
        nonlocal count
        for f in _big_frames(total):
            expected.update(f.data)
            count += 1
            yield f

    async def work(pool: Any) -> tuple[int, int, str, int]:
        async with pool.acquire() as conn:
            await write_session(conn, tenant, "s-big", chunked(source(), 64 * 1024))
        got = hashlib.sha256()
        n = size = 0
        tracemalloc.start()
        try:
            async for f in iter_frames(pool, tenant, "s-big", chunk_batch=8):
                got.update(f.data)
                n += 1
                size += len(f.data)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return n, size, got.hexdigest(), peak

    n, size, digest, peak = with_conn(settings, work)
    assert (n, size) == (count, total)
    assert digest == expected.hexdigest()
    # 8 chunks of 64 KiB in flight is about 1 MB; the session is 100 MB.
    assert peak < 20 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
