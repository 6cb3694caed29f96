"""Host-side uint8 picture helpers for the data builders (PIL + numpy); the float canvases are conditioning's.

Transparency: the builders composite RGBA renders over white with the alpha as a weight ("blend", the same rule
as `conditioning.images.load_rgb` / `conditioning.objects.object_on_white` use for user pictures at inference),
so that training inputs and inference inputs are made the same way. Zero-1-to-3's loader instead whitens only the
alpha == 0 pixels and keeps the colour of partly transparent edge pixels ("zero123"); choose it to reproduce its
data exactly.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

ALPHA_MODES = ("blend", "zero123")


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3|4) -> PNG bytes (what a tfds Image feature stores; no TensorFlow needed to write them)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def whiten(rgba: np.ndarray, mode: str = "blend") -> np.ndarray:
    """uint8 RGBA -> uint8 RGB on white: "blend" (alpha-weighted) or "zero123" (only alpha == 0 -> white)."""
    if mode not in ALPHA_MODES:
        raise ValueError(f"alpha mode {mode!r}; expected one of {ALPHA_MODES}")
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    if mode == "zero123":
        return np.where(alpha == 0, np.uint8(255), rgb)
    a = alpha.astype(np.float32) / 255
    return np.rint(rgb.astype(np.float32) * a + 255 * (1 - a)).astype(np.uint8)


def resize_rgb(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """uint8 RGB -> uint8 RGB of `size` (int: square; or (h, w)), PIL bilinear (antialiased when shrinking)."""
    h, w = (size, size) if np.ndim(size) == 0 else tuple(size)
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))


def resize_rgba(rgba: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGBA -> uint8 RGBA (size, size), resampled premultiplied so edges take no colour from the clear area."""
    if rgba.shape[:2] == (size, size):
        return rgba
    image = Image.fromarray(rgba, "RGBA").convert("RGBa").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image.convert("RGBA"))


def paste_rgba(background: np.ndarray, rgba: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """The whole RGBA picture resized into the pixel box (x0, y0, x1, y1, inside the picture) and composited."""
    x0, y0, x1, y1 = box
    if x1 - x0 != y1 - y0:
        raise ValueError(f"box {tuple(box)} is not square")
    out = background.copy()
    patch = resize_rgba(rgba, x1 - x0)
    a = patch[..., 3:].astype(np.float32) / 255
    region = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.rint(patch[..., :3].astype(np.float32) * a + region * (1 - a)).astype(np.uint8)
    return out
