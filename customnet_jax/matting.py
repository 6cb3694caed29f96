"""Object preparation: the user's picture -> the object's RGB and its mask, and where the mask came from.

CustomNet is given the object alone, centred on white (`conditioning.objects.object_on_white`). A photo of an
object standing in a scene must first be cut out; one switch chooses how (`--matting`):
  alpha    the picture's alpha channel (> 127)
  white    the non-white pixels of a picture already on white
  grabcut  OpenCV's GrabCut (no weights): initialised from `object_box` or a rectangle a few pixels inside the
           border, so a photo on a reasonably plain background works with nothing downloaded
  sam      SAM from a local transformers folder (the pair builder's loader), prompted with `object_box` or the
           picture's centre
  auto     alpha if the picture has transparency; else white if the non-white pixels leave most of the border
           white; else sam if a segmenter folder is given, else grabcut
A given mask (`--mask`) is used as it is. An empty mask, or one covering almost the whole picture, is an
error; one touching all four sides is a warning; both name the fix. `sample.py` writes `*_object.png`: the
object the model was given with its mask as alpha; the settings JSON records the matting used.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from customnet_jax.conditioning.boxes import mask_box
from customnet_jax.conditioning.images import open_image, rgb_and_alpha, to_uint8
from customnet_jax.conditioning.objects import alpha_mask, non_white_mask
from customnet_jax.pairs.prompts import Prompt
from customnet_jax.pairs.segment import SamSegmenter

MATTINGS = ("auto", "alpha", "white", "grabcut", "sam")
WHITE_BORDER = 0.5  # auto takes "white" when less than this share of the border pixels are non-white
WHOLE = 0.95  # a mask covering this share of the picture is the picture, not an object
GRABCUT_MARGIN = 0.02  # the default GrabCut rectangle: this share of the side (at least 2 px) inside the border
GRABCUT_MAX_SIDE = 512  # GrabCut runs on a copy at most this large; the mask is resized back
FIXES = ("give a mask (--mask), a box around the object in the photo (--object-box x0,y0,x1,y1), or a segmenter "
         "(--matting sam --segmenter DIR)")


@dataclasses.dataclass(frozen=True)
class Cutout:
    """The object as the model will get it: RGB uint8 (H, W, 3) composited over white, its bool mask (H, W)."""

    rgb: np.ndarray
    mask: np.ndarray
    method: str  # "mask" (given), "alpha", "white", "grabcut" or "sam"
    warnings: tuple[str, ...] = ()

    def record(self) -> dict[str, Any]:
        """What the settings JSON keeps: which matting made the mask, its area and box, the warnings."""
        return {"method": self.method, "mask_area": round(float(self.mask.mean()), 5),
                "mask_box": list(mask_box(self.mask)),
                "warnings": list(self.warnings)}


def border_share(mask: np.ndarray) -> float:
    """The share of the picture's one-pixel frame that the mask covers."""
    frame = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    return float(frame.mean())


def check_mask(mask: np.ndarray, method: str) -> tuple[str, ...]:
    """ValueError for an empty or whole-picture mask; a warning for one touching all four sides."""
    if not mask.any():
        raise ValueError(f"no object found: the {method} mask is empty; {FIXES}")
    if mask.mean() >= WHOLE:
        raise ValueError(f"the {method} mask covers {mask.mean():.0%} of the picture: that is the photo, not an "
                         f"object; {FIXES}")
    sides = (mask[0].any(), mask[-1].any(), mask[:, 0].any(), mask[:, -1].any())
    if all(sides):
        return (f"the {method} mask touches all four sides of the picture: it may hold background; check "
                f"the cut-out, or {FIXES}",)
    return ()


