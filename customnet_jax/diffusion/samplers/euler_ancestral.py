"""Euler ancestral: each Euler step goes down to sigma_down and adds fresh N(0, sigma_up^2) noise, as diffusers'
EulerAncestralDiscreteScheduler (eta 1). The draws come from the key, or from `noises` (S, *x_T.shape) for
reference comparisons."""

from __future__ import annotations

from customnet_jax.diffusion.samplers.base import register
from customnet_jax.diffusion.samplers.euler import Euler, EulerSchedule, euler_schedule
from customnet_jax.diffusion.schedule import DiffusionConfig


@register
class EulerAncestral(Euler):
    """Euler with fresh noise each step (stochastic: the seed changes the picture beyond x_T)."""

    name = "euler_ancestral"

    def schedule(self, diffusion: DiffusionConfig, steps: int, *, spacing: str) -> EulerSchedule:
        return euler_schedule(diffusion, steps, spacing, ancestral=True)
