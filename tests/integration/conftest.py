"""Real servers for integration tests: PostgreSQL, the tansu broker, osmem (no mocks).

- ``stack`` (session): fresh servers in a tmp dir, started with deploy.stack (no workers). If a
  server cannot start, every test using it ERRORS with the server's log tail; nothing skips.
  Extra methods for fault tests: ``stack.stop_broker()`` / ``stack.start_broker(same_port=True)``
  (memory storage: topics registered through the ``settings`` fixture are re-created, committed
  offsets are lost), ``stack.stop_opensearch()`` / ``stack.start_opensearch(same_port=True)``
  (indices are lost).
- ``settings`` (function): a Settings pointing at the stack, with a FRESH migrated database
  (cloned from a template), unique topics ``sv.chunks.v1.<hex>`` etc., tenant ``t-<hex>``,
  home and spool_dir in tmp_path.
- ``pg_dsn``: the fresh database's DSN as a plain string; ``sv_env``: environment variables for
  running ``sessionvault`` subprocesses against the same settings.

A test that stops a server must leave it running again (use try/finally); the fixtures check.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from deploy.stack import LocalStack
from sessionvault.settings import Secret, Settings, load_settings, settings_env
from storage import pg
from storage.datakeys import configure
from storage.keyring import KeyFile, key_file_path

TEMPLATE_DB = "sv_template"
TEST_SESSION_TIMEOUT_MS = 2_000
TEST_HEARTBEAT_INTERVAL_MS = 500


async def _admin(stack: LocalStack, sql: str) -> None:
    conn = await pg.connect(stack.server_dsn("postgres"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _server_dir(prefix: str) -> Path:
    # Not under pytest's tmp dirs: under root the PostgreSQL server runs as another user that
    # must traverse the path, and every pytest start resets /tmp/pytest-of-<user> to 0700,
    # which (with concurrent pytest runs) pulls the ground from under a running server.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@pytest.fixture
def fresh_home() -> Iterator[Path]:
    """A private, empty home directory for a LocalStack of the test's own; removed afterwards."""
    path = _server_dir("sv-home-")
    try:
        yield path / "home"
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """Fresh PostgreSQL, broker and OpenSearch-compatible server for this test session.

    The broker keeps records in memory here: durability is not what these tests check (the
    durable default has tests of its own, test_broker_durable.py), and memory storage is
    faster and spares the suite an object-store process on the 2 cores."""
    base = _server_dir("sv-stack-")
    local = LocalStack(base / "home", detached=False, broker_storage="memory")
    try:
        local.start_postgres()
        asyncio.run(_admin(local, f'CREATE DATABASE "{TEMPLATE_DB}"'))
        asyncio.run(pg.migrate(local.server_dsn(TEMPLATE_DB)))
        local.start_broker()
        local.start_opensearch()
        yield local
    finally:
        try:
            local.down()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _check_running(stack: LocalStack) -> None:
    # A test that stopped a server and did not restart it would break every later test.
    if not stack.is_running("broker"):
        stack.start_broker(same_port=True)
    if not stack.is_running("opensearch"):
        stack.start_opensearch(same_port=True)


def new_installation(stack: LocalStack, base: Path, **overrides: object) -> Settings:
    """Settings of a fresh installation on the shared servers: its own migrated database,
    topics, tenant, home, spool and evidence keys (``base`` must exist and be empty)."""
    _check_running(stack)
    hexid = uuid.uuid4().hex[:12]
    database = f"t_{hexid}"
    asyncio.run(_admin(stack, f'CREATE DATABASE "{database}" TEMPLATE "{TEMPLATE_DB}"'))
    home = base / "home"
    home.mkdir()
    values: dict[str, object] = {
        "home": home,
        "tenant": f"t-{hexid}",
        "kafka_bootstrap": stack.kafka_bootstrap,
        "postgres_dsn": Secret(stack.server_dsn(database)),
        "opensearch_url": stack.opensearch_url,
        "topic_chunks": f"sv.chunks.v1.{hexid}",
        "topic_events": f"sv.events.v1.{hexid}",
        "topic_deadletter": f"sv.deadletter.v1.{hexid}",
        "spool_dir": base / "spool",
        # tansu answers a group's first JoinGroup after about half the session timeout: 1 s
        # here instead of 3 s with the production default, for each of the suite's ~100 joins.
        "consumer_session_timeout_ms": TEST_SESSION_TIMEOUT_MS,
        "consumer_heartbeat_interval_ms": TEST_HEARTBEAT_INTERVAL_MS,
        # The production defaults spare an idle stack's CPU; the suite wants quick loops.
        "consumer_fetch_max_wait_ms": 500,
        "worker_poll_wait_ms": 500,
        **overrides,
    }
    s = load_settings(env={"SESSIONVAULT_HOME": str(home)}, **values)
    stack.ensure_topics(s)
    KeyFile.create(key_file_path(s))  # as `up` does: the evidence keys of the installation
    return s


def drop_installation(stack: LocalStack, s: Settings) -> None:
    """Undo :func:`new_installation` (topics and database)."""
    stack.forget_topics(s)
    database = urlsplit(s.postgres_dsn.get()).path.lstrip("/")
    if stack.postgres_pid() is not None:
        asyncio.run(_admin(stack, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


@pytest.fixture
def settings(stack: LocalStack, tmp_path: Path) -> Iterator[Settings]:
    """Settings for one test: fresh database, unique topics and tenant, private home/spool."""
    s = new_installation(stack, tmp_path)
    configure(s)  # this process opens encrypted recordings with them
    try:
        yield s
    finally:
        drop_installation(stack, s)


@pytest.fixture
def pg_dsn(settings: Settings) -> str:
    """The DSN of this test's fresh database."""
    return settings.postgres_dsn.get()


def env_for(settings: Settings) -> dict[str, str]:
    """Environment for a ``sessionvault`` subprocess that must use exactly ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONVAULT_")}
    return {**env, **settings_env(settings)}


@pytest.fixture
def sv_env(settings: Settings) -> dict[str, str]:
    """Environment variables for ``sessionvault`` subprocesses (see :func:`env_for`)."""
    return env_for(settings)
