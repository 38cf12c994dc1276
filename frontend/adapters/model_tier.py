"""The model tier over gRPC: the ``sam2_session`` model on one or several Triton replicas.

Only image digests, prompts, an image's bytes (once, when the replica asks for
them), each prompt object's 256² logits and segment-everything's RLE masks
cross the wire; the embeddings stay in the
replica that computed them. ``sam2_session`` is a decoupled model (so one
instance serves many requests at once), which Triton serves over gRPC
streaming only: each call opens a short stream of one request and reads its
one answer, so an error always belongs to the call that caused it.

Every call has a deadline; any failure to reach a replica or a model surfaces
as ``InferenceUnavailable`` (the services answer 503 and never charge), after
the call has been tried on the image's other replicas in rendezvous order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import grpc
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from maskserve.core import signatures as sig
from maskserve.core.prompts import PackedPrompt
from maskserve.core.session_io import SessionAnswer, SessionRequest
from maskserve.core.video_io import RESTORE, VideoAnswer, VideoCall, VideoPrompt
from maskserve.frontend.adapters.routing import ReplicaSet
from maskserve.frontend.adapters.triton_admin import TritonAdmin
from maskserve.frontend.domain.everything import EverythingJob
from maskserve.frontend.domain.models import ModelInfo
from maskserve.frontend.errors import InferenceUnavailable
from maskserve.frontend.metrics import Metrics
from maskserve.frontend.ports import ImageBytes

MAX_MESSAGE = 64 * 1024 * 1024  # an upload is at most 25 MB
OUTPUTS = tuple(spec.name for spec in sig.SESSION_OUTPUTS)
INPUT_TYPES = {spec.name: spec.triton_dtype.replace("STRING", "BYTES") for spec in sig.SESSION_INPUTS}
VIDEO_OUTPUTS = tuple(spec.name for spec in sig.VIDEO_SESSION_OUTPUTS)
VIDEO_INPUT_TYPES = {spec.name: spec.triton_dtype.replace("STRING", "BYTES") for spec in sig.VIDEO_SESSION_INPUTS}
VIDEO_TIMEOUT_S = 120.0
"""One video call: a frame's encoding and every object's tracking on it (seconds on a 2-core CPU)."""
EVERYTHING_MARGIN_S = 15.0
T = TypeVar("T")


def deadline(request: SessionRequest, timeout_s: float) -> float:
    """A grid stops itself within its budget; the deadline leaves room for its suppression and encoding."""
    if request.everything is None:
        return timeout_s
    return max(timeout_s, request.everything.budget_s + EVERYTHING_MARGIN_S)


def _received_bytes(result: Any) -> int:
    """The answer's size on the wire, roughly: numeric tensors by their bytes, text tensors by their length."""
    total = 0
    for name in OUTPUTS:
        array = result.as_numpy(name)
        total += sum(len(v) for v in array.reshape(-1)) if array.dtype == object else int(array.nbytes)
    return total


class TritonReplica:
    """One Triton server: the session model over streaming gRPC, readiness and provenance over its admin API."""

    def __init__(self, url: str, timeout_s: float, metrics: Metrics) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.video_timeout_s = max(timeout_s, VIDEO_TIMEOUT_S)
        self._sent = metrics.wire.labels("sent")
        self._received = metrics.wire.labels("received")
        self._client = grpcaio.InferenceServerClient(
            url,
            channel_args=[
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.max_receive_message_length", MAX_MESSAGE),
            ],
        )
        self.admin = TritonAdmin(url, self._client)

    async def close(self) -> None:
        await self._client.close()

    def _inputs(self, tensors: dict[str, Any], types: dict[str, str]) -> list[grpcaio.InferInput]:
        inputs = []
        for name, array in tensors.items():
            tensor = grpcaio.InferInput(name, list(array.shape), types[name])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    async def _one(self, model: str, inputs: list[Any], outputs: tuple[str, ...], limit: float) -> Any:
        """One request on a short stream of its own (decoupled models answer over streams only) → its result."""
        call = {
            "model_name": model,
            "inputs": inputs,
            "outputs": [grpcaio.InferRequestedOutput(name) for name in outputs],
            "request_id": uuid.uuid4().hex,
        }

        async def one() -> AsyncIterator[dict[str, Any]]:
            yield call

        stream = self._client.stream_infer(one(), stream_timeout=limit)
        answer: Any = None
        try:
            async with asyncio.timeout(limit + 5):
                # Read to the end: Triton closes the stream after the final response. Cancelling it
                # as soon as the answer arrives left Triton holding the request, and a model version
                # that served under concurrency could then never be unloaded.
                async for result, error in stream:
                    if error is not None:
                        raise InferenceUnavailable(f"{self.url}: {error}")
                    if answer is None:
                        answer = result
        except (InferenceServerException, grpc.aio.AioRpcError, TimeoutError, OSError) as exc:
            stream.cancel()
            raise InferenceUnavailable(f"{self.url}: {exc}") from exc
        if answer is None:
            raise InferenceUnavailable(f"{self.url}: {model} closed the stream without an answer")
        return answer

    async def _ask(self, request: SessionRequest, version: str) -> SessionAnswer:
        inputs = self._inputs(request.tensors(), INPUT_TYPES)
        self._sent.inc(request.nbytes)
        model = sig.served_name(sig.SESSION_MODEL, version)
        result = await self._one(model, inputs, OUTPUTS, deadline(request, self.timeout_s))
        self._received.inc(_received_bytes(result))
        return SessionAnswer.from_tensors(result.as_numpy)

    async def video(self, call: VideoCall, frames: dict[int, bytes], version: str) -> VideoAnswer:
        """One call on the ``sam2_video`` model of ``version`` (its status may ask for more: see ``video_io``)."""
        tensors = call.tensors(frames)
        self._sent.inc(sum(len(f) for f in frames.values()))
        model = sig.served_name(sig.VIDEO_SESSION_MODEL, version)
        result = await self._one(model, self._inputs(tensors, VIDEO_INPUT_TYPES), VIDEO_OUTPUTS, self.video_timeout_s)
        return VideoAnswer.from_tensors(result.as_numpy)

    async def run(self, request: SessionRequest, image: ImageBytes, version: str) -> SessionAnswer:
        """The call's answer; the image's bytes are fetched and travel only when this replica does not hold its
        embeddings."""
        answer = await self._ask(request, version)
        if answer.needs_image:
            answer = await self._ask(replace(request, image=await image()), version)
            answer.encoded = True
        if answer.needs_image:
            raise InferenceUnavailable(f"{self.url}: the session model asked for the image it was given")
        return answer

    async def ready_versions(self) -> set[str]:
        return await self.admin.ready_versions()

    async def model_info(self, version: str) -> list[ModelInfo]:
        return await self.admin.model_info(version)


