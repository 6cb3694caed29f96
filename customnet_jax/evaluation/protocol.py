"""The paper's evaluation protocol (docs/model.md §11) as a resumable run: objects x prompts x seeds x views, then
metrics.

Layout of a run folder:

    <out>/protocol.json                           the grid (objects, prompts, seeds, views, sampler settings)
    <out>/objects/                                synthetic objects' reference pictures and backgrounds
    <out>/<object>/<prompt index>/seed<k>/sample.json + sample_view{v}_sample{n}.png + sheet + object

One pipeline call per (object, prompt, seed) makes every view at once (the same seed gives every view the same
starting noise). A cell whose settings JSON and pictures all exist is skipped, so an interrupted run continues
where it stopped; `protocol.json` must match the grid of the resumed run (else it refuses, naming what
differs). `write_results` moves files in place only when a set is complete.

The paper's 26 prompts are not public verbatim: `DEFAULT_PROMPTS` are 26 background prompts in the style of
its examples ("on the beach", "in the snow", ...); give your own with a text file (one per line). The text the
model gets is `template.format(name=<object name>, background=<prompt>)` (default "{name} {background}"; the
name comes from the objects folder's objects.json, or the synthetic object's description, else empty); CLIP-T
uses only the background prompt.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from customnet_jax.evaluation.metrics import IMAGE_SUFFIXES

DEFAULT_PROMPTS: tuple[str, ...] = (
    "on the beach", "in the snow", "on the grass", "in the jungle", "on a wooden table", "in the desert",
    "on a city street", "in a kitchen", "on the moon", "in front of the Eiffel Tower", "on top of a mountain",
    "in a flower garden", "on a marble floor", "in the forest", "on a rock by the sea", "in a living room",
    "on a dirt road", "in the rain", "under a starry night sky", "on a red carpet", "in front of a brick wall",
    "on a bookshelf", "by a lake at sunset", "among autumn leaves", "on a cobblestone street", "underwater",
)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_BBOX = (0.15, 0.15, 0.85, 0.85)
SAMPLE_NAME = "sample"


@dataclasses.dataclass(frozen=True)
class ObjectEntry:
    """One evaluation object: id (folder name), reference picture, description, optional box / background."""

    id: str
    file: str
    name: str = ""
    bbox: tuple[float, ...] | None = None
    background: str | None = None  # a composition model's background picture for this object
    synthetic: dict | None = None  # groundtruth.world_info(...) for synthetic objects


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The grid and the sampler settings; saved as protocol.json."""

    objects: tuple[ObjectEntry, ...]
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    views: tuple[tuple[float, float, float], ...] = ((0.0, 0.0, 0.0),)
    bbox: tuple[float, ...] = DEFAULT_BBOX  # for objects without their own box
    template: str = "{name} {background}"
    background: str | None = None  # a composition model's background for objects without their own
    num_samples: int = 1
    steps: int = 50
    guidance: float = 3.0
    sampler: str = "ddim"  # diffusion/samplers
    sampler_options: dict = dataclasses.field(default_factory=dict)  # missing: the sampler's default
    model: str = ""

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> Protocol:
        def tup(v: Any) -> Any:
            return tuple(tup(x) for x in v) if isinstance(v, list) else v

        objects = tuple(ObjectEntry(**{k: (tup(v) if k == "bbox" else v) for k, v in o.items()})
                        for o in data["objects"])
        return cls(objects=objects, **{k: tup(v) for k, v in data.items() if k != "objects"})

    def prompt_text(self, obj: ObjectEntry, prompt: str) -> str:
        """The text the model gets for one object and background prompt (spaces collapsed)."""
        return " ".join(self.template.format(name=obj.name, background=prompt).split())

    @property
    def num_cells(self) -> int:
        return len(self.objects) * len(self.prompts) * len(self.seeds)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One pipeline call: an object, a prompt index and a seed."""

    object: ObjectEntry
    prompt_index: int
    seed: int

    def folder(self, out: pathlib.Path) -> pathlib.Path:
        return out / self.object.id / f"{self.prompt_index:02d}" / f"seed{self.seed}"


def read_prompts(path: str | pathlib.Path) -> tuple[str, ...]:
    """Background prompts from a text file: one per line; blank lines and lines starting with # are skipped."""
    lines = [line.strip() for line in pathlib.Path(path).read_text().splitlines()]
    prompts = tuple(line for line in lines if line and not line.startswith("#"))
    if not prompts:
        raise ValueError(f"{path} holds no prompts (one per line)")
    return prompts


