"""maskserve export: weights handling, checkpoint round trip, repository layout."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import threading

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from maskserve.cli import main as cli_main
from maskserve.core import signatures as sig
from maskserve.devtools.pictures import make_image
from maskserve.export import checkpoints, reference
from maskserve.export.command import ExportError, ExportRequest, run_export
from maskserve.export.repository import existing_versions, render_config, version_dir
from maskserve.export.variants import VARIANTS, get_variant
from tests.plugins.stack import SEED


def test_every_variant_builds_from_the_packages_configs():
    for name, variant in VARIANTS.items():
        model = checkpoints.build_model(variant)
        assert hasattr(model, "sam_mask_decoder"), name
    assert {v.size for v in VARIANTS.values()} == {"tiny", "small", "base_plus", "large"}
    assert {v.family for v in VARIANTS.values()} == {"sam2", "sam2.1"}
    for v in VARIANTS.values():
        if v.family == "sam2.1":
            assert v.url.startswith("https://dl.fbaipublicfiles.com/segment_anything_2/092824/")
            assert v.sha256 and len(v.sha256) == 64


def test_export_refuses_without_weights(tmp_path, capsys):
    with pytest.raises(ExportError) as info:
        run_export(ExportRequest(out=tmp_path))
    message = str(info.value)
    assert "--checkpoint" in message and "--random-weights" in message
    assert cli_main(["export", "--out", str(tmp_path)]) == 2
    assert "--random-weights" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_onnxruntime_bf16_is_refused(tmp_path, capsys):
    code = cli_main(
        [
            "export",
            "--random-weights",
            "--decoder-runtime",
            "onnxruntime",
            "--decoder-precision",
            "bf16",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2 and "fp32 only" in capsys.readouterr().err


@pytest.fixture()
def http_dir(tmp_path):
    """A real HTTP server on loopback standing in for the checkpoint CDN."""
    root = tmp_path / "cdn"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_sha256(http_dir, tmp_path):
    root, base = http_dir
    (root / "sam2.1_hiera_tiny.pt").write_bytes(b"weights")
    good = dataclasses.replace(
        get_variant("sam2.1_hiera_tiny"),
        url=f"{base}/sam2.1_hiera_tiny.pt",
        sha256=checkpoints.sha256_of(root / "sam2.1_hiera_tiny.pt"),
    )
    path = checkpoints.download_checkpoint(good, tmp_path / "dl")
    assert path.read_bytes() == b"weights"
    bad = dataclasses.replace(good, sha256="0" * 64)
    with pytest.raises(checkpoints.WeightsError, match="SHA-256"):
        checkpoints.download_checkpoint(bad, tmp_path / "dl2")
    assert not any((tmp_path / "dl2").iterdir())  # nothing unverified left behind


def test_download_offline_names_the_alternatives(tmp_path):
    from maskserve.triton.server import free_port

    offline = dataclasses.replace(get_variant("sam2.1_hiera_tiny"), url=f"http://127.0.0.1:{free_port()}/x.pt")
    with pytest.raises(checkpoints.WeightsError) as info:
        checkpoints.download_checkpoint(offline, tmp_path, timeout=5)
    assert "--checkpoint" in str(info.value) and "--random-weights" in str(info.value)


def test_bad_checkpoints_are_rejected(tmp_path):
    model = checkpoints.build_model(get_variant("sam2.1_hiera_tiny"))
    torch.save({"weights": {}}, tmp_path / "wrong_format.pt")
    with pytest.raises(checkpoints.WeightsError, match="format"):
        checkpoints.load_checkpoint(model, tmp_path / "wrong_format.pt")
    torch.save({"model": {"not_a_key": torch.zeros(1)}}, tmp_path / "wrong_keys.pt")
    with pytest.raises(checkpoints.WeightsError, match="does not fit"):
        checkpoints.load_checkpoint(model, tmp_path / "wrong_keys.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoints.WeightsError, match="could not be read"):
        checkpoints.load_checkpoint(model, tmp_path / "garbage.pt")


def test_checkpoint_round_trip(tmp_path):
    """A state dict saved in Meta's format exports to graphs that reproduce that model."""
    import onnxruntime as ort

    saved = checkpoints.build_model(get_variant("sam2.1_hiera_tiny"), seed=1234)
    ckpt = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": saved.state_dict()}, ckpt)
    out = tmp_path / "repo"
    version = run_export(ExportRequest(out=out, checkpoint=ckpt, seed=SEED))  # seed must not matter
    manifest = json.loads((version_dir(out, sig.ENCODER_MODEL, version) / "manifest.json").read_text())
    assert manifest["weights"] == {"kind": "checkpoint", "file": ckpt.name, "sha256": checkpoints.sha256_of(ckpt)}

    image = make_image(seed=3)
    enc = ort.InferenceSession(str(version_dir(out, sig.ENCODER_MODEL, version) / "model.onnx"))
    embed, s0, _s1 = enc.run(None, {"image": image})
    want = reference.encode(saved, torch.from_numpy(image))
    assert np.abs(embed - want["image_embed"].numpy()).max() < 1e-3
    assert np.abs(s0 - want["high_res_feats"][0].numpy()).max() < 1e-3
    # and not the seed-0 random model: the weights really came from the file
    other = reference.encode(
        checkpoints.build_model(get_variant("sam2.1_hiera_tiny"), seed=SEED), torch.from_numpy(image)
    )
    assert np.abs(embed - other["image_embed"].numpy()).max() > 1e-2


