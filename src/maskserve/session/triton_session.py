"""Triton python-backend model ``sam2_session``: image embeddings resident next to the models.

The exporter copies this file into every version directory of the
``sam2_session`` model as its ``model.py``. It is
decoupled with an ``async`` execute, so one instance serves many requests at
once: a prompt on a cached image is decoded while another request waits for
its image to be encoded. For each request it takes an image digest and its
packed prompts (plus, only when asked for, the image's bytes), finds the
embeddings in its store or has the encoder model compute them (once per image,
however many requests for it arrive together), calls the decoder model, picks
each mask as SAM 2's predictor does, and answers with their 256² logits and
scores. The encoder and decoder stay separate Triton models with their own
dynamic batching; this model reaches them through BLS at its own version, so
each version keeps its own embeddings and unloading a version frees them.

Parameters (``config.pbtxt``): ``cache_bytes`` (the store's bound),
``storage`` (``fp16`` default, or ``fp32``), ``preprocess_threads``,
``decoder_batch`` (prompts per decoder call: the decoder's max batch size).

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
from maskserve.session.store import EmbeddingStore, Entry

EMBEDDINGS = tuple(spec.name for spec in sig.ENCODER_OUTPUTS)
MASK_INPUT = (1, sig.LOW_RES_MASK_SIZE, sig.LOW_RES_MASK_SIZE)
DECODER_OUTPUTS = tuple(spec.name for spec in sig.DECODER_OUTPUTS)


def _param(config: dict[str, Any], key: str, default: str, version: str) -> str:
    """This version's own value (``key_v<version>``, see maskserve.triton.config), else the model's."""
    params = config.get("parameters", {})
    value = params.get(f"{key}_v{version}", params.get(key, {})).get("string_value")
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


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        self.version = int(args["model_version"])
        version = args["model_version"]
        storage = _param(config, "storage", "fp16", version)
        self.store = EmbeddingStore(int(_param(config, "cache_bytes", str(1 << 30), version)), storage)
        threads = int(_param(config, "preprocess_threads", "2", version))
        self.decoder_batch = int(_param(config, "decoder_batch", "16", version))
        self.pool = ThreadPoolExecutor(threads, "session")
        self.engine = SessionEngine(
            self.store, encoder_input, self._encode, self._decode, self.pool, points_per_batch=self.decoder_batch
        )
        self.metrics = _Metrics(config["name"], args["model_version"])
        self.metrics.limit.set(self.store.max_bytes)
        pb_utils.Logger.log_info(
            f"{config['name']} v{self.version}: embedding store of {self.store.max_bytes >> 20} MiB, {storage} storage"
        )

    async def _call(self, model: str, inputs: list[Any], outputs: tuple[str, ...]) -> list[np.ndarray]:
        request = pb_utils.InferenceRequest(
            model_name=model,
            model_version=self.version,
            requested_output_names=list(outputs),
            inputs=inputs,
            # the store lives in host memory on both targets (on the gpu target the graphs' outputs come back)
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
        )
        response = await request.async_exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"{model} v{self.version}: {response.error().message()}")
        return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]

    async def _encode(self, image: np.ndarray) -> list[np.ndarray]:
        return await self._call(sig.ENCODER_MODEL, [pb_utils.Tensor("image", image)], EMBEDDINGS)

    async def _widened(self, entry: Entry) -> list[np.ndarray]:
        """The decoder's fp32 inputs, kept by the store for the last images used (see ``EmbeddingStore.hot``)."""
        arrays = self.store.hot(entry)
        if arrays is None:
            arrays = await asyncio.get_running_loop().run_in_executor(self.pool, _as_fp32, entry.arrays)
            self.store.keep_hot(entry, arrays)
        return arrays

    async def _decode(self, entry: Entry, prompts: list[PackedPrompt]) -> tuple[np.ndarray, np.ndarray]:
        """The prompts in decoder calls of at most ``decoder_batch`` items (one call for up to 16 objects)."""
        arrays = await self._widened(entry)
        parts = [prompts[i : i + self.decoder_batch] for i in range(0, len(prompts), self.decoder_batch)]
        answers = await asyncio.gather(*(self._decode_batch(arrays, part) for part in parts))
        return np.concatenate([a[0] for a in answers]), np.concatenate([a[1] for a in answers])

    async def _decode_batch(self, arrays: list[np.ndarray], prompts: list[PackedPrompt]) -> list[np.ndarray]:
        count = len(prompts)
        coords, labels, masks = stack_prompts(prompts)
        has_mask = np.array([[float(p.mask_input is not None)] for p in prompts], np.float32)
        # one image's embeddings, once per item (the decoder's batch dimension runs over all its inputs)
        inputs = [
            pb_utils.Tensor(name, np.ascontiguousarray(np.broadcast_to(array, (count, *array.shape[1:]))))
            for name, array in zip(EMBEDDINGS, arrays, strict=True)
        ]
        inputs += [
            pb_utils.Tensor("point_coords", coords),
            pb_utils.Tensor("point_labels", labels),
            pb_utils.Tensor("mask_input", masks if masks is not None else np.zeros((count, *MASK_INPUT), np.float32)),
            pb_utils.Tensor("has_mask_input", has_mask),
        ]
        return await self._call(sig.DECODER_MODEL, inputs, DECODER_OUTPUTS)

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

        The metric families stay: Triton shares a family between the versions
        that create it, and deleting it would drop the other versions' series.
        """
        self.store.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.metrics.emptied()


def _as_fp32(arrays: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    return [np.asarray(array, np.float32) for array in arrays]
