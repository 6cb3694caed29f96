"""CustomNet training data: tfds builders for three sources, a grain pipeline, and a precompute step.

Sources (tfds GeneratorBasedBuilders writing array_record files; no TensorFlow):
  build("synthetic", data_dir, world=World(image_size=64), num_examples=N)    the synthetic world (synthetic.py)
  build("views", data_dir, path=views_release, image_size=256, pairs_per_object=4, backgrounds="", captions="")
  build("pairs", data_dir, path=photo_folders_or_manifest.jsonl, image_size=256)
-> (dataset folder, SkipReport): bad items (corrupt pictures, missing / misshapen camera files, empty masks, ...)
are skipped, counted and named (log + skipped.json beside the data); a build never dies on one bad object.
precompute(config, model, out_dir) encodes a raw dataset's frozen parts once into another tfds dataset.

    it = make_iterator(config, process_index=jax.process_index(), process_count=jax.process_count(),
                       batch_size_per_host=B)
    batch = next(it); state = it.get_state(); it.set_state(state)   # or grain.checkpoint.CheckpointSave(it)

config.data: source ("synthetic" | "views" | "pairs" | "precomputed"), path (a built dataset folder or a
data_dir holding one; for "synthetic" the world is built there on first use), split, shuffle_seed,
num_workers (grain mp_prefetch worker processes; 0 = in-process threads), read_threads, prefetch.
Dropout probabilities come from config.train (image_dropout, object_latent_dropout, text_dropout).

A batch is a dict of host numpy arrays with leading dim B (per-host batch); R = config.model.resolution,
h = config.model.latent_size (R/8 full size, R/4 for configs/tiny.py), D = the encoders' widths.
Raw form (read from a raw dataset):
  target      float32 (B, R, R, 3) in [-1, 1]   the target picture
  object      float32 (B, R, R, 3)   the condition view of the object centred on white (CLIP input)
  location    float32 (B, R, R, 3)   conditioning.location_canvas: the object picture resized into the box on white
  background  float32 (B, R, R, 3)   the target with the box painted white (+1); always present
  view        float32 (B, 4)         T = [dpolar (rad), sin(dazimuth), cos(dazimuth), dradius], condition -> target
  box         float32 (B, 4)         the object's box (x0, y0, x1, y1) as fractions of the side (object_loss_weight)
  tokens      int32 (B, 77)          the caption's CLIP tokens, NOT yet dropped
Precomputed form (read from a precompute() dataset):
  target_mean, target_logvar          float32 (B, h, h, 4)  VAE posterior of the target, unscaled
  location_latent, background_latent  float32 (B, h, h, 4)  posterior mode (= mean), unscaled
  image_embedding                     float32 (B, D)        CLIP image embedding, before cc_projection
  text_embedding                      float32 (B, 77, D)    (stored float16; absent for Zero-1-to-3 models)
  view, box                           float32 (B, 4)       (box: absent from datasets precomputed before it was stored)
Both forms: drop_image, drop_object, drop_text bool (B,) (docs/model.md §7): one r ~ U[0, 1) per sample gives
drop_image = r < image_dropout and drop_object = lo <= r < hi (object_latent_dropout = (lo, hi)); drop_text is an
independent draw with probability text_dropout. The training step applies them (zero the CLIP embedding before
cc_projection / zero the object latent / use the "" caption: its tokens, or its embedding for precomputed
batches, which the step computes once). With keep_id=True batches also carry "id" and "caption" strings.

Transparency: renders are composited over white with alpha as a weight, as inference does with user pictures
(conditioning.load_rgb); Zero-1-to-3's loader whitens only alpha == 0 pixels (views alpha_mode="zero123").
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build": "builders", "make_iterator": "pipeline", "make_dataset": "pipeline", "open_source": "pipeline",
    "precompute": "precomputed", "make_encoder": "precomputed", "SkipReport": "records", "World": "synthetic",
    "ObjectSpec": "renderer", "Camera": "renderer", "Scene": "synthetic", "render": "renderer",
    "scene": "synthetic",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Lazy exports: grain worker processes import only the modules their transforms need."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
