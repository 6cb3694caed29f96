"""The DDPM noise schedule of Stable Diffusion 1.x ("scaled_linear" betas, eps prediction, SPEC §7)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"  # or "linear"

    def __post_init__(self):
        if self.beta_schedule not in ("scaled_linear", "linear"):
            raise ValueError(f"beta_schedule {self.beta_schedule!r}: use 'scaled_linear' or 'linear'")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError("need 0 < beta_start < beta_end < 1")


def betas(config: DiffusionConfig) -> np.ndarray:
    """float64 (T,), computed as LDM's make_beta_schedule (linspace of sqrt in float64, then squared)."""
    if config.beta_schedule == "scaled_linear":
        return np.linspace(config.beta_start**0.5, config.beta_end**0.5, config.num_train_timesteps,
                           dtype=np.float64) ** 2
    return np.linspace(config.beta_start, config.beta_end, config.num_train_timesteps, dtype=np.float64)


def alphas_cumprod(config: DiffusionConfig) -> np.ndarray:
    """prod_{s<=t} (1 - beta_s), float32 as the reference stores it."""
    return np.cumprod(1.0 - betas(config)).astype(np.float32)


def add_noise(latents: jax.Array, noise: jax.Array, timesteps: jax.Array, alphas: jax.Array) -> jax.Array:
    """q(x_t | x_0) = sqrt(a_t) x_0 + sqrt(1 - a_t) eps. latents/noise (B, h, w, c), timesteps (B,)."""
    a = alphas[timesteps].reshape(-1, *([1] * (latents.ndim - 1)))
    return jnp.sqrt(a) * latents + jnp.sqrt(1.0 - a) * noise
