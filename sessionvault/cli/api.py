"""API commands: ``serve`` (the HTTP API under uvicorn) and ``token create`` / ``token revoke``."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from sessionvault.cli.common import get_settings, postgres_dsn, run_with_pool
from sessionvault.settings import require
from storage.tokens import SCOPES


def register(main: click.Group) -> None:
    """Add the API commands to the ``sessionvault`` group."""

    @main.command("serve")
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
    @click.option(
        "--port", default=8470, show_default=True, type=int, help="TCP port (0: any free one)."
    )
    @click.pass_context
    def serve_cmd(ctx: click.Context, host: str, port: int) -> None:
        """Run the HTTP API (audit webhook, search, kube timeline, export) and the web console."""
        import socket

        import uvicorn

        from api.app import create_app
        from sessionvault.errors import ConfigError

        settings = get_settings(ctx)
        app = create_app(settings)
        # Bind first: a port in use is reported as the error it is, and the URL announced is
        # the one actually listening (with --port 0, the port the kernel chose).
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        click.echo(f"sessionvault API on http://{shown}:{bound}", err=True)
        click.echo(f"web console on http://{shown}:{bound}/ui/", err=True)
        config = uvicorn.Config(app, log_level=settings.log_level.lower())
        uvicorn.Server(config).run(sockets=[sock])

    @main.group("token")
    def token_group() -> None:
        """API tokens (bound to a tenant, optionally to Kubernetes clusters)."""

    @token_group.command("create")
    @click.option("--tenant", required=True, help="The only tenant the token can act in.")
    @click.option(
        "--cluster",
        "clusters",
        multiple=True,
        help="Restrict the token to this Kubernetes cluster (repeatable; default: all).",
    )
    @click.option(
        "--scope",
        "scopes",
        multiple=True,
        type=click.Choice(sorted(SCOPES)),
        help="What the token may do (repeatable; default: webhook and read).",
    )
    @click.option("--description", default="", help="A note for operators.")
    @click.option(
        "--user",
        default="",
        help="On a root: the user this token reads leaf clusters as (leaves map it to tenants).",
    )
    @click.option(
        "--role", "roles", multiple=True, help="On a root: a role of that user (repeatable)."
    )
    @click.option(
        "--expires-in", default=None, help="Expire after this span: 12h, 30d, 2w (default: never)."
    )
    @click.option("--expires-at", default=None, help="Expire at this RFC 3339 time.")
    @click.pass_context
    def token_create(
        ctx: click.Context,
        tenant: str,
        clusters: tuple[str, ...],
        scopes: tuple[str, ...],
        description: str,
        user: str,
        roles: tuple[str, ...],
        expires_in: str | None,
        expires_at: str | None,
    ) -> None:
        """Create a token and print it once (only its SHA-256 is stored)."""
        from sessionvault.timespec import expiry
        from storage import pg
        from storage.tokens import create_token

        settings = get_settings(ctx)
        expires = expiry(expires_in, expires_at)

        async def work(pool: Any) -> str:
            await pg.migrate(postgres_dsn(settings))
            token, principal = await create_token(
                pool,
                tenant,
                scopes=scopes or ("webhook", "read"),
                clusters=clusters,
                description=description,
                expires_at=expires,
                user=user,
                roles=roles,
            )
            click.echo(
                f"token id {principal.token_id}, tenant {tenant}, scopes "
                f"{','.join(sorted(principal.scopes))}, clusters "
                f"{','.join(sorted(principal.clusters)) or '(all)'}, expires "
                f"{expires.isoformat() if expires else 'never'}; shown once:",
                err=True,
            )
            return token

        click.echo(run_with_pool(settings, work))

    @token_group.command("revoke")
    @click.option("--tenant", required=True)
    @click.argument("token_id")
    @click.pass_context
    def token_revoke(ctx: click.Context, tenant: str, token_id: str) -> None:
        """Revoke a token by its id (the ``svt_<id>_`` part)."""
        from sessionvault.errors import NotFoundError
        from storage import pg
        from storage.tokens import revoke_token

        settings = get_settings(ctx)
        require(settings, "postgres_dsn")

        async def work() -> bool:
            conn = await pg.connect(settings.postgres_dsn.get())
            try:
                return await revoke_token(conn, tenant, token_id)
            finally:
                await conn.close()

        if not asyncio.run(work()):
            raise NotFoundError(f"no live token {token_id!r} in tenant {tenant!r}")
        click.echo(f"revoked {token_id}", err=True)
