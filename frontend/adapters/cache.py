"""LRU cache of image embeddings, bounded in bytes, keyed by content hash and model version.

Concurrent requests for the same image share one encoder call (single flight),
so a batch with repeated images, or a burst of prompts on a new image, encodes
it once.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from maskserve.frontend.domain import Embeddings


class EmbeddingCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], Embeddings] = OrderedDict()
        self._bytes = 0
        self._inflight: dict[tuple[str, str], asyncio.Future[Embeddings]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def contains(self, digest: str, model_version: str) -> bool:
        return (digest, model_version) in self._items

    def _put(self, key: tuple[str, str], value: Embeddings) -> None:
        if value.nbytes > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes
        self._items[key] = value
        self._bytes += value.nbytes
        while self._bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self._bytes -= evicted.nbytes

    async def get_or_compute(
        self, digest: str, model_version: str, compute: Callable[[], Awaitable[Embeddings]]
    ) -> tuple[Embeddings, bool]:
        """→ (embeddings, whether they came from the cache or a running computation)."""
        key = (digest, model_version)
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
            self.hits += 1
            return found, True
        pending = self._inflight.get(key)
        if pending is not None:
            self.hits += 1
            return await asyncio.shield(pending), True
        self.misses += 1
        future: asyncio.Future[Embeddings] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await compute()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        finally:
            self._inflight.pop(key, None)
        future.set_result(value)
        self._put(key, value)
        return value, False
