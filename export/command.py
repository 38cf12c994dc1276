"""``maskserve export``: SAM 2 → two ONNX graphs → a versioned Triton repository."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskserve import __version__
from maskserve.core import signatures as sig
from maskserve.export import checkpoints, repository
from maskserve.export.checkpoints import WeightsSource
from maskserve.export.variants import DEFAULT_VARIANT, VARIANTS, Variant, get_variant

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The export cannot proceed; the message says what to do."""


@dataclass(frozen=True)
class ExportRequest:
    model: str = DEFAULT_VARIANT
    out: Path = Path("model_repository")
    checkpoint: Path | None = None
    download: bool = False
    download_dir: Path = Path("checkpoints")
    random_weights: bool = False
    auto_weights: bool = False  # the official checkpoint if it can be fetched, else random weights
    checkpoint_url: str | None = None  # a mirror of the official checkpoint (same file, same SHA-256)
    checkpoint_sha256: str | None = None  # with a mirror serving another file: its digest
    progress: bool = False  # progress bars on stderr (the command line turns them on)
    seed: int = 0
    target: str = "cpu"
    version: int | None = None
    cpu: repository.CpuRuntime = repository.CpuRuntime()
    session: repository.SessionSettings = repository.SessionSettings()
    video: bool = True  # SAM 2's video graphs and the video model beside the image ones


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_VARIANT, choices=sorted(VARIANTS))
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", type=Path, help="Meta's checkpoint file (.pt)")
    weights.add_argument(
        "--download",
        action="store_true",
        help="fetch the official SAM 2.1 checkpoint and verify its SHA-256",
    )
    weights.add_argument(
        "--random-weights",
        action="store_true",
        help="random initialisation (meaningless masks; tests and benchmarks only)",
    )
    weights.add_argument(
        "--auto-weights",
        action="store_true",
        help="--download when the checkpoint can be fetched; random weights (said loudly) only when it cannot",
    )
    parser.add_argument("--checkpoint-url", help="fetch the checkpoint from this mirror instead of Meta's URL")
    parser.add_argument("--checkpoint-sha256", help="the mirror's file digest, when it is not Meta's file")
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-weights")
    parser.add_argument("--download-dir", type=Path, default=Path("checkpoints"))
    parser.add_argument("--out", type=Path, default=Path("model_repository"))
    parser.add_argument("--target", choices=repository.TARGETS, default="cpu")
    parser.add_argument("--version", type=int, help="version number (default: next free)")
    parser.add_argument("--encoder-runtime", choices=("openvino", "onnxruntime"), default="openvino")
    parser.add_argument(
        "--encoder-precision",
        choices=("fp32", "bf16"),
        help="default: bf16 with openvino, fp32 with onnxruntime (its only choice here)",
    )
    parser.add_argument("--decoder-runtime", choices=("openvino", "onnxruntime"), default="openvino")
    parser.add_argument(
        "--decoder-precision",
        choices=("fp32", "bf16"),
        help="default: bf16 with openvino, fp32 with onnxruntime",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per model instance")
    parser.add_argument(
        "--session-cache-mib",
        type=int,
        default=repository.SessionSettings().cache_bytes >> 20,
        help="image embeddings the session model keeps per version, MiB (fp16: 8 MiB an image)",
    )
    parser.add_argument("--no-video", action="store_true", help="leave out the video graphs and model (images only)")
    parser.add_argument(
        "--session-storage",
        choices=("fp16", "fp32"),
        default="fp16",
        help="precision the session model keeps embeddings in",
    )


def request_from_args(args: argparse.Namespace) -> ExportRequest:
    encoder_precision = args.encoder_precision or ("bf16" if args.encoder_runtime == "openvino" else "fp32")
    decoder_precision = args.decoder_precision or ("bf16" if args.decoder_runtime == "openvino" else "fp32")
    cpu = repository.CpuRuntime(
        encoder=repository.ModelRuntime(args.encoder_runtime, encoder_precision),
        decoder=repository.ModelRuntime(args.decoder_runtime, decoder_precision),
        threads=args.threads,
    )
    try:
        cpu.encoder.validate()
        cpu.decoder.validate()
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    if args.session_cache_mib < 1:
        raise ExportError("--session-cache-mib must be at least 1")
    return ExportRequest(
        model=args.model,
        out=args.out,
        checkpoint=args.checkpoint,
        download=args.download,
        download_dir=args.download_dir,
        random_weights=args.random_weights,
        auto_weights=args.auto_weights,
        checkpoint_url=args.checkpoint_url,
        checkpoint_sha256=args.checkpoint_sha256,
        progress=True,
        seed=args.seed,
        target=args.target,
        version=args.version,
        cpu=cpu,
        session=repository.SessionSettings(args.session_cache_mib << 20, args.session_storage),
        video=not args.no_video,
    )


def _load_weights(req: ExportRequest) -> tuple[Variant, Any, WeightsSource]:
    variant = get_variant(req.model)
    if not (req.checkpoint or req.download or req.random_weights or req.auto_weights):
        raise ExportError(
            f"No weights given for {variant.name}. Pass --checkpoint PATH (Meta's "
            f"{variant.checkpoint_filename}, from {variant.url}), --download to fetch and "
            "verify it, --auto-weights to fetch it or else fall back to random weights, or "
            "--random-weights [--seed N] for the real architecture with random "
            "weights (tests and benchmarks only)."
        )
    model = checkpoints.build_model(variant, seed=req.seed)
    if req.random_weights:
        return variant, model, checkpoints.random_weights(req.seed)
    path = req.checkpoint
    if req.download or req.auto_weights:
        source = dataclasses.replace(
            variant,
            url=req.checkpoint_url or variant.url,
            sha256=req.checkpoint_sha256 or variant.sha256,
        )
        try:
            path = checkpoints.download_checkpoint(source, req.download_dir, progress=req.progress)
        except checkpoints.WeightsUnreachable as exc:
            if not req.auto_weights:
                raise
            log.warning("%s", exc)
            log.warning("the official checkpoint cannot be fetched: exporting with RANDOM WEIGHTS instead")
            return variant, model, checkpoints.random_weights(req.seed)
    if path is None:
        raise ExportError("no weights: give --checkpoint PATH, --download, --auto-weights or --random-weights")
    return variant, model, checkpoints.load_checkpoint(model, path)


def _export_video(model: Any, work: Path, req: ExportRequest, version: int, manifest: dict) -> None:
    """The three video graphs as served models, compiled for this CPU, and the video model over them."""
    from maskserve.export.onnx_export import export_video_graphs
    from maskserve.session.video import TrackingConfig

    for name, path in export_video_graphs(model, work).items():
        repository.write_version(req.out, name, version, path, req.target, manifest, req.cpu)
        if req.target == "cpu":
            repository.precompile(req.out, name, version, req.cpu)
    tracking = dataclasses.asdict(TrackingConfig.of_model(model))
    repository.write_video_version(req.out, version, req.target, manifest, tracking)


def run_export(req: ExportRequest) -> int:
    """Export both graphs and the session model as one new version; returns the version number."""
    from maskserve.export.onnx_export import OPSET, export_decoder, export_encoder, export_held_decoder

    try:
        variant, model, weights = _load_weights(req)
    except checkpoints.WeightsError as exc:
        raise ExportError(str(exc)) from exc
    req.out.mkdir(parents=True, exist_ok=True)
    version = req.version if req.version is not None else repository.next_version(req.out)
    for name in (*sig.LIFECYCLE_MODELS, *sig.VIDEO_MODELS):
        if (existing := repository.model_dir(req.out, name, version)).exists():
            raise ExportError(f"{existing} already exists")
    manifest = {
        "model": variant.name,
        "family": variant.family,
        "size": variant.size,
        "weights": weights.as_dict(),
        "opset": OPSET,
        "exported_at": repository.export_time(),
        "exporter": f"maskserve {__version__}",
    }
    log.info("exporting %s v%d (%s) to %s [%s]", variant.name, version, weights.describe(), req.out, req.target)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=req.out))
    from tqdm import tqdm

    steps: tuple[str, ...] = ("image encoder → ONNX", "prompt decoder → ONNX", "repository", "compile for this CPU")
    steps += ("session model", *(("video graphs",) if req.video else ()))
    try:
        with tqdm(total=len(steps), unit="step", desc="export", disable=not req.progress) as bar:

            def step(text: str) -> None:
                bar.set_postfix_str(text)

            step(steps[0])
            export_encoder(model, work / "encoder.onnx")
            bar.update()
            step(steps[1])
            export_decoder(model, work / "decoder.onnx")
            # the cpu decoder holds images prepared and runs their prompts on graphs of its own
            held = export_held_decoder(model, work / "held") if req.target == "cpu" else {}
            bar.update()
            step(steps[2])
            graphs = ((sig.ENCODER_MODEL, "encoder.onnx"), (sig.DECODER_MODEL, "decoder.onnx"))
            for name, path in graphs:
                extra = held if name == sig.DECODER_MODEL else None
                repository.write_version(req.out, name, version, work / path, req.target, manifest, req.cpu, extra)
            bar.update()
            step(steps[3])
            if req.target == "cpu":
                for name, _ in graphs:
                    repository.precompile(req.out, name, version, req.cpu)
            bar.update()
            step(steps[4])
            repository.write_session_version(req.out, version, req.target, manifest, req.session)
            bar.update()
            if req.video:
                step(steps[5])
                _export_video(model, work, req, version, manifest)
                bar.update()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return version
