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

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from maskserve.core import signatures as sig
from maskserve.core.masks import select_mask


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

    @classmethod
    def of_model(cls, model: Any) -> TrackingConfig:
        """The constants of ``model``; those that only SAM 2's video predictor sets are the predictor's.

        ``build_sam2_video_predictor`` builds the model with ``binarize_mask_from_pts_for_mem_enc``
        on and keeps ``add_all_frames_to_correct_as_cond`` off; a model built for images (as the
        export loads it) has neither, and tracks as the video predictor does.
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
        )


class Graphs(Protocol):
    """The video graphs, each on a batch of one object (arrays with the batch axis first)."""

    def attend(self, **inputs: np.ndarray) -> np.ndarray: ...  # pix_feat

    def decode(self, **inputs: np.ndarray) -> list[np.ndarray]: ...  # masks, ious, obj_ptrs, score

    def encode_memory(self, **inputs: np.ndarray) -> np.ndarray: ...  # maskmem_features


Features = Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""A frame's image_embed, high_res_feats_0, high_res_feats_1 (batch of one)."""


def to_bfloat16_precision(x: np.ndarray) -> np.ndarray:
    """float32 rounded to the nearest bfloat16 (ties to even), kept as float32."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


class Spill:
    """A directory where a video's tracked frames far from the one being tracked keep their arrays.

    SAM 2 keeps every tracked frame's memory (64×64×64) and low-resolution logits (256²) in memory;
    here only the frames within reach of the memory window stay in memory, the others wait on disk
    until a later propagation or a correction reads them again, so a long video's memory stays flat.
    """

    def __init__(self, where: Path) -> None:
        self.where = where
        where.mkdir(parents=True, exist_ok=True)

    def put(self, key: str, out: FrameOutput) -> Path:
        path = self.where / f"{key}.npz"
        assert out._logits is not None
        arrays = {"logits": out._logits}
        if out._memory is not None:
            arrays["memory"] = out._memory
        np.savez(path, **arrays)
        out._logits, out._memory = None, None
        return path

    def clear(self) -> None:
        shutil.rmtree(self.where, ignore_errors=True)


class FrameOutput:
    """One object's output on one frame: the chosen low-resolution logits, pointer, score, memory."""

    __slots__ = ("_logits", "_memory", "iou", "obj_ptr", "score", "spilled")

    def __init__(
        self, logits: np.ndarray, obj_ptr: np.ndarray, score: float, iou: float = 0.0, memory: np.ndarray | None = None
    ) -> None:
        self._logits: np.ndarray | None = logits  # [256, 256]
        self.obj_ptr = obj_ptr  # [256]
        self.score = score  # object score logit
        self.iou = iou  # the chosen mask's predicted IoU
        self._memory = memory  # [64, 64, 64], once encoded
        self.spilled: Path | None = None

    def _load(self, name: str) -> np.ndarray | None:
        if self.spilled is None:
            return None
        with np.load(self.spilled) as stored:
            return np.array(stored[name]) if name in stored else None

    @property
    def logits(self) -> np.ndarray:
        found = self._logits if self._logits is not None else self._load("logits")
        assert found is not None
        return found

    @property
    def memory(self) -> np.ndarray | None:
        return self._memory if self._memory is not None or self.spilled is None else self._load("memory")

    @memory.setter
    def memory(self, value: np.ndarray) -> None:
        self._memory = value
        if self.spilled is not None:  # the arrays are in memory again; the next spill writes them anew
            self._logits, self.spilled = self._load("logits"), None


