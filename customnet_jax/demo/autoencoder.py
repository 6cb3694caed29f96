"""The demo model's own small VAE, trained on the synthetic world's pictures.

The released models use Stable Diffusion's VAE, which nobody can download here; the demo needs an
autoencoder of its own for the same role (pictures <-> latents). Trained as a KL autoencoder: squared
reconstruction error of a posterior sample plus a small KL term, on the three kinds of picture the
model encodes (targets, location canvases, backgrounds), on random crops since the network is
convolutional (4x less compute than whole 64 px pictures on a CPU). Its latent scale is then set so the latents
have unit standard deviation, as 0.18215 does for SD's VAE.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from customnet_jax.data.pipeline import make_iterator
from customnet_jax.experiment import Config
from customnet_jax.models.build import initialized_model
from customnet_jax.models.vae import VAE, VAEConfig


@dataclasses.dataclass(frozen=True)
class AutoencoderTraining:
    steps: int = 3000
    batch_size: int = 16  # examples per step; each gives target, location and background pictures
    learning_rate: float = 1e-3
    kl_weight: float = 1e-6
    crop: int = 32  # train on random crops (the VAE is convolutional): a quarter of the cost at 64 px
    seed: int = 0


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, var) || N(0, 1)) summed over latent dims, per sample."""
    return 0.5 * jnp.sum(mean**2 + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3))


def train_autoencoder(config: Config, vae_config: VAEConfig, training: AutoencoderTraining,
                      log: Callable[[str], None] = print) -> tuple[VAE, float]:
    """Train a VAE on config.data's raw pictures -> (VAE, latent scale 1/std of the latents)."""
    vae = initialized_model(lambda: VAE(vae_config, rngs=nnx.Rngs(0)), seed=training.seed)
    graphdef, params = nnx.split(vae, nnx.Param)
    schedule = optax.cosine_decay_schedule(training.learning_rate, training.steps, alpha=0.05)
    optimizer = optax.adam(schedule)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, images, key):
        def loss_fn(params):
            model = nnx.merge(graphdef, params)
            mean, logvar = model.encode(images)
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
            reconstruction = jnp.mean(jnp.sum((model.decode(z) - images) ** 2, axis=(1, 2, 3)))
            kl = jnp.mean(kl_divergence(mean, logvar))
            return reconstruction + training.kl_weight * kl, (reconstruction, kl)

        (loss, (reconstruction, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        pixels = images.shape[1] * images.shape[2] * images.shape[3]
        return optax.apply_updates(params, updates), opt_state, reconstruction / pixels, kl

    batches = make_iterator(config, process_index=0, process_count=1, batch_size_per_host=training.batch_size)
    key = jax.random.key(training.seed)
    crops = np.random.default_rng(training.seed)
    started = time.time()
    for i in range(training.steps):
        batch = next(batches)
        images = np.concatenate([batch["target"], batch["location"], batch["background"]])
        if training.crop and training.crop < images.shape[1]:
            y, x = crops.integers(0, images.shape[1] - training.crop + 1, 2)
            images = images[:, y : y + training.crop, x : x + training.crop]
        params, opt_state, mse, kl = step(params, opt_state, images, jax.random.fold_in(key, i))
        if i % 100 == 0 or i == training.steps - 1:
            log(f"vae step {i:5d}  mse/pixel {float(mse):.5f}  kl {float(kl):.1f}  "
                f"{(i + 1) / (time.time() - started):.1f} steps/s")
    vae = nnx.merge(graphdef, params)

    encode = jax.jit(lambda params, x: nnx.merge(graphdef, params).encode(x)[0])
    latents = [np.asarray(encode(params, np.concatenate([b["target"], b["location"]])))
               for b in (next(batches) for _ in range(8))]
    scale = float(1.0 / np.std(np.concatenate(latents)))
    log(f"vae latent std {1 / scale:.4f} -> latent scale {scale:.4f}")
    return vae, scale
