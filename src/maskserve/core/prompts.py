"""Packing one object's prompt into the decoder's fixed point slots.

Coordinates are in the model's 1024×1024 frame. Order and padding follow SAM 2's
image predictor: box corners first (labels 2 and 3), then the points, then one
padding point (label -1) the predictor always appends; the remaining slots are
also label -1, which the exported decoder ignores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskserve.core.signatures import (
    BOX_BOTTOM_RIGHT_LABEL,
    BOX_TOP_LEFT_LABEL,
    DECODER_POINTS,
    LOW_RES_MASK_SIZE,
    MAX_PROMPT_POINTS,
    PAD_LABEL,
)


class PromptTooLarge(ValueError):
    pass


@dataclass(frozen=True)
class PackedPrompt:
    """One object's prompt as the model tier takes it (model frame, fixed slots)."""

    point_coords: np.ndarray  # [DECODER_POINTS, 2] float32
    point_labels: np.ndarray  # [DECODER_POINTS] int32
    mask_input: np.ndarray | None  # [1, 256, 256] float32 logits of an earlier mask, or None
    multimask: bool

    @property
    def nbytes(self) -> int:
        extra = 0 if self.mask_input is None else int(self.mask_input.nbytes)
        return int(self.point_coords.nbytes + self.point_labels.nbytes) + 1 + extra


def pack_prompt(
    points: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """→ ``point_coords`` [DECODER_POINTS, 2] float32 and ``point_labels`` [DECODER_POINTS] int32."""
    coords: list[np.ndarray] = []
    labs: list[np.ndarray] = []
    if box is not None:
        coords.append(np.asarray(box, np.float32).reshape(2, 2))
        labs.append(np.array([BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL], np.int32))
    if points is not None and len(points):
        coords.append(np.asarray(points, np.float32).reshape(-1, 2))
        labs.append(np.asarray(labels, np.int32).reshape(-1))
    used = sum(len(c) for c in coords)
    if used > MAX_PROMPT_POINTS:
        raise PromptTooLarge(f"at most {MAX_PROMPT_POINTS} prompt points (a box counts as 2), got {used}")
    point_coords = np.zeros((DECODER_POINTS, 2), np.float32)
    point_labels = np.full((DECODER_POINTS,), PAD_LABEL, np.int32)
    if used:
        point_coords[:used] = np.concatenate(coords)
        point_labels[:used] = np.concatenate(labs)
    return point_coords, point_labels


def stack_prompts(prompts: list[PackedPrompt]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """P prompts → ``point_coords`` [P, N, 2], ``point_labels`` [P, N] and ``mask_input`` [P, 1, 256, 256].

    ``mask_input`` holds zeros for a prompt without an earlier mask, and is
    None when no prompt has one.
    """
    coords = np.stack([p.point_coords for p in prompts]).astype(np.float32)
    labels = np.stack([p.point_labels for p in prompts]).astype(np.int32)
    if all(p.mask_input is None for p in prompts):
        return coords, labels, None
    masks = np.zeros((len(prompts), 1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE), np.float32)
    for i, prompt in enumerate(prompts):
        if prompt.mask_input is not None:
            masks[i] = prompt.mask_input.reshape(masks.shape[1:])
    return coords, labels, masks


def is_multimask(points: np.ndarray | None, box: np.ndarray | None) -> bool:
    """The predictor's rule as our contract states it: one point and no box."""
    return box is None and points is not None and len(points) == 1
