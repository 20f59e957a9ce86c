"""``sessionvault token create`` and ``token revoke`` against the real database: the printed
token authenticates with the scopes, clusters and expiry given, and stops when revoked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from sessionvault.cli import main
from sessionvault.settings import Settings
from storage import pg
from storage.tokens import Principal, lookup_token
from tests.integration.conftest import env_for

pytestmark = pytest.mark.integration


def _lookup(settings: Settings, token: str) -> Principal | None:
    async def work() -> Principal | None:
        conn = await pg.connect(settings.postgres_dsn.get())
        try:
            return await lookup_token(conn, token)
        finally:
            await conn.close()

    return asyncio.run(work())


def test_token_create_prints_a_token_that_authenticates_until_revoked(settings: Settings) -> None:
    runner = CliRunner()
    env = env_for(settings)
    before = datetime.now(UTC)
    created = runner.invoke(
        main,
        [
            "token",
            "create",
            "--tenant",
            settings.tenant,
            "--scope",
            "read",
            "--cluster",
            "prod",
            "--expires-in",
            "2h",
        ],
        env=env,
    )
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    principal = _lookup(settings, token)
    assert principal is not None
    assert principal.tenant == settings.tenant
    assert principal.scopes == frozenset({"read"})
    assert principal.clusters == frozenset({"prod"})
    assert principal.expires_at is not None
    assert (
        before + timedelta(hours=2)
        <= principal.expires_at
        <= datetime.now(UTC) + timedelta(hours=2)
    )
    both = runner.invoke(
        main,
        [
            "token",
            "create",
            "--tenant",
            settings.tenant,
            "--expires-in",
            "2h",
            "--expires-at",
            "2030-01-01T00:00:00Z",
        ],
        env=env,
    )
    assert both.exit_code == 1
    assert "give --expires-in or --expires-at, not both" in both.output
    revoked = runner.invoke(
        main, ["token", "revoke", "--tenant", settings.tenant, principal.token_id], env=env
    )
    assert revoked.exit_code == 0, revoked.output
    assert _lookup(settings, token) is None
