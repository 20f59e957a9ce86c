"""The FastAPI application: :func:`create_app` (settings and collaborators injected).

Lifespan: one asyncpg pool (opened at startup; PostgreSQL must be reachable) and one Kafka
producer, created on first use so the API starts while Kafka is down (the webhook then answers
503 and kube-apiserver retries). Library errors map to HTTP statuses in one place:
ValidationError 400, NotFoundError 404, StorageError/TransportError 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from api import console
from api.console import security_headers
from ingest.kafka import SharedProducer
from ingest.metrics import REGISTRY, watch_spool
from ingest.view_audit import ViewAuditor
from sessionvault import __version__
from sessionvault.errors import (
    ConfigError,
    NotFoundError,
    SessionVaultError,
    ShreddedError,
    StorageError,
    TransportError,
    ValidationError,
)
from sessionvault.settings import Settings, require
from storage import pg
from storage.datakeys import configure as configure_keys

log = logging.getLogger(__name__)

ProducerFactory = Callable[[Settings], Any]


def _default_producer(settings: Settings) -> Any:
    from ingest.kafka import make_producer

    return make_producer(settings)


HTTP_REQUESTS = Counter(
    "sessionvault_http_requests",
    "API requests answered, by method, route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)


def _status_of(exc: SessionVaultError) -> int:
    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ShreddedError):
        return 410
    if isinstance(exc, StorageError | TransportError) or exc.retriable:
        return 503
    return 500


def create_app(
    settings: Settings,
    *,
    producer_factory: ProducerFactory = _default_producer,
    pool_max_size: int = 8,
) -> FastAPI:
    """The API for ``settings`` (PostgreSQL DSN and Kafka bootstrap required)."""
    require(settings, "postgres_dsn", "kafka_bootstrap")
    configure_keys(settings)
    watch_spool(settings.resolved_spool_dir)  # the access audit's spool, when Kafka is down

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await pg.create_pool(settings.postgres_dsn.get(), max_size=pool_max_size)
        app.state.producer = SharedProducer(lambda: producer_factory(settings))
        app.state.view_auditor = ViewAuditor(settings)
        app.state.hub = None
        if settings.federation_listen:
            from api.federation.hub import Hub

            app.state.hub = Hub(settings, app.state.pool)
            await app.state.hub.start()
        try:
            yield
        finally:
            if app.state.hub is not None:
                await app.state.hub.close()
            app.state.producer.close()
            # Blocks up to its timeout while Kafka is down (then the events stay spooled).
            await asyncio.to_thread(app.state.view_auditor.close)
            search = getattr(app.state, "search", None)
            if search is not None:
                await search.close()
            await app.state.pool.close()

    app = FastAPI(title="sessionvault", version=__version__, lifespan=lifespan)
    app.state.settings = settings

    @app.exception_handler(SessionVaultError)
    async def library_error(request: Request, exc: SessionVaultError) -> JSONResponse:
        code = _status_of(exc)
        # The message names the fault, never request content (library errors are written so).
        log.log(
            logging.WARNING if code >= 500 else logging.INFO,
            "%s %s -> %d: %s",
            request.method,
            request.url.path,
            code,
            exc,
        )
        headers = {"Retry-After": "5"} if code == 503 else None
        return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)

    @app.middleware("http")
    async def headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.update(security_headers())
        # The route's template, never the path: no session id or tenant becomes a label.
        route = getattr(request.scope.get("route"), "path", "unmatched")
        HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        return response

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus metrics of this API process (docs/operations.md): requests by route and
        status, the audit spool, process CPU and memory. No token: scraped from inside the
        cluster, and no label carries a tenant, a session or a user."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/keys")
    async def public_keys() -> dict[str, Any]:
        """The evidence signing keys' public halves (docs/evidence.md), old keys included:
        public by nature, so no token is needed (auditors fetch them to verify bundles)."""
        from storage.keyring import load_keys, public_key_document

        try:
            return public_key_document(load_keys(settings))
        except ConfigError as exc:
            raise NotFoundError("no evidence signing keys are configured") from exc

    from api import kube, player, search, sessions, shares
    from api.federation import routes as federation

    app.include_router(kube.router)
    app.include_router(sessions.router)
    app.include_router(search.router)
    app.include_router(player.router)
    app.include_router(shares.router)
    app.include_router(federation.router)
    app.include_router(console.router())
    return app