FrameSource = Callable[[list[int]], Awaitable[dict[int, bytes]]]
"""Frame indices → their stored JPEGs."""
History = Callable[[], Awaitable[list[VideoPrompt]]]
"""The video's recorded prompts, in order."""
VIDEO_ROUNDS = 6


async def _video_on(
    client: TritonReplica, call: VideoCall, source: FrameSource, history: History, version: str
) -> VideoAnswer:
    """``call`` with the frames it names; a ``restore`` answer replays the prompts, a ``frame:k`` one adds frame k."""
    wanted = {call.prompt.frame} if call.prompt is not None else {call.frame}
    if call.begin:  # committing the clicks encodes their frames' memories
        wanted |= {p.frame for p in await history()}
    frames = await source(sorted(wanted))
    for _ in range(VIDEO_ROUNDS):
        answer = await client.video(call, frames, version)
        if answer.status == RESTORE:
            prompts = await history()
            restore = VideoCall("restore", call.video_id, call.frames, prompts=prompts)
            done = await client.video(restore, await source(sorted({p.frame for p in prompts})), version)
            if done.status:
                raise InferenceUnavailable(f"{client.url}: the video could not be restored ({done.status})")
        elif answer.status.startswith("frame:"):
            frames |= await source([int(answer.status.removeprefix("frame:"))])
        else:
            return answer
    raise InferenceUnavailable(f"{client.url}: the video model kept asking for more ({answer.status})")


class ModelTier:
    """Several Triton replicas behind one interface: each image goes to its replica by rendezvous hashing."""

    def __init__(self, urls: list[str], timeout_s: float, metrics: Metrics, retry_after_s: float = 5.0) -> None:
        self.replicas: ReplicaSet[TritonReplica] = ReplicaSet(
            urls, lambda url: TritonReplica(url, timeout_s, metrics), retry_after_s
        )

    async def close(self) -> None:
        for replica in self.replicas.replicas:
            await replica.client.close()

    async def _on_replicas(self, key: str, call: Callable[[TritonReplica], Awaitable[T]]) -> T:
        """``call`` on the key's replicas in rendezvous order until one answers; a failing one is skipped a while."""
        last: InferenceUnavailable | None = None
        for replica in self.replicas.order(key):
            try:
                result = await call(replica.client)
            except InferenceUnavailable as exc:
                self.replicas.failed(replica)
                last = exc
                continue
            self.replicas.succeeded(replica)
            return result
        raise last or InferenceUnavailable("no Triton replica is configured")

    async def segment(self, digest: str, image: ImageBytes, prompts: list[PackedPrompt], version: str) -> SessionAnswer:
        request = SessionRequest(digest, prompts)
        return await self._on_replicas(digest, lambda client: client.run(request, image, version))

    async def everything(self, digest: str, image: ImageBytes, job: EverythingJob, version: str) -> SessionAnswer:
        request = SessionRequest(digest, job.prompts(), everything=job.params())
        return await self._on_replicas(digest, lambda client: client.run(request, image, version))

    async def video(self, call: VideoCall, frames: FrameSource, history: History, version: str) -> VideoAnswer:
        """A call on a video's replica (rendezvous on its id), its state rebuilt there first when it was lost."""
        return await self._on_replicas(call.video_id, lambda client: _video_on(client, call, frames, history, version))

    async def ready_versions(self) -> set[str]:
        """Asked of the first replica (in a fixed order) that answers."""
        return await self._on_replicas("", lambda client: client.ready_versions())

    async def latest_ready_version(self) -> str:
        """The newest version every model has READY (what an unpinned request uses when none is promoted)."""
        ready = await self.ready_versions()
        if not ready:
            raise InferenceUnavailable("no model version is loaded in every model")
        return max(ready, key=int)

    async def model_info(self, version: str) -> list[ModelInfo]:
        return await self._on_replicas("", lambda client: client.model_info(version))
