"""What the search front ends (CLI ``sessionvault search`` and ``GET /v1/search``) share: turning
user input into a :class:`~storage.search.model.Query` and wiring a
:class:`~storage.search.service.SearchService` from settings.

The query semantics live in :mod:`storage.search.model`; nothing here filters or orders hits.
The tenant and the cluster scope are parameters chosen by the caller (the CLI: settings or
``--tenant``; the API: the token, never the request).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sessionvault.errors import SearchBackendError, ValidationError
from sessionvault.settings import Settings, require
from sessionvault.timespec import parse_when
from storage.search.model import (
    FILTERS,
    KIND_EVENT,
    KIND_OUTPUT,
    Page,
    Query,
)

__all__ = [
    "BACKENDS",
    "KIND_CHOICES",
    "SearchFrontEnd",
    "make_query",
    "open_search",
    "parse_when",
]

# --kind / ?kind= values and the hit kinds they select.
KIND_CHOICES: dict[str, tuple[str, ...]] = {
    "events": (KIND_EVENT,),
    "output": (KIND_OUTPUT,),
    "all": (KIND_EVENT, KIND_OUTPUT),
}
BACKENDS = ("auto", "postgres", "opensearch")


def make_query(
    tenant: str,
    *,
    filters: Mapping[str, Sequence[str]] | None = None,
    text: Sequence[str] = (),
    kind: str = "all",
    since: str | None = None,
    until: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    scope_kubernetes_clusters: Sequence[str] | None = None,
    now: datetime | None = None,
) -> Query:
    """The :class:`Query` for front-end input (filters by :data:`storage.search.model.FILTERS`
    name). Every check is the model's; this only converts types."""
    if kind not in KIND_CHOICES:
        raise ValidationError("bad_query", f"kind: one of {', '.join(KIND_CHOICES)}")
    values: dict[str, Any] = {}
    for name, vals in (filters or {}).items():
        if name not in FILTERS:
            raise ValidationError("bad_query", f"unknown filter {name!r}")
        if vals:
            values[name] = tuple(vals)
    return Query(
        tenant=tenant,
        text=tuple(text),
        kinds=KIND_CHOICES[kind],
        since=parse_when("since", since, now=now),
        until=parse_when("until", until, now=now),
        limit=limit,
        cursor=cursor or None,
        scope_kubernetes_clusters=None
        if scope_kubernetes_clusters is None
        else tuple(scope_kubernetes_clusters),
        **values,
    )


@dataclass
class SearchFrontEnd:
    """A :class:`SearchService` plus what the front end must release afterwards.

    ``backend``: ``auto`` (OpenSearch inside its watermark, PostgreSQL for the rest or when
    OpenSearch is not usable, saying which and why), ``postgres`` (PostgreSQL only),
    ``opensearch`` (OpenSearch alone or an error, never PostgreSQL).
    """

    service: Any  # storage.search.service.SearchService
    backend: str
    _closers: list[Callable[[], Awaitable[None]]]

    async def search(self, query: Query) -> Page:
        page: Page = await self.service.search(query)
        if self.backend == "opensearch" and page.backend != "opensearch":
            raise SearchBackendError(
                f"OpenSearch could not answer alone ({page.reason});"
                " use --backend auto to let PostgreSQL answer what OpenSearch does not hold"
            )
        return page

    async def close(self) -> None:
        for close in reversed(self._closers):
            await close()


def open_search(settings: Settings, *, backend: str = "auto", pool: Any = None) -> SearchFrontEnd:
    """Wire the search service for ``settings`` (``pool``: share the caller's asyncpg pool)."""
    from storage.search.opensearch import OpenSearchBackend
    from storage.search.pg import PgSearchBackend
    from storage.search.service import SearchService

    if backend not in BACKENDS:
        raise ValidationError("bad_query", f"backend: one of {', '.join(BACKENDS)}")
    if pool is None:
        require(settings, "postgres_dsn")
        pg_backend = PgSearchBackend(settings.postgres_dsn.get())
    else:
        pg_backend = PgSearchBackend(pool=pool)
    closers: list[Callable[[], Awaitable[None]]] = [pg_backend.close]
    os_backend = None
    if backend == "opensearch":
        require(settings, "opensearch_url")
    if backend != "postgres" and settings.opensearch_url:
        os_backend = OpenSearchBackend.from_settings(settings)
        osb = os_backend

        async def close_os() -> None:
            osb.close()

        closers.append(close_os)
    return SearchFrontEnd(SearchService(pg_backend, os_backend), backend, closers)
