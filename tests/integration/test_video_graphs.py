"""The video graphs against the ``sam2`` modules they are written over, on random weights.

Each graph is compared twice: its torch module against SAM 2's own function on the same inputs,
and its ONNX export (run by ONNX Runtime) against the torch module. The memory attention is fed
a memory bank the way SAM 2's tracker builds it (a conditioning frame, recent frames, pointers)
and compared with ``SAM2Base._prepare_memory_conditioned_features`` on that bank.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from maskserve.core import signatures as sig
from maskserve.export.video_wrappers import MemoryAttention, MemoryEncoder, TrackDecoder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def model():
    from maskserve.export.checkpoints import build_model
    from maskserve.export.variants import get_variant

    sam2 = build_model(get_variant("sam2.1_hiera_tiny"), seed=7)
    sam2.binarize_mask_from_pts_for_mem_enc = True  # as SAM 2's video predictor builds it
    return sam2


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("video-graphs")


def _features(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, sig.HIDDEN_DIM, sig.EMBED_SIZE, sig.EMBED_SIZE, generator=g)


def _flat(feats: torch.Tensor) -> torch.Tensor:
    """NCHW -> SAM 2's (HW)BC."""
    return feats.flatten(2).permute(2, 0, 1)


def _onnx_run(module, args, path: Path, model_name: str) -> list[np.ndarray]:
    import onnxruntime as ort

    from maskserve.export.onnx_export import export_graph

    export_graph(module, args, path, model_name)
    graph = onnx.load(str(path), load_external_data=False).graph
    inputs, outputs = sig.VIDEO_SIGNATURES[model_name]
    assert [i.name for i in graph.input] == [s.name for s in inputs]
    assert [o.name for o in graph.output] == [s.name for s in outputs]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {spec.name: a.numpy() for spec, a in zip(inputs, args, strict=True)}
    return session.run(None, feeds)


def _close(a, b, tol: float) -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1.0, float(np.abs(b).max()))
    assert float(np.abs(a - b).max()) <= tol * scale, float(np.abs(a - b).max())


@torch.no_grad()
def test_memory_encoder_matches_sam2(model, onnx_dir):
    feats = _features(1)
    embed = feats + model.no_mem_embed.reshape(1, -1, 1, 1)
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 1, sig.LOW_RES_MASK_SIZE, sig.LOW_RES_MASK_SIZE, generator=g) * 4
    scores = torch.tensor([[3.0], [-2.0]])  # one present, one absent
    for binarize in (True, False):
        flag = torch.full((2,), float(binarize))
        ours = MemoryEncoder(model).eval()(embed.expand(2, -1, -1, -1), logits, scores, flag)
        high = F.interpolate(logits, size=(1024, 1024), mode="bilinear", align_corners=False)
        theirs, _ = model._encode_new_memory([_flat(feats).expand(-1, 2, -1)], [(64, 64)], high, scores, binarize)
        _close(ours, theirs, 1e-4)
    exported = _onnx_run(
        MemoryEncoder(model).eval(),
        (embed.expand(2, -1, -1, -1).contiguous(), logits, scores, flag),
        onnx_dir / "memory_encoder.onnx",
        sig.MEMORY_ENCODER_MODEL,
    )
    _close(exported[0], ours, 1e-4)


def _memory_bank(model, frames: int, seed: int) -> dict:
    """SAM 2's output_dict for one object: conditioning frame 0, tracked frames 1..frames-1."""
    g = torch.Generator().manual_seed(seed)
    pos = model.memory_encoder.position_encoding(torch.zeros(1, 64, 64, 64))

    def out() -> dict:
        return {
            "maskmem_features": torch.randn(1, 64, 64, 64, generator=g),
            "maskmem_pos_enc": [pos],
            "obj_ptr": torch.randn(1, 256, generator=g),
        }

    return {"cond_frame_outputs": {0: out()}, "non_cond_frame_outputs": {t: out() for t in range(1, frames)}}


@torch.no_grad()
def test_memory_attention_matches_sam2(model, onnx_dir):
    frames, current, num_frames = 6, 6, 20
    bank = _memory_bank(model, frames, 3)
    feats = _features(4)
    embed = feats + model.no_mem_embed.reshape(1, -1, 1, 1)
    curr_pos = model.image_encoder.neck.position_encoding(feats)
    theirs = model._prepare_memory_conditioned_features(
        frame_idx=current,
        is_init_cond_frame=False,
        current_vision_feats=[_flat(feats)],
        current_vision_pos_embeds=[_flat(curr_pos)],
        feat_sizes=[(64, 64)],
        output_dict=bank,
        num_frames=num_frames,
    )
    # what SAM 2 selects for frame 6: the conditioning frame (t_pos 0), frames 1..5 (t_pos 2..6);
    # pointers of frame 0 (6 frames away) and of frames 5..1 (1..5 away), over max pointers - 1
    chosen = [(0, bank["cond_frame_outputs"][0])] + [
        (7 - (current - t), bank["non_cond_frame_outputs"][t]) for t in range(1, frames)
    ]
    pointers = [(current, bank["cond_frame_outputs"][0])] + [
        (current - t, bank["non_cond_frame_outputs"][t]) for t in range(frames - 1, 0, -1)
    ]
    t_diff_max = min(num_frames, model.max_obj_ptrs_in_encoder) - 1
    # one padding frame and one padding pointer, to show that they are left out exactly
    memory = torch.cat([o["maskmem_features"] for _, o in chosen] + [torch.ones(1, 64, 64, 64)])[None]
    tpos = torch.tensor([[t for t, _ in chosen] + [1]], dtype=torch.int32)
    valid = torch.tensor([[1.0] * len(chosen) + [0.0]])
    ptrs = torch.cat([o["obj_ptr"] for _, o in pointers] + [torch.ones(1, 256)])[None]
    ptr_tpos = torch.tensor([[d / t_diff_max for d, _ in pointers] + [0.5]])
    ptr_valid = torch.tensor([[1.0] * len(pointers) + [0.0]])
    args = (embed, memory, tpos, valid, ptrs, ptr_tpos, ptr_valid)
    ours = MemoryAttention(model).eval()(*args)
    _close(ours, theirs, 1e-4)
    path = onnx_dir / "memory_attention.onnx"
    exported = _onnx_run(MemoryAttention(model).eval(), args, path, sig.MEMORY_ATTENTION_MODEL)
    _close(exported[0], ours, 1e-4)


