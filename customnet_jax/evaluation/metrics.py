"""The paper's metrics (docs/model.md §11) over a folder of generated pictures, per picture and aggregated.

- DINO-I: cosine of the DINO embeddings of the generated object and the reference object image.
- CLIP-I: cosine of the CLIP image embeddings of the same two pictures.
- CLIP-T: cosine of the CLIP image embedding of the generated picture (the whole picture: the background is what
  the text describes) and the CLIP text embedding of the background text only (`background_text` in the
  settings, else the prompt). Plain cosine, the logit scale NOT applied (the paper's table is on this scale,
  ~0.2258; CLIPScore-style numbers are 100x or 2.5x it).
All cosines are computed in float64 from the raw (unnormalised) embeddings.

"Generated object": with `crop_to_box` (default) the generated picture is cropped to the requested box before
the DINO / CLIP image embedding, so the identity metrics compare the object with the reference rather than the
whole scene; without it the whole picture is embedded. The reference is the object picture as given (RGBA
composited over white), not cropped.

The folder is what `sample.py` / the protocol runner writes: `{name}.json` settings + `{name}_view{v}_sample{n}
.png`, any depth. The reference of a settings file: `--references DIR` / `<object_id>.*` if given, else the
settings' `object_file` (protocol) or `object` (sample.py), else `{name}_object.png` (the prepared object).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

METRICS = ("dino_i", "clip_i", "clip_t")
MEASURES = ("location_iou", "background_psnr", "view_agreement", "view_wrong", "view_margin", "identity_colour",
            "identity_area")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Sample:
    """One generated picture to score."""

    image: pathlib.Path
    reference: pathlib.Path
    text: str  # the background text (CLIP-T)
    bbox: tuple[int, int, int, int] | None
    key: dict[str, Any] = field(default_factory=dict)  # identifying columns of its table row


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of (B, D) and (B, D) (or (D,)) -> (B,), float64."""
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def load_uint8(path: str | pathlib.Path) -> np.ndarray:
    """A picture as uint8 (H, W, 3); transparency composited over white (as the pipeline reads objects)."""
    with Image.open(path) as image:
        image.load()
        if "A" in image.getbands() or "transparency" in image.info:
            rgba = np.asarray(image.convert("RGBA"), np.float32)
            alpha = rgba[..., 3:] / 255
            return np.rint(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
        return np.asarray(image.convert("RGB"))


def crop(image: np.ndarray, bbox: Sequence[int] | None) -> np.ndarray:
    """The box (x0, y0, x1, y1) of the picture (the whole picture when bbox is None)."""
    if bbox is None:
        return image
    x0, y0, x1, y1 = (int(v) for v in bbox)
    return image[y0:y1, x0:x1]


def find_image(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
    """`folder/stem.<png|jpg|...>` if one exists."""
    for suffix in IMAGE_SUFFIXES:
        if (folder / (stem + suffix)).is_file():
            return folder / (stem + suffix)
    return None


def settings_files(folder: str | pathlib.Path) -> list[pathlib.Path]:
    """Every sampling settings JSON under `folder` (files with "views", "bbox" and "files" keys), sorted; hidden
    folders are skipped."""
    root, found = pathlib.Path(folder), []
    for path in sorted(root.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # a write_results staging folder left by a killed run
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and {"views", "bbox", "files"} <= data.keys():
            found.append(path)
    return found


def resolve(path: str | None, base: pathlib.Path) -> pathlib.Path | None:
    """An existing file named by `path`, tried as given and relative to `base`."""
    if not path:
        return None
    for candidate in (pathlib.Path(path), base / path):
        if candidate.is_file():
            return pathlib.Path(os.path.normpath(candidate))
    return None


def reference_for(settings: dict, settings_path: pathlib.Path, references: pathlib.Path | None) -> pathlib.Path:
    """The reference object picture of one settings file (see the module docstring for the order)."""
    base, name = settings_path.parent, settings_path.stem
    object_id = settings.get("object_id") or (pathlib.Path(str(settings.get("object"))).stem
                                              if settings.get("object") else None)
    if references is not None:
        found = find_image(references, object_id) if object_id else None
        if found is None:
            raise FileNotFoundError(f"no reference picture {object_id}.png/.jpg in {references} for {settings_path}")
        return found
    for candidate in (resolve(settings.get("object_file"), base), resolve(settings.get("object"), base),
                      base / f"{name}_object.png"):
        if candidate is not None and candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no reference object picture for {settings_path}: give --references DIR")


def collect_samples(folder: str | pathlib.Path, references: str | pathlib.Path | None = None) -> list[Sample]:
    """One `Sample` per generated picture under `folder`, with its reference, text, box and key columns."""
    root = pathlib.Path(folder)
    references = None if references is None else pathlib.Path(references)
    samples = []
    for path in settings_files(root):
        settings = json.loads(path.read_text())
        name, base = path.stem, path.parent
        reference = reference_for(settings, path, references)
        text = settings.get("background_text", settings.get("prompt", "")) or ""
        bbox = tuple(int(v) for v in settings["bbox"]) if settings.get("bbox") else None
        object_id = settings.get("object_id") or reference.stem
        for v, view in enumerate(settings["views"]):
            for n in range(int(settings.get("num_samples", 1))):
                image = base / f"{name}_view{v}_sample{n}.png"
                if not image.is_file():
                    raise FileNotFoundError(f"{image} is missing ({path} lists {len(settings['views'])} views x "
                                            f"{settings.get('num_samples', 1)} samples); the set is incomplete")
                key = {"object": object_id, "prompt_index": settings.get("prompt_index", ""),
                       "background_text": text, "seed": settings.get("seed", ""), "view": v,
                       "polar": view[0], "azimuth": view[1], "radius": view[2], "sample": n,
                       "image": str(image.relative_to(root)), "reference": str(reference)}
                samples.append(Sample(image, reference, text, bbox, key))
    return samples


def score(samples: Sequence[Sample], dino: Any = None, clip: Any = None, *, crop_to_box: bool = True,
          chunk: int = 256, progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Per-picture rows: the sample's key columns + dino_i, clip_i (object vs reference), clip_t (picture vs
    background text). A metric whose embedder is None is left out; CLIP-T of an empty text is NaN."""
    references = sorted({s.reference for s in samples})
    reference_images = [load_uint8(p) for p in references]
    ref_index = {p: i for i, p in enumerate(references)}
    ref_dino = dino.embed_images(reference_images) if dino is not None and references else None
    ref_clip = clip.embed_images(reference_images) if clip is not None and references else None
    texts = sorted({s.text for s in samples if s.text})
    text_index = {t: i for i, t in enumerate(texts)}
    text_clip = clip.embed_texts(texts) if clip is not None and texts else None

    rows = []
    for start in range(0, len(samples), chunk):
        part = samples[start : start + chunk]
        pictures = [load_uint8(s.image) for s in part]
        objects = [crop(p, s.bbox) if crop_to_box else p for p, s in zip(pictures, part, strict=True)]
        refs = [ref_index[s.reference] for s in part]
        columns: dict[str, np.ndarray] = {}
        if dino is not None:
            columns["dino_i"] = cosine(dino.embed_images(objects), ref_dino[refs])
        if clip is not None:
            object_embeddings = clip.embed_images(objects)
            columns["clip_i"] = cosine(object_embeddings, ref_clip[refs])
            image_embeddings = clip.embed_images(pictures) if crop_to_box else object_embeddings
            clip_t = np.full(len(part), np.nan)
            have = [i for i, s in enumerate(part) if s.text]
            if have:
                clip_t[have] = cosine(image_embeddings[have], text_clip[[text_index[part[i].text] for i in have]])
            columns["clip_t"] = clip_t
        for i, sample in enumerate(part):
            rows.append({**sample.key, **{k: float(v[i]) for k, v in columns.items()}})
        if progress is not None:
            progress(min(start + chunk, len(samples)), len(samples))
    return rows


def _finite(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def metric_columns(rows: Sequence[dict]) -> list[str]:
    """The metric / measure columns present in the rows, in table order."""
    present = {k for row in rows for k in row}
    return [m for m in (*METRICS, *MEASURES) if m in present]


def aggregate(rows: Sequence[dict], by: Sequence[str] = (), metrics: Sequence[str] | None = None) -> list[dict]:
    """Group the rows by the `by` columns (one overall group when empty) -> one dict per group:
    the group's values, `count` (rows), and for each metric `{m}_mean`, `{m}_std` (population std, ddof 0) and
    `{m}_n` (rows with a finite value; NaN / missing values are left out)."""
    metrics = list(metrics) if metrics is not None else metric_columns(rows)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in by), []).append(row)
    out = []
    for values, members in groups.items():
        entry: dict[str, Any] = dict(zip(by, values, strict=True))
        entry["count"] = len(members)
        for m in metrics:
            finite = _finite(r.get(m) for r in members)
            entry[f"{m}_mean"] = float(np.mean(finite)) if finite else float("nan")
            entry[f"{m}_std"] = float(np.std(finite)) if finite else float("nan")
            entry[f"{m}_n"] = len(finite)
        out.append(entry)
    return out
