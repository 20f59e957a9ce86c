"""The leaf's end of the tunnel (docs/federation.md): dial out to the root, answer its questions
with this leaf's own API, as the leaf's own mapping of the asking root user allows.

Invariants:

* The leaf decides. The root's identity (root name from the join, user and roles from the
  request) is mapped by :func:`storage.federation.choose_mapping` over this leaf's rules to one
  tenant (and clusters) of this leaf; no rule, no data (403, audited too). The answer comes
  from this leaf's own routes with a principal of that tenant, so every read rule of a single
  installation (:meth:`storage.tokens.Principal.may_see`) applies unchanged.
* Only GET on the read routes of :data:`ALLOWED` is served; nothing the root sends can write.
* Every request is audited here before it is answered: a ``federation.read`` event (root, user,
  roles, route, parameters, tenant, allowed or not) goes to this leaf's own events topic,
  like any audit event (spooled when Kafka is down).
* The body goes back in pieces of at most ``MAX_DATA_BYTES``, each only with the root's credit,
  so a slow root holds this leaf's producer instead of filling memory.
* One outbound connection, re-dialled with the one backoff formula after any failure; no
  inbound port.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import re
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from api.auth import PRINCIPAL_SCOPE_KEY
from api.federation import pki
from api.federation.files import LeafFiles
from api.federation.tunnel import MAX_DATA_BYTES, Kind, decode, encode, encode_json
from ingest.health import Health
from sessionvault.backoff import backoff_ms
from sessionvault.errors import ConfigError, SessionVaultError, ValidationError
from sessionvault.settings import Settings
from storage.federation import choose_mapping, list_mappings
from storage.tokens import Principal

log = logging.getLogger(__name__)

__all__ = [
    "ALLOWED",
    "FEDERATION_READ",
    "AgentStats",
    "LeafAgent",
    "federation_read_event",
    "rotate_once",
]

#: The routes a root may read through the tunnel (GET only).
ALLOWED = re.compile(
    r"^/v1/(search|sessions|whoami|kube/timeline"
    r"|sessions/[^/]+(/(export|bundle|seek|frames|markers))?)$"
)
FEDERATION_READ = "federation.read"
#: Renew the certificate once less than this share of its life is left.
RENEW_AT_FRACTION = 1 / 3
_RECONNECT_CAP_MS = 30_000


def federation_read_event(
    *,
    tenant: str,
    leaf: str,
    root: str,
    user: str,
    roles: list[str],
    path: str,
    query: list[tuple[str, str]],
    allowed: bool,
    reason: str = "",
) -> dict[str, Any]:
    """The fields of one federated-access audit event (``uid``/``time`` filled on emit)."""
    sid = path.split("/")[3] if path.startswith("/v1/sessions/") else None
    fields: dict[str, Any] = {
        "event": FEDERATION_READ,
        "code": "SV1101I" if allowed else "SV1101W",
        "tenant": tenant,
        "user": f"{root}/{user}",
        "root_cluster": root,
        "root_user": user,
        "root_roles": sorted(roles),
        "cluster_name": leaf,
        "route": path,
        "params": [[k, v] for k, v in query],
        "allowed": allowed,
    }
    if sid:
        fields["sid"] = sid
    if reason:
        fields["reason"] = reason
    return fields


@dataclass
class AgentStats:
    connects: int = 0
    requests: int = 0
    denied: int = 0
    bytes_sent: int = 0
    renewals: int = 0


class _Credit:
    """Credit for DATA messages of one stream."""

    def __init__(self, window: int) -> None:
        self.available = window
        self.event = asyncio.Event()
        if window > 0:
            self.event.set()

    def grant(self, n: int) -> None:
        self.available += n
        self.event.set()

    async def take(self) -> None:
        while self.available <= 0:
            self.event.clear()
            await self.event.wait()
        self.available -= 1


class LeafAgent:
    """The tunnel worker of a leaf (``sessionvault worker tunnel``)."""

    def __init__(self, settings: Settings, *, app: ASGIApp | None = None) -> None:
        self.settings = settings
        self.files = LeafFiles.of(settings)
        self.state = self.files.state()  # ConfigError before a join
        self._app: Any = app
        self.stats = AgentStats()
        self.health = Health()
        self.connected = asyncio.Event()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._credits: dict[int, _Credit] = {}
        self._renewal: asyncio.Future[dict[str, Any]] | None = None
        self._ws: ClientConnection | None = None

    @property
    def app(self) -> Any:
        """This leaf's own API app, which answers the root's questions (made on first use)."""
        if self._app is None:
            from api.app import create_app

            self._app = create_app(self.settings)
        return self._app

    @property
    def name(self) -> str:
        return str(self.state["name"])

    @property
    def root(self) -> str:
        return str(self.state["root"])

    def _ssl(self) -> ssl.SSLContext:
        return pki.client_context(self.files.cert, self.files.key, self.files.root_ca)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the tunnel up until ``stop``; the leaf's API app runs in this process."""
        async with self.app.router.lifespan_context(self.app):
            self.app.state.federation_agent = self
            attempt = 0
            while not stop.is_set():
                try:
                    await self._session(stop)
                    attempt = 0
                except (OSError, ssl.SSLError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
                    self.health.failed("tunnel to the root", exc)
                    log.warning("federation: tunnel to %s failed: %s", self.state["tunnel"], exc)
                except ConnectionClosed as exc:
                    self.health.failed("tunnel to the root", exc)
                    log.warning("federation: tunnel closed: %s", exc)
                finally:
                    self.connected.clear()
                if stop.is_set():
                    break
                attempt += 1
                delay_s = backoff_ms(attempt, _RECONNECT_CAP_MS) / 1000
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay_s)

    async def _session(self, stop: asyncio.Event) -> None:
        host, _, port = str(self.state["tunnel"]).rpartition(":")
        host = host.strip("[]")
        uri = f"wss://{host if ':' not in host else '[' + host + ']'}:{port}/v1/tunnel"
        async with connect(
            uri,
            ssl=self._ssl(),
            server_hostname=host,
            max_size=MAX_DATA_BYTES + 64 * 1024,
            ping_interval=5,
            ping_timeout=10,
            open_timeout=10,
            compression=None,
        ) as ws:
            self._ws = ws
            self.stats.connects += 1
            self.health.succeeded()
            self.connected.set()
            log.info("federation: leaf %s connected to root %s", self.name, self.root)
            stopper = asyncio.create_task(stop.wait())
            renewer = asyncio.create_task(self._renew_when_due())
            try:
                reader = asyncio.create_task(self._read(ws))
                await asyncio.wait({stopper, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not reader.done():
                    reader.cancel()
                    await ws.close()
                else:
                    reader.result()
            finally:
                stopper.cancel()
                renewer.cancel()
                for task in list(self._tasks.values()):
                    task.cancel()
                self._tasks.clear()
                self._credits.clear()
                self._ws = None

    async def _read(self, ws: ClientConnection) -> None:
        async for message in ws:
            try:
                frame = decode(message)
            except ValidationError as exc:
                log.warning("federation: bad tunnel message from the root: %s", exc)
                continue
            if frame.kind is Kind.REQ:
                credit = _Credit(0)
                self._credits[frame.stream] = credit
                task = asyncio.create_task(self._answer(ws, frame.stream, frame.json(), credit))
                self._tasks[frame.stream] = task
                task.add_done_callback(functools.partial(self._forget, frame.stream))
            elif frame.kind is Kind.CREDIT:
                found = self._credits.get(frame.stream)
                if found is not None:
                    found.grant(frame.credit())
            elif frame.kind is Kind.CANCEL:
                running = self._tasks.get(frame.stream)
                if running is not None:
                    running.cancel()
            elif (
                frame.kind is Kind.RENEWED
                and self._renewal is not None
                and not self._renewal.done()
            ):
                self._renewal.set_result(frame.json())

    def _forget(self, stream_id: int, _task: asyncio.Task[None] | None = None) -> None:
        self._tasks.pop(stream_id, None)
        self._credits.pop(stream_id, None)

    async def _answer(
        self, ws: ClientConnection, stream_id: int, req: dict[str, Any], credit: _Credit
    ) -> None:
        credit.grant(max(1, int(req.get("window", 1))))
        path = str(req.get("path", ""))
        query = [(str(k), str(v)) for k, v in req.get("query", [])]
        identity = req.get("identity") or {}
        user = str(identity.get("user", ""))
        roles = [str(r) for r in identity.get("roles", [])]
        self.stats.requests += 1
        try:
            if req.get("method") != "GET" or not ALLOWED.match(path):
                await self._audit(self.settings.tenant, path, query, user, roles, False, "route")
                await self._refuse(ws, stream_id, 403, f"{path} is not readable through a tunnel")
                return
            rules = await list_mappings(self.app.state.pool)
            rule = choose_mapping(rules, self.root, user, roles)
            if rule is None:
                self.stats.denied += 1
                await self._audit(
                    self.settings.tenant, path, query, user, roles, False, "no mapping"
                )
                await self._refuse(
                    ws,
                    stream_id,
                    403,
                    f"leaf {self.name!r} maps no tenant for {self.root}/{user}",
                )
                return
            await self._audit(rule.tenant, path, query, user, roles, True)
            principal = Principal(
                token_id=f"root:{self.root}:{user}",
                tenant=rule.tenant,
                clusters=frozenset(rule.clusters),
                scopes=frozenset({"read"}),
                user=user,
                roles=frozenset(roles),
            )
            await self._call(ws, stream_id, path, query, principal, credit)
            self.health.progressed()
        except asyncio.CancelledError:
            raise
        except (ConnectionClosed, SessionVaultError) as exc:
            log.warning("federation: answering %s failed: %s", path, exc)
            with contextlib.suppress(ConnectionClosed):
                await ws.send(encode_json(Kind.ERROR, stream_id, {"message": str(exc)}))

    async def _refuse(self, ws: ClientConnection, stream_id: int, status: int, detail: str) -> None:
        await ws.send(
            encode_json(
                Kind.HEAD,
                stream_id,
                {"status": status, "headers": [["content-type", "application/json"]]},
            )
        )
        await ws.send(encode_json(Kind.DATA, stream_id, {"detail": detail}))
        await ws.send(encode(Kind.END, stream_id))

    async def _audit(
        self,
        tenant: str,
        path: str,
        query: list[tuple[str, str]],
        user: str,
        roles: list[str],
        allowed: bool,
        reason: str = "",
    ) -> None:
        # The first event creates the emitter (spool directory, sender thread): off the loop.
        await asyncio.to_thread(
            self.app.state.view_auditor.record,
            federation_read_event(
                tenant=tenant,
                leaf=self.name,
                root=self.root,
                user=user,
                roles=roles,
                path=path,
                query=query,
                allowed=allowed,
                reason=reason,
            ),
        )

    async def _call(
        self,
        ws: ClientConnection,
        stream_id: int,
        path: str,
        query: list[tuple[str, str]],
        principal: Principal,
        credit: _Credit,
    ) -> None:
        """Run the leaf's own route in process; stream its answer back with credit."""
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "https",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": urllib.parse.urlencode(query).encode(),
            "headers": [(b"host", b"leaf"), (b"accept", b"*/*")],
            "client": (f"root:{self.root}", 0),
            "server": ("leaf", 0),
            PRINCIPAL_SCOPE_KEY: principal,
        }
        request_sent = False
        done = asyncio.Event()
        buf = bytearray()

        async def receive() -> Message:
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def flush(n: int) -> None:
            await credit.take()
            await ws.send(encode(Kind.DATA, stream_id, bytes(buf[:n])))
            self.stats.bytes_sent += n
            del buf[:n]

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in message["headers"]
                ]
                await ws.send(
                    encode_json(
                        Kind.HEAD, stream_id, {"status": message["status"], "headers": headers}
                    )
                )
            elif message["type"] == "http.response.body":
                buf.extend(message.get("body", b""))
                while len(buf) >= MAX_DATA_BYTES:
                    await flush(MAX_DATA_BYTES)
                if not message.get("more_body", False):
                    if buf:
                        await flush(len(buf))
                    await ws.send(encode(Kind.END, stream_id))

        try:
            await self.app(scope, receive, send)
        finally:
            done.set()

    async def _renew_when_due(self) -> None:
        """Renew the certificate once a third of its life is left (checked hourly)."""
        while True:
            info = pki.cert_info(self.files.cert.read_bytes())
            left = info.not_after - dt.datetime.now(dt.UTC)
            if left.total_seconds() < self.settings.federation_cert_ttl_s * RENEW_AT_FRACTION:
                try:
                    await self.renew()
                except (SessionVaultError, TimeoutError, OSError) as exc:
                    # OSError: the files are read-only here (a Secret); rotate by a new join.
                    log.warning("federation: certificate renewal failed: %s", exc)
                else:
                    await self.reconnect()  # the next tunnel uses the new certificate
                    return
            await asyncio.sleep(3600)

    async def renew(self) -> str:
        """Get a new certificate from the root over the tunnel and store it (the next
        connection uses it; the root then revokes the old one). Returns the new serial."""
        ws = self._ws
        if ws is None:
            raise ConfigError("the tunnel is not connected; cannot renew now")
        key = pki.new_key()
        self._renewal = asyncio.get_running_loop().create_future()
        await ws.send(encode_json(Kind.RENEW, 0, {"csr": pki.make_csr(self.name, key).decode()}))
        reply = await asyncio.wait_for(self._renewal, 30)
        if "cert" not in reply:
            raise ValidationError("renew_refused", f"root refused renewal: {reply.get('error')}")
        cert = str(reply["cert"]).encode()
        self.files.save(
            state=self.state, key=key, cert=cert, root_ca=self.files.root_ca.read_bytes()
        )
        self.stats.renewals += 1
        serial = pki.cert_info(cert).serial
        log.info("federation: leaf certificate renewed (serial %s)", serial)
        return serial

    async def renew_over_own_tunnel(self) -> str:
        """Connect, renew, disconnect: ``federation rotate`` from the command line (a running
        tunnel worker is replaced for that moment and re-dials with the new certificate)."""
        host, _, port = str(self.state["tunnel"]).rpartition(":")
        host = host.strip("[]")
        async with connect(
            f"wss://{host if ':' not in host else '[' + host + ']'}:{port}/v1/tunnel",
            ssl=self._ssl(),
            server_hostname=host,
            open_timeout=10,
            compression=None,
        ) as ws:
            self._ws = ws
            reader = asyncio.create_task(self._read(ws))
            try:
                return await self.renew()
            finally:
                reader.cancel()
                self._ws = None

    async def reconnect(self) -> None:
        """Close the tunnel (it is re-dialled, with the current certificate)."""
        if self._ws is not None:
            await self._ws.close()


async def rotate_once(settings: Settings) -> str:
    """A new leaf certificate now (``sessionvault federation rotate``); returns its serial."""
    return await LeafAgent(settings).renew_over_own_tunnel()
