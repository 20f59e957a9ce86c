"""Merging leaves' answers (pure): the order, the keyset cursor and the per-leaf status of a
federated page (docs/federation.md).

Invariants:

* A federated page is in the single-installation order (newest first by the route's keyset
  key), ties between leaves broken by leaf name, so the order is total and stable.
* The cursor is keyset per leaf: for each leaf, the key of the last item of that leaf the client
  has (or none yet, or the end). The next page asks every leaf for ``limit`` items after its own
  position and keeps the first ``limit`` of the union, so paging never skips or repeats an item
  of a leaf that answered. A leaf that did not answer keeps its position: the same cursor, asked
  again once the leaf is back, gives the complete page.
* A cursor carries a fingerprint of the question (route, filters, leaves, asker) and is refused
  with any other question.
* Every answer lists each leaf asked with its status; ``partial`` is true when any leaf could not
  answer (down, slow, failed), never silently. A leaf whose mapping gives the asker nothing
  (``no_access``) answered: its part is complete and empty.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from sessionvault.errors import ValidationError

__all__ = [
    "ANSWERED",
    "END",
    "LeafAnswer",
    "Merged",
    "decode_cursor",
    "encode_cursor",
    "fingerprint",
    "merge_page",
]

#: A leaf's position after its last item.
END = "end"
#: Leaf states that are complete answers.
ANSWERED = frozenset({"ok", "no_access"})
_VERSION = 1

Position = list[Any] | str | None  # the last key seen, END, or None (from the start)
Key = tuple[Any, ...]


@dataclass(frozen=True)
class LeafAnswer:
    """What one leaf said for one page."""

    leaf: str
    state: str  # ok, no_access, down, timeout, error
    items: Sequence[dict[str, Any]] = ()
    more: bool = False  # the leaf has items after its last one here
    message: str = ""


@dataclass(frozen=True)
class Merged:
    items: list[dict[str, Any]]
    positions: dict[str, Position]
    leaves: list[dict[str, Any]] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return any(entry["status"] not in ANSWERED for entry in self.leaves)


def fingerprint(
    route: str, params: Sequence[tuple[str, str]], leaves: Sequence[str], asker: str
) -> str:
    """A digest of the question (everything but the cursor and the page size)."""
    kept = sorted((k, v) for k, v in params if k not in ("cursor", "limit", "leaf"))
    raw = orjson.dumps([route, kept, sorted(leaves), asker])
    return hashlib.sha256(raw).hexdigest()[:24]


def encode_cursor(positions: dict[str, Position], fp: str) -> str:
    raw = orjson.dumps([_VERSION, fp, positions], option=orjson.OPT_SORT_KEYS)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, fp: str) -> dict[str, Position]:
    """The per-leaf positions of a cursor made for this same question."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, got_fp, positions = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValidationError("bad_cursor", "cursor: malformed") from exc
    if version != _VERSION or not isinstance(positions, dict):
        raise ValidationError("bad_cursor", "cursor: malformed")
    if got_fp != fp:
        raise ValidationError("bad_cursor", "cursor: it belongs to a different question")
    return positions


def merge_page(
    answers: Sequence[LeafAnswer],
    positions: dict[str, Position],
    *,
    key: Callable[[dict[str, Any]], Key],
    limit: int,
) -> Merged:
    """One federated page from each leaf's answer (``limit`` items after its position).

    ``key`` gives an item's keyset key (as the leaf's own order sorts it, descending); the
    returned positions are what the next page's cursor carries."""
    pool: list[tuple[Key, str, dict[str, Any]]] = []
    for answer in answers:
        if answer.state == "ok":
            pool.extend((key(item), answer.leaf, item) for item in answer.items)
    # Descending by key, then by leaf name descending: a total order.
    pool.sort(key=lambda t: (t[0], t[1]), reverse=True)
    taken = pool[:limit]
    new_positions: dict[str, Position] = dict(positions)
    counts: dict[str, int] = {}
    for item_key, leaf, _item in taken:
        new_positions[leaf] = list(item_key)
        counts[leaf] = counts.get(leaf, 0) + 1
    leaves = []
    for answer in answers:
        got = counts.get(answer.leaf, 0)
        finished = answer.state == "ok" and not answer.more and got == len(answer.items)
        if finished or answer.state == "no_access":
            new_positions[answer.leaf] = END
        entry: dict[str, Any] = {"name": answer.leaf, "status": answer.state, "items": got}
        if answer.message:
            entry["message"] = answer.message
        leaves.append(entry)
    items = []
    for _k, leaf, item in taken:
        items.append({**item, "leaf": leaf})
    return Merged(items, new_positions, leaves)


def next_cursor(merged: Merged, fp: str) -> str | None:
    """The next page's cursor; None when no leaf that answered has more (a leaf that did not
    answer is named in the page, which the client asks again for it)."""
    answered_open = [
        leaf
        for leaf in merged.positions
        if merged.positions[leaf] != END
        and any(e["name"] == leaf and e["status"] in ANSWERED for e in merged.leaves)
    ]
    if not answered_open:
        return None
    return encode_cursor(merged.positions, fp)
