"""The PyTorch path exactly as SAM 2's image predictor runs it.

The predictor itself (``sam2.sam2_image_predictor``) imports torchvision, which
has no CPU build that loads beside our torch, so these functions repeat its
``set_image`` and ``_predict`` steps on the model's own modules, call for call.
Parity tests compare the exported graphs against them, and the benchmarks use
them as the reference peer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from maskserve.core.signatures import BOX_BOTTOM_RIGHT_LABEL, BOX_TOP_LEFT_LABEL


@torch.no_grad()
def encode(model: Any, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """``set_image`` after its transforms, for a normalised [1, 3, 1024, 1024] image."""
    backbone_out = model.forward_image(image)
    _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    sizes = [(256, 256), (128, 128), (64, 64)]
    feats = [
        feat.permute(1, 2, 0).view(1, -1, *size) for feat, size in zip(vision_feats[::-1], sizes[::-1], strict=False)
    ][::-1]
    return {"image_embed": feats[-1], "high_res_feats": feats[:-1]}


@torch.no_grad()
def decode(
    model: Any,
    features: dict[str, torch.Tensor],
    points: np.ndarray | None,
    labels: np.ndarray | None,
    box: np.ndarray | None,
    mask_input: np.ndarray | None,
    multimask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``_predict`` up to the low-resolution logits; coordinates in the 1024 frame."""
    concat = None
    if points is not None:
        concat = (
            torch.as_tensor(points, dtype=torch.float32)[None],
            torch.as_tensor(labels, dtype=torch.int32)[None],
        )
    if box is not None:
        box_coords = torch.as_tensor(box, dtype=torch.float32).reshape(1, 2, 2)
        box_labels = torch.tensor([[BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL]], dtype=torch.int32)
        if concat is not None:
            concat = (torch.cat([box_coords, concat[0]], 1), torch.cat([box_labels, concat[1]], 1))
        else:
            concat = (box_coords, box_labels)
    masks = None if mask_input is None else torch.as_tensor(mask_input, dtype=torch.float32).reshape(1, 1, 256, 256)
    sparse, dense = model.sam_prompt_encoder(points=concat, boxes=None, masks=masks)
    low_res, iou, _, _ = model.sam_mask_decoder(
        image_embeddings=features["image_embed"],
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=False,
        high_res_features=features["high_res_feats"],
    )
    if multimask:
        best = int(torch.argmax(iou[0]))
        return low_res[0, best], iou[0, best]
    return low_res[0, 0], iou[0, 0]
