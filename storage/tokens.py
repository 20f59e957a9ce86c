"""API tokens: created once, stored as SHA-256, resolved to a :class:`Principal`.

Invariants:

* The token text is returned once by :func:`create_token` and never stored; the table holds
  its SHA-256 (tokens are 256 random bits, so a plain hash is enough: there is nothing to
  brute-force as there would be with a password).
* A principal is bound to exactly one tenant; every read and write done for it names that
  tenant. A non-empty ``clusters`` restricts it to those Kubernetes clusters.
* What a principal may see is decided by one rule, :meth:`Principal.may_see` (a record of
  its tenant whose Kubernetes cluster it is bound to, when bound; an SSH session or event
  names no Kubernetes cluster, so a cluster-bound token sees none). Queries apply the same
  rule as a filter (:meth:`Principal.cluster_scope`); every API route uses one or the other.
* A revoked token, or one past its ``expires_at``, resolves to no principal.
* A share link's token (``svs_``) resolves to a principal with the one scope ``share`` and
  ``only_sid`` set: :meth:`Principal.may_see` admits that one session of its tenant and
  nothing else, and no route that lists or searches accepts the ``share`` scope.
* asyncpg exceptions never leave this module (translated by :func:`storage.pg.translate`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from sessionvault.errors import ValidationError
from sessionvault.names import TENANT_RULE, is_tenant_name
from storage.pg import translate

__all__ = [
    "SCOPES",
    "SHARE_PREFIX",
    "SHARE_SCOPE",
    "TOKEN_PREFIX",
    "Principal",
    "create_share",
    "create_token",
    "hash_token",
    "lookup_token",
    "revoke_token",
    "token_description",
]

Executor: TypeAlias = Any  # asyncpg Pool or Connection

TOKEN_PREFIX = "svt_"
SHARE_PREFIX = "svs_"
SCOPES = frozenset({"webhook", "read", "import"})
#: The scope of a share link's principal (never given to an API token).
SHARE_SCOPE = "share"
_CLUSTER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: one tenant, optionally limited to some clusters, some scopes."""

    token_id: str
    tenant: str
    clusters: frozenset[str]
    scopes: frozenset[str]
    expires_at: datetime | None = None
    only_sid: str | None = None  # a share link: this one session, nothing else
    share_at_ms: int = 0  # a share link: the moment it opens at
    user: str = ""  # who the token acts as towards leaf clusters (docs/federation.md)
    roles: frozenset[str] = frozenset()

    @property
    def display_user(self) -> str:
        """The user a leaf sees and audits: the token's user, else ``token:<id>``."""
        return self.user or f"token:{self.token_id}"

    def allows_cluster(self, cluster: str) -> bool:
        """True when the token is not restricted to clusters, or ``cluster`` is one of them."""
        return not self.clusters or cluster in self.clusters

    def may_see(self, tenant: str, kubernetes_cluster: str | None, sid: str | None = None) -> bool:
        """THE read rule: a record (session, event, text, alert) of ``tenant`` whose
        Kubernetes cluster is ``kubernetes_cluster`` ('' or None: not a Kubernetes record)
        is visible to this principal only in its own tenant and, when the token is bound to
        clusters, only in one of them; a share link's principal sees only its session
        (``sid``: the record's session, None when it is in none)."""
        if self.only_sid is not None and sid != self.only_sid:
            return False
        return tenant == self.tenant and self.allows_cluster(kubernetes_cluster or "")

    def cluster_scope(self) -> tuple[str, ...] | None:
        """:meth:`may_see`'s cluster half as a query filter: None (every record of the
        tenant) or the only Kubernetes clusters whose records a query may return."""
        return tuple(sorted(self.clusters)) if self.clusters else None


_IDENTITY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,127}")


def check_identity_name(what: str, name: str) -> str:
    """``name`` when it is a usable user or role name (what a leaf's mapping matches on);
    :class:`ValidationError` otherwise."""
    if not _IDENTITY_RE.fullmatch(name):
        raise ValidationError("wrong_type", f"{what} {name!r}: use [A-Za-z0-9_.@:+-], 1-128")
    return name


def hash_token(token: str) -> bytes:
    """The SHA-256 stored for ``token``."""
    return hashlib.sha256(token.encode()).digest()


def check_cluster_name(name: str) -> str:
    """``name`` when it is a usable cluster name; :class:`ValidationError` otherwise."""
    if not _CLUSTER_RE.fullmatch(name):
        raise ValidationError("wrong_type", f"cluster name {name!r}: use [A-Za-z0-9_.:-], 1-253")
    return name


