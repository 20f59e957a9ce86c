"""Where an installation keeps its federation keys and certificates (``<home>/federation``).

A root keeps its CA and its tunnel listener's certificate under ``root/``; a leaf keeps its key,
its certificate, the root's CA and what it joined (``leaf.json``) under ``leaf/``. Private keys
are written 0600, atomically (a crash never leaves half a key).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from api.federation import pki
from sessionvault.errors import ConfigError
from sessionvault.settings import Settings

__all__ = ["LeafFiles", "RootFiles", "write_private"]

#: The root's own certificates (CA, listener) live this long; leaves' are set by settings.
SERVER_CERT_TTL_S = 365 * 86400


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True)
class RootFiles:
    """A root's CA and listener certificate."""

    dir: Path

    @classmethod
    def of(cls, settings: Settings) -> RootFiles:
        return cls(settings.home / "federation" / "root")

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.crt"

    def exists(self) -> bool:
        return self.ca_key.exists() and self.ca_cert.exists()

    def ensure(self, root_name: str, hosts: list[str], *, now: dt.datetime) -> None:
        """Create the CA (once) and a listener certificate for ``hosts`` (when missing or
        naming other hosts)."""
        if not self.exists():
            key, cert = pki.make_ca_pair(root_name, now=now)
            write_private(self.ca_key, key)
            write_private(self.ca_cert, cert, 0o644)
        marker = self.dir / "server.hosts"
        wanted = ",".join(hosts)
        if (
            self.server_cert.exists()
            and marker.exists()
            and marker.read_text() == wanted
            and pki.cert_info(self.server_cert.read_bytes()).not_after > now + dt.timedelta(days=30)
        ):
            return
        key = pki.new_key()
        cert = pki.sign_server_cert(
            self.ca_key.read_bytes(),
            self.ca_cert.read_bytes(),
            key,
            hosts,
            now=now,
            ttl_s=SERVER_CERT_TTL_S,
        )
        write_private(self.server_key, key)
        write_private(self.server_cert, cert, 0o644)
        write_private(marker, wanted.encode(), 0o644)

    def pin(self) -> str:
        return pki.ca_pin(self.ca_cert.read_bytes())


@dataclass(frozen=True)
class LeafFiles:
    """A leaf's key, certificate, its root's CA and the join record."""

    dir: Path

    @classmethod
    def of(cls, settings: Settings) -> LeafFiles:
        return cls.at(settings.home)

    @classmethod
    def at(cls, home: Path) -> LeafFiles:
        """The files of the installation whose home is ``home``."""
        return cls(home / "federation" / "leaf")

    @property
    def key(self) -> Path:
        return self.dir / "leaf.key"

    @property
    def cert(self) -> Path:
        return self.dir / "leaf.crt"

    @property
    def root_ca(self) -> Path:
        return self.dir / "root-ca.crt"

    @property
    def state_file(self) -> Path:
        return self.dir / "leaf.json"

    def joined(self) -> bool:
        return self.state_file.exists() and self.cert.exists() and self.key.exists()

    def state(self) -> dict[str, Any]:
        """``{"name", "root", "tunnel", "api"}`` of the join; ConfigError before a join."""
        try:
            data = orjson.loads(self.state_file.read_bytes())
        except FileNotFoundError as exc:
            raise ConfigError(
                "this installation has not joined a root (sessionvault federation join)"
            ) from exc
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {self.state_file}: {exc}") from exc
        if not isinstance(data, dict) or not {"name", "root", "tunnel"} <= data.keys():
            raise ConfigError(f"{self.state_file}: not a join record")
        return data

    def save(self, *, state: dict[str, Any], key: bytes, cert: bytes, root_ca: bytes) -> None:
        write_private(self.key, key)
        write_private(self.cert, cert, 0o644)
        write_private(self.root_ca, root_ca, 0o644)
        write_private(self.state_file, orjson.dumps(state, option=orjson.OPT_INDENT_2), 0o644)
