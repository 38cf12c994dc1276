"""What every service is built over: the settings, the ports, the signer, the metrics and the CPU executor."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from maskserve.frontend.config import Settings
from maskserve.frontend.errors import DatabaseUnavailable, StorageUnavailable
from maskserve.frontend.metrics import Metrics
from maskserve.frontend.ports import InferenceClient, OutputFiles, RateLimits, Store
from maskserve.frontend.signing import UrlSigner

T = TypeVar("T")


@dataclass(frozen=True)
class Deps:
    settings: Settings
    store: Store
    files: OutputFiles
    inference: InferenceClient
    limits: RateLimits
    signer: UrlSigner
    metrics: Metrics
    executor: Executor | None = None


class Service:
    """A service over the shared dependencies, with the helpers most of them need."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.store = deps.store
        self.files = deps.files
        self.metrics = deps.metrics

    async def cpu(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the CPU executor, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.deps.executor, partial(fn, *args))

    async def read_file(self, location: str) -> bytes | None:
        """A stored file's bytes (whichever storage holds it), or None when it is gone."""
        found = await self.files.get(location)
        if found is None or isinstance(found, bytes):
            return found
        return await asyncio.to_thread(found.read_bytes)

    async def discard(self, locations: list[str]) -> None:
        """Remove what a failed request wrote, as far as the storage lets us (its expiry takes the rest)."""
        for location in locations:
            with contextlib.suppress(StorageUnavailable, DatabaseUnavailable):
                await self.files.remove(location)


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
