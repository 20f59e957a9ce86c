"""The root's end of the tunnels (docs/federation.md): a TLS WebSocket listener that admits
leaves by their certificates, and :class:`LeafLink`, one per connected leaf, over which the
root's federated routes ask their questions.

Invariants:

* A connection is admitted only with a client certificate signed by this root's CA (the TLS
  handshake refuses any other) whose serial the root issued to the leaf the certificate names,
  unexpired and unrevoked (:func:`storage.federation.cert_accepted`). Once admitted with a
  certificate, the leaf's older certificates are revoked.
* One live link per leaf: a reconnecting leaf replaces its previous link, whose open streams
  fail as "down" (never hang).
* Every wait on a leaf has a deadline: the answer's head within ``federation_timeout_ms``, each
  body piece within the same (a leaf that stalls mid-answer is named, not waited for).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from api.federation import pki
from api.federation.files import RootFiles
from api.federation.tunnel import DEFAULT_WINDOW, MAX_DATA_BYTES, Kind, decode, encode, encode_json
from sessionvault.errors import SessionVaultError, TransportError, ValidationError
from sessionvault.settings import Settings
from storage import federation as fed

log = logging.getLogger(__name__)

__all__ = ["Hub", "LeafDown", "LeafLink", "LeafStream", "parse_listen"]


class LeafDown(TransportError):
    """A leaf is not connected, went away, or did not answer in time."""

    def __init__(self, leaf: str, state: str, message: str) -> None:
        super().__init__(message)
        self.leaf = leaf
        self.state = state  # "down" or "timeout"


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as a pair."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValidationError("bad_setting", f"federation_listen {value!r}: use HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


class LeafStream:
    """One answer from a leaf: ``status``/``headers``, then the body by :meth:`body`."""

    def __init__(self, link: LeafLink, stream_id: int, timeout_s: float) -> None:
        self.link = link
        self.id = stream_id
        self.timeout_s = timeout_s
        self.head: asyncio.Future[tuple[int, list[list[str]]]] = (
            asyncio.get_running_loop().create_future()
        )
        self.queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.finished = False

    def fail(self, exc: BaseException) -> None:
        if not self.head.done():
            self.head.set_exception(exc)
        self.queue.put_nowait(exc)

    async def body(self) -> AsyncIterator[bytes]:
        """The body's pieces; each one consumed grants the leaf one more (bounded memory)."""
        try:
            while True:
                try:
                    item = await asyncio.wait_for(self.queue.get(), self.timeout_s)
                except TimeoutError:
                    raise LeafDown(
                        self.link.name,
                        "timeout",
                        f"leaf {self.link.name!r} stopped answering mid-stream",
                    ) from None
                if item is None:
                    self.finished = True
                    return
                if isinstance(item, BaseException):
                    self.finished = True
                    raise item
                yield item
                await self.link.send(encode(Kind.CREDIT, self.id, (1).to_bytes(4, "big")))
        finally:
            await self.close()

    async def read(self, max_bytes: int) -> bytes:
        """The whole body (a JSON answer); :class:`LeafDown` past ``max_bytes``."""
        out = bytearray()
        async for piece in self.body():
            out += piece
            if len(out) > max_bytes:
                raise LeafDown(self.link.name, "error", f"leaf {self.link.name!r}: answer too big")
        return bytes(out)

    async def close(self) -> None:
        """Tell the leaf to stop when the answer was not read to its end."""
        if self.link.streams.pop(self.id, None) is not None and not self.finished:
            self.finished = True
            with contextlib.suppress(LeafDown):
                await self.link.send(encode(Kind.CANCEL, self.id))


@dataclass
class LinkInfo:
    name: str
    serial: str
    connected_at: dt.datetime
    remote: str


