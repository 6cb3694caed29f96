"""Prepared pairs from natural pictures (SAM + zero123 + BLIP-2 output) -> raw records.

Two inputs:
- a folder of per-photo folders as the original data scripts write them (docs/model.md §10): input.jpg (the photo =
  target), mask.jpg (object mask), multi_view_NN.jpg (zero123 views of the object on white), meta.json
  {"caption", "bbox": [x, y, w, h] in photo pixels, "view": [[polar, azimuth, radius] degrees per view]},
  optional caption.json {"caption": [...]}. One record per view i: T = view_from_degrees(-polar, -azimuth,
  -radius) (the view maps back to the photo); the photo is squashed to the square canvas; the box is scaled as
  int(255 x / W) ..., enlarged to the square of side int(max(w, h) 256 / 200) centred on it, and may reach
  outside the canvas (the pipeline crops the view with it);
- a JSON-lines manifest, one pair per line: {"target": path, "object": path, "box": [x0, y0, x1, y1] in target
  pixels, "view": [T0..T3] or "degrees": [polar, azimuth, radius] (condition -> target, no sign flip),
  "caption": str, "id": str (optional)}; paths relative to the manifest; the box is used as given.
The first 99% of the folders (sorted) / lines are the train split, the rest validation.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Iterator

import numpy as np
from PIL import Image

from customnet_jax.conditioning import view_from_degrees
from customnet_jax.conditioning.boxes import centred_square, clip_box, mask_xywh
from customnet_jax.data.images import resize_rgb, whiten
from customnet_jax.data.records import BadData, SkipReport, raw_record
from customnet_jax.data.views import split_ids

CANVAS = 256  # the original's box arithmetic is in 256-px canvas pixels


def finite_numbers(values, count: int) -> bool:
    """`values` is a list of `count` finite numbers (not strings, not booleans, not NaN / inf)."""
    return (isinstance(values, list | tuple) and len(values) == count
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values))


def _picture(path: pathlib.Path, mode: str = "RGB") -> np.ndarray:
    if not path.is_file():
        raise BadData(path, "missing file")
    try:
        with Image.open(path) as image:
            if mode == "RGB" and ("A" in image.getbands() or "transparency" in image.info):
                return whiten(np.asarray(image.convert("RGBA")))
            return np.asarray(image.convert(mode))
    except Exception as e:  # noqa: BLE001 - any decoder failure means a bad file
        raise BadData(path, f"unreadable image ({type(e).__name__}: {e})") from e


def _json(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise BadData(path, "missing file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadData(path, f"unreadable JSON ({e})") from e
    if not isinstance(data, dict):
        raise BadData(path, "expected a JSON object")
    return data


def enlarged_box(bbox, width: int, height: int) -> tuple[int, int, int, int]:
    """docs/model.md §10: photo bbox [x, y, w, h] -> square (x0, y0, x1, y1) in 256-canvas pixels, side
    max(w, h) * 256/200."""
    x, y, w, h = (float(v) for v in bbox)
    x0, y0 = int(255 * x / width), int(255 * y / height)
    bw, bh = int(255 * w / width), int(255 * h / height)
    side = int(max(bw, bh) * 256 / 200)
    left, top = (math.floor(v) for v in centred_square((x0, y0, bw, bh), side)[:2])
    return left, top, left + side, top + side


def _caption(folder: pathlib.Path, meta: dict) -> str:
    if isinstance(meta.get("caption"), str):
        return meta["caption"]
    path = folder / "caption.json"
    if path.is_file():
        captions = _json(path).get("caption")
        if isinstance(captions, list) and captions and isinstance(captions[0], str):
            return captions[0]
        if isinstance(captions, str):
            return captions
    return ""


def read_photo(folder: pathlib.Path, size: int, report: SkipReport) -> Iterator[tuple[str, dict]]:
    """(key, raw record) per usable view of one photo folder; BadData for a photo that cannot be used at all."""
    meta = _json(folder / "meta.json")
    photo = _picture(folder / "input.jpg")
    mask = _picture(folder / "mask.jpg", "L") > 127
    if mask.shape != photo.shape[:2]:
        raise BadData(folder / "mask.jpg", f"mask is {mask.shape[::-1]}, photo {photo.shape[1::-1]}")
    if not mask.any():
        raise BadData(folder / "mask.jpg", "empty mask")
    bbox = meta.get("bbox", mask_xywh(mask))
    if not finite_numbers(bbox, 4) or min(bbox[2], bbox[3]) <= 0:
        raise BadData(folder / "meta.json", f"bbox {bbox} is not [x, y, w, h] with w, h > 0")
    box = enlarged_box(bbox, photo.shape[1], photo.shape[0])
    if clip_box(box, CANVAS) is None:
        raise BadData(folder / "meta.json", f"bbox {bbox} lies outside the photo")
    views = meta.get("view")
    if not isinstance(views, list) or not views or not all(isinstance(v, list) and len(v) == 3 for v in views):
        raise BadData(folder / "meta.json", "'view' must be a non-empty list of [polar, azimuth, radius]")
    target, caption = resize_rgb(photo, size), _caption(folder, meta)
    for i, (polar, azimuth, radius) in enumerate(views):
        if not finite_numbers([polar, azimuth, radius], 3):
            report.add(folder / "meta.json", f"view {i} {[polar, azimuth, radius]} is not three finite numbers")
            continue
        try:
            condition = resize_rgb(_picture(folder / f"multi_view_{i:02d}.jpg"), size)
        except BadData as e:
            report.add(e.file, e.reason)
            continue
        key = f"{folder.name}/{i:02d}"
        yield key, raw_record(key, target, condition, view_from_degrees(-polar, -azimuth, -radius),
                              np.asarray(box, np.float32) / CANVAS, caption)


def _manifest_record(line: dict, manifest: pathlib.Path, number: int, size: int) -> tuple[str, dict]:
    where, base = f"{manifest}:{number + 1}", manifest.parent
    try:
        target = _picture(base / line["target"])
        condition = _picture(base / line["object"])
        x0, y0, x1, y1 = (float(v) for v in line["box"])
        camera = line["view"] if "view" in line else line["degrees"]
        if not finite_numbers(camera, 4 if "view" in line else 3) or not finite_numbers(line["box"], 4):
            raise BadData(where, f"{'view' if 'view' in line else 'degrees'} {camera} or box {line['box']} is not "
                                 "a list of finite numbers")
        view = (np.asarray(camera, np.float32) if "view" in line else view_from_degrees(*(float(v) for v in camera)))
    except (KeyError, TypeError, ValueError) as e:
        raise BadData(where, f"manifest entry lacks or misstates a field ({type(e).__name__}: {e})") from e
    height, width = target.shape[:2]
    box = np.array([x0 / width, y0 / height, x1 / width, y1 / height], np.float32)
    if view.shape != (4,) or not (x1 > x0 and y1 > y0):
        raise BadData(where, f"view {view.tolist()} must have 4 values and box {line['box']} positive area")
    key = str(line.get("id", f"{number:08d}"))
    return key, raw_record(key, resize_rgb(target, size), resize_rgb(condition, size), view, box,
                           str(line.get("caption", "")))


def pair_records(path: str | pathlib.Path, split: str, *, size: int, report: SkipReport
                 ) -> Iterator[tuple[str, dict]]:
    """(key, raw record) of the split from a folder of photo folders or a .jsonl manifest; bad items reported."""
    path = pathlib.Path(path)
    if path.is_file():
        lines = [s for s in path.read_text().splitlines() if s.strip()]
        for number in split_ids(list(range(len(lines))), split):
            try:
                yield _manifest_record(json.loads(lines[number]), path, number, size)
            except BadData as e:
                report.add(e.file, e.reason)
            except ValueError as e:  # not JSON
                report.add(f"{path}:{number + 1}", f"unreadable JSON line ({e})")
        return
    folders = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))  # skip .staging etc.
    for folder in split_ids(folders, split):
        try:
            yield from read_photo(folder, size, report)
        except BadData as e:
            report.add(e.file, e.reason)
