"""The aiohttp application: factory, middlewares and resource lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from frontend.cache import EmbeddingCache
from frontend.config import Settings
from frontend.errors import ApiError, RateLimited, Unauthorized
from frontend.files import DatabaseFiles, LocalFiles, UrlSigner, load_or_create_secret, shared_secret
from frontend.metrics import Metrics, monitor_loop_lag
from frontend.ratelimit import RateLimiter, SharedRateLimiter
from frontend.services import ImageJobs
from frontend.store import ACTIVE_MODEL_VERSION, KEY_PREFIX, ApiKey, Store, open_store
from frontend.triton_client import InferenceUnavailable, TritonClient

log = logging.getLogger("maskserve.frontend")

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
JOBS = web.AppKey("jobs", ImageJobs)
SIGNER = web.AppKey("signer", UrlSigner)
FILES = web.AppKey("files", object)
LIMITER = web.AppKey("limiter", object)
TRITON = web.AppKey("triton", TritonClient)
CACHE = web.AppKey("cache", EmbeddingCache)
METRICS = web.AppKey("metrics", Metrics)

API_KEY = "maskserve.api_key"
RATE = "maskserve.rate"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_error(status: int, body: dict, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request by its route pattern (never the raw path)."""
    started = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
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
    try:
        response = await handler(request)
    except ApiError as exc:
        headers = dict(request[RATE].headers()) if RATE in request else {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(exc.retry_after)
        return _json_error(exc.status, exc.body(), headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json_error(exc.status, {"detail": exc.reason}, None)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _json_error(500, {"detail": "Internal server error"})
    if RATE in request:
        response.headers.update(request[RATE].headers())
    return response


def _bucket(path: str) -> str | None:
    if path.startswith("/v1/services/"):
        return "batch" if path.endswith("/batch") else "single"
    if path.startswith("/v1/jobs/") or path == "/v1/account":
        return "read"
    return None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer API key on every /v1/services, /v1/jobs and /v1/account call, then its rate limit."""
    bucket = _bucket(request.path)
    if bucket is None:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret.startswith(KEY_PREFIX) or len(secret) > 128:
        raise Unauthorized()
    key = await request.app[STORE].authenticate(secret)
    if key is None:
        raise Unauthorized()
    decision = await request.app[LIMITER].check(key.id, bucket)
    request[RATE] = decision
    if not decision.allowed:
        raise RateLimited(decision.reset_s)
    request[API_KEY] = key
    return await handler(request)


def api_key(request: web.Request) -> ApiKey:
    return request[API_KEY]


STALE_AFTER_S = 3600.0  # longer than any request can run (Triton deadlines, upload timeout, batches)


async def _sweep_expired(app: web.Application) -> None:
    settings = app[SETTINGS]
    while True:
        try:
            if settings.database_url:
                await app[STORE].fail_stale_processing("Interrupted: its frontend stopped", STALE_AFTER_S)
            for job in await app[STORE].expired_outputs(time.time()):
                if job.output_path:
                    await app[FILES].remove(job.output_path)
                await app[STORE].forget_output(job.id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("expired-file sweep failed")
        await asyncio.sleep(settings.sweep_interval_s)


def _yield_to_models() -> None:
    """Image work runs at a lower priority than the models on shared cores.

    Each executor thread raises its own niceness (Linux schedules threads as
    tasks): decoding and encoding images then fills the gaps around the
    encoder instead of pre-empting one of its threads, which stalls the other.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


async def _follow_promotions(app: web.Application, interval: float = 1.0) -> None:
    """Switch new requests to the version `maskserve models promote` recorded in the store."""
    jobs = app[JOBS]
    while True:
        try:
            pinned = await app[STORE].get_state(ACTIVE_MODEL_VERSION)
            if pinned != jobs.pinned_version:
                jobs.pinned_version = pinned
                models = await jobs.refresh_models()
                log.info("traffic now goes to model version %s (%s)", models[0].version, models[0].weights)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Triton or the store briefly away: keep the current version
            log.warning("could not follow the promoted model version: %s", exc)
        await asyncio.sleep(interval)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = open_store(settings)
    await store.open()
    # Alone, every leftover `processing` job is ours to refund; sharing a database with
    # other frontends, only jobs older than any request could run (the sweep repeats it).
    stale = await store.fail_stale_processing("Interrupted by a server restart",
                                              STALE_AFTER_S if settings.database_url else 0.0)
    if stale:
        log.warning("refunded %d jobs left processing by a previous run", stale)
    if settings.database_url:  # several frontends: one secret and one file store for all
        signer = UrlSigner(await shared_secret(store), settings.url_ttl_s)
        files = LocalFiles(settings.files_dir) if settings.files_backend == "local" else DatabaseFiles(store)
    else:
        signer = UrlSigner(load_or_create_secret(settings.secret_path), settings.url_ttl_s)
        files = LocalFiles(settings.files_dir)
    triton = TritonClient(settings.triton_url, settings.triton_timeout_s, settings.triton_shm_slots)
    cache = EmbeddingCache(settings.cache_bytes)
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="maskserve-cpu", initializer=_yield_to_models)
    jobs = ImageJobs(settings, store, triton, cache, files, signer, executor, app[METRICS])
    app[STORE], app[SIGNER], app[FILES], app[TRITON], app[CACHE], app[JOBS] = store, signer, files, triton, cache, jobs
    limits = {
        "single": settings.rate_single_per_min,
        "batch": settings.rate_batch_per_min,
        "read": settings.rate_read_per_min,
    }
    app[LIMITER] = SharedRateLimiter(limits, store) if settings.database_url else RateLimiter(limits)
    jobs.pinned_version = await store.get_state(ACTIVE_MODEL_VERSION)
    try:
        models = await jobs.refresh_models()
        for m in models:
            log.info("model %s version %s: %s, weights %s", m.name, m.version, m.variant, m.weights)
            if m.weights.startswith("random"):
                log.warning("%s runs RANDOM WEIGHTS: masks are meaningless", m.name)
    except InferenceUnavailable as exc:
        log.warning("Triton at %s is not ready yet (%s); requests get 503 until it is", settings.triton_url, exc)
    background = [asyncio.ensure_future(_sweep_expired(app)), asyncio.ensure_future(monitor_loop_lag(app[METRICS])),
                  asyncio.ensure_future(_follow_promotions(app))]
    try:
        yield
    finally:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await triton.close()
        await store.close()
        executor.shutdown(wait=False, cancel_futures=True)


def create_app(settings: Settings) -> web.Application:
    from frontend import handlers

    app = web.Application(middlewares=[metrics_middleware, error_middleware, auth_middleware], client_max_size=1024**2)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app.cleanup_ctx.append(_resources)
    handlers.add_routes(app)
    return app
