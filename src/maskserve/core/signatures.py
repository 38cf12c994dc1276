"""One source of truth for the Triton model names and tensor signatures.

The exporter names ONNX tensors from here, the repository writer builds every
``config.pbtxt`` from here, and the frontend's Triton client reads the same
constants, so a rename can only happen in one place (a test checks that the
exported graphs and the written configs agree with this module).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

ENCODER_MODEL = "sam2_image_encoder"
DECODER_MODEL = "sam2_prompt_decoder"
SESSION_MODEL = "sam2_session"
"""The model the frontends call: embeddings kept next to the two graphs (python backend, BLS)."""

IMAGE_SIZE = 1024
EMBED_SIZE = 64
LOW_RES_MASK_SIZE = 256
NUM_MASK_OUTPUTS = 4
"""Token 0 is the single-mask output, tokens 1..3 the three multimask candidates."""

MAX_PROMPT_POINTS = 16
"""Points per decoder request, box corners included, before padding.

Every request is padded to ``DECODER_POINTS`` so that Triton's dynamic batcher
can put prompts from different clients into one batch."""

DECODER_POINTS = MAX_PROMPT_POINTS + 1
"""Fixed N of ``point_coords``: room for ``MAX_PROMPT_POINTS`` plus the one
padding point SAM 2's image predictor always appends."""

MAX_OBJECTS = 16
"""Prompt objects per request (``objects``)."""
EVERYTHING_PARAMS = 5
"""Segment-everything's ``everything`` input: pred_iou_thresh, stability_score_thresh, height, width, budget_s."""

PAD_LABEL = -1
BOX_TOP_LEFT_LABEL = 2
BOX_BOTTOM_RIGHT_LABEL = 3

# SAM 2's image normalisation (ImageNet statistics on 0..1 pixels).
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as Triton sees it: ``dims`` exclude the batch dimension."""

    name: str
    dtype: str  # numpy dtype name, or "bytes"
    dims: tuple[int, ...]
    optional: bool = False

    @property
    def triton_dtype(self) -> str:
        return {"float32": "FP32", "int32": "INT32", "float16": "FP16", "bool": "BOOL", "bytes": "STRING"}[self.dtype]


ENCODER_INPUTS = (TensorSpec("image", "float32", (3, IMAGE_SIZE, IMAGE_SIZE)),)
ENCODER_OUTPUTS = (
    TensorSpec("image_embed", "float32", (256, EMBED_SIZE, EMBED_SIZE)),
    TensorSpec("high_res_feats_0", "float32", (32, 4 * EMBED_SIZE, 4 * EMBED_SIZE)),
    TensorSpec("high_res_feats_1", "float32", (64, 2 * EMBED_SIZE, 2 * EMBED_SIZE)),
)
DECODER_INPUTS = (
    *ENCODER_OUTPUTS,
    TensorSpec("point_coords", "float32", (DECODER_POINTS, 2)),
    TensorSpec("point_labels", "int32", (DECODER_POINTS,)),
    TensorSpec("mask_input", "float32", (1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)),
    TensorSpec("has_mask_input", "float32", ()),
)
DECODER_OUTPUTS = (
    TensorSpec("low_res_masks", "float32", (NUM_MASK_OUTPUTS, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)),
    TensorSpec("iou_predictions", "float32", (NUM_MASK_OUTPUTS,)),
)

SIGNATURES: dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]] = {
    ENCODER_MODEL: (ENCODER_INPUTS, ENCODER_OUTPUTS),
    DECODER_MODEL: (DECODER_INPUTS, DECODER_OUTPUTS),
}

DECODER_IMAGE_AXIS = "images"
"""The decoder graph's first axis of the image tensors: one item per prompt (``batch``), or 1, shared by all."""
IMAGE_KEY = "image_key"
"""The ``cpu`` target's decoder model: which image a prompt is on (see ``maskserve.session.held``)."""
NOT_HELD = "image embeddings not held"
"""The ``cpu`` decoder's error for a prompt whose image it no longer holds: the caller sends them again."""
HELD_DECODER_INPUTS = (
    TensorSpec(IMAGE_KEY, "bytes", (1,), optional=True),
    *(TensorSpec(spec.name, spec.dtype, spec.dims, optional=True) for spec in ENCODER_OUTPUTS),
    *DECODER_INPUTS[len(ENCODER_OUTPUTS) :],
)
"""The ``cpu`` decoder model's inputs: the graph's, where the embeddings may stay out when the image is held."""

