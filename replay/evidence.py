"""Checking evidence: ``verify --since`` against the store, and evidence bundles.

A **bundle** (``export SID --format bundle``) is one zip file an auditor can check offline,
with no database and no server (:func:`verify_bundle`, or the standalone verifier in
docs/evidence.md):

==========================  ===============================================================
``manifest.json``           the session's signed manifest
``manifest-events.json``    the event leaves the manifest's ``events_root`` covers, in order
``checkpoint.json``         the signed checkpoint whose tree holds the manifest
``proof.json``              the manifest leaf's inclusion proof into that checkpoint
``keys.json``               the signing public keys (key id -> Ed25519 public key)
``chunks.bin``              every chunk as stored: u32 BE header length, header JSON
                            (``seq, prev_hash, hash, frames``), u32 BE payload length, payload
``events.jsonl``            one line per event: ``{"uid", "time_us", "sid", "body"}`` where
                            ``body`` is the stored body's text exactly as hashed
``recording.raw``           the output bytes (``export --format raw``)
``recording.cast``          asciicast v2
``recording.txt``           the rendered text
``SHA256SUMS``              ``<sha256>  <member>`` for every member above
``SHA256SUMS.sig``          signed envelope over the SHA-256 of ``SHA256SUMS``
==========================  ===============================================================

The chain: SHA256SUMS (signed) covers every byte of the file; the chunks rebuild the hash
chain up to the manifest's ``final_hash`` (signed); the events rebuild ``events_root``
(signed); the manifest is a leaf of a signed checkpoint (proof), the one that ``verify``
checks the store against.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

import orjson

from schemas.chain import chain_hash
from schemas.evidence import (
    SignatureError,
    envelope_sha256,
    inclusion_proof,
    leaf_bytes,
    leaf_hash,
    merkle_root,
    sha256_hex,
    verify_envelope,
    verify_inclusion,
)
from schemas.models import GENESIS_HASH, Frame, Stream
from sessionvault.errors import IntegrityError, NotFoundError, ShreddedError
from storage import evidence_store as store
from storage.evidence_logic import Expected, Finding, Tombstones, check_checkpoints, compare
from storage.keyring import KeyProvider, parse_public_keys, public_key_document, sign_body
from storage.reader import get_session, iter_chunks, iter_frame_lists, verify_session

# -- verify --since ----------------------------------------------------------------------------


@dataclass
class VerifyReport:
    """What ``verify --since`` found for one tenant."""

    tenant: str
    checkpoints: int = 0
    checked_from: int = 1
    sessions_checked: int = 0
    pending: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.fault for f in self.findings)


async def verify_tenant(
    pool: Any,
    tenant: str,
    public_keys: Mapping[str, bytes],
    *,
    since: datetime | None = None,
    external: Mapping[int, Mapping[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Check ``tenant``'s store against its checkpoints (see :mod:`storage.evidence_logic`):
    the checkpoints themselves, every record they signed (from the first checkpoint made at
    or after ``since``), records nobody signed, and the hash chain of every session they
    cover (bytes altered under an unchanged stored hash)."""
    say = progress or (lambda _: None)
    report = VerifyReport(tenant)
    checkpoints = await store.load_checkpoints(pool, tenant)
    report.checkpoints = len(checkpoints)
    report.findings += check_checkpoints(checkpoints, public_keys, external=external)
    since_us = 0 if since is None else int(since.timestamp() * 1_000_000)
    if since is not None:
        later = [cp.n for cp in checkpoints if str(cp.body.get("at", "")) >= _iso(since)]
        report.checked_from = later[0] if later else (checkpoints[-1].n + 1 if checkpoints else 1)
    valid: list[Mapping[str, Any]] = []
    for t in await store.load_tombstones(pool, tenant):
        try:
            verify_envelope(t, public_keys)
            valid.append(t["body"])
        except SignatureError as exc:
            tid = str(t.get("body", {}).get("id", "?"))
            report.findings.append(Finding("altered", tid, f"tombstone {tid}: {exc}"))
    pending = await store.pending_entries(pool, tenant)
    report.pending = len(pending)
    say(f"{tenant}: {len(checkpoints)} checkpoints, {len(pending)} records pending")
    view = await store.store_view(pool, tenant, since_us=since_us)
    expected = Expected.from_checkpoints(checkpoints)
    report.findings += compare(
        expected,
        view,
        pending=pending,
        tombstones=Tombstones.from_bodies(valid),
        since_n=report.checked_from,
        since_us=since_us,
    )
    named = {f.ref for f in report.findings}
    in_scope = sorted(
        {sid for (sid, _), (_, n) in expected.chunks.items() if n >= report.checked_from}
    )
    for i, sid in enumerate(in_scope):
        if sid in named or sid not in view.sessions:
            continue
        try:
            result = await verify_session(pool, tenant, sid)
        except ShreddedError as exc:
            report.findings.append(Finding("shredded", sid, f"session {sid}: {exc}"))
            continue
        except IntegrityError as exc:  # a sealed payload that does not open
            report.findings.append(Finding("altered", sid, f"session {sid}: {exc}"))
            continue
        report.sessions_checked += 1
        if not result.ok:
            report.findings.append(Finding("altered", sid, f"session {sid}: {result.message}"))
        if i % 100 == 99:
            say(f"{tenant}: {i + 1}/{len(in_scope)} sessions re-hashed")
    report.findings.sort()
    return report


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds")


