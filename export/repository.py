"""Writing exported models into a versioned Triton model repository.

Layout: ``<out>/<model>/config.pbtxt`` and ``<out>/<model>/<version>/`` with
``model.onnx``, ``manifest.json``, the version's own ``config.pbtxt`` and, for
the ``cpu`` target, the python-backend ``model.py`` that runs the ONNX file.
Both models of one export share one version number, so version N of the
decoder always belongs to version N of the encoder.

The model-level ``config.pbtxt`` (what Triton reads at start) is composed from
the versions' own files (``maskserve.triton.config``): the newest version's
model-wide settings, and every version's parameters under ``_v<version>``.
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
from maskserve.triton import config as model_config

# The python-backend models live in maskserve.session (they import Triton's python-backend utilities,
# which exist only inside Triton, so they are located as files rather than imported here).
BACKEND_SOURCE = Path(session.__file__).with_name("triton_graph.py")  # runs one ONNX graph (the cpu target)
SESSION_SOURCE = Path(session.__file__).with_name("triton_session.py")  # the session model
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

    def for_model(self, model: str) -> ModelRuntime:
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
    inputs, outputs = sig.SIGNATURES[model]
    batching = batching or (CPU_BATCHING if target == "cpu" else GPU_BATCHING)[model]
    parts = [f'name: "{model}"']
    cpu = cpu or CpuRuntime()
    if target == "cpu":
        parts.append('backend: "python"')
    else:
        parts.append('platform: "onnxruntime_onnx"')
    parts += [
        f"max_batch_size: {batching.max_batch_size}",
        "version_policy: { latest: { num_versions: 2 } }",
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


def render_session_config(target: str, session: SessionSettings, provenance: dict[str, str] | None = None) -> str:
    """``config.pbtxt`` of ``sam2_session``: a decoupled python-backend model in both targets.

    It is decoupled so that its ``async`` execute serves many requests at once
    in one instance (one store per version); batching happens where it pays,
    in the encoder's and decoder's own dynamic batchers, which it calls
    through BLS. On the ``gpu`` target the graphs run on the GPU; the store
    holds the embeddings in host memory in this version (see docs/TRITON.md).
    """
    inputs, outputs = sig.SESSION_INPUTS, sig.SESSION_OUTPUTS
    decoder = (CPU_BATCHING if target == "cpu" else GPU_BATCHING)[sig.DECODER_MODEL]
    parts = [
        f'name: "{sig.SESSION_MODEL}"',
        'backend: "python"',
        "max_batch_size: 0",
        "version_policy: { latest: { num_versions: 2 } }",
        "model_transaction_policy { decoupled: true }",
        _tensor_block("input", inputs),
        _tensor_block("output", outputs),
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
        _param("cache_bytes", str(session.cache_bytes)),
        _param("storage", session.storage),
        _param("preprocess_threads", "2" if target == "cpu" else "4"),
        _param("decoder_batch", str(decoder.max_batch_size)),
    ]
    for key, value in (provenance or {}).items():
        parts.append(_param(f"maskserve_{key}", value.replace('"', "'")))
    return "\n".join(parts) + "\n"


def _staging(model_dir: Path, version: int) -> tuple[Path, Path]:
    """A fresh staging directory for ``version``, and where it goes once complete."""
    version_dir = model_dir / str(version)
    if version_dir.exists():
        raise FileExistsError(f"{version_dir} already exists; export a new version instead")
    staging = model_dir / f".{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging, version_dir


def _install(staging: Path, version_dir: Path, manifest: dict, specs: tuple[tuple[sig.TensorSpec, ...], ...]) -> None:
    """Write the manifest (with the tensors), then move the version in: it appears whole or not at all."""
    inputs, outputs = specs
    full = {**manifest, "inputs": [s.__dict__ for s in inputs], "outputs": [s.__dict__ for s in outputs]}
    (staging / "manifest.json").write_text(json.dumps(full, indent=2) + "\n")
    staging.rename(version_dir)


def write_session_version(
    out: Path, version: int, target: str, manifest: dict, session: SessionSettings | None = None
) -> Path:
    """Install the session model as ``<out>/sam2_session/<version>`` and (re)write its config."""
    session = session or SessionSettings()
    model_dir = out / sig.SESSION_MODEL
    staging, version_dir = _staging(model_dir, version)
    shutil.copyfile(SESSION_SOURCE, staging / "model.py")
    stored = {"cache_bytes": session.cache_bytes, "storage": session.storage}
    info = {**manifest, "triton_model": sig.SESSION_MODEL, "version": version, "target": target, "session": stored}
    (staging / "config.pbtxt").write_text(render_session_config(target, session, provenance_of(info)))
    _install(staging, version_dir, info, (sig.SESSION_INPUTS, sig.SESSION_OUTPUTS))
    _write_model_config(model_dir)
    return version_dir


def _write_model_config(model_dir: Path) -> None:
    """The model-level file from every version's own configuration, the newest one's settings first."""
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    config = model_config.compose(model_dir, versions, max(versions))
    tmp = model_dir / "config.pbtxt.tmp"
    tmp.write_text(model_config.render(config))
    tmp.replace(model_dir / "config.pbtxt")


def existing_versions(out: Path) -> list[int]:
    versions: set[int] = set()
    for model in sig.LIFECYCLE_MODELS:
        model_dir = out / model
        if model_dir.is_dir():
            versions.update(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    return sorted(versions)


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
) -> Path:
    """Install ``onnx_file`` as ``<out>/<model>/<version>`` and (re)write the config."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")
    model_dir = out / model
    staging, version_dir = _staging(model_dir, version)
    shutil.move(str(onnx_file), staging / "model.onnx")
    if target == "cpu":
        shutil.copyfile(BACKEND_SOURCE, staging / "model.py")
    info = {
        **manifest,
        "triton_model": model,
        "version": version,
        "target": target,
        "onnx_sha256": sha256_of(staging / "model.onnx"),
    }
    (staging / "config.pbtxt").write_text(render_config(model, target, cpu, provenance=provenance_of(info)))
    _install(staging, version_dir, info, sig.SIGNATURES[model])
    _write_model_config(model_dir)
    return version_dir


def provenance_of(manifest: dict) -> dict[str, str]:
    weights = manifest["weights"]
    if weights["kind"] == "random":
        described = f"random (seed {weights['seed']})"
    else:
        described = f"checkpoint {weights['file']} (sha256 {weights['sha256']})"
    return {"model": manifest["model"], "weights": described, "version": str(manifest["version"])}


def repository_provenance(model_dir: Path) -> dict[str, str]:
    """Provenance of every version in ``model_dir`` (``model_vN``, ``weights_vN``), the newest unsuffixed too."""
    out: dict[str, str] = {}
    versions = sorted(
        (p for p in model_dir.iterdir() if p.name.isdigit() and (p / "manifest.json").is_file()),
        key=lambda p: int(p.name),
    )
    for version_dir in versions:
        info = provenance_of(read_manifest(version_dir))
        out[f"model_v{version_dir.name}"] = info["model"]
        out[f"weights_v{version_dir.name}"] = info["weights"]
        out.update(info)
    return out


def read_manifest(version_dir: Path) -> dict:
    return json.loads((version_dir / "manifest.json").read_text())


def export_time() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