class LeafLink:
    """The root's side of one leaf's tunnel."""

    def __init__(self, hub: Hub, ws: ServerConnection, info: LinkInfo) -> None:
        self.hub = hub
        self.ws = ws
        self.info = info
        self.name = info.name
        self.streams: dict[int, LeafStream] = {}
        self._ids = itertools.count(1)
        self._background: set[asyncio.Task[None]] = set()
        self.closed = False

    async def send(self, message: bytes) -> None:
        if self.closed:
            raise LeafDown(self.name, "down", f"leaf {self.name!r} is not connected")
        try:
            await self.ws.send(message)
        except ConnectionClosed as exc:
            raise LeafDown(self.name, "down", f"leaf {self.name!r} went away") from exc

    async def request(
        self,
        path: str,
        query: list[tuple[str, str]],
        identity: dict[str, Any],
        *,
        timeout_s: float,
        window: int = DEFAULT_WINDOW,
    ) -> LeafStream:
        """Ask the leaf ``GET path?query`` as ``identity``; returns once its head arrived
        (:class:`LeafDown` when it does not within ``timeout_s``)."""
        stream = LeafStream(self, next(self._ids), timeout_s)
        self.streams[stream.id] = stream
        try:
            await self.send(
                encode_json(
                    Kind.REQ,
                    stream.id,
                    {
                        "method": "GET",
                        "path": path,
                        "query": query,
                        "identity": identity,
                        "window": window,
                    },
                )
            )
            try:
                status, headers = await asyncio.wait_for(asyncio.shield(stream.head), timeout_s)
            except TimeoutError:
                raise LeafDown(
                    self.name,
                    "timeout",
                    f"leaf {self.name!r} did not answer within {timeout_s:g}s",
                ) from None
        except BaseException:
            await stream.close()
            raise
        stream.status = status
        stream.headers = {k.lower(): v for k, v in headers}
        return stream

    def _dispatch(self, message: bytes | str) -> None:
        frame = decode(message)
        stream = self.streams.get(frame.stream)
        if frame.kind is Kind.RENEW:
            task = asyncio.create_task(self._renew(frame.stream, frame.json()))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        if stream is None:
            return  # an answer to a stream the root already gave up on
        if frame.kind is Kind.HEAD:
            head = frame.json()
            if not stream.head.done():
                stream.head.set_result((int(head["status"]), list(head.get("headers", []))))
        elif frame.kind is Kind.DATA:
            if len(frame.payload) > MAX_DATA_BYTES:
                stream.fail(LeafDown(self.name, "error", f"leaf {self.name!r}: oversized data"))
            else:
                stream.queue.put_nowait(frame.payload)
        elif frame.kind is Kind.END:
            stream.queue.put_nowait(None)
        elif frame.kind is Kind.ERROR:
            message_text = str(frame.json().get("message", "error"))
            stream.fail(LeafDown(self.name, "error", f"leaf {self.name!r}: {message_text}"))

    async def _renew(self, stream_id: int, body: dict[str, Any]) -> None:
        try:
            cert = await self.hub.renew(self.name, str(body.get("csr", "")).encode())
            reply: dict[str, Any] = {"cert": cert.decode()}
        except SessionVaultError as exc:
            reply = {"error": str(exc)}
        with contextlib.suppress(LeafDown):
            await self.send(encode_json(Kind.RENEWED, stream_id, reply))

    async def pump(self) -> None:
        """Read the leaf's messages until the tunnel closes; then fail what is open."""
        try:
            async for message in self.ws:
                try:
                    self._dispatch(message)
                except ValidationError as exc:
                    log.warning("leaf %s sent a bad tunnel message: %s", self.name, exc)
                    break
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            for stream in list(self.streams.values()):
                stream.fail(LeafDown(self.name, "down", f"leaf {self.name!r} went away"))


