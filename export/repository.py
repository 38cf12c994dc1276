"""Writing exported models into a Triton model repository, every version a model of its own.

Layout: version N of a model is the Triton model ``<model>_vN``
(``signatures.served_name``): ``<out>/<model>_vN/config.pbtxt`` (its own
configuration, named after it) and ``<out>/<model>_vN/1/`` with ``model.onnx``,
``manifest.json`` and, for the ``cpu`` target, the python-backend ``model.py``
that runs the ONNX file. The three models of one export share one version
number, so version N of the session calls version N of the graphs.

Each version's configuration is its own: loading or unloading one version
never changes what another runs with, and Triton never restarts the others
(the reason for the layout: benchmarks/README.md, "Releases").
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from maskserve import session
from maskserve.core import signatures as sig
from maskserve.export.checkpoints import sha256_of
from maskserve.session import compiled

# The python-backend models live in maskserve.session (they import Triton's python-backend utilities,
# which exist only inside Triton, so they are located as files rather than imported here).
BACKEND_SOURCE = Path(session.__file__).with_name("triton_graph.py")  # runs one ONNX graph (the cpu target)
SESSION_SOURCE = Path(session.__file__).with_name("triton_session.py")  # the session model
VIDEO_SOURCE = Path(session.__file__).with_name("triton_video.py")  # the video model
TARGETS = ("cpu", "gpu")


@dataclass(frozen=True)
class BatchingSettings:
    max_batch_size: int
    max_queue_delay_us: int
    preferred: tuple[int, ...]
    instances: int
    max_queue: int = 256  # requests waiting in Triton; past it Triton refuses (the frontend answers 503)


@dataclass(frozen=True)
class ModelRuntime:
    runtime: str  # openvino | onnxruntime
    precision: str  # fp32 | bf16 (bf16 with openvino only)

    def validate(self) -> None:
        if self.runtime not in ("openvino", "onnxruntime"):
            raise ValueError(f"unknown runtime {self.runtime!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {self.precision!r}")
        if self.runtime == "onnxruntime" and self.precision != "fp32":
            raise ValueError("the onnxruntime runtime runs fp32 only here")


@dataclass(frozen=True)
class CpuRuntime:
    """The ``cpu`` target's runtime parameters (editable later in config.pbtxt).

    Defaults by measurement on the 2-core Zen 4 machine (benchmarks/README.md):
    both models are fastest in OpenVINO bf16 (encoder about 1.9x its fp32 speed;
    decoder 29 ms against 35 ms for ONNX Runtime fp32, with less CPU per call);
    masks from the pair agree with fp32 PyTorch at IoU >= 0.99. fp32 for either
    model is one flag away (``--encoder-precision``/``--decoder-precision``).
    """

    encoder: ModelRuntime = ModelRuntime("openvino", "bf16")
    decoder: ModelRuntime = ModelRuntime("openvino", "bf16")
    threads: int = 2
    # The video graphs (benchmarks/README.md, "Video"): memory attention, the costly one, in bf16 (2.1x its
    # fp32 speed at a full memory window); the memory encoder and track decoder in fp32.
    memory_attention: ModelRuntime = ModelRuntime("openvino", "bf16")
    video: ModelRuntime = ModelRuntime("openvino", "fp32")

    def for_model(self, model: str) -> ModelRuntime:
        if model == sig.MEMORY_ATTENTION_MODEL:
            return self.memory_attention
        if model in sig.VIDEO_SIGNATURES:
            return self.video
        return self.encoder if model == sig.ENCODER_MODEL else self.decoder

    def nice(self, model: str) -> int:
        """The decoder yields the shared cores to the encoder (see benchmarks/README.md)."""
        return 0 if model == sig.ENCODER_MODEL else 10


# Measured on the 2-core CPU machine (benchmarks/README.md): batching the
# encoder makes each image slower (OpenVINO bf16: 0.91 s alone, 0.97 s in a
# batch of 2, 0.98 s in 4), so its queue hands it one image at a time; the
# decoder costs about the same per item at any batch size, and batching saves
# the per-request overhead of the python backend. Its max batch of 16 lets the
# 16 objects of one request go through one call. No queue delay: under load a
# queue forms by itself while an instance is busy, and at low load waiting only
# adds latency. One instance per model owns both cores.
CPU_BATCHING = {
    sig.ENCODER_MODEL: BatchingSettings(1, 0, (), 1, max_queue=128),
    sig.DECODER_MODEL: BatchingSettings(16, 0, (), 1, max_queue=256),
}
GPU_BATCHING = {
    sig.ENCODER_MODEL: BatchingSettings(16, 2_000, (4, 8, 16), 1, max_queue=512),
    sig.DECODER_MODEL: BatchingSettings(64, 1_000, (16, 32, 64), 2, max_queue=2048),
}
# The video graphs run per object and frame: a batch holds the calls of the same shape that meet in the queue.
CPU_BATCHING |= {model: BatchingSettings(16, 0, (), 1, max_queue=256) for model in sig.VIDEO_SIGNATURES}
GPU_BATCHING |= {model: BatchingSettings(16, 500, (), 1, max_queue=1024) for model in sig.VIDEO_SIGNATURES}


HELD_IMAGES = 4
"""Images whose fp32 embeddings the cpu decoder keeps (16 MiB each), so a click sends only its prompt."""


@dataclass(frozen=True)
class VideoSettings:
    """The video model's bounds: frame features held (16 MiB a frame) and videos held, per version."""

    feature_bytes: int = 256 << 20
    max_videos: int = 64


