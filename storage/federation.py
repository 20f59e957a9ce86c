"""Trusted clusters' tables (docs/federation.md): the root's join tokens, leaves, certificates
and its own query audit; a leaf's identity mappings. Nothing here holds a record of another
installation.

Invariants:

* A join token is stored as its SHA-256, is for one leaf name, and is used at most once,
  before its ``expires_at`` by PostgreSQL's clock (:func:`consume_join_token` locks the row).
* A leaf certificate is accepted while its serial is in ``federation_leaf_certs``, unexpired
  and unrevoked, for a leaf not removed (:func:`cert_accepted`); :func:`supersede_certs`
  revokes a leaf's other certificates once it connects with a newer one.
* The mapping rule is :func:`choose_mapping` (pure): rules in id order, the first whose root,
  user and role match wins; no rule, no access.
* asyncpg exceptions never leave this module (translated by :func:`storage.pg.translate`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson

from sessionvault.errors import NotFoundError, ValidationError
from sessionvault.names import TENANT_RULE, is_tenant_name
from storage.pg import translate
from storage.tokens import check_cluster_name, check_identity_name, hash_token

__all__ = [
    "LeafRow",
    "MappingRule",
    "add_leaf_cert",
    "add_mapping",
    "cert_accepted",
    "choose_mapping",
    "consume_join_token",
    "create_join_token",
    "leaf_rows",
    "list_mappings",
    "record_query",
    "remove_mapping",
    "supersede_certs",
    "touch_leaf",
]

Executor: TypeAlias = Any  # asyncpg Pool or Connection


@dataclass(frozen=True, slots=True)
class MappingRule:
    """A leaf's rule: root identities it matches -> the tenant (and clusters) they read."""

    id: int
    root: str  # a root name or "*"
    user: str  # a root user or "*"
    role: str  # a role the user must hold, "" for any
    tenant: str
    clusters: tuple[str, ...]

    def matches(self, root: str, user: str, roles: Iterable[str]) -> bool:
        """Whether this rule admits ``user`` with ``roles`` of root ``root``."""
        return (
            self.root in ("*", root)
            and self.user in ("*", user)
            and (not self.role or self.role in set(roles))
        )


def choose_mapping(
    rules: Sequence[MappingRule], root: str, user: str, roles: Iterable[str]
) -> MappingRule | None:
    """THE leaf's access rule: the first rule (by id) matching the root identity, or None (the
    root user sees nothing of this leaf)."""
    wanted = tuple(roles)
    for rule in sorted(rules, key=lambda r: r.id):
        if rule.matches(root, user, wanted):
            return rule
    return None


@dataclass(frozen=True, slots=True)
class LeafRow:
    """A leaf as the root knows it (no data of the leaf, only that it exists)."""

    name: str
    joined_at: dt.datetime
    last_seen_at: dt.datetime | None
    cert_not_after: dt.datetime | None


# -- root: join tokens, leaves, certificates ---------------------------------------------------


async def create_join_token(db: Executor, token: str, leaf: str, expires_at: dt.datetime) -> None:
    """Store join token ``token`` (its SHA-256 only) for leaf ``leaf``."""
    check_cluster_name(leaf)
    try:
        await db.execute(
            "INSERT INTO federation_join_tokens (token_sha256, leaf, expires_at)"
            " VALUES ($1, $2, $3)",
            hash_token(token),
            leaf,
            expires_at,
        )
    except Exception as exc:
        raise translate(exc, "cannot store join token") from exc


async def consume_join_token(conn: Executor, token: str) -> str:
    """Use join token ``token`` (in the caller's transaction); returns its leaf name.
    :class:`ValidationError` names why a token is refused: unknown, used or expired."""
    try:
        row = await conn.fetchrow(
            "SELECT leaf, expires_at <= now() AS expired, used_at FROM federation_join_tokens"
            " WHERE token_sha256 = $1 FOR UPDATE",
            hash_token(token),
        )
        if row is None:
            raise ValidationError("join_refused", "join token unknown")
        if row["used_at"] is not None:
            raise ValidationError("join_refused", "join token already used")
        if row["expired"]:
            raise ValidationError("join_refused", "join token expired")
        await conn.execute(
            "UPDATE federation_join_tokens SET used_at = now() WHERE token_sha256 = $1",
            hash_token(token),
        )
        leaf = str(row["leaf"])
        await conn.execute(
            "INSERT INTO federation_leaves (name) VALUES ($1)"
            " ON CONFLICT (name) DO UPDATE SET removed_at = NULL",
            leaf,
        )
        return leaf
    except ValidationError:
        raise
    except Exception as exc:
        raise translate(exc, "cannot use join token") from exc


async def add_leaf_cert(db: Executor, leaf: str, serial: str, not_after: dt.datetime) -> None:
    """Record a certificate issued to ``leaf``."""
    try:
        await db.execute(
            "INSERT INTO federation_leaf_certs (serial, leaf, not_after) VALUES ($1, $2, $3)",
            serial,
            leaf,
            not_after,
        )
    except Exception as exc:
        raise translate(exc, "cannot record leaf certificate") from exc


