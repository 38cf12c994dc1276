"""The real Triton server from the pip wheel serves both models over gRPC."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from maskserve.core import signatures as sig
from maskserve.core.prompts import pack_prompt
from maskserve.devtools.pictures import make_image
from maskserve.triton.server import free_port

NP_TO_TRITON = {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32", np.dtype(np.object_): "BYTES"}


def _inputs(module, arrays: dict[str, np.ndarray]) -> list:
    tensors = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), NP_TO_TRITON[array.dtype])
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def _direct(repo, model: str):
    """The same ONNX file run in-process with the runtime and precision its config names."""
    import onnxruntime as ort
    import openvino as ov

    config = text_format.Parse(
        (repo / sig.served_name(model, 1) / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    runtime = config.parameters["runtime"].string_value
    precision = config.parameters["precision"].string_value
    path = str(repo / sig.served_name(model, 1) / sig.TRITON_VERSION / "model.onnx")
    if runtime == "onnxruntime":
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(None, feeds)
    compiled = ov.Core().compile_model(
        path, "CPU", {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision]}
    )
    request = compiled.create_infer_request()
    return lambda feeds: [np.array(request.infer(feeds)[o]) for o in compiled.outputs]


def _decoder_feeds(embeds, point) -> dict[str, np.ndarray]:
    coords, labels = pack_prompt(np.array([point], np.float32), np.array([1]), None)
    n = embeds[0].shape[0]
    return {
        "image_embed": embeds[0],
        "high_res_feats_0": embeds[1],
        "high_res_feats_1": embeds[2],
        "point_coords": np.repeat(coords[None], n, 0),
        "point_labels": np.repeat(labels[None], n, 0),
        "mask_input": np.zeros((n, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros((n, 1), np.float32),
    }


def test_both_models_over_grpc_match_direct_onnx(triton_server, exported_repo):
    client = grpcclient.InferenceServerClient(triton_server.opts.grpc_url)
    image = make_image(seed=5)
    result = client.infer(sig.served_name(sig.ENCODER_MODEL, 1), _inputs(grpcclient, {"image": image}))
    served = [result.as_numpy(s.name) for s in sig.ENCODER_OUTPUTS]
    direct = _direct(exported_repo, sig.ENCODER_MODEL)({"image": image})
    for got, want, spec in zip(served, direct, sig.ENCODER_OUTPUTS, strict=False):
        assert got.shape == (1, *spec.dims)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

    feeds = _decoder_feeds(served, [300.0, 420.0])
    result = client.infer(sig.served_name(sig.DECODER_MODEL, 1), _inputs(grpcclient, feeds))
    direct_feeds = {**feeds, "has_mask_input": feeds["has_mask_input"].reshape(-1)}
    want_masks, want_iou = _direct(exported_repo, sig.DECODER_MODEL)(direct_feeds)
    np.testing.assert_allclose(result.as_numpy("low_res_masks"), want_masks, atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.as_numpy("iou_predictions"), want_iou, atol=1e-6, rtol=0)
    client.close()


def test_the_decoder_holds_an_image_sent_once_and_asks_again_for_one_it_lacks(triton_server, exported_repo):
    """A prompt by the image's key alone answers as with the embeddings; an unknown key is refused, not guessed."""
    client = grpcclient.InferenceServerClient(triton_server.opts.grpc_url)
    decoder = sig.served_name(sig.DECODER_MODEL, 1)
    image = make_image(seed=7)
    result = client.infer(sig.served_name(sig.ENCODER_MODEL, 1), _inputs(grpcclient, {"image": image}))
    embeds = [result.as_numpy(s.name) for s in sig.ENCODER_OUTPUTS]
    with_embeddings = _decoder_feeds(embeds, [300.0, 420.0])
    key = {sig.IMAGE_KEY: np.array([[b"image-7"]], dtype=np.object_)}
    sent = client.infer(decoder, _inputs(grpcclient, {**with_embeddings, **key}))
    prompts_only = {k: v for k, v in with_embeddings.items() if k not in {s.name for s in sig.ENCODER_OUTPUTS}}
    held = client.infer(decoder, _inputs(grpcclient, {**prompts_only, **key}))
    np.testing.assert_array_equal(held.as_numpy("low_res_masks"), sent.as_numpy("low_res_masks"))
    np.testing.assert_array_equal(held.as_numpy("iou_predictions"), sent.as_numpy("iou_predictions"))
    # the held image runs the decoder's graphs for held images; a prompt with its embeddings and no key, model.onnx
    plain = client.infer(decoder, _inputs(grpcclient, with_embeddings))
    np.testing.assert_allclose(held.as_numpy("low_res_masks"), plain.as_numpy("low_res_masks"), atol=1e-3, rtol=0)
    earlier = {"mask_input": plain.as_numpy("low_res_masks")[:, :1], "has_mask_input": np.ones((1, 1), np.float32)}
    masked_by_key = client.infer(decoder, _inputs(grpcclient, {**prompts_only, **earlier, **key}))
    masked_plain = client.infer(decoder, _inputs(grpcclient, {**with_embeddings, **earlier}))
    got, want = masked_by_key.as_numpy("low_res_masks"), masked_plain.as_numpy("low_res_masks")
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    assert np.abs(got - held.as_numpy("low_res_masks")).max() > 1e-2  # the earlier mask changed the answer
    unknown = {sig.IMAGE_KEY: np.array([[b"never-sent"]], dtype=np.object_)}
    with pytest.raises(InferenceServerException, match=sig.NOT_HELD):
        client.infer(decoder, _inputs(grpcclient, {**prompts_only, **unknown}))
    client.close()


