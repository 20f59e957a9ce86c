"""Evidence: canonical bytes, signatures and Merkle trees (pure).

What sessionvault signs, and how anyone checks it without our code (docs/evidence.md gives a
standalone verifier that uses only the ``cryptography`` package):

* **Canonical bytes** (:func:`canonical`): JSON with sorted keys, no spaces, UTF-8, and only
  strings, integers, booleans, lists and objects (no floats: their text is not unique). Python's
  ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` produces it.
* **Signatures**: Ed25519 over the canonical bytes of a *body* (an object that names its
  signer in ``kid``); an envelope is ``{"body": ..., "sig": base64}``. A key id is the first 16
  hex digits of the SHA-256 of the raw 32-byte public key, so anyone can compute it.
* **Merkle trees** as in RFC 9162 (Certificate Transparency 2.0): leaf hash
  ``sha256(0x00 || leaf)``, node hash ``sha256(0x01 || left || right)``, the left subtree
  holding the largest power of two below the size. A leaf is the canonical bytes of
  ``[tenant, kind, ...]`` (:func:`leaf_bytes`).

Leaf kinds (the entries a checkpoint covers):

======================  =====================================================================
``chunk``               ``sid, seq, hash``: a stored chunk and its chain hash
``event``               ``uid, time_us, sid, body_sha256``: an audit event as stored (the SHA-256
                        of PostgreSQL's text of the jsonb body); a ``kube.request`` whose
                        stages merged later appears again with its new hash (the later wins)
``manifest``            ``sid, sha256``: a signed session manifest (of its canonical envelope)
``tombstone``           ``id, sha256``: a signed record of a deletion by policy
======================  =====================================================================
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

#: Version of everything in this module (in every signed body as ``v``).
EVIDENCE_VERSION = 1

Entry = tuple[Any, ...]


def canonical(obj: Any) -> bytes:
    """The one byte form of ``obj`` that is signed and hashed (see the module docstring).
    Raises ``ValueError`` for a float anywhere in it."""
    _no_floats(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _no_floats(obj: Any) -> None:
    if isinstance(obj, float):
        raise ValueError("floats have no canonical form; use integers")
    if isinstance(obj, Mapping):
        for v in obj.values():
            _no_floats(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _no_floats(v)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key_id(public_raw: bytes) -> str:
    """The id of an Ed25519 public key (its raw 32 bytes): the first 16 hex digits of its
    SHA-256. Derived, so a bundle cannot name a key by an id that is not its own."""
    return sha256_hex(public_raw)[:16]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


class SignatureError(ValueError):
    """A signature that does not verify, or names a key that is not trusted."""


def verify_envelope(envelope: Mapping[str, Any], public_keys: Mapping[str, bytes]) -> str:
    """Check ``envelope`` (``{"body": {..., "kid": ...}, "sig": ...}``) against
    ``public_keys`` (key id -> raw public key); returns the signer's key id.

    Raises :class:`SignatureError` naming what is wrong: an unknown key, or a signature that
    does not match the body."""
    body = envelope.get("body")
    if not isinstance(body, Mapping) or not isinstance(envelope.get("sig"), str):
        raise SignatureError("not a signed envelope (body and sig expected)")
    kid = body.get("kid")
    if not isinstance(kid, str) or kid not in public_keys:
        raise SignatureError(f"signed by key {kid!r}, which is not among the trusted keys")
    try:
        Ed25519PublicKey.from_public_bytes(public_keys[kid]).verify(
            unb64(envelope["sig"]), canonical(body)
        )
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError(f"signature by key {kid} does not match the signed body") from exc
    return kid


def envelope_sha256(envelope: Mapping[str, Any]) -> str:
    """The hash that identifies a signed envelope (what leaves and chains refer to)."""
    return sha256_hex(canonical(envelope))


# -- Merkle trees (RFC 9162 section 2.1) -------------------------------------------------------


def leaf_bytes(tenant: str, entry: Sequence[Any]) -> bytes:
    """The bytes of one leaf: the canonical form of ``[tenant, kind, ...]``."""
    return canonical([tenant, *entry])


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The root over leaf hashes ``leaves`` (the hash of the empty string for none)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = list(leaves)
    # Bottom-up with RFC 9162's shape: combine pairs left to right, an odd last node moves
    # up unchanged. This equals the recursive definition (left = largest power of two).
    while len(level) > 1:
        nxt = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree over ``leaves`` (RFC 9162 2.1.3.1)."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} outside a tree of {len(leaves)}")
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*inclusion_proof(index, leaves[:k]), merkle_root(leaves[k:])]
    return [*inclusion_proof(index - k, leaves[k:]), merkle_root(leaves[:k])]


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``leaf`` (a leaf hash) is at ``index`` of a tree of ``size`` with ``root``
    (RFC 9162 section 2.1.3.2)."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


__all__ = [
    "EVIDENCE_VERSION",
    "Entry",
    "SignatureError",
    "b64",
    "canonical",
    "envelope_sha256",
    "inclusion_proof",
    "key_id",
    "leaf_bytes",
    "leaf_hash",
    "merkle_root",
    "sha256_hex",
    "unb64",
    "verify_envelope",
    "verify_inclusion",
]
