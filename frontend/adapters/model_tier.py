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
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from maskserve.core import signatures as sig
from maskserve.core.prompts import PackedPrompt, stack_prompts
from maskserve.frontend.adapters.routing import ReplicaSet
from maskserve.frontend.domain import EverythingJob, ModelInfo, Segmentation
from maskserve.frontend.errors import InferenceUnavailable
from maskserve.frontend.metrics import Metrics

MAX_MESSAGE = 64 * 1024 * 1024  # an upload is at most 25 MB
OUTPUTS = tuple(spec.name for spec in sig.SESSION_OUTPUTS)
EVERYTHING_MARGIN_S = 15.0
T = TypeVar("T")


@dataclass(frozen=True)
class SessionCall:
    """What one request to ``sam2_session`` carries: prompt objects, or a grid with segment-everything's filters."""

    prompts: list[PackedPrompt]
    everything: list[float] | None = None
    budget_s: float = 0.0  # segment-everything: how long the model tier may take (it stops a grid that would not fit)

    def deadline(self, timeout_s: float) -> float:
        """A grid stops itself within its budget; the deadline leaves room for its suppression and encoding."""
        return timeout_s if self.everything is None else max(timeout_s, self.budget_s + EVERYTHING_MARGIN_S)


def _tensor(name: str, array: np.ndarray, dtype: str) -> grpcaio.InferInput:
    tensor = grpcaio.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


class TritonReplica:
    """One Triton server: the session model over streaming gRPC, readiness and provenance over unary calls."""

    def __init__(self, url: str, timeout_s: float, metrics: Metrics) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._sent = metrics.wire.labels("sent")
        self._received = metrics.wire.labels("received")
        self._client = grpcaio.InferenceServerClient(
            url,
            channel_args=[
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.max_receive_message_length", MAX_MESSAGE),
            ],
        )

    async def close(self) -> None:
        await self._client.close()

    def _inputs(self, digest: str, image: bytes | None, call: SessionCall) -> list[grpcaio.InferInput]:
        prompts = call.prompts
        coords, labels, masks = stack_prompts(prompts)
        inputs = [
            _tensor("digest", np.array([digest.encode()], np.object_), "BYTES"),
            _tensor("point_coords", coords, "FP32"),
            _tensor("point_labels", labels, "INT32"),
            _tensor("multimask", np.array([p.multimask for p in prompts], np.bool_), "BOOL"),
        ]
        if image is not None:
            inputs.append(_tensor("image", np.array([image], np.object_), "BYTES"))
        if masks is not None:
            inputs.append(_tensor("mask_input", masks, "FP32"))
        if call.everything is not None:
            inputs.append(_tensor("everything", np.asarray(call.everything, np.float32), "FP32"))
        size = sum(p.nbytes for p in prompts)
        self._sent.inc(len(digest) + (len(image) if image is not None else 0) + size)
        return inputs

    async def _ask(self, digest: str, image: bytes | None, call: SessionCall, version: str) -> Segmentation:
        request = {
            "model_name": sig.SESSION_MODEL,
            "model_version": version,
            "inputs": self._inputs(digest, image, call),
            "outputs": [grpcaio.InferRequestedOutput(name) for name in OUTPUTS],
            "request_id": uuid.uuid4().hex,
        }

        async def one() -> AsyncIterator[dict[str, Any]]:
            yield request

        deadline = call.deadline(self.timeout_s)
        stream = self._client.stream_infer(one(), stream_timeout=deadline)
        answer: Segmentation | None = None
        try:
            async with asyncio.timeout(deadline + 5):
                # Read to the end: Triton closes the stream after the final response. Cancelling it
                # as soon as the answer arrives left Triton holding the request, and a model version
                # that served under concurrency could then never be unloaded.
                async for result, error in stream:
                    if error is not None:
                        raise InferenceUnavailable(f"{self.url}: {error}")
                    if answer is None:
                        answer = self._answer(result)
        except (InferenceServerException, grpc.aio.AioRpcError, TimeoutError, OSError) as exc:
            stream.cancel()
            raise InferenceUnavailable(f"{self.url}: {exc}") from exc
        if answer is None:
            raise InferenceUnavailable(f"{self.url}: the session model closed the stream without an answer")
        return answer

    def _answer(self, result: Any) -> Segmentation:
        logits = result.as_numpy("low_res_logits")
        masks = result.as_numpy("masks").reshape(-1)[0]
        self._received.inc(int(logits.nbytes) + len(masks) + 16)
        rejected = result.as_numpy("rejected").reshape(-1)[0]
        before_s, per_point_s = (float(v) for v in result.as_numpy("overrun").reshape(-1)[:2])
        return Segmentation(
            needs_image=bool(result.as_numpy("needs_image").reshape(-1)[0]),
            rejected=rejected.decode() if isinstance(rejected, bytes) else str(rejected),
            logits=logits.reshape(-1, sig.LOW_RES_MASK_SIZE, sig.LOW_RES_MASK_SIZE),
            scores=[float(v) for v in result.as_numpy("score").reshape(-1)],
            masks=json.loads(masks) if masks else None,
            overrun=(before_s, per_point_s) if per_point_s > 0 else None,
        )

    async def run(self, digest: str, image: bytes, call: SessionCall, version: str) -> Segmentation:
        """The call's answer; the image's bytes travel only when this replica does not hold its embeddings."""
        answer = await self._ask(digest, None, call, version)
        if answer.needs_image:
            answer = await self._ask(digest, image, call, version)
            answer.encoded = True
        if answer.needs_image:
            raise InferenceUnavailable(f"{self.url}: the session model asked for the image it was given")
        return answer

    async def ready_versions(self) -> set[str]:
        """The versions every model has READY."""
        try:
            common: set[str] | None = None
            for model in sig.LIFECYCLE_MODELS:
                meta = await self._client.get_model_metadata(model, client_timeout=5)
                ready = set(meta.versions)
                common = ready if common is None else common & ready
        except (InferenceServerException, grpc.aio.AioRpcError) as exc:
            raise InferenceUnavailable(f"{self.url}: {exc}") from exc
        return common or set()

    async def model_info(self, version: str) -> list[ModelInfo]:
        """Readiness and provenance of ``version`` of every model; raises if one is not ready."""
        infos = []
        try:
            for model in sig.LIFECYCLE_MODELS:
                if not await self._client.is_model_ready(model, version, client_timeout=5):
                    raise InferenceUnavailable(f"{self.url}: {model} version {version} is not ready")
                config = (await self._client.get_model_config(model, client_timeout=5)).config
                params = {k: v.string_value for k, v in config.parameters.items()}
                infos.append(
                    ModelInfo(
                        name=model,
                        version=version,
                        variant=params.get(f"maskserve_model_v{version}", params.get("maskserve_model", "unknown")),
                        weights=params.get(f"maskserve_weights_v{version}", params.get("maskserve_weights", "unknown")),
                    )
                )
        except (InferenceServerException, grpc.aio.AioRpcError) as exc:
            raise InferenceUnavailable(f"{self.url}: {exc}") from exc
        return infos


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

    async def segment(self, digest: str, image: bytes, prompts: list[PackedPrompt], version: str) -> Segmentation:
        call = SessionCall(prompts)
        return await self._on_replicas(digest, lambda client: client.run(digest, image, call, version))

    async def everything(self, digest: str, image: bytes, job: EverythingJob, version: str) -> Segmentation:
        call = SessionCall(job.prompts(), job.params(), job.budget_s)
        return await self._on_replicas(digest, lambda client: client.run(digest, image, call, version))

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
