"""The demo model's own image encoder: CLIP's vision architecture, trained to summarise the object's picture.

The released models embed the object with OpenAI's CLIP ViT-L/14 (frozen), whose embedding describes what the
object looks like, including which way it faces. Nothing can be downloaded here, and a randomly initialised
encoder's embedding barely carries the picture's layout: a ridge probe recovers the object's right-minus-left
colour from it with R^2 0.17, against 0.87 from a 4 x 4 grid of mean colours. The object token (cc_projection of
the embedding and T) then cannot tell the UNet which side of the object shows which colour, which is what a turn
of the azimuth rearranges. So the demo trains the same architecture (then frozen, as CLIP is) to predict the
object picture's coarse colour layout (a grid of mean colours) through a linear head from its embedding.
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

from customnet_jax.conditioning import clip_preprocess
from customnet_jax.data.pipeline import make_iterator
from customnet_jax.experiment import Config
from customnet_jax.models.build import initialized_model
from customnet_jax.models.clip import CLIPImageEncoder, CLIPVisionConfig


@dataclasses.dataclass(frozen=True)
class ImageEncoderTraining:
    steps: int = 4000
    batch_size: int = 64
    examples: int = 4096  # object pictures read once from the world, then drawn from at random
    learning_rate: float = 1e-3
    grid: int = 4  # the target: grid x grid mean colours of the object picture
    seed: int = 0


def colour_grid(images: np.ndarray, grid: int) -> np.ndarray:
    """(B, S, S, 3) -> (B, grid * grid * 3): mean colour of each cell."""
    b, s = images.shape[:2]
    cell = s // grid
    return images[:, :grid * cell, :grid * cell].reshape(b, grid, cell, grid, cell, 3).mean((2, 4)).reshape(b, -1)


def explained(prediction: np.ndarray, target: np.ndarray) -> float:
    """R^2: the share of the target's variance the prediction explains."""
    return float(1.0 - np.sum((prediction - target) ** 2) / np.sum((target - target.mean(0)) ** 2))


def train_image_encoder(config: Config, encoder_config: CLIPVisionConfig, training: ImageEncoderTraining,
                        log: Callable[[str], None] = print) -> CLIPImageEncoder:
    """Train a CLIP vision encoder on config.data's object pictures (condition views on white) -> the encoder.

    Loss: squared error of Linear(embedding) against the picture's colour grid; the last eighth of the pictures
    is held out to report the R^2 reached.
    """
    batches = make_iterator(config, process_index=0, process_count=1, batch_size_per_host=256)
    objects = []
    while sum(len(o) for o in objects) < training.examples:
        objects.append(np.asarray(next(batches)["object"]))
    objects = np.concatenate(objects)[:training.examples]  # (N, S, S, 3) in [-1, 1]
    pixels = np.asarray(clip_preprocess(objects, encoder_config.image_size))
    targets = colour_grid(objects, training.grid).astype(np.float32)
    held_out = len(objects) // 8
    train_pixels, train_targets = pixels[held_out:], targets[held_out:]

    rngs = nnx.Rngs(training.seed)
    encoder = initialized_model(lambda: CLIPImageEncoder(encoder_config, rngs=nnx.Rngs(0)), seed=training.seed)
    head = nnx.Linear(encoder_config.projection_dim, targets.shape[1], rngs=rngs)
    graphdef, params = nnx.split((encoder, head), nnx.Param)
    optimizer = optax.adam(optax.cosine_decay_schedule(training.learning_rate, training.steps, alpha=0.05))
    opt_state = optimizer.init(params)

    def predict(params, pixels):
        encoder, head = nnx.merge(graphdef, params)
        return head(encoder(pixels))

    @jax.jit
    def step(params, opt_state, pixels, targets):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((predict(p, pixels) - targets) ** 2))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    draws = np.random.default_rng(training.seed)
    started = time.time()
    for i in range(training.steps):
        rows = draws.integers(0, len(train_pixels), training.batch_size)
        params, opt_state, loss = step(params, opt_state, train_pixels[rows], train_targets[rows])
        if i % 250 == 0 or i == training.steps - 1:
            log(f"image encoder step {i:5d}  mse {float(loss):.5f}  {(i + 1) / (time.time() - started):.1f} steps/s")
    r2 = explained(np.asarray(jax.jit(predict)(params, pixels[:held_out])), targets[:held_out])
    log(f"image encoder: held-out R^2 of the {training.grid}x{training.grid} colour grid {r2:.3f}")
    encoder, _ = nnx.merge(graphdef, params)
    return encoder
