"""The segmentation stage: SAM (transformers `SamModel` + `SamProcessor` from a local folder) prompted with a box
and/or points, or masks given as pictures in a folder (the SAM stage skipped).

SAM returns three candidate masks for a single point (ambiguous) and one for a box; we keep the candidate with
the highest predicted IoU, and that prediction is the mask's score (what --min-score filters on).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Protocol

import numpy as np
from PIL import Image

from customnet_jax.local_models import load_pretrained, to_device
from customnet_jax.pairs.prompts import Prompt
from customnet_jax.pairs.sources import IMAGE_EXTENSIONS, ImageItem, SkipImage


@dataclasses.dataclass(frozen=True)
class Segment:
    mask: np.ndarray  # bool (H, W), the photo's size
    score: float  # the segmenter's confidence in [0, 1] (SAM: its predicted IoU); 1 for given masks


class Segmenter(Protocol):
    needs_prompt: bool

    def __call__(self, item: ImageItem, photo: np.ndarray, prompt: Prompt) -> Segment: ...


class SamSegmenter:
    """SAM from a local folder (save_pretrained layout: config.json, weights, processor_config.json)."""

    needs_prompt = True

    def __init__(self, path: str | pathlib.Path, device: str = "cpu", dtype: str = "float32"):
        from transformers import SamModel, SamProcessor

        self.model, self.processor = load_pretrained(SamModel, SamProcessor, path, "SAM", device, dtype)
        self.path = str(path)

    def __call__(self, item: ImageItem, photo: np.ndarray, prompt: Prompt) -> Segment:
        import torch

        if prompt.box is None and not prompt.points:
            raise SkipImage("segment", f"SAM needs a box or a point; the prompt is {prompt.kind!r}")
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


class MaskFolder:
    """Masks given as pictures (white = object, > 127) named like the photos: <relative path stem>.<any image
    extension> or <id>.png under `folder`. Needs no prompt."""

    needs_prompt = False

    def __init__(self, folder: str | pathlib.Path):
        self.folder = pathlib.Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"masks folder {self.folder} does not exist")
        self.path = str(self.folder)

    def find(self, item: ImageItem) -> pathlib.Path | None:
        stems = [key[: -len(pathlib.PurePosixPath(key).suffix)]
                 if pathlib.PurePosixPath(key).suffix.lower() in IMAGE_EXTENSIONS else key for key in item.keys]
        for stem in dict.fromkeys(stems):
            for ext in IMAGE_EXTENSIONS:
                candidate = self.folder / f"{stem}{ext}"
                if candidate.is_file():
                    return candidate
        return None

    def __call__(self, item: ImageItem, photo: np.ndarray, prompt: Prompt) -> Segment:
        path = self.find(item)
        if path is None:
            raise SkipImage("segment", f"no mask for this photo in {self.folder}")
        try:
            with Image.open(path) as image:
                mask = np.asarray(image.convert("L")) > 127
        except Exception as e:  # noqa: BLE001 - a broken mask file skips its photo
            raise SkipImage("segment", f"unreadable mask {path} ({type(e).__name__}: {e})") from e
        if mask.shape != photo.shape[:2]:
            (mh, mw), (ph, pw) = mask.shape, photo.shape[:2]
            if abs(mw / mh - pw / ph) > 0.02 * pw / ph:
                raise SkipImage("segment", f"mask {path} is {mw}x{mh}, the photo {pw}x{ph}: not the same shape")
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
                photo.shape[1::-1], Image.Resampling.NEAREST)) > 127
        return Segment(mask, 1.0)
