"""``sessionvault federation ...`` and ``worker tunnel`` (docs/federation.md), and the root API
client behind ``--leaf`` on ``search``, ``sessions``, ``play`` and ``export``.

On a root: ``federation init`` (its CA), ``federation token --leaf NAME`` (a join token),
``federation leaves``. On a leaf: ``federation join``, ``federation map`` / ``mappings`` /
``unmap`` (who of which root reads which tenant), ``federation rotate``, ``worker tunnel``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

import click
import orjson

from sessionvault.cli.common import (
    StatusFields,
    get_settings,
    postgres_dsn,
    run_with_pool,
    run_worker_command,
    status_every_option,
    subgroup,
)
from sessionvault.errors import ConfigError, NotFoundError, TransportError, ValidationError
from sessionvault.settings import Settings

JOIN_PREFIX = "svj_"


def register(main: click.Group) -> None:
    """Add ``federation`` and ``worker tunnel``."""
    group = subgroup(main, "federation", "Trusted clusters: a root and its leaves.")
    _register_root(group)
    _register_leaf(group)
    worker_group = subgroup(main, "worker", "Long-running Kafka workers.")

    @worker_group.command("tunnel")
    @status_every_option
    @click.pass_context
    def tunnel_cmd(ctx: click.Context, status_every: float) -> None:
        """Keep this leaf's tunnel to its root up and answer the root's questions."""
        from api.federation.agent import LeafAgent

        settings = get_settings(ctx)
        agent = LeafAgent(settings)  # a one-line error before a join
        run_worker_command(
            settings,
            tag="tunnel",
            name="worker-tunnel",
            make=lambda: agent,
            banner=f"leaf {agent.name} -> root {agent.root} at {agent.state['tunnel']}"
            " (SIGTERM/SIGINT to stop)",
            fields=StatusFields(
                rates=(),
                totals=(
                    ("connects", "connects"),
                    ("requests", "requests"),
                    ("denied", "denied"),
                    ("bytes_sent", "bytes sent"),
                ),
                stopped=("requests", "requests"),
            ),
            status_every=status_every,
        )


def _register_root(group: click.Group) -> None:
    @group.command("init")
    @click.pass_context
    def init_cmd(ctx: click.Context) -> None:
        """Create this root's CA (once) and print its pin."""
        from api.federation.files import RootFiles

        settings = get_settings(ctx)
        files = RootFiles.of(settings)
        hosts = [h.strip() for h in settings.federation_hosts.split(",") if h.strip()]
        files.ensure(settings.federation_name, hosts, now=dt.datetime.now(dt.UTC))
        click.echo(f"root {settings.federation_name}: CA {files.ca_cert} ({files.pin()})")

    @group.command("token")
    @click.option("--leaf", "leaf", required=True, help="The name the joining leaf will have.")
    @click.option("--ttl", default="15m", show_default=True, help="How long it can be used.")
    @click.pass_context
    def token_cmd(ctx: click.Context, leaf: str, ttl: str) -> None:
        """Print a single-use join token for one leaf (it pins this root's CA)."""
        from api.federation.files import RootFiles
        from sessionvault.timespec import expiry
        from storage import pg
        from storage.federation import create_join_token

        settings = get_settings(ctx)
        files = RootFiles.of(settings)
        hosts = [h.strip() for h in settings.federation_hosts.split(",") if h.strip()]
        files.ensure(settings.federation_name, hosts, now=dt.datetime.now(dt.UTC))
        expires = expiry(ttl, None)
        assert expires is not None
        secret = JOIN_PREFIX + secrets.token_urlsafe(32)

        async def work(pool: Any) -> None:
            await pg.migrate(postgres_dsn(settings))
            await create_join_token(pool, secret, leaf, expires)

        run_with_pool(settings, work)
        click.echo(
            f"join token for leaf {leaf}, expires {expires.isoformat()}; shown once:", err=True
        )
        click.echo(f"{secret}.{files.pin().removeprefix('sha256:')}")

    @group.command("leaves")
    @click.pass_context
    def leaves_cmd(ctx: click.Context) -> None:
        """The leaves of this root (joined, last seen, certificate expiry)."""
        from storage.federation import leaf_rows

        settings = get_settings(ctx)
        rows = run_with_pool(settings, leaf_rows)
        for row in rows:
            seen = row.last_seen_at.isoformat() if row.last_seen_at else "never"
            cert = row.cert_not_after.isoformat() if row.cert_not_after else "none"
            click.echo(f"{row.name}\tjoined {row.joined_at.isoformat()}\tseen {seen}\tcert {cert}")
        if not rows:
            click.echo("no leaves", err=True)


