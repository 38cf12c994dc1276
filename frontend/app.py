"""The aiohttp application: the factory, and the resources it opens and closes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from maskserve.frontend.adapters.backends import build_backends
from maskserve.frontend.adapters.model_tier import ModelTier
from maskserve.frontend.config import Settings
from maskserve.frontend.domain import IDEMPOTENCY_TTL_S, Failure, FrontendReport, now
from maskserve.frontend.errors import InferenceUnavailable
from maskserve.frontend.http import handlers
from maskserve.frontend.http.middleware import MIDDLEWARES
from maskserve.frontend.http.state import FILES, JOBS, LIMITS, METRICS, SETTINGS, SIGNER, STORE, TRITON
from maskserve.frontend.http.webhooks import Deliverer
from maskserve.frontend.metrics import Metrics, monitor_loop_lag
from maskserve.frontend.ports import InferenceClient
from maskserve.frontend.services import ImageJobs

log = logging.getLogger("maskserve.frontend")

STALE_AFTER_S = 3600.0  # longer than any request can run (Triton deadlines, upload timeout, batches)


async def _sweep_expired(app: web.Application) -> None:
    settings, store, files = app[SETTINGS], app[STORE], app[FILES]
    while True:
        try:
            if settings.shared:
                await store.fail_stale_processing(Failure.INTERRUPTED, STALE_AFTER_S)
            at = time.time()
            await store.sweep_idempotency(at - IDEMPOTENCY_TTL_S, at - STALE_AFTER_S)
            await app[JOBS].sweep_deferred()
            for job in await store.expired_outputs(at):
                for location in [job.output_path, *job.extra_files]:
                    if location:
                        await files.remove(location)
                await store.forget_output(job.id)
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


FOLLOW_INTERVAL_S = 0.5


async def _follow_routing(app: web.Application, frontend_id: str, interval: float = FOLLOW_INTERVAL_S) -> None:
    """Follow the routing `maskserve models` keeps in the store, and report back what this frontend runs.

    The report (the routing generation now followed, requests in flight per
    version) is written after the new routing took effect, so once every
    frontend reports a generation, no new request goes to a version that
    generation retired, and the in-flight counts say when the old ones ended.
    """
    jobs, store = app[JOBS], app[STORE]
    while True:
        try:
            routing = await store.get_routing()
            if routing != jobs.routing:
                jobs.routing = routing
                log.info("model routing %d: %s", routing.generation, routing.to_json())
            with contextlib.suppress(InferenceUnavailable):  # Triton briefly away: keep the versions known
                before = jobs.models[0].version if jobs.models else None
                models = await jobs.refresh_models()
                if models[0].version != before:
                    log.info("traffic now goes to model version %s (%s)", models[0].version, models[0].weights)
            report = FrontendReport(frontend_id, routing.generation, jobs.in_flight_now(), now())
            await store.report_frontend(report)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store briefly away: keep the current routing
            log.warning("could not follow the model routing: %s", exc)
        await asyncio.sleep(interval)


async def _log_models(jobs: ImageJobs, triton_url: str) -> None:
    try:
        for m in await jobs.refresh_models():
            log.info("model %s version %s: %s, weights %s", m.name, m.version, m.variant, m.weights)
            if m.random_weights:
                log.warning("%s runs RANDOM WEIGHTS: masks are meaningless", m.name)
    except InferenceUnavailable as exc:
        log.warning("Triton at %s is not ready yet (%s); requests get 503 until it is", triton_url, exc)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    backends = await build_backends(settings)
    store = backends.store
    # Alone, every leftover `processing` job is ours to refund; sharing a database with
    # other frontends, only jobs older than any request could run (the sweep repeats it).
    # Accepted asynchronous requests keep their inputs: alone, their jobs run again below instead.
    deferred = [] if settings.shared else await store.list_deferred()
    keep = frozenset(item["job_id"] for request in deferred for item in request.items)
    stale = await store.fail_stale_processing(Failure.RESTARTED, STALE_AFTER_S if settings.shared else 0.0, keep)
    if stale:
        log.warning("refunded %d jobs left processing by a previous run", stale)
    at = time.time()  # likewise the Idempotency-Keys of requests that were running then
    await store.sweep_idempotency(at - IDEMPOTENCY_TTL_S, at - (STALE_AFTER_S if settings.shared else 0.0))
    triton = app[TRITON] if TRITON in app else ModelTier(settings.triton_urls, settings.triton_timeout_s, app[METRICS])
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="maskserve-cpu", initializer=_yield_to_models)
    jobs = ImageJobs(
        settings,
        store,
        triton,
        backends.files,
        backends.signer,
        executor,
        app[METRICS],
    )
    app[STORE], app[FILES], app[LIMITS], app[SIGNER] = store, backends.files, backends.limits, backends.signer
    app[TRITON], app[JOBS] = triton, jobs
    jobs.routing = await store.get_routing()
    await _log_models(jobs, settings.triton_url)
    if not settings.shared:
        resumed = await jobs.resume_deferred(deferred)
        if resumed:
            log.warning("resumed %d images of asynchronous requests accepted before a restart", resumed)
    frontend_id = uuid.uuid4().hex
    deliverer = Deliverer(settings, store)
    background = [
        asyncio.ensure_future(deliverer.run()),
        asyncio.ensure_future(_sweep_expired(app)),
        asyncio.ensure_future(monitor_loop_lag(app[METRICS])),
        asyncio.ensure_future(_follow_routing(app, frontend_id)),
    ]
    try:
        yield
    finally:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await jobs.close()
        await deliverer.close()
        with contextlib.suppress(Exception):
            await store.forget_frontend(frontend_id)
        await triton.close()
        await backends.files.close()
        await store.close()
        executor.shutdown(wait=False, cancel_futures=True)


def create_app(settings: Settings, inference: InferenceClient | None = None) -> web.Application:
    """The API; ``inference`` replaces the Triton client (the unit tier passes a fake one)."""
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=1024**2)
    app[SETTINGS] = settings
    if inference is not None:
        app[TRITON] = inference
    app[METRICS] = Metrics()
    app.cleanup_ctx.append(_resources)
    handlers.add_routes(app)
    return app
