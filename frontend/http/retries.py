"""Safe retries over HTTP: the ``Idempotency-Key`` header, the request's fingerprint, and the replayed
response (the rules are the idempotency service's, ``services/idempotency.py``)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from maskserve.frontend.domain.accounts import StoredResponse
from maskserve.frontend.http.state import api_key, services
from maskserve.frontend.services.idempotency import HEADER, check_key
from maskserve.frontend.services.preparation import Upload

KEPT_HEADERS = ("X-Model-Version",)  # of the stored response; cost and timing are the replay's own


def idempotency_key(request: web.Request) -> str | None:
    return check_key(request.headers.getall(HEADER, []))


def fingerprint(request: web.Request, uploads: dict[str, list[Upload]]) -> str:
    """SHA-256 over the path, the query (in order) and every upload (field, file name, content digest)."""
    digest = hashlib.sha256()
    digest.update(request.path.encode())
    for name, value in request.query.items():
        digest.update(b"\0q" + name.encode() + b"\0" + value.encode())
    for field_name, files in sorted(uploads.items()):
        for upload in files:
            digest.update(b"\0f" + field_name.encode() + b"\0" + (upload.filename or "").encode() + b"\0")
            digest.update(bytes.fromhex(upload.digest))
    return digest.hexdigest()


async def idempotent(
    request: web.Request,
    uploads: dict[str, list[Upload]],
    run: Callable[[], Awaitable[web.Response]],
    replay_headers: Callable[[], Awaitable[dict[str, str]]],
) -> web.Response:
    """``run()``, or the response stored under the request's ``Idempotency-Key``."""
    idem_key = idempotency_key(request)
    if idem_key is None:
        return await run()
    started = time.perf_counter()
    retries, key = services(request).idempotency, api_key(request)
    stored = await retries.claim(key, idem_key, fingerprint(request, uploads))
    if stored is not None:
        headers = {**stored.headers, **await replay_headers(), "Idempotent-Replayed": "true"}
        headers["X-Credits-Charged"] = "0"
        headers["Server-Timing"] = f"replay;dur={(time.perf_counter() - started) * 1000:.1f}"
        return web.Response(text=stored.body, status=stored.status, content_type="application/json", headers=headers)
    response = None
    try:
        response = await run()
        return response
    finally:
        done = None
        if response is not None and 200 <= response.status < 300 and response.text is not None:
            kept = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
            done = StoredResponse(response.status, response.text, kept)
        await retries.settle(key, idem_key, done)
