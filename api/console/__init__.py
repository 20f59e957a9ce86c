"""The web console's assets (built from ``api/console/frontend`` by ``make console``; shipped in the
package, so serving them needs no Node and no network) and the routes that serve them.

Every response of the app carries the console's security headers (:func:`security_headers`): a
strict Content-Security-Policy (scripts and connections to this origin only, no inline script,
no eval, no framing), no referrer (a share link's token is in the URL's fragment, which is never
sent, and no page address leaks to another site either), no MIME sniffing.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse, Response

ASSETS = Path(__file__).parent / "assets"

#: Content-Security-Policy of every response. ``style-src 'unsafe-inline'``: xterm.js's DOM
#: renderer writes its cell-size and theme rules into ``<style>`` elements it creates (no nonce
#: support); scripts stay ``'self'`` only, which is what stops injected code.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data: blob:; font-src 'self'; connect-src 'self';"
    " base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def security_headers() -> dict[str, str]:
    """Headers set on every response of the app (see the module docstring)."""
    return {
        "Content-Security-Policy": CSP,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
    }


_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}


def router() -> APIRouter:
    """``/`` -> ``/ui/``; ``/ui/`` the console page; ``/ui/assets/NAME`` its assets."""
    r = APIRouter(include_in_schema=False)

    @r.get("/")
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @r.get("/ui/")
    async def index() -> FileResponse:
        return FileResponse(
            ASSETS / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"}
        )

    @r.get("/ui/assets/{name}")
    async def asset(name: str) -> Response:
        path = ASSETS / name
        # Names only (no separators, no dot files): nothing outside ASSETS is reachable.
        if "/" in name or name.startswith(".") or not path.is_file():
            raise HTTPException(404, "not found")
        return FileResponse(
            path,
            media_type=_TYPES.get(path.suffix, "application/octet-stream"),
            headers={"Cache-Control": "no-cache"},
        )

    return r
