"""The playground: a click-to-segment page served from the API's own origin.

Plain HTML, CSS and JavaScript from ``maskserve/frontend/playground/`` (package data, no
build step, nothing from a CDN). The page holds no secret: the visitor pastes an API key,
which the script keeps in the tab's ``sessionStorage`` and sends as a Bearer header to the
same origin, so no CORS is involved. Every asset carries a strict Content-Security-Policy:
scripts, styles and connections only from this origin, images also from ``blob:`` URLs
(the cut-out and the downloads), media only from ``blob:`` URLs (the video tab's own file),
no inline script or style, no framing. With the ``s3``
files backend in redirect mode, file links answer 302 to the object store, so its origin
is allowed for connections and images too (the bucket's CORS rule lets the page read them).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from urllib.parse import urlsplit

from aiohttp import web

from maskserve.frontend.config import Settings
from maskserve.frontend.errors import NotFound
from maskserve.frontend.http.state import SETTINGS


def content_security_policy(settings: Settings) -> str:
    """Only this origin; plus the object store's, where file links redirect to presigned URLs there."""
    files = ""
    if settings.files_backend == "s3" and settings.s3_downloads == "redirect":
        endpoint = settings.s3_public_endpoint_url or settings.s3_endpoint_url
        if endpoint:
            parts = urlsplit(endpoint)
            files = f" {parts.scheme}://{parts.netloc}"
        else:  # AWS S3 itself, in path or virtual-host style
            files = " https://*.amazonaws.com"
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' blob: data:{files}",
            "media-src blob:",  # the video tab shows the visitor's own file, decoded by the browser
            f"connect-src 'self'{files}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


ASSETS = {
    "index.html": "text/html",
    "playground.js": "text/javascript",  # the page's module; it imports the four below
    "state.js": "text/javascript",
    "api.js": "text/javascript",
    "masks.js": "text/javascript",
    "video.js": "text/javascript",
    "playground.css": "text/css",
}
"""The files the page is made of, and their types; nothing else under ``/playground/`` is served."""


@cache
def _asset(name: str) -> bytes:
    return resources.files("maskserve.frontend").joinpath("playground", name).read_bytes()


def _serve(request: web.Request, name: str) -> web.Response:
    return web.Response(
        body=_asset(name),
        content_type=ASSETS[name],
        charset="utf-8",
        headers={
            "Content-Security-Policy": content_security_policy(request.app[SETTINGS]),
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )


async def page(request: web.Request) -> web.Response:
    return _serve(request, "index.html")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise NotFound("Not found")
    return _serve(request, name)
