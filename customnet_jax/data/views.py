"""Zero-1-to-3 renders in the `views_release` layout -> raw records (pairs of distinct views of one object).

Layout: <root>/<object id>/NNN.png (RGBA, transparent background) and NNN.npy (3x4 world->camera [R | t],
Blender convention). `valid_paths.json` (a JSON list of object ids) is honoured when present and fixes the
order; the first 99% of the objects are the train split, the rest validation, as the original loader.
Each object yields `pairs_per_object` distinct (target, condition) view pairs drawn with a seed, with
T = conditioning.view_from_cameras(target, condition). Optionally the target object is placed in a random
square box over a background picture so that the location and background branches learn from renders too;
otherwise the box is the whole picture (the location canvas is then the condition view, as in zero123).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image

from customnet_jax.conditioning import view_from_cameras
from customnet_jax.data.images import paste_rgba, resize_rgb, resize_rgba, whiten
from customnet_jax.data.records import BadData, SkipReport, raw_record
from customnet_jax.data.synthetic import sample_box

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def object_ids(root: str | pathlib.Path) -> list[str]:
    """Object ids: valid_paths.json's list if present, else the sorted sub-folder names."""
    root = pathlib.Path(root)
    valid = root / "valid_paths.json"
    if valid.is_file():
        ids = read_json_index(valid)
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{valid} must hold a JSON list of object ids (folder names)")
        return ids
    return sorted(d.name for d in root.iterdir() if d.is_dir())


def read_json_index(path: pathlib.Path) -> object:
    """A JSON index file (valid_paths.json, captions); a damaged one is an error that names it."""
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is damaged or unreadable ({error}): fix or regenerate it") from None


def split_ids(ids: list, split: str) -> list:
    """The original 99/1 split: train = ids[:floor(0.99 n)], validation = the rest."""
    cut = math.floor(len(ids) / 100.0 * 99.0)
    if split == "train":
        return ids[:cut]
    if split == "validation":
        return ids[cut:]
    raise ValueError(f"split {split!r}; expected 'train' or 'validation'")


def load_rgba(path: pathlib.Path, size: int) -> np.ndarray:
    """A render as uint8 RGBA (size, size, 4); BadData if unreadable or fully transparent."""
    try:
        with Image.open(path) as image:
            rgba = np.asarray(image.convert("RGBA"))
    except Exception as e:  # noqa: BLE001 - any decoder failure means a bad file
        raise BadData(path, f"unreadable image ({type(e).__name__}: {e})") from e
    if rgba.shape[0] != rgba.shape[1]:
        raise BadData(path, f"render is {rgba.shape[1]}x{rgba.shape[0]}; expected a square picture")
    if not rgba[..., 3].any():
        raise BadData(path, "empty mask: the render is fully transparent")
    return resize_rgba(rgba, size)


def load_camera(path: pathlib.Path) -> np.ndarray:
    """A 3x4 world->camera matrix from NNN.npy; BadData if missing, unreadable, misshapen or not finite."""
    if not path.is_file():
        raise BadData(path, "missing camera file")
    try:
        rt = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise BadData(path, f"unreadable camera file ({type(e).__name__}: {e})") from e
    if rt.shape != (3, 4):
        raise BadData(path, f"camera matrix has shape {rt.shape}; expected (3, 4) world->camera [R | t]")
    if not np.isfinite(rt).all():
        raise BadData(path, "camera matrix has non-finite values")
    return rt.astype(np.float64)


@dataclasses.dataclass
class ObjectViews:
    object_id: str
    names: list[str]  # "000", "001", ...
    rgba: list[np.ndarray]  # uint8 (S, S, 4)
    cameras: list[np.ndarray]  # (3, 4)


def read_object(folder: pathlib.Path, size: int, report: SkipReport) -> ObjectViews | None:
    """The usable views of one object; bad views are reported and left out, None if fewer than two remain."""
    if not folder.is_dir():
        report.add(folder, "missing object folder")
        return None
    views = ObjectViews(folder.name, [], [], [])
    for png in sorted(folder.glob("[0-9][0-9][0-9].png")):
        try:
            rgba, camera = load_rgba(png, size), load_camera(png.with_suffix(".npy"))
        except BadData as e:
            report.add(e.file, e.reason)
            continue
        views.names.append(png.stem)
        views.rgba.append(rgba)
        views.cameras.append(camera)
    if len(views.names) < 2:
        report.add(folder, f"{len(views.names)} usable view(s); a pair needs two")
        return None
    return views


def sample_pairs(n: int, k: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """k distinct ordered (target, condition) pairs of distinct views among n (all of them if k >= n(n-1))."""
    pairs = [(t, c) for t in range(n) for c in range(n) if t != c]
    if k >= len(pairs):
        return pairs
    return [pairs[i] for i in sorted(rng.choice(len(pairs), k, replace=False))]


class _Backgrounds:
    """Background pictures from a folder, loaded (and resized) on first use; bad ones reported once."""

    def __init__(self, folder: str, size: int, report: SkipReport):
        root = pathlib.Path(folder)
        self.files = sorted(p for p in root.iterdir() if p.suffix.lower() in PICTURE_SUFFIXES) if folder else []
        if folder and not self.files:
            raise ValueError(f"background folder {folder} holds no pictures ({', '.join(PICTURE_SUFFIXES)})")
        self.size, self.report = size, report
        self.load = functools.lru_cache(maxsize=256)(self._load)

    def _load(self, index: int) -> np.ndarray | None:
        try:
            with Image.open(self.files[index]) as image:
                return resize_rgb(np.asarray(image.convert("RGB")), self.size)
        except Exception as e:  # noqa: BLE001
            self.report.add(self.files[index], f"unreadable background ({type(e).__name__}: {e})")
            return None


def view_records(root: str | pathlib.Path, split: str, *, size: int, pairs_per_object: int, seed: int,
                 backgrounds: str, place_fraction: float, box_range: tuple[float, float], captions: str,
                 alpha_mode: str, report: SkipReport) -> Iterator[tuple[str, dict]]:
    """(key, raw record) for every sampled view pair of the split's objects."""
    root = pathlib.Path(root)
    caption_of = read_json_index(pathlib.Path(captions)) if captions else {}
    if not isinstance(caption_of, dict):
        raise ValueError(f"{captions} must hold a JSON object {{object id: caption}}")
    bgs = _Backgrounds(backgrounds, size, report)
    for object_id in split_ids(object_ids(root), split):
        views = read_object(root / object_id, size, report)
        if views is None:
            continue
        rng = np.random.default_rng([seed, zlib.crc32(object_id.encode())])
        for t, c in sample_pairs(len(views.names), pairs_per_object, rng):
            target, box = whiten(views.rgba[t], alpha_mode), (0, 0, size, size)
            if bgs.files and rng.random() < place_fraction:
                picture = bgs.load(int(rng.integers(len(bgs.files))))
                box = sample_box(rng, size, box_range)
                if picture is not None:
                    target = paste_rgba(picture, views.rgba[t], box)
                else:
                    box = (0, 0, size, size)
            key = f"{object_id}/{views.names[t]}-{views.names[c]}"
            view = view_from_cameras(views.cameras[t], views.cameras[c])
            yield key, raw_record(key, target, whiten(views.rgba[c], alpha_mode), view,
                                  np.asarray(box, np.float32) / size, str(caption_of.get(object_id, "")))
