"""Quality filters on a segmentation: mask area range, mask confidence, objects cut by the photo's border.

`Filters.check(mask, score)` returns None for a mask that passes, else the reason it is rejected (for the
report). They run before the costly zero123 and caption stages.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Filters:
    min_area: float = 0.01  # mask area as a fraction of the photo: at least ...
    max_area: float = 0.95  # ... and at most
    min_score: float = 0.0  # the segmenter's confidence (SAM's predicted IoU) at least
    reject_border: bool = False  # reject objects that touch the photo's border (cut off by the frame)
    border_margin: int = 0  # ... or come within this many pixels of it

    def __post_init__(self):
        if not 0 <= self.min_area <= self.max_area <= 1:
            raise ValueError(f"area range [{self.min_area}, {self.max_area}] must satisfy 0 <= min <= max <= 1")
        if self.border_margin < 0:
            raise ValueError(f"border margin {self.border_margin} must be >= 0")

    def check(self, mask: np.ndarray, score: float) -> str | None:
        """None if the mask passes; otherwise why not."""
        mask = np.asarray(mask, bool)
        if not mask.any():
            return "empty mask"
        area = float(mask.mean())
        if area < self.min_area:
            return f"mask area {area:.4f} of the photo < min_area {self.min_area}"
        if area > self.max_area:
            return f"mask area {area:.4f} of the photo > max_area {self.max_area}"
        if not score >= self.min_score:  # also rejects NaN
            return f"mask score {score:.4f} < min_score {self.min_score}"
        if self.reject_border:
            m = self.border_margin + 1
            sides = {"top": mask[:m].any(), "bottom": mask[-m:].any(), "left": mask[:, :m].any(),
                     "right": mask[:, -m:].any()}
            touching = [side for side, hit in sides.items() if hit]
            if touching:
                return f"object touches the photo's border ({', '.join(touching)}; margin {self.border_margin} px)"
        return None
