"""A real uvicorn server running the sessionvault API on 127.0.0.1, and tokens for it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import uvicorn

from api.app import create_app
from sessionvault.settings import Settings
from storage import pg
from storage.tokens import create_token


async def _token(dsn: str, tenant: str, scopes: Iterable[str], clusters: Iterable[str]) -> str:
    conn = await pg.connect(dsn)
    try:
        token, _ = await create_token(conn, tenant, scopes=scopes, clusters=clusters)
        return token
    finally:
        await conn.close()


def make_token(
    settings: Settings,
    *,
    tenant: str | None = None,
    scopes: Iterable[str] = ("webhook", "read"),
    clusters: Iterable[str] = (),
) -> str:
    return asyncio.run(
        _token(settings.postgres_dsn.get(), tenant or settings.tenant, scopes, clusters)
    )


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """Serve the API with uvicorn on a free 127.0.0.1 port; yield its base URL."""
    # log_config=None: uvicorn leaves logging alone, so its records reach pytest's caplog.
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=0, log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("uvicorn did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