def _register_leaf(group: click.Group) -> None:
    @group.command("join")
    @click.option("--root", "root_url", required=True, help="The root's API URL.")
    @click.option("--token", required=True, help="The join token the root printed.")
    @click.option(
        "--tunnel",
        default=None,
        metavar="HOST:PORT",
        help="Where the root's tunnel listener is (default: the API's host, the port it says).",
    )
    @click.pass_context
    def join_cmd(ctx: click.Context, root_url: str, token: str, tunnel: str | None) -> None:
        """Join a root: send a certificate request with the token, keep the certificate."""
        settings = get_settings(ctx)
        state = join_root(settings, root_url, token, tunnel)
        click.echo(
            f"joined root {state['root']} as leaf {state['name']}; tunnel {state['tunnel']}"
            " (`sessionvault worker tunnel`, started by `up`)"
        )

    @group.command("map")
    @click.option("--root", default="*", show_default=True, help="The root's name, or *.")
    @click.option("--user", required=True, help="The root user, or *.")
    @click.option("--role", default="", help="A role the user must hold (default: any).")
    @click.option("--tenant", required=True, help="The tenant of this leaf they read.")
    @click.option("--cluster", "clusters", multiple=True, help="Only these Kubernetes clusters.")
    @click.pass_context
    def map_cmd(
        ctx: click.Context,
        root: str,
        user: str,
        role: str,
        tenant: str,
        clusters: tuple[str, ...],
    ) -> None:
        """Let root users read a tenant of this leaf (the first matching rule wins)."""
        from storage import pg
        from storage.federation import add_mapping

        settings = get_settings(ctx)

        async def work(pool: Any) -> Any:
            await pg.migrate(postgres_dsn(settings))
            return await add_mapping(
                pool, root=root, user=user, role=role, tenant=tenant, clusters=clusters
            )

        rule = run_with_pool(settings, work)
        click.echo(f"mapping {rule.id}: {_rule_text(rule)}")

    @group.command("mappings")
    @click.pass_context
    def mappings_cmd(ctx: click.Context) -> None:
        """This leaf's mapping rules, in the order they are tried."""
        from storage.federation import list_mappings

        for rule in run_with_pool(get_settings(ctx), list_mappings):
            click.echo(f"{rule.id}\t{_rule_text(rule)}")

    @group.command("unmap")
    @click.argument("rule_id", type=int)
    @click.pass_context
    def unmap_cmd(ctx: click.Context, rule_id: int) -> None:
        """Delete a mapping rule."""
        from storage.federation import remove_mapping

        async def work(pool: Any) -> None:
            await remove_mapping(pool, rule_id)

        run_with_pool(get_settings(ctx), work)
        click.echo(f"mapping {rule_id} deleted")

    @group.command("rotate")
    @click.pass_context
    def rotate_cmd(ctx: click.Context) -> None:
        """Get a new leaf certificate from the root now (the old one is revoked as soon as
        the tunnel reconnects with the new one)."""
        from api.federation.agent import rotate_once

        serial = asyncio.run(rotate_once(get_settings(ctx)))
        click.echo(f"new leaf certificate {serial}")


def _rule_text(rule: Any) -> str:
    role = f" with role {rule.role}" if rule.role else ""
    clusters = f" clusters {','.join(rule.clusters)}" if rule.clusters else ""
    return f"root {rule.root} user {rule.user}{role} -> tenant {rule.tenant}{clusters}"


