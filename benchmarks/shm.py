"""System shared memory between the frontend and a Triton on the same machine.

Large tensors (the 12 MiB image, the 16 MiB of embeddings) would otherwise be
serialised into gRPC messages and copied several times; through a registered
shared-memory region Triton reads and writes them in place. Only possible when
Triton runs on this host (the embedded default); the client falls back to plain
gRPC otherwise, or whenever a region is not registered (e.g. Triton restarted).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.utils.shared_memory as shm

log = logging.getLogger("maskserve.shm")


class Slot:
    """One region: tensors are laid out one after the other from offset 0."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.key = f"/{name}"
        self.size = size
        self.handle = shm.create_shared_memory_region(name, self.key, size)

    def write(self, offset: int, array: np.ndarray) -> int:
        """Copy ``array`` in at ``offset``; returns the offset after it."""
        array = np.ascontiguousarray(array)
        if offset + array.nbytes > self.size:
            raise ValueError("tensor does not fit the shared-memory slot")
        shm.set_shared_memory_region(self.handle, [array], offset=offset)
        return offset + array.nbytes

    def read(self, offset: int, dtype: npt.DTypeLike, shape: tuple[int, ...]) -> np.ndarray:
        """A copy (the region is reused as soon as the slot is released)."""
        return np.array(shm.get_contents_as_numpy(self.handle, np.dtype(dtype), shape, offset=offset), copy=True)

    def destroy(self) -> None:
        try:
            shm.destroy_shared_memory_region(self.handle)
        except Exception:  # already gone
            pass


class ShmPool:
    """A fixed number of equal slots, lent to one Triton call at a time."""

    def __init__(self, slots: int, slot_bytes: int) -> None:
        prefix = f"maskserve_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.slots = [Slot(f"{prefix}_{i}", slot_bytes) for i in range(slots)]
        self._free: asyncio.Queue[Slot] = asyncio.Queue()
        for slot in self.slots:
            self._free.put_nowait(slot)
        self.registered = False

    async def register(self, client: Any) -> None:
        """(Re-)register every region with the server."""
        for slot in self.slots:
            try:
                await client.unregister_system_shared_memory(slot.name)
            except Exception:
                pass
            await client.register_system_shared_memory(slot.name, slot.key, slot.size)
        self.registered = True
        log.info("registered %d shared-memory slots of %d MiB with Triton", len(self.slots), self.slots[0].size >> 20)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        slot = await self._free.get()
        try:
            yield slot
        finally:
            self._free.put_nowait(slot)

    def close(self) -> None:
        for slot in self.slots:
            slot.destroy()
