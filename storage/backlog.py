"""Work waiting in PostgreSQL-driven stages, for ``sessionvault status``: sessions queued for
the segmenter, output-line batches the detect worker has not seen, stored batches search has
still to index (the search watermark's pending rows)."""

from __future__ import annotations

from storage.pg import Connection, map_pg_errors

#: status key -> table; a table a migration has not created yet is left out.
BACKLOG_TABLES = (
    ("segment_queue", "segment_queue"),
    ("detect_feed", "detect_feed"),
    ("index_pending", "sv_index_pending"),
)


async def queued_work(conn: Connection) -> dict[str, int]:
    """Rows waiting per stage (see :data:`BACKLOG_TABLES`)."""
    out: dict[str, int] = {}
    with map_pg_errors("count queued work"):
        for key, table in BACKLOG_TABLES:
            if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
                # The table name comes from the constant above, never from input.
                out[key] = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    return out


__all__ = ["BACKLOG_TABLES", "queued_work"]
