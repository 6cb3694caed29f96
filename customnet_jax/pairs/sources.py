"""Where the photos come from: a folder of pictures or a tfds image dataset, as a sorted list of lazy items.

Every process lists the same items in the same order (sorted paths / dataset indices), so `shard(items, i, n)`
(item k goes to process k % n) gives disjoint slices that together cover everything. Items load lazily: a
process only decodes its own photos. Ids name the output folders: the path relative to the images folder
without its extension, '/' -> '__', characters other than [A-Za-z0-9._-] -> '_', no leading dot (the output
folder must not be hidden); a second file with the same id gets its extension appended.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class SkipImage(Exception):
    """This photo cannot give a pair (unreadable, no prompt, rejected by a filter, ...): skip and report it."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


@dataclasses.dataclass(frozen=True)
class ImageItem:
    """One photo: its id (output folder name), where it came from, the keys annotations may use, and a loader."""

    index: int  # position in the full sorted listing: the item goes to process index % process_count
    id: str
    source: str  # a path or "tfds:<dataset>/<split>[<index>]", for the report
    keys: tuple[str, ...]  # names a JSON annotation may give it (relative path, file name, id)
    load: Callable[[], Image.Image]


def safe_id(text: str) -> str:
    """A folder-name-safe id: '/' -> '__', other unsafe characters -> '_', no leading dots."""
    text = re.sub(r"[^A-Za-z0-9._-]", "_", text.replace("/", "__").replace("\\", "__"))
    return text.lstrip(".") or "_"


def _open_image(path: pathlib.Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def folder_items(folder: str | pathlib.Path) -> list[ImageItem]:
    """The pictures under `folder` (recursive, by extension), sorted by relative path."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"images folder {folder} does not exist")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    items, taken = [], set()
    for path in paths:
        relative = path.relative_to(folder).as_posix()
        image_id = safe_id(relative[: -len(path.suffix)])
        if image_id in taken:
            image_id = safe_id(f"{image_id}_{path.suffix.lstrip('.')}")
        while image_id in taken:
            image_id += "_"
        taken.add(image_id)
        items.append(ImageItem(len(items), image_id, str(path), (relative, path.name, image_id),
                               lambda path=path: _open_image(path)))
    return items


def tfds_items(dataset: str, split: str = "train", data_dir: str | None = None, image_key: str = "image",
               id_key: str | None = None, process_index: int = 0, process_count: int = 1) -> list[ImageItem]:
    """This process's images of a tfds dataset, read through its array_record data source (no TensorFlow).

    `dataset` is a prepared dataset folder (holding dataset_info.json) or a registered name found in data_dir;
    nothing is downloaded. Ids are the example index (8 digits), or the string feature `id_key` (read only for
    this process's examples; it must be unique).
    """
    import tensorflow_datasets as tfds  # heavy (seconds to import): only for tfds sources

    _check_shard(process_index, process_count)
    path = pathlib.Path(dataset)
    if (path / "dataset_info.json").is_file():
        source = tfds.builder_from_directory(str(path)).as_data_source(split)
    else:
        source = tfds.data_source(dataset, split=split, data_dir=data_dir, download=False)

    def load(index: int) -> Image.Image:
        example = source[index]
        if image_key not in example:
            raise KeyError(f"the example has no feature {image_key!r} (features: {sorted(example)})")
        array = np.asarray(example[image_key])
        return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)

    items = []
    for index in range(process_index, len(source), process_count):
        image_id = f"{index:08d}"
        if id_key is not None:
            value = source[index][id_key]
            image_id = safe_id(value.decode() if isinstance(value, bytes) else str(value))
        items.append(ImageItem(index, image_id, f"tfds:{dataset}/{split}[{index}]", (image_id, str(index)),
                               lambda i=index: load(i)))
    return items


def _check_shard(process_index: int, process_count: int) -> None:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process index {process_index} must be in [0, process count {process_count})")


def shard(items: Sequence[ImageItem], process_index: int, process_count: int) -> list[ImageItem]:
    """This process's items: the item at position k of the full listing goes to process k % process_count."""
    _check_shard(process_index, process_count)
    return [item for item in items if item.index % process_count == process_index]


def load_photo(item: ImageItem, max_side: int | None = None) -> tuple[np.ndarray, float]:
    """(photo, scale): the photo upright (EXIF orientation applied) as uint8 RGB (H, W, 3), transparency over
    white, shrunk so its longer side is at most max_side; scale = its width / the upright original's width (what
    annotation coordinates are multiplied by). SkipImage if it cannot be decoded or is too small."""
    try:
        image = ImageOps.exif_transpose(item.load())
        if "A" in image.getbands() or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        image = image.convert("RGB")
    except Exception as e:  # noqa: BLE001 - whatever the decoder says, the photo is unusable
        raise SkipImage("load", f"unreadable image ({type(e).__name__}: {e})") from e
    if min(image.size) < 8:
        raise SkipImage("load", f"image is {image.size[0]}x{image.size[1]} px; at least 8x8 needed")
    width = image.size[0]
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))),
                             Image.Resampling.LANCZOS)
    return np.asarray(image, np.uint8), image.size[0] / width


class Annotations:
    """A JSON object {key: value} for per-photo inputs (boxes, points, captions, subjects); keys may be the
    relative path, the file name or the id of a photo."""

    def __init__(self, path: str | pathlib.Path | None = None, data: dict[str, Any] | None = None):
        if path is not None:
            data = json.loads(pathlib.Path(path).read_text())
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected a JSON object {{image: value}}")
        self.path, self.data = path, dict(data or {})

    def get(self, item: ImageItem) -> Any:
        for key in item.keys:
            if key in self.data:
                return self.data[key]
        return None

    def __len__(self) -> int:
        return len(self.data)
