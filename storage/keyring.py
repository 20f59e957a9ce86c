"""Keys: who signs evidence and who wraps the data keys (the key provider interface).

:class:`KeyProvider` is what the rest of the code uses; :class:`KeyFile` implements it with
a local JSON file (mode 0600, created by ``sessionvault up`` or ``sessionvault keys init``). A
KMS, Vault transit or PKCS#11 provider implements the same five methods: sign with the active
key, list public keys, wrap and unwrap a data key, and name the active key ids. Private keys
never leave the provider and are never logged.

Invariants:

* **Rotation adds, never replaces.** ``rotate`` makes a new key active; old signing keys keep
  verifying (their public keys stay listed) and old key-encryption keys keep unwrapping.
* Key ids are derived (signing: :func:`schemas.evidence.key_id` of the public key; KEK: the
  same over the key's SHA-256), so a key cannot be listed under a false id.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas.evidence import b64, canonical, key_id, sha256_hex, unb64
from sessionvault.errors import ConfigError, IntegrityError
from sessionvault.settings import Settings


class KeyProvider(Protocol):
    """Signing and key wrapping (see the module docstring)."""

    @property
    def signing_kid(self) -> str: ...

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature of ``data`` by the active signing key (:attr:`signing_kid`)."""
        ...

    def public_keys(self) -> dict[str, bytes]:
        """Every signing key's raw public key by key id, old ones included."""
        ...

    def wrap(self, dek: bytes, aad: bytes) -> tuple[str, bytes]:
        """Encrypt a data key under the active key-encryption key: (kek id, blob)."""
        ...

    def unwrap(self, kek_id: str, blob: bytes, aad: bytes) -> bytes:
        """The data key wrapped as ``blob`` by ``kek_id``; :class:`IntegrityError` if it is
        not (a wrong key, an altered blob, another tenant's ``aad``)."""
        ...


def sign_body(provider: KeyProvider, body: Mapping[str, Any]) -> dict[str, Any]:
    """Sign ``body`` (adding ``kid``): the envelope ``{"body", "sig"}`` that
    :func:`schemas.evidence.verify_envelope` checks."""
    signed = {**body, "kid": provider.signing_kid}
    return {"body": signed, "sig": b64(provider.sign(canonical(signed)))}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _kek_id(key: bytes) -> str:
    return "kek-" + sha256_hex(b"sv-kek\x00" + key)[:16]


@dataclass(frozen=True)
class _Signer:
    kid: str
    private: Ed25519PrivateKey
    public: bytes


class KeyFile:
    """:class:`KeyProvider` over a JSON file: ``{"signing": [...], "kek": [...]}``, each
    entry ``{"key": base64, "created_at": ..., "active": bool}``; exactly one active each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError as exc:
            raise ConfigError(
                f"no key file at {path}: run `sessionvault keys init` (or `sessionvault up`)"
            ) from exc
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read key file {path}: {exc}") from exc
        self._data: dict[str, Any] = data
        self._signers: dict[str, _Signer] = {}
        self._active_signer = ""
        for entry in data.get("signing", []):
            private = Ed25519PrivateKey.from_private_bytes(unb64(entry["key"]))
            public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            kid = key_id(public)
            self._signers[kid] = _Signer(kid, private, public)
            if entry.get("active"):
                self._active_signer = kid
        self._keks: dict[str, bytes] = {}
        self._active_kek = ""
        for entry in data.get("kek", []):
            key = unb64(entry["key"])
            kid = _kek_id(key)
            self._keks[kid] = key
            if entry.get("active"):
                self._active_kek = kid
        if not self._active_signer or not self._active_kek:
            raise ConfigError(f"key file {path} has no active signing key or key-encryption key")

    @classmethod
    def create(cls, path: Path) -> KeyFile:
        """A new key file with one signing key and one key-encryption key; an existing file
        is kept as it is (``up`` runs this every time)."""
        if not path.exists():
            data = {"v": 1, "signing": [_new_signing()], "kek": [_new_kek()]}
            _write(path, data)
        return cls(path)

    def rotate(self, which: str) -> str:
        """Add a new active key (``signing`` or ``kek``); old keys stay. Returns its id."""
        if which not in ("signing", "kek"):
            raise ConfigError("rotate signing or kek")
        entries = [{**e, "active": False} for e in self._data.get(which, [])]
        entries.append(_new_signing() if which == "signing" else _new_kek())
        _write(self.path, {**self._data, which: entries})
        fresh = KeyFile(self.path)
        return fresh.signing_kid if which == "signing" else fresh.kek_id

    @property
    def signing_kid(self) -> str:
        return self._active_signer

    @property
    def kek_id(self) -> str:
        return self._active_kek

    def sign(self, data: bytes) -> bytes:
        return self._signers[self._active_signer].private.sign(data)

    def public_keys(self) -> dict[str, bytes]:
        return {kid: s.public for kid, s in self._signers.items()}

    def wrap(self, dek: bytes, aad: bytes) -> tuple[str, bytes]:
        nonce = secrets.token_bytes(12)
        return self._active_kek, nonce + AESGCM(self._keks[self._active_kek]).encrypt(
            nonce, dek, aad
        )

    def unwrap(self, kek_id: str, blob: bytes, aad: bytes) -> bytes:
        key = self._keks.get(kek_id)
        if key is None:
            raise IntegrityError(f"data key wrapped by unknown key-encryption key {kek_id}")
        try:
            return AESGCM(key).decrypt(blob[:12], blob[12:], aad)
        except Exception as exc:  # cryptography's InvalidTag
            raise IntegrityError(f"data key does not unwrap with {kek_id}") from exc


def _new_signing() -> dict[str, Any]:
    raw = Ed25519PrivateKey.generate().private_bytes_raw()
    return {"key": b64(raw), "created_at": _now(), "active": True}


def _new_kek() -> dict[str, Any]:
    return {"key": b64(secrets.token_bytes(32)), "created_at": _now(), "active": True}


def _write(path: Path, data: Mapping[str, Any]) -> None:
    """Write atomically with mode 0600 (a reader never sees half a key file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def key_file_path(settings: Settings) -> Path:
    """Where the key file is: ``SESSIONVAULT_KEY_FILE`` or ``<home>/keys.json``."""
    return settings.key_file or settings.home / "keys.json"


def load_keys(settings: Settings) -> KeyFile:
    """The configured key provider (the key file; :class:`ConfigError` when it is missing)."""
    return KeyFile(key_file_path(settings))


def public_key_document(provider: KeyProvider) -> dict[str, Any]:
    """The public keys as served by the API and written into bundles:
    ``{"keys": [{"kid", "alg": "Ed25519", "public": base64}], "active": kid}``."""
    keys = provider.public_keys()
    return {
        "keys": [
            {"kid": kid, "alg": "Ed25519", "public": b64(raw)} for kid, raw in sorted(keys.items())
        ],
        "active": provider.signing_kid,
    }


def parse_public_keys(doc: Mapping[str, Any]) -> dict[str, bytes]:
    """Key id -> raw public key from a :func:`public_key_document`; a key listed under an id
    that is not its own is refused."""
    out: dict[str, bytes] = {}
    for k in doc.get("keys", []):
        raw = unb64(k["public"])
        if key_id(raw) != k["kid"]:
            raise IntegrityError(f"public key listed as {k['kid']} has id {key_id(raw)}")
        out[k["kid"]] = raw
    return out


__all__ = [
    "KeyFile",
    "KeyProvider",
    "key_file_path",
    "load_keys",
    "parse_public_keys",
    "public_key_document",
    "sign_body",
]
