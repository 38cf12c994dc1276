"""A test-only stand-in for the few torchvision functions SAM 2's own predictor and mask generator import.

PyPI's torchvision does not load beside the CPU torch here, so
``sam2.sam2_image_predictor`` and ``sam2.automatic_mask_generator`` cannot be
imported as they are. ``meta_mask_generator`` installs this stand-in while it
imports them, so the reference that segment-everything is compared with is
Meta's generator running its own code; only these torchvision pieces are
written here, in torch, after torchvision's documented behaviour:
``batched_nms`` (greedy, by score, per category), ``box_area``, and the
``ToTensor``/``Resize`` (bilinear, antialiased on tensors)/``Normalize`` transforms.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    top_left = torch.max(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = torch.argsort(scores, descending=True, stable=True)
    ious = _pairwise_iou(boxes[order], boxes[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(int(order[i]))
        suppressed |= ious[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Categories never overlap: offset each category's boxes apart, then one NMS (torchvision's trick)."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


class ToTensor:
    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0


class Resize(nn.Module):
    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = [int(size[0]), int(size[1])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x[None], size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]


class Normalize(nn.Module):
    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@contextmanager
def installed() -> Iterator[None]:
    """``torchvision`` (ops.boxes, transforms) as these stand-ins while sam2's modules import."""
    root: Any = types.ModuleType("torchvision")
    ops: Any = types.ModuleType("torchvision.ops")
    boxes: Any = types.ModuleType("torchvision.ops.boxes")
    transforms: Any = types.ModuleType("torchvision.transforms")
    boxes.batched_nms, boxes.box_area, boxes.nms = batched_nms, box_area, nms
    transforms.ToTensor, transforms.Resize, transforms.Normalize = ToTensor, Resize, Normalize
    root.ops, ops.boxes, root.transforms = ops, boxes, transforms
    stand_ins = {"torchvision": root, "torchvision.ops": ops, "torchvision.ops.boxes": boxes}
    stand_ins["torchvision.transforms"] = transforms
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def meta_mask_generator(model: Any, **options: Any) -> Any:
    """``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator`` on ``model``, imported with the stand-ins."""
    with installed():
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        return SAM2AutomaticMaskGenerator(model, output_mode="coco_rle", **options)
