"""torch → ONNX for the two graphs, with the tensor names of maskserve.core.signatures."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from maskserve.core import signatures as sig
from maskserve.export.wrappers import HeldDecoder, ImageEncoder, ImagePreparation, PromptDecoder

log = logging.getLogger(__name__)

OPSET = 17


def _example_decoder_inputs(batch: int = 2) -> tuple[torch.Tensor, ...]:
    """``batch`` prompts on one image: the trace sees the image tensors broadcast over the prompts."""
    inputs = []
    for spec in sig.DECODER_INPUTS:
        shape = (1 if spec in sig.ENCODER_OUTPUTS else batch, *spec.dims)
        if spec.dtype == "int32":
            inputs.append(torch.full(shape, sig.PAD_LABEL, dtype=torch.int32))
        else:
            inputs.append(torch.zeros(shape, dtype=torch.float32))
    return tuple(inputs)


def _export(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: tuple[sig.TensorSpec, ...],
    outputs: tuple[sig.TensorSpec, ...],
    first_axes: dict[str, str] | None = None,
) -> None:
    """``first_axes``: a name other than ``batch`` for some inputs' first axis (a size of their own)."""
    dynamic_axes = {
        spec.name: {0: (first_axes or {}).get(spec.name, "batch")}
        | {i + 1: f"{spec.name}_{i + 1}" for i, d in enumerate(spec.dims) if d < 0}
        for spec in (*inputs, *outputs)
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


@contextlib.contextmanager
def _constant_pos_embed(sam2_model: Any) -> Iterator[None]:
    """Make Hiera's positional embedding a constant of the graph while exporting.

    Hiera resizes its learned embedding to the patch grid with a bicubic
    interpolation on every call. At our fixed 1024² input that result is a
    constant; left as an op, OpenVINO constant-folds it with a reference kernel
    that takes ~100 s per model load. Computing it once here gives the same
    values (it is the same function) and a graph that compiles in seconds.
    """
    trunk = sam2_model.image_encoder.trunk
    grid = sig.IMAGE_SIZE // trunk.patch_embed.proj.stride[0]
    with torch.no_grad():
        pos_embed = trunk._get_pos_embed((grid, grid)).detach().clone()

    def fixed(hw: tuple[int, int]) -> torch.Tensor:
        if tuple(hw) != (grid, grid):
            raise ValueError(f"exported encoder only supports a {grid}x{grid} patch grid")
        return pos_embed

    trunk._get_pos_embed = fixed
    try:
        yield
    finally:
        del trunk._get_pos_embed  # back to the class's own method


def export_encoder(sam2_model: Any, path: Path) -> None:
    module = ImageEncoder(sam2_model).eval()
    example = (torch.zeros(1, 3, sig.IMAGE_SIZE, sig.IMAGE_SIZE),)
    with _constant_pos_embed(sam2_model):
        _export(module, example, path, sig.ENCODER_INPUTS, sig.ENCODER_OUTPUTS)


def export_decoder(sam2_model: Any, path: Path) -> None:
    module = PromptDecoder(sam2_model).eval()
    images = {spec.name: sig.DECODER_IMAGE_AXIS for spec in sig.ENCODER_OUTPUTS}  # 1 or one per prompt
    _export(module, _example_decoder_inputs(), path, sig.DECODER_INPUTS, sig.DECODER_OUTPUTS, images)


def export_held_decoder(sam2_model: Any, where: Path) -> dict[str, Path]:
    """The cpu decoder's graphs for held images: the image's preparation and the decoders on it (with masks or not).

    → file name (``sig.PREPARE_GRAPH``, ``sig.HELD_GRAPHS``) → its path in ``where``.
    """
    images = {spec.name: sig.DECODER_IMAGE_AXIS for spec in (*sig.ENCODER_OUTPUTS, *sig.PREPARED_IMAGE)}
    files = {sig.PREPARE_GRAPH: where / sig.PREPARE_GRAPH}
    embeddings = _example_decoder_inputs()[: len(sig.ENCODER_OUTPUTS)]
    preparation = ImagePreparation(sam2_model).eval()
    _export(preparation, embeddings, files[sig.PREPARE_GRAPH], sig.ENCODER_OUTPUTS, sig.PREPARED_IMAGE, images)
    with torch.no_grad():
        prepared = preparation(*embeddings)
    prompts = _example_decoder_inputs()[len(sig.ENCODER_OUTPUTS) :]
    for with_masks, name in sig.HELD_GRAPHS.items():
        inputs = sig.HELD_GRAPH_INPUTS[with_masks]
        files[name] = where / name
        module = HeldDecoder(sam2_model, with_masks).eval()
        args = (*prepared, *prompts[: len(inputs) - len(prepared)])
        _export(module, args, files[name], inputs, sig.DECODER_OUTPUTS, images)
    return files


def export_graph(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, model: str) -> None:
    """Export one of the video graphs (``signatures.VIDEO_SIGNATURES``) traced on ``args``."""
    inputs, outputs = sig.VIDEO_SIGNATURES[model]
    _export(module, args, path, inputs, outputs)


def _example_video_inputs(model: str) -> tuple[torch.Tensor, ...]:
    """Inputs to trace a video graph on: a batch of one, two memories and two pointers."""
    inputs = []
    for spec in sig.VIDEO_SIGNATURES[model][0]:
        shape = (1, *(2 if d < 0 else d for d in spec.dims))
        if spec.name == "point_labels":
            inputs.append(torch.full(shape, sig.PAD_LABEL, dtype=torch.int32))
        elif spec.dtype == "int32":
            inputs.append(torch.zeros(shape, dtype=torch.int32))
        elif spec.name.endswith("_valid"):
            inputs.append(torch.ones(shape))
        else:
            inputs.append(torch.zeros(shape))
    return tuple(inputs)


def export_video_graphs(sam2_model: Any, where: Path) -> dict[str, Path]:
    """SAM 2's three video graphs as ``<where>/<model>.onnx``; → model name → file."""
    from maskserve.export.video_wrappers import MemoryAttention, MemoryEncoder, TrackDecoder

    modules = {
        sig.MEMORY_ATTENTION_MODEL: MemoryAttention(sam2_model),
        sig.MEMORY_ENCODER_MODEL: MemoryEncoder(sam2_model),
        sig.TRACK_DECODER_MODEL: TrackDecoder(sam2_model),
    }
    files = {}
    for name, module in modules.items():
        files[name] = where / f"{name}.onnx"
        export_graph(module.eval(), _example_video_inputs(name), files[name], name)
    return files
