"""The object picture the model is given: the object cropped to its mask, fitted and centred on white.

This is Zero-1-to-3's / the original demo's recentring. Finding the mask of a photo is `conditioning.matting`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from customnet_jax.conditioning.boxes import mask_box
from customnet_jax.conditioning.images import open_image, rgb_and_alpha

WHITE_LEVEL = 250  # an RGB pixel with every channel >= this is background white


def alpha_mask(alpha: np.ndarray) -> np.ndarray:
    """The object of a picture with transparency: alpha (0..255) > 127."""
    return alpha > 127


def non_white_mask(rgb: np.ndarray) -> np.ndarray:
    """The object of an RGB picture on white (0..255): the pixels with a channel below WHITE_LEVEL."""
    return (rgb < WHITE_LEVEL).any(-1)


def object_on_white(rgba_or_rgb: Any, mask: Any = None, canvas: int = 256, object_size: int = 200) -> np.ndarray:
    """The object centred on a white canvas, longer side `object_size` px -> float32 (canvas, canvas, 3) in [-1, 1].

    The object is the mask's nonzero pixels (uint8 masks: > 127) if a mask (H, W) is given, else alpha > 127 for a
    picture with transparency (composited over white), else the non-white pixels (any channel < 250) of an RGB
    picture taken as already on white. It is cropped to its bounding box and resized (PIL Lanczos, as Zero-1-to-3's
    demo) keeping its aspect. Matting (a mask for a photo) is conditioning.matting's job.
    """
    if not 0 < object_size <= canvas:
        raise ValueError(f"object_size {object_size} must be in (0, canvas={canvas}]")
    rgb, alpha = rgb_and_alpha(open_image(rgba_or_rgb))
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f"mask has shape {mask.shape}; expected the image's (H, W) = {rgb.shape[:2]}")
        found = mask > 127 if mask.dtype == np.uint8 else mask.astype(bool)
        rgb = np.where(found[..., None], rgb, 255.0)
        source = "mask"
    elif alpha is not None:
        found, source = alpha_mask(alpha), "alpha channel"
    else:
        found, source = non_white_mask(rgb), "non-white pixels of the RGB picture"
    if not found.any():
        raise ValueError(f"no object found: the {source} is empty; give a picture with the object "
                         "(RGBA with an alpha matte, or RGB with a mask)")
    x0, y0, x1, y1 = mask_box(found)
    crop = rgb[y0:y1, x0:x1]  # (h, w, 3)
    h, w = crop.shape[:2]
    scale = object_size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    obj = Image.fromarray(np.rint(crop).astype(np.uint8)).resize((new_w, new_h), Image.Resampling.LANCZOS)
    out = Image.new("RGB", (canvas, canvas), (255, 255, 255))
    out.paste(obj, ((canvas - new_w) // 2, (canvas - new_h) // 2))
    return np.asarray(out, np.float32) / 127.5 - 1
