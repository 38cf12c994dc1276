"""Triton python-backend model ``sam2_session``: image embeddings resident next to the models.

The exporter copies this file into every version of the session model
(``sam2_session_v<N>``, see ``signatures.served_name``) as its ``model.py``. It is
decoupled with an ``async`` execute, so one instance serves many requests at
once: a prompt on a cached image is decoded while another request waits for
its image to be encoded. For each request it takes an image digest and its
packed prompts (plus, only when asked for, the image's bytes), finds the
embeddings in its store or has the encoder model compute them (once per image,
however many requests for it arrive together), calls the decoder model, picks
each mask as SAM 2's predictor does, and answers with their 256² logits and
scores. The encoder and decoder stay separate Triton models with their own
dynamic batching; this model reaches them through BLS as the graphs of its own
version (``sam2_image_encoder_v<N>``, ``sam2_prompt_decoder_v<N>``), so each
version keeps its own embeddings and unloading a version frees them.

Parameters (``config.pbtxt``): ``cache_bytes`` (the store's bound),
``storage`` (``fp16`` default, or ``fp32``), ``preprocess_threads``,
``decoder_batch`` (prompts per decoder call: the decoder's max batch size),
``decoder_holds_images`` (``true`` on the cpu target: a prompt names its image by
digest and the decoder, which keeps the last images' embeddings, is sent them
only when it answers ``sig.NOT_HELD``; see ``maskserve.session.held``),
``embeddings_memory``: ``host`` (the cpu target: numpy arrays in host memory)
or ``device`` (the gpu target: the store holds torch tensors on the GPU the
graphs run on, and the embeddings pass from the encoder's outputs into the
store and from the store into the decoder's inputs through DLPack, never
through host memory; only the prompts go in and the small masks come out).
Without a GPU, ``device`` runs the same code on torch CPU tensors.

A request carries 1-16 prompt objects (decoded in one batched call) and gets
each one's chosen mask; or, with the ``everything`` input, a grid of points
for segment-everything, answered with the filtered masks as COCO RLE, or,
when the grid would take longer than the request's budget, stopped after its
first batches with the measured speed (``overrun``).
Custom metrics on Triton's metrics port: ``maskserve_session_cache_hits``,
``…_misses``, ``…_evictions``, ``…_encodes``, ``…_bytes`` and ``…_entries``.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from maskserve.core import signatures as sig
from maskserve.core.images import encoder_input
from maskserve.core.prompts import PackedPrompt, stack_prompts
from maskserve.core.session_io import SessionRequest
from maskserve.session.engine import SessionEngine
from maskserve.session.store import DeviceEmbeddingStore, EmbeddingStore, Entry

EMBEDDINGS = tuple(spec.name for spec in sig.ENCODER_OUTPUTS)
MASK_INPUT = (1, sig.LOW_RES_MASK_SIZE, sig.LOW_RES_MASK_SIZE)
DECODER_OUTPUTS = tuple(spec.name for spec in sig.DECODER_OUTPUTS)


def _param(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return value if value not in (None, "") else default


def _optional(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class _Metrics:
    def __init__(self, model: str, version: str) -> None:
        labels = {"model": model, "version": version}
        self._families: list[Any] = []  # a family must outlive its metrics

        def family(name: str, text: str, kind: Any) -> Any:
            created = pb_utils.MetricFamily(name=f"maskserve_session_{name}", description=text, kind=kind)
            self._families.append(created)
            return created.Metric(labels=labels)

        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        self.hits = family("cache_hits", "Prompts whose image embeddings were in the store", counter)
        self.misses = family("cache_misses", "Prompts whose image embeddings were not in the store", counter)
        self.evictions = family("cache_evictions", "Images evicted from the store to stay within its bound", counter)
        self.encodes = family("encodes", "Encoder calls made by the session model", counter)
        self.bytes = family("cache_bytes", "Bytes of embeddings held", gauge)
        self.entries = family("cache_entries", "Images whose embeddings are held", gauge)
        self.limit = family("cache_limit_bytes", "The store's bound (the version's cache_bytes)", gauge)
        self._seen = (0, 0, 0)

    def update(self, store: EmbeddingStore, encodes: int) -> None:
        stats = store.stats
        now = (stats.hits, stats.misses, stats.evictions)
        for metric, new, old in zip((self.hits, self.misses, self.evictions), now, self._seen, strict=True):
            if new > old:
                metric.increment(new - old)
        self._seen = now
        self.encodes.increment(encodes)
        self.bytes.set(store.nbytes)
        self.entries.set(len(store))

    def emptied(self) -> None:
        self.bytes.set(0)
        self.entries.set(0)


class _HostMemory:
    """The cpu target's tensors: numpy arrays in host memory."""

    def __init__(self) -> None:  # the backend's utilities are complete only once the stub runs
        self.preferred = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)

    def store(self, max_bytes: int, storage: str) -> EmbeddingStore:
        return EmbeddingStore(max_bytes, storage)

    def tensor(self, name: str, array: Any) -> Any:
        return pb_utils.Tensor(name, array)

    def output(self, tensor: Any) -> Any:
        return tensor.as_numpy()

    def widened(self, arrays: tuple[Any, ...]) -> list[Any]:
        return [np.asarray(array, np.float32) for array in arrays]

    def repeated(self, array: Any, count: int) -> Any:
        """One image's tensor once per item (the decoder's batch dimension runs over all its inputs)."""
        return np.ascontiguousarray(np.broadcast_to(array, (count, *array.shape[1:])))

    def host(self, array: Any) -> np.ndarray:
        return np.asarray(array)


