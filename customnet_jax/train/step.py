"""The training objective (docs/model.md §7) and the sharded train step: a pure function of (state, frozen, batch).

One step, for a global batch of B samples (random draws for the whole batch first, so that gradient
accumulation does not change them):
  t ~ U{0..T-1}, eps ~ N(0, I), and the VAE posterior draw n ~ N(0, I);
  frozen encoders (no gradient): z0 = latent_scale (mean + exp(logvar / 2) n) of the target, the object
  (location) latent and, for the composition model, the background latent (posterior means, unscaled), the
  CLIP image embedding of the object and the CLIP text embedding of the caption; or all of them precomputed;
  condition dropout per sample (flags from the data): drop_image zeroes the image embedding before
  cc_projection, drop_object zeroes the object latent, drop_text swaps the text for the embedding of "";
  trained (UNet + cc_projection): out = UNet([q(z_t | z0) | conditions], t, [cc_proj(emb ++ T) | text]);
  loss = mean over the batch of mean over (h, w, c) of (out - target)^2, target = eps (SD 1.x, default) or
  v = sqrt(a_t) eps - sqrt(1 - a_t) z0 (diffusion.prediction_type = "v_prediction"); with
  train.object_loss_weight = w != 1 the latent cells inside the object's box weigh w, the others 1 (a weighted
  mean per sample; not in the paper: for small pictures where the object covers a few latent cells).
With grad_accum_steps = A the batch is cut into A micro-batches (sample i goes to micro-batch i mod A, so that
every micro-batch stays spread over all devices) and a scan sums their gradients before one AdamW update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from customnet_jax.conditioning.features import frozen_features, latent_shape
from customnet_jax.diffusion.schedule import add_noise, alphas_cumprod, training_target
from customnet_jax.experiment import Config
from customnet_jax.models import layers
from customnet_jax.train import sharding as shd
from customnet_jax.train.nonfinite import keep_if_finite, norm_and_finite
from customnet_jax.train.optimizer import ema_update


def box_cells(box: jax.Array, size: int) -> jax.Array:
    """Boxes (B, 4) as fractions (x0, y0, x1, y1) -> (B, size, size) float mask of the latent cells whose centre
    lies inside the box."""
    centres = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size
    inside_x = (centres[None] >= box[:, 0:1]) & (centres[None] < box[:, 2:3])  # (B, size)
    inside_y = (centres[None] >= box[:, 1:2]) & (centres[None] < box[:, 3:4])
    return (inside_y[:, :, None] & inside_x[:, None, :]).astype(jnp.float32)


def denoising_loss(model: Any, feats: dict, timesteps: jax.Array, noise: jax.Array, alphas: jax.Array,
                   prediction_type: str = "epsilon", object_loss_weight: float = 1.0) -> jax.Array:
    """The MSE of the UNet's output against its target (eps or v): mean over (h, w, c), then over the batch.
    With object_loss_weight != 1 each sample's mean is weighted: cells inside feats["box"] weigh that much."""
    token = model.project_object(feats["image_embedding"], feats["view"])
    context = model.context(token, feats.get("text"))
    noisy = add_noise(feats["z0"], noise, timesteps, alphas)
    output = model.denoise(noisy, timesteps, feats["conditions"], context)
    target = training_target(feats["z0"], noise, timesteps, alphas, prediction_type)
    squared = jnp.square(output.astype(jnp.float32) - target)  # (B, h, w, c)
    if object_loss_weight == 1.0:
        return jnp.mean(jnp.mean(squared, axis=(1, 2, 3)))
    weight = 1.0 + (object_loss_weight - 1.0) * box_cells(feats["box"], squared.shape[1])[..., None]  # (B, h, w, 1)
    per_sample = jnp.sum(weight * squared, axis=(1, 2, 3)) / (jnp.sum(weight, axis=(1, 2, 3)) * squared.shape[-1])
    return jnp.mean(per_sample)


def draw_randomness(config: Config, batch: dict, key: jax.Array) -> dict:
    """t, eps and the posterior draw for the whole global batch (independent of the accumulation)."""
    shape = latent_shape(config, batch)
    k_t, k_eps, k_post = jax.random.split(key, 3)
    return {"timesteps": jax.random.randint(k_t, (shape[0],), 0, config.diffusion.num_train_timesteps),
            "noise": jax.random.normal(k_eps, shape, jnp.float32),
            "posterior_noise": jax.random.normal(k_post, shape, jnp.float32)}


