"""What the app does, without the page: load models, cut out the object, preview the location canvas, generate.

Every picture comes from the same `Pipeline` as `sample.py` (no second sampling path): the same settings and seed
give the same pictures. Bad input raises ValueError / OSError with the library's one-line message; the page shows
it and keeps running.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any

import jax
import numpy as np

from customnet_jax import matting
from customnet_jax.conditioning.boxes import parse_bbox
from customnet_jax.conditioning.canvas import location_canvas
from customnet_jax.conditioning.images import to_float, to_uint8
from customnet_jax.diffusion import samplers
from customnet_jax.sampling.builtin_model import DEMO_FOLDER
from customnet_jax.sampling.outputs import contact_sheet
from customnet_jax.sampling.pipeline import Pipeline
from customnet_jax.world.held_out import default_scene

PRESETS = {"front": (0.0, 0.0, 0.0), "left": (0.0, -90.0, 0.0), "right": (0.0, 90.0, 0.0),
           "back": (0.0, 180.0, 0.0), "above": (-45.0, 0.0, 0.0)}  # (polar, azimuth, radius); polar < 0: camera up
POLAR_RANGE, AZIMUTH_RANGE, RADIUS_RANGE = (-90.0, 90.0), (-180.0, 180.0), (-0.5, 0.5)


@functools.lru_cache(maxsize=2)
def load_pipeline(folder: str) -> Any:
    """A Pipeline for a model folder, built once per folder (its compiled programs are kept with it)."""
    path = pathlib.Path(folder)
    if not (path / "config.json").is_file():
        raise ValueError(f"model folder {folder!r} has no config.json: give a folder written by convert_weights.py "
                         f"or train.py (the built-in demo model: {DEMO_FOLDER})")
    attention = "per_head" if jax.default_backend() == "cpu" else None  # sample.py's --attention auto
    return Pipeline.from_folder(path, attention=attention)


def model_kind(folder: str) -> str:
    """'zero123' (object and view only), 'composition' (takes a background) or 'prompt'."""
    config = load_pipeline(folder).config
    return "zero123" if config.is_zero123 else "composition" if config.has_background else "prompt"


@functools.cache
def example(resolution: int) -> Any:
    """The built-in example scene (object, box, caption, background) at the model's resolution."""
    return default_scene(resolution)


def example_object(resolution: int) -> np.ndarray:
    """The built-in example's object picture, uint8 RGB on white."""
    return np.asarray(example(resolution).object)


def example_box(resolution: int) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in example(resolution).box_pixels)


@dataclasses.dataclass(frozen=True)
class Request:
    """Everything one click on Generate asks for (the page's controls)."""

    folder: str
    picture: np.ndarray | None  # uint8 RGB or RGBA; None: the built-in example
    matting: str = "auto"
    segmenter: str = ""  # a SAM folder for the sam / auto matting
    bbox: tuple[float, ...] | None = None  # pixels of the model's canvas; None for Zero-1-to-3
    polar: float = 0.0
    azimuth: float = 0.0
    radius: float = 0.0
    prompt: str = ""
    background: np.ndarray | None = None  # uint8 RGB, composition models
    seed: int = 0
    steps: int = 25
    guidance: float = 3.0
    sampler: str = samplers.DEFAULT  # a name of customnet_jax.diffusion.samplers (its default options)
    sheet_views: int = 0  # > 1: an azimuth sweep -90..90 with this many views, one seed

    def views(self) -> list[tuple[float, float, float]]:
        if self.sheet_views > 1:
            return [(self.polar, float(a), self.radius) for a in np.linspace(-90, 90, self.sheet_views)]
        return [(self.polar, self.azimuth, self.radius)]


def cut_out(request: Request) -> tuple[Any, Any, dict | None]:
    """(object picture for the Pipeline, its mask or None, the matting record or None for the built-in)."""
    if request.picture is None:
        resolution = load_pipeline(request.folder).config.resolution
        return example_object(resolution), None, None
    cutout = matting.cut_out(np.asarray(request.picture, np.uint8), request.matting,
                             segmenter=request.segmenter or None)
    return cutout.rgb, cutout.mask, cutout.record()


def preview(request: Request) -> np.ndarray:
    """uint8 location canvas the model will see (the prepared object in the box on white)."""
    pipeline = load_pipeline(request.folder)
    size = pipeline.config.resolution
    picture, mask, _ = cut_out(request)
    obj = pipeline.prepare_object(picture, mask)
    box = (0, 0, size, size) if request.bbox is None else request.bbox
    return to_uint8(location_canvas(obj, box, size))


def check(request: Request) -> None:
    """Refuse what the model cannot take, before any sampling (the Pipeline checks the rest)."""
    config = load_pipeline(request.folder).config
    if request.bbox is not None:
        parse_bbox(request.bbox, config.resolution)
    if request.background is not None and not config.has_background:
        raise ValueError("this model has no background channels: a background picture needs a composition "
                         "model; give a prompt instead")


def generate(request: Request, progress: bool = True) -> dict[str, Any]:
    """Sample: {'images': uint8 (V, N, R, R, 3), 'sheet': uint8 contact sheet, 'settings': dict, 'object': uint8}."""
    check(request)
    pipeline = load_pipeline(request.folder)
    picture, mask, record = cut_out(request)
    config = pipeline.config
    background = request.background
    if background is None and config.has_background and request.picture is None:
        background = example(config.resolution).background  # the built-in example brings its background
    background = None if background is None else to_float(np.asarray(background, np.uint8)[..., :3])
    result = pipeline(picture, mask=mask, bbox=None if config.is_zero123 else request.bbox, views=request.views(),
                      prompt="" if config.is_zero123 else request.prompt, background=background, seed=request.seed,
                      steps=request.steps, guidance=request.guidance, sampler=request.sampler,
                      progress=progress)
    settings = dict(result.settings, object="uploaded" if request.picture is not None else "built-in",
                    matting=record, model_folder=request.folder)
    return {"images": result.images, "sheet": contact_sheet(result), "settings": settings,
            "object": to_uint8(result.object_image)}


def settings_file(settings: dict, folder: str | pathlib.Path) -> pathlib.Path:
    """The settings as a JSON file to download (written atomically)."""
    path = pathlib.Path(folder) / "customnet_settings.json"
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(settings, indent=2, default=str))
    partial.replace(path)
    return path