@dataclass
class ObjectTrack:
    points: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # frame -> 1024-space coords, labels
    cond: dict[int, FrameOutput] = field(default_factory=dict)
    non_cond: dict[int, FrameOutput] = field(default_factory=dict)
    temp_cond: dict[int, FrameOutput] = field(default_factory=dict)
    temp_non_cond: dict[int, FrameOutput] = field(default_factory=dict)
    tracked: dict[int, bool] = field(default_factory=dict)  # frame -> tracked in reverse


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
        out = self._step(track, frame, is_init, (coords, labels), reverse, prev_logits, encode_memory=False)
        temp[frame] = out
        return out

    # -- propagation ------------------------------------------------------------------------------
    def _commit(self) -> None:
        """SAM 2's ``propagate_in_video_preflight``: clicked frames get their memory and join the bank."""
        for track in self.objects.values():
            for temp, bank in ((track.temp_non_cond, track.non_cond), (track.temp_cond, track.cond)):
                for frame, out in temp.items():
                    if out.memory is None:
                        out.memory = self._memory(self.features(frame)[0], out, from_points=True)
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
        """One frame of a propagation (after ``begin``): every object's output on it."""
        outputs = {}
        for obj, track in self.objects.items():
            if frame in track.cond:
                out = track.cond[frame]
            else:
                out = self._step(track, frame, False, None, reverse, None, encode_memory=True)
                track.non_cond[frame] = out
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

    # -- one frame of one object ------------------------------------------------------------------
    # -- one frame of one object ------------------------------------------------------------------
    def _step(
        self,
        track: ObjectTrack,
        frame: int,
        is_init: bool,
        points: tuple[np.ndarray, np.ndarray] | None,
        reverse: bool,
        prev_logits: np.ndarray | None,
        encode_memory: bool,
    ) -> FrameOutput:
        embed, s0, s1 = self.features(frame)
        pix = embed if is_init else self.graphs.attend(image_embed=embed, **self._bank(track, frame, reverse))
        coords = np.zeros((1, sig.DECODER_POINTS, 2), np.float32)
        labels = np.full((1, sig.DECODER_POINTS), sig.MASKED_LABEL, np.int32)
        if points is None:
            labels[0, :2] = sig.PAD_LABEL  # SAM 2: an empty point, then the prompt encoder's padding point
            n_points = 0
        else:
            n_points = len(points[1])
            coords[0, :n_points], labels[0, :n_points], labels[0, n_points] = points[0], points[1], sig.PAD_LABEL
        mask_input = np.zeros((1, 1, sig.LOW_RES_MASK_SIZE, sig.LOW_RES_MASK_SIZE), np.float32)
        if prev_logits is not None:
            mask_input[0, 0] = prev_logits
        masks, ious, ptrs, score = self.graphs.decode(
            pix_feat=pix,
            high_res_feats_0=s0,
            high_res_feats_1=s1,
            point_coords=coords,
            point_labels=labels,
            mask_input=mask_input,
            has_mask_input=np.full((1, 1), float(prev_logits is not None), np.float32),
        )
        cfg = self.config
        multimask = (
            cfg.multimask_output_in_sam
            and (is_init or cfg.multimask_output_for_tracking)
            and cfg.multimask_min_pt_num <= n_points <= cfg.multimask_max_pt_num
        )
        if multimask:
            best = 1 + int(np.argmax(ious[0, 1:]))
            logits, ptr, iou = masks[0, best], ptrs[0, best], float(ious[0, best])
        else:
            logits, iou = select_mask(masks[0], ious[0], multimask=False)
            ptr = ptrs[0, 0]
        out = FrameOutput(np.array(logits, np.float32), np.array(ptr, np.float32), float(score.reshape(-1)[0]), iou)
        if encode_memory:
            out.memory = self._memory(embed, out, from_points=points is not None)
        return out

    def _memory(self, embed: np.ndarray, out: FrameOutput, from_points: bool) -> np.ndarray:
        """The memory of ``out`` on the frame whose ``image_embed`` is ``embed``."""
        binarize = self.config.binarize_mask_from_pts_for_mem_enc and from_points
        memory = self.graphs.encode_memory(
            image_embed=embed,
            mask_logits=out.logits[None, None],
            object_score_logits=np.full((1, 1), out.score, np.float32),
            binarize=np.full((1,), float(binarize), np.float32),
        )
        return to_bfloat16_precision(memory[0])

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