class _DeviceMemory:
    """The gpu target's tensors: torch tensors on the graphs' GPU, exchanged with Triton through DLPack."""

    def __init__(self) -> None:
        import torch  # only this mode needs it (it is in the container image and the CPU environment)

        self.torch = torch
        on_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
        kind = pb_utils.TRITONSERVER_MEMORY_GPU if on_gpu else pb_utils.TRITONSERVER_MEMORY_CPU
        self.preferred = pb_utils.PreferredMemory(kind, 0)

    def store(self, max_bytes: int, storage: str) -> EmbeddingStore:
        return DeviceEmbeddingStore(max_bytes, storage, self.device)

    def tensor(self, name: str, array: Any) -> Any:
        if isinstance(array, np.ndarray):  # the prompts, built on the host (a few kB)
            return pb_utils.Tensor(name, array)
        return pb_utils.Tensor.from_dlpack(name, self.torch.utils.dlpack.to_dlpack(array.contiguous()))

    def output(self, tensor: Any) -> Any:
        return self.torch.utils.dlpack.from_dlpack(tensor.to_dlpack())

    def widened(self, arrays: tuple[Any, ...]) -> list[Any]:
        return [array.float() for array in arrays]

    def repeated(self, array: Any, count: int) -> Any:
        return array if count == 1 else array.expand(count, *array.shape[1:]).contiguous()

    def host(self, array: Any) -> np.ndarray:
        return array if isinstance(array, np.ndarray) else array.cpu().numpy()


class _NotHeld(Exception):
    """The decoder no longer holds the image's embeddings (``sig.NOT_HELD``)."""


