"""PostgreSQL connection and migrations. asyncpg's exceptions are translated to StorageError here
and in the other storage modules; nothing above storage/ sees a driver exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from importlib import resources
from typing import TypeAlias

import asyncpg

from sessionvault.errors import DataRejectedError, StorageError

log = logging.getLogger(__name__)

_MIGRATION_RE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")

# Errors that mean "the server is unreachable or restarting": worth retrying with backoff.
RETRIABLE_PG_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.InterfaceError,
)


#: What the rest of the project calls a connection and a pool (nothing above storage/
#: imports the driver).
Connection: TypeAlias = asyncpg.Connection
Pool: TypeAlias = asyncpg.Pool


def translate(exc: BaseException, what: str) -> StorageError:
    """The one translation of a driver exception into the project's errors.

    - a value or constraint PostgreSQL refused (``DataError``, integrity violations):
      :class:`DataRejectedError`, never retriable (the record is at fault);
    - a lock conflict (deadlock, serialization failure: ``TransactionRollbackError``) or an
      unreachable/restarting server (:data:`RETRIABLE_PG_ERRORS`): retriable
      :class:`StorageError`;
    - anything else (a definite SQL error): non-retriable :class:`StorageError`.

    A :class:`StorageError` passes through unchanged (already translated below).
    """
    if isinstance(exc, StorageError):
        return exc
    message = f"{what}: {type(exc).__name__}: {exc}"
    if isinstance(
        exc, asyncpg.exceptions.DataError | asyncpg.exceptions.IntegrityConstraintViolationError
    ):
        return DataRejectedError(message)
    err = StorageError(message)
    err.retriable = isinstance(
        exc, (*RETRIABLE_PG_ERRORS, asyncpg.exceptions.TransactionRollbackError)
    )
    return err


@contextlib.contextmanager
def map_pg_errors(what: str) -> Iterator[None]:
    """Translate any driver exception raised in the block with :func:`translate` (the edge
    where asyncpg's exceptions become the project's, as httpx's ``map_httpcore_exceptions``).
    Usable around ``await`` expressions in async code too."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        raise translate(exc, what) from exc


async def connect(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=10)
    except Exception as exc:
        raise translate(exc, "cannot connect to PostgreSQL") from exc


class Reconnecting:
    """A worker's one connection: opened on first use, and again after :meth:`drop` (which a
    worker calls when a statement failed, since the connection may be broken).

    ``on_connect(conn)`` runs on every new connection (LISTEN, caches to rebuild); if it
    fails, the connection is terminated and the error raised (translated).
    """

    def __init__(
        self,
        dsn: str,
        *,
        connector: Callable[[str], Awaitable[Connection]] = connect,
        on_connect: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> None:
        self._dsn = dsn
        self._connect = connector
        self._on_connect = on_connect
        self._conn: Connection | None = None

    async def get(self) -> Connection:
        """The open connection (a new one when there is none or it closed)."""
        if self._conn is None or self._conn.is_closed():
            conn = await self._connect(self._dsn)
            if self._on_connect is not None:
                try:
                    await self._on_connect(conn)
                except Exception as exc:
                    conn.terminate()
                    raise translate(exc, "cannot prepare the connection") from exc
            self._conn = conn
        return self._conn

    async def drop(self) -> None:
        """Close the connection (terminate it when a close does not finish in 2 s)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 2)
            except Exception:  # already broken; terminate() frees it regardless
                conn.terminate()


async def ensure_database(server_dsn: str, database: str) -> bool:
    """Create ``database`` on the server ``server_dsn`` (a DSN of its ``postgres`` database)
    unless it exists; True when it was created."""
    conn = await connect(server_dsn)
    try:
        with map_pg_errors(f"cannot create database {database}"):
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
                return False
            quoted = database.replace('"', '""')
            await conn.execute(f'CREATE DATABASE "{quoted}"')
            return True
    finally:
        await conn.close()


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 4) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, timeout=10)
    except Exception as exc:
        raise translate(exc, "cannot connect to PostgreSQL") from exc
    assert pool is not None
    return pool


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped in storage/migrations, in order."""
    out = []
    for entry in resources.files("storage").joinpath("migrations").iterdir():
        m = _MIGRATION_RE.match(entry.name)
        if m:
            out.append((int(m.group(1)), entry.name, entry.read_text()))
    return sorted(out)


async def _run_backfills(conn: asyncpg.Connection) -> list[str]:
    """Run the data backfills a migration asked for (rows of ``sv_backfills`` not done), in
    Python because they apply a rule that lives there. Each is idempotent and resumable: one
    interrupted is run again in full by the next ``migrate``."""
    from storage.search.pg import BACKFILLS

    if await conn.fetchval("SELECT to_regclass('sv_backfills')") is None:
        return []
    done: list[str] = []
    for row in await conn.fetch("SELECT name FROM sv_backfills WHERE done_at IS NULL ORDER BY 1"):
        name = row["name"]
        rows = await BACKFILLS[name](conn)
        await conn.execute("UPDATE sv_backfills SET done_at = now() WHERE name = $1", name)
        log.info("backfill %s: %d rows", name, rows)
        done.append(f"backfill {name} ({rows} rows)")
    return done


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations, each in its own transaction; return the names applied.

    A session-level advisory lock serialises concurrent callers (several workers starting at
    once), so each migration runs exactly once.
    """
    conn = await connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock(7413001)")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS sv_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM sv_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO sv_migrations (version, name) VALUES ($1, $2)", version, name
                )
            applied.append(name)
        applied += await _run_backfills(conn)
    except StorageError:
        raise
    except Exception as exc:
        raise translate(exc, "migration failed") from exc
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock(7413001)")
        finally:
            await conn.close()
    return applied