# -- bundles: writing ---------------------------------------------------------------------------

_U32 = struct.Struct(">I")

MEMBERS = (
    "manifest.json",
    "manifest-events.json",
    "checkpoint.json",
    "proof.json",
    "keys.json",
    "chunks.bin",
    "events.jsonl",
    "recording.raw",
    "recording.cast",
    "recording.txt",
)


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes what passes through to ``inner``."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.sha = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        b = bytes(data)
        self.sha.update(b)
        self.inner.write(b)
        return len(b)


async def build_bundle(
    pool: Any, keys: KeyProvider, tenant: str, sid: str, out: BinaryIO
) -> dict[str, Any]:
    """Write the evidence bundle of ``sid`` to ``out`` (see the module docstring); returns
    its manifest body. The session must have a manifest in a checkpoint (the evidence stage,
    :class:`ingest.evidence.EvidenceWorker`, makes both; the caller runs a round first)."""
    from replay.export import export_lists_async

    session = await get_session(pool, tenant, sid)
    manifest = await store.latest_manifest(pool, tenant, sid)
    if manifest is None:
        raise NotFoundError(
            f"session {sid} has no signed manifest yet"
            + (" (it is still active)" if session.status == "active" else "")
        )
    leaf = ("manifest", sid, envelope_sha256(manifest.envelope))
    cp = await store.checkpoint_holding(pool, tenant, leaf)
    if cp is None:
        raise NotFoundError(f"the manifest of session {sid} is in no checkpoint yet")
    leaves = store.tree_leaves(tenant, cp.leaves)
    index = cp.leaves.index(leaf)
    proof = {
        "leaf": list(leaf),
        "index": index,
        "size": len(leaves),
        "path": [h.hex() for h in inclusion_proof(index, leaves)],
    }
    sums: list[tuple[str, str]] = []
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as z:

        def put(name: str, data: bytes) -> None:
            z.writestr(name, data)
            sums.append((sha256_hex(data), name))

        put("manifest.json", orjson.dumps(manifest.envelope))
        put("manifest-events.json", orjson.dumps(manifest.events))
        put("checkpoint.json", orjson.dumps(cp.envelope))
        put("proof.json", orjson.dumps(proof))
        put("keys.json", orjson.dumps(public_key_document(keys)))
        with z.open("chunks.bin", "w", force_zip64=True) as raw:
            h = _Hashing(raw)
            async for chunk in iter_chunks(pool, tenant, sid):
                write_chunk(h, chunk.seq, chunk.prev_hash, chunk.hash, chunk.frames)
            sums.append((h.sha.hexdigest(), "chunks.bin"))
        texts = await store.event_texts(pool, tenant, manifest.events)
        lines = b"".join(
            orjson.dumps({"uid": e[1], "time_us": e[2], "sid": e[3], "body": t}) + b"\n"
            for e, t in zip(manifest.events, texts, strict=False)
        )
        put("events.jsonl", lines)
        for fmt, name in (
            ("raw", "recording.raw"),
            ("asciicast-v2", "recording.cast"),
            ("text", "recording.txt"),
        ):
            with z.open(name, "w", force_zip64=True) as raw:
                h = _Hashing(raw)
                await export_lists_async(iter_frame_lists(pool, tenant, sid), session, fmt, h)  # type: ignore[arg-type]
                sums.append((h.sha.hexdigest(), name))
        text = "".join(f"{digest}  {name}\n" for digest, name in sums).encode()
        z.writestr("SHA256SUMS", text)
        sig = sign_body(
            keys,
            {
                "v": 1,
                "type": "bundle",
                "tenant": tenant,
                "sid": sid,
                "sha256sums": sha256_hex(text),
                "at": _iso(datetime.now(UTC)),
            },
        )
        z.writestr("SHA256SUMS.sig", orjson.dumps(sig))
    return dict(manifest.envelope["body"])


