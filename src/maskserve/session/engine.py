"""One prompt on one image: embeddings from the store (or the encoder, once per image), then the decoder.

The engine is plain asyncio over three callables (preprocess, encode,
decode), so the Triton model wraps it with BLS calls and the tests drive it
with fakes or with the real graphs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from maskserve.core.images import ImageRejected
from maskserve.core.masks import select_mask
from maskserve.core.prompts import PackedPrompt
from maskserve.session.store import EmbeddingStore, Entry


@dataclass(frozen=True)
class Outcome:
    """What the model tier answers: a mask, or that it needs the image, or why the image was refused."""

    needs_image: bool = False
    rejected: str = ""
    logits: np.ndarray | None = None  # [256, 256] float32, the chosen mask
    score: float = 0.0
    encoded: bool = False  # this call ran the encoder


NEEDS_IMAGE = Outcome(needs_image=True)

Preprocess = Callable[[bytes], np.ndarray]
Encode = Callable[[np.ndarray], Awaitable[list[np.ndarray]]]
Decode = Callable[[Entry, PackedPrompt], Awaitable[tuple[np.ndarray, np.ndarray]]]


class SessionEngine:
    def __init__(
        self,
        store: EmbeddingStore,
        preprocess: Preprocess,
        encode: Encode,
        decode: Decode,
        executor: Executor | None = None,
    ) -> None:
        self.store = store
        self._preprocess = preprocess
        self._encode = encode
        self._decode = decode
        self._executor = executor
        self._inflight: dict[str, asyncio.Future[Entry]] = {}

    async def _embed(self, digest: str, image: bytes) -> Entry:
        loop = asyncio.get_running_loop()
        tensor = await loop.run_in_executor(self._executor, self._preprocess, image)
        outputs = await self._encode(tensor)
        entry = await loop.run_in_executor(self._executor, self.store.pack, outputs)
        self.store.put(digest, entry)
        return entry

    async def embeddings(self, digest: str, image: bytes | None) -> tuple[Entry | None, bool]:
        """(the image's embeddings or None when they are unknown and no image came, whether this call encoded)."""
        entry = self.store.get(digest)
        if entry is not None:
            return entry, False
        pending = self._inflight.get(digest)
        if pending is not None:  # another request is encoding this image now: share its result
            return await asyncio.shield(pending), False
        if image is None:
            return None, False
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            entry = await self._embed(digest, image)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        finally:
            self._inflight.pop(digest, None)
        future.set_result(entry)
        return entry, True

    async def segment(self, digest: str, image: bytes | None, prompt: PackedPrompt) -> Outcome:
        try:
            entry, encoded = await self.embeddings(digest, image)
        except ImageRejected as exc:
            return Outcome(rejected=exc.message)
        if entry is None:
            return NEEDS_IMAGE
        masks, iou = await self._decode(entry, prompt)
        logits, score = select_mask(masks, iou, prompt.multimask)
        return Outcome(logits=np.ascontiguousarray(logits, np.float32), score=score, encoded=encoded)
