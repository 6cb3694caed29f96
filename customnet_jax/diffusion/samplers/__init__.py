"""Samplers behind one interface (base.Sampler), by name: `get("dpmpp_2m")`, `make_schedule(...)`, `names()`.

Adding one: a module with a `@register`ed `Sampler` subclass, imported below (docs/samplers.md).
"""

from customnet_jax.diffusion.samplers import ddim, dpm_solver, euler, euler_ancestral, unipc  # noqa: F401 (register)
from customnet_jax.diffusion.samplers.base import REGISTRY, Option, Sampler, get, make_schedule, register

DEFAULT = "ddim"


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


__all__ = ["DEFAULT", "Option", "Sampler", "get", "make_schedule", "names", "register"]
