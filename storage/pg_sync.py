"""One asyncpg connection driven from a synchronous thread (the Kafka-side workers).

The detect worker's PostgreSQL calls (session start times, looked up from inside the
synchronous rule engine, and the terminal-output feed) run on one thread of its own and go
through :class:`SyncPostgres`: a private event loop, a lazily opened connection, and
driver exceptions translated to :class:`~sessionvault.errors.StorageError` at this boundary.
After an error the connection is dropped (the next call reconnects).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from sessionvault.errors import StorageError
from storage import pg
from storage.pg import translate

log = logging.getLogger(__name__)

T = TypeVar("T")


class SyncPostgres:
    """A connection for one thread. Not thread-safe; call :meth:`close` when done."""

    def __init__(
        self, dsn: str, *, connect: Callable[[str], Awaitable[asyncpg.Connection]] = pg.connect
    ) -> None:
        self._dsn = dsn
        self._connect = connect
        self._loop = asyncio.new_event_loop()
        self._conn: asyncpg.Connection | None = None

    def run(self, what: str, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``op(connection)`` to completion; StorageError (connection dropped) on failure."""

        async def call() -> T:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._connect(self._dsn)
            return await op(self._conn)

        try:
            return self._loop.run_until_complete(call())
        except StorageError:
            self.drop()
            raise
        except Exception as exc:  # driver errors of any kind: translated at this boundary
            self.drop()
            raise translate(exc, what) from exc

    def drop(self) -> None:
        """Forget the connection at once (after an error: it may be mid-transaction)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    def close(self) -> None:
        try:
            if self._conn is not None:
                self._loop.run_until_complete(self._conn.close(timeout=2))
        except Exception as exc:  # best effort at shutdown
            log.debug("closing the PostgreSQL connection: %s", exc)
            self.drop()
        finally:
            self._conn = None
            self._loop.close()


__all__ = ["SyncPostgres"]
