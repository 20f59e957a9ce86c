"""Three installations on the suite's servers (a root and two leaves, each with its own
database, topics, tenant, home and workers), joined for real: join tokens from the root's
CLI, `federation join` from each leaf's, tunnel workers as subprocesses (killable), one of
them through a TCP proxy the test can cut."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sessionvault.settings import Settings
from storage import pg
from storage.tokens import create_token
from tests.integration.conftest import env_for
from tests.integration.import_support import SESSIONVAULT, drain
from tests.integration.search_front_support import _events, _session


def record(settings: Settings, started: str, lines: list[tuple[float, bytes]], **info: Any) -> str:
    """One session through the SDK (Kafka); returns its sid."""
    return _session(settings, lines, started=started, **info)


def cli(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [SESSIONVAULT, *args],
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"sessionvault {' '.join(args)}: {proc.returncode}\n{proc.stderr}")
    return proc


def token(settings: Settings, *, user: str, roles: tuple[str, ...] = ()) -> str:
    async def make() -> str:
        conn = await pg.connect(settings.postgres_dsn.get())
        try:
            text, _ = await create_token(
                conn, settings.tenant, scopes=("read",), user=user, roles=roles
            )
            return text
        finally:
            await conn.close()

    return asyncio.run(make())


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 the test can cut (every connection dropped, new ones refused)
    and restore on the same port: the network between a leaf and its root."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.restore()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def restore(self) -> None:
        async def start() -> None:
            self.server = await asyncio.start_server(
                self._client, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self.server.sockets[0].getsockname()[1]

        self._call(start())

    def cut(self) -> None:
        async def stop() -> None:
            if self.server is not None:
                self.server.close()
            for w in list(self.writers):
                w.transport.abort()
            self.writers.clear()

        self._call(stop())

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)


@dataclass
class Leaf:
    name: str
    settings: Settings
    sids: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start_tunnel(self) -> None:
        assert self.log is not None
        fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            [SESSIONVAULT, "worker", "tunnel", "--status-every", "0"],
            env=env_for(self.settings),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
        fh.close()

    def kill_tunnel(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log else ""


def wait_connected(
    base: str, tok: str, names: set[str], *, up: bool = True, timeout_s: float = 30
) -> None:
    """Until the root reports exactly ``names`` connected (or not, with ``up=False``)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        r = httpx.get(
            f"{base}/v1/federation/leaves", headers={"Authorization": f"Bearer {tok}"}, timeout=10
        )
        last = r.json()
        connected = {leaf["name"] for leaf in last["leaves"] if leaf["connected"]}
        if (names <= connected) if up else not (names & connected):
            return
        time.sleep(0.2)
    raise AssertionError(f"leaves not {'up' if up else 'down'} after {timeout_s}s: {last}")


@contextmanager
def tunnels(leaves: list[Leaf]) -> Iterator[None]:
    for leaf in leaves:
        leaf.start_tunnel()
    try:
        yield
    finally:
        for leaf in leaves:
            leaf.kill_tunnel()


def seed(leaf: Leaf, starts: list[str], marker: str, kube_at: list[str]) -> None:
    """Sessions at ``starts`` in ``leaf``, each printing ``marker`` lines, and a ``kubectl
    delete`` in cluster ``prod`` at each of ``kube_at``, through Kafka and the real persist
    worker and segmenter."""
    for n, started in enumerate(starts):
        sid = record(
            leaf.settings,
            started,
            [
                (0.2, b"$ "),
                (0.5, f"echo {marker} {leaf.name} {n}\r\n".encode()),
                (1.0, f"{marker} {leaf.name} {n}\r\n".encode()),
                (1.5, b"\xff\xfe raw bytes \x1b[31mred\x1b[0m\r\n"),
            ],
            user="bob",
            login="root",
            server_id=f"{leaf.name}-node-{n}",
            cluster_name=leaf.name,
        )
        leaf.sids.append(sid)
    _events(
        leaf.settings,
        [
            {
                "event": "kube.request",
                "code": "T3009I",
                "uid": f"{leaf.name}-kr-{n}",
                "time": at,
                "user": "bob",
                "kubernetes_cluster": "prod",
                "verb": "DELETE",
                "request_path": f"/api/v1/namespaces/shop/pods/web-{n}",
                "resource_kind": "pods",
                "resource_namespace": "shop",
                "resource_name": f"web-{n}",
                "response_code": 200,
            }
            for n, at in enumerate(kube_at)
        ],
    )
    drain(leaf.settings)
