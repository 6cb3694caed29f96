"""Per-example grain transforms: decode a raw or precomputed record into the training example, draw dropout.

Classes, not closures, so that grain can pickle them into worker processes.
"""

from __future__ import annotations

import dataclasses
import functools

import grain
import numpy as np

from customnet_jax.data import images

RAW_KEYS = ("target", "object", "location", "background", "view", "box", "tokens")
PRECOMPUTED_KEYS = ("target_mean", "target_logvar", "location_latent", "background_latent", "image_embedding",
                    "text_embedding", "view", "box")
DROP_KEYS = ("drop_image", "drop_object", "drop_text")


@functools.lru_cache(maxsize=1 << 16)
def caption_tokens(caption: str) -> np.ndarray:
    """The caption's 77 CLIP token ids (int32), cached per process (captions repeat)."""
    from customnet_jax.text import tokenize  # transformers: imported only where captions are tokenized

    tokens = tokenize(_tokenizer(), [caption])[0]
    tokens.flags.writeable = False
    return tokens


@functools.cache
def _tokenizer():
    from customnet_jax.text import load_tokenizer

    return load_tokenizer()


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True)
class DecodeRaw(grain.transforms.Map):
    """Raw record -> target, object, location, background (float32 (R, R, 3) in [-1, 1]), view, box (fractions),
    tokens (+ id and caption strings with keep_id)."""

    resolution: int
    keep_id: bool = False

    def map(self, record: dict) -> dict:
        size = self.resolution
        target = images.to_float(images.resize_rgb(record["target"], size))
        obj = images.to_float(images.resize_rgb(record["object"], size))
        box = images.box_pixels(record["box"], size)
        out = {"target": target, "object": obj, "location": images.location_canvas(obj, box, size),
               "background": images.background_canvas(target, box),
               "view": np.asarray(record["view"], np.float32), "box": np.asarray(record["box"], np.float32),
               "tokens": caption_tokens(_text(record["caption"]))}
        if self.keep_id:
            out["id"], out["caption"] = _text(record["id"]), _text(record["caption"])
        return out


@dataclasses.dataclass(frozen=True)
class DecodePrecomputed(grain.transforms.Map):
    """Precomputed record -> latents and embeddings as float32 (text embeddings are stored as float16; datasets
    precomputed before the box was stored have none)."""

    keep_id: bool = False

    def map(self, record: dict) -> dict:
        out = {k: np.asarray(record[k], np.float32) for k in PRECOMPUTED_KEYS if k in record}
        if self.keep_id:
            out["id"], out["caption"] = _text(record["id"]), _text(record["caption"])
        return out


@dataclasses.dataclass(frozen=True)
class DrawDropout(grain.transforms.RandomMap):
    """docs/model.md §7 condition-dropout flags: one r ~ U[0, 1) gives drop_image (r < p_image) and drop_object
    (lo <= r < hi); drop_text is an independent draw with probability p_text. The training step applies them."""

    image_dropout: float
    object_latent_dropout: tuple[float, float]
    text_dropout: float

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        r, r_text = rng.random(2)
        lo, hi = self.object_latent_dropout
        return {**element, "drop_image": np.bool_(r < self.image_dropout), "drop_object": np.bool_(lo <= r < hi),
                "drop_text": np.bool_(r_text < self.text_dropout)}