async def create_token(
    db: Executor,
    tenant: str,
    *,
    scopes: Iterable[str],
    clusters: Iterable[str] = (),
    description: str = "",
    expires_at: datetime | None = None,
    user: str = "",
    roles: Iterable[str] = (),
) -> tuple[str, Principal]:
    """Store a new token; return ``(token text, principal)``. The text is not kept anywhere.
    ``expires_at`` (aware): the token authenticates nothing from then on. ``user`` and
    ``roles``: who the token acts as when it reads leaf clusters through this root."""
    if not is_tenant_name(tenant):
        raise ValidationError("wrong_type", f"tenant {tenant!r}: use {TENANT_RULE}")
    scope_set = frozenset(scopes)
    unknown = scope_set - SCOPES
    if not scope_set or unknown:
        raise ValidationError(
            "wrong_type",
            f"scopes must be a non-empty subset of {sorted(SCOPES)}, got {sorted(scope_set)}",
        )
    cluster_set = frozenset(check_cluster_name(c) for c in clusters)
    if expires_at is not None and expires_at.tzinfo is None:
        raise ValidationError("wrong_type", "expires_at must carry a UTC offset")
    role_set = frozenset(check_identity_name("role", r) for r in roles)
    if user:
        check_identity_name("user", user)
    token_id = secrets.token_hex(6)
    token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    try:
        await db.execute(
            "INSERT INTO api_tokens (id, token_sha256, tenant, clusters, scopes, description,"
            " expires_at, user_name, roles) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            token_id,
            hash_token(token),
            tenant,
            sorted(cluster_set),
            sorted(scope_set),
            description,
            expires_at,
            user,
            sorted(role_set),
        )
    except Exception as exc:
        raise translate(exc, "cannot store API token") from exc
    principal = Principal(
        token_id, tenant, cluster_set, scope_set, expires_at, user=user, roles=role_set
    )
    return token, principal


async def lookup_token(db: Executor, token: str) -> Principal | None:
    """The principal of a live token (not revoked, not expired by PostgreSQL's clock), or
    None."""
    if len(token) > 200:
        return None
    if token.startswith(SHARE_PREFIX):
        return await _lookup_share(db, token)
    if not token.startswith(TOKEN_PREFIX):
        return None
    digest = hash_token(token)
    try:
        row = await db.fetchrow(
            "SELECT id, token_sha256, tenant, clusters, scopes, expires_at, user_name, roles"
            " FROM api_tokens"
            " WHERE token_sha256 = $1 AND revoked_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > now())",
            digest,
        )
    except Exception as exc:
        raise translate(exc, "cannot look up API token") from exc
    # The index lookup already matched; the constant-time compare is belt and braces.
    if row is None or not hmac.compare_digest(bytes(row["token_sha256"]), digest):
        return None
    return Principal(
        row["id"],
        row["tenant"],
        frozenset(row["clusters"]),
        frozenset(row["scopes"]),
        row["expires_at"],
        user=row["user_name"],
        roles=frozenset(row["roles"]),
    )


async def create_share(
    db: Executor,
    creator: Principal,
    sid: str,
    *,
    expires_at: datetime,
    at_ms: int = 0,
) -> tuple[str, str]:
    """A share link token for session ``sid`` of ``creator``'s tenant (the caller checked that
    ``creator`` may see it); returns ``(token text, link id)``. The text is not kept."""
    if creator.only_sid is not None:
        raise ValidationError("wrong_type", "a share link cannot make share links")
    link_id = secrets.token_hex(6)
    token = f"{SHARE_PREFIX}{link_id}_{secrets.token_urlsafe(32)}"
    try:
        await db.execute(
            "INSERT INTO share_links (id, token_sha256, tenant, sid, at_ms, created_by,"
            " expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            link_id,
            hash_token(token),
            creator.tenant,
            sid,
            at_ms,
            creator.token_id,
            expires_at,
        )
    except Exception as exc:
        raise translate(exc, "cannot store share link") from exc
    return token, link_id


async def _lookup_share(db: Executor, token: str) -> Principal | None:
    digest = hash_token(token)
    try:
        row = await db.fetchrow(
            "SELECT id, token_sha256, tenant, sid, at_ms, expires_at FROM share_links"
            " WHERE token_sha256 = $1 AND revoked_at IS NULL AND expires_at > now()",
            digest,
        )
    except Exception as exc:
        raise translate(exc, "cannot look up share link") from exc
    if row is None or not hmac.compare_digest(bytes(row["token_sha256"]), digest):
        return None
    return Principal(
        f"share:{row['id']}",
        row["tenant"],
        frozenset(),
        frozenset({SHARE_SCOPE}),
        row["expires_at"],
        only_sid=row["sid"],
        share_at_ms=int(row["at_ms"]),
    )


async def revoke_token(db: Executor, tenant: str, token_id: str) -> bool:
    """Revoke a token of ``tenant`` by its id; True when one was revoked."""
    try:
        status = await db.execute(
            "UPDATE api_tokens SET revoked_at = now()"
            " WHERE id = $1 AND tenant = $2 AND revoked_at IS NULL",
            token_id,
            tenant,
        )
    except Exception as exc:
        raise translate(exc, "cannot revoke API token") from exc
    return bool(str(status).endswith(" 1"))


async def token_description(db: Executor, tenant: str, token_id: str) -> str:
    """The operator's note on token ``token_id`` of ``tenant`` ('' when none or unknown)."""
    try:
        value = await db.fetchval(
            "SELECT description FROM api_tokens WHERE id = $1 AND tenant = $2", token_id, tenant
        )
    except Exception as exc:
        raise translate(exc, "cannot read API token") from exc
    return str(value or "")
