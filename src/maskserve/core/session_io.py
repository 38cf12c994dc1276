"""What crosses the wire to and from the ``sam2_session`` model, declared once for both ends.

The frontend's Triton client and the session model inside Triton each turn
these records into named tensors and back (``tensors``/``from_tensors``), so
the names, shapes and the order of segment-everything's parameters live here
and nowhere else; ``signatures.SESSION_INPUTS``/``SESSION_OUTPUTS`` describe
the same tensors for ``config.pbtxt`` (a test checks that both agree).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import astuple, dataclass, field, fields

import numpy as np

from maskserve.core.everything import Candidate
from maskserve.core.prompts import PackedPrompt, stack_prompts
from maskserve.core.signatures import DECODER_POINTS, EVERYTHING_PARAMS, LOW_RES_MASK_SIZE

MAX_SESSION_PROMPTS = 64 * 64
"""Prompts one request may carry: segment-everything's largest grid."""

Tensors = dict[str, np.ndarray]
Lookup = Callable[[str], "np.ndarray | None"]
"""A received request's or answer's tensor by name (None when an optional one is absent)."""


class MalformedSession(ValueError):
    """A session request whose tensors do not fit the declaration (the model answers with an error)."""


@dataclass(frozen=True)
class EverythingParams:
    """Segment-everything's ``everything`` input, by name (its order on the wire is the order of the fields)."""

    pred_iou_thresh: float
    stability_score_thresh: float
    height: int
    width: int
    budget_s: float  # the seconds the call may take: a grid projected to take longer is stopped early

    def to_array(self) -> np.ndarray:
        return np.array(astuple(self), np.float32)

    @classmethod
    def from_array(cls, values: np.ndarray) -> EverythingParams:
        flat = [float(v) for v in np.asarray(values).reshape(-1)]
        if len(flat) != EVERYTHING_PARAMS or len(fields(cls)) != EVERYTHING_PARAMS:
            raise MalformedSession(f"everything takes {EVERYTHING_PARAMS} values")
        iou, stability, height, width, budget = flat
        if not budget > 0 or height < 1 or width < 1:
            raise MalformedSession("everything needs a positive budget and the image's size")
        return cls(iou, stability, int(height), int(width), budget)


def _required(get: Lookup, name: str) -> np.ndarray:
    found = get(name)
    if found is None:
        raise MalformedSession(f"input {name!r} is missing")
    return found


def _text(array: np.ndarray | None) -> str:
    if array is None:
        return ""
    value = array.reshape(-1)[0]
    return bytes(value).decode() if isinstance(value, (bytes, bytearray, np.bytes_)) else str(value)


@dataclass(frozen=True)
class SessionRequest:
    """One call: an image digest, its prompt objects (or a grid), and the image's bytes only when asked for."""

    digest: str
    prompts: list[PackedPrompt]
    image: bytes | None = None
    everything: EverythingParams | None = None

    def tensors(self) -> Tensors:
        coords, labels, masks = stack_prompts(self.prompts)
        out: Tensors = {
            "digest": np.array([self.digest.encode()], np.object_),
            "point_coords": coords,
            "point_labels": labels,
            "multimask": np.array([p.multimask for p in self.prompts], np.bool_),
        }
        if self.image is not None:
            out["image"] = np.array([self.image], np.object_)
        if masks is not None:
            out["mask_input"] = masks
        if self.everything is not None:
            out["everything"] = self.everything.to_array()
        return out

    @property
    def nbytes(self) -> int:
        """What the request carries over the wire, roughly (for the wire metrics)."""
        return len(self.digest) + len(self.image or b"") + sum(p.nbytes for p in self.prompts)

    @classmethod
    def from_tensors(cls, get: Lookup) -> SessionRequest:
        coords = _required(get, "point_coords").reshape(-1, DECODER_POINTS, 2)
        labels = _required(get, "point_labels").reshape(-1, DECODER_POINTS)
        multimask = _required(get, "multimask").reshape(-1)
        found = get("mask_input")
        masks = None if found is None else found.reshape(-1, 1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)
        count = len(coords)
        if not 1 <= count <= MAX_SESSION_PROMPTS or len(labels) != count or len(multimask) != count:
            raise MalformedSession(f"1 to {MAX_SESSION_PROMPTS} prompts, with as many labels and multimask flags")
        if masks is not None and len(masks) != count:
            raise MalformedSession("one mask_input per prompt")
        prompts = [
            PackedPrompt(coords[i], labels[i], None if masks is None else masks[i], bool(multimask[i]))
            for i in range(count)
        ]
        upload = get("image")
        params = get("everything")
        return cls(
            digest=_text(_required(get, "digest")),
            prompts=prompts,
            image=None if upload is None else bytes(upload.reshape(-1)[0]),
            everything=None if params is None else EverythingParams.from_array(params),
        )


@dataclass
class SessionAnswer:
    """The session model's answer: each prompt object's mask, segment-everything's masks, or why not."""

    needs_image: bool = False  # the replica does not hold the image's embeddings: send the image
    rejected: str = ""  # why the model tier could not read the image ("" when it could)
    logits: np.ndarray | None = None  # [P, 256, 256] float32 logits of each object's chosen mask
    scores: list[float] = field(default_factory=list)  # their predicted IoU
    masks: list[Candidate] | None = None  # segment-everything's masks (RLE, box, scores)
    overrun: tuple[float, float] | None = None  # stopped for its budget: (seconds before the grid, seconds/point)
    encoded: bool = False  # this call ran the encoder (known to the caller, not sent)

    def tensors(self) -> Tensors:
        logits = self.logits if self.logits is not None else np.zeros((0, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE))
        masks = "" if self.masks is None else json.dumps([m.to_json() for m in self.masks], separators=(",", ":"))
        return {
            "needs_image": np.array([self.needs_image], np.bool_),
            "rejected": np.array([self.rejected.encode()], np.object_),
            "low_res_logits": np.ascontiguousarray(logits, np.float32),
            "score": np.array(self.scores, np.float32),
            "masks": np.array([masks.encode()], np.object_),
            "overrun": np.array(self.overrun if self.overrun is not None else (0.0, 0.0), np.float32),
        }

    @classmethod
    def from_tensors(cls, get: Lookup) -> SessionAnswer:
        logits = _required(get, "low_res_logits").reshape(-1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)
        masks = _text(get("masks"))
        before_s, per_point_s = (float(v) for v in _required(get, "overrun").reshape(-1)[:2])
        return cls(
            needs_image=bool(_required(get, "needs_image").reshape(-1)[0]),
            rejected=_text(get("rejected")),
            logits=logits,
            scores=[float(v) for v in _required(get, "score").reshape(-1)],
            masks=[Candidate.from_json(m) for m in json.loads(masks)] if masks else None,
            overrun=(before_s, per_point_s) if per_point_s > 0 else None,
        )
