"""The segmentation stage: SAM (transformers `SamModel` + `SamProcessor` from a local folder) prompted with a box
and/or points, or masks given as pictures in a folder (the SAM stage skipped).

SAM returns three candidate masks for a single point (ambiguous) and one for a box; we keep the candidate with
the highest predicted IoU, and that prediction is the mask's score (what --min-score filters on).
"""

from __future__ import annotations

import pathlib
from typing import Protocol

import numpy as np
from PIL import Image

from customnet_jax.pairs.sources import IMAGE_EXTENSIONS, ImageItem, SkipImage
from customnet_jax.segmentation import Prompt, SamSegmenter, Segment

__all__ = ["MaskFolder", "Prompt", "SamSegmenter", "Segment", "Segmenter"]


class Segmenter(Protocol):
    needs_prompt: bool

    def __call__(self, item: ImageItem, photo: np.ndarray, prompt: Prompt) -> Segment: ...


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
