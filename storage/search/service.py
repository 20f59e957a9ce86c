"""SearchService: one entry point for compliance search, whichever backend answers.

Every page says who answered and why (``backend``, ``reason``). The rule, per search:

1. OpenSearch not configured: PostgreSQL answers.
2. OpenSearch unreachable, or not holding a complete copy (no completeness marker, an index it
   listed is gone: :meth:`OpenSearchStore.completeness`): PostgreSQL answers, saying why.
3. Otherwise the tenant's search watermark (:func:`storage.search.watermark.pending`) decides:
   nothing pending, OpenSearch answers everything; something pending from time W on,
   PostgreSQL answers the part of the query from W on and OpenSearch the part before W
   (:func:`storage.search.model.split_at`), newest first as one page.

So an answer never comes from a part of OpenSearch that may be incomplete, whether the index
worker is stopped, lagging, or OpenSearch was emptied behind its back. A search error from
OpenSearch falls back to PostgreSQL for the whole page (same query, same semantics: results are
identical by design). A cursor is valid on both backends (keyset positions, not backend state),
so paging survives a fallback or a moving watermark.

Event hits in a session get their offset (event time - session start), read from PostgreSQL
(the source of truth) for both backends.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from schemas.links import replay_offset_ms
from sessionvault.errors import SessionVaultError
from storage.search.model import (
    EventHit,
    Page,
    Query,
    encode_cursor,
    format_time_us,
    split_at,
)
from storage.search.opensearch import OpenSearchBackend
from storage.search.pg import PgSearchBackend

log = logging.getLogger(__name__)

OS_PG = "opensearch+postgres"


class SearchService:
    """Choose the backend(s) per search (see the module docstring).

    ``health_ttl_s``: how long a verdict that OpenSearch is unusable is reused, so a down
    OpenSearch costs one probe per interval rather than one per search. A usable verdict is
    never reused: completeness is checked on every search (two cheap requests), because a
    cluster emptied behind the service's back must stop answering at once.
    """

    def __init__(
        self,
        pg_backend: PgSearchBackend,
        os_backend: OpenSearchBackend | None = None,
        *,
        health_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pg = pg_backend
        self.os = os_backend
        self._ttl = health_ttl_s
        self._unusable: str | None = None
        self._checked_at = float("-inf")
        self._now = clock

    async def _os_unusable(self) -> str | None:
        """Why OpenSearch cannot answer now (None: it can)."""
        assert self.os is not None
        now = self._now()
        if self._unusable is not None and now - self._checked_at < self._ttl:
            return self._unusable
        self._unusable = await self.os.readiness()
        self._checked_at = now
        return self._unusable

    async def search(self, query: Query) -> Page:
        """One page of hits for ``query``, saying which backend answered and why."""
        if self.os is None:
            page = await self.pg.search(query)
            page = dataclasses.replace(page, reason="OpenSearch is not configured")
            return await self._with_offsets(query, page)
        unusable = await self._os_unusable()
        if unusable is not None:
            page = await self.pg.search(query)
            page = dataclasses.replace(page, reason=unusable)
            return await self._with_offsets(query, page)
        try:
            page = await self._watermarked(query)
        except SessionVaultError as exc:
            if not exc.retriable:
                raise
            self._unusable = f"OpenSearch failed: {exc}"
            self._checked_at = self._now()
            log.warning("search: falling back to PostgreSQL: %s", exc)
            page = await self.pg.search(query)
            page = dataclasses.replace(page, reason=self._unusable)
        return await self._with_offsets(query, page)

    async def _watermarked(self, query: Query) -> Page:
        assert self.os is not None
        pending = await self.pg.index_pending(query.tenant)
        if pending.since_us is None:
            page = await self.os.search(query)
            return dataclasses.replace(
                page, reason="OpenSearch has indexed everything stored for this tenant"
            )
        w = pending.since_us
        why = (
            f"OpenSearch has not indexed {pending.batches} stored batch(es) of this tenant"
            f" from {format_time_us(w)} on"
            + (f", {pending.refused} of them refused by OpenSearch" if pending.refused else "")
        )
        newer, older = split_at(query, w)
        if older is None:
            assert newer is not None
            page = await self.pg.search(newer)
            return _as_page_of(query, page, "postgres", f"{why}: PostgreSQL answered", w)
        if newer is None:
            page = await self.os.search(older)
            return _as_page_of(query, page, "opensearch", f"{why}; the query ends before then", w)
        first = await self.pg.search(newer)
        if first.next_cursor is not None:  # the page is full of hits from W on
            return _as_page_of(query, first, OS_PG, f"{why}: PostgreSQL answered from then", w)
        need = query.limit - len(first.hits)
        second = await self.os.search(dataclasses.replace(older, limit=max(need, 1)))
        hits = first.hits + second.hits[:need]
        more = second.next_cursor is not None or len(second.hits) > need
        cursor = encode_cursor(hits[-1].time_us, hits[-1].id, query) if more and hits else None
        if first.hits and second.hits[:need]:
            backend = OS_PG
        else:
            backend = "postgres" if first.hits else "opensearch"
        return Page(
            hits,
            cursor,
            backend,
            reason=f"{why}: PostgreSQL answered from then, OpenSearch before",
            indexed_until_us=w,
        )

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
            dataclasses.replace(h, offset_ms=event_offset_ms(h, *starts[h.sid]))
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


def _as_page_of(query: Query, page: Page, backend: str, reason: str, watermark_us: int) -> Page:
    """A sub-query's page as ``query``'s: its cursor re-encoded for ``query``."""
    cursor = None
    if page.next_cursor is not None and page.hits:
        cursor = encode_cursor(page.hits[-1].time_us, page.hits[-1].id, query)
    return dataclasses.replace(
        page, next_cursor=cursor, backend=backend, reason=reason, indexed_until_us=watermark_us
    )


def event_offset_ms(hit: EventHit, start_us: int, duration_ms: int) -> int:
    """Where in its session an event hit is: the event's time after the session's start,
    clamped into the recording (an event after the last frame, such as a later
    session.recording.access, points at the end, never past it). A recording-access event
    names the moment that was viewed (``start_at_ms``): its link goes there."""
    viewed = (hit.fields or {}).get("start_at_ms")
    if hit.event == "session.recording.access" and isinstance(viewed, int):
        return replay_offset_ms(viewed, duration_ms)
    return replay_offset_ms((hit.time_us - start_us) // 1000, duration_ms)


__all__ = ["SearchService", "event_offset_ms"]
