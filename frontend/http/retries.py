"""Safe retries: the ``Idempotency-Key`` header on ``POST /v1/services/*`` (API.md v1.1).

A request that brings a key claims it in the store (scoped to the API key)
before any credit moves. The first one runs; its 2xx response is stored with
the key for 24 h and sent again to a retry of the same request (same path,
query and uploads), with ``Idempotent-Replayed: true`` and nothing charged. A
retry while the first still runs gets 409; the same key on a different request
422. A request that ends without a 2xx (refused, failed, cut off) releases the
key, so a retry runs it: it was never charged.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from maskserve.frontend.domain import IDEMPOTENCY_TTL_S, Claim, StoredResponse
from maskserve.frontend.errors import Conflict, ValidationFailed
from maskserve.frontend.http.state import STORE, api_key
from maskserve.frontend.services import Upload

HEADER = "Idempotency-Key"
MAX_LENGTH = 255
KEPT_HEADERS = ("X-Model-Version",)  # of the stored response; cost and timing are the replay's own
IN_PROGRESS = "A request with this Idempotency-Key is still in progress"


def idempotency_key(request: web.Request) -> str | None:
    """The header's value, checked: 1-255 printable ASCII characters."""
    values = request.headers.getall(HEADER, [])
    if not values:
        return None
    value = values[0]
    if len(values) > 1 or not 1 <= len(value) <= MAX_LENGTH or not all(" " <= c <= "~" for c in value):
        raise ValidationFailed.one("header", HEADER, f"must be 1 to {MAX_LENGTH} printable ASCII characters, once")
    return value


def fingerprint(request: web.Request, uploads: dict[str, list[Upload]]) -> str:
    """SHA-256 over the path, the query (in order) and every upload (field, file name, content digest)."""
    digest = hashlib.sha256()
    digest.update(request.path.encode())
    for name, value in request.query.items():
        digest.update(b"\0q" + name.encode() + b"\0" + value.encode())
    for field_name, files in sorted(uploads.items()):
        for upload in files:
            digest.update(b"\0f" + field_name.encode() + b"\0" + (upload.filename or "").encode() + b"\0")
            digest.update(hashlib.sha256(upload.data).digest())
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
    store, key_id = request.app[STORE], api_key(request).id
    claim, stored = await store.claim_idempotency(key_id, idem_key, fingerprint(request, uploads), IDEMPOTENCY_TTL_S)
    if claim is Claim.MISMATCH:
        raise ValidationFailed.one("header", HEADER, "this key was used for a different request in the last 24 h")
    if claim is Claim.RUNNING:
        raise Conflict(IN_PROGRESS)
    if claim is Claim.REPLAY:
        assert stored is not None
        headers = {**stored.headers, **await replay_headers(), "Idempotent-Replayed": "true"}
        headers["X-Credits-Charged"] = "0"
        headers["Server-Timing"] = f"replay;dur={(time.perf_counter() - started) * 1000:.1f}"
        return web.Response(text=stored.body, status=stored.status, content_type="application/json", headers=headers)
    response = None
    try:
        response = await run()
        return response
    finally:
        if response is not None and 200 <= response.status < 300 and response.text is not None:
            kept = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
            done = StoredResponse(response.status, response.text, kept)
            await asyncio.shield(store.store_idempotent(key_id, idem_key, done))
        else:
            await asyncio.shield(store.release_idempotency(key_id, idem_key))
