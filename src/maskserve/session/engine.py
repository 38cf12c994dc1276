"""Prompts on one image: embeddings from the store (or the encoder, once per image), then the decoder.

The engine is plain asyncio over three callables (preprocess, encode,
decode), so the Triton model wraps it with BLS calls and the tests drive it
with fakes or with the real graphs. A request carries one or several prompt
objects (decoded together), or a grid of points for segment-everything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from functools import partial

import numpy as np

from maskserve.core import everything
from maskserve.core.images import ImageRejected
from maskserve.core.masks import select_mask
from maskserve.core.prompts import PackedPrompt
from maskserve.core.session_io import EverythingParams, SessionAnswer
from maskserve.session.store import EmbeddingStore, Entry

Preprocess = Callable[[bytes], np.ndarray]
Encode = Callable[[np.ndarray], Awaitable[list[np.ndarray]]]
Decode = Callable[[str, Entry, list[PackedPrompt]], Awaitable[tuple[np.ndarray, np.ndarray]]]
"""Prompts on one image (its digest and embeddings) → [P, 4, 256, 256] logits and [P, 4] predicted IoU."""


JUDGE_AFTER = 2
"""Decoder batches measured before a grid's duration is projected (the first can carry warm-up)."""


class SessionEngine:
    def __init__(
        self,
        store: EmbeddingStore,
        preprocess: Preprocess,
        encode: Encode,
        decode: Decode,
        executor: Executor | None = None,
        points_per_batch: int = 16,
    ) -> None:
        self.store = store
        self._preprocess = preprocess
        self._encode = encode
        self._decode = decode
        self._executor = executor
        self.points_per_batch = points_per_batch
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

    async def _entry(self, digest: str, image: bytes | None) -> tuple[Entry | None, bool, str]:
        try:
            entry, encoded = await self.embeddings(digest, image)
        except ImageRejected as exc:
            return None, False, exc.message
        return entry, encoded, ""

    async def segment(self, digest: str, image: bytes | None, prompts: list[PackedPrompt]) -> SessionAnswer:
        """Each prompt object's chosen mask, from one batched decoder call."""
        entry, encoded, rejected = await self._entry(digest, image)
        if rejected:
            return SessionAnswer(rejected=rejected)
        if entry is None:
            return SessionAnswer(needs_image=True)
        masks, iou = await self._decode(digest, entry, prompts)
        chosen = [select_mask(m, s, p.multimask) for m, s, p in zip(masks, iou, prompts, strict=True)]
        logits = np.stack([np.clip(c[0], -32.0, 32.0) for c in chosen]).astype(np.float32)
        return SessionAnswer(logits=logits, scores=[float(c[1]) for c in chosen], encoded=encoded)

    async def everything(
        self, digest: str, image: bytes | None, prompts: list[PackedPrompt], params: EverythingParams
    ) -> SessionAnswer:
        """SAM's automatic mask generation up to its box NMS, next to the embeddings.

        The grid goes to the decoder ``points_per_batch`` points at a time, two
        batches in flight, so the decoder's queue never runs dry while the
        candidates of the last batch are filtered at the image's size. After
        each batch the grid's duration is projected from the measured speed;
        one that would pass the request's budget is stopped there, and the
        answer says how fast this deployment went (``SessionAnswer.overrun``).
        """
        started = time.monotonic()
        entry, encoded, rejected = await self._entry(digest, image)
        if rejected:
            return SessionAnswer(rejected=rejected)
        if entry is None:
            return SessionAnswer(needs_image=True)
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(2)
        size = self.points_per_batch

        async def batch(start: int) -> tuple[int, list[everything.Candidate]]:
            async with slots:
                masks, iou = await self._decode(digest, entry, prompts[start : start + size])
            found = await loop.run_in_executor(
                self._executor,
                partial(
                    everything.candidates,
                    masks[:, 1:],
                    iou[:, 1:],
                    start,
                    params.height,
                    params.width,
                    params.pred_iou_thresh,
                    params.stability_score_thresh,
                ),
            )
            return len(masks), found

        total = len(prompts)
        grid_start = time.monotonic()
        before = grid_start - started
        tasks = [asyncio.ensure_future(batch(s)) for s in range(0, total, size)]
        found: list[everything.Candidate] = []
        done_points = 0
        try:
            for finished, next_batch in enumerate(asyncio.as_completed(tasks), start=1):
                points, part = await next_batch
                found.extend(part)
                done_points += points
                per_point = (time.monotonic() - grid_start) / done_points
                if done_points < total and finished >= JUDGE_AFTER and before + per_point * total > params.budget_s:
                    return SessionAnswer(encoded=encoded, overrun=(before, per_point))
        finally:
            for task in tasks:
                task.cancel()
        found.sort(key=lambda c: c.prompt)  # grid order, whichever batch finished first
        kept = await loop.run_in_executor(self._executor, everything.suppress, found)
        return SessionAnswer(masks=kept, encoded=encoded)