# The cpu decoder runs a held image's prompts on the image prepared once (maskserve.export.wrappers.ImagePreparation):
# the prompt-independent half of the first transformer layer, and the high-resolution features laid out as the
# upscaling's matrix products read them. SAM 2's mask decoder has the same shape in every size.
DECODER_DIM = 256
CROSS_ATTENTION_HEADS = 8
CROSS_ATTENTION_HEAD_DIM = 16
"""The decoder's cross-attention: 8 heads of 16 (its 256 channels downsampled by 2)."""
_TOKENS = EMBED_SIZE * EMBED_SIZE
_HEADS = (CROSS_ATTENTION_HEADS, _TOKENS, CROSS_ATTENTION_HEAD_DIM)
PREPARED_IMAGE = (
    TensorSpec("image_tokens", "float32", (_TOKENS, DECODER_DIM)),  # image_embed + no-mask embedding, per token
    TensorSpec("first_keys", "float32", _HEADS),  # layer 1, tokens to image: the image's keys
    TensorSpec("first_values", "float32", _HEADS),  # layer 1, tokens to image: the image's values
    TensorSpec("first_queries", "float32", _HEADS),  # layer 1, image to tokens: the image's queries
    # high_res_feats_1 + the first upscaling's bias, channels last; row (i, j, a, b) is pixel (2i + a, 2j + b)
    TensorSpec("high_res_blocks_1", "float32", (_TOKENS * 4, 64)),
    # high_res_feats_0 + the second upscaling's bias; row (i, j, a, b, c, d) is pixel (4i + 2a + c, 4j + 2b + d)
    TensorSpec("high_res_blocks_0", "float32", (_TOKENS * 16, 32)),
)
PREPARE_GRAPH = "prepare.onnx"
"""The cpu decoder's graph from an image's embeddings (``ENCODER_OUTPUTS``) to ``PREPARED_IMAGE``."""
HELD_GRAPHS = {False: "held.onnx", True: "held_masks.onnx"}
"""The cpu decoder's graphs from a prepared image and prompts to ``DECODER_OUTPUTS``, by whether they take masks."""
HELD_GRAPH_INPUTS = {
    False: (*PREPARED_IMAGE, *DECODER_INPUTS[len(ENCODER_OUTPUTS) : len(ENCODER_OUTPUTS) + 2]),
    True: (*PREPARED_IMAGE, *DECODER_INPUTS[len(ENCODER_OUTPUTS) :]),
}

# SAM 2's video path: three graphs beside the image encoder (whose ``image_embed`` they take), run per object.
MEMORY_ATTENTION_MODEL = "sam2_memory_attention"
"""A frame's features conditioned on an object's memory: its conditioning and recent frames, and its pointers."""
MEMORY_ENCODER_MODEL = "sam2_memory_encoder"
"""A frame's features and an object's mask on it, encoded into one memory of that object."""
TRACK_DECODER_MODEL = "sam2_track_decoder"
"""The mask decoder on (memory-conditioned) features, with the object pointer and object score."""

MEMORY_DIM = 64
"""Channels of one memory frame (64 x 64 positions) and of one object-pointer token."""
HIDDEN_DIM = 256
"""Channels of an image embedding and of an object pointer (four memory tokens)."""
MASKED_LABEL = -2
"""A point slot of the track decoder that is left out (PAD_LABEL there is SAM 2's not-a-point token, attended)."""
NO_OBJECT_SCORE = -1024.0
"""The logit SAM 2 gives every pixel of a frame where the object is predicted absent."""

