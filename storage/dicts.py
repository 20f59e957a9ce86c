"""Trained zstd dictionaries for small chunk payloads (``zstd_dicts``).

Interactive sessions produce many small chunks (keystrokes echoed, prompts) that compress
poorly on their own; a dictionary trained on stored small payloads helps them. Rows are never
updated or deleted while chunks reference them (``chunks.dict_id`` is a foreign key), so a
payload can always be decompressed. The persist worker uses the newest dictionary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from sessionvault.errors import SessionVaultError
from storage.codec import DICT_MAX_INPUT, Compressor, Decompressor, ZstdDict, train_dictionary
from storage.pg import translate

log = logging.getLogger(__name__)


async def latest_dictionary(conn: asyncpg.Connection) -> ZstdDict | None:
    try:
        row = await conn.fetchrow("SELECT id, data FROM zstd_dicts ORDER BY id DESC LIMIT 1")
    except Exception as exc:
        raise translate(exc, "cannot read zstd dictionaries") from exc
    return ZstdDict(row["id"], bytes(row["data"])) if row else None


async def dictionary(conn: asyncpg.Connection, dict_id: int) -> bytes | None:
    """The zstd dictionary ``dict_id`` (None: there is none with that id)."""
    try:
        data = await conn.fetchval("SELECT data FROM zstd_dicts WHERE id = $1", dict_id)
    except Exception as exc:
        raise translate(exc, "cannot read zstd dictionaries") from exc
    return None if data is None else bytes(data)


async def load_dictionaries(conn: asyncpg.Connection) -> dict[int, bytes]:
    try:
        rows = await conn.fetch("SELECT id, data FROM zstd_dicts")
    except Exception as exc:
        raise translate(exc, "cannot read zstd dictionaries") from exc
    return {r["id"]: bytes(r["data"]) for r in rows}


async def sample_payloads(
    conn: asyncpg.Connection,
    *,
    max_samples: int = 5000,
    max_raw_len: int = DICT_MAX_INPUT,
    tenant: str | None = None,
) -> list[bytes]:
    """Decompressed payloads of up to ``max_samples`` random small, non-empty stored chunks."""
    try:
        rows = await conn.fetch(
            "SELECT codec, dict_id, raw_len, payload FROM chunks"
            " WHERE raw_len > 0 AND raw_len <= $1 AND ($2::text IS NULL OR tenant = $2)"
            " AND key_id IS NULL"  # sealed payloads are noise to a dictionary
            " ORDER BY random() LIMIT $3",
            max_raw_len,
            tenant,
            max_samples,
        )
        dicts = await load_dictionaries(conn)
    except Exception as exc:
        raise translate(exc, "cannot sample chunk payloads") from exc
    dec = Decompressor(dicts)
    return [
        dec.decompress(r["codec"], r["dict_id"], bytes(r["payload"]), r["raw_len"]) for r in rows
    ]


async def store_dictionary(conn: asyncpg.Connection, data: bytes, samples: list[bytes]) -> int:
    try:
        dict_id: int = await conn.fetchval(
            "INSERT INTO zstd_dicts (data, samples, sample_bytes) VALUES ($1, $2, $3) RETURNING id",
            data,
            len(samples),
            sum(len(s) for s in samples),
        )
    except Exception as exc:
        raise translate(exc, "cannot store zstd dictionary") from exc
    return dict_id


@dataclass(frozen=True)
class TrainReport:
    """Outcome of :func:`train_and_store`: compressed size of the held-out samples with plain
    zstd and with the new dictionary (best of both per payload, as the worker stores them)."""

    dict_id: int
    dict_bytes: int
    samples: int
    sample_bytes: int
    test_samples: int
    test_raw_bytes: int
    test_plain_bytes: int
    test_dict_bytes: int

    @property
    def plain_ratio(self) -> float:
        return self.test_raw_bytes / max(self.test_plain_bytes, 1)

    @property
    def dict_ratio(self) -> float:
        return self.test_raw_bytes / max(self.test_dict_bytes, 1)


class NotEnoughSamplesError(SessionVaultError):
    """Too few (or too uniform) stored payloads to train a dictionary."""


async def train_and_store(
    conn: asyncpg.Connection,
    *,
    dict_bytes: int = 64 * 1024,
    max_samples: int = 5000,
    level: int = 3,
    tenant: str | None = None,
    min_samples: int = 20,
) -> TrainReport:
    """Train a dictionary on sampled stored payloads, store it, report plain vs dict sizes on
    a held-out tenth of the sample. Raises NotEnoughSamplesError with too few samples."""
    samples = await sample_payloads(conn, max_samples=max_samples, tenant=tenant)
    if len(samples) < min_samples:
        raise NotEnoughSamplesError(
            f"only {len(samples)} small stored chunks found; need at least {min_samples}"
        )
    cut = max(1, len(samples) // 10)
    test, train = samples[:cut], samples[cut:]
    try:
        data = train_dictionary(list(train), dict_size=dict_bytes)
    except Exception as exc:  # zstd refuses when samples are too few or too uniform
        raise NotEnoughSamplesError(f"zstd could not train a dictionary: {exc}") from exc
    dict_id = await store_dictionary(conn, data, train)
    plain = Compressor(level)
    with_dict = Compressor(level, ZstdDict(dict_id, data))
    report = TrainReport(
        dict_id=dict_id,
        dict_bytes=len(data),
        samples=len(train),
        sample_bytes=sum(len(s) for s in train),
        test_samples=len(test),
        test_raw_bytes=sum(len(s) for s in test),
        test_plain_bytes=sum(len(plain.compress(s)[2]) for s in test),
        test_dict_bytes=sum(len(with_dict.compress(s)[2]) for s in test),
    )
    log.info("trained zstd dictionary %d (%d bytes) on %d samples", dict_id, len(data), len(train))
    return report