def test_repository_layout_and_manifest(exported_repo):
    """Every version of every model is a Triton model of its own, with its own configuration."""
    for model in sig.LIFECYCLE_MODELS:
        served = exported_repo / sig.served_name(model, 1)
        assert {p.name for p in served.iterdir()} == {"config.pbtxt", sig.TRITON_VERSION}
        files = {p.name for p in version_dir(exported_repo, model, 1).iterdir()} - {"__pycache__"}
        held = {sig.PREPARE_GRAPH, *sig.HELD_GRAPHS.values()} if model == sig.DECODER_MODEL else set()
        assert files == {"model.py", "manifest.json"} | (
            {"model.onnx", "compiled", *held} if model in sig.SIGNATURES else set()
        )
        own = text_format.Parse((served / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert own.name == served.name and not own.HasField("version_policy")
        assert own.parameters["maskserve_weights"].string_value == f"random (seed {SEED})"
        assert own.parameters["maskserve_version"].string_value == "1"
        manifest = json.loads((version_dir(exported_repo, model, 1) / "manifest.json").read_text())
        assert manifest["model"] == "sam2.1_hiera_tiny" and manifest["family"] == "sam2.1"
        assert manifest["size"] == "tiny" and manifest["weights"] == {"kind": "random", "seed": SEED}
        assert manifest["opset"] >= 17 and manifest["exported_at"].endswith("Z")
        assert manifest["target"] == "cpu" and manifest["version"] == 1
        assert manifest["triton_model"] == served.name
        if held:  # the decoder's graphs for held images, each with its digest
            where = version_dir(exported_repo, model, 1)
            assert manifest["graphs_sha256"] == {name: checkpoints.sha256_of(where / name) for name in sorted(held)}


def test_the_export_compiles_each_graph_for_this_cpu_and_triton_reads_it(exported_repo):
    """The first load of a version reads the graph the export compiled: the properties its own config.pbtxt
    gives the served model hit the cache the export wrote, and nothing new is compiled or written."""
    import openvino as ov

    from maskserve.session import compiled

    for model in sig.SIGNATURES:
        where = version_dir(exported_repo, model, 1)
        blobs = sorted((where / compiled.CACHE_DIRNAME).iterdir())
        graphs = sorted(where.glob("*.onnx"))  # the decoder's graphs for held images too
        assert len(blobs) == len(graphs) and all(blob.suffix == ".blob" for blob in blobs)
        own = text_format.Parse(
            (exported_repo / sig.served_name(model, 1) / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        params = {k: v.string_value for k, v in own.parameters.items()}
        props = compiled.openvino_properties(params["precision"], int(params["num_threads"]), compiled.cache_dir(where))
        for graph in graphs:
            ov.Core().compile_model(str(graph), "CPU", props)
        assert sorted((where / compiled.CACHE_DIRNAME).iterdir()) == blobs


def test_second_export_adds_a_version_beside_the_first(tmp_path):
    out = tmp_path / "repo"
    assert run_export(ExportRequest(out=out, random_weights=True, seed=1)) == 1
    assert run_export(ExportRequest(out=out, random_weights=True, seed=2)) == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(
        sig.served_name(m, v) for m in (*sig.LIFECYCLE_MODELS, *sig.VIDEO_MODELS) for v in (1, 2)
    )
    assert existing_versions(out) == [1, 2]
    with pytest.raises(ExportError, match="already exists"):
        run_export(ExportRequest(out=out, random_weights=True, version=2))


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_the_held_decoder_graphs_follow_the_signatures(exported_repo):
    """The cpu decoder's preparation and held graphs have the tensors of ``sig.PREPARED_IMAGE`` and
    ``sig.HELD_GRAPH_INPUTS``; the image tensors' first axis is their own (one image, or one per prompt)."""
    where = version_dir(exported_repo, sig.DECODER_MODEL, 1)
    image_specs = (*sig.ENCODER_OUTPUTS, *sig.PREPARED_IMAGE)
    graphs = {sig.PREPARE_GRAPH: (sig.ENCODER_OUTPUTS, sig.PREPARED_IMAGE)}
    graphs |= {name: (sig.HELD_GRAPH_INPUTS[masks], sig.DECODER_OUTPUTS) for masks, name in sig.HELD_GRAPHS.items()}
    for name, (inputs, outputs) in graphs.items():
        graph = onnx.load(str(where / name), load_external_data=False).graph
        for specs, values in ((inputs, graph.input), (outputs, graph.output)):
            assert [s.name for s in specs] == [v.name for v in values], name
            for spec, value in zip(specs, values, strict=True):
                first = sig.DECODER_IMAGE_AXIS if spec in image_specs else "batch"
                assert _dims(value) == [first, *spec.dims], (name, spec.name)


def test_onnx_graphs_and_configs_follow_the_signatures(exported_repo):
    """One source of truth: exported tensor names/shapes and config.pbtxt agree with signatures."""
    onnx_types = {1: "float32", 6: "int32"}
    for model, (inputs, outputs) in sig.SIGNATURES.items():
        graph = onnx.load(str(version_dir(exported_repo, model, 1) / "model.onnx"), load_external_data=False).graph
        for specs, values in ((inputs, graph.input), (outputs, graph.output)):
            assert [s.name for s in specs] == [v.name for v in values]
            for spec, value in zip(specs, values, strict=False):
                assert onnx_types[value.type.tensor_type.elem_type] == spec.dtype
                # the decoder's image tensors have an axis of their own: one item per prompt, or one for all
                images = model == sig.DECODER_MODEL and spec in sig.ENCODER_OUTPUTS and specs is inputs
                assert _dims(value) == [sig.DECODER_IMAGE_AXIS if images else "batch", *spec.dims]
        for target in ("cpu", "gpu"):
            text = (
                (exported_repo / sig.served_name(model, 1) / "config.pbtxt").read_text()
                if target == "cpu"
                else render_config(model, 1, target)
            )
            config = text_format.Parse(text, model_config_pb2.ModelConfig())
            assert config.name == sig.served_name(model, 1) and config.max_batch_size > 0
            assert config.HasField("dynamic_batching")
            assert len(config.instance_group) == 1
            held = target == "cpu" and model == sig.DECODER_MODEL  # the embeddings may stay in the decoder
            config_inputs = sig.HELD_DECODER_INPUTS if held else inputs
            # (this tritonclient's ModelInput has no ``optional`` field: count it in the text)
            assert text.count("optional: true") == sum(s.optional for s in config_inputs)
            for specs, tensors in ((config_inputs, config.input), (outputs, config.output)):
                assert [s.name for s in specs] == [t.name for t in tensors]
                for spec, tensor in zip(specs, tensors, strict=False):
                    assert model_config_pb2.DataType.Name(tensor.data_type) == f"TYPE_{spec.triton_dtype}"
                    shape = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
                    assert tuple(shape) == spec.dims
            if target == "gpu":
                assert config.platform == "onnxruntime_onnx"
                accel = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
                assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
            else:
                assert config.backend == "python"
                assert config.parameters["runtime"].string_value in ("openvino", "onnxruntime")