def write_chunk(
    out: IO[bytes] | _Hashing, seq: int, prev_hash: str, hash_: str, frames: Sequence[Frame]
) -> None:
    header = orjson.dumps(
        {
            "seq": seq,
            "prev_hash": prev_hash,
            "hash": hash_,
            "frames": [[f.offset_ms, f.stream.value, len(f.data)] for f in frames],
        }
    )
    payload = b"".join(f.data for f in frames)
    out.write(_U32.pack(len(header)) + header)
    out.write(_U32.pack(len(payload)) + payload)


# -- bundles: checking offline ------------------------------------------------------------------


@dataclass
class BundleReport:
    """What :func:`verify_bundle` found: ``problems`` name each failed check."""

    sid: str = ""
    tenant: str = ""
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    trusted_from_bundle: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_chunks(data: IO[bytes]) -> Iterable[tuple[dict[str, Any], bytes]]:
    while True:
        head = data.read(4)
        if not head:
            return
        if len(head) < 4:
            raise IntegrityError("chunks.bin ends inside a chunk")
        header = orjson.loads(data.read(_U32.unpack(head)[0]))
        (n,) = _U32.unpack(data.read(4))
        payload = data.read(n)
        if len(payload) != n:
            raise IntegrityError("chunks.bin ends inside a payload")
        yield header, payload


def _member_sha(z: zipfile.ZipFile, name: str) -> str:
    h = hashlib.sha256()
    with z.open(name) as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def verify_bundle(
    path: Path | BinaryIO, trusted_keys: Mapping[str, bytes] | None = None
) -> BundleReport:
    """Check a bundle offline (no database, no server): every check in the module docstring.
    ``trusted_keys`` (key id -> public key) are the keys to trust; without them the bundle's
    own ``keys.json`` is used and the report says so."""
    rep = BundleReport()
    try:
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        rep.problems.append(f"not a bundle: {exc}")
        return rep
    with z:
        names = set(z.namelist())
        missing = [m for m in (*MEMBERS, "SHA256SUMS", "SHA256SUMS.sig") if m not in names]
        if missing:
            rep.problems.append(f"missing from the bundle: {', '.join(missing)}")
            return rep
        keys = trusted_keys
        if keys is None:
            rep.trusted_from_bundle = True
            try:
                keys = parse_public_keys(orjson.loads(z.read("keys.json")))
            except (IntegrityError, ValueError, KeyError) as exc:
                rep.problems.append(f"keys.json: {exc}")
                return rep
        _check_sums(z, names, keys, rep)
        manifest = _check_manifest(z, keys, rep)
        if manifest is None:
            return rep
        _check_chunks(z, manifest, rep)
        _check_events(z, manifest, rep)
        _check_proof(z, manifest, keys, rep)
    return rep


