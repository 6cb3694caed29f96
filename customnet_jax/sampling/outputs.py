"""Files a sampling run writes: one PNG per picture, a contact sheet, and the settings JSON.

Everything is written into a temporary folder next to the output and moved into place at the end, so
an interrupted or failed run leaves no half-written set behind.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
from PIL import Image

from customnet_jax.conditioning.images import to_uint8
from customnet_jax.sampling.pipeline import Result


def contact_sheet(result: Result, gap: int = 2) -> np.ndarray:
    """Rows = views, columns = [location canvas | samples...] -> uint8 (H, W, 3) on white."""
    views, samples, size = result.images.shape[:3]
    columns = samples + 1
    sheet = np.full((views * (size + gap) + gap, columns * (size + gap) + gap, 3), 255, np.uint8)
    location = to_uint8(result.location)
    for v in range(views):
        y = gap + v * (size + gap)
        tiles = [location, *result.images[v]]
        for c, tile in enumerate(tiles):
            x = gap + c * (size + gap)
            sheet[y : y + size, x : x + size] = tile
    return sheet


def write_results(result: Result, out_dir: str | os.PathLike, name: str = "sample") -> list[pathlib.Path]:
    """Write `{name}_view{v}_sample{n}.png`, `{name}_sheet.png`, `{name}_object.png` and `{name}.json`.

    Files with the same names are replaced; other files in `out_dir` are left alone.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=out))
    try:
        views, samples = result.images.shape[:2]
        for v in range(views):
            for n in range(samples):
                Image.fromarray(result.images[v, n]).save(staging / f"{name}_view{v}_sample{n}.png")
        Image.fromarray(contact_sheet(result)).save(staging / f"{name}_sheet.png")
        Image.fromarray(to_uint8(result.object_image)).save(staging / f"{name}_object.png")
        settings = dict(result.settings, files={"sheet": f"{name}_sheet.png", "rows": "views",
                                                "columns": "location canvas, then samples"})
        (staging / f"{name}.json").write_text(json.dumps(settings, indent=2, default=str))
        written = []
        for file in sorted(staging.iterdir()):
            os.replace(file, out / file.name)
            written.append(out / file.name)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
