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

DECODER = nnx.All(nnx.Param, nnx.Any(nnx.PathContains("decoder"), nnx.PathContains("post_quant_conv")))


@dataclasses.dataclass(frozen=True)
class AutoencoderTraining:
    steps: int = 3000
    decoder_steps: int = 1500  # then the decoder alone (encoder frozen): latents keep their meaning
    batch_size: int = 16  # examples per step; each gives target, location and background pictures
    learning_rate: float = 1e-3
    kl_weight: float = 1e-6
    crop: int = 32  # train on random crops (the VAE is convolutional): a quarter of the cost at 64 px
    seed: int = 0


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, var) || N(0, 1)) summed over latent dims, per sample."""
    return 0.5 * jnp.sum(mean**2 + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3))


def fit(vae: VAE, config: Config, training: AutoencoderTraining, steps: int, trained: nnx.filterlib.Filter,
        seed: int, log: Callable[[str], None] = print, name: str = "vae") -> VAE:
    """`steps` Adam steps on the parameters matching `trained` (the rest frozen) -> the updated VAE.

    Loss: squared error of the decoded posterior sample + kl_weight * KL, on random crops of config.data's
    targets, location canvases and backgrounds.
    """
    graphdef, params, frozen = nnx.split(vae, trained, ...)
    optimizer = optax.adam(optax.cosine_decay_schedule(training.learning_rate, steps, alpha=0.05))
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, images, key):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, frozen)
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
    key = jax.random.key(seed)
    crops = np.random.default_rng(seed)
    started = time.time()
    for i in range(steps):
        batch = next(batches)
        images = np.concatenate([batch["target"], batch["location"], batch["background"]])
        if training.crop and training.crop < images.shape[1]:
            y, x = crops.integers(0, images.shape[1] - training.crop + 1, 2)
            images = images[:, y : y + training.crop, x : x + training.crop]
        params, opt_state, mse, kl = step(params, opt_state, images, jax.random.fold_in(key, i))
        if i % 100 == 0 or i == steps - 1:
            log(f"{name} step {i:5d}  mse/pixel {float(mse):.5f}  kl {float(kl):.1f}  "
                f"{(i + 1) / (time.time() - started):.1f} steps/s")
    return nnx.merge(graphdef, params, frozen)


def latent_scale(vae: VAE, config: Config, batches: int = 8, batch_size: int = 16) -> float:
    """1 / std of the VAE's latent means over target and location pictures (SD's 0.18215 plays this role)."""
    graphdef, state = nnx.split(vae)
    encode = jax.jit(lambda state, x: nnx.merge(graphdef, state).encode(x)[0])
    data = make_iterator(config, process_index=0, process_count=1, batch_size_per_host=batch_size)
    latents = [np.asarray(encode(state, np.concatenate([b["target"], b["location"]])))
               for b in (next(data) for _ in range(batches))]
    return float(1.0 / np.std(np.concatenate(latents)))


def train_autoencoder(config: Config, vae_config: VAEConfig, training: AutoencoderTraining,
                      log: Callable[[str], None] = print) -> tuple[VAE, float]:
    """Train a VAE on config.data's raw pictures, then refine its decoder -> (VAE, latent scale).

    The second phase trains the decoder alone on the frozen encoder's latents: it sharpens colours and
    edges without moving the latent space, so it can also be applied to a VAE a UNet was trained on.
    """
    vae = initialized_model(lambda: VAE(vae_config, rngs=nnx.Rngs(0)), seed=training.seed)
    vae = fit(vae, config, training, training.steps, nnx.Param, training.seed, log)
    scale = latent_scale(vae, config)
    log(f"vae latent std {1 / scale:.4f} -> latent scale {scale:.4f}")
    if training.decoder_steps:
        vae = fit(vae, config, training, training.decoder_steps, DECODER, training.seed + 1, log,
                  name="decoder")
    return vae, scale