MEMORY_ATTENTION_INPUTS = (
    TensorSpec("image_embed", "float32", (HIDDEN_DIM, EMBED_SIZE, EMBED_SIZE)),
    TensorSpec("memory", "float32", (-1, MEMORY_DIM, EMBED_SIZE, EMBED_SIZE)),  # F memory frames
    TensorSpec("memory_tpos", "int32", (-1,)),  # SAM 2's t_pos of each: 0 conditioning, 1..num_maskmem-1 recent
    TensorSpec("memory_valid", "float32", (-1,)),  # 1: attend to it; 0: padding
    TensorSpec("obj_ptrs", "float32", (-1, HIDDEN_DIM)),  # P object pointers
    TensorSpec("obj_ptr_tpos", "float32", (-1,)),  # each one's signed frame distance / (max pointers - 1)
    TensorSpec("obj_ptr_valid", "float32", (-1,)),
)
MEMORY_ATTENTION_OUTPUTS = (TensorSpec("pix_feat", "float32", (HIDDEN_DIM, EMBED_SIZE, EMBED_SIZE)),)
MEMORY_ENCODER_INPUTS = (
    TensorSpec("image_embed", "float32", (HIDDEN_DIM, EMBED_SIZE, EMBED_SIZE)),
    TensorSpec("mask_logits", "float32", (1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)),  # the chosen low-res mask
    TensorSpec("object_score_logits", "float32", (1,)),
    TensorSpec("binarize", "float32", ()),  # 1: the mask came from clicks (encoded as the user saw it)
)
MEMORY_ENCODER_OUTPUTS = (TensorSpec("maskmem_features", "float32", (MEMORY_DIM, EMBED_SIZE, EMBED_SIZE)),)
TRACK_DECODER_INPUTS = (
    TensorSpec("pix_feat", "float32", (HIDDEN_DIM, EMBED_SIZE, EMBED_SIZE)),
    *DECODER_INPUTS[1:],
)
TRACK_DECODER_OUTPUTS = (
    *DECODER_OUTPUTS,  # with NO_OBJECT_SCORE everywhere when the object is absent
    TensorSpec("obj_ptrs", "float32", (NUM_MASK_OUTPUTS, HIDDEN_DIM)),  # the pointer each mask token gives
    TensorSpec("object_score_logits", "float32", (1,)),
)
VIDEO_SIGNATURES: dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]] = {
    MEMORY_ATTENTION_MODEL: (MEMORY_ATTENTION_INPUTS, MEMORY_ATTENTION_OUTPUTS),
    MEMORY_ENCODER_MODEL: (MEMORY_ENCODER_INPUTS, MEMORY_ENCODER_OUTPUTS),
    TRACK_DECODER_MODEL: (TRACK_DECODER_INPUTS, TRACK_DECODER_OUTPUTS),
}

VIDEO_SESSION_MODEL = "sam2_video"
"""The model the frontends call for videos: each video's tracking state next to the graphs (python backend, BLS)."""
VIDEO_OBJECTS = 16
"""Objects one video tracks (the contract's ``object_id`` 1-16)."""
VIDEO_SESSION_INPUTS = (
    TensorSpec("call", "bytes", (1,)),  # the operation as JSON (maskserve.core.video_io.VideoCall)
    TensorSpec("frames", "bytes", (-1,), optional=True),  # JPEGs of the frames the call needs
    TensorSpec("frame_index", "int32", (-1,), optional=True),  # which frame each one is
)
VIDEO_SESSION_OUTPUTS = (
    TensorSpec("status", "bytes", (1,)),  # "" done; "restore": the state is gone, send the prompts; "frame:<k>"
    TensorSpec("object_ids", "int32", (-1,)),  # the objects answered, ascending
    TensorSpec("low_res_logits", "float32", (-1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)),  # each one's mask
    TensorSpec("score", "float32", (-1,)),  # the chosen mask's predicted IoU
    TensorSpec("object_score", "float32", (-1,)),  # SAM 2's object score logit (< 0: the object is absent)
)
VIDEO_MODELS = (*VIDEO_SIGNATURES, VIDEO_SESSION_MODEL)
"""Served beside a version's image models when its export has them (version N's video calls its encoder)."""

