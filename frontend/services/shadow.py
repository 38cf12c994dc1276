"""Shadow traffic: a copy of a served prompt sent to a candidate version, compared (IoU), never billed."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from maskserve.core.prompts import PackedPrompt
from maskserve.frontend import imaging
from maskserve.frontend.domain.models import Route, ShadowResult
from maskserve.frontend.errors import InferenceUnavailable
from maskserve.frontend.services.base import Deps, Service
from maskserve.frontend.services.preparation import Prepared
from maskserve.frontend.services.routing import ModelRouting

log = logging.getLogger("maskserve.frontend")
SHADOW_CONCURRENCY = 4
"""Shadow copies running at once; past it a sampled prompt is not shadowed (counted as skipped)."""


class Shadows(Service):
    def __init__(self, deps: Deps, routing: ModelRouting) -> None:
        super().__init__(deps)
        self.routing = routing
        self.inference = deps.inference
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, prep: Prepared, packed: list[PackedPrompt], served: np.ndarray, route: Route) -> None:
        """Send a copy of the prompt to the candidate in the background; never delays or changes the answer."""
        candidate = route.shadow
        assert candidate is not None
        if len(self._tasks) >= SHADOW_CONCURRENCY:
            self.metrics.shadow.labels(candidate, "skipped").inc()
            return
        task = asyncio.ensure_future(self._compare(prep, packed, served, route.version, candidate))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compare(
        self, prep: Prepared, packed: list[PackedPrompt], served: np.ndarray, baseline: str, candidate: str
    ) -> None:
        started = time.perf_counter()
        iou, error = None, None
        with self.routing.running([candidate]):
            try:
                answer = await self.inference.segment(prep.digest, prep.load, packed, candidate)
                if answer.rejected or answer.logits is None or not len(answer.logits):
                    raise InferenceUnavailable(answer.rejected or "the model tier answered without a mask")
                iou = await self.cpu(imaging.mask_iou, served, answer.logits[0], prep.height, prep.width)
            except InferenceUnavailable as exc:
                error = str(exc)
            except Exception as exc:
                log.exception("shadow of job %s on version %s failed", prep.job.id, candidate)
                error = f"{type(exc).__name__}: {exc}"
        result = ShadowResult(candidate, baseline, iou, (time.perf_counter() - started) * 1000, error)
        self.metrics.shadow.labels(candidate, "error" if error else "compared").inc()
        if iou is not None:
            self.metrics.shadow_iou.labels(candidate, baseline).observe(iou)
        try:
            await self.store.record_shadow(result)
        except Exception as exc:  # a comparison is worth less than the store's other work
            log.warning("could not record a shadow comparison: %s", exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
