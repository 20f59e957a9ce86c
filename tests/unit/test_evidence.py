"""The pure evidence parts: canonical bytes, Merkle proofs (RFC 9162), signatures and key
rotation, sealing, and the decisions ``verify`` takes (schemas/evidence.py,
storage/keyring.py, storage/datakeys.py, storage/evidence_logic.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from schemas.evidence import (
    SignatureError,
    canonical,
    envelope_sha256,
    inclusion_proof,
    leaf_bytes,
    leaf_hash,
    merkle_root,
    verify_envelope,
    verify_inclusion,
)
from sessionvault.errors import IntegrityError
from storage.datakeys import seal, unseal
from storage.evidence_logic import Expected, Tombstones, check_checkpoints, compare
from storage.evidence_store import GENESIS, CheckpointRecord, StoreView
from storage.keyring import KeyFile, sign_body


def test_canonical_bytes_sort_keys_keep_utf8_and_refuse_floats() -> None:
    assert canonical({"b": 1, "a": ["é", None, True]}) == '{"a":["é",null,true],"b":1}'.encode()
    with pytest.raises(ValueError, match="floats"):
        canonical({"x": [1.5]})


def _recursive_root(leaves: list[bytes]) -> bytes:
    """RFC 9162 2.1.1, written as the RFC does (the reference for the iterative one)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(
        b"\x01" + _recursive_root(leaves[:k]) + _recursive_root(leaves[k:])
    ).digest()


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 8, 13, 64, 100])
def test_merkle_root_matches_rfc_9162_and_every_leaf_has_a_proof_only_for_its_place(n: int) -> None:
    leaves = [leaf_hash(os.urandom(16)) for _ in range(n)]
    root = merkle_root(leaves)
    assert root == _recursive_root(leaves)
    for i in range(n):
        proof = inclusion_proof(i, leaves)
        assert verify_inclusion(leaves[i], i, n, proof, root)
        if n > 1:
            assert not verify_inclusion(leaves[i], (i + 1) % n, n, proof, root)
            assert not verify_inclusion(leaf_hash(b"other"), i, n, proof, root)


def test_a_leaf_names_its_tenant_so_the_same_record_of_two_tenants_differs() -> None:
    entry = ("chunk", "sid-1", 0, "ab" * 32)
    assert leaf_bytes("acme", entry) != leaf_bytes("globex", entry)


def test_rotation_adds_a_signing_key_and_old_signatures_keep_verifying(tmp_path: Path) -> None:
    keys = KeyFile.create(tmp_path / "keys.json")
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    old = sign_body(keys, {"v": 1, "n": 1})
    new_kid = keys.rotate("signing")
    rotated = KeyFile(tmp_path / "keys.json")
    assert rotated.signing_kid == new_kid != old["body"]["kid"]
    assert verify_envelope(old, rotated.public_keys()) == old["body"]["kid"]
    new = sign_body(rotated, {"v": 1, "n": 2})
    assert verify_envelope(new, rotated.public_keys()) == new_kid
    # An altered body, and a key nobody trusts, are named.
    with pytest.raises(SignatureError, match="does not match"):
        verify_envelope({**new, "body": {**new["body"], "n": 3}}, rotated.public_keys())
    with pytest.raises(SignatureError, match="not among the trusted keys"):
        verify_envelope(new, {})


def test_kek_rotation_keeps_unwrapping_what_the_old_kek_wrapped(tmp_path: Path) -> None:
    keys = KeyFile.create(tmp_path / "keys.json")
    kek, blob = keys.wrap(b"k" * 32, b"tenant-a")
    keys.rotate("kek")
    rotated = KeyFile(tmp_path / "keys.json")
    assert rotated.kek_id != kek
    assert rotated.unwrap(kek, blob, b"tenant-a") == b"k" * 32
    with pytest.raises(IntegrityError):
        rotated.unwrap(kek, blob, b"tenant-b")  # another tenant's associated data


