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

A batch is a dict of host numpy arrays with leading dim B (per-host batch), in the raw form (pictures and
tokens) or the precomputed form (VAE posteriors and CLIP embeddings): customnet_jax/conditioning/batch.py defines
both (keys, shapes, dtypes), with the drop_image / drop_object / drop_text flags drawn here and applied by the
train step. With keep_id=True batches also carry "id" and "caption" strings.

Transparency: renders are composited over white with alpha as a weight, as inference does with user pictures
(conditioning.images.load_rgb); Zero-1-to-3's loader whitens only alpha == 0 pixels (views alpha_mode="zero123").
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
