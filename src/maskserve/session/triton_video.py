"""Triton python-backend model ``sam2_video``: each video's tracking state next to the models.

The exporter copies this file into every version of the video model (``sam2_video_v<N>``) as
its ``model.py``. It is decoupled with an ``async`` execute, so one instance serves many videos at
once; the calls on one video run one after the other. Each call (``maskserve.core.video_io``) runs
``VideoEngine`` in a worker thread, whose graph calls go through BLS to the version's own graphs:
the image encoder (``sam2_image_encoder_v<N>``, shared with images) and the three video graphs
(``sam2_memory_attention_v<N>``, ``sam2_memory_encoder_v<N>``, ``sam2_track_decoder_v<N>``), each a
Triton model with its own dynamic batcher.

Parameters (``config.pbtxt``): ``feature_bytes`` (the frame features' bound), ``max_videos``
(videos held; beyond, the least recently used is dropped and rebuilt on its next call),
``threads`` (calls running at once), and SAM 2's tracking constants of the exported model
(``tracking``, JSON of ``TrackingConfig``).
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from maskserve.core import signatures as sig
from maskserve.core.images import video_frame_input
from maskserve.core.video_io import VideoCall
from maskserve.session.video import TrackingConfig
from maskserve.session.video_engine import VideoEngine

EMBEDDINGS = tuple(spec.name for spec in sig.ENCODER_OUTPUTS)


def _param(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return value if value not in (None, "") else default


def _optional(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class _BlsGraphs:
    """The video graphs as BLS calls, made from worker threads onto the model's event loop."""

    def __init__(self, version: str) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None  # the stub's event loop, known once it runs a call
        self.names = {model: sig.served_name(model, version) for model in (*sig.VIDEO_SIGNATURES, sig.ENCODER_MODEL)}

    async def _call(self, model: str, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> list[np.ndarray]:
        request = pb_utils.InferenceRequest(
            model_name=self.names[model],
            requested_output_names=list(outputs),
            inputs=[pb_utils.Tensor(name, np.ascontiguousarray(a)) for name, a in inputs.items()],
        )
        response = await request.async_exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"{self.names[model]}: {response.error().message()}")
        return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]

    def call(self, model: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        specs, out_specs = (sig.SIGNATURES | sig.VIDEO_SIGNATURES)[model]
        scalars = {spec.name for spec in specs if not spec.dims}  # per-item scalars travel as [B, 1]
        inputs = {name: a.reshape(-1, 1) if name in scalars else a for name, a in inputs.items()}
        outputs = tuple(spec.name for spec in out_specs)
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(self._call(model, inputs, outputs), self.loop).result()

    def attend(self, **inputs: np.ndarray) -> np.ndarray:
        return self.call(sig.MEMORY_ATTENTION_MODEL, inputs)[0]

    def decode(self, **inputs: np.ndarray) -> list[np.ndarray]:
        return self.call(sig.TRACK_DECODER_MODEL, inputs)

    def encode_memory(self, **inputs: np.ndarray) -> np.ndarray:
        return self.call(sig.MEMORY_ENCODER_MODEL, inputs)[0]

    def encode(self, jpeg: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        embed, s0, s1 = self.call(sig.ENCODER_MODEL, {"image": video_frame_input(jpeg)})
        return embed, s0, s1


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        version = sig.version_of(config["name"])
        if version is None:
            raise pb_utils.TritonModelException(f"{config['name']}: not a served name (sam2_video_v<N>)")
        self.graphs = _BlsGraphs(version)
        tracking = TrackingConfig(**json.loads(_param(config, "tracking", "{}")))
        self.pool = ThreadPoolExecutor(int(_param(config, "threads", "4")), "video")
        self.engine = VideoEngine(
            self.graphs,
            self.graphs.encode,
            tracking,
            feature_bytes=int(_param(config, "feature_bytes", str(256 << 20))),
            max_videos=int(_param(config, "max_videos", "64")),
        )
        pb_utils.Logger.log_info(
            f"{config['name']}: frame features up to {self.engine.features.max_bytes >> 20} MiB, "
            f"{self.engine.max_videos} videos"
        )

    async def _handle(self, request: Any) -> None:
        sender = request.get_response_sender()
        try:
            call, frames = VideoCall.from_tensors(lambda name: _optional(request, name))
            answer = await asyncio.get_running_loop().run_in_executor(self.pool, self.engine.handle, call, frames)
            tensors = answer.tensors()
            response = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, a) for n, a in tensors.items()])
        except Exception as exc:  # one failed call fails only itself
            response = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"sam2_video: {exc}"))
        sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    async def execute(self, requests: list[Any]) -> None:
        self.graphs.loop = asyncio.get_running_loop()
        await asyncio.gather(*(self._handle(request) for request in requests))

    def finalize(self) -> None:
        self.engine.close_all()
        self.pool.shutdown(wait=False, cancel_futures=True)
