"""DDIM sampling (Song et al. 2021) as LDM's DDIMSampler, with classifier-free guidance done by the caller.

The schedule (a pytree of per-step constants) and a pure `step`; `sample` runs all steps as one `lax.scan`. The
model is only ever seen through `model_fn(x, timesteps)`, its (guided) output: eps or v (schedule.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from customnet_jax.diffusion.samplers.base import Option, Sampler, check_noises, draw_noise, register
from customnet_jax.diffusion.schedule import DiffusionConfig, alphas_cumprod

SCHEDULES = ("correct", "original", "trailing")


@struct.dataclass
class DDIMSchedule:
    """Per step i (in sampling order): timestep t_i, alpha_cumprod at t_i and at the next (lower) t, sigma_i."""

    timesteps: np.ndarray  # (S,) int32, descending
    alphas: np.ndarray  # (S,) float32
    alphas_prev: np.ndarray  # (S,) float32
    sigmas: np.ndarray  # (S,) float32
    prediction_type: str = struct.field(pytree_node=False, default="epsilon")  # what model_fn returns

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def ddim_schedule(alphas_cumprod: np.ndarray, num_steps: int, eta: float = 0.0,
                  schedule: str = "correct", prediction_type: str = "epsilon") -> DDIMSchedule:
    """LDM's uniform DDIM grid t = 1, 1 + c, ..., 1 + (S-1)c with c = T // S, run from the top down; the last
    step's "previous" alpha is alphas_cumprod[0] (= diffusers DDIM with steps_offset=1, set_alpha_to_one=False).

    schedule="original" reproduces the released samplers bit for bit: they drop the highest timestep
    (`timesteps[:t_start]` with t_start=-1), so S-1 steps run, starting from the second-highest t (docs/model.md §7).
    schedule="trailing" ends the grid at the last timestep, T - 1, T - 1 - T/S, ... (diffusers'
    timestep_spacing="trailing"): a zero-terminal-SNR model must start where x_T is pure noise.
    """
    total = len(alphas_cumprod)
    if not 1 <= num_steps <= total:
        raise ValueError(f"steps must be between 1 and {total}, got {num_steps}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: use one of {SCHEDULES}")
    if not 0.0 <= eta:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if schedule == "original" and num_steps < 2:
        raise ValueError("the original schedule drops a step: it needs steps >= 2")
    stride = total // num_steps
    if schedule == "trailing":
        grid = np.round(np.arange(total, 0, -total / num_steps)).astype(np.int64)[::-1] - 1  # ..., T - 1
    else:
        grid = np.arange(0, total, stride)[:num_steps] + 1  # 1, 1 + c, ...
    grid = np.minimum(grid, total - 1)
    acp = np.asarray(alphas_cumprod, np.float32)
    alphas = acp[grid]
    alphas_prev = np.concatenate([acp[:1], acp[grid[:-1]]])
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    keep = slice(None, -1) if schedule == "original" else slice(None)
    flip = lambda a: np.ascontiguousarray(a[keep][::-1])
    return DDIMSchedule(flip(grid).astype(np.int32), flip(alphas).astype(np.float32),
                        flip(alphas_prev).astype(np.float32), flip(sigmas).astype(np.float32), prediction_type)


def x0_and_eps(x: jax.Array, output: jax.Array, alpha: jax.Array,
               prediction_type: str) -> tuple[jax.Array, jax.Array]:
    """The model's output at x_t as (predicted x_0, predicted eps)."""
    if prediction_type == "v_prediction":  # v = sqrt(a) eps - sqrt(1 - a) x_0, x_t = sqrt(a) x_0 + sqrt(1 - a) eps
        return jnp.sqrt(alpha) * x - jnp.sqrt(1 - alpha) * output, jnp.sqrt(1 - alpha) * x + jnp.sqrt(alpha) * output
    return (x - jnp.sqrt(1 - alpha) * output) / jnp.sqrt(alpha), output