@dataclass(frozen=True)
class SessionSettings:
    """The session model's store: its bound (per version) and the precision it keeps embeddings in.

    fp16 halves an image's embeddings to 8 MiB with masks that agree with fp32
    storage at IoU >= 0.99 (tests/integration/test_session.py); 1 GiB holds 128 images.
    """

    cache_bytes: int = 1 << 30
    storage: str = "fp16"


def _tensor_block(kind: str, specs: tuple[sig.TensorSpec, ...]) -> str:
    entries = []
    for spec in specs:
        lines = [f'    name: "{spec.name}"', f"    data_type: TYPE_{spec.triton_dtype}"]
        if spec.optional:
            lines.append("    optional: true")
        if spec.dims:
            lines.append(f"    dims: [ {', '.join(str(d) for d in spec.dims)} ]")
        else:  # a per-item scalar travels as [1] and reaches the model as [B]
            lines.append("    dims: [ 1 ]")
            lines.append("    reshape: { shape: [ ] }")
        entries.append("  {\n" + "\n".join(lines) + "\n  }")
    return f"{kind} [\n" + ",\n".join(entries) + "\n]"


def _dynamic_batching(batching: BatchingSettings) -> str:
    lines = ["dynamic_batching {"]
    if batching.preferred:
        lines.append(f"  preferred_batch_size: [ {', '.join(str(n) for n in batching.preferred)} ]")
    lines.append(f"  max_queue_delay_microseconds: {batching.max_queue_delay_us}")
    lines.append(f"  default_queue_policy {{ max_queue_size: {batching.max_queue} }}")
    return "\n".join([*lines, "}"])


def _param(key: str, value: str) -> str:
    return f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}'


def render_config(
    model: str,
    version: int | str,
    target: str,
    cpu: CpuRuntime | None = None,
    provenance: dict[str, str] | None = None,
    batching: BatchingSettings | None = None,
) -> str:
    """``config.pbtxt`` text for ``model`` in ``target``, built from signatures.

    ``provenance`` (model variant and weights of the newest export) is written
    as ``maskserve_*`` parameters, so that any client of Triton, including a
    frontend with no access to the repository's files, can report it.
    """
    inputs, outputs = (sig.SIGNATURES | sig.VIDEO_SIGNATURES)[model]
    holds_images = target == "cpu" and model == sig.DECODER_MODEL
    if holds_images:  # the embeddings stay in the decoder (maskserve.session.held)
        inputs = sig.HELD_DECODER_INPUTS
    batching = batching or (CPU_BATCHING if target == "cpu" else GPU_BATCHING)[model]
    parts = [f'name: "{sig.served_name(model, version)}"']
    cpu = cpu or CpuRuntime()
    if target == "cpu":
        parts.append('backend: "python"')
    else:
        parts.append('platform: "onnxruntime_onnx"')
    parts += [
        f"max_batch_size: {batching.max_batch_size}",
        _tensor_block("input", inputs),
        _tensor_block("output", outputs),
        _dynamic_batching(batching),
    ]
    kind = "KIND_CPU" if target == "cpu" else "KIND_GPU"
    parts.append(f"instance_group [ {{ count: {batching.instances} kind: {kind} }} ]")
    for key, value in (provenance or {}).items():
        parts.append(_param(f"maskserve_{key}", value.replace('"', "'")))
    if target == "cpu":
        parts += [
            _param("runtime", cpu.for_model(model).runtime),
            _param("precision", cpu.for_model(model).precision),
            _param("num_threads", str(cpu.threads)),
            _param("nice", str(cpu.nice(model))),
        ]
        if holds_images:
            parts.append(_param("held_images", str(HELD_IMAGES)))
    else:
        parts.append(
            "optimization { execution_accelerators { gpu_execution_accelerator: [ {\n"
            '  name: "tensorrt"\n'
            '  parameters { key: "precision_mode" value: "FP16" }\n'
            '  parameters { key: "max_workspace_size_bytes" value: "4294967296" }\n'
            '  parameters { key: "trt_engine_cache_enable" value: "1" }\n'
            '  parameters { key: "trt_engine_cache_path" value: "/tmp/trt_cache" }\n'
            "} ] } }"
        )
    return "\n".join(parts) + "\n"


