"""Bearer-token authentication: ``Depends(require_token(scope))`` -> :class:`Principal`.

Every route that reads or writes tenant data takes its tenant from the principal, never from
the request: a token only ever acts within its own tenant (and, when bound to clusters, within
those clusters).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request, status

from storage.tokens import SCOPES, Principal, lookup_token

__all__ = ["Principal", "bearer_token", "require_token"]


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


def require_token(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency admitting tokens that carry ``scope``; 401 without a valid token,
    403 when the token lacks the scope."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def dependency(request: Request) -> Principal:
        token = bearer_token(request)
        if token is None:
            raise _unauthorized()
        principal = await lookup_token(request.app.state.pool, token)
        if principal is None:
            raise _unauthorized()
        if scope not in principal.scopes:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"token lacks the {scope!r} scope")
        return principal

    return dependency
