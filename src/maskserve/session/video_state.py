"""A video's tracking state: each object's outputs per frame, and where far frames wait (``Spill``)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


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
