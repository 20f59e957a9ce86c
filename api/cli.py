"""API commands: ``serve`` (the HTTP API under uvicorn) and ``token create`` / ``token revoke``."""

from __future__ import annotations

import asyncio

import click

from sessionvault.cli import get_settings
from sessionvault.settings import require
from storage.tokens import SCOPES


def register(main: click.Group) -> None:
    """Add the API commands to the ``sessionvault`` group."""

    @main.command("serve")
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
    @click.option("--port", default=8470, show_default=True, type=int, help="TCP port.")
    @click.pass_context
    def serve_cmd(ctx: click.Context, host: str, port: int) -> None:
        """Run the HTTP API (audit webhook, kube timeline, session export)."""
        import uvicorn

        from api.app import create_app

        settings = get_settings(ctx)
        app = create_app(settings)
        click.echo(f"sessionvault API on http://{host}:{port}", err=True)
        uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower())

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
    @click.pass_context
    def token_create(
        ctx: click.Context,
        tenant: str,
        clusters: tuple[str, ...],
        scopes: tuple[str, ...],
        description: str,
    ) -> None:
        """Create a token and print it once (only its SHA-256 is stored)."""
        from storage import pg
        from storage.tokens import create_token

        settings = get_settings(ctx)
        require(settings, "postgres_dsn")

        async def work() -> str:
            await pg.migrate(settings.postgres_dsn.get())
            conn = await pg.connect(settings.postgres_dsn.get())
            try:
                token, principal = await create_token(
                    conn,
                    tenant,
                    scopes=scopes or ("webhook", "read"),
                    clusters=clusters,
                    description=description,
                )
            finally:
                await conn.close()
            click.echo(
                f"token id {principal.token_id}, tenant {tenant}, scopes "
                f"{','.join(sorted(principal.scopes))}, clusters "
                f"{','.join(sorted(principal.clusters)) or '(all)'}; shown once:",
                err=True,
            )
            return token

        click.echo(asyncio.run(work()))

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
