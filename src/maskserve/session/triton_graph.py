"""Triton python-backend model that runs one exported ONNX graph on the CPU.

Copied into every served graph model of the ``cpu`` repository target, beside
``model.onnx``. The runtime, precision and thread count come from the model's
``config.pbtxt`` parameters, so they can be changed without re-exporting:

* ``runtime``: ``openvino`` (default) or ``onnxruntime``;
* ``precision``: ``fp32`` or ``bf16`` (OpenVINO's inference precision hint;
  ONNX Runtime always runs fp32);
* ``num_threads``: intra-op threads for this instance (0 = runtime default);
* ``nice``: raise this instance's niceness by that much (0 = leave it), so a
  cheap model's work yields to an expensive one on shared cores.
* ``held_images`` (the decoder, with its ``image_key`` input): keep that many
  images' embeddings, so a prompt names its image instead of carrying 16 MiB
  (``maskserve.session.held``). Where the version also has the held decoder's
  graphs (``prepare.onnx``, ``held.onnx``, ``held_masks.onnx``), an image is
  held prepared and its prompts run those graphs; prompts that bring their
  embeddings run ``model.onnx``.

OpenVINO keeps the compiled graph in the version's ``compiled/`` directory, which
the export fills (``maskserve.session.compiled``), or else where the server sets
``MASKSERVE_COMPILE_CACHE``; a version loaded again skips its compile.

Triton hands ``execute`` every request its dynamic batcher grouped; they all
share the model's fixed per-item shapes, so they are concatenated along the
batch axis, run once, and split back. OpenVINO reads the inputs where they lie
(``share_inputs``): a held image's embeddings are not copied for a prompt.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from maskserve.core import signatures as sig
from maskserve.session import compiled, held


def _param(config: dict, key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return value if value not in (None, "") else default


class _OpenVINO:
    def __init__(self, path: str, precision: str, threads: int, outputs: list[str]) -> None:
        import openvino as ov

        props = compiled.openvino_properties(precision, threads, compiled.cache_dir(os.path.dirname(path)))
        self._compiled = ov.Core().compile_model(path, "CPU", props)
        self._request = self._compiled.create_infer_request()
        self._outputs = [self._compiled.output(name) for name in outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # Read where they are: no input copy. Always shared, so no call copies into the tensor an earlier call
        # shared (OpenVINO would refuse a larger shape there).
        result = self._request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()}, share_inputs=True)
        return [np.array(result[port], copy=True) for port in self._outputs]


class _OnnxRuntime:
    def __init__(self, path: str, precision: str, threads: int, outputs: list[str]) -> None:
        import onnxruntime as ort

        if precision != "fp32":
            raise ValueError("the onnxruntime runtime runs fp32 only; use precision fp32")
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle threads must not spin: the encoder shares these cores, and spinning
        # made each 35 ms decode burn about 110 ms of CPU instead of 70 ms.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._outputs = outputs

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(self._outputs, feeds)


RUNTIMES = {"openvino": _OpenVINO, "onnxruntime": _OnnxRuntime}

_Member = tuple[int, dict[str, np.ndarray], tuple[tuple[np.ndarray, ...], int] | None]
"""A request in a run: its index, its inputs by name, and its image's tensors with its prompt count (or None)."""


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self._inputs = [(t["name"], t["data_type"]) for t in config["input"]]
        self._outputs = [t["name"] for t in config["output"]]
        runtime = _param(config, "runtime", "openvino")
        precision = _param(config, "precision", "fp32")
        threads = int(_param(config, "num_threads", "0"))
        nice = int(_param(config, "nice", "0"))
        if nice > 0:
            os.nice(nice)
        if runtime not in RUNTIMES:
            raise pb_utils.TritonModelException(f"unknown runtime {runtime!r}; choose one of {sorted(RUNTIMES)}")
        path = os.path.join(version_dir, "model.onnx")
        self._runtime: Any = RUNTIMES[runtime](path, precision, threads, self._outputs)
        self._scalars = {t["name"] for t in config["input"] if list(t.get("reshape", {}).get("shape", [None])) == []}
        self._graph_inputs = [name for name, _ in self._inputs if name != sig.IMAGE_KEY]
        held_images = int(_param(config, "held_images", "0"))
        holds = held_images > 0 and len(self._inputs) > len(self._graph_inputs)  # the config has the image_key input
        self._sent_names = [spec.name for spec in sig.ENCODER_OUTPUTS] if holds else []
        # an export with the held decoder's graphs: images are held prepared, and their prompts run those graphs
        self._held_graphs: dict[bool, Any] = {}
        self._held_names = self._sent_names
        prepare: held.Prepare | None = None
        graphs = (sig.PREPARE_GRAPH, *sig.HELD_GRAPHS.values())
        if holds and all(os.path.exists(os.path.join(version_dir, g)) for g in graphs):
            prepared = [spec.name for spec in sig.PREPARED_IMAGE]
            graph = os.path.join(version_dir, sig.PREPARE_GRAPH)
            preparation: Any = RUNTIMES[runtime](graph, precision, threads, prepared)

            def run_preparation(arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
                return tuple(preparation.run(dict(zip(self._sent_names, arrays, strict=True))))

            prepare = run_preparation
            self._held_graphs = {
                masks: RUNTIMES[runtime](os.path.join(version_dir, name), precision, threads, self._outputs)
                for masks, name in sig.HELD_GRAPHS.items()
            }
            self._held_names = prepared
        self._held = held.HeldImages(held_images, prepare) if holds else None
        note = ", images held prepared" if self._held_graphs else ""
        pb_utils.Logger.log_info(f"{config['name']}: {runtime} {precision}, {threads or 'default'} threads{note}")

    def _arrays(self, request: Any) -> tuple[dict[str, np.ndarray], tuple[tuple[np.ndarray, ...], int] | None, bool]:
        """A request's inputs by name, its image's tensors and prompt count (where this model holds images), and
        whether those are a held image's (named by key) rather than sent with the request."""
        arrays = {}
        for name in self._graph_inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                array = tensor.as_numpy()
                arrays[name] = array.reshape(-1) if name in self._scalars else array
        if self._held is None:
            return arrays, None, False
        key = pb_utils.get_input_tensor_by_name(request, sig.IMAGE_KEY)
        sent = tuple(arrays.pop(name) for name in self._sent_names if name in arrays)
        count = next(iter(arrays.values())).shape[0]  # the prompts' inputs, present in every request
        if len(sent) not in (0, len(self._sent_names)) or (key is None and not sent):
            raise held.NotHeld(b"")  # all of an image's tensors, or its key alone
        if key is None:  # a caller that sends the embeddings with every prompt, one item each
            return arrays, (sent, count), False
        image = bytes(key.as_numpy().reshape(-1)[0])
        return arrays, (self._held.arrays(image, sent or None), count), True

    def execute(self, requests: list) -> list:
        responses: list[Any] = [None] * len(requests)
        with_embeddings: list[_Member] = []  # the exported graph, on embeddings
        on_prepared: list[_Member] = []  # the held decoder graphs, on prepared images
        for i, request in enumerate(requests):
            try:
                arrays, image, by_key = self._arrays(request)
            except held.NotHeld:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{sig.NOT_HELD}: send them"))
                continue
            except Exception as exc:  # the image's preparation failed: this request, not the batch
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"preparing the image: {exc}"))
                continue
            (on_prepared if by_key and self._held_graphs else with_embeddings).append((i, arrays, image))
        if with_embeddings:
            self._run(self._runtime, with_embeddings, self._sent_names, responses)
        if on_prepared:
            masks = any(float(np.max(arrays["has_mask_input"], initial=0.0)) > 0.5 for _, arrays, _ in on_prepared)
            if not masks:  # the graph without earlier masks takes neither input
                for _, arrays, _ in on_prepared:
                    del arrays["mask_input"], arrays["has_mask_input"]
            self._run(self._held_graphs[masks], on_prepared, self._held_names, responses)
        return responses

    def _run(self, runtime: Any, members: list[_Member], image_names: list[str], responses: list[Any]) -> None:
        """Run ``members`` (request index, inputs, image) as one batch and answer each of them."""
        parts = [arrays for _, arrays, _ in members]
        feeds = {
            name: parts[0][name] if len(parts) == 1 else np.concatenate([p[name] for p in parts], axis=0)
            for name in parts[0]
        }
        images = [image for _, _, image in members if image is not None]
        if images:
            feeds.update(zip(image_names, held.stacked(images), strict=True))
        try:
            outputs = runtime.run(feeds)
        except Exception as exc:  # one failed run fails the requests it carried
            error = pb_utils.TritonError(f"inference failed: {exc}")
            for i, _, _ in members:
                responses[i] = pb_utils.InferenceResponse(error=error)
            return
        start = 0
        for i, arrays, _ in members:
            size = next(iter(arrays.values())).shape[0]
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out[start : start + size]))
                for name, out in zip(self._outputs, outputs, strict=False)
            ]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
            start += size

    def finalize(self) -> None:
        self._runtime = None