def ddim_step(x: jax.Array, output: jax.Array, alpha: jax.Array, alpha_prev: jax.Array, sigma: jax.Array,
              noise: jax.Array, prediction_type: str = "epsilon") -> tuple[jax.Array, jax.Array]:
    """x_t -> (x_{t_prev}, predicted x_0)."""
    pred_x0, eps = x0_and_eps(x, output, alpha, prediction_type)
    # 1 - a_prev - sigma^2 is exactly 0 at eta = 1 from a_t = 0 (zero terminal SNR): float32 rounding may make it
    # slightly negative, and its square root NaN
    direction = jnp.sqrt(jnp.maximum(1 - alpha_prev - sigma**2, 0.0)) * eps
    return jnp.sqrt(alpha_prev) * pred_x0 + direction + sigma * noise, pred_x0


def sample(model_fn: Callable[[jax.Array, jax.Array], jax.Array], x_T: jax.Array, schedule: DDIMSchedule,
           key: jax.Array | None = None, noises: jax.Array | None = None,
           on_step: Callable[[jax.Array], None] | None = None) -> jax.Array:
    """Run the schedule from x_T (B, h, w, c) to x_0 in one `lax.scan`.

    model_fn(x, timesteps (B,)) returns the (guided) model output, eps or v as schedule.prediction_type says.
    The stochastic part (eta > 0) draws N(0, 1) from `key` (folded with the step index), or takes it from
    `noises` (S, B, h, w, c) when given, so that a reference implementation can be fed the same draws.
    `on_step(i)` is called as a host callback after each step (progress bars).
    """
    check_noises(noises, schedule.num_steps, x_T.shape)
    if noises is None and key is None and isinstance(schedule.sigmas, np.ndarray) and np.any(schedule.sigmas > 0):
        raise ValueError("eta > 0 needs a random key or explicit noises")
    constants = tuple(jnp.asarray(a) for a in (schedule.timesteps, schedule.alphas, schedule.alphas_prev,
                                                schedule.sigmas))

    def body(x, inputs):
        index, t, alpha, alpha_prev, sigma = inputs
        output = model_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
        noise = draw_noise(key, noises, index, x)  # multiplied by sigma = 0 when eta = 0
        x, _ = ddim_step(x, output, alpha, alpha_prev, sigma, noise, schedule.prediction_type)
        if on_step is not None:
            jax.debug.callback(on_step, index)
        return x, None

    x, _ = jax.lax.scan(body, x_T, (jnp.arange(schedule.num_steps), *constants))
    return x


def default_grid(diffusion: DiffusionConfig) -> str:
    """A zero-terminal-SNR model must start at t = T - 1, where x_T is pure noise; SD models as LDM."""
    return "trailing" if diffusion.zero_terminal_snr else "correct"


@register
class DDIM(Sampler):
    """DDIM, eta = 0 deterministic; the released CustomNet / Zero-1-to-3 sampler."""

    name = "ddim"
    options = (
        Option("eta", float, "DDIM noise: 0 deterministic, 1 as Zero-1-to-3's demo", 0.0),
        Option("schedule", str, "DDIM timestep grid: 'original' reproduces the released sampler's dropped first "
               "step; default 'trailing' for zero-terminal-SNR models, else 'correct'", default_grid, SCHEDULES),
    )

    def schedule(self, diffusion: DiffusionConfig, steps: int, *, eta: float, schedule: str) -> DDIMSchedule:
        return ddim_schedule(alphas_cumprod(diffusion), steps, eta, schedule, diffusion.prediction_type)

    def sample(self, model_fn: Callable, x_T: jax.Array, schedule: Any, key: jax.Array | None = None,
               noises: jax.Array | None = None, on_step: Callable[[jax.Array], None] | None = None) -> jax.Array:
        return sample(model_fn, x_T, schedule, key, noises, on_step)
