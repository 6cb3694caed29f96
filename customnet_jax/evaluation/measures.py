"""Ground-truth measures for generated pictures (pure numpy): location, viewpoint, background, identity.

Images are uint8 (H, W, 3) (or float in [0, 1]); boxes are (x0, y0, x1, y1) integer pixels, x = column,
y = row, x1 / y1 exclusive (the pipeline's `settings["bbox"]`).

- Location: the generated object's box is the bounding box of the pixels that differ from the known background
  (`foreground_mask`, `mask_box`); its IoU with the requested box (`box_iou`, `location_iou`).
- Viewpoint: colour agreement of the generated picture with the ground-truth render at the requested view, over
  the render's object pixels (`colour_agreement`); `viewpoint_margins` compares, for each requested view, the
  picture generated for it with the pictures the same model made for the other views (the "wrong view"): the
  requested view must win (positive margin).
- Background: PSNR outside the box against the given background (`background_psnr`), capped (identical = cap).
- Identity: colour-histogram intersection of the object across the views of a sheet and its area ratio
  (`identity_consistency`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from customnet_jax.conditioning.boxes import mask_box

Box = tuple[int, int, int, int]
PSNR_CAP_DB = 100.0


def as_unit(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float64 in [0, 1]; float images are taken as already in [0, 1]."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    return image.astype(np.float64) / 255 if image.dtype == np.uint8 else image.astype(np.float64)


def box_mask(shape: Sequence[int], box: Sequence[int]) -> np.ndarray:
    """Boolean (H, W) mask, True inside the box."""
    x0, y0, x1, y1 = (int(v) for v in box)
    mask = np.zeros(tuple(shape[:2]), bool)
    mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return mask


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes (0 when either is empty)."""
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = max(0.0, ax1 - ax0) * max(0.0, ay1 - ay0) + max(0.0, bx1 - bx0) * max(0.0, by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def open_mask(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary opening with a 3x3 square (erode then dilate), numpy only: removes isolated speckles."""
    def shifted(m: np.ndarray, op) -> np.ndarray:
        padded = np.pad(m, 1, constant_values=op is np.logical_and)  # erosion pads True, dilation pads False
        out = padded[1:-1, 1:-1].copy()
        for dy, dx in itertools.product((0, 1, 2), repeat=2):
            out = op(out, padded[dy : dy + m.shape[0], dx : dx + m.shape[1]])
        return out

    for _ in range(iterations):
        mask = shifted(mask, np.logical_and)
    for _ in range(iterations):
        mask = shifted(mask, np.logical_or)
    return mask


def foreground_mask(image: np.ndarray, background: np.ndarray, threshold: float = 0.1,
                    open_iterations: int = 1) -> np.ndarray:
    """Pixels whose largest channel difference from the background exceeds `threshold` (in [0, 1] units),
    cleaned by a 3x3 binary opening (`open_iterations`, 0 = none) -> bool (H, W)."""
    a, b = as_unit(image), as_unit(background)
    if a.shape != b.shape:
        raise ValueError(f"image {a.shape} and background {b.shape} differ in shape")
    return open_mask(np.abs(a - b).max(-1) > threshold, open_iterations)


def location_iou(image: np.ndarray, background: np.ndarray, requested: Sequence[int], threshold: float = 0.1,
                 open_iterations: int = 1) -> float:
    """IoU of the generated object's box (found against the known background) with the requested box."""
    found = mask_box(foreground_mask(image, background, threshold, open_iterations))
    return 0.0 if found is None else box_iou(found, requested)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, cap: float | None = PSNR_CAP_DB) -> float:
    """PSNR in dB (peak 1) over the masked pixels; identical pictures give `cap` (inf when cap is None)."""
    diff = (as_unit(a) - as_unit(b)) ** 2
    if mask is not None:
        diff = diff[mask]
    if diff.size == 0:
        return float("nan")
    mse = float(diff.mean())
    value = math.inf if mse == 0 else -10 * math.log10(mse)
    return value if cap is None else min(value, cap)


def background_psnr(image: np.ndarray, background: np.ndarray, box: Sequence[int],
                    cap: float | None = PSNR_CAP_DB) -> float:
    """PSNR outside the box against the given background (composition: the background must be kept)."""
    return psnr(image, background, ~box_mask(np.shape(image), box), cap)


def colour_agreement(image: np.ndarray, truth: np.ndarray, mask: np.ndarray, tolerance: float = 0.15) -> float:
    """Fraction of the mask's pixels whose largest channel difference to the truth is <= tolerance ([0, 1])."""
    if not mask.any():
        return float("nan")
    close = np.abs(as_unit(image) - as_unit(truth)).max(-1) <= tolerance
    return float(close[mask].mean())


def viewpoint_margins(generated: Sequence[np.ndarray], truths: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                      tolerance: float = 0.15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For views v = 0..V-1: generated[v] was asked for view v, truths[v] / masks[v] are its ground-truth render
    and object pixels. Returns (agreement (V,), wrong (V,), margin (V,)): agreement of generated[v] with truth v,
    mean agreement of the other views' pictures with truth v (NaN with a single view), and their difference."""
    views = len(generated)
    if not views == len(truths) == len(masks):
        raise ValueError(f"{len(generated)} pictures, {len(truths)} truths and {len(masks)} masks: one each per view")
    table = np.array([[colour_agreement(generated[w], truths[v], masks[v], tolerance) for w in range(views)]
                      for v in range(views)])  # [truth v, picture w]
    agreement = np.diag(table).copy()
    wrong = np.array([np.mean([table[v, w] for w in range(views) if w != v]) if views > 1 else np.nan
                      for v in range(views)])
    return agreement, wrong, agreement - wrong


def colour_histogram(image: np.ndarray, mask: np.ndarray | None = None, bins: int = 4) -> np.ndarray:
    """Normalised joint RGB histogram (bins**3,) of the masked pixels."""
    x = as_unit(image)
    pixels = x.reshape(-1, 3) if mask is None else x[mask]
    index = np.clip((pixels * bins).astype(int), 0, bins - 1) @ np.array([bins * bins, bins, 1])
    counts = np.bincount(index, minlength=bins**3).astype(np.float64)
    return counts / max(counts.sum(), 1)


def identity_consistency(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], bins: int = 4) -> dict:
    """The object across a multi-view sheet: mean pairwise colour-histogram intersection of its pixels (1 = same
    colours) and the smallest / largest object area (1 = same size). NaN with fewer than two views."""
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} pictures but {len(masks)} masks")
    if len(images) < 2:
        return {"colour": float("nan"), "area_ratio": float("nan")}
    hists = [colour_histogram(i, m, bins) for i, m in zip(images, masks, strict=True)]
    pairs = [float(np.minimum(a, b).sum()) for a, b in itertools.combinations(hists, 2)]
    areas = [int(m.sum()) for m in masks]
    return {"colour": float(np.mean(pairs)), "area_ratio": min(areas) / max(areas) if max(areas) else float("nan")}
