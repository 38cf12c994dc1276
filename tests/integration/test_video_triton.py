"""The video model tier through a real Triton against Meta's ``SAM2VideoPredictor``, on random weights.

The exported repository (the served defaults: encoder and memory attention in OpenVINO bf16) in
Triton from the pip wheel, driven through the frontend's model-tier client exactly as the API
drives it: a click on frame 0, propagation over a 20-frame clip (long enough for the tracker to
move frames out of the memory window to disk and read them back), a correction on frame 10 and
propagation again from there. Every frame's mask agrees with Meta's predictor (fp32 PyTorch,
same weights, same JPEG frames, holes filled through the test-only stand-in for its CUDA extension)
at binary IoU >= 0.95. Then the model tier loses the video's
state and the next call rebuilds it from the prompts.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskserve.core import signatures as sig
from maskserve.core.video_io import VideoCall, VideoPrompt
from maskserve.devtools import sam2_ext_standin
from maskserve.devtools.pictures import moving_shapes_clip

FRAMES, W, H = 20, 320, 240
SEED = 5
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.timeout(1800)]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _mask(logits: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.asarray(logits, np.float32)).reshape(1, 1, *logits.shape[-2:])
    return (F.interpolate(t, size=(H, W), mode="bilinear", align_corners=False) > 0)[0, 0].numpy()


@pytest.fixture(scope="module")
def video_triton(tmp_path_factory):
    from maskserve.export.command import ExportRequest, run_export
    from maskserve.triton.server import TritonOptions, TritonServer

    out = tmp_path_factory.mktemp("video_repository")
    run_export(ExportRequest(out=out, random_weights=True, seed=SEED))
    opts = TritonOptions.on_free_ports(out, tmp_path_factory.mktemp("video_triton"))
    with TritonServer(opts) as server:
        yield server


@torch.no_grad()
def test_served_tracking_matches_sam2_video_predictor(video_triton, tmp_path, report):
    from sam2.build_sam import build_sam2_video_predictor

    from maskserve.export import checkpoints
    from maskserve.export.variants import get_variant
    from maskserve.frontend.adapters.model_tier import ModelTier
    from maskserve.frontend.metrics import Metrics

    variant = get_variant("sam2.1_hiera_tiny")
    frames_dir = tmp_path / "frames"
    jpegs = {i: p.read_bytes() for i, p in enumerate(moving_shapes_clip(frames_dir, FRAMES, W, H))}
    predictor = build_sam2_video_predictor(variant.config, None, device="cpu")
    predictor.load_state_dict(checkpoints.build_model(variant, seed=SEED).state_dict())
    state = predictor.init_state(video_path=str(frames_dir))

    prompts: list[VideoPrompt] = []

    async def source(indices: list[int]) -> dict[int, bytes]:
        return {i: jpegs[i] for i in indices}

    async def history() -> list[VideoPrompt]:
        return list(prompts)

    async def served() -> dict[str, list[float]]:
        tier = ModelTier([video_triton.opts.grpc_url], 30.0, Metrics())
        timings: dict[str, float] = {"ours": 0.0, "theirs": 0.0, "frames": 0}

        async def click(frame: int, x: float, y: float, label: int) -> float:
            prompt = VideoPrompt(frame, 1, [[x / W * sig.IMAGE_SIZE, y / H * sig.IMAGE_SIZE]], [label])
            call = VideoCall("prompt", "vid_parity", FRAMES, len(prompts), prompt=prompt)
            ours = await tier.video(call, source, history, "1")
            prompts.append(prompt)
            _, _, masks = predictor.add_new_points_or_box(
                state, frame_idx=frame, obj_id=1, points=np.array([[x, y]], np.float32), labels=np.array([label])
            )
            assert ours.status == "" and list(ours.object_ids) == [1]
            return _iou(_mask(ours.logits[0]), (masks[0, 0] > 0).numpy())

        async def propagate(start: int) -> list[float]:
            began = time.perf_counter()
            tracked = predictor.propagate_in_video(state, start_frame_idx=start)
            theirs = {f: (m[0, 0] > 0).numpy() for f, _, m in tracked}
            timings["theirs"] += time.perf_counter() - began
            began = time.perf_counter()
            ious = []
            for frame in range(start, FRAMES):
                call = VideoCall("track", "vid_parity", FRAMES, len(prompts), frame=frame, begin=frame == start)
                ours = await tier.video(call, source, history, "1")
                ious.append(_iou(_mask(ours.logits[0]), theirs[frame]))
            timings["ours"] += time.perf_counter() - began
            timings["frames"] += FRAMES - start
            return ious

        ious = {"click frame 0": [await click(0, 80, 100, 1)]}
        ious["propagation 1"] = await propagate(0)
        ious["correction frame 10"] = [await click(10, 230, 120, 0)]
        ious["propagation 2"] = await propagate(10)

        # the model tier loses the video: the next call replays the two prompts, then answers
        gone = await tier.video(VideoCall("close", "vid_parity", FRAMES), source, history, "1")
        assert gone.status == ""
        again = await tier.video(
            VideoCall("track", "vid_parity", FRAMES, len(prompts), frame=12, begin=True), source, history, "1"
        )
        assert again.status == "" and list(again.object_ids) == [1] and again.logits.shape == (1, 256, 256)
        await tier.close()
        n = timings["frames"]
        report(
            f"video through Triton vs SAM2VideoPredictor in-process ({n} frames tracked, 2-core CPU): "
            f"{n / timings['ours']:.2f} vs {n / timings['theirs']:.2f} frames/s "
            f"= {timings['theirs'] / timings['ours']:.2f}x"
        )
        return ious

    with sam2_ext_standin.installed():  # Meta's predictor fills holes as on a GPU (its CUDA extension's stand-in)
        ious = asyncio.run(served())
    report(
        f"served video parity vs SAM2VideoPredictor ({FRAMES} frames, bf16 served): "
        + "; ".join(f"{k}: min IoU {min(v):.4f}" for k, v in ious.items())
    )
    for name, values in ious.items():
        assert min(values) >= 0.95, (name, values)