def render_session_config(
    version: int | str, target: str, session: SessionSettings, provenance: dict[str, str] | None = None
) -> str:
    """``config.pbtxt`` of ``sam2_session_v<version>``: a decoupled python-backend model in both targets.

    It is decoupled so that its ``async`` execute serves many requests at once
    in one instance (one store per version); batching happens where it pays,
    in the encoder's and decoder's own dynamic batchers, which it calls
    through BLS. On the ``gpu`` target the graphs run on the GPU and the store
    holds the embeddings there too (``embeddings_memory device``, see docs/TRITON.md).
    """
    inputs, outputs = sig.SESSION_INPUTS, sig.SESSION_OUTPUTS
    decoder = (CPU_BATCHING if target == "cpu" else GPU_BATCHING)[sig.DECODER_MODEL]
    parts = [
        f'name: "{sig.served_name(sig.SESSION_MODEL, version)}"',
        'backend: "python"',
        "max_batch_size: 0",
        "model_transaction_policy { decoupled: true }",
        _tensor_block("input", inputs),
        _tensor_block("output", outputs),
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
        _param("cache_bytes", str(session.cache_bytes)),
        _param("storage", session.storage),
        _param("preprocess_threads", "2" if target == "cpu" else "4"),
        _param("decoder_batch", str(decoder.max_batch_size)),
        # the cpu decoder keeps the last images' embeddings: a prompt names its image (maskserve.session.held)
        _param("decoder_holds_images", "true" if target == "cpu" else "false"),
        # on the gpu target the store holds the embeddings on the GPU and passes them by DLPack
        _param("embeddings_memory", "host" if target == "cpu" else "device"),
    ]
    for key, value in (provenance or {}).items():
        parts.append(_param(f"maskserve_{key}", value.replace('"', "'")))
    return "\n".join(parts) + "\n"


def render_video_config(
    version: int | str, tracking: dict, video: VideoSettings, provenance: dict[str, str] | None = None
) -> str:
    """``config.pbtxt`` of ``sam2_video_v<version>``: a decoupled python-backend model in both targets."""
    parts = [
        f'name: "{sig.served_name(sig.VIDEO_SESSION_MODEL, version)}"',
        'backend: "python"',
        "max_batch_size: 0",
        "model_transaction_policy { decoupled: true }",
        _tensor_block("input", sig.VIDEO_SESSION_INPUTS),
        _tensor_block("output", sig.VIDEO_SESSION_OUTPUTS),
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
        _param("feature_bytes", str(video.feature_bytes)),
        _param("max_videos", str(video.max_videos)),
        _param("threads", "4"),
        _param("tracking", json.dumps(tracking, sort_keys=True).replace('"', '\\"')),
    ]
    for key, value in (provenance or {}).items():
        parts.append(_param(f"maskserve_{key}", value.replace('"', "'")))
    return "\n".join(parts) + "\n"


def write_video_version(
    out: Path, version: int, target: str, manifest: dict, tracking: dict, video: VideoSettings | None = None
) -> Path:
    """Install the video model as ``<out>/sam2_video_v<version>`` (its graphs are written by ``write_version``)."""
    video = video or VideoSettings()
    staging, final = _staging(out, sig.VIDEO_SESSION_MODEL, version)
    shutil.copyfile(VIDEO_SOURCE, staging / sig.TRITON_VERSION / "model.py")
    served = sig.served_name(sig.VIDEO_SESSION_MODEL, version)
    info = {**manifest, "triton_model": served, "version": version, "target": target, "tracking": tracking}
    text = render_video_config(version, tracking, video, provenance_of(info))
    (staging / "config.pbtxt").write_text(text)
    _install(staging, final, info, (sig.VIDEO_SESSION_INPUTS, sig.VIDEO_SESSION_OUTPUTS))
    return final


def model_dir(out: Path, model: str, version: int | str) -> Path:
    """Where Triton finds ``version`` of ``model``: the directory of its served model."""
    return out / sig.served_name(model, version)


