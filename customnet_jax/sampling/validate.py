"""sample.py's arguments checked before any work (no model is loaded, nothing is compiled or sampled first).

Every bad argument is one `SamplingArgumentError` line that names the flag and what it accepts:
  --polar / --azimuth / --radius  finite, within the documented ranges: polar [-90, 90] degrees, azimuth
                                  [-180, 180] degrees, radius [-0.5, 0.5] (relative to the object's camera);
  --bbox                          four finite numbers x0,y0,x1,y1 with x0 < x1 and y0 < y1: fractions in [0, 1]
                                  or pixels of the model's canvas;
  --object / --mask / --background  a readable picture, at most MAX_PIXELS pixels (a decompression bomb is
                                  refused before it is decoded), not damaged;
  --out                           a folder that can be written (a probe file is written and removed).
`check_pictures` refuses a result whose latents are not finite (a black PNG would otherwise be written).
"""

from __future__ import annotations

import math
import os
import pathlib
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

RANGES = {"polar": (-90.0, 90.0), "azimuth": (-180.0, 180.0), "radius": (-0.5, 0.5)}
MAX_PIXELS = 64_000_000  # 8000 x 8000: far above any useful object or background picture


class SamplingArgumentError(ValueError):
    """A sample.py argument that cannot work; the message names the flag and the fix."""


class NonFinitePicturesError(ValueError):
    """The sampler produced NaN / inf: no picture is written."""


def check_views(name: str, values: Sequence[float]) -> None:
    low, high = RANGES[name]
    for value in values:
        if not math.isfinite(value) or not low <= value <= high:
            raise SamplingArgumentError(f"--{name} {value:g}: each value must be a finite number in [{low:g}, {high:g}]"
                                        + (" (relative to the object's camera distance)" if name == "radius" else
                                           " degrees"))


def parse_bbox(text: str, resolution: int) -> list[float]:
    """'x0,y0,x1,y1' (fractions in [0, 1] or pixels of the `resolution` canvas) -> four floats, checked."""
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        box = []
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise SamplingArgumentError(f"--bbox {text!r}: give four finite numbers x0,y0,x1,y1 (fractions in [0, 1] or "
                                    f"pixels of the {resolution}x{resolution} canvas)")
    limit = 1.0 if all(v <= 1.0 for v in box) else float(resolution)
    unit = "fractions" if limit == 1.0 else f"pixels of the {resolution}x{resolution} canvas"
    if min(box) < 0 or max(box) > limit:
        raise SamplingArgumentError(f"--bbox {text!r}: the box is outside the canvas (values in [0, {limit:g}], "
                                    f"{unit})")
    if box[0] >= box[2] or box[1] >= box[3]:
        raise SamplingArgumentError(f"--bbox {text!r}: the box has zero or negative area (need x0 < x1 and y0 < y1)")
    return box


def check_picture(flag: str, path: str) -> None:
    """A picture file that exists, is not too large to decode, and decodes."""
    from PIL import Image

    file = pathlib.Path(path)
    if not file.is_file():
        raise SamplingArgumentError(f"{flag} {path}: no such file" + (" (it is a folder)" if file.is_dir() else ""))
    if not os.access(file, os.R_OK):
        raise SamplingArgumentError(f"{flag} {path}: the file cannot be read (permissions)")
    try:
        with Image.open(file) as image:  # reads the header only
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise SamplingArgumentError(f"{flag} {path}: {width}x{height} pixels is too large to decode (at most "
                                            f"{MAX_PIXELS:,} pixels; a decompression bomb?): use a smaller picture")
            image.load()
    except SamplingArgumentError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise SamplingArgumentError(f"{flag} {path}: not a readable picture ({error})") from None


def check_output_folder(path: str) -> None:
    """The output folder, or the nearest folder above it that exists (where it will be made), takes a file:
    a probe file is written there and removed (nothing is created otherwise)."""
    folder = pathlib.Path(path).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SamplingArgumentError(f"--out {path}: {existing} is a file, not a folder; choose another --out")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-check-"):
            pass
    except OSError as error:
        raise SamplingArgumentError(f"--out {path}: {existing} cannot be written ({error.strerror or error}); "
                                    "choose another --out") from None


def validate_arguments(args: Any, parse_values: Callable[[str, str], list[float]], model: Callable[[], Any]) -> None:
    """Check sample.py's parsed arguments; `parse_values(text, name)` reads a view flag, `model()` is the model's
    CustomNetConfig (read from its config.json, without the weights)."""
    for name in RANGES:
        check_views(name, parse_values(getattr(args, name), name))
    if args.bbox:
        parse_bbox(args.bbox, model().resolution)
    if getattr(args, "background", None) and not model().has_background:
        raise SamplingArgumentError("--background: this model has no background channels: a background picture "
                                    "needs the composition model")
    for flag in ("object", "mask", "background"):
        if getattr(args, flag, None):
            check_picture(f"--{flag}", getattr(args, flag))
    check_output_folder(args.out)


def check_pictures(latents: np.ndarray) -> None:
    """A sampling result whose latents hold NaN / inf decodes to black pictures: an error, not PNGs."""
    if not np.all(np.isfinite(latents)):
        raise NonFinitePicturesError("the sampled pictures are not finite (NaN / inf in the latents): the model's "
                                    "weights or the settings (guidance, steps) make the sampler diverge; nothing "
                                    "was written")
