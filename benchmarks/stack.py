"""Bring up the whole embedded stack for a benchmark: export (if needed), Triton, frontend."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_stack(repo: Path | None = None, **settings_overrides) -> Iterator[tuple[str, str, str]]:
    """Yields (api base URL, an API key with plenty of credits, Triton gRPC URL)."""
    from aiohttp import web

    from export.command import ExportRequest, run_export
    from frontend.app import STORE, create_app
    from frontend.config import Settings
    from maskserve.tritonserver import TritonOptions, TritonServer

    work = Path(tempfile.mkdtemp(prefix="maskserve-bench-"))
    if repo is None:
        repo = work / "model_repository"
        run_export(ExportRequest(out=repo, random_weights=True, seed=0))
    opts = TritonOptions(model_repository=repo, grpc_port=free_port(), http_port=free_port(),
                         metrics_port=free_port(), work_dir=work / "triton")
    with TritonServer(opts):
        settings = Settings(port=free_port(), data_dir=work / "data", triton_url=opts.grpc_url,
                            rate_single_per_min=10**6, rate_batch_per_min=10**6, **settings_overrides)
        loop = asyncio.new_event_loop()
        state: dict = {}

        async def start() -> None:
            app = create_app(settings)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", settings.port).start()
            _, secret = await app[STORE].create_key("bench", 10**9)
            state.update(app=app, runner=runner, secret=secret)

        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(start())
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        ready.wait(120)
        try:
            yield f"http://127.0.0.1:{settings.port}", state["secret"], opts.grpc_url
        finally:
            asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(60)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
