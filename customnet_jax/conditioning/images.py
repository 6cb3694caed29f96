"""Pictures in and out: loading, resizing, CLIP preprocessing, the float <-> uint8 conversions.

Images are channels-last floats in [-1, 1]. `resize` / `clip_preprocess` run on numpy (host) and jax arrays
(inside jit) alike; loading is host-side PIL. The resize kernels reproduce torch's (docs/conditioning.md).
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=1024)
def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The (at most two) nonzero columns and weights per row of the bilinear resize matrix."""
    matrix = resize_matrix(in_size, out_size, "bilinear")
    columns = np.argsort(matrix == 0, axis=1, kind="stable")[:, :2]
    return columns, np.take_along_axis(matrix, columns, 1)


def bilinear_resize(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """`resize(image, size, "bilinear")` for one float32 (H, W, C) picture, to float32 rounding (~1e-7): two
    taps per output pixel instead of dense matmuls (5-10x faster on the host)."""
    (rows, row_w), (cols, col_w) = _taps(image.shape[0], size[0]), _taps(image.shape[1], size[1])
    out = image[rows[:, 0]] * row_w[:, :1, None] + image[rows[:, 1]] * row_w[:, 1:, None]
    return out[:, cols[:, 0]] * col_w[None, :, :1] + out[:, cols[:, 1]] * col_w[None, :, 1:]


# ------------------------------------------------------------------------------------- float <-> uint8


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1]."""
    return image.astype(np.float32) / 127.5 - 1


def to_uint8(image: Any) -> np.ndarray:
    """Float picture in [-1, 1] (clipped) -> uint8, rounded to the nearest level."""
    return np.rint((np.clip(np.asarray(image, np.float32), -1, 1) + 1) * 127.5).astype(np.uint8)


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


# ------------------------------------------------------------------------------------- user-image loading


def open_image(image: Any) -> Image.Image:
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


def rgb_and_alpha(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
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
    rgb, _ = rgb_and_alpha(open_image(path_or_pil))
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        pil = Image.fromarray(np.rint(rgb).astype(np.uint8))
        rgb = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR), np.float32)
    return rgb / 127.5 - 1
