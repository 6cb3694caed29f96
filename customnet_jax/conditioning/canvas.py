"""The two picture conditions of CustomNet, made one way for training batches and for the sampler.

location canvas: a white (+1) canvas with the whole object picture bilinearly resized into the box; its VAE
latent is the object condition (docs/conditioning.md). background canvas: the background resized to the canvas
with the box painted white; its latent is the composition model's extra condition.
Training boxes may reach outside the canvas (`outside=True`): the object is cropped with the canvas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from customnet_jax.conditioning.boxes import clip_box, parse_bbox
from customnet_jax.conditioning.images import bilinear_resize, check_image, resize


def _pixel_box(bbox: Sequence[float], canvas: int, outside: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(the box in pixels, its part inside the canvas); `outside`: an integer pixel box that may reach out."""
    if not outside:
        box = parse_bbox(bbox, canvas)
        return box, box
    box = tuple(int(v) for v in bbox)
    inside = clip_box(box, canvas)
    if inside is None:
        raise ValueError(f"box {box} lies outside the {canvas}x{canvas} canvas")
    return box, inside


def location_canvas(object_image: Any, bbox: Sequence[float], canvas: int = 256, *,
                    outside: bool = False) -> np.ndarray:
    """White (+1) canvas with the whole object image (float [-1, 1]) bilinearly resized into the box
    -> (canvas, canvas, 3). bbox: `parse_bbox`'s rules, or with outside=True integer pixels that may reach out."""
    image = check_image(object_image, "object image")
    box, inside = _pixel_box(bbox, canvas, outside)
    if inside == (0, 0, canvas, canvas) and box == inside and image.shape == (canvas, canvas, 3):
        return image.copy()  # the whole canvas: the resize is the identity
    x0, y0, x1, y1 = box
    placed = bilinear_resize(image, (y1 - y0, x1 - x0))
    cx0, cy0, cx1, cy1 = inside
    out = np.ones((canvas, canvas, 3), np.float32)
    out[cy0:cy1, cx0:cx1] = placed[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return out


def background_canvas(background_image: Any, bbox: Sequence[float], canvas: int = 256, *,
                      outside: bool = False) -> np.ndarray:
    """Background (float [-1, 1]) bilinearly resized to canvas x canvas with the box painted white (+1)."""
    image = check_image(background_image, "background image")
    _, (x0, y0, x1, y1) = _pixel_box(bbox, canvas, outside)
    out = image.copy() if image.shape[:2] == (canvas, canvas) else resize(image, canvas, "bilinear")
    out[y0:y1, x0:x1] = 1.0
    return out
