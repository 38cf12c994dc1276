"""The reference peer: the same requests done in-process by the ``sam2`` PyTorch
model, the way a user would without us (fp32, same weights, same threads).

Per image it does what SAM 2's image predictor does (``set_image`` then
``predict``, via ``export.reference``), keeps the last image's features like a
predictor object does, upsamples with PyTorch, and encodes the mask PNG with
Pillow, so both sides deliver the same artefact.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from maskserve.core.signatures import PIXEL_MEAN, PIXEL_STD
from maskserve.export import reference
from maskserve.export.checkpoints import build_model
from maskserve.export.variants import get_variant


class TorchPeer:
    def __init__(self, model: str = "sam2.1_hiera_tiny", seed: int = 0, threads: int = 2) -> None:
        torch.set_num_threads(threads)
        self.model = build_model(get_variant(model), seed=seed)
        self._features: tuple[str, dict] | None = None

    @staticmethod
    def _tensor(rgb: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float()[None] / 255.0
        x = F.interpolate(x, (1024, 1024), mode="bilinear", align_corners=False, antialias=True)
        return (x - torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor(PIXEL_STD).view(1, 3, 1, 1)

    @torch.no_grad()
    def encode(self, rgb: np.ndarray) -> dict:
        return reference.encode(self.model, self._tensor(rgb))

    @torch.no_grad()
    def segment(self, data: bytes, point: tuple[float, float]) -> bytes:
        """One request: JPEG bytes and a point → the mask PNG."""
        rgb = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        height, width = rgb.shape[:2]
        digest = hashlib.sha256(data).hexdigest()
        if self._features is None or self._features[0] != digest:
            self._features = (digest, self.encode(rgb))
        scaled = np.array([[point[0] * 1024 / width, point[1] * 1024 / height]], np.float32)
        logits, _ = reference.decode(self.model, self._features[1], scaled, np.array([1]), None, None, True)
        full = F.interpolate(logits[None, None], (height, width), mode="bilinear", align_corners=False)[0, 0]
        mask = np.where(full.numpy() > 0, 255, 0).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(mask, "L").save(buf, format="PNG")
        return buf.getvalue()
