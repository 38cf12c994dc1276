"""Image embeddings kept in a compact precision, bounded in bytes, least recently used first out.

The same store keeps the decoder's fp32 copies of the last few images used
(``hot``): widening 8 MiB of fp16 costs about 9 ms, and interactive use sends
many prompts on the image just used. Those copies are bounded by a count of
images, outside the byte bound, and go with their entry when it is evicted.
On the ``cpu`` target the decoder keeps its own copies of the last images
(``maskserve.session.held``); these are then what the session sends when the
decoder asks for an image again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

STORAGE_DTYPES = {"fp16": np.float16, "fp32": np.float32}
HOT_IMAGES = 2
"""Images whose fp32 copies stay ready for the decoder (32 MiB for SAM 2's three tensors)."""


@dataclass(frozen=True)
class Entry:
    """One image's three embedding tensors, as stored."""

    arrays: tuple[np.ndarray, ...]

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays)


@dataclass
class StoreStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class EmbeddingStore:
    """An LRU map from image digest to embeddings, holding at most ``max_bytes``."""

    def __init__(self, max_bytes: int, storage: str = "fp16", hot_images: int = HOT_IMAGES) -> None:
        if storage not in STORAGE_DTYPES:
            raise ValueError(f"storage must be one of {sorted(STORAGE_DTYPES)}")
        self.max_bytes = max_bytes
        self.dtype = STORAGE_DTYPES[storage]
        self.hot_images = hot_images
        self._items: OrderedDict[str, Entry] = OrderedDict()
        self._hot: OrderedDict[int, tuple[Entry, list[np.ndarray]]] = OrderedDict()
        self._bytes = 0
        self.stats = StoreStats()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, digest: object) -> bool:
        return digest in self._items

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, digest: str) -> Entry | None:
        entry = self._items.get(digest)
        if entry is None:
            self.stats.misses += 1
            return None
        self._items.move_to_end(digest)
        self.stats.hits += 1
        return entry

    def pack(self, arrays: list[np.ndarray]) -> Entry:
        """The encoder's fp32 outputs in the storage precision (a copy the store owns)."""
        return Entry(tuple(np.ascontiguousarray(a, dtype=self.dtype) for a in arrays))

    def put(self, digest: str, entry: Entry) -> int:
        """Keep ``entry``; evict the least recently used until it fits. Returns how many were evicted."""
        if entry.nbytes > self.max_bytes:
            return 0
        old = self._items.pop(digest, None)
        if old is not None:
            self._bytes -= old.nbytes
        self._items[digest] = entry
        self._bytes += entry.nbytes
        evicted = 0
        while self._bytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self._bytes -= dropped.nbytes
            self._hot.pop(id(dropped), None)
            evicted += 1
        self.stats.evictions += evicted
        return evicted

    def hot(self, entry: Entry) -> list[np.ndarray] | None:
        """The decoder's fp32 copies of ``entry`` if they are kept, else None (then ``keep_hot`` them)."""
        found = self._hot.get(id(entry))
        if found is None or found[0] is not entry:
            return None
        self._hot.move_to_end(id(entry))
        return found[1]

    def keep_hot(self, entry: Entry, arrays: list[np.ndarray]) -> None:
        self._hot[id(entry)] = (entry, arrays)
        while len(self._hot) > self.hot_images:
            self._hot.popitem(last=False)

    @property
    def hot_nbytes(self) -> int:
        return sum(int(a.nbytes) for _, arrays in self._hot.values() for a in arrays)

    def clear(self) -> None:
        self._items.clear()
        self._hot.clear()
        self._bytes = 0


class DeviceEmbeddingStore(EmbeddingStore):
    """The same store holding torch tensors on ``device`` (the gpu target's GPU), packed there.

    Packing converts on the device, into tensors the store owns, so nothing
    of an encoder response's buffers is held past the call.
    """

    def __init__(self, max_bytes: int, storage: str, device: Any, hot_images: int = HOT_IMAGES) -> None:
        super().__init__(max_bytes, storage, hot_images)
        import torch

        self.device = device
        self.torch_dtype = {"fp16": torch.float16, "fp32": torch.float32}[storage]

    def pack(self, arrays: list[Any]) -> Entry:
        return Entry(tuple(a.to(self.device, self.torch_dtype, copy=True).contiguous() for a in arrays))
