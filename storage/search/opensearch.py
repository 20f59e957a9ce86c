"""OpenSearch at the edge: the client, error translation, templates, bulk writes, search.

Nothing outside this module touches opensearch-py: every failure leaves it as a
:class:`~sessionvault.errors.SearchBackendError` (``retriable`` for connection errors,
timeouts, 429 and 5xx; not for other 4xx), raised ``from`` the driver's exception.

:class:`OpenSearchStore` is the low-level I/O (templates, bulk, refresh, delete, marker) used by
the index worker and ``reindex``; :class:`OpenSearchBackend` answers :class:`model.Query`
with exactly the semantics of the PostgreSQL backend (see :mod:`storage.search.model`):

- filters are ``terms`` on keyword fields (exact, case-sensitive);
- time range is a ``range`` on ``time_us`` (long) with ``gte``/``lt``;
- every free-text term is a ``wildcard`` query on ``text_norm`` with the pattern
  ``*`` + escape(norm(term)) + ``*`` (``\\``, ``*`` and ``?`` escaped with ``\\``), which is a
  literal substring test of the casefolded text on any OpenSearch (no analysis, no query
  string, no ``case_insensitive`` flag needed since both sides are casefolded in Python);
- order is ``time_us desc, id desc`` (keyword: code point order), paged with ``search_after``
  on those two values, decoded from the same cursor format as the PostgreSQL backend.

Only the worker's synchronous client is used (opensearch-py's async client needs aiohttp);
async callers go through :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from opensearchpy import OpenSearch
from opensearchpy import exceptions as oserr

from sessionvault.backoff import jittered_s
from sessionvault.errors import SearchBackendError, SessionVaultError
from sessionvault.settings import Settings
from storage.search import model
from storage.search.templates import index_templates, text_norm_pieces

log = logging.getLogger(__name__)

#: The marker document saying "this cluster holds a complete copy of PostgreSQL" (written by
#: a finished reindex). Its absence means OpenSearch is new or lost its data.
MARKER_ID = "complete"

DEFAULT_TIMEOUT_S = 30.0


def _status(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) else None


def is_retriable_status(status: int | None) -> bool:
    """Whether an HTTP status (None: no answer at all) may succeed when tried again."""
    return status is None or status == 429 or status >= 500


def search_error(exc: BaseException, what: str) -> SearchBackendError:
    """Translate an opensearch-py (or socket) exception to SearchBackendError."""
    if isinstance(exc, SearchBackendError):
        return exc
    status = _status(exc)
    if isinstance(exc, oserr.ConnectionError | oserr.ConnectionTimeout | OSError):
        status = None
    detail = ""
    if isinstance(exc, oserr.TransportError):
        info = exc.info if isinstance(exc.info, dict) else {}
        err = info.get("error")
        if isinstance(err, dict):
            detail = f"{err.get('type', '')}: {err.get('reason', '')}"
        elif exc.error:
            detail = str(exc.error)
    else:
        detail = str(exc)
    where = f"HTTP {status}" if status is not None else "unreachable"
    err = SearchBackendError(f"opensearch: {what} failed ({where}): {detail or exc!r}"[:1000])
    err.retriable = is_retriable_status(status)
    return err


def connect(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> OpenSearch:
    """A client for ``url`` (``http[s]://host:port``, credentials in the URL if any).

    No retries inside the client: callers own the retry policy (and the back-off).
    """
    return OpenSearch(
        [url],
        timeout=timeout_s,
        max_retries=0,
        retry_on_timeout=False,
        http_compress=False,
    )


@dataclass(frozen=True, slots=True)
class BulkAction:
    """One ``index`` operation: the whole document under an idempotent ``_id``."""

    index: str
    id: str
    doc: Mapping[str, Any]

    def lines(self) -> bytes:
        head = orjson.dumps({"index": {"_index": self.index, "_id": self.id}})
        return head + b"\n" + orjson.dumps(self.doc) + b"\n"


@dataclass(frozen=True, slots=True)
class ItemFailure:
    """A bulk item OpenSearch refused: ``position`` in the request, HTTP status, reason."""

    position: int
    id: str
    status: int
    reason: str

    @property
    def retriable(self) -> bool:
        return is_retriable_status(self.status)


@dataclass
class BulkOutcome:
    """What a bulk request did, item by item."""

    ok: int = 0
    failures: list[ItemFailure] = field(default_factory=list)
    bytes: int = 0

    @property
    def retriable(self) -> list[ItemFailure]:
        return [f for f in self.failures if f.retriable]

    @property
    def permanent(self) -> list[ItemFailure]:
        return [f for f in self.failures if not f.retriable]


def parse_bulk_response(response: Mapping[str, Any], ids: Sequence[str]) -> BulkOutcome:
    """Item-level results of a bulk response (pure)."""
    out = BulkOutcome()
    items = response.get("items") or []
    if len(items) != len(ids):
        # A bulk answer always has one item per action; anything else is a broken server.
        raise SearchBackendError(
            f"opensearch: bulk answered {len(items)} items for {len(ids)} actions"
        )
    for pos, item in enumerate(items):
        result = next(iter(item.values())) if isinstance(item, dict) and item else {}
        status = int(result.get("status", 500))
        if 200 <= status < 300:
            out.ok += 1
            continue
        error = result.get("error")
        if isinstance(error, dict):
            reason = f"{error.get('type', '')}: {error.get('reason', '')}"
        else:
            reason = str(error)
        out.failures.append(ItemFailure(pos, ids[pos], status, reason[:1000]))
    return out


class OpenSearchStore:
    """Low-level OpenSearch I/O for one index prefix (``<prefix>-events-*``, ``-output-*``)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sv",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        client_factory: Callable[[str], OpenSearch] = connect,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._timeout_s = timeout_s
        self._client = client_factory(url)

    @property
    def client(self) -> OpenSearch:
        return self._client

    @property
    def meta_index(self) -> str:
        return f"{self.prefix}-meta"

    def patterns(self) -> list[str]:
        return [f"{self.prefix}-events-*", f"{self.prefix}-output-*"]

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            raise search_error(exc, what) from exc

    def ping(self) -> bool:
        """True when the cluster answers (never raises)."""
        try:
            return bool(self._client.ping())
        except Exception:
            return False

    def ensure_templates(self) -> list[str]:
        """Install the index templates that are missing or older; return the names installed."""
        installed = []
        indices = self._client.indices
        for name, body in index_templates(self.prefix).items():
            try:
                if indices.exists_index_template(name=name):
                    continue
                indices.put_index_template(name=name, body=body)
            except Exception as exc:
                raise search_error(exc, f"install template {name}") from exc
            installed.append(name)
        if installed:
            log.info("opensearch: installed index templates %s", installed)
        return installed

    def bulk(self, actions: Sequence[BulkAction], *, refresh: bool = False) -> BulkOutcome:
        """Send ``actions`` in ONE bulk request; item failures are returned, not raised.

        Raises SearchBackendError when the request as a whole fails.
        """
        if not actions:
            return BulkOutcome()
        body = b"".join(a.lines() for a in actions)
        params = {"refresh": "true"} if refresh else None
        response = self._call(
            f"bulk of {len(actions)} documents",
            lambda: self._client.bulk(body=body, params=params),
        )
        out = parse_bulk_response(response, [a.id for a in actions])
        out.bytes = len(body)
        return out

    def refresh(self) -> None:
        """Make everything indexed so far visible to searches."""
        self._call(
            "refresh",
            lambda: self._client.indices.refresh(
                index=",".join([*self.patterns(), self.meta_index]),
                params={"ignore_unavailable": "true", "allow_no_indices": "true"},
            ),
        )

    def search(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Run a search over both families (missing indices are no error: no hits)."""
        result = self._call(
            "search",
            lambda: self._client.search(
                index=",".join(self.patterns()),
                body=body,
                params={
                    "ignore_unavailable": "true",
                    "allow_no_indices": "true",
                    "track_total_hits": "false",
                },
            ),
        )
        assert isinstance(result, dict)
        return result

    def delete_by_query(self, query: Mapping[str, Any], *, refresh: bool = True) -> int:
        """Delete the documents of both families matching ``query``; return how many."""
        result = self._call(
            "delete by query",
            lambda: self._client.delete_by_query(
                index=",".join(self.patterns()),
                body={"query": query},
                params={
                    "refresh": "true" if refresh else "false",
                    "conflicts": "proceed",
                    "ignore_unavailable": "true",
                    "allow_no_indices": "true",
                },
            ),
        )
        return int(result.get("deleted", 0))

    def count(self, query: Mapping[str, Any] | None = None) -> int:
        result = self._call(
            "count",
            lambda: self._client.count(
                index=",".join(self.patterns()),
                body={"query": query or {"match_all": {}}},
                params={"ignore_unavailable": "true", "allow_no_indices": "true"},
            ),
        )
        return int(result.get("count", 0))

    # -- the completeness marker --

    def marker(self) -> dict[str, Any] | None:
        """The marker written by the last complete reindex, or None: a new or wiped cluster,
        or one whose documents were built by another :data:`model.DOCUMENT_VERSION` (a copy
        made by older rules is not a copy; the index worker rebuilds it)."""
        try:
            doc = self._client.get(index=self.meta_index, id=MARKER_ID)
        except oserr.NotFoundError:
            return None
        except Exception as exc:
            raise search_error(exc, "read the reindex marker") from exc
        source = doc.get("_source")
        if not isinstance(source, dict):
            return None
        if source.get("document_version", 1) != model.DOCUMENT_VERSION:
            return None
        return source

    def set_marker(self, info: Mapping[str, Any]) -> None:
        """Write the completeness marker (with the current :data:`model.DOCUMENT_VERSION` and
        the data indices that exist now, which :meth:`completeness` expects to find)."""
        indices = sorted(self.data_indices())
        self._call(
            "write the reindex marker",
            lambda: self._client.index(
                index=self.meta_index,
                id=MARKER_ID,
                body={**info, "document_version": model.DOCUMENT_VERSION, "indices": indices},
                params={"refresh": "true"},
            ),
        )

    def note_indices(self, names: Iterable[str]) -> None:
        """Add data indices to the marker's list (the index worker calls this when it writes
        to an index the marker does not list yet). No marker: nothing to add to."""
        marker = self.marker()
        if marker is None:
            return
        known = set(marker.get("indices") or ())
        if set(names) <= known:
            return
        body = {**marker, "indices": sorted(known | set(names))}
        self._call(
            "update the reindex marker",
            lambda: self._client.index(
                index=self.meta_index, id=MARKER_ID, body=body, params={"refresh": "true"}
            ),
        )

    def data_indices(self) -> set[str]:
        """The names of this prefix's data indices that exist."""
        result = self._call(
            "list indices",
            lambda: self._client.indices.get(
                index=",".join(self.patterns()),
                params={"ignore_unavailable": "true", "allow_no_indices": "true"},
            ),
        )
        return set(result) if isinstance(result, dict) else set()

    def completeness(self) -> str | None:
        """None when this cluster holds a complete copy of what was indexed into it: the marker
        of a full rebuild is there, of the current document rules, and every data index it
        lists still exists. Otherwise why not (one line). Raises SearchBackendError when the
        cluster does not answer. (Documents deleted one by one behind the worker's back are not
        detected: ``sessionvault reindex`` repairs that.)"""
        marker = self.marker()
        if marker is None:
            return (
                "OpenSearch holds no complete copy (new, emptied, or built by older document"
                " rules); the index worker is rebuilding it or has not run"
            )
        missing = set(marker.get("indices") or ()) - self.data_indices()
        if missing:
            return (
                f"OpenSearch lost {len(missing)} index(es) ({', '.join(sorted(missing)[:3])});"
                " the index worker is rebuilding it or has not run"
            )
        return None

    def close(self) -> None:
        try:
            self._client.close()
        except Exception as exc:  # best effort at shutdown
            log.debug("closing OpenSearch client: %s", exc)


def chunk_actions(
    actions: Iterable[BulkAction], *, max_bytes: int, max_docs: int
) -> Iterable[list[BulkAction]]:
    """Group actions into bulk requests of at most ``max_bytes`` (serialised) and ``max_docs``.

    A single action larger than ``max_bytes`` goes alone (OpenSearch decides; a refusal is an
    item failure like any other).
    """
    batch: list[BulkAction] = []
    size = 0
    for action in actions:
        n = len(action.lines())
        if batch and (size + n > max_bytes or len(batch) >= max_docs):
            yield batch
            batch, size = [], 0
        batch.append(action)
        size += n
    if batch:
        yield batch


def wait_healthy(store: OpenSearchStore, *, timeout_s: float) -> bool:
    """Poll ``store`` until it answers or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if store.ping():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


# -- documents -> bulk actions ---------------------------------------------------------------


def document_action(doc: Mapping[str, Any], *, prefix: str = "sv") -> BulkAction:
    """A bulk action for a document from :func:`model.event_document` /
    :func:`model.segment_document` (``_id`` taken out, ``text_norm`` stored within the keyword
    limit, index chosen by the document's month)."""
    body = dict(doc)
    doc_id = str(body.pop("_id"))
    body["text_norm"] = text_norm_pieces(str(body.get("text_norm") or ""))
    kind = body.get("kind")
    time_us = int(body["time_us"])
    if kind == model.KIND_EVENT:
        index = model.events_index(time_us, prefix)
    else:
        index = model.output_index(time_us, prefix)
    return BulkAction(index, doc_id, body)


# -- the search backend ----------------------------------------------------------------------


def escape_wildcard(term: str) -> str:
    """``term`` as a literal inside a Lucene wildcard pattern: ``\\``, ``*``, ``?`` escaped."""
    return term.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")


def query_body(query: model.Query) -> dict[str, Any] | None:
    """The OpenSearch request body for ``query`` (None: nothing can match, skip the request).

    See the module docstring for how each part of the model maps to OpenSearch.
    """
    kinds = [
        k
        for k, wanted in (
            (model.KIND_EVENT, query.wants_events),
            (model.KIND_OUTPUT, query.wants_output),
        )
        if wanted
    ]
    if not kinds:
        return None
    must: list[dict[str, Any]] = [
        {"term": {"tenant": query.tenant}},
        {"terms": {"kind": kinds}},
    ]
    for name, values in query.filters().items():
        must.append({"terms": {name: list(values)}})
    scope = query.scope_kubernetes_clusters
    if scope is not None:
        if not scope:
            return None
        must.append({"terms": {"kubernetes_cluster": list(scope)}})
    rng: dict[str, int] = {}
    if query.since_us is not None:
        rng["gte"] = query.since_us
    if query.until_us is not None:
        rng["lt"] = query.until_us
    if rng:
        must.append({"range": {"time_us": rng}})
    for term in query.terms_norm:
        must.append({"wildcard": {"text_norm": {"value": f"*{escape_wildcard(term)}*"}}})
    body: dict[str, Any] = {
        "query": {"bool": {"filter": must}},
        "sort": [{"time_us": {"order": "desc"}}, {"id": {"order": "desc"}}],
        "size": query.limit + 1,
        "track_total_hits": False,
    }
    after = query.after
    if after is not None:
        body["search_after"] = [after[0], after[1]]
    return body


def hit_from_source(source: Mapping[str, Any], query: model.Query) -> model.AnyHit:
    """Rebuild a hit from a stored document with the model's own hit builders."""
    if source.get("kind") == model.KIND_EVENT:
        return model.event_hit(str(source["tenant"]), int(source["time_us"]), source["body"])
    row = model.SegmentRow(
        tenant=str(source["tenant"]),
        sid=str(source["sid"]),
        seg_no=int(source["seg_no"]),
        start_ms=int(source["start_ms"]),
        end_ms=int(source["end_ms"]),
        time_us=int(source["time_us"]),
        text=str(source["text"]),
        times=tuple(int(t) for t in source.get("times") or ()),
        user=str(source.get("user") or ""),
        login=str(source.get("login") or ""),
        server_id=str(source.get("server_id") or ""),
        cluster_name=str(source.get("cluster_name") or ""),
        kubernetes_cluster=str(source.get("kubernetes_cluster") or ""),
    )
    return model.segment_hit(row, query.terms_norm)


class OpenSearchBackend:
    """The OpenSearch implementation of :class:`model.SearchBackend`.

    Raises SearchBackendError when OpenSearch cannot answer (the service falls back to
    PostgreSQL on it); :meth:`health` never raises.
    """

    name = "opensearch"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sv",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        store: OpenSearchStore | None = None,
    ) -> None:
        self.store = store or OpenSearchStore(url, prefix=prefix, timeout_s=timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenSearchBackend:
        """The backend for ``settings.opensearch_url`` and its index prefix."""
        return cls(settings.opensearch_url, prefix=settings.opensearch_index_prefix)

    def search_sync(self, query: model.Query) -> model.Page:
        body = query_body(query)
        if body is None:
            return model.make_page(query, [], self.name)
        result = self.store.search(body)
        hits = [hit_from_source(h["_source"], query) for h in result["hits"]["hits"]]
        return model.make_page(query, hits, self.name)

    async def search(self, query: model.Query) -> model.Page:
        """One page of hits for ``query`` (keyset after ``query.cursor``)."""
        return await asyncio.to_thread(self.search_sync, query)

    async def readiness(self) -> str | None:
        """None if OpenSearch answers now AND holds a complete copy of what was indexed into it
        (:meth:`OpenSearchStore.completeness`); otherwise why not, in one line (never raises).

        A cluster that answers but was never fully indexed (new, wiped, or no index worker
        running since it started) would answer searches with missing hits; what it has not
        indexed YET is the search watermark's business (:mod:`storage.search.watermark`).
        """

        def check() -> str | None:
            try:
                return self.store.completeness()
            except SessionVaultError as exc:
                return f"OpenSearch is unavailable: {exc}"

        return await asyncio.to_thread(check)

    async def health(self) -> bool:
        """True if OpenSearch answers and holds a complete copy (:meth:`readiness`)."""
        return await self.readiness() is None

    def close(self) -> None:
        self.store.close()


# -- bulk with retry -------------------------------------------------------------------------

backoff_s = jittered_s  # the one formula (sessionvault.backoff)


@dataclass
class IndexReport:
    """What :func:`index_documents` did."""

    indexed: int = 0
    requests: int = 0
    bytes: int = 0
    retries: int = 0
    rejected: list[tuple[BulkAction, ItemFailure]] = field(default_factory=list)


async def _default_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def index_documents(
    store: OpenSearchStore,
    actions: Sequence[BulkAction],
    *,
    max_bulk_bytes: int = 4 * 1024 * 1024,
    max_bulk_docs: int = 2000,
    retry_backoff_max_ms: int = 30_000,
    sleep: Callable[[float], Awaitable[None]] = _default_sleep,
    before_request: Callable[[], Awaitable[None]] | None = None,
) -> IndexReport:
    """Index ``actions`` (idempotent ids) and return only once each one is indexed or
    permanently refused (``report.rejected``, e.g. a mapping conflict: 4xx other than 429).

    Back-pressure: one bulk request of at most ``max_bulk_bytes`` is in flight at a time, and
    the caller gets control back only when the whole set is done, so a slow or throttling
    cluster slows the caller down instead of filling memory. A failed request (connection
    error, timeout, 429, 5xx) and retriable item failures are retried with exponential backoff
    (capped at ``retry_backoff_max_ms``), forever: ``sleep`` is where the caller can stop
    waiting (by raising). ``before_request`` runs before every request that follows a
    request-level failure (the index worker re-checks templates and its marker there, since a
    cluster that went away may have come back empty).
    """
    report = IndexReport()
    for group in chunk_actions(actions, max_bytes=max_bulk_bytes, max_docs=max_bulk_docs):
        pending = list(group)
        attempt = 0
        failed_request = False
        while pending:
            if failed_request and before_request is not None:
                await before_request()
            try:
                outcome = await asyncio.to_thread(store.bulk, pending)
            except SearchBackendError as exc:
                if not exc.retriable:
                    # The request as a whole was refused (e.g. 413 too large): not
                    # retriable as is; isolate by sending items one by one.
                    if len(pending) > 1:
                        log.warning("opensearch: bulk refused (%s); sending one by one", exc)
                        for one in pending:
                            sub = await index_documents(
                                store,
                                [one],
                                max_bulk_bytes=max_bulk_bytes,
                                max_bulk_docs=1,
                                retry_backoff_max_ms=retry_backoff_max_ms,
                                sleep=sleep,
                                before_request=before_request,
                            )
                            report.indexed += sub.indexed
                            report.requests += sub.requests
                            report.bytes += sub.bytes
                            report.retries += sub.retries
                            report.rejected += sub.rejected
                        pending = []
                        break
                    report.rejected.append(
                        (pending[0], ItemFailure(0, pending[0].id, 400, str(exc)[:1000]))
                    )
                    pending = []
                    break
                attempt += 1
                failed_request = True
                report.retries += 1
                delay = backoff_s(attempt, retry_backoff_max_ms)
                log.warning(
                    "opensearch: bulk of %d failed (attempt %d), retrying in %.1fs: %s",
                    len(pending),
                    attempt,
                    delay,
                    exc,
                )
                await sleep(delay)
                continue
            report.requests += 1
            report.bytes += outcome.bytes
            report.indexed += outcome.ok
            for failure in outcome.permanent:
                report.rejected.append((pending[failure.position], failure))
            retry = [pending[f.position] for f in outcome.retriable]
            pending = retry
            if retry:
                attempt += 1
                report.retries += 1
                delay = backoff_s(attempt, retry_backoff_max_ms)
                log.warning(
                    "opensearch: %d of a bulk's items failed retriably (e.g. %s), retrying in "
                    "%.1fs",
                    len(retry),
                    outcome.retriable[0].reason,
                    delay,
                )
                await sleep(delay)
    return report