class Hub:
    """The root's tunnel listener and its live links, by leaf name."""

    def __init__(self, settings: Settings, pool: Any) -> None:
        self.settings = settings
        self.pool = pool
        self.files = RootFiles.of(settings)
        self.links: dict[str, LeafLink] = {}
        self.changed = asyncio.Condition()
        self._server: Server | None = None
        self.port = 0

    @property
    def timeout_s(self) -> float:
        return self.settings.federation_timeout_ms / 1000

    async def start(self) -> None:
        """Create the CA when missing and listen on ``federation_listen``."""
        host, port = parse_listen(self.settings.federation_listen)
        hosts = [h.strip() for h in self.settings.federation_hosts.split(",") if h.strip()]
        now = dt.datetime.now(dt.UTC)
        await asyncio.to_thread(
            self.files.ensure, self.settings.federation_name, hosts or [host], now=now
        )
        ctx = pki.server_context(self.files.server_cert, self.files.server_key, self.files.ca_cert)
        self._server = await serve(
            self._handler,
            host,
            port,
            ssl=ctx,
            max_size=MAX_DATA_BYTES + 64 * 1024,
            ping_interval=5,
            ping_timeout=10,
            compression=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("federation: listening for leaves on %s:%d", host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handler(self, ws: ServerConnection) -> None:
        ssl_object = ws.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            await ws.close(1008, "a leaf certificate is required")
            return
        cert = pki.cert_info(der)
        try:
            refused = await fed.cert_accepted(self.pool, cert.name, cert.serial)
        except SessionVaultError as exc:
            log.warning("federation: cannot check leaf %s: %s", cert.name, exc)
            await ws.close(1011, "the root cannot check certificates now")
            return
        if refused is not None:
            log.warning("federation: refused a tunnel: %s", refused)
            await ws.close(1008, refused[:120])
            return
        await fed.supersede_certs(self.pool, cert.name, cert.serial)
        await fed.touch_leaf(self.pool, cert.name)
        remote = ws.remote_address
        link = LeafLink(
            self,
            ws,
            LinkInfo(cert.name, cert.serial, dt.datetime.now(dt.UTC), f"{remote[0]}:{remote[1]}"),
        )
        previous = self.links.get(cert.name)
        self.links[cert.name] = link
        async with self.changed:
            self.changed.notify_all()
        if previous is not None:
            await previous.ws.close(1000, "replaced by a new tunnel")
        log.info("federation: leaf %s connected from %s", cert.name, link.info.remote)
        try:
            await link.pump()
        finally:
            if self.links.get(cert.name) is link:
                del self.links[cert.name]
            async with self.changed:
                self.changed.notify_all()
            with contextlib.suppress(SessionVaultError):
                await fed.touch_leaf(self.pool, cert.name)
            log.info("federation: leaf %s disconnected", cert.name)

    async def wait_connected(self, names: list[str], timeout_s: float) -> bool:
        """True once every leaf of ``names`` has a link (within ``timeout_s``)."""

        async def wait() -> None:
            async with self.changed:
                await self.changed.wait_for(lambda: all(n in self.links for n in names))

        try:
            await asyncio.wait_for(wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def link(self, name: str) -> LeafLink:
        """The live link of leaf ``name`` (:class:`LeafDown` when it is not connected)."""
        link = self.links.get(name)
        if link is None or link.closed:
            raise LeafDown(name, "down", f"leaf {name!r} is not connected")
        return link

    async def sign_join(self, token: str, csr_pem: bytes) -> dict[str, Any]:
        """A join: use ``token``, sign the leaf's CSR; what the leaf stores (its certificate,
        the CA, where to dial, the root's name)."""
        async with self.pool.acquire() as conn, conn.transaction():
            leaf = await fed.consume_join_token(conn, token)
            cert = await self._issue(conn, leaf, csr_pem, check_name=False)
        return {
            "leaf": leaf,
            "cert": cert.decode(),
            "ca": self.files.ca_cert.read_text(),
            "root": self.settings.federation_name,
            "tunnel_port": self.port,
        }

    async def renew(self, leaf: str, csr_pem: bytes) -> bytes:
        """A new certificate for connected leaf ``leaf`` (its older ones are revoked once it
        reconnects with this one)."""
        return await self._issue(self.pool, leaf, csr_pem)

    async def _issue(self, db: Any, leaf: str, csr_pem: bytes, *, check_name: bool = True) -> bytes:
        now = dt.datetime.now(dt.UTC)
        cert = await asyncio.to_thread(
            pki.sign_leaf_csr,
            self.files.ca_key.read_bytes(),
            self.files.ca_cert.read_bytes(),
            csr_pem,
            leaf,
            now=now,
            ttl_s=self.settings.federation_cert_ttl_s,
            check_name=check_name,
        )
        info = pki.cert_info(cert)
        await fed.add_leaf_cert(db, leaf, info.serial, info.not_after)
        return cert
