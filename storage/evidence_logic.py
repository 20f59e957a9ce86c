"""What ``sessionvault verify --since`` concludes (pure decisions beside storage/evidence_store).

The inputs are the signed checkpoints (what was stored when), the signed tombstones (what
policy deleted), the ledger entries still pending, and a :class:`StoreView` of what the store
holds now. Every difference becomes a :class:`Finding` that names the record:

* ``deleted``: a checkpointed record is gone and no tombstone explains it (including the
  newest chunks of a session and whole sessions);
* ``altered``: a record is there with another hash than the one signed;
* ``added``: the store holds a record that no checkpoint and no pending ledger entry knows
  (it was written outside the pipeline);
* ``policy``: a checkpointed record is gone and a valid tombstone says who deleted it and why
  (retention, legal-hold release, erasure); reported, not a fault;
* ``checkpoint``: the checkpoints themselves are not intact (a signature, the chain, a root,
  a number missing, or a copy outside the database that differs).

Invariant: a finding is a fault unless its kind is ``policy`` (:attr:`Finding.fault`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.evidence import (
    Entry,
    SignatureError,
    envelope_sha256,
    leaf_bytes,
    leaf_hash,
    merkle_root,
    verify_envelope,
)
from storage.evidence_store import GENESIS, SELF_SIGNED_EVENTS, CheckpointRecord, StoreView

FAULTS = ("deleted", "altered", "added", "checkpoint")


@dataclass(frozen=True, order=True)
class Finding:
    """One difference between the checkpoints and the store."""

    kind: str
    ref: str
    message: str

    @property
    def fault(self) -> bool:
        return self.kind in FAULTS


def check_checkpoints(
    checkpoints: Sequence[CheckpointRecord],
    public_keys: Mapping[str, bytes],
    *,
    external: Mapping[int, Mapping[str, Any]] | None = None,
) -> list[Finding]:
    """The checkpoints are intact: each signed by a trusted key, numbered 1.. without gaps,
    chained, its root over its leaves; and equal to the ``external`` copies (n -> envelope),
    which also reveal checkpoints deleted from the database."""
    out: list[Finding] = []
    prev_hash = GENESIS
    expected_n = 1
    for cp in checkpoints:
        ref = f"checkpoint {cp.n}"
        if cp.n != expected_n:
            missing = f"{expected_n}" if cp.n == expected_n + 1 else f"{expected_n}-{cp.n - 1}"
            out.append(Finding("checkpoint", ref, f"checkpoints {missing} are missing"))
            prev_hash = ""
        try:
            verify_envelope(cp.envelope, public_keys)
        except SignatureError as exc:
            out.append(Finding("checkpoint", ref, f"checkpoint {cp.n}: {exc}"))
        body = cp.body
        if prev_hash and body.get("prev") != prev_hash:
            out.append(
                Finding(
                    "checkpoint", ref, f"checkpoint {cp.n} does not chain to checkpoint {cp.n - 1}"
                )
            )
        root = merkle_root([leaf_hash(leaf_bytes(cp.tenant, e)) for e in cp.leaves]).hex()
        if root != body.get("root") or len(cp.leaves) != body.get("size"):
            out.append(
                Finding(
                    "checkpoint",
                    ref,
                    f"checkpoint {cp.n}: its stored leaves do not give its signed root"
                    " (the list of what it covers was altered)",
                )
            )
        copy = None if external is None else external.get(cp.n)
        if copy is not None and envelope_sha256(copy) != envelope_sha256(cp.envelope):
            out.append(
                Finding("checkpoint", ref, f"checkpoint {cp.n} differs from its outside copy")
            )
        prev_hash = envelope_sha256(cp.envelope)
        expected_n = cp.n + 1
    if external:
        stored = {cp.n for cp in checkpoints}
        gone = sorted(n for n in external if n not in stored)
        if gone:
            out.append(
                Finding(
                    "checkpoint",
                    f"checkpoint {gone[0]}",
                    f"checkpoints {_ranges(gone)} are in the outside copy but not in the database",
                )
            )
    return out


def _ranges(nums: Iterable[int]) -> str:
    """1,2,3,5 -> '1-3, 5'."""
    out: list[str] = []
    run: list[int] = []
    for n in sorted(nums):
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            out.append(f"{run[0]}" if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [n]
    if run:
        out.append(f"{run[0]}" if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ", ".join(out)


@dataclass
class Expected:
    """The latest signed state of every record (later checkpoints win), with the number of
    the checkpoint that signed it."""

    chunks: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    events: dict[tuple[str, int], tuple[str, str, int]] = field(default_factory=dict)
    manifests: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    tombstones: dict[str, tuple[str, int]] = field(default_factory=dict)

    @classmethod
    def from_checkpoints(cls, checkpoints: Iterable[CheckpointRecord]) -> Expected:
        ex = cls()
        for cp in checkpoints:
            for e in cp.leaves:
                ex.add(e, cp.n)
        return ex

    def add(self, e: Entry, n: int) -> None:
        kind = e[0]
        if kind == "chunk":
            self.chunks[(e[1], e[2])] = (e[3], n)
        elif kind == "event":
            self.events[(e[1], e[2])] = (e[4], e[3], n)
        elif kind == "manifest":
            self.manifests.setdefault(e[1], []).append((e[2], n))
        elif kind == "tombstone":
            self.tombstones[e[1]] = (e[2], n)


@dataclass(frozen=True)
class Tombstones:
    """What valid tombstones excuse."""

    sessions: dict[str, Mapping[str, Any]]  # sid -> tombstone body
    events: list[Mapping[str, Any]]  # bodies with before_us, except_sids

    @classmethod
    def from_bodies(cls, bodies: Iterable[Mapping[str, Any]]) -> Tombstones:
        sessions: dict[str, Mapping[str, Any]] = {}
        events: list[Mapping[str, Any]] = []
        for b in bodies:
            if b.get("what") == "session":
                sessions[str(b["sid"])] = b
            elif b.get("what") == "events":
                events.append(b)
        return cls(sessions, events)

    def event(self, time_us: int, sid: str) -> Mapping[str, Any] | None:
        for b in self.events:
            if time_us < int(b["before_us"]) and sid not in b.get("except_sids", []):
                return b
        if sid and sid in self.sessions:
            return self.sessions[sid]
        return None


def _why(b: Mapping[str, Any]) -> str:
    return f"{b.get('reason', '')} by {b.get('actor', '?')} at {b.get('at', '?')}"


def compare(
    expected: Expected,
    view: StoreView,
    *,
    pending: Iterable[Entry],
    tombstones: Tombstones,
    since_n: int = 1,
    since_us: int = 0,
) -> list[Finding]:
    """Every difference between what checkpoints ``since_n`` and later signed and ``view``
    (events only from ``since_us``); records the store holds that nobody signed or ledgered
    are reported whatever their age."""
    pend = Expected()
    for e in pending:
        pend.add(e, 0)
    out: list[Finding] = []
    out += _compare_chunks(expected, view, pend, tombstones, since_n)
    out += _compare_events(expected, view, pend, tombstones, since_n, since_us)
    for sid, signed in expected.manifests.items():
        for sha, n in signed:
            if n >= since_n and sha not in view.manifests.get(sid, []):
                tomb = tombstones.sessions.get(sid)
                if tomb is not None:
                    continue
                out.append(
                    Finding(
                        "deleted",
                        sid,
                        f"session {sid}: its signed manifest (checkpoint {n}) was deleted",
                    )
                )
    for tid, (sha, n) in expected.tombstones.items():
        if n < since_n:
            continue
        have = view.tombstones.get(tid)
        if have is None:
            out.append(Finding("deleted", tid, f"tombstone {tid} (checkpoint {n}) was deleted"))
        elif have != sha:
            out.append(Finding("altered", tid, f"tombstone {tid} was altered after checkpoint {n}"))
    for tid in view.tombstones:
        if tid not in expected.tombstones and tid not in pend.tombstones:
            out.append(Finding("added", tid, f"tombstone {tid} was added outside the pipeline"))
    return sorted(out)


def _compare_chunks(
    expected: Expected, view: StoreView, pend: Expected, tombstones: Tombstones, since_n: int
) -> list[Finding]:
    out: list[Finding] = []
    gone: dict[str, list[int]] = {}
    signed_seqs: dict[str, int] = {}
    n_of: dict[str, int] = {}
    for (sid, seq), (sha, n) in expected.chunks.items():
        signed_seqs[sid] = signed_seqs.get(sid, 0) + 1
        if n < since_n:
            continue
        have = view.chunks.get((sid, seq))
        if have is None:
            gone.setdefault(sid, []).append(seq)
            n_of[sid] = max(n_of.get(sid, 0), n)
        elif have != sha:
            out.append(
                Finding("altered", sid, f"session {sid}: chunk {seq} differs from checkpoint {n}")
            )
    for sid, seqs in gone.items():
        tomb = tombstones.sessions.get(sid)
        if tomb is not None:
            out.append(Finding("policy", sid, f"session {sid}: deleted ({_why(tomb)})"))
        elif sid not in view.sessions and len(seqs) == signed_seqs[sid]:
            out.append(
                Finding(
                    "deleted",
                    sid,
                    f"session {sid}: the whole session ({len(seqs)} chunks, up to checkpoint"
                    f" {n_of[sid]}) was deleted",
                )
            )
        else:
            newest = max(s for (x, s) in expected.chunks if x == sid)
            tail = " (its newest)" if max(seqs) == newest else ""
            out.append(
                Finding(
                    "deleted",
                    sid,
                    f"session {sid}: chunks {_ranges(seqs)}{tail} were deleted"
                    f" (signed by checkpoint {n_of[sid]})",
                )
            )
    added: dict[str, list[int]] = {}
    for sid, seq in view.chunks:
        if (sid, seq) not in expected.chunks and (sid, seq) not in pend.chunks:
            added.setdefault(sid, []).append(seq)
    known = {sid for sid, _ in expected.chunks} | {sid for sid, _ in pend.chunks}
    for sid, seqs in added.items():
        if sid in known:
            out.append(
                Finding(
                    "added",
                    sid,
                    f"session {sid}: chunks {_ranges(seqs)} were added outside the pipeline",
                )
            )
        else:
            out.append(
                Finding(
                    "added",
                    sid,
                    f"session {sid} ({len(seqs)} chunks) was added outside the pipeline:"
                    " no checkpoint or ledger entry knows it",
                )
            )
    for sid in view.sessions - known - set(added):
        out.append(
            Finding("added", sid, f"session {sid} (no chunks) was added outside the pipeline")
        )
    return out


def _compare_events(
    expected: Expected,
    view: StoreView,
    pend: Expected,
    tombstones: Tombstones,
    since_n: int,
    since_us: int,
) -> list[Finding]:
    out: list[Finding] = []
    for (uid, time_us), (sha, sid, n) in expected.events.items():
        if n < since_n or time_us < since_us:
            continue
        have = view.events.get((uid, time_us))
        if have is None:
            tomb = tombstones.event(time_us, sid)
            if tomb is not None:
                out.append(Finding("policy", uid, f"event {uid}: deleted ({_why(tomb)})"))
            else:
                out.append(
                    Finding(
                        "deleted",
                        uid,
                        f"event {uid} at {time_us} us (session {sid or '-'}) was deleted"
                        f" (signed by checkpoint {n})",
                    )
                )
        elif have[0] != sha:
            out.append(Finding("altered", uid, f"event {uid}: body differs from checkpoint {n}"))
    for key, (_, event, sid) in view.events.items():
        if key in expected.events or key in pend.events or event in SELF_SIGNED_EVENTS:
            continue
        out.append(
            Finding(
                "added",
                key[0],
                f"event {key[0]} ({event}, session {sid or '-'}) was added outside the pipeline",
            )
        )
    return out


__all__ = ["FAULTS", "Expected", "Finding", "Tombstones", "check_checkpoints", "compare"]