@torch.no_grad()
def test_track_decoder_matches_sam2_heads(model, onnx_dir):
    """A frame with two clicks (and SAM 2's one padding point) and a tracked frame (no clicks: two pads)."""
    g = torch.Generator().manual_seed(5)
    pix = _features(6)
    s0 = torch.randn(1, 32, 256, 256, generator=g)
    s1 = torch.randn(1, 64, 128, 128, generator=g)
    slots = sig.DECODER_POINTS
    cases = [
        (torch.tensor([[[300.0, 400.0], [620.0, 510.0]]]), torch.tensor([[1, 0]], dtype=torch.int32)),
        (None, None),
    ]
    for points, labels in cases:
        coords = torch.zeros(1, slots, 2)
        packed = torch.full((1, slots), sig.MASKED_LABEL, dtype=torch.int32)
        if points is None:
            packed[0, :2] = sig.PAD_LABEL  # SAM 2: an empty point, then the prompt encoder's padding
        else:
            n = points.shape[1]
            coords[0, :n], packed[0, :n], packed[0, n] = points[0], labels[0], sig.PAD_LABEL
        mask_input = torch.zeros(1, 1, 256, 256)
        args = (pix, s0, s1, coords, packed, mask_input, torch.zeros(1, 1))
        masks, ious, ptrs, score = TrackDecoder(model).eval()(*args)
        for multimask in (True, False):
            point_inputs = None if points is None else {"point_coords": points, "point_labels": labels}
            low, _, iou, _, _, ptr, theirs_score = model._forward_sam_heads(
                pix, point_inputs, None, [s0, s1], multimask_output=multimask
            )
            _close(score, theirs_score, 1e-4)
            if multimask:
                _close(masks[:, 1:], low, 1e-3)
                _close(ious[:, 1:], iou, 1e-4)
                best = int(torch.argmax(iou, dim=-1))
                _close(ptrs[:, 1 + best], ptr, 1e-4)
            else:
                # without the stability fallback here, SAM 2's single output is token 0
                if not model.sam_mask_decoder.dynamic_multimask_via_stability:
                    _close(masks[:, :1], low, 1e-3)
                _close(ptrs[:, 0], ptr, 1e-4)
        exported = _onnx_run(TrackDecoder(model).eval(), args, onnx_dir / "track_decoder.onnx", sig.TRACK_DECODER_MODEL)
        for got, want in zip(exported, (masks, ious, ptrs, score), strict=True):
            _close(got, want, 1e-3)


@torch.no_grad()
def test_objects_tracked_in_one_batch_match_each_tracked_alone(model, onnx_dir):
    """The tracker runs a frame's objects through the track decoder and the memory encoder as one batch (the
    memory attention one object a call): each object's masks, pointers and memories equal those of the object
    tracked alone, also when the objects start on different frames and so hold different memories."""
    import onnxruntime as ort

    from maskserve.export.onnx_export import export_video_graphs
    from maskserve.session.video import Tracker, TrackingConfig

    sessions = {
        name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for name, path in export_video_graphs(model, onnx_dir / "batched").items()
    }

    class Graphs:
        def attend(self, **inputs):
            return sessions[sig.MEMORY_ATTENTION_MODEL].run(None, inputs)[0]

        def decode(self, **inputs):
            return sessions[sig.TRACK_DECODER_MODEL].run(None, inputs)

        def encode_memory(self, **inputs):
            return sessions[sig.MEMORY_ENCODER_MODEL].run(None, inputs)[0]

    g = torch.Generator().manual_seed(3)
    frames = [
        (_features(10 + f).numpy(), torch.randn(1, 32, 256, 256, generator=g).numpy(),
         torch.randn(1, 64, 128, 128, generator=g).numpy())
        for f in range(5)
    ]  # fmt: skip
    config = TrackingConfig.of_model(model)
    clicks = {1: (0, [[300.0, 400.0]]), 2: (1, [[700.0, 200.0]])}  # object 2 starts a frame later: fewer memories
    together = Tracker(Graphs(), frames.__getitem__, len(frames), config)
    alone = {obj: Tracker(Graphs(), frames.__getitem__, len(frames), config) for obj in clicks}
    for obj, (frame, point) in clicks.items():
        for tracker in (together, alone[obj]):
            tracker.add_points(frame, obj, np.array(point, np.float32), np.array([1]), clear=False)
    batched = dict(together.propagate(start=0))
    for obj, tracker in alone.items():
        for frame, outs in tracker.propagate(start=0):
            ours, ref = batched[frame][obj], outs[obj]
            np.testing.assert_allclose(ours.logits, ref.logits, atol=2e-3, rtol=0)
            np.testing.assert_allclose(ours.obj_ptr, ref.obj_ptr, atol=2e-4, rtol=0)
            if ref.memory is not None:
                np.testing.assert_allclose(ours.memory, ref.memory, atol=2e-2, rtol=0)
