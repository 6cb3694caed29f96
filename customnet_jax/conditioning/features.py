"""The frozen part of a train step: a batch (either form of conditioning.batch) -> the model's conditions.

The target's latent z0 = latent_scale (mean + exp(logvar / 2) n); the object (location) latent and, for the
composition model, the background latent (posterior means, unscaled); the CLIP image embedding of the object and
the CLIP text embedding of the caption: encoded here by the frozen VAE / CLIP, or read from a precomputed batch.
Condition dropout per sample: drop_image zeroes the image embedding before cc_projection, drop_object zeroes the
object latent, drop_text swaps the text for the embedding of "".
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from customnet_jax.conditioning.batch import form_of


def latent_shape(config: Any, batch: dict) -> tuple[int, ...]:
    """The (B, h, h, c) shape of the batch's target latents."""
    b = batch["view"].shape[0]
    if form_of(batch) == "precomputed":
        return tuple(batch["target_mean"].shape)
    return (b, config.model.latent_size, config.model.latent_size, config.model.latent_channels)


def _mask(flags: jax.Array, x: jax.Array) -> jax.Array:
    """Zero the samples whose flag is set."""
    keep = jnp.logical_not(flags).astype(x.dtype)
    return x * keep.reshape(-1, *([1] * (x.ndim - 1)))


def frozen_features(model: Any, config: Any, batch: dict, null_text: jax.Array | None) -> dict:
    """The frozen part of the train step: latents and embeddings with the condition dropout applied (no gradient).

    `batch` in either form (conditioning.batch) plus "posterior_noise" (the draw n of z0); `null_text` the
    embedding of "" (1, L, W). Returns z0, conditions (object latent [++ background latent]), image_embedding,
    view [, box] [, text]."""
    mc = config.model
    if form_of(batch) == "precomputed":
        mean, logvar = batch["target_mean"], batch["target_logvar"]
        location, background = batch["location_latent"], batch.get("background_latent")
        image_embedding, text = batch["image_embedding"], batch.get("text_embedding")
    else:
        # one VAE pass over [target, location (, background)] of each sample, kept next to each other so that a
        # device's rows stay on that device: (B, k, R, R, 3) -> (B k, R, R, 3)
        names = ["target", "location"] + (["background"] if mc.has_background else [])  # batch.IMAGE_KEYS
        images = jnp.stack([batch[n] for n in names], axis=1)
        means, logvars = model.encode(images.reshape(-1, *images.shape[2:]))
        means = means.reshape(images.shape[0], len(names), *means.shape[1:])
        mean, location = means[:, 0], means[:, 1]
        logvar = logvars.reshape(means.shape)[:, 0]
        background = means[:, 2] if mc.has_background else None
        image_embedding = model.image_embedding(batch["object"])
        text = None if mc.is_zero123 else model.encode_text(batch["tokens"])
    z0 = mc.latent_scale * (mean + jnp.exp(0.5 * logvar) * batch["posterior_noise"])
    conditions = [_mask(batch["drop_object"], location)]
    if mc.has_background:
        conditions.append(background)
    out = {"z0": z0, "conditions": jnp.concatenate(conditions, axis=-1).astype(jnp.float32),
           "image_embedding": _mask(batch["drop_image"], image_embedding.astype(jnp.float32)),
           "view": batch["view"].astype(jnp.float32)}
    if "box" in batch:
        out["box"] = batch["box"].astype(jnp.float32)
    if not mc.is_zero123:
        drop = batch["drop_text"].reshape(-1, 1, 1)
        out["text"] = jnp.where(drop, null_text.astype(jnp.float32), text.astype(jnp.float32))
    return jax.tree.map(jax.lax.stop_gradient, out)
