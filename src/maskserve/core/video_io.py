"""What crosses the wire to and from the ``sam2_video`` model, declared once for both ends.

A call is one operation on one video, as JSON in the ``call`` tensor, with the JPEGs of the
frames it needs (``frames``/``frame_index``). The model answers each object's low-resolution
logits, or a ``status`` asking for more: ``restore`` (it holds no state for the video, or not
the state the frontend has recorded: send the video's prompts, ``op = "restore"``) or
``frame:<k>`` (send frame k's JPEG too). ``signatures.VIDEO_SESSION_INPUTS``/``OUTPUTS``
describe the same tensors for ``config.pbtxt``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from maskserve.core.session_io import Lookup, MalformedSession, Tensors
from maskserve.core.signatures import LOW_RES_MASK_SIZE, MAX_PROMPT_POINTS, VIDEO_OBJECTS

OPS = ("prompt", "track", "restore", "close")
RESTORE = "restore"


@dataclass(frozen=True)
class VideoPrompt:
    """Clicks on one frame for one object, coordinates in SAM 2's 1024 space."""

    frame: int
    object_id: int
    coords: list[list[float]]
    labels: list[int]
    clear: bool = False

    def check(self, frames: int) -> None:
        if not 0 <= self.frame < frames:
            raise MalformedSession(f"frame {self.frame} is outside the video's {frames} frames")
        if not 1 <= self.object_id <= VIDEO_OBJECTS:
            raise MalformedSession(f"object_id {self.object_id} is outside 1-{VIDEO_OBJECTS}")
        if not 1 <= len(self.labels) <= MAX_PROMPT_POINTS or len(self.coords) != len(self.labels):
            raise MalformedSession("a prompt needs 1-16 points, one label each")


@dataclass(frozen=True)
class VideoCall:
    op: str
    video_id: str
    frames: int  # the video's length
    history: int = 0  # prompts recorded for the video before this call (the model's state must have them all)
    prompt: VideoPrompt | None = None  # op "prompt"
    frame: int = 0  # op "track": the frame to track
    reverse: bool = False
    begin: bool = False  # op "track": the first frame of a propagation (commits the clicks first)
    prompts: list[VideoPrompt] = field(default_factory=list)  # op "restore": every prompt, in order

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> VideoCall:
        try:
            raw = json.loads(data)
            prompt = raw.pop("prompt", None)
            prompts = raw.pop("prompts", [])
            call = cls(
                **raw,
                prompt=None if prompt is None else VideoPrompt(**prompt),
                prompts=[VideoPrompt(**p) for p in prompts],
            )
        except (ValueError, TypeError) as exc:
            raise MalformedSession(f"malformed video call: {exc}") from exc
        if call.op not in OPS or call.frames < 1:
            raise MalformedSession(f"unknown video op {call.op!r}")
        for p in [*call.prompts, *([call.prompt] if call.prompt else [])]:
            p.check(call.frames)
        if call.op == "prompt" and call.prompt is None:
            raise MalformedSession("op prompt needs its prompt")
        if call.op == "track" and not 0 <= call.frame < call.frames:
            raise MalformedSession(f"frame {call.frame} is outside the video's {call.frames} frames")
        return call

    def tensors(self, frames: dict[int, bytes]) -> Tensors:
        out: Tensors = {"call": np.array([self.to_json()], dtype=np.object_)}
        if frames:
            indices = sorted(frames)
            out["frames"] = np.array([frames[i] for i in indices], dtype=np.object_)
            out["frame_index"] = np.array(indices, np.int32)
        return out

    @staticmethod
    def from_tensors(get: Lookup) -> tuple[VideoCall, dict[int, bytes]]:
        raw = get("call")
        if raw is None or raw.size != 1:
            raise MalformedSession("a video call needs its call")
        call = VideoCall.from_json(bytes(raw.reshape(-1)[0]))
        data, index = get("frames"), get("frame_index")
        if (data is None) != (index is None) or (data is not None and index is not None and data.size != index.size):
            raise MalformedSession("frames and frame_index go together, one index per frame")
        if data is None or index is None:
            return call, {}
        return call, {int(i): bytes(d) for i, d in zip(index.reshape(-1), data.reshape(-1), strict=True)}


@dataclass
class VideoAnswer:
    status: str = ""
    object_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    logits: np.ndarray = field(default_factory=lambda: np.zeros((0, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE), np.float32))
    score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    object_score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def tensors(self) -> Tensors:
        return {
            "status": np.array([self.status.encode()], dtype=np.object_),
            "object_ids": np.asarray(self.object_ids, np.int32),
            "low_res_logits": np.asarray(self.logits, np.float32),
            "score": np.asarray(self.score, np.float32),
            "object_score": np.asarray(self.object_score, np.float32),
        }

    @classmethod
    def from_tensors(cls, get: Lookup) -> VideoAnswer:
        def required(name: str) -> np.ndarray:
            found = get(name)
            if found is None:
                raise MalformedSession(f"the video answer lacks {name}")
            return found

        status = required("status").reshape(-1)[0]
        return cls(
            status=status.decode() if isinstance(status, bytes) else str(status),
            object_ids=required("object_ids"),
            logits=required("low_res_logits"),
            score=required("score"),
            object_score=required("object_score"),
        )
