"""The DDPM noise schedule: Stable Diffusion 1.x's by default ("scaled_linear" betas, eps prediction, docs/model.md §7).

Optionally (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed") the betas are
rescaled to zero terminal SNR, so that x_T is pure noise in training as it is in sampling; that needs the
v-prediction target v = sqrt(a) eps - sqrt(1 - a) x_0 (eps is undefined at SNR 0). SD's schedule leaves
sqrt(a_T) = 0.068 of the picture in x_T, which a model learns to read the picture's mean colour from: at small
latent sizes (the demo's 16 x 16) its samples then take their colours from the initial noise, not the prompt.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"  # or "linear"
    prediction_type: str = "epsilon"  # what the UNet predicts: "epsilon" or "v_prediction"
    zero_terminal_snr: bool = False  # rescale the betas so that a_T = 0 (needs v_prediction)

    def __post_init__(self):
        if self.beta_schedule not in ("scaled_linear", "linear"):
            raise ValueError(f"beta_schedule {self.beta_schedule!r}: use 'scaled_linear' or 'linear'")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError("need 0 < beta_start < beta_end < 1")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {self.prediction_type!r}: use one of {PREDICTION_TYPES}")
        if self.zero_terminal_snr and self.prediction_type == "epsilon":
            raise ValueError("zero_terminal_snr needs prediction_type='v_prediction': at SNR 0 the noise "
                             "prediction says nothing about x_0")


def betas(config: DiffusionConfig) -> np.ndarray:
    """float64 (T,), computed as LDM's make_beta_schedule (linspace of sqrt in float64, then squared)."""
    if config.beta_schedule == "scaled_linear":
        out = np.linspace(config.beta_start**0.5, config.beta_end**0.5, config.num_train_timesteps,
                          dtype=np.float64) ** 2
    else:
        out = np.linspace(config.beta_start, config.beta_end, config.num_train_timesteps, dtype=np.float64)
    return rescale_zero_terminal_snr(out) if config.zero_terminal_snr else out


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. Algorithm 1: shift and scale sqrt(a_t) so that sqrt(a_T) = 0 and sqrt(a_0) is unchanged."""
    root = np.sqrt(np.cumprod(1.0 - betas))
    first, last = root[0], root[-1]
    root = (root - last) * first / (first - last)
    cumulative = root**2
    alphas = np.concatenate([cumulative[:1], cumulative[1:] / cumulative[:-1]])
    return 1.0 - alphas


def alphas_cumprod(config: DiffusionConfig) -> np.ndarray:
    """prod_{s<=t} (1 - beta_s), float32 as the reference stores it."""
    return np.cumprod(1.0 - betas(config)).astype(np.float32)


def _per_sample(values: jax.Array, timesteps: jax.Array, ndim: int) -> jax.Array:
    return values[timesteps].reshape(-1, *([1] * (ndim - 1)))


def training_target(latents: jax.Array, noise: jax.Array, timesteps: jax.Array, alphas: jax.Array,
                    prediction_type: str) -> jax.Array:
    """What the UNet learns to output at x_t: eps, or v = sqrt(a_t) eps - sqrt(1 - a_t) x_0."""
    if prediction_type == "epsilon":
        return noise
    a = _per_sample(alphas, timesteps, latents.ndim)
    return jnp.sqrt(a) * noise - jnp.sqrt(1.0 - a) * latents


def add_noise(latents: jax.Array, noise: jax.Array, timesteps: jax.Array, alphas: jax.Array) -> jax.Array:
    """q(x_t | x_0) = sqrt(a_t) x_0 + sqrt(1 - a_t) eps. latents/noise (B, h, w, c), timesteps (B,)."""
    a = _per_sample(alphas, timesteps, latents.ndim)
    return jnp.sqrt(a) * latents + jnp.sqrt(1.0 - a) * noise
