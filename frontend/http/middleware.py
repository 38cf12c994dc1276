"""Middlewares: metrics, the contract's error bodies, and authentication that fails closed.

Authentication is decided by the matched route's name, not by its path: every
route needs an API key unless its name is in ``PUBLIC_ROUTES``, so a route
added without a thought about auth is private. A test walks the route table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from maskserve.frontend.domain.accounts import RateBucket
from maskserve.frontend.domain.jobs import Failure
from maskserve.frontend.errors import ApiError, DatabaseUnavailable, RateLimited, StorageUnavailable, Unavailable
from maskserve.frontend.http.routes import PUBLIC_ROUTES, RATE_BUCKETS
from maskserve.frontend.http.state import API_KEY, METRICS, RATE, rate_decision, services

log = logging.getLogger("maskserve.frontend")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def route_name(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return resource.name if resource is not None else None


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request by its route pattern (never the raw path)."""
    started = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    response = await handler(request)
    metrics = request.app[METRICS]
    metrics.requests.labels(route, str(response.status)).inc()
    metrics.latency.labels(route).observe(time.perf_counter() - started)
    if response.status in (429, 503):  # rate limits; overload, Triton queue limits or Triton away
        metrics.rejected.labels("rate_limit" if response.status == 429 else "unavailable").inc()
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as the contract's JSON, with the rate-limit headers if any."""
    decision = None
    try:
        response = await handler(request)
    except ApiError as exc:
        decision = rate_decision(request)
        headers = decision.headers() if decision else {}
        if isinstance(exc, RateLimited | Unavailable):
            headers["Retry-After"] = str(exc.retry_after)
        return _json_error(exc.status, exc.body(), headers)
    except DatabaseUnavailable as exc:  # in any layer: auth, rate limits, services, reads
        log.warning("%s %s: the database is unavailable: %s", request.method, request.path, exc)
        request.app[METRICS].database_unavailable.inc()
        return _json_error(503, {"detail": exc.detail}, {"Retry-After": str(exc.retry_after)})
    except StorageUnavailable as exc:  # the output storage, met outside a job (file reads, refinement inputs)
        log.warning("%s %s: %s", request.method, request.path, exc)
        return _json_error(503, {"detail": Failure.STORAGE.value})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json_error(exc.status, {"detail": exc.reason})
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _json_error(500, {"detail": "Internal server error"})
    decision = rate_decision(request)
    if decision is not None:
        response.headers.update(decision.headers())
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A Bearer API key on every route but the public ones, then the key's rate limit."""
    if request.match_info.http_exception is not None:  # no route: the router's own 404/405
        return await handler(request)
    name = route_name(request)
    if name in PUBLIC_ROUTES:
        return await handler(request)
    access = services(request).access
    key = await access.authenticate(request.headers.get("Authorization", ""))
    decision = await access.rate(key, RATE_BUCKETS.get(name or "", RateBucket.SINGLE))
    request[RATE] = decision
    if not decision.allowed:
        raise RateLimited(decision.reset_s)
    request[API_KEY] = key
    return await handler(request)


MIDDLEWARES = [metrics_middleware, error_middleware, auth_middleware]
