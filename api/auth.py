"""Bearer-token authentication: ``Depends(require_token(scope))`` -> :class:`Principal`.

Every route that reads or writes tenant data takes its tenant from the principal, never from
the request: a token only ever acts within its own tenant (and, when bound to clusters, within
those clusters).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from storage.tokens import SCOPES, SHARE_SCOPE, Principal, lookup_token

__all__ = ["PRINCIPAL_SCOPE_KEY", "Principal", "bearer_token", "require_token"]

#: The ASGI scope key under which a leaf's tunnel agent hands a route the principal its own
#: mapping chose (api/federation/agent.py). Only an in-process caller can set a scope key:
#: uvicorn builds scopes from HTTP requests and never copies one in.
PRINCIPAL_SCOPE_KEY = "sessionvault.principal"


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _unauthorized() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "missing or invalid bearer token",
        headers={"WWW-Authenticate": "Bearer"},
    )


# Declared in the OpenAPI document (so /docs has an Authorize button); auto_error=False keeps
# the 401 answers and their wording ours.
_BEARER = HTTPBearer(
    scheme_name="token",
    description="An API token: `sessionvault token create --tenant T [--cluster C]"
    " [--scope read|webhook|import] [--expires-in 30d]` prints it once.",
    auto_error=False,
)


def require_token(
    *scopes: str,
) -> Callable[[Request, HTTPAuthorizationCredentials | None], Awaitable[Principal]]:
    """A FastAPI dependency admitting live tokens that carry one of ``scopes``; 401 without a
    valid token (missing, unknown, revoked or expired), 403 when the token carries none of
    them. What the principal may then read is decided by :meth:`Principal.may_see` alone.
    Only routes that read one session list ``share`` (a share link's scope)."""
    if not scopes or not set(scopes) <= SCOPES | {SHARE_SCOPE}:
        raise ValueError(f"unknown scopes {scopes!r}")
    wanted = frozenset(scopes)

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(_BEARER),  # noqa: B008
    ) -> Principal:
        principal: Principal | None = request.scope.get(PRINCIPAL_SCOPE_KEY)
        if principal is None:
            token = credentials.credentials.strip() if credentials else None
            if not token:
                raise _unauthorized()
            principal = await lookup_token(request.app.state.pool, token)
        if principal is None:
            raise _unauthorized()
        if not wanted & principal.scopes:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"token lacks the {' or '.join(scopes)} scope"
            )
        return principal

    return dependency
