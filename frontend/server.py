"""Running the frontend: alone against a Triton URL, or with an embedded,
supervised Triton (``maskserve serve``)."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from maskserve.frontend.app import create_app
from maskserve.frontend.config import Settings
from maskserve.triton.server import TritonOptions, TritonServer

log = logging.getLogger("maskserve.serve")

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_allocator() -> None:
    """Give large buffers back to the OS as soon as they are freed.

    Every request allocates several multi-megabyte arrays (images, 16 MiB of
    embeddings) in executor threads. glibc raises its mmap threshold after
    such frees and then serves them from per-thread arenas, which fragment:
    a 30-minute soak grew the frontend's RSS by ~140 MB that way. A fixed
    threshold of 1 MiB keeps big buffers in mmap (released on free), and
    capping the arenas bounds what small allocations can spread over.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
        libc.mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


async def _serve_app(settings: Settings, stop: asyncio.Event) -> None:
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # on SIGTERM: stop accepting, give in-flight requests up to this long, then stop
    site = web.TCPSite(runner, settings.host, settings.port, shutdown_timeout=settings.shutdown_timeout_s)
    await site.start()
    log.info(
        "maskserve API listening on http://%s:%d (Triton %s, data %s)",
        settings.host,
        settings.port,
        settings.triton_url,
        settings.data_dir.resolve(),
    )
    print(f"maskserve is listening on http://{settings.host}:{settings.port}", flush=True)
    print(
        "Create an API key with: maskserve keys create --name NAME --credits N"
        + (f" --data-dir {settings.data_dir}" if str(settings.data_dir) != "data" else ""),
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        log.info("stopping the API")
        await runner.cleanup()


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)


async def _supervise(server: TritonServer, stop: asyncio.Event) -> None:
    """Restart the embedded Triton if it dies; the frontend reconnects by itself."""
    backoff = 1.0
    while not stop.is_set():
        await asyncio.sleep(1.0)
        proc = server.process
        if proc is None or proc.poll() is None or stop.is_set():
            continue
        log.error("tritonserver exited with code %s; restarting it", proc.returncode)
        await asyncio.to_thread(server.reap)  # its stubs and shared memory, before a new one takes their place
        try:
            await asyncio.to_thread(server.start)
            await asyncio.to_thread(server.wait_ready)
            log.info("tritonserver is back")
            backoff = 1.0
        except Exception:
            log.exception("restarting tritonserver failed; retrying in %.0f s", backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


async def run_frontend(settings: Settings) -> None:
    tune_allocator()
    stop = asyncio.Event()
    _install_signals(stop)
    await _serve_app(settings, stop)


async def run_embedded(settings: Settings, triton: TritonOptions) -> None:
    tune_allocator()
    stop = asyncio.Event()
    _install_signals(stop)
    server = TritonServer(triton)
    await asyncio.to_thread(server.start)
    try:
        await asyncio.to_thread(server.wait_ready)
        supervisor = asyncio.ensure_future(_supervise(server, stop))
        try:
            await _serve_app(settings, stop)
        finally:
            supervisor.cancel()
    finally:
        code = await asyncio.to_thread(server.stop)
        log.info("tritonserver stopped (exit code %s)", code)
