"""A request's prompts and options as JSON, so an accepted ``async=true`` request can run after a restart."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from maskserve.frontend import imaging
from maskserve.frontend.domain import EverythingOptions

if TYPE_CHECKING:
    from maskserve.frontend.services import ExtractionOptions, Prompt, Prompts


def _array(value: np.ndarray | None) -> list[Any] | None:
    return None if value is None else np.asarray(value).tolist()


def _prompt(prompt: Prompt) -> dict[str, Any]:
    return {"points": _array(prompt.points), "labels": _array(prompt.labels), "box": _array(prompt.box)}


def encode(prompts: Prompts | None, opts: ExtractionOptions | EverythingOptions | None) -> str:
    out: dict[str, Any] = {"prompts": None, "extraction": None, "everything": None}
    if prompts is not None:
        out["prompts"] = {
            "objects": [_prompt(p) for p in prompts.objects],
            "several": prompts.several,
            "mask_format": prompts.mask_format,
            "previous_job_id": prompts.previous_job_id,
        }
    if isinstance(opts, EverythingOptions):
        out["everything"] = asdict(opts)
    elif opts is not None:
        style = opts.style
        out["extraction"] = {
            "feather": opts.feather,
            "output_format": opts.output_format,
            "style": {
                "bg_color": None if style.bg_color is None else list(style.bg_color),
                "crop": style.crop,
                "crop_margin": style.crop_margin,
                "channels": style.channels,
            },
        }
    return json.dumps(out)


def decode(text: str) -> tuple[Prompts | None, ExtractionOptions | EverythingOptions | None]:
    from maskserve.frontend.services import ExtractionOptions, Prompt, Prompts

    data = json.loads(text)
    prompts = None
    if data["prompts"] is not None:
        raw = data["prompts"]

        def arr(value: Any, dtype: Any) -> np.ndarray | None:
            return None if value is None else np.asarray(value, dtype)

        objects = tuple(
            Prompt(arr(o["points"], np.float32), arr(o["labels"], np.int32), arr(o["box"], np.float32))
            for o in raw["objects"]
        )
        prompts = Prompts(objects, raw["several"], raw["mask_format"], raw["previous_job_id"])
    opts: ExtractionOptions | EverythingOptions | None = None
    if data["everything"] is not None:
        opts = EverythingOptions(**data["everything"])
    elif data["extraction"] is not None:
        raw = data["extraction"]
        style = raw["style"]
        colour = None if style["bg_color"] is None else tuple(style["bg_color"])
        opts = ExtractionOptions(
            raw["feather"],
            raw["output_format"],
            imaging.Styling(colour, style["crop"], style["crop_margin"], style["channels"]),
        )
    return prompts, opts
