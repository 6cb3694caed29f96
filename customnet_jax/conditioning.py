"""CustomNet's conditioning inputs: viewpoint T, CLIP preprocessing, location and background canvases.

Images are channels-last floats in [-1, 1]. `resize` / `clip_preprocess` run on numpy (host) and jax arrays
(inside jit) alike; the canvas and image-loading helpers are host-side numpy / PIL (docs/model.md §4, §6, §10).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
RESIZE_METHODS = ("bicubic_align_corners", "bilinear")

# ---------------------------------------------------------------------------------------------- viewpoint


def view_from_degrees(polar: Any, azimuth: Any, radius: Any = 0.0) -> np.ndarray:
    """T = [rad(polar), sin(rad(azimuth)), cos(rad(azimuth)), radius], broadcast -> (..., 4) float32."""
    polar, azimuth, radius = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (polar, azimuth, radius)))
    az = np.radians(azimuth)
    return np.stack([np.radians(polar), np.sin(az), np.cos(az), radius], axis=-1).astype(np.float32)


def _spherical(rt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(polar, azimuth, radius) of the camera centre C = -R^T t of world->camera matrices (..., 3, 4)."""
    c = -np.einsum("...ji,...j->...i", rt[..., :3], rt[..., 3])  # (..., 3)
    x, y, z = c[..., 0], c[..., 1], c[..., 2]
    return np.arctan2(np.hypot(x, y), z), np.arctan2(y, x), np.linalg.norm(c, axis=-1)


def view_from_cameras(target_rt: Any, condition_rt: Any) -> np.ndarray:
    """Relative view T from condition to target camera (Zero-1-to-3 `get_T`): (3, 4) -> (4,), (N, 3, 4) -> (N, 4)."""
    target_rt, condition_rt = np.asarray(target_rt, np.float64), np.asarray(condition_rt, np.float64)
    for name, rt in (("target_rt", target_rt), ("condition_rt", condition_rt)):
        if rt.ndim not in (2, 3) or rt.shape[-2:] != (3, 4):
            raise ValueError(f"{name} has shape {rt.shape}; expected a 3x4 world->camera matrix [R | t], (3, 4) "
                             "or batched (N, 3, 4)")
    if target_rt.shape != condition_rt.shape:
        raise ValueError(f"target_rt {target_rt.shape} and condition_rt {condition_rt.shape} shapes differ")
    polar_t, az_t, radius_t = _spherical(target_rt)
    polar_c, az_c, radius_c = _spherical(condition_rt)
    d_az = np.mod(az_t - az_c, 2 * math.pi)
    return np.stack([polar_t - polar_c, np.sin(d_az), np.cos(d_az), radius_t - radius_c], -1).astype(np.float32)


# ------------------------------------------------------------------------------------------------- resize


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys cubic convolution weights for taps at offsets -1, 0, 1, 2 from floor(src); t: (n,) -> (n, 4)."""

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], -1)


@functools.lru_cache(maxsize=64)
def resize_matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
    """Dense (out_size, in_size) float32 matrix M with resize(x) = M @ x along one axis (read-only, cached).

    "bicubic_align_corners" = torch `interpolate(mode="bicubic", align_corners=True)` (kornia's resize in the
    original CLIP embedder); "bilinear" = torch `interpolate(mode="bilinear", align_corners=False)`. Neither
    antialiases; out-of-range taps are clamped to the border as torch does.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")
    # Source positions in float32 arithmetic as torch computes them for float32 images (float64 positions differ by
    # ~1e-5); the weights of those positions in float64 (torch's float32 cubic weights carry ~5e-7 rounding error).
    dst, f32 = np.arange(out_size, dtype=np.float32), np.float32
    if method == "bicubic_align_corners":
        src = dst * (f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0))
        base = np.floor(src)
        taps = base[:, None].astype(np.int64) + np.arange(-1, 3)  # (out, 4)
        weights = _cubic_weights((src - base).astype(np.float64))
    elif method == "bilinear":
        src = np.maximum((f32(in_size) / f32(out_size)) * (dst + f32(0.5)) - f32(0.5), f32(0))  # half-pixel centres
        base = np.floor(src)
        taps = base[:, None].astype(np.int64) + np.arange(2)  # (out, 2)
        frac = (src - base).astype(np.float64)
        weights = np.stack([1 - frac, frac], -1)
    else:
        raise ValueError(f"unknown resize method {method!r}; expected one of {RESIZE_METHODS}")
    matrix = np.zeros((out_size, in_size), np.float64)
    np.add.at(matrix, (np.arange(out_size)[:, None], np.clip(taps, 0, in_size - 1)), weights)
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def resize(images: Any, size: int | Sequence[int], method: str) -> Any:
    """Separable resize of (B, H, W, C) or (H, W, C) images to `size` (int or (h, w)): two matmuls.

    numpy in -> numpy float32 out (host); jax arrays / tracers -> jax (full float32 matmul precision).
    """
    if images.ndim not in (3, 4):
        raise ValueError(f"resize expects (B, H, W, C) or (H, W, C) images, got shape {images.shape}")
    out_h, out_w = (int(v) for v in ((size, size) if np.ndim(size) == 0 else size))
    m_h = resize_matrix(int(images.shape[-3]), out_h, method)
    m_w = resize_matrix(int(images.shape[-2]), out_w, method)
    if isinstance(images, jax.Array):
        hi = jax.lax.Precision.HIGHEST
        out = jnp.einsum("oh,...hwc->...owc", m_h, images, precision=hi)
        return jnp.einsum("pw,...owc->...opc", m_w, out, precision=hi)
    images = np.asarray(images, np.float32)
    out = np.einsum("oh,...hwc->...owc", m_h, images, optimize=True)
    return np.einsum("pw,...owc->...opc", m_w, out, optimize=True)


