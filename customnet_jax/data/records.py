"""What a raw source builder stores per training pair, and the report of what it skipped.

A raw record (the same for the synthetic world, Zero-1-to-3 renders and prepared natural pairs):
  id       text      where it came from ("<object>/<target>-<condition>", "<photo>/<view>", "<seed>")
  target   PNG (S, S, 3) uint8  the target picture
  object   PNG (S, S, 3) uint8  the condition view of the object, centred on white
  view     float32 (4,)  T = [dpolar (rad), sin(dazimuth), cos(dazimuth), dradius], condition -> target
  box      float32 (4,)  (x0, y0, x1, y1) as fractions of the side (x = column); may reach outside
                         [0, 1] (enlarged boxes, docs/conditioning.md: the object is cropped)
  caption  text
The background (the target with the box painted white) and the location canvas are made by the pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from customnet_jax.data.images import png_bytes

REPORT_FILE = "skipped.json"


def raw_features(size: int) -> tfds.features.FeaturesDict:
    image = tfds.features.Image(shape=(size, size, 3), encoding_format="png")
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(),
        "target": image,
        "object": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
        "view": tfds.features.Tensor(shape=(4,), dtype=np.float32),
        "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
        "caption": tfds.features.Text(),
    })


def raw_record(id_: str, target: np.ndarray, object_image: np.ndarray, view, box, caption: str) -> dict:
    """A raw record from uint8 (S, S, 3) pictures (encoded to PNG here: tfds needs TensorFlow to encode arrays)."""
    if target.shape != object_image.shape or target.dtype != np.uint8 or object_image.dtype != np.uint8:
        raise ValueError(f"{id_}: target {target.shape} {target.dtype} and object {object_image.shape} "
                         f"{object_image.dtype} must be uint8 pictures of one size")
    return {"id": id_, "target": png_bytes(target), "object": png_bytes(object_image),
            "view": np.asarray(view, np.float32).reshape(4), "box": np.asarray(box, np.float32).reshape(4),
            "caption": caption}


class BadData(Exception):
    """A source item that cannot be used: `file` names it, the message says why."""

    def __init__(self, file: str | pathlib.Path, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = str(file), reason


@dataclasses.dataclass
class SkipReport:
    """Files skipped while building, with the reason for each; a build never stops on one bad item."""

    items: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def files(self) -> list[str]:
        return [f for f, _ in self.items]

    def add(self, file: str | pathlib.Path, reason: str) -> None:
        self.items.append((str(file), reason))
        logging.warning("skipped %s: %s", file, reason)

    def summary(self, limit: int = 10) -> str:
        if not self.items:
            return "nothing skipped"
        shown = "; ".join(f"{f} ({r})" for f, r in self.items[:limit])
        more = f"; ... {self.count - limit} more" if self.count > limit else ""
        return f"skipped {self.count} item(s): {shown}{more}"

    def save(self, folder: str | pathlib.Path) -> None:
        data = {"count": self.count, "items": [{"file": f, "reason": r} for f, r in self.items]}
        (pathlib.Path(folder) / REPORT_FILE).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, folder: str | pathlib.Path) -> SkipReport:
        path = pathlib.Path(folder) / REPORT_FILE
        if not path.is_file():
            return cls()
        return cls([(d["file"], d["reason"]) for d in json.loads(path.read_text())["items"]])