def version_dir(out: Path, model: str, version: int | str) -> Path:
    """The files of ``version`` of ``model`` (``model.onnx``, ``manifest.json``, ``model.py``)."""
    return model_dir(out, model, version) / sig.TRITON_VERSION


def _staging(out: Path, model: str, version: int) -> tuple[Path, Path]:
    """A fresh staging directory for ``version`` of ``model``, and where it goes once complete."""
    final = model_dir(out, model, version)
    if final.exists():
        raise FileExistsError(f"{final} already exists; export a new version instead")
    staging = out / f".{final.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / sig.TRITON_VERSION).mkdir(parents=True)
    return staging, final


def _install(staging: Path, final: Path, manifest: dict, specs: tuple[tuple[sig.TensorSpec, ...], ...]) -> None:
    """Write the manifest (with the tensors), then move the model in: it appears whole or not at all."""
    inputs, outputs = specs
    full = {**manifest, "inputs": [s.__dict__ for s in inputs], "outputs": [s.__dict__ for s in outputs]}
    (staging / sig.TRITON_VERSION / "manifest.json").write_text(json.dumps(full, indent=2) + "\n")
    staging.rename(final)


def write_session_version(
    out: Path, version: int, target: str, manifest: dict, session: SessionSettings | None = None
) -> Path:
    """Install the session model as ``<out>/sam2_session_v<version>``."""
    session = session or SessionSettings()
    staging, final = _staging(out, sig.SESSION_MODEL, version)
    shutil.copyfile(SESSION_SOURCE, staging / sig.TRITON_VERSION / "model.py")
    stored = {"cache_bytes": session.cache_bytes, "storage": session.storage}
    served = sig.served_name(sig.SESSION_MODEL, version)
    info = {**manifest, "triton_model": served, "version": version, "target": target, "session": stored}
    (staging / "config.pbtxt").write_text(render_session_config(version, target, session, provenance_of(info)))
    _install(staging, final, info, (sig.SESSION_INPUTS, sig.SESSION_OUTPUTS))
    return final


def existing_versions(out: Path) -> list[int]:
    """The versions any lifecycle model has in ``out``."""
    return sorted(int(v) for v in sig.releases(p.name for p in (out.iterdir() if out.is_dir() else ()) if p.is_dir()))


def next_version(out: Path) -> int:
    versions = existing_versions(out)
    return versions[-1] + 1 if versions else 1


def write_version(
    out: Path,
    model: str,
    version: int,
    onnx_file: Path,
    target: str,
    manifest: dict,
    cpu: CpuRuntime | None = None,
    graphs: dict[str, Path] | None = None,
) -> Path:
    """Install ``onnx_file`` as the served model ``<out>/<model>_v<version>``; ``graphs`` (name → file) beside it."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")
    staging, final = _staging(out, model, version)
    files = staging / sig.TRITON_VERSION
    shutil.move(str(onnx_file), files / "model.onnx")
    for name, path in (graphs or {}).items():
        shutil.move(str(path), files / name)
    if target == "cpu":
        shutil.copyfile(BACKEND_SOURCE, files / "model.py")
    info = {
        **manifest,
        "triton_model": sig.served_name(model, version),
        "version": version,
        "target": target,
        "onnx_sha256": sha256_of(files / "model.onnx"),
    } | ({"graphs_sha256": {name: sha256_of(files / name) for name in sorted(graphs)}} if graphs else {})
    (staging / "config.pbtxt").write_text(render_config(model, version, target, cpu, provenance=provenance_of(info)))
    _install(staging, final, info, (sig.SIGNATURES | sig.VIDEO_SIGNATURES)[model])
    return final


def precompile(out: Path, model: str, version: int, cpu: CpuRuntime | None = None) -> None:
    """Compile a ``cpu`` graph model's OpenVINO graph into its version's cache (ONNX Runtime keeps none)."""
    cpu = cpu or CpuRuntime()
    runtime = cpu.for_model(model)
    if runtime.runtime == "openvino":
        compiled.precompile(version_dir(out, model, version), runtime.precision, cpu.threads)


def provenance_of(manifest: dict) -> dict[str, str]:
    weights = manifest["weights"]
    if weights["kind"] == "random":
        described = f"random (seed {weights['seed']})"
    else:
        described = f"checkpoint {weights['file']} (sha256 {weights['sha256']})"
    return {"model": manifest["model"], "weights": described, "version": str(manifest["version"])}


def read_manifest(version_dir: Path) -> dict:
    return json.loads((version_dir / "manifest.json").read_text())


def export_time() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
