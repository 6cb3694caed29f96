"""DPM-Solver++(2M) (Lu et al. 2022): a second-order multistep solver of the diffusion ODE in x_0 form.

As diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
lower_order_final=True, final_sigmas_type="zero"): the first step is first order (no earlier output yet), and so
is the last one, which lands on sigma = 0 (x_0 itself); the steps between use the previous step's x_0 too. Each
step is linear in (x, this x_0, the previous x_0), so the schedule holds three coefficients per step.
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
    as_float32,
    check_noises,
    noise_levels,
    register,
    x0_coefficients,
)
from customnet_jax.diffusion.schedule import DiffusionConfig


@struct.dataclass
class MultistepSchedule:
    """Per step i: timestep; x_0 = from_x x + from_output output; next x = x_weight x + this_weight x_0 +
    previous_weight (the previous step's x_0)."""

    timesteps: np.ndarray  # (S,) int32, descending
    from_x: np.ndarray
    from_output: np.ndarray
    x_weight: np.ndarray
    this_weight: np.ndarray
    previous_weight: np.ndarray

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def dpm_solver_schedule(diffusion: DiffusionConfig, steps: int, spacing: str = "trailing") -> MultistepSchedule:
    levels = noise_levels(diffusion, steps, spacing, multistep=True)
    alpha, sigma, lambdas = levels.alpha, levels.sigma, levels.lambdas
    from_x, from_output = x0_coefficients(alpha[:-1], sigma[:-1], diffusion.prediction_type)
    x_weight, this_weight, previous_weight = np.zeros((3, steps))
    for i in range(steps):
        h = lambdas[i + 1] - lambdas[i]
        x_weight[i] = sigma[i + 1] / sigma[i]
        phi = -alpha[i + 1] * np.expm1(-h)  # alpha_t (1 - e^-h); 1 at the last step (h = inf)
        if i == 0 or i == steps - 1:  # first order: no previous x_0 yet / the final step to sigma = 0
            this_weight[i] = phi
        else:  # midpoint: D0 + D1 / 2 with D1 = (x_0 - previous x_0) / r, r = h_previous / h
            r = (lambdas[i] - lambdas[i - 1]) / h
            this_weight[i] = phi * (1 + 0.5 / r)
            previous_weight[i] = -phi * 0.5 / r
    return MultistepSchedule(levels.timesteps, *as_float32(from_x, from_output, x_weight, this_weight,
                                                           previous_weight))


def sample_multistep(model_fn: Callable, x_T: jax.Array, schedule: MultistepSchedule,
                     on_step: Callable[[jax.Array], None] | None = None) -> jax.Array:
    """Run a `MultistepSchedule` from x_T in one `lax.scan` (the carry holds the previous x_0)."""

    def body(carry, inputs):
        x, previous = carry
        index, t, from_x, from_output, x_weight, this_weight, previous_weight = inputs
        x0 = from_x * x + from_output * model_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
        x = x_weight * x + this_weight * x0 + previous_weight * previous
        if on_step is not None:
            jax.debug.callback(on_step, index)
        return (x, x0), None

    inputs = (jnp.arange(schedule.num_steps), *(jnp.asarray(a) for a in (
        schedule.timesteps, schedule.from_x, schedule.from_output, schedule.x_weight, schedule.this_weight,
        schedule.previous_weight)))
    (x, _), _ = jax.lax.scan(body, (x_T, jnp.zeros_like(x_T)), inputs)
    return x


@register
class DPMSolverPlusPlus2M(Sampler):
    """DPM-Solver++(2M), deterministic: DDIM-50 quality in about 15-25 steps on SD-like models."""

    name = "dpmpp_2m"
    options = (SPACING,)
    min_steps = 2  # a multistep method: with one step it would be a single first-order (DDIM) step

    def schedule(self, diffusion: DiffusionConfig, steps: int, *, spacing: str) -> MultistepSchedule:
        return dpm_solver_schedule(diffusion, steps, spacing)

    def sample(self, model_fn: Callable, x_T: jax.Array, schedule: Any, key: jax.Array | None = None,
               noises: jax.Array | None = None, on_step: Callable[[jax.Array], None] | None = None) -> jax.Array:
        check_noises(noises, schedule.num_steps, x_T.shape)  # deterministic: noises are not used
        return sample_multistep(model_fn, x_T, schedule, on_step)