def grabcut_mask(rgb: np.ndarray, object_box: Sequence[int] | None = None, iterations: int = 5) -> np.ndarray:
    """OpenCV GrabCut on a uint8 RGB photo, from `object_box` (x0, y0, x1, y1) or a rectangle just inside the
    border -> bool mask (definite + probable foreground). Seeded, so the same photo gives the same mask."""
    import cv2  # OpenCV: only this matting needs it

    height, width = rgb.shape[:2]
    scale = min(1.0, GRABCUT_MAX_SIDE / max(height, width))
    small = rgb if scale == 1.0 else np.asarray(Image.fromarray(rgb).resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR))
    h, w = small.shape[:2]
    if object_box is None:
        margin = max(2, round(GRABCUT_MARGIN * min(h, w)))
        x0, y0, x1, y1 = margin, margin, w - margin, h - margin
    else:
        x0, y0, x1, y1 = (int(round(v * scale)) for v in object_box)
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(f"the GrabCut rectangle ({x0}, {y0}, {x1}, {y1}) is too small for a {w}x{h} picture; "
                         "give --object-box x0,y0,x1,y1 in the photo's pixels around the object")
    labels = np.zeros((h, w), np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(np.ascontiguousarray(small[..., ::-1]), labels, (x0, y0, x1 - x0, y1 - y0), background, foreground,
                iterations, cv2.GC_INIT_WITH_RECT)
    found = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    if scale != 1.0:
        found = np.asarray(Image.fromarray(found.astype(np.uint8) * 255).resize(
            (width, height), Image.Resampling.NEAREST)) > 127
    return found


@functools.lru_cache(maxsize=2)
def _sam(folder: str) -> SamSegmenter:
    """The pair builder's SAM loader (torch and transformers are imported only when it is built)."""
    return SamSegmenter(folder)


def sam_mask(rgb: np.ndarray, segmenter: str | pathlib.Path, object_box: Sequence[int] | None = None) -> np.ndarray:
    """SAM (a local transformers folder, loaded once per process) prompted with the box or the picture's centre."""
    height, width = rgb.shape[:2]
    if object_box is not None:
        prompt = Prompt("box", box=tuple(float(v) for v in object_box))
    else:
        prompt = Prompt("center", points=((width / 2, height / 2),))
    return _sam(str(segmenter))(None, rgb, prompt).mask


def auto_method(alpha: np.ndarray | None, rgb: np.ndarray, segmenter: Any) -> str:
    """The `auto` rule (module docstring)."""
    if alpha is not None and (alpha < 255).any():
        return "alpha"
    if border_share(non_white_mask(rgb)) < WHITE_BORDER:
        return "white"
    return "sam" if segmenter else "grabcut"


def cut_out(picture: Any, matting: str = "auto", *, mask: Any = None, object_box: Sequence[int] | None = None,
            segmenter: str | pathlib.Path | None = None) -> Cutout:
    """A picture (path, PIL image, uint8 array) -> its Cutout. `mask` (H, W; uint8 > 127 or bool) overrides
    the matting; `object_box` (x0, y0, x1, y1 in the picture's pixels) guides grabcut and sam."""
    if matting not in MATTINGS:
        raise ValueError(f"matting {matting!r}; expected one of {MATTINGS}")
    rgb_float, alpha = rgb_and_alpha(open_image(picture))
    rgb = np.rint(rgb_float).astype(np.uint8)
    height, width = rgb.shape[:2]
    if object_box is not None:
        x0, y0, x1, y1 = (int(v) for v in object_box)
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(f"object box {tuple(object_box)} is not inside the {width}x{height} picture; give "
                             "x0,y0,x1,y1 in the photo's pixels with x0 < x1, y0 < y1")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (height, width):
            raise ValueError(f"mask has shape {mask.shape}; expected the picture's (H, W) = {(height, width)}")
        found, method = (mask > 127 if mask.dtype == np.uint8 else mask.astype(bool)), "mask"
    else:
        method = auto_method(alpha, rgb, segmenter) if matting == "auto" else matting
        if method == "alpha":
            if alpha is None:
                raise ValueError(f"--matting alpha: the picture has no alpha channel; {FIXES}")
            found = alpha_mask(alpha)
        elif method == "white":
            found = non_white_mask(rgb)
        elif method == "grabcut":
            found = grabcut_mask(rgb, object_box)
        else:
            if not segmenter:
                raise ValueError("--matting sam needs a SAM model folder: --segmenter DIR (transformers "
                                 "save_pretrained layout)")
            found = sam_mask(rgb, segmenter, object_box)
    warnings = check_mask(found, method)
    return Cutout(np.where(found[..., None], rgb, np.uint8(255)), found, method, warnings)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """--matting, --object-box, --segmenter (sample.py)."""
    parser.add_argument("--matting", choices=MATTINGS, default="auto",
                        help="how the object is cut out of --object: alpha channel, non-white pixels, OpenCV "
                             "GrabCut, SAM (--segmenter), or auto (alpha, else white if the border is white, "
                             "else sam with --segmenter, else grabcut)")
    parser.add_argument("--object-box", help="x0,y0,x1,y1 in the object picture's pixels around the object "
                                             "(guides grabcut and sam)")
    parser.add_argument("--segmenter", help="SAM model folder (transformers save_pretrained layout) for --matting "
                                            "sam / auto")


def parse_object_box(text: str | None) -> tuple[int, ...] | None:
    """'x0,y0,x1,y1' -> four ints, or ValueError naming the form."""
    if not text:
        return None
    try:
        values = tuple(int(round(float(v))) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(f"--object-box {text!r}: give four numbers x0,y0,x1,y1 in the picture's pixels")
    return values


def from_args(args: argparse.Namespace, mask: Any = None) -> Cutout:
    """The Cutout of `args.object` with add_flags' flags (ValueError / OSError for bad input)."""
    return cut_out(args.object, args.matting, mask=mask, object_box=parse_object_box(args.object_box),
                   segmenter=args.segmenter)


def write_object(cutout: Cutout, prepare: Callable[[Any, Any], np.ndarray], out_dir: str | pathlib.Path,
                 name: str) -> pathlib.Path:
    """`{name}_object.png` as RGBA: the object the model was given (RGB, centred on white) with its mask, moved the
    same way, as alpha (so the file is also a valid --object). `prepare` is the pipeline's object preparation
    (picture, mask) -> float (R, R, 3). Written atomically."""
    rgb = to_uint8(prepare(cutout.rgb, cutout.mask))
    matte = prepare(np.where(cutout.mask[..., None], np.uint8(0), np.uint8(255)).repeat(3, -1), cutout.mask)
    alpha = to_uint8(-matte[..., :1])  # the black object -> 255
    path = pathlib.Path(out_dir) / f"{name}_object.png"
    partial = path.with_name(f".{path.name}.partial")
    Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA").save(partial, format="PNG")
    partial.replace(path)
    return path