def microbatches(tree: dict, steps: int, mesh: Mesh | None) -> dict:
    """(B, ...) -> (steps, B / steps, ...); micro-batch j holds samples j, j + steps, j + 2 steps, ..."""

    def cut(x):
        y = x.reshape(x.shape[0] // steps, steps, *x.shape[1:]).swapaxes(0, 1)
        if mesh is not None:
            y = jax.lax.with_sharding_constraint(y, NamedSharding(mesh, P(None, shd.AXES)))
        return y

    return jax.tree.map(cut, tree)


def apply_gradients(tx: optax.GradientTransformation, state: dict, grads: Any, loss: jax.Array,
                    ema_decay: float = 0.0) -> tuple[dict, dict]:
    """The step's update: `tx` (AdamW) on the gradients, the EMA, and the non-finite guard (a step whose loss,
    gradient norm or new parameters are not finite keeps the previous state; its step counter moves on)."""
    params = state["params"]
    grad_norm, finite = norm_and_finite(tx, grads, state["opt_state"], params, loss)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    new_state = dict(state, params=new_params, opt_state=opt_state, step=state["step"] + 1)
    if "ema" in state:
        new_state["ema"] = ema_update(state["ema"], new_params, ema_decay)
    new_state = keep_if_finite(finite, state, new_state)  # a non-finite step changes nothing
    return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite}


def make_step_fn(config: Config, graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                 mesh: Mesh | None = None) -> Callable:
    """The train step (state, frozen, batch) -> (state, metrics), not yet jitted."""
    train = config.train
    alphas_np = alphas_cumprod(config.diffusion)
    accum = train.grad_accum_steps

    def step_fn(state: dict, frozen: dict, batch: dict) -> tuple[dict, dict]:
        if train.object_loss_weight != 1.0 and "box" not in batch:
            raise ValueError(f"train.object_loss_weight = {train.object_loss_weight} weighs the object's box, but the "
                             "batches carry no 'box' (a dataset precomputed before boxes were stored): precompute "
                             "it again, or set train.object_loss_weight=1")
        params = state["params"]
        key = jax.random.fold_in(state["rng"], state["step"])
        batch = dict(batch, **draw_randomness(config, batch, key))
        alphas = jnp.asarray(alphas_np)
        null_text = frozen.get("null_text")

        def loss_and_grad(micro: dict) -> tuple[jax.Array, Any]:
            encoders = nnx.merge(graphdef, jax.lax.stop_gradient(params), frozen["params"])
            feats = frozen_features(encoders, config, micro, null_text)

            def loss_of(p):
                return denoising_loss(nnx.merge(graphdef, p, frozen["params"]), feats, micro["timesteps"],
                                      micro["noise"], alphas, config.diffusion.prediction_type,
                                      train.object_loss_weight)

            return jax.value_and_grad(loss_of)(params)

        if accum == 1:
            loss, grads = loss_and_grad(batch)
        else:
            def body(carry, micro):
                loss, grads = loss_and_grad(micro)
                return jax.tree.map(jnp.add, carry, (loss, grads)), None

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
            (loss, grads), _ = jax.lax.scan(body, zeros, microbatches(batch, accum, mesh))
            loss, grads = jax.tree.map(lambda x: x / accum, (loss, grads))

        return apply_gradients(tx, state, grads, loss, train.ema_decay)

    def under_mesh(state: dict, frozen: dict, batch: dict) -> tuple[dict, dict]:
        with layers.under_mesh(mesh):  # for attention kernels that run per device (models/pallas_attention.py)
            return step_fn(state, frozen, batch)

    return under_mesh


def jit_step(step_fn: Callable, state_shardings: Any, frozen_shardings: Any, batch_shardings: Any,
             mesh: Mesh) -> Callable:
    """jax.jit with explicit shardings; the old state is donated."""
    metrics = {"loss": shd.replicated(mesh), "grad_norm": shd.replicated(mesh), "finite": shd.replicated(mesh)}
    return jax.jit(step_fn, in_shardings=(state_shardings, frozen_shardings, batch_shardings),
                   out_shardings=(state_shardings, metrics), donate_argnums=(0,))


def abstract_batch(batch: dict, mesh: Mesh, process_count: int = 1) -> dict:
    """ShapeDtypeStructs of the global batch for one host's batch (to compile before the first step)."""
    sharding = shd.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct((v.shape[0] * process_count, *v.shape[1:]), np.asarray(v).dtype,
                                    sharding=sharding) for k, v in batch.items()}
