"""The playground: a click-to-segment page served from the API's own origin.

Plain HTML, CSS and JavaScript from ``maskserve/frontend/playground/`` (package data, no
build step, nothing from a CDN). The page holds no secret: the visitor pastes an API key,
which the script keeps in the tab's ``sessionStorage`` and sends as a Bearer header to the
same origin, so no CORS is involved. Every asset carries a strict Content-Security-Policy:
scripts, styles and connections only from this origin, images also from ``blob:`` URLs
(the cut-out and the downloads), no inline script or style, no framing.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web

from maskserve.frontend.errors import NotFound

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

ASSETS = {
    "index.html": "text/html",
    "playground.js": "text/javascript",
    "playground.css": "text/css",
}
"""The files the page is made of, and their types; nothing else under ``/playground/`` is served."""


@cache
def _asset(name: str) -> bytes:
    return resources.files("maskserve.frontend").joinpath("playground", name).read_bytes()


def _serve(name: str) -> web.Response:
    return web.Response(
        body=_asset(name),
        content_type=ASSETS[name],
        charset="utf-8",
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )


async def page(request: web.Request) -> web.Response:
    return _serve("index.html")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise NotFound("Not found")
    return _serve(name)


def add_routes(app: web.Application) -> None:
    """``/playground`` and its assets; both route names are public (the page holds no secrets)."""
    app.router.add_get("/playground", page, name="playground")
    app.router.add_get("/playground/{name}", asset, name="playground_asset")
