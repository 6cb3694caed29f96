"""UniPC (Zhao et al. 2023), B(h) = e^h - 1 ("bh2"), order 2: a multistep predictor plus a corrector that
reuses each model evaluation, so it costs one evaluation per step like DPM-Solver++.

As diffusers' UniPCMultistepScheduler(solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True,
final_sigmas_type="zero"): at step i the model's x_0 at x_i first corrects x_i itself (UniC, from the sample
before the last prediction and the x_0 of the last two steps), then the predictor (UniP) moves the corrected x_i
to the next level; first order at the first and the last step. Every update is linear in the samples and x_0s,
so the schedule holds their coefficients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from customnet_jax.diffusion.samplers import base
from customnet_jax.diffusion.schedule import DiffusionConfig

CORRECTOR = ("x", "last", "this", "previous", "before_previous")  # what the corrected x_i is made of
PREDICTOR = ("x", "this", "previous")  # what x_{i+1} is made of (x: the corrected x_i)


@struct.dataclass
class UniPCSchedule:
    timesteps: np.ndarray  # (S,) int32, descending
    from_x: np.ndarray  # x_0 = from_x x + from_output output
    from_output: np.ndarray
    corrector: np.ndarray  # (S, 5) weights of CORRECTOR
    predictor: np.ndarray  # (S, 3) weights of PREDICTOR

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def _b_h_terms(levels: base.NoiseLevels, target: int, source: int) -> tuple[float, float, float, float]:
    """From level `source` to `target`: (h, alpha_target (e^-h - 1) with its sign for x_0, B(h), the two b_k)."""
    h = levels.lambdas[target] - levels.lambdas[source]
    hh = -h  # predict_x0
    h_phi_1 = np.expm1(hh)
    b_h = np.expm1(hh)  # bh2
    h_phi_k = h_phi_1 / hh - 1
    b1 = h_phi_k / b_h
    h_phi_k = h_phi_k / hh - 1 / 2
    b2 = h_phi_k * 2 / b_h
    return h, h_phi_1, b_h, np.array([b1, b2])


def _corrector(levels: base.NoiseLevels, i: int, order: int) -> np.ndarray:
    """UniC at step i (i >= 1): x_i from the sample before the last prediction (level i - 1)."""
    alpha_t, sigma = levels.alpha[i], levels.sigma
    h, h_phi_1, b_h, b = _b_h_terms(levels, i, i - 1)
    weights = np.zeros(len(CORRECTOR))
    weights[1] = sigma[i] / sigma[i - 1]
    weights[3] = -alpha_t * h_phi_1
    if order == 1:
        rho = 0.5
        weights[2] += -alpha_t * b_h * rho
        weights[3] += alpha_t * b_h * rho
        return weights
    rk = (levels.lambdas[i - 2] - levels.lambdas[i - 1]) / h
    rho_previous, rho_this = np.linalg.solve(np.array([[1.0, 1.0], [rk, 1.0]]), b)
    # - alpha_t B(h) (rho_previous (m_{i-2} - m_{i-1}) / rk + rho_this (m_i - m_{i-1}))
    weights[2] += -alpha_t * b_h * rho_this
    weights[3] += alpha_t * b_h * (rho_previous / rk + rho_this)
    weights[4] += -alpha_t * b_h * rho_previous / rk
    return weights


def _predictor(levels: base.NoiseLevels, i: int, order: int) -> np.ndarray:
    """UniP at step i: the corrected x_i to level i + 1."""
    alpha_t, sigma = levels.alpha[i + 1], levels.sigma
    weights = np.zeros(len(PREDICTOR))
    weights[0] = sigma[i + 1] / sigma[i]
    h, h_phi_1, b_h, _ = _b_h_terms(levels, i + 1, i)
    weights[1] = -alpha_t * h_phi_1
    if order == 2:  # rho = 1/2: - alpha_t B(h) (m_{i-1} - m_i) / (2 rk)
        rk = (levels.lambdas[i - 1] - levels.lambdas[i]) / h
        weights[1] += alpha_t * b_h * 0.5 / rk
        weights[2] = -alpha_t * b_h * 0.5 / rk
    return weights


def unipc_schedule(diffusion: DiffusionConfig, steps: int, spacing: str = "trailing") -> UniPCSchedule:
    levels = base.noise_levels(diffusion, steps, spacing, multistep=True)
    from_x, from_output = base.x0_coefficients(levels.alpha[:-1], levels.sigma[:-1], diffusion.prediction_type)
    orders = [1 if i in (0, steps - 1) else 2 for i in range(steps)]  # warm-up, lower-order final
    corrector = np.zeros((steps, len(CORRECTOR)))
    corrector[0, 0] = 1.0  # nothing to correct at the first step
    predictor = np.zeros((steps, len(PREDICTOR)))
    with np.errstate(divide="ignore", invalid="ignore"):  # the last step's h is inf (sigma_t = 0)
        for i in range(steps):
            if i:
                corrector[i] = _corrector(levels, i, orders[i - 1])
            predictor[i] = _predictor(levels, i, orders[i])
    return UniPCSchedule(levels.timesteps, *base.as_float32(from_x, from_output, corrector, predictor))


@base.register
class UniPC(base.Sampler):
    """UniPC-bh2, order 2, deterministic."""

    name = "unipc"
    options = (base.SPACING,)
    min_steps = 2  # a multistep method

    def schedule(self, diffusion: DiffusionConfig, steps: int, *, spacing: str) -> UniPCSchedule:
        return unipc_schedule(diffusion, steps, spacing)

    def sample(self, model_fn: Callable, x_T: jax.Array, schedule: Any, key: jax.Array | None = None,
               noises: jax.Array | None = None, on_step: Callable[[jax.Array], None] | None = None) -> jax.Array:
        base.check_noises(noises, schedule.num_steps, x_T.shape)  # deterministic: noises are not used

        def body(carry, inputs):
            x, last, previous, before_previous = carry
            index, t, from_x, from_output, c, p = inputs
            x0 = from_x * x + from_output * model_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
            x = c[0] * x + c[1] * last + c[2] * x0 + c[3] * previous + c[4] * before_previous
            following = p[0] * x + p[1] * x0 + p[2] * previous
            if on_step is not None:
                jax.debug.callback(on_step, index)
            return (following, x, x0, previous), None

        inputs = (jnp.arange(schedule.num_steps), *(jnp.asarray(a) for a in (
            schedule.timesteps, schedule.from_x, schedule.from_output, schedule.corrector, schedule.predictor)))
        zeros = jnp.zeros_like(x_T)
        (x, *_), _ = jax.lax.scan(body, (x_T, zeros, zeros, zeros), inputs)
        return x
