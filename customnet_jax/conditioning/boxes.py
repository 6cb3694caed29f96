"""Boxes: the user's bbox on the canvas, stored fractions -> pixels, a mask's box, the enlarged training square.

Boxes are (x0, y0, x1, y1) with x = column, y = row, x1 / y1 exclusive, unless a name says [x, y, w, h].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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


def box_pixels(box: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """A box stored as fractions of the side (may reach outside [0, 1]) -> integer pixels, at least 1 px wide."""
    x0, y0, x1, y1 = (int(v) for v in np.rint(np.asarray(box, np.float64) * size))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def clip_box(box: Sequence[int], size: int) -> tuple[int, int, int, int] | None:
    """The part of a pixel box inside the size x size canvas, or None if there is none."""
    x0, y0, x1, y1 = (min(max(v, 0), size) for v in box)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box (x0, y0, x1, y1) of the True pixels of a (H, W) mask, None if there are none."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def mask_xywh(mask: np.ndarray) -> list[int]:
    """Tight box [x, y, w, h] of a non-empty (H, W) mask (the pair folders' meta bbox)."""
    box = mask_box(mask)
    if box is None:
        raise ValueError("empty mask has no box")
    x0, y0, x1, y1 = box
    return [x0, y0, x1 - x0, y1 - y0]


def centred_square(bbox: Sequence[float], side: float) -> tuple[float, float, float, float]:
    """The square (x0, y0, x1, y1) of the given side centred on the box [x, y, w, h] (may reach outside the
    picture): CustomNet's training box encloses the object's box enlarged this way (docs/conditioning.md)."""
    x, y, w, h = (float(v) for v in bbox)
    left, top = x + w / 2 - side / 2, y + h / 2 - side / 2
    return left, top, left + side, top + side