def join_root(settings: Settings, root_url: str, token: str, tunnel: str | None) -> dict[str, Any]:
    """The leaf's side of a join (library API of ``federation join``): returns its record."""
    import httpx

    from api.federation import pki
    from api.federation.files import LeafFiles

    secret, _, pin = token.partition(".")
    if not secret.startswith(JOIN_PREFIX) or len(pin) != 64:
        raise ValidationError("join_refused", "join token: not one `federation token` printed")
    key = pki.new_key()
    # The root signs for the leaf name it bound to the token; the CSR proves the key.
    csr = pki.make_csr("joining-leaf", key).decode()
    try:
        with httpx.Client(timeout=30) as client:
            answer = client.post(
                root_url.rstrip("/") + "/v1/federation/join", json={"token": secret, "csr": csr}
            )
    except httpx.HTTPError as exc:
        raise TransportError(f"cannot reach the root at {root_url}: {exc}") from exc
    _raise_http(answer, "join")
    body = answer.json()
    ca = str(body["ca"]).encode()
    if pki.ca_pin(ca) != "sha256:" + pin.lower():
        raise ValidationError("join_refused", "the root's CA does not match the token's pin")
    host = urlsplit(root_url).hostname or "127.0.0.1"
    state = {
        "name": body["leaf"],
        "root": body["root"],
        "tunnel": tunnel or f"{host}:{body['tunnel_port']}",
        "api": root_url,
        "joined_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    LeafFiles.of(settings).save(state=state, key=key, cert=str(body["cert"]).encode(), root_ca=ca)
    return state


def _raise_http(response: Any, what: str) -> None:
    if response.status_code < 400:
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    message = f"{what}: the root answered {response.status_code}: {detail}"
    if response.status_code == 404:
        raise NotFoundError(message)
    if response.status_code in (400, 401, 403):
        raise ValidationError("refused", message)
    raise TransportError(message)


# -- --leaf on search / sessions / play / export: the root's API --------------------------------


class RootClient:
    """The root's federated routes, for the CLI (``api_url`` and ``api_token`` settings)."""

    def __init__(self, settings: Settings) -> None:
        import httpx

        if not settings.api_url or not settings.api_token:
            raise ConfigError(
                "--leaf asks the root's API: set SESSIONVAULT_API_URL and SESSIONVAULT_API_TOKEN"
            )
        self.client = httpx.Client(
            base_url=settings.api_url.rstrip("/"),
            headers={"Authorization": f"Bearer {settings.api_token.get()}"},
            timeout=httpx.Timeout(60, connect=10),
        )

    def get_json(self, path: str, params: list[tuple[str, str]]) -> dict[str, Any]:
        import httpx

        try:
            response = self.client.get(path, params=tuple(params))
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot reach the root API: {exc}") from exc
        _raise_http(response, path)
        data: dict[str, Any] = response.json()
        return data

    def stream(self, path: str, params: list[tuple[str, str]]) -> Iterator[bytes]:
        import httpx

        try:
            with self.client.stream("GET", path, params=tuple(params)) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_http(response, path)
                yield from response.iter_bytes(256 * 1024)
        except httpx.HTTPError as exc:
            raise TransportError(f"the root API stream failed: {exc}") from exc


def leaf_status_line(page: dict[str, Any]) -> str:
    """``leaf-a ok (3), leaf-b DOWN: ...`` for stderr."""
    parts = []
    for entry in page.get("leaves", []):
        status = entry["status"]
        shown = status if status in ("ok", "no_access") else status.upper()
        text = f"{entry['name']} {shown}"
        if "items" in entry and status == "ok":
            text += f" ({entry['items']})"
        if entry.get("message") and status != "ok":
            text += f": {entry['message']}"
        parts.append(text)
    return ", ".join(parts)


def federated_pages(
    settings: Settings,
    route: str,
    params: list[tuple[str, str]],
    items_key: str,
    *,
    cursor: str | None,
    all_pages: bool,
) -> Iterator[dict[str, Any]]:
    """Pages of a federated list route, reporting each page's leaves on stderr."""
    client = RootClient(settings)
    while True:
        page = client.get_json(route, [*params, *([("cursor", cursor)] if cursor else [])])
        partial = " PARTIAL" if page.get("partial") else ""
        click.echo(f"leaves: {leaf_status_line(page)}{partial}", err=True)
        yield page
        cursor = page.get("next_cursor")
        if not all_pages or cursor is None or page.get("partial"):
            if cursor:
                click.echo(f"more: --cursor {cursor}", err=True)
            return


def print_federated_hits(pages: Iterator[dict[str, Any]], fmt: str) -> None:
    total = 0
    for page in pages:
        if fmt == "json":
            click.echo(orjson.dumps(page).decode())
        for hit in page["hits"]:
            total += 1
            if fmt == "json":
                continue
            what = hit.get("text") if hit["kind"] == "output" else hit.get("event")
            click.echo(
                f"{hit['time']}\t{hit['leaf']}\t{hit['kind']}\t{hit['user']}\t"
                f"{hit.get('server_id', '')}\t{what}\t{hit.get('replay') or ''}"
            )
    click.echo(f"{total} hits", err=True)


def leaf_export(settings: Settings, leaf: str, sid: str, params: list[tuple[str, str]]) -> Any:
    """The export stream of session ``sid`` on ``leaf``, through the root."""
    path = f"/v1/federation/leaves/{quote(leaf, safe='')}/v1/sessions/{quote(sid, safe='')}/export"
    return RootClient(settings).stream(path, params)


def write_stream(chunks: Iterator[bytes], out: BinaryIO) -> int:
    written = 0
    for piece in chunks:
        out.write(piece)
        written += len(piece)
    out.flush()
    return written


def stdout() -> BinaryIO:
    return sys.stdout.buffer