def test_a_sealed_payload_opens_only_in_its_own_chunk() -> None:
    dek = os.urandom(32)
    blob = seal(dek, "acme", "s1", 3, b"\x00\xffterminal bytes")
    assert unseal(dek, "acme", "s1", 3, blob) == b"\x00\xffterminal bytes"
    for tenant, sid, seq in (("globex", "s1", 3), ("acme", "s2", 3), ("acme", "s1", 4)):
        with pytest.raises(IntegrityError, match="does not open"):
            unseal(dek, tenant, sid, seq, blob)


def _checkpoints(
    keys: KeyFile, tenant: str, batches: list[list[tuple[object, ...]]]
) -> list[CheckpointRecord]:
    out: list[CheckpointRecord] = []
    prev = GENESIS
    for n, entries in enumerate(batches, 1):
        leaves = [leaf_hash(leaf_bytes(tenant, e)) for e in entries]
        env = sign_body(
            keys,
            {
                "v": 1,
                "tenant": tenant,
                "n": n,
                "prev": prev,
                "root": merkle_root(leaves).hex(),
                "size": len(entries),
                "at": f"2026-12-0{n}T00:00:00+00:00",
            },
        )
        out.append(CheckpointRecord(tenant, n, env, list(entries)))
        prev = envelope_sha256(env)
    return out


def test_check_checkpoints_names_a_gap_a_broken_chain_and_a_newest_one_deleted(
    tmp_path: Path,
) -> None:
    keys = KeyFile.create(tmp_path / "keys.json")
    cps = _checkpoints(
        keys,
        "t",
        [[("chunk", "a", 0, "h0")], [("chunk", "a", 1, "h1")], [("event", "u", 1, "", "x")]],
    )
    pub = keys.public_keys()
    assert check_checkpoints(cps, pub) == []
    gap = check_checkpoints([cps[0], cps[2]], pub)
    assert [f.message for f in gap] == ["checkpoints 2 are missing"]
    copies = {cp.n: cp.envelope for cp in cps}
    newest_gone = check_checkpoints(cps[:2], pub, external=copies)
    assert [f.message for f in newest_gone] == [
        "checkpoints 3 are in the outside copy but not in the database"
    ]
    forged = CheckpointRecord("t", 2, cps[1].envelope, [("chunk", "a", 1, "other")])
    assert "do not give its signed root" in check_checkpoints([cps[0], forged], pub)[0].message


def test_compare_tells_policy_deletions_from_tampering_and_latest_versions_win() -> None:
    expected = Expected()
    for e, n in (
        (("chunk", "s1", 0, "h0"), 1),
        (("chunk", "s1", 1, "h1"), 1),
        (("event", "u1", 10, "s1", "old"), 1),
        (("event", "u1", 10, "s1", "merged"), 2),  # a kube.request merged later
        (("event", "u2", 20, "s2", "x"), 2),
        (("event", "u3", 30, "s3", "y"), 2),
    ):
        expected.add(e, n)
    view = StoreView(
        chunks={("s1", 0): "h0", ("s1", 1): "h1", ("s9", 0): "f"},
        sessions={"s1", "s9"},
        events={("u1", 10): ("merged", "kube.request", "s1")},
        manifests={},
        tombstones={},
    )
    tombs = Tombstones.from_bodies(
        [
            {
                "what": "events",
                "before_us": 25,
                "except_sids": [],
                "reason": "retention",
                "actor": "dpo",
            }
        ]
    )
    found = {(f.kind, f.ref) for f in compare(expected, view, pending=[], tombstones=tombs)}
    assert found == {("policy", "u2"), ("deleted", "u3"), ("added", "s9")}
    # A pending ledger entry is not "added".
    quiet = compare(expected, view, pending=[("chunk", "s9", 0, "f")], tombstones=tombs)
    assert ("added", "s9") not in {(f.kind, f.ref) for f in quiet}
