"""The Triton adapter: the two models over gRPC (``tritonclient.grpc.aio``).

Tensor names come from ``maskserve.signatures``; nothing else in the frontend
knows them. Every call has a deadline; any failure to reach the server or a
model surfaces as ``InferenceUnavailable`` so services answer 503 and never
charge.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from maskserve import signatures as sig

_DTYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32"}
MAX_MESSAGE = 256 * 1024 * 1024


class InferenceUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class Embeddings:
    image_embed: np.ndarray  # [1,256,64,64]
    high_res_feats_0: np.ndarray  # [1,32,256,256]
    high_res_feats_1: np.ndarray  # [1,64,128,128]

    @property
    def nbytes(self) -> int:
        return self.image_embed.nbytes + self.high_res_feats_0.nbytes + self.high_res_feats_1.nbytes


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    variant: str
    weights: str


def _input(name: str, array: np.ndarray) -> grpcaio.InferInput:
    tensor = grpcaio.InferInput(name, list(array.shape), _DTYPES[array.dtype])
    tensor.set_data_from_numpy(np.ascontiguousarray(array))
    return tensor


class TritonClient:
    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = grpcaio.InferenceServerClient(
            url,
            channel_args=[
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.max_receive_message_length", MAX_MESSAGE),
            ],
        )

    async def close(self) -> None:
        await self._client.close()

    async def _infer(self, model: str, inputs: list, outputs: tuple[str, ...]):
        try:
            result = await asyncio.wait_for(
                self._client.infer(
                    model, inputs,
                    outputs=[grpcaio.InferRequestedOutput(n) for n in outputs],
                    client_timeout=self.timeout_s,
                ),
                timeout=self.timeout_s + 5,
            )
        except (InferenceServerException, asyncio.TimeoutError, OSError) as exc:
            raise InferenceUnavailable(f"{model}: {exc}") from exc
        return [result.as_numpy(n) for n in outputs]

    async def encode(self, image: np.ndarray) -> Embeddings:
        outputs = tuple(spec.name for spec in sig.ENCODER_OUTPUTS)
        arrays = await self._infer(sig.ENCODER_MODEL, [_input("image", image)], outputs)
        return Embeddings(*arrays)

    async def decode(
        self,
        emb: Embeddings,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One prompt → all four masks' logits [4,256,256] and IoU predictions [4]."""
        has_mask = mask_input is not None
        mask = mask_input if has_mask else np.zeros((1, 1, 256, 256), np.float32)
        inputs = [
            _input("image_embed", emb.image_embed),
            _input("high_res_feats_0", emb.high_res_feats_0),
            _input("high_res_feats_1", emb.high_res_feats_1),
            _input("point_coords", point_coords[None].astype(np.float32)),
            _input("point_labels", point_labels[None].astype(np.int32)),
            _input("mask_input", mask.astype(np.float32).reshape(1, 1, 256, 256)),
            _input("has_mask_input", np.array([[1.0 if has_mask else 0.0]], np.float32)),
        ]
        masks, iou = await self._infer(sig.DECODER_MODEL, inputs, ("low_res_masks", "iou_predictions"))
        return masks[0], iou[0]

    async def model_info(self) -> list[ModelInfo]:
        """Readiness and provenance of both models; raises if either is not ready."""
        infos = []
        try:
            for model in sig.SIGNATURES:
                if not await self._client.is_model_ready(model, client_timeout=5):
                    raise InferenceUnavailable(f"{model} is not ready")
                meta = await self._client.get_model_metadata(model, client_timeout=5)
                config = (await self._client.get_model_config(model, client_timeout=5)).config
                params = {k: v.string_value for k, v in config.parameters.items()}
                versions = sorted(meta.versions, key=int)
                infos.append(ModelInfo(
                    name=model,
                    version=versions[-1] if versions else "",
                    variant=params.get("maskserve_model", "unknown"),
                    weights=params.get("maskserve_weights", "unknown"),
                ))
        except InferenceServerException as exc:
            raise InferenceUnavailable(str(exc)) from exc
        return infos
