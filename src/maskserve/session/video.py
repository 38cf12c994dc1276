"""SAM 2's video tracking over the exported graphs: the bookkeeping of ``SAM2VideoPredictor``.

Per object, as SAM 2.1's predictor keeps it: the clicks per frame, the conditioning frames'
outputs (frames with clicks, once a propagation starts), the tracked frames' outputs, and the
outputs of clicks not yet committed (``temp``). Each output is the frame's chosen low-resolution
logits, its object pointer, its object score and, once encoded, its memory (kept in bfloat16
precision, as SAM 2 keeps it). A frame is conditioned on the memory the way
``SAM2Base._prepare_memory_conditioned_features`` selects it: every conditioning frame, the
``num_maskmem - 1`` frames before it in tracking order, and up to ``max_obj_ptrs_in_encoder``
pointers from the past.

The graphs (``Graphs``) are the image encoder's features of a frame and the three video graphs
(``maskserve.core.signatures.VIDEO_SIGNATURES``); this module decides what they are given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from maskserve.core import signatures as sig
from maskserve.core.masks import fill_small_holes, select_mask
from maskserve.session.video_state import FrameOutput, ObjectTrack, Spill, to_bfloat16_precision


@dataclass(frozen=True)
class TrackingConfig:
    """SAM 2.1's tracking constants (the model's attributes; the defaults are SAM 2.1's configs')."""

    num_maskmem: int = 7
    max_obj_ptrs_in_encoder: int = 16
    memory_temporal_stride: int = 1
    multimask_output_in_sam: bool = True
    multimask_output_for_tracking: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1
    binarize_mask_from_pts_for_mem_enc: bool = True  # as SAM 2's video predictor builds the model
    add_all_frames_to_correct_as_cond: bool = False
    signed_tpos: bool = True
    only_obj_ptrs_in_the_past: bool = True
    fill_hole_area: int = 8  # as SAM 2's video predictor builds the model: holes up to 8 px filled (0: off)

    @classmethod
    def of_model(cls, model: Any) -> TrackingConfig:
        """The constants of ``model``; those that only SAM 2's video predictor sets are the predictor's.

        ``build_sam2_video_predictor`` builds the model with ``binarize_mask_from_pts_for_mem_enc``
        on, ``fill_hole_area`` 8 and ``add_all_frames_to_correct_as_cond`` off; a model built for
        images (as the export loads it) has none of them, and tracks as the video predictor does.
        """
        if model.max_cond_frames_in_attn != -1:
            raise ValueError("only SAM 2's default of attending to every conditioning frame is supported")
        default = cls()
        return cls(
            num_maskmem=model.num_maskmem,
            max_obj_ptrs_in_encoder=model.max_obj_ptrs_in_encoder,
            memory_temporal_stride=model.memory_temporal_stride_for_eval,
            multimask_output_in_sam=model.multimask_output_in_sam,
            multimask_output_for_tracking=model.multimask_output_for_tracking,
            multimask_min_pt_num=model.multimask_min_pt_num,
            multimask_max_pt_num=model.multimask_max_pt_num,
            binarize_mask_from_pts_for_mem_enc=default.binarize_mask_from_pts_for_mem_enc
            or model.binarize_mask_from_pts_for_mem_enc,
            add_all_frames_to_correct_as_cond=getattr(
                model, "add_all_frames_to_correct_as_cond", default.add_all_frames_to_correct_as_cond
            ),
            signed_tpos=model.use_signed_tpos_enc_to_obj_ptrs,
            only_obj_ptrs_in_the_past=model.only_obj_ptrs_in_the_past_for_eval,
            fill_hole_area=getattr(model, "fill_hole_area", default.fill_hole_area),
        )


class Graphs(Protocol):
    """The video graphs (arrays with the batch axis first: one object, or a frame's objects together)."""

    def attend(self, **inputs: np.ndarray) -> np.ndarray: ...  # pix_feat

    def decode(self, **inputs: np.ndarray) -> list[np.ndarray]: ...  # masks, ious, obj_ptrs, score

    def encode_memory(self, **inputs: np.ndarray) -> np.ndarray: ...  # maskmem_features


Features = Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""A frame's image_embed, high_res_feats_0, high_res_feats_1 (batch of one)."""


class Tracker:
    """One video's objects, tracked as ``SAM2VideoPredictor`` does."""

    def __init__(
        self, graphs: Graphs, features: Features, num_frames: int, config: TrackingConfig, spill: Spill | None = None
    ) -> None:
        self.graphs = graphs
        self.features = features
        self.num_frames = num_frames
        self.config = config
        self.spill = spill  # where frames far from the one being tracked keep their arrays (None: in memory)
        self.objects: dict[int, ObjectTrack] = {}

    # -- clicks -----------------------------------------------------------------------------------
    def add_points(self, frame: int, obj: int, coords: np.ndarray, labels: np.ndarray, clear: bool) -> FrameOutput:
        """Clicks (coordinates already in SAM 2's 1024 space) on ``frame`` for ``obj``; → that frame's output."""
        track = self.objects.setdefault(obj, ObjectTrack())
        coords, labels = np.asarray(coords, np.float32).reshape(-1, 2), np.asarray(labels, np.int32).reshape(-1)
        if not clear and frame in track.points:
            old_coords, old_labels = track.points[frame]
            coords, labels = np.concatenate([old_coords, coords]), np.concatenate([old_labels, labels])
        track.points[frame] = (coords, labels)
        is_init = frame not in track.tracked
        reverse = False if is_init else track.tracked[frame]
        is_cond = is_init or self.config.add_all_frames_to_correct_as_cond
        temp = track.temp_cond if is_cond else track.temp_non_cond
        prev = temp.get(frame) or track.cond.get(frame) or track.non_cond.get(frame)
        prev_logits = None if prev is None else np.clip(prev.logits, -32.0, 32.0)
        out = self._steps([track], frame, is_init, (coords, labels), reverse, prev_logits, encode_memory=False)[0]
        temp[frame] = out
        return out

    # -- propagation ------------------------------------------------------------------------------
    def _commit(self) -> None:
        """SAM 2's ``propagate_in_video_preflight``: clicked frames get their memory and join the bank."""
        for track in self.objects.values():
            for temp, bank in ((track.temp_non_cond, track.non_cond), (track.temp_cond, track.cond)):
                for frame, out in temp.items():
                    if out.memory is None:
                        out.memory = self._memories(self.features(frame)[0], [out.logits], [out.score], True)[0]
                    bank[frame] = out
                temp.clear()
            for frame in track.cond:
                track.non_cond.pop(frame, None)

    def begin(self) -> None:
        """Commit the clicks before a propagation; refuse one with nothing to propagate from."""
        self._commit()
        if not any(t.cond for t in self.objects.values()):
            raise ValueError("no clicks to propagate from")

    def order(self, start: int, max_frames: int | None, reverse: bool) -> list[int]:
        """The frames a propagation from ``start`` visits, ``start`` included."""
        count = self.num_frames if max_frames is None else max_frames
        if reverse:
            end = max(start - count, 0)
            return list(range(start, end - 1, -1)) if start > 0 else []
        end = min(start + count, self.num_frames - 1)
        return list(range(start, end + 1))

    def track(self, frame: int, reverse: bool) -> dict[int, FrameOutput]:
        """One frame of a propagation (after ``begin``): every object's output on it (the objects in one batch)."""
        moving = [track for track in self.objects.values() if frame not in track.cond]
        stepped = iter(self._steps(moving, frame, False, None, reverse, None, encode_memory=True) if moving else ())
        outputs = {}
        for obj, track in self.objects.items():
            if frame in track.cond:
                out = track.cond[frame]
            else:
                out = track.non_cond[frame] = next(stepped)
            track.tracked[frame] = reverse
            outputs[obj] = out
        if self.spill is not None:
            self._spill_far(frame)
        return outputs

    def propagate(
        self, start: int | None = None, max_frames: int | None = None, reverse: bool = False
    ) -> Iterator[tuple[int, dict[int, FrameOutput]]]:
        """Track every object from ``start`` (default: the earliest conditioning frame) one way."""
        self.begin()
        if start is None:
            start = min(f for t in self.objects.values() for f in t.cond)
        for frame in self.order(start, max_frames, reverse):
            yield frame, self.track(frame, reverse)

    # -- bounded memory ---------------------------------------------------------------------------
    def _spill_far(self, frame: int) -> None:
        """Tracked frames outside the memory window of ``frame`` move their arrays to disk."""
        assert self.spill is not None
        reach = max(self.config.num_maskmem * self.config.memory_temporal_stride, self.config.max_obj_ptrs_in_encoder)
        for obj, track in self.objects.items():
            for f, out in track.non_cond.items():
                if abs(f - frame) > reach and out.spilled is None:
                    out.spilled = self.spill.put(f"{obj}-{f}", out)

    # -- one frame of its objects ----------------------------------------------------------------
    def _steps(
        self,
        tracks: list[ObjectTrack],
        frame: int,
        is_init: bool,
        points: tuple[np.ndarray, np.ndarray] | None,
        reverse: bool,
        prev_logits: np.ndarray | None,
        encode_memory: bool,
    ) -> list[FrameOutput]:
        """One frame of several objects: the decoder and the memory encoder once for all, the attention once each."""
        count = len(tracks)
        embed, s0, s1 = self.features(frame)
        if is_init:
            pix = _repeat(embed, count)
        else:  # one object a call: batched, the attention ran 30% slower per frame (benchmarks/README.md, "Video")
            pix = np.concatenate(
                [self.graphs.attend(image_embed=embed, **self._bank(track, frame, reverse)) for track in tracks]
            )
        coords = np.zeros((count, sig.DECODER_POINTS, 2), np.float32)
        labels = np.full((count, sig.DECODER_POINTS), sig.MASKED_LABEL, np.int32)
        if points is None:
            labels[:, :2] = sig.PAD_LABEL  # SAM 2: an empty point, then the prompt encoder's padding point
            n_points = 0
        else:
            n_points = len(points[1])
            coords[:, :n_points], labels[:, :n_points], labels[:, n_points] = points[0], points[1], sig.PAD_LABEL
        mask_input = np.zeros((count, 1, sig.LOW_RES_MASK_SIZE, sig.LOW_RES_MASK_SIZE), np.float32)
        if prev_logits is not None:
            mask_input[:, 0] = prev_logits
        masks, ious, ptrs, score = self.graphs.decode(
            pix_feat=pix,
            high_res_feats_0=_repeat(s0, count),
            high_res_feats_1=_repeat(s1, count),
            point_coords=coords,
            point_labels=labels,
            mask_input=mask_input,
            has_mask_input=np.full((count,), float(prev_logits is not None), np.float32),
        )
        cfg = self.config
        multimask = (
            cfg.multimask_output_in_sam
            and (is_init or cfg.multimask_output_for_tracking)
            and cfg.multimask_min_pt_num <= n_points <= cfg.multimask_max_pt_num
        )
        scores = [float(v) for v in score.reshape(count, -1)[:, 0]]
        logits, pointers, chosen_ious = [], [], []
        for i in range(count):
            if multimask:
                best = 1 + int(np.argmax(ious[i, 1:]))
                chosen, ptr, iou = masks[i, best], ptrs[i, best], float(ious[i, best])
            else:
                chosen, iou = select_mask(masks[i], ious[i], multimask=False)
                ptr = ptrs[i, 0]
            logits.append(np.array(chosen, np.float32))
            pointers.append(np.array(ptr, np.float32))
            chosen_ious.append(iou)
        memories = self._memories(embed, logits, scores, points is not None) if encode_memory else [None] * count
        # SAM 2 fills holes after the memory is encoded: only the logits shown and kept are filled
        fill = cfg.fill_hole_area
        return [
            FrameOutput(fill_small_holes(kept, fill) if fill > 0 else kept, ptr, logit, iou, memory)
            for kept, ptr, logit, iou, memory in zip(logits, pointers, scores, chosen_ious, memories, strict=True)
        ]

    def _memories(
        self, embed: np.ndarray, logits: list[np.ndarray], scores: list[float], from_points: bool
    ) -> list[np.ndarray]:
        """The memories of several objects' chosen logits on one frame, in one memory-encoder call."""
        binarize = self.config.binarize_mask_from_pts_for_mem_enc and from_points
        count = len(logits)
        memory = self.graphs.encode_memory(
            image_embed=_repeat(embed, count),
            mask_logits=np.stack(logits)[:, None],
            object_score_logits=np.array(scores, np.float32)[:, None],
            binarize=np.full((count,), float(binarize), np.float32),
        )
        return [to_bfloat16_precision(memory[i]) for i in range(count)]

    def _bank(self, track: ObjectTrack, frame: int, reverse: bool) -> dict[str, np.ndarray]:
        """The memory attention's inputs for ``frame``: SAM 2's selection of memories and pointers."""
        cfg = self.config
        stride = cfg.memory_temporal_stride
        chosen: list[tuple[int, FrameOutput]] = [(0, out) for out in track.cond.values()]
        for t_pos in range(1, cfg.num_maskmem):
            t_rel = cfg.num_maskmem - t_pos
            if t_rel == 1:
                prev = frame + 1 if reverse else frame - 1
            elif reverse:
                prev = -(-(frame + 2) // stride) * stride + (t_rel - 2) * stride
            else:
                prev = ((frame - 2) // stride) * stride - (t_rel - 2) * stride
            if (out := track.non_cond.get(prev)) is not None:
                chosen.append((t_pos, out))
        memories = [(t, m) for t, out in chosen if (m := out.memory) is not None]

        max_ptrs = min(self.num_frames, cfg.max_obj_ptrs_in_encoder)
        sign = -1 if reverse else 1
        pointers = [
            ((frame - t) * sign if cfg.signed_tpos else abs(frame - t), out.obj_ptr)
            for t, out in track.cond.items()
            if not cfg.only_obj_ptrs_in_the_past or (t >= frame if reverse else t <= frame)
        ]
        for t_diff in range(1, max_ptrs):
            t = frame + t_diff if reverse else frame - t_diff
            if t < 0 or t >= self.num_frames:
                break
            if (out := track.non_cond.get(t)) is not None:
                pointers.append((t_diff, out.obj_ptr))
        valid_ptrs = np.ones(len(pointers), np.float32)
        if not pointers:  # the graph needs one pointer: a padding one, left out of the attention
            pointers, valid_ptrs = [(0, np.zeros(sig.HIDDEN_DIM, np.float32))], np.zeros(1, np.float32)
        t_diff_max = max(max_ptrs - 1, 1)
        return {
            "memory": np.stack([m for _, m in memories])[None],
            "memory_tpos": np.array([[t for t, _ in memories]], np.int32),
            "memory_valid": np.ones((1, len(memories)), np.float32),
            "obj_ptrs": np.stack([p for _, p in pointers])[None].astype(np.float32),
            "obj_ptr_tpos": (np.array([[d for d, _ in pointers]], np.float32) / t_diff_max),
            "obj_ptr_valid": valid_ptrs[None],
        }


def _repeat(array: np.ndarray, count: int) -> np.ndarray:
    """One frame's tensor (batch of one) once per object."""
    return array if count == 1 else np.ascontiguousarray(np.broadcast_to(array, (count, *array.shape[1:])))
