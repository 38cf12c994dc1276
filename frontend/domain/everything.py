"""Segment-everything on one image: SAM's point grid over its pixels, the filters, and the time budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from maskserve.core.everything import point_grid
from maskserve.core.prompts import PackedPrompt, pack_prompt
from maskserve.core.session_io import EverythingParams
from maskserve.core.signatures import IMAGE_SIZE
from maskserve.frontend.domain.fields import MIN_POINTS_PER_SIDE
from maskserve.frontend.domain.requests import EverythingOptions


@dataclass(frozen=True)
class EverythingJob:
    options: EverythingOptions
    width: int
    height: int
    budget_s: float = 60.0  # the longest the model tier may take (Settings.everything_budget_s)

    def grid(self) -> np.ndarray:
        """[P, 2] pixel coordinates of the grid points (what each mask reports as its ``point``)."""
        return point_grid(self.options.points_per_side) * np.array([self.width, self.height], np.float64)

    def prompts(self) -> list[PackedPrompt]:
        frame = self.grid() / np.array([self.width, self.height], np.float64) * IMAGE_SIZE
        prompts = []
        for point in frame.astype(np.float32):
            coords, labels = pack_prompt(point.reshape(1, 2), np.ones(1, np.int32), None)
            prompts.append(PackedPrompt(coords, labels, None, multimask=True))
        return prompts

    def params(self) -> EverythingParams:
        """The session model's ``everything`` input."""
        opts = self.options
        return EverythingParams(
            opts.pred_iou_thresh, opts.stability_score_thresh, self.height, self.width, self.budget_s
        )

    def overrun_message(self, before_s: float, per_point_s: float) -> str:
        """Why a grid the model tier stopped is refused, and the largest grid that fits the budget."""
        side = self.options.points_per_side
        points = side * side
        projected = before_s + per_point_s * points
        fits = min(side - 1, math.isqrt(max(0, int((self.budget_s - before_s) / max(per_point_s, 1e-9)))))
        advice = (
            f"points_per_side={fits} or fewer fits"
            if fits >= MIN_POINTS_PER_SIDE
            else "no grid fits at the speed measured now; retry later"
        )
        return (
            f"points_per_side={side} ({points} points) would take about {projected:.0f} s on this deployment, "
            f"over its {self.budget_s:.0f} s limit for one request; {advice}"
        )
