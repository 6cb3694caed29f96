"""Per-example grain transforms: decode a raw or precomputed record into the training example, draw dropout.

Classes, not closures, so that grain can pickle them into worker processes.
"""

from __future__ import annotations

import dataclasses
import functools

import grain
import numpy as np

from customnet_jax.conditioning.batch import PRECOMPUTED_KEYS
from customnet_jax.conditioning.boxes import box_pixels
from customnet_jax.conditioning.canvas import background_canvas, location_canvas
from customnet_jax.conditioning.images import to_float
from customnet_jax.data.images import resize_rgb


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
    """Raw record -> the raw form of conditioning.batch (+ id and caption strings with keep_id)."""

    resolution: int
    keep_id: bool = False

    def map(self, record: dict) -> dict:
        size = self.resolution
        target = to_float(resize_rgb(record["target"], size))
        obj = to_float(resize_rgb(record["object"], size))
        box = box_pixels(record["box"], size)
        out = {"target": target, "object": obj, "location": location_canvas(obj, box, size, outside=True),
               "background": background_canvas(target, box, size, outside=True),
               "view": np.asarray(record["view"], np.float32), "box": np.asarray(record["box"], np.float32),
               "tokens": caption_tokens(_text(record["caption"]))}
        if self.keep_id:
            out["id"], out["caption"] = _text(record["id"]), _text(record["caption"])
        return out


@dataclasses.dataclass(frozen=True)
class DecodePrecomputed(grain.transforms.Map):
    """Precomputed record -> the precomputed form of conditioning.batch (float32; text embeddings are stored as
    float16; datasets precomputed before the box was stored have none)."""

    keep_id: bool = False

    def map(self, record: dict) -> dict:
        out = {k: np.asarray(record[k], np.float32) for k in PRECOMPUTED_KEYS if k in record}
        if self.keep_id:
            out["id"], out["caption"] = _text(record["id"]), _text(record["caption"])
        return out


@dataclasses.dataclass(frozen=True)
class DrawDropout(grain.transforms.RandomMap):
    """The condition-dropout flags (docs/conditioning.md): one r ~ U[0, 1) gives drop_image (r < p_image) and
    drop_object (lo <= r < hi); drop_text is an independent draw with probability p_text. The step applies them."""

    image_dropout: float
    object_latent_dropout: tuple[float, float]
    text_dropout: float

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        r, r_text = rng.random(2)
        lo, hi = self.object_latent_dropout
        return {**element, "drop_image": np.bool_(r < self.image_dropout), "drop_object": np.bool_(lo <= r < hi),
                "drop_text": np.bool_(r_text < self.text_dropout)}
