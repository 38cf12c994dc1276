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

OpenVINO keeps the compiled graph in the version's ``compiled/`` directory, which
the export fills (``maskserve.session.compiled``), or else where the server sets
``MASKSERVE_COMPILE_CACHE``; a version loaded again skips its compile.

Triton hands ``execute`` every request its dynamic batcher grouped; they all
share the model's fixed per-item shapes, so they are concatenated along the
batch axis, run once, and split back.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from maskserve.session import compiled


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
        result = self._request.infer(feeds)
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
        pb_utils.Logger.log_info(f"{config['name']}: {runtime} {precision}, {threads or 'default'} threads")

    def execute(self, requests: list) -> list:
        arrays: dict[str, list[np.ndarray]] = {name: [] for name, _ in self._inputs}
        sizes = []
        for request in requests:
            for name, _ in self._inputs:
                array = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                if name in self._scalars:
                    array = array.reshape(-1)
                arrays[name].append(array)
            sizes.append(arrays[self._inputs[0][0]][-1].shape[0])
        feeds = {name: parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0) for name, parts in arrays.items()}
        try:
            outputs = self._runtime.run(feeds)
        except Exception as exc:  # one failed run fails the requests it carried
            error = pb_utils.TritonError(f"inference failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses = []
        start = 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out[start : start + size]))
                for name, out in zip(self._outputs, outputs, strict=False)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def finalize(self) -> None:
        self._runtime = None