MEMORIES: dict[str, type[_HostMemory] | type[_DeviceMemory]] = {"host": _HostMemory, "device": _DeviceMemory}


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        served = sig.release_of(config["name"])
        if served is None:
            raise pb_utils.TritonModelException(f"{config['name']}: not a served name (sam2_session_v<N>)")
        self.version = served[1]
        storage = _param(config, "storage", "fp16")
        memory = _param(config, "embeddings_memory", "host")
        if memory not in MEMORIES:
            raise pb_utils.TritonModelException(f"embeddings_memory {memory!r}: choose one of {sorted(MEMORIES)}")
        self.memory: _HostMemory | _DeviceMemory = MEMORIES[memory]()
        self.store = self.memory.store(int(_param(config, "cache_bytes", str(1 << 30))), storage)
        threads = int(_param(config, "preprocess_threads", "2"))
        self.decoder_batch = int(_param(config, "decoder_batch", "16"))
        # the decoder keeps the last images' host arrays (cpu target); device memory passes them by DLPack
        holds = _param(config, "decoder_holds_images", "false") == "true"
        self.holds_images = holds and isinstance(self.memory, _HostMemory)
        self.pool = ThreadPoolExecutor(threads, "session")
        self.engine = SessionEngine(
            self.store, encoder_input, self._encode, self._decode, self.pool, points_per_batch=self.decoder_batch
        )
        self.encoder = sig.served_name(sig.ENCODER_MODEL, self.version)
        self.decoder = sig.served_name(sig.DECODER_MODEL, self.version)
        self.metrics = _Metrics(sig.SESSION_MODEL, self.version)
        self.metrics.limit.set(self.store.max_bytes)
        where = f"{memory} memory" + (f" ({self.memory.device})" if isinstance(self.memory, _DeviceMemory) else "")
        pb_utils.Logger.log_info(
            f"{config['name']}: embedding store of {self.store.max_bytes >> 20} MiB, {storage} storage in {where}"
        )

    async def _call(self, model: str, inputs: list[Any], outputs: tuple[str, ...]) -> list[Any]:
        request = pb_utils.InferenceRequest(
            model_name=model,
            requested_output_names=list(outputs),
            inputs=inputs,
            preferred_memory=self.memory.preferred,  # the graphs' outputs come back where the store keeps them
        )
        response = await request.async_exec()
        if response.has_error():
            message = response.error().message()
            if sig.NOT_HELD in message:
                raise _NotHeld(message)
            raise pb_utils.TritonModelException(f"{model}: {message}")
        return [self.memory.output(pb_utils.get_output_tensor_by_name(response, name)) for name in outputs]

    async def _encode(self, image: np.ndarray) -> list[Any]:
        return await self._call(self.encoder, [pb_utils.Tensor("image", image)], EMBEDDINGS)

    async def _widened(self, entry: Entry) -> list[Any]:
        """The decoder's fp32 inputs, kept by the store for the last images used (see ``EmbeddingStore.hot``)."""
        kept = self.store.hot(entry)
        if kept is not None:
            return kept
        arrays = await asyncio.get_running_loop().run_in_executor(self.pool, self.memory.widened, entry.arrays)
        self.store.keep_hot(entry, arrays)
        return arrays

    async def _decode(self, digest: str, entry: Entry, prompts: list[PackedPrompt]) -> tuple[np.ndarray, np.ndarray]:
        """The prompts in decoder calls of at most ``decoder_batch`` items (one call for up to 16 objects)."""
        parts = [prompts[i : i + self.decoder_batch] for i in range(0, len(prompts), self.decoder_batch)]
        answers = await asyncio.gather(*(self._decode_batch(digest, entry, part) for part in parts))
        masks = [self.memory.host(a[0]) for a in answers]  # only the 256² logits and scores leave the device
        return np.concatenate(masks), np.concatenate([self.memory.host(a[1]) for a in answers])

    async def _decode_batch(self, digest: str, entry: Entry, prompts: list[PackedPrompt]) -> list[Any]:
        """One decoder call; where the decoder holds images, the embeddings go only when it lacks them."""
        count = len(prompts)
        coords, labels, masks = stack_prompts(prompts)
        has_mask = np.array([[float(p.mask_input is not None)] for p in prompts], np.float32)
        inputs = [
            pb_utils.Tensor("point_coords", coords),
            pb_utils.Tensor("point_labels", labels),
            pb_utils.Tensor("mask_input", masks if masks is not None else np.zeros((count, *MASK_INPUT), np.float32)),
            pb_utils.Tensor("has_mask_input", has_mask),
        ]
        if self.holds_images:
            key = np.full((count, 1), digest.encode(), dtype=np.object_)
            inputs.append(pb_utils.Tensor(sig.IMAGE_KEY, key))
            try:
                return await self._call(self.decoder, inputs, DECODER_OUTPUTS)
            except _NotHeld:  # evicted there, or a restarted decoder: send them once more
                pass
        arrays = await self._widened(entry)
        inputs += [
            self.memory.tensor(name, self.memory.repeated(array, count))
            for name, array in zip(EMBEDDINGS, arrays, strict=True)
        ]
        return await self._call(self.decoder, inputs, DECODER_OUTPUTS)

    async def _answer(self, request: Any) -> Any:
        call = SessionRequest.from_tensors(lambda name: _optional(request, name))
        if call.everything is not None:
            answer = await self.engine.everything(call.digest, call.image, call.prompts, call.everything)
        else:
            answer = await self.engine.segment(call.digest, call.image, call.prompts)
        self.metrics.update(self.store, int(answer.encoded))
        tensors = answer.tensors()
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, a) for n, a in tensors.items()])

    async def _handle(self, request: Any) -> None:
        sender = request.get_response_sender()
        try:
            response = await self._answer(request)
        except Exception as exc:  # one failed request fails only itself
            response = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"sam2_session: {exc}"))
        sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    async def execute(self, requests: list[Any]) -> None:
        await asyncio.gather(*(self._handle(request) for request in requests))

    def finalize(self) -> None:
        """Unloaded: free the version's embeddings (its stub process then exits) and say so on the metrics.

        The metric families stay: Triton shares a family between the models
        that create it, and deleting it would drop the other versions' series.
        """
        self.store.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.metrics.emptied()
