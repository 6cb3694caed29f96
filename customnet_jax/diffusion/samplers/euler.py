"""Euler (Karras et al. 2022, Algorithm 2 without churn): first-order steps of the probability-flow ODE in the
variance-exploding form x = x_0 + sigma eps, as diffusers' EulerDiscreteScheduler (linear sigma interpolation,
final sigma 0). x_T is scaled to that form (diffusers' `init_noise_sigma`), each model input back to unit
variance (`scale_model_input`). euler_ancestral.py adds fresh noise after each step with the same loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from customnet_jax.diffusion.samplers.base import (
    SPACING,
    Sampler,
    alpha_sigma,
    as_float32,
    check_noises,
    draw_noise,
    noise_levels,
    register,
)
from customnet_jax.diffusion.schedule import DiffusionConfig


@struct.dataclass
class EulerSchedule:
    """Per step i: model input = input_scale x; x_0 = from_x x + from_output output;
    next x = x + step_ratio (x - x_0) + noise_scale noise. x starts as initial_scale x_T."""

    timesteps: np.ndarray  # (S,) int32, descending
    input_scale: np.ndarray
    from_x: np.ndarray
    from_output: np.ndarray
    step_ratio: np.ndarray
    noise_scale: np.ndarray
    initial_scale: np.ndarray  # () float32
    ancestral: bool = struct.field(pytree_node=False, default=False)  # draws noise each step

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def euler_schedule(diffusion: DiffusionConfig, steps: int, spacing: str = "trailing",
                   ancestral: bool = False) -> EulerSchedule:
    levels = noise_levels(diffusion, steps, spacing, multistep=False)
    sigmas = levels.sigmas  # (S + 1,), ending at 0
    now, following = sigmas[:-1], sigmas[1:]
    if diffusion.prediction_type == "v_prediction":  # x_0 = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) v
        from_x, from_output = 1 / (now**2 + 1), -now / np.sqrt(now**2 + 1)
    else:  # x_0 = x - sigma eps
        from_x, from_output = np.ones_like(now), -now
    noise_scale = np.zeros_like(now)
    if ancestral:  # go down to sigma_down, then add noise of sigma_up: sigma_down^2 + sigma_up^2 = following^2
        noise_scale = np.sqrt(following**2 * (now**2 - following**2) / now**2)
        following = np.sqrt(following**2 - noise_scale**2)
    # diffusers: the largest sigma itself for a trailing grid, sqrt(sigma^2 + 1) (unit variance) for leading
    initial_scale = now.max() if spacing == "trailing" else np.sqrt(now.max() ** 2 + 1)
    input_scale = alpha_sigma(now)[0]  # 1 / sqrt(sigma^2 + 1)
    return EulerSchedule(levels.timesteps, *as_float32(input_scale, from_x, from_output, (following - now) / now,
                                                       noise_scale, initial_scale), ancestral=ancestral)


def sample_euler(model_fn: Callable, x_T: jax.Array, schedule: EulerSchedule, key: jax.Array | None = None,
                 noises: jax.Array | None = None, on_step: Callable[[jax.Array], None] | None = None) -> jax.Array:
    """Run an `EulerSchedule` from x_T (unit variance) in one `lax.scan`."""
    check_noises(noises, schedule.num_steps, x_T.shape)
    if schedule.ancestral and key is None and noises is None:
        raise ValueError("an ancestral sampler needs a random key or explicit noises")

    def body(x, inputs):
        index, t, input_scale, from_x, from_output, step_ratio, noise_scale = inputs
        x0 = from_x * x + from_output * model_fn(input_scale * x, jnp.full((x.shape[0],), t, jnp.int32))
        x = x + step_ratio * (x - x0)
        if schedule.ancestral:
            x = x + noise_scale * draw_noise(key, noises, index, x)
        if on_step is not None:
            jax.debug.callback(on_step, index)
        return x, None

    inputs = (jnp.arange(schedule.num_steps), *(jnp.asarray(a) for a in (
        schedule.timesteps, schedule.input_scale, schedule.from_x, schedule.from_output, schedule.step_ratio,
        schedule.noise_scale)))
    x, _ = jax.lax.scan(body, jnp.asarray(schedule.initial_scale) * x_T, inputs)
    return x


@register
class Euler(Sampler):
    """Euler, deterministic."""

    name = "euler"
    options = (SPACING,)

    def schedule(self, diffusion: DiffusionConfig, steps: int, *, spacing: str) -> EulerSchedule:
        return euler_schedule(diffusion, steps, spacing)

    def sample(self, model_fn: Callable, x_T: jax.Array, schedule: Any, key: jax.Array | None = None,
               noises: jax.Array | None = None, on_step: Callable[[jax.Array], None] | None = None) -> jax.Array:
        return sample_euler(model_fn, x_T, schedule, key, noises, on_step)
