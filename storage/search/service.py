"""SearchService: one entry point for compliance search, whichever backend answers.

OpenSearch answers when it is configured and healthy; otherwise PostgreSQL answers and the page
says so (``backend="postgres"``, ``fallback_reason``). An OpenSearch failure during a search
also falls back (the same query, same semantics: results are identical by design). A cursor is
valid on both backends (keyset positions, not backend state), so paging survives a fallback.

Event hits in a session get their offset (event time - session start), read from PostgreSQL
(the source of truth) for both backends.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from sessionvault.errors import SessionVaultError
from storage.search.model import EventHit, Page, Query, SearchBackend
from storage.search.pg import PgSearchBackend

log = logging.getLogger(__name__)


class SearchService:
    """Choose a backend per search (see the module docstring).

    ``health_ttl_s``: how long a health verdict about OpenSearch is reused, so a down
    OpenSearch costs one probe per interval rather than one per search.
    """

    def __init__(
        self,
        pg_backend: PgSearchBackend,
        os_backend: SearchBackend | None = None,
        *,
        health_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pg = pg_backend
        self.os = os_backend
        self._ttl = health_ttl_s
        self._healthy: bool | None = None
        self._checked_at = float("-inf")
        self._now = clock

    async def _os_healthy(self) -> bool:
        now = self._now()
        if self._healthy is None or now - self._checked_at >= self._ttl:
            assert self.os is not None
            self._healthy = await self.os.health()
            self._checked_at = now
        return self._healthy

    async def search(self, query: Query) -> Page:
        """One page of hits for ``query``."""
        reason: str | None = None
        page: Page | None = None
        if self.os is not None:
            if await self._os_healthy():
                try:
                    page = await self.os.search(query)
                except SessionVaultError as exc:
                    if not exc.retriable:
                        raise
                    self._healthy = False
                    self._checked_at = self._now()
                    reason = f"opensearch failed: {exc}"
                    log.warning("search: falling back to PostgreSQL: %s", exc)
            else:
                reason = "opensearch is unavailable or not fully indexed"
        if page is None:
            page = await self.pg.search(query)
            page = dataclasses.replace(page, fallback_reason=reason)
        return await self._with_offsets(query, page)

    async def _with_offsets(self, query: Query, page: Page) -> Page:
        sids = [h.sid for h in page.hits if isinstance(h, EventHit) and h.sid]
        if not sids:
            return page
        try:
            starts = await self.pg.session_starts(query.tenant, sids)
        except SessionVaultError as exc:
            log.warning("search: event offsets unavailable: %s", exc)
            return page
        hits = tuple(
            dataclasses.replace(h, offset_ms=max(0, (h.time_us - starts[h.sid]) // 1000))
            if isinstance(h, EventHit) and h.sid in starts
            else h
            for h in page.hits
        )
        return dataclasses.replace(page, hits=hits)

    async def health(self) -> dict[str, bool | None]:
        """Each backend's health (None: not configured)."""
        return {
            "postgres": await self.pg.health(),
            "opensearch": None if self.os is None else await self.os.health(),
        }


__all__ = ["SearchService"]
