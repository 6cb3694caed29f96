"""Where SAM should look: a given box, given point(s), a zero-shot detector's box, or the photo's centre.

Precedence per photo: a box from the boxes JSON, else point(s) from the points JSON, else the detector's best
box for the queries (the photo's subject from the subjects JSON if known, else the global query list), else the
centre point if allowed; with none of these the photo is skipped ("no prompt").

Coordinates are pixels of the upright photo as given (before any --max-side shrink, which is applied here):
boxes [x0, y0, x1, y1], points [x, y] or [[x, y], ...] (x = column).

Detector: a transformers zero-shot detector saved in a local folder and loaded with
`AutoModelForZeroShotObjectDetection` + `AutoProcessor`: OWL-ViT and OWLv2 (text queries such as "car").
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from customnet_jax.local_models import load_pretrained, to_device
from customnet_jax.pairs.sources import Annotations, ImageItem, SkipImage
from customnet_jax.segmentation import Prompt


@dataclasses.dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in photo pixels, inside the photo, positive area
    score: float
    label: str


def clip_xyxy(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float] | None:
    """The box clipped to the photo, or None if less than a pixel of it is left in either direction."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
    y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    return (x0, y0, x1, y1) if x1 - x0 >= 1 and y1 - y0 >= 1 else None


class ZeroShotDetector:
    """The highest-scoring box for any of the text queries (OWL-ViT / OWLv2 from a local folder)."""

    def __init__(self, path: str | pathlib.Path, threshold: float = 0.1, device: str = "cpu",
                 dtype: str = "float32"):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor  # heavy: detector stage only

        self.model, self.processor = load_pretrained(AutoModelForZeroShotObjectDetection, AutoProcessor, path,
                                                     "detector", device, dtype)
        self.threshold = threshold
        self.path = str(path)
        # OWLv2 pads the photo to a square before resizing: its boxes are relative to that square
        self._padded_square = self.model.config.model_type == "owlv2"

    def __call__(self, photo: np.ndarray, queries: Sequence[str]) -> Detection | None:
        import torch  # optional dependency: the detector stage only

        queries = [q for q in queries if q.strip()]
        if not queries:
            return None
        height, width = photo.shape[:2]
        batch = self.processor(images=Image.fromarray(photo), text=[list(queries)], return_tensors="pt")
        with torch.no_grad():
            outputs = self.model(**to_device(batch, self.model))
        side = max(height, width)
        size = (side, side) if self._padded_square else (height, width)
        result = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.threshold, target_sizes=[size], text_labels=[list(queries)])[0]
        best = None
        for score, label, box in zip(result["scores"].tolist(), result["labels"].tolist(),
                                     result["boxes"].tolist(), strict=True):
            clipped = clip_xyxy(box, width, height)
            if clipped is not None and (best is None or score > best.score):
                best = Detection(clipped, float(score), queries[int(label)])
        return best


class PromptSource:
    """The prompt stage: given boxes / points, a detector, or the centre (see the module docstring)."""

    def __init__(self, boxes: Annotations | None = None, points: Annotations | None = None,
                 detector: ZeroShotDetector | None = None, queries: Sequence[str] = (),
                 subjects: Annotations | None = None, center: bool = False):
        self.boxes, self.points, self.detector = boxes, points, detector
        self.queries, self.subjects, self.center = list(queries), subjects, center

    def __call__(self, item: ImageItem, photo: np.ndarray, scale: float = 1.0) -> Prompt:
        """`scale` = photo size / the size the annotations refer to (the --max-side shrink)."""
        height, width = photo.shape[:2]
        box = self.boxes.get(item) if self.boxes is not None else None
        if box is not None:
            try:
                values = [float(v) * scale for v in box]
                if len(values) != 4:
                    raise ValueError
            except (TypeError, ValueError):
                raise SkipImage("prompt", f"given box {box!r} is not [x0, y0, x1, y1]") from None
            clipped = clip_xyxy(values, width, height)
            if clipped is None or values[2] <= values[0] or values[3] <= values[1]:
                raise SkipImage("prompt", f"given box {box} is empty or outside the {width}x{height} photo")
            return Prompt("box", box=clipped)
        points = self.points.get(item) if self.points is not None else None
        if points is not None:
            try:
                array = np.asarray(points, np.float64).reshape(-1, 2) * scale
                if array.size == 0 or not np.isfinite(array).all():
                    raise ValueError
            except (TypeError, ValueError):
                raise SkipImage("prompt", f"given point(s) {points!r} are not [x, y] or [[x, y], ...]") from None
            if (array < 0).any() or (array[:, 0] > width).any() or (array[:, 1] > height).any():
                raise SkipImage("prompt", f"given point(s) {points} lie outside the {width}x{height} photo")
            return Prompt("point", points=tuple((float(x), float(y)) for x, y in array))
        if self.detector is not None:
            subject = self.subjects.get(item) if self.subjects is not None else None
            queries = [str(subject)] if subject else self.queries
            if queries:
                found = self.detector(photo, queries)
                if found is None:
                    raise SkipImage("prompt", f"the detector found none of {queries} above its threshold")
                return Prompt("detector", box=found.box, label=found.label, score=found.score)
        if self.center:
            return Prompt("center", points=((width / 2, height / 2),))
        raise SkipImage("prompt", "no prompt: no given box or point, no detection, and --center-point is off")
