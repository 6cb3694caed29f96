"""Source folders made from the synthetic world, in the layouts the real-data readers take.

`write_views_folder` writes Zero-1-to-3's `views_release` layout (NNN.png RGBA + NNN.npy world->camera),
`write_photo_folders` the per-photo layout of docs/model.md §10 (input.jpg, mask.jpg, multi_view_NN.jpg, meta.json,
caption.json), `write_backgrounds` a folder of background pictures. Used as test fixtures and demos.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from PIL import Image

from customnet_jax.conditioning.boxes import mask_xywh
from customnet_jax.data.synthetic import (
    World,
    background,
    on_white,
    over,
    render,
    sample_background,
    sample_box,
    sample_camera,
    sample_object,
)


def _render(spec, camera, size, world: World) -> np.ndarray:
    return render(spec, camera, size, fov_deg=world.fov_deg, supersample=world.supersample,
                  object_radius=world.object_radius)


def write_views_folder(root: str | pathlib.Path, num_objects: int, views_per_object: int, *, world: World | None = None,
                       seed: int = 0, valid_paths: bool = False, captions: bool = False) -> dict[str, dict]:
    """Objects obj0000... with `views_per_object` renders at random cameras; returns id -> {spec, cameras}."""
    root, world = pathlib.Path(root), world or World()
    objects = {}
    for k in range(num_objects):
        rng = np.random.default_rng([world.seed, seed, k])
        spec, object_id = sample_object(rng, world), f"obj{k:04d}"
        cameras = [sample_camera(rng, world) for _ in range(views_per_object)]
        folder = root / object_id
        folder.mkdir(parents=True, exist_ok=True)
        for v, camera in enumerate(cameras):
            Image.fromarray(_render(spec, camera, world.image_size, world), "RGBA").save(folder / f"{v:03d}.png")
            np.save(folder / f"{v:03d}.npy", camera.rt().astype(np.float32))
        objects[object_id] = {"spec": spec, "cameras": cameras}
    if valid_paths:
        (root / "valid_paths.json").write_text(json.dumps(sorted(objects)))
    if captions:
        (root / "captions.json").write_text(json.dumps({k: v["spec"].caption() for k, v in objects.items()}))
    return objects


def write_backgrounds(root: str | pathlib.Path, count: int, size: int, *, seed: int = 0) -> list[pathlib.Path]:
    """`count` procedural background pictures bg000.png..."""
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        path = root / f"bg{k:03d}.png"
        Image.fromarray(background(sample_background(np.random.default_rng([seed, k])), size)).save(path)
        paths.append(path)
    return paths


def write_photo_folders(root: str | pathlib.Path, num_photos: int, views_per_photo: int, *,
                        world: World | None = None, seed: int = 0) -> dict[str, dict]:
    """Per-photo folders (docs/model.md §10): a non-square 'photo' of an object in a box on a background, its mask, and
    zero123-like views of the object at relative views (polar, azimuth in +-[0, 60) degrees) with the deltas in
    meta.json. Returns folder name -> {spec, camera, deltas, caption}."""
    root, world = pathlib.Path(root), world or World()
    size = world.image_size
    width, height = size * 5 // 4, size
    photos = {}
    for k in range(num_photos):
        rng = np.random.default_rng([world.seed, seed, 1000 + k])
        spec, camera = sample_object(rng, world), sample_camera(rng, world)
        bg_spec = sample_background(rng, exclude=spec.colors)
        x0, y0, x1, y1 = sample_box(rng, height, world.box_range)
        x0, x1 = x0 + (width - height) // 2, x1 + (width - height) // 2
        photo = background(bg_spec, width)[:height]
        rgba = _render(spec, camera, x1 - x0, world)
        photo[y0:y1, x0:x1] = over(rgba, photo[y0:y1, x0:x1])
        mask = np.zeros((height, width), np.uint8)
        mask[y0:y1, x0:x1] = np.where(rgba[..., 3] > 127, 255, 0)
        bbox = mask_xywh(mask)
        deltas = [[float(rng.choice([-1, 1]) * rng.uniform(0, 30)), float(rng.choice([-1, 1]) * rng.uniform(0, 60)),
                   0.0] for _ in range(views_per_photo)]
        caption = f"{spec.caption()} {bg_spec.phrase()}"
        folder = root / f"photo{k:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(folder / "input.jpg", quality=95)
        Image.fromarray(mask).save(folder / "mask.jpg", quality=95)
        for i, (dp, da, dr) in enumerate(deltas):
            view = on_white(_render(spec, camera.moved(dp, da, dr), size, world))
            Image.fromarray(view).save(folder / f"multi_view_{i:02d}.jpg", quality=95)
        meta = {"sbj_txt": spec.shape, "caption": caption, "bbox": bbox, "view": deltas}
        (folder / "meta.json").write_text(json.dumps(meta))
        (folder / "caption.json").write_text(json.dumps({"caption": [caption]}))
        (folder / "object.json").write_text(json.dumps({"sbj_txt": spec.shape}))
        photos[folder.name] = {"spec": spec, "camera": camera, "deltas": deltas, "caption": caption, "bbox": bbox}
    return photos
