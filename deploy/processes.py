"""Processes of the local stack: the state file that records them (pids, ports, logs), and the
small helpers every local server uses (free ports, is a pid still ours, stop, wait for
start-up). One :class:`ProcessBook` per ``home``; each local server
(:mod:`deploy.servers`) is a small class on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psutil

from sessionvault.errors import StackError
from sessionvault.settings import STACK_FILE, read_stack_file

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0

Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


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


class ProcessBook:
    """The processes of one ``home`` (its ``stack.json``): what each server class records and
    reads. ``echo`` receives one-line progress messages."""

    def __init__(
        self,
        home: Path,
        *,
        detached: bool = True,
        echo: Echo = _quiet,
        start_timeout_s: float = START_TIMEOUT_S,
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

    def _launch(
        self,
        name: str,
        what: str,
        argv: list[str],
        ready: Callable[[], bool],
        *,
        env: dict[str, str] | None = None,
        state: dict[str, str] | None = None,
    ) -> int:
        """Start a server process, wait until ``ready()`` (or fail with its log's tail), then
        record it (and ``state``, such as its address) in the state file; returns its pid."""
        logfile = self._logfile(name)
        proc = self._spawn(argv, logfile, env=env)
        _wait(
            f"{what} (pid {proc.pid})",
            ready,
            timeout_s=self.start_timeout_s,
            logfile=logfile,
            pid=proc.pid,
        )
        self.state.update(state or {})
        self._record(name, proc.pid, logfile)
        return proc.pid

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