def _check_sums(
    z: zipfile.ZipFile, names: set[str], keys: Mapping[str, bytes], rep: BundleReport
) -> None:
    sums = z.read("SHA256SUMS")
    try:
        sig = orjson.loads(z.read("SHA256SUMS.sig"))
        verify_envelope(sig, keys)
        if sig["body"]["sha256sums"] != sha256_hex(sums):
            rep.problems.append("SHA256SUMS was altered: it does not match its signature")
        else:
            rep.checks.append(f"SHA256SUMS signed by key {sig['body']['kid']}")
    except (SignatureError, ValueError, KeyError) as exc:
        rep.problems.append(f"SHA256SUMS.sig: {exc}")
    listed: dict[str, str] = {}
    for line in sums.decode(errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    for name in sorted(names - {"SHA256SUMS", "SHA256SUMS.sig"}):
        if name not in listed:
            rep.problems.append(f"{name} is not listed in SHA256SUMS (added to the bundle)")
        elif _member_sha(z, name) != listed[name]:
            rep.problems.append(f"{name} was altered: its SHA-256 does not match SHA256SUMS")
    for name in sorted(set(listed) - names):
        rep.problems.append(f"{name} is listed in SHA256SUMS but missing")


def _check_manifest(
    z: zipfile.ZipFile, keys: Mapping[str, bytes], rep: BundleReport
) -> dict[str, Any] | None:
    try:
        envelope: dict[str, Any] = orjson.loads(z.read("manifest.json"))
        kid = verify_envelope(envelope, keys)
    except (SignatureError, ValueError) as exc:
        rep.problems.append(f"manifest: {exc}")
        return None
    body: dict[str, Any] = envelope["body"]
    rep.sid, rep.tenant = str(body["sid"]), str(body["tenant"])
    rep.checks.append(f"manifest of session {rep.sid} signed by key {kid}")
    return envelope


def _check_chunks(z: zipfile.ZipFile, envelope: Mapping[str, Any], rep: BundleReport) -> None:
    body = envelope["body"]
    prev = GENESIS_HASH
    count = 0
    totals: dict[str, int] = {}
    with z.open("chunks.bin") as fh:
        try:
            for header, payload in _read_chunks(fh):
                frames, pos = [], 0
                for off, stream, ln in header["frames"]:
                    frames.append(Frame(int(off), Stream(stream), payload[pos : pos + ln]))
                    totals[stream] = totals.get(stream, 0) + ln
                    pos += ln
                seq = header["seq"]
                if seq != count or header["prev_hash"] != prev:
                    rep.problems.append(f"chunks.bin: chunk {seq} does not follow {count - 1}")
                    return
                if chain_hash(prev, str(body["sid"]), seq, frames) != header["hash"]:
                    rep.problems.append(f"chunks.bin: chunk {seq} does not match its hash")
                    return
                prev = header["hash"]
                count += 1
        except (IntegrityError, ValueError, KeyError) as exc:
            rep.problems.append(f"chunks.bin: {exc}")
            return
    if count != body["chunks"] or prev != body["final_hash"]:
        rep.problems.append(
            f"chunks.bin holds {count} chunks ending in {prev[:12]}; the signed manifest"
            f" {body['chunks']} ending in {str(body['final_hash'])[:12]}"
        )
    elif totals != body["bytes"]:
        rep.problems.append(f"chunks.bin: bytes per stream {totals} != manifest {body['bytes']}")
    else:
        rep.checks.append(f"{count} chunks rebuild the hash chain to the manifest's final hash")


def _check_events(z: zipfile.ZipFile, envelope: Mapping[str, Any], rep: BundleReport) -> None:
    body = envelope["body"]
    tenant = str(body["tenant"])
    listed = [tuple(e) for e in orjson.loads(z.read("manifest-events.json"))]
    root = merkle_root([leaf_hash(leaf_bytes(tenant, e)) for e in listed]).hex()
    if root != body["events_root"] or len(listed) != body["events"]:
        rep.problems.append("manifest-events.json does not give the manifest's signed events_root")
        return
    have: dict[tuple[str, int], str] = {}
    for line in z.read("events.jsonl").splitlines():
        try:
            e = orjson.loads(line)
            have[(e["uid"], e["time_us"])] = sha256_hex(str(e["body"]).encode())
        except (ValueError, KeyError, TypeError):
            rep.problems.append("events.jsonl: a line is not an event record")
    bad = False
    for e in listed:
        got = have.pop((e[1], e[2]), None)
        if got is None:
            rep.problems.append(f"event {e[1]} (in the signed manifest) is not in events.jsonl")
            bad = True
        elif got != e[4]:
            rep.problems.append(f"event {e[1]} in events.jsonl differs from the signed one")
            bad = True
    for uid, _ in have:
        rep.problems.append(f"event {uid} in events.jsonl is not in the signed manifest")
        bad = True
    if not bad:
        rep.checks.append(f"{len(listed)} events match the manifest's events_root")


def _check_proof(
    z: zipfile.ZipFile, envelope: Mapping[str, Any], keys: Mapping[str, bytes], rep: BundleReport
) -> None:
    try:
        cp = orjson.loads(z.read("checkpoint.json"))
        kid = verify_envelope(cp, keys)
        proof = orjson.loads(z.read("proof.json"))
    except (SignatureError, ValueError) as exc:
        rep.problems.append(f"checkpoint: {exc}")
        return
    body = envelope["body"]
    leaf = ["manifest", body["sid"], envelope_sha256(envelope)]
    ok = (
        proof.get("leaf") == leaf
        and cp["body"]["tenant"] == body["tenant"]
        and proof.get("size") == cp["body"]["size"]
        and verify_inclusion(
            leaf_hash(leaf_bytes(str(body["tenant"]), leaf)),
            int(proof["index"]),
            int(proof["size"]),
            [bytes.fromhex(p) for p in proof["path"]],
            bytes.fromhex(cp["body"]["root"]),
        )
    )
    if not ok:
        rep.problems.append(
            f"proof.json does not prove the manifest is in checkpoint {cp['body'].get('n')}"
        )
    else:
        rep.checks.append(
            f"the manifest is leaf {proof['index']} of checkpoint {cp['body']['n']}"
            f" (tenant {body['tenant']}), signed by key {kid}"
        )


__all__ = [
    "MEMBERS",
    "BundleReport",
    "VerifyReport",
    "build_bundle",
    "verify_bundle",
    "verify_tenant",
    "write_chunk",
]
