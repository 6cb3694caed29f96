"""The training batch, defined once: its keys, per-example shapes and dtypes, in its two forms.

A batch is a dict of host numpy arrays with leading dim B. R = model.resolution, h = model.latent_size,
c = model.latent_channels, D = the CLIP image embedding width, W = the text encoder width, L = 77 tokens.
Raw form (images and tokens; the step runs the frozen VAE and CLIP encoders):
  target      float32 (R, R, 3) in [-1, 1]   the target picture
  object      float32 (R, R, 3)   the condition view of the object centred on white (CLIP input)
  location    float32 (R, R, 3)   canvas.location_canvas: the object picture resized into the box on white
  background  float32 (R, R, 3)   canvas.background_canvas: the target with the box painted white (+1)
  view        float32 (4,)        T = [dpolar (rad), sin(dazimuth), cos(dazimuth), dradius], condition -> target
  box         float32 (4,)        the object's box (x0, y0, x1, y1) as fractions of the side
  tokens      int32 (L,)          the caption's CLIP tokens, not yet dropped
Precomputed form (data/precomputed.py ran the frozen encoders once):
  target_mean, target_logvar          float32 (h, h, c)  VAE posterior of the target, unscaled
  location_latent, background_latent  float32 (h, h, c)  posterior mode (= mean), unscaled
  image_embedding                     float32 (D,)       CLIP image embedding, before cc_projection
  text_embedding                      float32 (L, W)     stored float16; absent for Zero-1-to-3 models
  view, box                           float32 (4,)       box: absent from datasets precomputed before it was stored
Both forms: drop_image, drop_object, drop_text bool () (the condition-dropout flags, drawn by the pipeline and
applied by the step; docs/conditioning.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

FORMS = ("raw", "precomputed")
TEXT_LENGTH = 77
IMAGE_KEYS = ("target", "object", "location", "background")  # the raw pictures, float32 (R, R, 3)
ENCODER_INPUTS = ("target", "location", "background", "object", "tokens")  # what precompute encodes
DROP_KEYS = ("drop_image", "drop_object", "drop_text")


@dataclasses.dataclass(frozen=True)
class Field:
    """One key of an example: shape without the batch dim, dtype in the batch, dtype on disk if it differs."""

    shape: tuple[int, ...]
    dtype: Any
    stored: Any = None
    optional: bool = False  # may be absent (e.g. box in old precomputed datasets)


def raw_fields(resolution: int, text_length: int = TEXT_LENGTH) -> dict[str, Field]:
    """The raw form's fields (without the drop flags)."""
    image = Field((resolution, resolution, 3), np.float32)
    return {**dict.fromkeys(IMAGE_KEYS, image), "view": Field((4,), np.float32), "box": Field((4,), np.float32),
            "tokens": Field((text_length,), np.int32)}


def precomputed_fields(latent_size: int, latent_channels: int, embedding_dim: int, text_dim: int,
                       text_length: int = TEXT_LENGTH) -> dict[str, Field]:
    """The precomputed form's fields (without the drop flags); text_dim 0: no text encoder (Zero-1-to-3)."""
    latent = Field((latent_size, latent_size, latent_channels), np.float32)
    fields = {"target_mean": latent, "target_logvar": latent, "location_latent": latent, "background_latent": latent,
              "image_embedding": Field((embedding_dim,), np.float32), "view": Field((4,), np.float32),
              "box": Field((4,), np.float32, optional=True)}
    if text_dim:
        fields["text_embedding"] = Field((text_length, text_dim), np.float32, stored=np.float16)
    return fields


DROP_FIELDS = dict.fromkeys(DROP_KEYS, Field((), np.bool_))
RAW_KEYS = tuple(raw_fields(1))
PRECOMPUTED_KEYS = tuple(precomputed_fields(1, 1, 1, 1))


def fields(model: Any, form: str) -> dict[str, Field]:
    """Every field of a training example of `model` (a CustomNetConfig) in `form`, drop flags included."""
    if form == "raw":
        return {**raw_fields(model.resolution), **DROP_FIELDS}
    if form == "precomputed":
        text_dim = 0 if model.text_encoder is None else model.text_encoder.width
        return {**precomputed_fields(model.latent_size, model.latent_channels, model.image_encoder.projection_dim,
                                     text_dim), **DROP_FIELDS}
    raise ValueError(f"batch form {form!r}: use one of {FORMS}")


def form_of(batch: dict) -> str:
    """'precomputed' (VAE posteriors and CLIP embeddings given) or 'raw' (images and tokens)."""
    return "precomputed" if "target_mean" in batch else "raw"


def check_example(example: dict, model: Any, form: str) -> None:
    """Raise ValueError naming the first key of one example that is missing or has the wrong shape / dtype."""
    for key, field in fields(model, form).items():
        if key not in example:
            if field.optional or key in DROP_KEYS:
                continue
            raise ValueError(f"{form} example has no {key!r}; expected keys {sorted(fields(model, form))}")
        value = np.asarray(example[key])
        if value.shape != field.shape or value.dtype != field.dtype:
            raise ValueError(f"{form} example's {key!r} is {value.dtype} {value.shape}; expected "
                             f"{np.dtype(field.dtype)} {field.shape}")