def clip_preprocess(images: Any, size: int = 224) -> Any:
    """CLIP image-encoder input: (B, S, S, 3) in [-1, 1] -> bicubic (align_corners) size -> CLIP-normalised."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"clip_preprocess expects (B, H, W, 3) images in [-1, 1], got shape {images.shape}")
    x = resize(images, size, "bicubic_align_corners")  # (B, size, size, 3)
    return ((x + 1) / 2 - CLIP_MEAN) / CLIP_STD


# ------------------------------------------------------------------------------------ boxes and canvases


def parse_bbox(bbox: Sequence[float], canvas: int = 256) -> tuple[int, int, int, int]:
    """Box (x0, y0, x1, y1) (x = column, y = row) as integer pixels of the canvas x canvas image.

    Rule: if all four values are floats (Python or numpy) in [0, 1], they are fractions of the canvas side
    (rounded to the nearest pixel); otherwise they are pixel coordinates in [0, canvas] (floats are rounded).
    So give pixel boxes as ints. The box must satisfy 0 <= x0 < x1 <= canvas and 0 <= y0 < y1 <= canvas.
    """
    items = list(bbox)
    if len(items) != 4:
        raise ValueError(f"bbox {tuple(items)} must have four values (x0, y0, x1, y1)")
    values = np.asarray(items, np.float64)
    shown = "(" + ", ".join(f"{v:g}" for v in values) + ")"
    valid = f"give pixel coordinates in [0, {canvas}] or fractions in [0, 1]"
    if not np.isfinite(values).all():
        raise ValueError(f"bbox {shown} has non-finite values; {valid}")
    if all(isinstance(v, float | np.floating) for v in items) and ((values >= 0) & (values <= 1)).all():
        values = values * canvas
    x0, y0, x1, y1 = (int(v) for v in np.rint(values))
    if min(x0, y0, x1, y1) < 0 or max(x0, y0, x1, y1) > canvas:
        raise ValueError(f"bbox {shown} reaches outside the {canvas}x{canvas} canvas; {valid}")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"bbox {shown} has zero or negative area on the {canvas}x{canvas} canvas; "
                         "expected x0 < x1 and y0 < y1 (x = column, y = row)")
    return x0, y0, x1, y1


def check_image(image: Any, name: str) -> np.ndarray:
    """Validate an RGB image: float, finite, in [-1, 1] (tolerance 1e-3), (H, W, 3) or grayscale (H, W).

    Returns it as float32 (H, W, 3) (grayscale repeated to three channels); raises ValueError otherwise.
    """
    x = np.asarray(image)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.ndim != 3 or x.shape[-1] != 3 or x.size == 0:
        raise ValueError(f"{name} has shape {np.shape(image)}; expected an RGB (H, W, 3) image "
                         "(composite RGBA pictures over white first, e.g. with load_rgb or object_on_white)")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{name} has dtype {x.dtype}; pass float images scaled to [-1, 1]")
    is_float, x = x.dtype.kind == "f", x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} has non-finite values (NaN or inf)")
    lo, hi = float(x.min()), float(x.max())
    if not is_float or lo < -1 - 1e-3 or hi > 1 + 1e-3:  # integer images are 8-bit data, whatever their range
        kind = "" if is_float else f" ({np.asarray(image).dtype})"
        raise ValueError(f"{name} has values in [{lo:.4g}, {hi:.4g}]{kind}; pass float images scaled to [-1, 1] "
                         "(x / 127.5 - 1)")
    return x


def location_canvas(object_image: Any, bbox: Sequence[float], canvas: int = 256) -> np.ndarray:
    """White (+1) canvas with the whole object image bilinearly resized into the box -> (canvas, canvas, 3)."""
    image = check_image(object_image, "object image")
    x0, y0, x1, y1 = parse_bbox(bbox, canvas)
    out = np.ones((canvas, canvas, 3), np.float32)
    out[y0:y1, x0:x1] = resize(image, (y1 - y0, x1 - x0), "bilinear")
    return out


def background_canvas(background_image: Any, bbox: Sequence[float], canvas: int = 256) -> np.ndarray:
    """Background bilinearly resized to canvas x canvas with the box painted white (+1) -> (canvas, canvas, 3)."""
    image = check_image(background_image, "background image")
    x0, y0, x1, y1 = parse_bbox(bbox, canvas)
    out = resize(image, canvas, "bilinear")
    out[y0:y1, x0:x1] = 1.0
    return out


# ------------------------------------------------------------------------------------- user-image loading


def _open(image: Any) -> Image.Image:
    """A PIL image from a path, a PIL image or a uint8 (H, W, 3|4) array."""
    if isinstance(image, str | os.PathLike):
        with Image.open(image) as im:
            im.load()
            return im
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"expected a path, a PIL image or a uint8 (H, W, 3|4) array; got {array.dtype} "
                         f"array of shape {array.shape}")
    return Image.fromarray(array)


def _rgb_and_alpha(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB float (H, W, 3) in [0, 255] composited over white, and the alpha (H, W) in [0, 255] if any."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return np.asarray(image.convert("RGB"), np.float32), None
    rgba = np.asarray(image.convert("RGBA"), np.float32)
    alpha = rgba[..., 3]
    return rgba[..., :3] * (alpha[..., None] / 255) + 255 * (1 - alpha[..., None] / 255), alpha


def load_rgb(path_or_pil: Any, size: int | Sequence[int] | None = None) -> np.ndarray:
    """Load a picture as float32 (H, W, 3) in [-1, 1]; transparency composited over white; optional resize.

    `size` is an int (square) or (h, w); resizing uses PIL bilinear (= torchvision `Resize` on PIL images).
    """
    rgb, _ = _rgb_and_alpha(_open(path_or_pil))
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        pil = Image.fromarray(np.rint(rgb).astype(np.uint8))
        rgb = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR), np.float32)
    return rgb / 127.5 - 1


def object_on_white(rgba_or_rgb: Any, mask: Any = None, canvas: int = 256, object_size: int = 200) -> np.ndarray:
    """The object centred on a white canvas, longer side `object_size` px -> float32 (canvas, canvas, 3) in [-1, 1].

    The object is the mask's nonzero pixels (uint8 masks: > 127) if a mask (H, W) is given, else alpha > 127 for a
    picture with transparency (composited over white), else the non-white pixels (any channel < 250) of an RGB
    picture taken as already on white. It is cropped to its bounding box and resized (PIL Lanczos, as Zero-1-to-3's
    demo) keeping its aspect. Matting itself (carvekit / SAM in the original) is outside this function.
    """
    if not 0 < object_size <= canvas:
        raise ValueError(f"object_size {object_size} must be in (0, canvas={canvas}]")
    rgb, alpha = _rgb_and_alpha(_open(rgba_or_rgb))
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f"mask has shape {mask.shape}; expected the image's (H, W) = {rgb.shape[:2]}")
        found = mask > 127 if mask.dtype == np.uint8 else mask.astype(bool)
        rgb = np.where(found[..., None], rgb, 255.0)
        source = "mask"
    elif alpha is not None:
        found, source = alpha > 127, "alpha channel"
    else:
        found, source = (rgb < 250).any(-1), "non-white pixels of the RGB picture"
    if not found.any():
        raise ValueError(f"no object found: the {source} is empty; give a picture with the object "
                         "(RGBA with an alpha matte, or RGB with a mask)")
    rows, cols = np.nonzero(found.any(1))[0], np.nonzero(found.any(0))[0]
    crop = rgb[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # (h, w, 3)
    h, w = crop.shape[:2]
    scale = object_size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    obj = Image.fromarray(np.rint(crop).astype(np.uint8)).resize((new_w, new_h), Image.Resampling.LANCZOS)
    out = Image.new("RGB", (canvas, canvas), (255, 255, 255))
    out.paste(obj, ((canvas - new_w) // 2, (canvas - new_h) // 2))
    return np.asarray(out, np.float32) / 127.5 - 1
