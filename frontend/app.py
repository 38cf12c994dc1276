"""The aiohttp application: the factory, and the resources it opens and closes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from maskserve.frontend.adapters.backends import build_backends
from maskserve.frontend.adapters.journal import LocalJournal
from maskserve.frontend.adapters.model_tier import ModelTier
from maskserve.frontend.config import Settings
from maskserve.frontend.http import routes
from maskserve.frontend.http.middleware import MIDDLEWARES
from maskserve.frontend.http.state import METRICS, SERVICES, SETTINGS, STORE, TRITON
from maskserve.frontend.http.webhooks import HttpSender
from maskserve.frontend.metrics import Metrics, monitor_loop_lag
from maskserve.frontend.ports import InferenceClient
from maskserve.frontend.services.base import Deps
from maskserve.frontend.services.container import Services


def _yield_to_models() -> None:
    """Image work runs at a lower priority than the models on shared cores.

    Each executor thread raises its own niceness (Linux schedules threads as
    tasks): decoding and encoding images then fills the gaps around the
    encoder instead of pre-empting one of its threads, which stalls the other.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    backends = await build_backends(settings)
    triton = app[TRITON] if TRITON in app else ModelTier(settings.triton_urls, settings.triton_timeout_s, app[METRICS])
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="maskserve-cpu", initializer=_yield_to_models)
    deps = Deps(
        settings, backends.store, backends.files, triton, backends.limits, backends.signer, app[METRICS], executor
    )
    journal = LocalJournal(settings.journal_path)
    sender = HttpSender(settings.webhook_allow_private, settings.webhook_timeout_s)
    services = Services.build(deps, sender, journal)
    app[STORE], app[TRITON], app[SERVICES] = backends.store, triton, services
    await services.start()
    lag = asyncio.ensure_future(monitor_loop_lag(app[METRICS]))
    try:
        yield
    finally:
        lag.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lag
        await services.close()
        await triton.close()
        await backends.files.close()
        await backends.store.close()
        journal.close()
        executor.shutdown(wait=False, cancel_futures=True)


def create_app(settings: Settings, inference: InferenceClient | None = None) -> web.Application:
    """The API; ``inference`` replaces the Triton client (the unit tier passes a fake one)."""
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=1024**2)
    app[SETTINGS] = settings
    if inference is not None:
        app[TRITON] = inference
    app[METRICS] = Metrics()
    app.cleanup_ctx.append(_resources)
    routes.add_routes(app)
    return app