async def cert_accepted(db: Executor, leaf: str, serial: str) -> str | None:
    """None when ``leaf``'s certificate ``serial`` may open a tunnel; else why not."""
    try:
        row = await db.fetchrow(
            "SELECT c.revoked_at, c.not_after <= now() AS expired, l.removed_at"
            " FROM federation_leaf_certs c JOIN federation_leaves l ON l.name = c.leaf"
            " WHERE c.serial = $1 AND c.leaf = $2",
            serial,
            leaf,
        )
    except Exception as exc:
        raise translate(exc, "cannot check leaf certificate") from exc
    if row is None:
        return f"certificate {serial} was not issued to leaf {leaf!r}"
    if row["removed_at"] is not None:
        return f"leaf {leaf!r} was removed"
    if row["revoked_at"] is not None:
        return f"certificate {serial} of leaf {leaf!r} is revoked (superseded)"
    if row["expired"]:
        return f"certificate {serial} of leaf {leaf!r} expired"
    return None


async def supersede_certs(db: Executor, leaf: str, serial: str) -> int:
    """Revoke every certificate of ``leaf`` issued before ``serial`` (the one it now uses)."""
    try:
        status = await db.execute(
            "UPDATE federation_leaf_certs SET revoked_at = now()"
            " WHERE leaf = $1 AND serial <> $2 AND revoked_at IS NULL AND issued_at <="
            " (SELECT issued_at FROM federation_leaf_certs WHERE serial = $2)",
            leaf,
            serial,
        )
    except Exception as exc:
        raise translate(exc, "cannot revoke superseded certificates") from exc
    return int(str(status).rsplit(" ", 1)[-1] or 0)


async def touch_leaf(db: Executor, leaf: str) -> None:
    """Note that ``leaf`` was just seen on its tunnel."""
    try:
        await db.execute("UPDATE federation_leaves SET last_seen_at = now() WHERE name = $1", leaf)
    except Exception as exc:
        raise translate(exc, "cannot update leaf") from exc


async def leaf_rows(db: Executor) -> list[LeafRow]:
    """Every leaf that joined and was not removed, by name."""
    try:
        rows = await db.fetch(
            "SELECT l.name, l.joined_at, l.last_seen_at,"
            " (SELECT max(not_after) FROM federation_leaf_certs c"
            "   WHERE c.leaf = l.name AND c.revoked_at IS NULL) AS not_after"
            " FROM federation_leaves l WHERE l.removed_at IS NULL ORDER BY l.name"
        )
    except Exception as exc:
        raise translate(exc, "cannot list leaves") from exc
    return [LeafRow(r["name"], r["joined_at"], r["last_seen_at"], r["not_after"]) for r in rows]


async def record_query(
    db: Executor,
    *,
    token_id: str,
    user: str,
    roles: Iterable[str],
    route: str,
    leaves: Iterable[str],
    params: list[list[str]],
) -> None:
    """The root's own audit line: who asked which leaves what (never what they answered)."""
    try:
        await db.execute(
            "INSERT INTO federation_queries (token_id, user_name, roles, route, leaves, params)"
            " VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
            token_id,
            user,
            sorted(roles),
            route,
            list(leaves),
            orjson.dumps(params).decode(),
        )
    except Exception as exc:
        raise translate(exc, "cannot record federated query") from exc


# -- leaf: mappings -----------------------------------------------------------------------------


async def add_mapping(
    db: Executor,
    *,
    root: str,
    user: str,
    role: str,
    tenant: str,
    clusters: Iterable[str] = (),
) -> MappingRule:
    """Add a rule mapping root identities to ``tenant`` (and clusters) of this leaf."""
    if root != "*":
        check_cluster_name(root)
    if user != "*":
        check_identity_name("user", user)
    if role:
        check_identity_name("role", role)
    if not is_tenant_name(tenant):
        raise ValidationError("wrong_type", f"tenant {tenant!r}: use {TENANT_RULE}")
    cluster_list = sorted({check_cluster_name(c) for c in clusters})
    try:
        new_id = await db.fetchval(
            "INSERT INTO federation_mappings (root, user_name, role, tenant, clusters)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id",
            root,
            user,
            role,
            tenant,
            cluster_list,
        )
    except Exception as exc:
        raise translate(exc, "cannot store mapping") from exc
    return MappingRule(int(new_id), root, user, role, tenant, tuple(cluster_list))


async def list_mappings(db: Executor) -> list[MappingRule]:
    """Every mapping rule, in the order :func:`choose_mapping` tries them."""
    try:
        rows = await db.fetch(
            "SELECT id, root, user_name, role, tenant, clusters FROM federation_mappings"
            " ORDER BY id"
        )
    except Exception as exc:
        raise translate(exc, "cannot read mappings") from exc
    return [
        MappingRule(
            int(r["id"]), r["root"], r["user_name"], r["role"], r["tenant"], tuple(r["clusters"])
        )
        for r in rows
    ]


async def remove_mapping(db: Executor, rule_id: int) -> None:
    """Delete mapping rule ``rule_id`` (:class:`NotFoundError` when there is none)."""
    try:
        status = await db.execute("DELETE FROM federation_mappings WHERE id = $1", rule_id)
    except Exception as exc:
        raise translate(exc, "cannot delete mapping") from exc
    if not str(status).endswith(" 1"):
        raise NotFoundError(f"no mapping {rule_id}")
