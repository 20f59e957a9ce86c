"""Syslog: RFC 5424 messages over TLS (RFC 5425), plain TCP (RFC 6587) or UDP (RFC 5426).

Messages, structured data and framings come from :mod:`siem.formats.syslog`; MSG is the
sink's payload format (native JSON, CEF, ECS, OCSF).

- ``tls``: octet-counted framing (``MSG-LEN SP SYSLOG-MSG``), the only framing RFC 5425 has.
- ``tcp``: octet counting by default, or ``framing = "newline"`` (CR/LF/NUL inside a message
  written as ``#015``/``#012``/``#000`` by :func:`siem.formats.syslog.lf_frame`).
- ``udp``: one message per datagram; a message over ``max_datagram_bytes`` is refused
  (dead-lettered, reason ``oversize``) rather than cut, because a cut JSON or CEF payload
  would be a different record.

What "delivered" means here: syslog has no application-level acknowledgement. Over TLS/TCP a
batch is delivered when the whole write completed on a connection the peer had not closed
(checked before each write, so a connection the peer dropped while idle is replaced instead
of swallowing the batch). Bytes in flight when a connection breaks are resent on a new one
(at-least-once). UDP is fire-and-forget by nature.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from siem.config import SyslogOptions
from siem.sinks.base import FormatError, SinkError, formatter, ssl_context

log = logging.getLogger(__name__)


class SyslogSink:
    """A syslog receiver over TLS, TCP or UDP (see the module docstring)."""

    def __init__(
        self,
        name: str,
        options: SyslogOptions,
        fmt: str = "native",
        *,
        connect: Callable[[], socket.socket] | None = None,
    ) -> None:
        from siem.formats.syslog import lf_frame, octet_frame

        self.name = name
        self.options = options
        self.format = fmt
        self._payload = formatter(fmt)
        self._frame: Callable[[bytes], bytes] | None
        if options.transport == "udp":
            self._frame = None
        elif options.framing == "newline":
            self._frame = lf_frame
        else:
            self._frame = octet_frame
        self._connect = connect or self._open
        self._sock: socket.socket | None = None
        self._ssl: ssl.SSLContext | None = None

    @property
    def peer(self) -> str:
        return f"{self.options.transport}://{self.options.host}:{self.options.port}"

    # -- encoding (pure) ---------------------------------------------------------------------

    def encode(self, event: Mapping[str, Any]) -> bytes | None:
        from siem.formats.syslog import syslog_message

        payload = self._payload(event)
        if payload is None:
            return None
        o = self.options
        msg = syslog_message(
            event,
            app_name=o.app_name,
            hostname=o.hostname or "-",
            facility=o.facility,
            payload=lambda _ev: payload,
        )
        if self._frame is None:
            if len(msg) > o.max_datagram_bytes:
                raise FormatError(
                    "oversize",
                    f"syslog message is {len(msg)} bytes; UDP limit is {o.max_datagram_bytes}",
                )
            return msg
        return self._frame(msg)

    # -- connections -------------------------------------------------------------------------

    def _open(self) -> socket.socket:
        o = self.options
        timeout = o.timeout_ms / 1000
        if o.transport == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(timeout)
            sock.connect((o.host, o.port))
            return sock
        raw = socket.create_connection((o.host, o.port), timeout=timeout)
        if o.transport == "tcp":
            return raw
        if self._ssl is None:
            self._ssl = ssl_context(o.tls)
        try:
            return self._ssl.wrap_socket(raw, server_hostname=o.tls.server_name or o.host)
        except BaseException:
            raw.close()
            raise

    def _peer_closed(self, sock: socket.socket) -> bool:
        """Whether the peer closed (or broke) an idle connection. A syslog receiver never
        sends, so readable means EOF or an error (or, over TLS, a close_notify)."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        timeout = sock.gettimeout()
        try:
            sock.setblocking(False)
            data = sock.recv(4096)
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        except OSError:
            return True
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(timeout)
        return data == b""

    def _socket(self) -> socket.socket:
        if (
            self._sock is not None
            and self.options.transport != "udp"
            and self._peer_closed(self._sock)
        ):
            log.info("siem[%s]: %s closed the connection; reconnecting", self.name, self.peer)
            self._drop()
        if self._sock is None:
            try:
                self._sock = self._connect()
            except (OSError, ssl.SSLError) as exc:
                raise SinkError(f"syslog {self.peer}: cannot connect: {exc}") from exc
        return self._sock

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    # -- delivery ----------------------------------------------------------------------------

    def deliver(self, units: Sequence[bytes]) -> None:
        sock = self._socket()
        try:
            if self.options.transport == "udp":
                for unit in units:
                    sock.send(unit)
            else:
                sock.sendall(b"".join(units))
        except (OSError, ssl.SSLError) as exc:
            self._drop()
            raise SinkError(f"syslog {self.peer}: write failed: {exc}") from exc

    def sync(self) -> None:
        return None

    def close(self) -> None:
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket):
            with contextlib.suppress(OSError, ValueError):
                sock.unwrap()
        self._drop()


__all__ = ["SyslogSink"]