def _counts(client, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(sig.served_name(model, 1)).model_stats
    return sum(s.inference_count for s in stats), sum(s.execution_count for s in stats)


def test_concurrent_requests_are_batched(triton_server, report):
    url = triton_server.opts.grpc_url
    sync = grpcclient.InferenceServerClient(url)
    image = make_image(seed=6)
    embeds = [
        sync.infer(sig.served_name(sig.ENCODER_MODEL, 1), _inputs(grpcclient, {"image": image})).as_numpy(s.name)
        for s in sig.ENCODER_OUTPUTS
    ]
    before = {m: _counts(sync, m) for m in sig.SIGNATURES}

    async def fire(n_decoder: int, n_encoder: int) -> None:
        client = grpcaio.InferenceServerClient(url)
        try:
            jobs = [
                client.infer(
                    sig.served_name(sig.DECODER_MODEL, 1),
                    _inputs(grpcaio, _decoder_feeds(embeds, [40.0 * i + 10, 500.0])),
                )
                for i in range(n_decoder)
            ] + [
                client.infer(sig.served_name(sig.ENCODER_MODEL, 1), _inputs(grpcaio, {"image": image}))
                for _ in range(n_encoder)
            ]
            results = await asyncio.gather(*jobs)
            assert all(r is not None for r in results)
        finally:
            await client.close()

    asyncio.run(fire(n_decoder=16, n_encoder=4))
    for model in sig.SIGNATURES:
        inferences = _counts(sync, model)[0] - before[model][0]
        executions = _counts(sync, model)[1] - before[model][1]
        report(f"triton batching {model}: {inferences} inferences in {executions} executions")
        if model == sig.DECODER_MODEL:
            assert inferences == 16 and executions < inferences
    sync.close()


def test_triton_command_explains_missing_models(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "maskserve.cli", "triton", "--model-repository", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "maskserve export" in proc.stderr and "--random-weights" in proc.stderr


def test_triton_command_serves_and_stops_cleanly_on_sigterm(exported_repo, tmp_path):
    grpc_port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "maskserve.cli",
        "triton",
        "--model-repository",
        str(exported_repo),
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
    ]
    env = {**os.environ, "HOME": str(tmp_path)}  # its backend folder goes under this HOME
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    deadline = time.monotonic() + 240
    try:
        for line in proc.stdout:
            lines.append(line)
            if "models READY" in line:
                break
            assert time.monotonic() < deadline, "".join(lines[-20:])
        else:
            pytest.fail("exited before READY:\n" + "".join(lines[-30:]))
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert all(client.is_model_ready(sig.served_name(m, 1)) for m in sig.LIFECYCLE_MODELS)
        client.close()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest[-2000:]
    assert "tritonserver stopped (exit code 0)" in rest
    # nothing left listening
    with pytest.raises(InferenceServerException):
        grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}").is_server_live()
