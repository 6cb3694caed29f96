"""SAM, prompted with a box and/or points: the object's mask in a photo. Used by the pair builder's segmentation
stage (pairs/segment.py) and by the sampler's matting (matting.py), so it lives below both.

SAM (transformers `SamModel` + `SamProcessor` from a local folder) returns three candidate masks for a single point
(ambiguous) and one for a box; we keep the candidate with the highest predicted IoU, and that prediction is the
mask's score.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np
from PIL import Image

from customnet_jax.local_models import load_pretrained, to_device


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A SAM prompt in photo pixels. kind: "box" | "point" | "detector" | "center" | "none"."""

    kind: str
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    points: tuple[tuple[float, float], ...] = ()
    label: str | None = None  # the detector query that matched (a subject name)
    score: float | None = None  # the detector's score

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.box is not None:
            out["box"] = [round(float(v), 2) for v in self.box]
        if self.points:
            out["points"] = [[round(float(x), 2), round(float(y), 2)] for x, y in self.points]
        if self.label is not None:
            out["label"] = self.label
        if self.score is not None:
            out["score"] = round(float(self.score), 5)
        return out



@dataclasses.dataclass(frozen=True)
class Segment:
    mask: np.ndarray  # bool (H, W), the photo's size
    score: float  # the segmenter's confidence in [0, 1] (SAM: its predicted IoU); 1 for given masks


class SamSegmenter:
    """SAM from a local folder (save_pretrained layout: config.json, weights, processor_config.json)."""

    needs_prompt = True

    def __init__(self, path: str | pathlib.Path, device: str = "cpu", dtype: str = "float32"):
        from transformers import SamModel, SamProcessor  # heavy model code: the SAM stage only

        self.model, self.processor = load_pretrained(SamModel, SamProcessor, path, "SAM", device, dtype)
        self.path = str(path)

    def __call__(self, item: Any, photo: np.ndarray, prompt: Prompt) -> Segment:
        import torch  # optional dependency: the SAM stage only

        if prompt.box is None and not prompt.points:
            raise ValueError(f"SAM needs a box or a point; the prompt is {prompt.kind!r}")
        kwargs = {}
        if prompt.box is not None:
            kwargs["input_boxes"] = [[list(prompt.box)]]
        if prompt.points:
            kwargs["input_points"] = [[[list(p) for p in prompt.points]]]
            kwargs["input_labels"] = [[[1] * len(prompt.points)]]
        batch = self.processor(images=Image.fromarray(photo), return_tensors="pt", **kwargs)
        inputs = to_device(batch, self.model)
        multimask = prompt.box is None and len(prompt.points) == 1
        with torch.no_grad():
            outputs = self.model(pixel_values=inputs["pixel_values"], input_boxes=inputs.get("input_boxes"),
                                 input_points=inputs.get("input_points"), input_labels=inputs.get("input_labels"),
                                 multimask_output=multimask)
        masks = self.processor.image_processor.post_process_masks(
            outputs.pred_masks.float().cpu(), batch["original_sizes"], batch["reshaped_input_sizes"])[0]
        scores = outputs.iou_scores.float().cpu()[0, 0]  # (candidates,)
        best = int(torch.argmax(scores))
        mask = masks[0, best].numpy().astype(bool)
        if mask.shape != photo.shape[:2]:
            raise RuntimeError(f"SAM mask is {mask.shape}, the photo {photo.shape[:2]}")
        return Segment(mask, float(scores[best]))
