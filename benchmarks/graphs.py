"""The two graphs over gRPC, tensors and all: the model-level benchmarks' client.

The service never sends embeddings over the wire (the session model keeps them
next to the graphs); this client does, on purpose, to measure the encoder's and
the decoder's own throughput through Triton. With a Triton on loopback, tensors
go through registered shared memory so the measurement is of the models, not
of copying 16 MiB messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from benchmarks.shm import ShmPool, Slot
from maskserve.core import signatures as sig
from maskserve.frontend.errors import InferenceUnavailable


class SharedMemoryLost(InferenceUnavailable):
    """Triton no longer knows our shared-memory regions (it restarted): register them again."""


@dataclass(frozen=True)
class Embeddings:
    image_embed: np.ndarray  # [1,256,64,64]
    high_res_feats_0: np.ndarray  # [1,32,256,256]
    high_res_feats_1: np.ndarray  # [1,64,128,128]


log = logging.getLogger("maskserve.triton_client")
SLOT_BYTES = 32 * 1024 * 1024  # the image (12 MiB) plus the embeddings (16 MiB)

_DTYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32"}
MAX_MESSAGE = 256 * 1024 * 1024


T = TypeVar("T")


def _input(name: str, array: np.ndarray) -> grpcaio.InferInput:
    tensor = grpcaio.InferInput(name, list(array.shape), _DTYPES[array.dtype])
    tensor.set_data_from_numpy(np.ascontiguousarray(array))
    return tensor


def is_loopback(url: str) -> bool:
    host = url.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


class TritonClient:
    def __init__(self, url: str, timeout_s: float, shm_slots: int = 0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._pool = ShmPool(shm_slots, SLOT_BYTES) if shm_slots > 0 and is_loopback(url) else None
        self._client = grpcaio.InferenceServerClient(
            url,
            channel_args=[
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.max_receive_message_length", MAX_MESSAGE),
            ],
        )

    async def close(self) -> None:
        if self._pool is not None:
            for slot in self._pool.slots:
                try:
                    await self._client.unregister_system_shared_memory(slot.name)
                except Exception:
                    pass
            self._pool.close()
        await self._client.close()

    async def _shm_ready(self) -> bool:
        """Whether calls can go through shared memory now (registering once if needed)."""
        if self._pool is None:
            return False
        if not self._pool.registered:
            try:
                await self._pool.register(self._client)
            except Exception as exc:  # Triton not there yet: plain gRPC this time
                log.debug("shared memory not registered: %s", exc)
                return False
        return True

    async def _with_slot(self, call: Callable[[Slot], Awaitable[T]], fallback: Callable[[], Awaitable[T]]) -> T:
        """Run ``call(slot)``; if Triton lost our regions (a restart), re-register once."""
        if not await self._shm_ready():
            return await fallback()
        assert self._pool is not None
        async with self._pool.slot() as slot:
            try:
                return await call(slot)
            except SharedMemoryLost:
                self._pool.registered = False
        return await fallback()

    async def _regions_lost(self, slot: Slot | None) -> bool:
        """Ask Triton whether it still knows our region (it forgets them when it restarts)."""
        if slot is None:
            return False
        try:
            status = await self._client.get_system_shared_memory_status(slot.name, client_timeout=5)
        except InferenceServerException:  # unknown region, or Triton away
            return True
        return slot.name not in status.regions

    async def _call(
        self, model: str, inputs: list[Any], outputs: list[Any], version: str = "", slot: Slot | None = None
    ) -> Any:
        try:
            return await asyncio.wait_for(
                self._client.infer(
                    sig.served_name(model, version or 1), inputs, outputs=outputs, client_timeout=self.timeout_s
                ),
                timeout=self.timeout_s + 5,
            )
        except (InferenceServerException, TimeoutError, OSError) as exc:
            if await self._regions_lost(slot):
                raise SharedMemoryLost(f"{model}: {exc}") from exc
            raise InferenceUnavailable(f"{model}: {exc}") from exc

    async def _infer(
        self, model: str, inputs: list[Any], outputs: tuple[str, ...], version: str = "", slot: Slot | None = None
    ) -> list[np.ndarray]:
        result = await self._call(model, inputs, [grpcaio.InferRequestedOutput(n) for n in outputs], version, slot)
        return [result.as_numpy(n) for n in outputs]

    async def encode(self, image: np.ndarray, version: str = "") -> Embeddings:
        """``version`` "" is version 1."""
        outputs = tuple(spec.name for spec in sig.ENCODER_OUTPUTS)

        async def plain() -> Embeddings:
            return Embeddings(*await self._infer(sig.ENCODER_MODEL, [_input("image", image)], outputs, version))

        async def shared(slot: Slot) -> Embeddings:
            offset = slot.write(0, image)
            tensor = grpcaio.InferInput("image", list(image.shape), "FP32")
            tensor.set_shared_memory(slot.name, image.nbytes, 0)
            requested, layout = [], []
            for spec in sig.ENCODER_OUTPUTS:
                shape = (image.shape[0], *spec.dims)
                nbytes = int(np.prod(shape)) * 4
                out = grpcaio.InferRequestedOutput(spec.name)
                out.set_shared_memory(slot.name, nbytes, offset)
                requested.append(out)
                layout.append((offset, shape))
                offset += nbytes
            await self._call(sig.ENCODER_MODEL, [tensor], requested, version, slot)
            return Embeddings(*(slot.read(off, np.float32, shape) for off, shape in layout))

        return await self._with_slot(shared, plain)

    async def decode(
        self,
        emb: Embeddings,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray | None = None,
        version: str = "",
    ) -> tuple[np.ndarray, np.ndarray]:
        """One prompt → all four masks' logits [4,256,256] and IoU predictions [4]."""
        has_mask = mask_input is not None
        mask = mask_input if mask_input is not None else np.zeros((1, 1, 256, 256), np.float32)
        small = [
            _input("point_coords", point_coords[None].astype(np.float32)),
            _input("point_labels", point_labels[None].astype(np.int32)),
            _input("mask_input", mask.astype(np.float32).reshape(1, 1, 256, 256)),
            _input("has_mask_input", np.array([[1.0 if has_mask else 0.0]], np.float32)),
        ]
        big = (
            ("image_embed", emb.image_embed),
            ("high_res_feats_0", emb.high_res_feats_0),
            ("high_res_feats_1", emb.high_res_feats_1),
        )
        outputs = ("low_res_masks", "iou_predictions")

        async def plain() -> list[np.ndarray]:
            return await self._infer(sig.DECODER_MODEL, [_input(n, a) for n, a in big] + small, outputs, version)

        async def shared(slot: Slot) -> list[np.ndarray]:
            inputs, offset = [], 0
            for name, array in big:
                tensor = grpcaio.InferInput(name, list(array.shape), "FP32")
                tensor.set_shared_memory(slot.name, array.nbytes, offset)
                offset = slot.write(offset, array)
                inputs.append(tensor)
            return await self._infer(sig.DECODER_MODEL, inputs + small, outputs, version, slot)

        masks, iou = await self._with_slot(shared, plain)
        return masks[0], iou[0]
