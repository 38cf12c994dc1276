"""Our tracker on the exported video graphs against Meta's ``SAM2VideoPredictor``, on random weights.

A 16-frame synthetic clip with two moving shapes; a click on frame 0, propagation forward, a
correction on frame 10, and propagation again from frame 10. Every frame's mask of both
propagations agrees with Meta's predictor (``init_state``, ``add_new_points_or_box``,
``propagate_in_video``) at binary IoU >= 0.95. Both run in fp32 on the CPU. Meta's predictor fills
holes of up to 8 px with its CUDA extension, which a CPU install lacks: a test-only stand-in for that
one function (``maskserve.devtools.sam2_ext_standin``) lets Meta's own code fill them, as it does on a
GPU, and ours fills them too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskserve.core import signatures as sig
from maskserve.devtools import sam2_ext_standin
from maskserve.devtools.pictures import moving_shapes_clip
from maskserve.export.wrappers import ImageEncoder
from maskserve.session.video import Tracker, TrackingConfig

FRAMES, W, H = 16, 320, 240
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.timeout(1800)]


class OrtGraphs:
    def __init__(self, model, where) -> None:
        import onnxruntime as ort

        from maskserve.export.onnx_export import export_video_graphs

        self.sessions = {
            name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            for name, path in export_video_graphs(model, where).items()
        }

    def attend(self, **inputs):
        return self.sessions[sig.MEMORY_ATTENTION_MODEL].run(None, inputs)[0]

    def decode(self, **inputs):
        return self.sessions[sig.TRACK_DECODER_MODEL].run(None, inputs)

    def encode_memory(self, **inputs):
        return self.sessions[sig.MEMORY_ENCODER_MODEL].run(None, inputs)[0]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _video_mask(logits: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.asarray(logits, np.float32)).reshape(1, 1, *logits.shape[-2:])
    return (F.interpolate(t, size=(H, W), mode="bilinear", align_corners=False) > 0)[0, 0].numpy()


@torch.no_grad()
def test_tracker_matches_sam2_video_predictor(tmp_path, report):
    from sam2.build_sam import build_sam2_video_predictor

    from maskserve.export.variants import get_variant

    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    moving_shapes_clip(frames_dir, FRAMES, W, H)
    torch.manual_seed(11)
    predictor = build_sam2_video_predictor(get_variant("sam2.1_hiera_tiny").config, None, device="cpu")
    state = predictor.init_state(video_path=str(frames_dir))

    encoder = ImageEncoder(predictor).eval()
    cache: dict[int, tuple[np.ndarray, ...]] = {}

    def features(frame: int):
        if frame not in cache:
            image = state["images"][frame].float()[None]
            cache[frame] = tuple(t.numpy() for t in encoder(image))
        return cache[frame]

    tracker = Tracker(OrtGraphs(predictor, tmp_path), features, FRAMES, TrackingConfig.of_model(predictor))

    def click(frame: int, x: float, y: float, label: int) -> float:
        _, _, masks = predictor.add_new_points_or_box(
            state,
            frame_idx=frame,
            obj_id=1,
            points=np.array([[x, y]], np.float32),
            labels=np.array([label], np.int32),
            clear_old_points=False,
        )
        coords = np.array([[x / W * sig.IMAGE_SIZE, y / H * sig.IMAGE_SIZE]], np.float32)
        ours = tracker.add_points(frame, 1, coords, np.array([label]), clear=False)
        return _iou(_video_mask(ours.logits), (masks[0, 0] > 0).numpy())

    areas: list[float] = []

    def propagate(start: int) -> list[float]:
        theirs = {f: (m[0, 0] > 0).numpy() for f, _, m in predictor.propagate_in_video(state, start_frame_idx=start)}
        ours = {f: _video_mask(out[1].logits) for f, out in tracker.propagate(start=start)}
        assert sorted(ours) == sorted(theirs)
        areas.extend(float(m.mean()) for m in theirs.values())
        return [_iou(ours[f], theirs[f]) for f in sorted(theirs)]

    with sam2_ext_standin.installed() as filled:
        ious = {"click frame 0": [click(0, 80, 100, 1)]}
        ious["propagation 1"] = propagate(0)
        ious["correction frame 10"] = [click(10, 230, 120, 0)]
        ious["propagation 2"] = propagate(10)
    report(
        "video parity vs SAM2VideoPredictor (16 frames, random weights, holes filled): "
        + "; ".join(f"{k}: min IoU {min(v):.4f}" for k, v in ious.items())
        + f"; mask area per frame {min(areas):.1%}-{max(areas):.1%} of the frame; "
        + f"{filled['with_small_regions']} of {filled['masks']} of Meta's masks had holes to fill"
    )
    assert filled["masks"] > 0  # Meta's predictor did run its hole filling
    assert sum(0.001 < a < 0.999 for a in areas) >= len(areas) // 2, areas  # masks, not empty or full frames
    for name, values in ious.items():
        assert min(values) >= 0.95, (name, values)
