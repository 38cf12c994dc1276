"""A fake model tier for the unit tier (checked by mypy against the ``InferenceClient`` port).

Every behaviour it stands in for is also shown through the real Triton in
tests/integration.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

import numpy as np

from maskserve.core import encodings
from maskserve.core.everything import Candidate
from maskserve.core.prompts import PackedPrompt
from maskserve.core.session_io import SessionAnswer
from maskserve.core.signatures import LOW_RES_MASK_SIZE
from maskserve.core.video_io import VideoAnswer, VideoCall, VideoPrompt
from maskserve.frontend.domain.everything import EverythingJob
from maskserve.frontend.domain.models import ModelInfo
from maskserve.frontend.errors import InferenceUnavailable
from maskserve.frontend.ports import ImageBytes, InferenceClient


class FakeInference:
    """Stands in for the model tier: a mask is a disc of radius 100 (model frame) around the first prompt point.

    Like the session model, it holds the images it has seen (by digest) and
    counts the times it had to "encode" one.
    """

    def __init__(self) -> None:
        self.encodes = 0
        self.decodes = 0
        self.down = False
        self.seen: set[str] = set()
        self.reject: str = ""
        self.versions = {"1"}  # loaded versions; version N draws its disc a little larger than version 1
        self.calls: list[str] = []  # the version of every segment call
        self.prompts: list[list[PackedPrompt]] = []  # the prompt objects of every segment call
        self.per_point_s = 0.0  # segment-everything's speed: a grid that would pass its budget is stopped
        self.delay_s = 0.0  # each segment call's time in the model tier
        self.closed: list[str] = []  # the videos whose model-tier state was freed

    def _check(self) -> None:
        if self.down:
            raise InferenceUnavailable("fake Triton is down")

    async def segment(self, digest: str, image: ImageBytes, prompts: list[PackedPrompt], version: str) -> SessionAnswer:
        self._check()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if version not in self.versions:
            raise InferenceUnavailable(f"version {version} is not loaded")
        self.calls.append(version)
        if self.reject:
            return SessionAnswer(rejected=self.reject)
        encoded = digest not in self.seen
        if encoded:  # as the session model does: asks for the image, which must be the one the digest names
            data = await image()
            if hashlib.sha256(data).hexdigest() != digest:
                return SessionAnswer(rejected="the image sent is not the one its digest names")
            self.encodes += 1
            self.seen.add(digest)
        self.decodes += 1
        self.prompts.append(prompts)
        yy, xx = np.mgrid[0:LOW_RES_MASK_SIZE, 0:LOW_RES_MASK_SIZE]
        radius = 25 + 5 * (int(version) - 1)
        discs = []
        for prompt in prompts:
            cx, cy = prompt.point_coords[0] / 4  # model frame (1024) -> low-res mask (256)
            disc = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < radius**2, 10.0, -10.0).astype(np.float32)
            if prompt.mask_input is not None:  # a refinement: the earlier mask grows by the new disc
                disc = np.maximum(disc, prompt.mask_input.reshape(disc.shape))
            discs.append(disc)
        return SessionAnswer(logits=np.stack(discs), scores=[0.9] * len(discs), encoded=encoded)

    async def everything(self, digest: str, image: ImageBytes, job: EverythingJob, version: str) -> SessionAnswer:
        """Two nested squares and one apart, as the model tier would send them (RLE, boxes, scores)."""
        self._check()
        self.calls.append(version)
        points = job.options.points_per_side**2
        if self.per_point_s and 0.5 + self.per_point_s * points > job.budget_s:
            return SessionAnswer(overrun=(0.5, self.per_point_s), encoded=digest not in self.seen)
        masks = []
        for i, (x0, y0, size) in enumerate([(0, 0, 40), (5, 5, 10), (50, 50, 8)]):
            mask = np.zeros((job.height, job.width), bool)
            mask[y0 : y0 + size, x0 : x0 + size] = True
            box = [x0, y0, min(x0 + size, job.width) - 1, min(y0 + size, job.height) - 1]
            masks.append(Candidate(encodings.rle_encode(mask), box, 0.9 - i / 10, 0.95, i))
        return SessionAnswer(masks=masks, encoded=digest not in self.seen)

    async def video(
        self,
        call: VideoCall,
        frames: Callable[[list[int]], Awaitable[dict[int, bytes]]],
        history: Callable[[], Awaitable[list[VideoPrompt]]],
        version: str,
    ) -> VideoAnswer:
        """Each prompted object's disc around its last click, on every frame (the frames fetched as asked)."""
        self._check()
        self.calls.append(version)
        if call.op == "close":
            self.closed.append(call.video_id)
            return VideoAnswer()
        wanted = [call.prompt.frame] if call.prompt is not None else [call.frame]
        got = await frames(wanted)
        assert sorted(got) == wanted, "the service must hand over the frames asked for"
        prompts = [*(await history()), *([call.prompt] if call.prompt is not None else [])]
        last = {p.object_id: p.coords[-1] for p in prompts}
        ids = [call.prompt.object_id] if call.prompt is not None else sorted(last)
        yy, xx = np.mgrid[0:LOW_RES_MASK_SIZE, 0:LOW_RES_MASK_SIZE]
        discs = [np.where((xx - last[o][0] / 4) ** 2 + (yy - last[o][1] / 4) ** 2 < 25**2, 10.0, -10.0) for o in ids]
        logits = np.stack(discs).astype(np.float32) if discs else np.zeros((0, 256, 256), np.float32)
        return VideoAnswer(
            object_ids=np.array(ids, np.int32),
            logits=logits,
            score=np.full(len(ids), 0.9, np.float32),
            object_score=np.full(len(ids), 5.0, np.float32),
        )

    async def ready_versions(self) -> set[str]:
        self._check()
        return set(self.versions)

    async def model_info(self, version: str) -> list[ModelInfo]:
        self._check()
        return [ModelInfo(name, version, "sam2.1_hiera_tiny", "random (seed 0)") for name in ("enc", "dec", "session")]

    async def close(self) -> None:
        pass


def _conforms(fake: FakeInference) -> InferenceClient:
    return fake  # mypy checks here that the fake keeps the port's signatures