SESSION_INPUTS = (
    TensorSpec("digest", "bytes", (1,)),  # SHA-256 (hex) of the image as uploaded
    TensorSpec("image", "bytes", (1,), optional=True),  # the upload itself, only when the model asks for it
    # P prompt objects on the image (1-16), decoded together; or segment-everything's P grid points
    TensorSpec("point_coords", "float32", (-1, DECODER_POINTS, 2)),
    TensorSpec("point_labels", "int32", (-1, DECODER_POINTS)),
    TensorSpec("mask_input", "float32", (-1, 1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE), optional=True),
    TensorSpec("multimask", "bool", (-1,)),
    # present: segment-everything over the points (pred_iou_thresh, stability_score_thresh, height, width,
    # budget_s: the seconds the call may take; a grid projected to take longer is stopped early)
    TensorSpec("everything", "float32", (EVERYTHING_PARAMS,), optional=True),
)
SESSION_OUTPUTS = (
    TensorSpec("needs_image", "bool", (1,)),  # the embeddings are unknown here: send the image
    TensorSpec("rejected", "bytes", (1,)),  # why the image could not be read ("" when it could)
    TensorSpec("low_res_logits", "float32", (-1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)),  # each object's mask
    TensorSpec("score", "float32", (-1,)),  # their predicted IoU
    TensorSpec("masks", "bytes", (1,)),  # segment-everything: JSON list of RLE masks ("" otherwise)
    # segment-everything stopped because its grid would overrun budget_s: [seconds spent before the
    # grid, measured seconds per grid point]; zeros when it ran to the end
    TensorSpec("overrun", "float32", (2,)),
)

LIFECYCLE_MODELS = (ENCODER_MODEL, DECODER_MODEL, SESSION_MODEL)
"""Loaded, promoted and unloaded together: version N of the session calls version N of the graphs."""

TRITON_VERSION = "1"
"""The one Triton version directory inside every served model (see ``served_name``)."""

_SERVED = re.compile(rf"^({'|'.join(LIFECYCLE_MODELS)})_v([1-9][0-9]*)$")


def served_name(model: str, version: int | str) -> str:
    """The Triton model that serves ``version`` of ``model``: every version is a model of its own.

    Triton holds one configuration per model, shared by all its versions, and
    loading or unloading one version of a model restarts the instances of the
    others (their stores then start empty, and requests on them fail while
    they restart). As models of their own, a version loads and unloads beside
    the others without touching them (benchmarks/README.md, "Releases").
    """
    return f"{model}_v{int(version)}"


def release_of(name: str) -> tuple[str, str] | None:
    """``(model, version)`` of a served model's name; ``None`` for a name that is not one."""
    found = _SERVED.match(name)
    return None if found is None else (found.group(1), found.group(2))


def version_of(name: str) -> str | None:
    """The version in any served model's name (``<model>_v<N>``), lifecycle or video; ``None`` otherwise."""
    found = re.match(r"^sam2_[a-z_]+_v([1-9][0-9]*)$", name)
    return None if found is None else found.group(1)


def releases(names: Iterable[str]) -> dict[str, set[str]]:
    """Version -> the lifecycle models among ``names`` (served model names; any other name is skipped)."""
    found: dict[str, set[str]] = {}
    for name in names:
        served = release_of(name)
        if served is not None:
            found.setdefault(served[1], set()).add(served[0])
    return found
