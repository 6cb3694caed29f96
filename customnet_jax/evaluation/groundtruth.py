"""The ground-truth measures (measures.py) for the sets of a generated folder, where ground truth exists.

- A known background (settings `background_file`: the composition model's input): location IoU of the object
  found against it and PSNR outside the box. The reference is the background as the pipeline saw it (resized
  to the model's resolution, bilinear).
- A synthetic object (settings `synthetic`: {"world": World fields, "scene": index}, as the protocol runner
  writes for `--synthetic` objects): the ground truth render of every requested view, placed in the box the same
  way the pipeline places the object picture (the whole render resized into the box); viewpoint agreement over
  the render's object pixels, against the other views' pictures of the same seed as the "wrong view".
- Multi-view sets (two or more views): identity consistency of the object across the views of each sample:
  its pixels are the foreground inside the box when the background is known, else the whole box.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import numpy as np
from PIL import Image

from customnet_jax.evaluation import measures
from customnet_jax.evaluation.metrics import load_uint8, resolve


def known_background(settings: dict, base: pathlib.Path) -> np.ndarray | None:
    """The background picture of a composition sample at the model's resolution, uint8, or None."""
    path = resolve(settings.get("background_file"), base)
    if path is None:
        return None
    from customnet_jax import conditioning

    size = int(settings["resolution"])
    image = conditioning.resize(conditioning.load_rgb(path), size, "bilinear")
    return conditioning.to_uint8(image)


def synthetic_scene(info: dict) -> Any:
    """The data.synthetic Scene that a protocol's synthetic object came from."""
    from customnet_jax.data import synthetic

    world = {k: tuple(v) if isinstance(v, list) else v for k, v in info["world"].items()}
    return synthetic.scene(int(info["scene"]), synthetic.World(**world))


def synthetic_truth(scene: Any, view: Any, bbox: Any, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth for one requested (polar, azimuth, radius) view: the render at the moved camera, resized
    into the box over `background` -> (uint8 picture, bool object mask)."""
    from customnet_jax.data.synthetic import over

    x0, y0, x1, y1 = (int(v) for v in bbox)
    camera = scene.condition_camera.moved(float(view[0]), float(view[1]), float(view[2]))
    rgba = scene.render_object(camera, max(x1 - x0, y1 - y0))
    if rgba.shape[:2] != (y1 - y0, x1 - x0):
        rgba = np.asarray(Image.fromarray(rgba).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR))
    picture = background.copy()
    picture[y0:y1, x0:x1] = over(rgba, picture[y0:y1, x0:x1])
    mask = np.zeros(picture.shape[:2], bool)
    mask[y0:y1, x0:x1] = rgba[..., 3] > 127
    return picture, mask


def measure_set(settings_path: pathlib.Path, *, threshold: float = 0.1, tolerance: float = 0.15) -> dict:
    """(view, sample) -> {measure: value} for one settings file; empty when no ground truth applies."""
    settings = json.loads(settings_path.read_text())
    base, name = settings_path.parent, settings_path.stem
    views, samples = settings["views"], int(settings.get("num_samples", 1))
    bbox = [int(v) for v in settings["bbox"]]
    pictures = [[load_uint8(base / f"{name}_view{v}_sample{n}.png") for n in range(samples)]
                for v in range(len(views))]
    size = pictures[0][0].shape[0]
    background = known_background(settings, base)
    out: dict[tuple[int, int], dict[str, float]] = {(v, n): {} for v in range(len(views)) for n in range(samples)}
    in_box = measures.box_mask(pictures[0][0].shape, bbox)
    masks = [[in_box for _ in range(samples)] for _ in views]
    if background is not None:
        for v in range(len(views)):
            for n in range(samples):
                mask = measures.foreground_mask(pictures[v][n], background, threshold)
                masks[v][n] = mask & in_box
                found = measures.mask_box(mask)
                out[v, n]["location_iou"] = 0.0 if found is None else measures.box_iou(found, bbox)
                out[v, n]["background_psnr"] = measures.background_psnr(pictures[v][n], background, bbox)
    if settings.get("synthetic"):
        scene = synthetic_scene(settings["synthetic"])
        truth_background = background if background is not None else np.full((size, size, 3), 255, np.uint8)
        truths = [synthetic_truth(scene, view, bbox, truth_background) for view in views]
        for n in range(samples):
            agreement, wrong, margin = measures.viewpoint_margins([pictures[v][n] for v in range(len(views))],
                                                                  [t[0] for t in truths], [t[1] for t in truths],
                                                                  tolerance)
            for v in range(len(views)):
                out[v, n].update(view_agreement=float(agreement[v]), view_wrong=float(wrong[v]),
                                 view_margin=float(margin[v]))
    if len(views) > 1:
        for n in range(samples):
            identity = measures.identity_consistency([pictures[v][n] for v in range(len(views))],
                                                     [masks[v][n] for v in range(len(views))])
            for v in range(len(views)):
                out[v, n]["identity_colour"] = identity["colour"]
                if background is not None:
                    out[v, n]["identity_area"] = identity["area_ratio"]
    return out


def add_measures(rows: list[dict], folder: str | pathlib.Path, **kwargs: Any) -> list[dict]:
    """Add the ground-truth measures to score() rows (matched by image path) -> the same rows, updated."""
    root = pathlib.Path(folder)
    cache: dict[pathlib.Path, dict] = {}
    for row in rows:
        image = root / row["image"]
        name = image.name.rsplit("_view", 1)[0]
        settings_path = image.parent / f"{name}.json"
        if settings_path not in cache:
            cache[settings_path] = measure_set(settings_path, **kwargs)
        row.update(cache[settings_path].get((int(row["view"]), int(row["sample"])), {}))
    return rows


def world_info(world: Any, scene_index: int) -> dict:
    """The settings entry that lets measure_set rebuild a synthetic scene."""
    return {"world": dataclasses.asdict(world), "scene": int(scene_index)}