def objects_from_folder(folder: str | pathlib.Path, limit: int | None = None) -> tuple[ObjectEntry, ...]:
    """Every picture in `folder` (RGBA or on white; id = file stem), sorted. An optional `objects.json` maps
    id -> name string or {"name": ..., "bbox": [x0, y0, x1, y1], "background": file}."""
    folder = pathlib.Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith(
        "_background"))
    if not files:
        raise FileNotFoundError(f"no object pictures ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    meta = json.loads((folder / "objects.json").read_text()) if (folder / "objects.json").is_file() else {}
    entries = []
    for path in files[:limit]:
        info = meta.get(path.stem, {})
        info = {"name": info} if isinstance(info, str) else dict(info)
        background = info.get("background")
        entries.append(ObjectEntry(path.stem, str(path.resolve()), info.get("name", ""),
                                   tuple(info["bbox"]) if info.get("bbox") else None,
                                   str((folder / background).resolve()) if background else None))
    return tuple(entries)


def synthetic_objects(out: str | pathlib.Path, count: int, resolution: int, world_seed: int = 0,
                      first: int = 0) -> tuple[ObjectEntry, ...]:
    """`count` objects of the synthetic world (data.synthetic scenes first..first+count-1) at the model's
    resolution: the condition-view render on white is the object picture and the reference (written to
    <out>/objects/), the scene's box is the requested box, its background the composition background. Ground
    truth exists for every view, so the viewpoint measures apply."""
    from customnet_jax.data import synthetic
    from customnet_jax.evaluation.groundtruth import world_info

    world = synthetic.World(image_size=resolution, seed=world_seed)
    folder = pathlib.Path(out) / "objects"
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for index in range(first, first + count):
        scene = synthetic.scene(index, world)
        object_id = f"synth{index:04d}"
        picture = synthetic.on_white(scene.render_object(scene.condition_camera))
        Image.fromarray(picture).save(folder / f"{object_id}.png")
        Image.fromarray(scene.background).save(folder / f"{object_id}_background.png")
        entries.append(ObjectEntry(object_id, str((folder / f"{object_id}.png").resolve()), scene.spec.caption(),
                                   tuple(int(v) for v in scene.box_pixels),
                                   str((folder / f"{object_id}_background.png").resolve()),
                                   world_info(world, index)))
    return tuple(entries)


def cells(protocol: Protocol) -> Iterator[Cell]:
    """The grid in run order: objects, then prompts, then seeds."""
    for obj in protocol.objects:
        for p in range(len(protocol.prompts)):
            for seed in protocol.seeds:
                yield Cell(obj, p, seed)


def is_complete(folder: pathlib.Path, protocol: Protocol) -> bool:
    """True when a cell's settings JSON and every picture exist (write_results moves the JSON first)."""
    if not (folder / f"{SAMPLE_NAME}.json").is_file():
        return False
    return all((folder / f"{SAMPLE_NAME}_view{v}_sample{n}.png").is_file()
               for v in range(len(protocol.views)) for n in range(protocol.num_samples))


def _differences(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def start_run(out: str | pathlib.Path, protocol: Protocol) -> pathlib.Path:
    """Create the run folder with protocol.json, or check that an existing one describes the same grid."""
    out = pathlib.Path(out)
    path = out / "protocol.json"
    wanted = protocol.to_dict()
    if path.is_file():
        existing = json.loads(path.read_text())
        differ = _differences(existing, wanted)
        if differ:
            raise ValueError(f"{path} describes another run (differs in {', '.join(differ)}); resume with the same "
                             "settings, or give a new --out folder")
        return out
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(wanted, indent=2))
    os.replace(tmp, path)
    return out


def _relative(path: str | None, start: pathlib.Path) -> str | None:
    return None if path is None else os.path.relpath(path, start)


def run_cell(pipeline: Any, protocol: Protocol, cell: Cell, out: pathlib.Path) -> pathlib.Path:
    """Sample one cell (every view) and write it with write_results; returns its folder."""
    from customnet_jax import conditioning
    from customnet_jax.sampling.outputs import write_results

    folder = cell.folder(out)
    obj = cell.object
    background_file = (obj.background or protocol.background) if pipeline.config.has_background else None
    if pipeline.config.has_background and background_file is None:
        raise ValueError(f"this composition model needs a background: object {obj.id} has none and no "
                         "--background was given")
    # a synthetic render is the prepared object picture as is (so the ground truth is placed the same way)
    picture = conditioning.load_rgb(obj.file) if obj.synthetic else obj.file
    prompt = protocol.prompts[cell.prompt_index]
    result = pipeline(picture, bbox=obj.bbox or protocol.bbox, views=protocol.views,
                      prompt=protocol.prompt_text(obj, prompt), background=background_file,
                      num_samples=protocol.num_samples, seed=cell.seed, steps=protocol.steps,
                      guidance=protocol.guidance, sampler=protocol.sampler,
                      sampler_options=protocol.sampler_options, progress=False)
    result.settings.update(object_id=obj.id, object_name=obj.name, object_file=_relative(obj.file, folder),
                           prompt_index=cell.prompt_index, background_text=prompt,
                           background_file=_relative(background_file, folder), synthetic=obj.synthetic,
                           model_label=protocol.model, protocol=_relative(str(out / "protocol.json"), folder))
    for stale in folder.glob(f".{SAMPLE_NAME}.partial-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    write_results(result, folder, SAMPLE_NAME)
    return folder


def run_protocol(pipeline: Any, protocol: Protocol, out: str | pathlib.Path, *,
                 on_sample: Callable[[Cell, pathlib.Path], None] | None = None,
                 log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Every cell of the grid through the pipeline, skipping finished ones. Returns counts and seconds."""
    if pipeline.config.is_zero123:
        raise ValueError("the protocol needs a CustomNet model (prompts, boxes); this is a Zero-1-to-3 model")
    out = start_run(out, protocol)
    started, done, skipped = time.time(), 0, 0
    total = protocol.num_cells
    for k, cell in enumerate(cells(protocol), 1):
        folder = cell.folder(out)
        if is_complete(folder, protocol):
            skipped += 1
            continue
        t0 = time.time()
        run_cell(pipeline, protocol, cell, out)
        done += 1
        if log is not None:
            log(f"[{k}/{total}] {folder.relative_to(out)} in {time.time() - t0:.1f} s")
        if on_sample is not None:
            on_sample(cell, folder)
    return {"cells": total, "sampled": done, "skipped": skipped, "seconds": round(time.time() - started, 3)}


def evaluate_run(out: str | pathlib.Path, dino: Any = None, clip: Any = None, *, crop_to_box: bool = True,
                 references: str | pathlib.Path | None = None, measures: bool = True) -> list[dict]:
    """Per-picture rows of a (sample.py or protocol) folder: the paper's metrics and the ground-truth measures."""
    from customnet_jax.evaluation.groundtruth import add_measures
    from customnet_jax.evaluation.metrics import collect_samples, score

    samples = collect_samples(out, references)
    rows = score(samples, dino, clip, crop_to_box=crop_to_box)
    return add_measures(rows, out) if measures else rows


def grid_summary(protocol: Protocol) -> str:
    """One line describing the grid."""
    sizes = (len(protocol.objects), len(protocol.prompts), len(protocol.seeds), len(protocol.views))
    return (f"{sizes[0]} objects x {sizes[1]} prompts x {sizes[2]} seeds x {sizes[3]} views x "
            f"{protocol.num_samples} samples = {int(np.prod(sizes)) * protocol.num_samples} pictures "
            f"({protocol.num_cells} pipeline calls, {protocol.steps} {protocol.sampler} steps)")


def protocol_views(values: Sequence[Sequence[float]]) -> tuple[tuple[float, float, float], ...]:
    """Views as a tuple of float triples (JSON-stable)."""
    return tuple((float(p), float(a), float(r)) for p, a, r in values)
