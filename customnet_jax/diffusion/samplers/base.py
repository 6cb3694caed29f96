"""The `Sampler` interface, the registry of samplers, and the schedule pieces several samplers share.

A sampler is two things (docs/samplers.md):
- `schedule(diffusion, steps, **options)`: host side, numpy; checks its options and returns the whole plan as a
  pytree (a `flax.struct` dataclass: per-step arrays are leaves, choices that change the program are static
  fields), so that a jitted caller compiles one program per (sampler, steps);
- `sample(model_fn, x_T, schedule, key, noises, on_step)`: pure; runs every step as one `lax.scan`. The model is
  only seen through `model_fn(x, timesteps (B,))`, its (guided) output: eps or v as the schedule says.
x_T is always N(0, I) noise; x_0 comes back. `noises` (num_steps, *x_T.shape) replaces the sampler's own random
draws (reference tests feed a reference implementation the same ones).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import numpy as np

from customnet_jax.diffusion.schedule import DiffusionConfig, alphas_cumprod

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
SPACINGS = ("leading", "trailing")  # diffusers' timestep_spacing values that give integer timesteps


@dataclasses.dataclass(frozen=True)
class Option:
    """One option a sampler takes; a command-line flag `--name` (sampling/flags.py)."""

    name: str
    type: type
    help: str
    default: Any = None  # a value, or a function of the model's DiffusionConfig
    choices: tuple[str, ...] | None = None

    def default_for(self, diffusion: DiffusionConfig) -> Any:
        return self.default(diffusion) if callable(self.default) else self.default


def default_spacing(diffusion: DiffusionConfig) -> str:
    del diffusion  # trailing starts every grid at t = T - 1, where x_T is (close to) pure noise
    return "trailing"


SPACING = Option("spacing", str, "timestep grid: 'trailing' starts at the last training timestep, 'leading' at "
                 "multiples of T // steps (+1) as LDM", default_spacing, SPACINGS)


class Sampler(abc.ABC):
    """A named sampler. Subclasses set `name`, `options`, `min_steps` and implement `schedule` and `sample`."""

    name: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()
    min_steps: ClassVar[int] = 1

    def resolve(self, diffusion: DiffusionConfig, steps: int, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """The options with defaults filled in (None means default); refuses options this sampler does not take
        and steps out of range, with a one-line message."""
        known = {o.name: o for o in self.options}
        given = {k: v for k, v in (options or {}).items() if v is not None}
        unknown = sorted(set(given) - set(known))
        if unknown:
            takes = ", ".join(known) or "none"
            raise ValueError(f"sampler {self.name} does not take {', '.join(unknown)} (its options: {takes})")
        maximum = diffusion.num_train_timesteps
        if not isinstance(steps, int | np.integer) or not self.min_steps <= steps <= maximum:
            raise ValueError(f"steps must be between {self.min_steps} and {maximum} for sampler {self.name}, "
                             f"got {steps}")
        resolved = {}
        for name, option in known.items():
            value = given.get(name, option.default_for(diffusion))
            if option.choices is not None and value not in option.choices:
                raise ValueError(f"{name} {value!r} for sampler {self.name}: use one of {option.choices}")
            resolved[name] = option.type(value)
        return resolved

    @abc.abstractmethod
    def schedule(self, diffusion: DiffusionConfig, steps: int, **options: Any) -> Any:
        """The plan for `steps` model evaluations, as a pytree; options already resolved."""

    @abc.abstractmethod
    def sample(self, model_fn: ModelFn, x_T: jax.Array, schedule: Any, key: jax.Array | None = None,
               noises: jax.Array | None = None, on_step: Callable[[jax.Array], None] | None = None) -> jax.Array:
        """x_T (B, h, w, c) -> x_0, all steps in one `lax.scan`; `on_step(i)` runs as a host callback."""


REGISTRY: dict[str, Sampler] = {}


def register(cls: type[Sampler]) -> type[Sampler]:
    """Class decorator: make a sampler available by its name (`--sampler NAME`)."""
    if cls.name in REGISTRY:
        raise ValueError(f"a sampler named {cls.name!r} is already registered")
    REGISTRY[cls.name] = cls()
    return cls


def get(name: str) -> Sampler:
    if name not in REGISTRY:
        raise ValueError(f"unknown sampler {name!r}: use one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def make_schedule(name: str, diffusion: DiffusionConfig, steps: int,
                  options: Mapping[str, Any] | None = None) -> tuple[Sampler, Any, dict[str, Any]]:
    """Name, model config, steps, options -> (sampler, schedule, resolved options). Every check runs here, on the
    host, before anything is compiled."""
    sampler = get(name)
    resolved = sampler.resolve(diffusion, steps, options)
    return sampler, sampler.schedule(diffusion, steps, **resolved), resolved


# ------------------------------------------------------------------------------------- shared schedule parts


def timestep_grid(total: int, steps: int, spacing: str, multistep: bool = False) -> np.ndarray:
    """Descending integer timesteps as diffusers' `set_timesteps` (steps_offset=1 for 'leading', as SD 1.x).

    The multistep solvers (DPM-Solver++, UniPC) space 'leading' grids by T // (steps + 1), Euler by T // steps.
    """
    if spacing == "trailing":
        grid = np.arange(total, 0, -total / steps).round().astype(np.int64) - 1
    elif spacing == "leading":
        divisions = steps + 1 if multistep else steps
        grid = (np.arange(0, divisions) * (total // divisions)).round()[::-1].astype(np.int64)[:steps] + 1
    else:
        raise ValueError(f"spacing {spacing!r}: use one of {SPACINGS}")
    if len(grid) != steps or np.any(np.diff(grid) >= 0) or grid[0] >= total:
        raise ValueError(f"steps {steps} give no grid of distinct timesteps with {spacing} spacing; use fewer")
    return grid


def sigmas_at(alphas_cumprod: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
    """sigma_t = sqrt((1 - a_t) / a_t) (float64) at the given timesteps, then 0 appended (x_0 at the end).

    A zero-terminal-SNR schedule has a_T = 0 and so sigma_T = inf: a_T is taken as 2**-24 there, as diffusers'
    schedulers do (x_T is then pure noise to float32 precision)."""
    acp = np.asarray(alphas_cumprod, np.float32).copy()
    if acp[-1] == 0:
        acp[-1] = 2.0**-24
    acp = acp.astype(np.float64)
    return np.concatenate([np.sqrt((1 - acp) / acp)[timesteps], [0.0]])


def alpha_sigma(sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Variance-exploding sigma -> the variance-preserving (alpha_t, sigma_t) with x_t = alpha_t x_0 + sigma_t eps."""
    alpha = 1.0 / np.sqrt(sigmas**2 + 1.0)
    return alpha, sigmas * alpha


def x0_coefficients(alpha: np.ndarray, sigma: np.ndarray, prediction_type: str) -> tuple[np.ndarray, np.ndarray]:
    """(c_x, c_out) with predicted x_0 = c_x x_t + c_out output, for x_t = alpha x_0 + sigma eps."""
    if prediction_type == "v_prediction":  # v = alpha eps - sigma x_0
        return alpha, -sigma
    return 1.0 / alpha, -sigma / alpha


def check_noises(noises: jax.Array | None, steps: int, shape: tuple[int, ...]) -> None:
    if noises is not None and noises.shape != (steps, *shape):
        raise ValueError(f"noises have shape {noises.shape}, expected {(steps, *shape)}")


def draw_noise(key: jax.Array | None, noises: jax.Array | None, index: jax.Array, like: jax.Array) -> jax.Array:
    """Step `index`'s N(0, 1) draw: from `noises` when given, else from `key` folded with the index, else zeros."""
    if noises is not None:
        return noises[index]
    if key is not None:
        return jax.random.normal(jax.random.fold_in(key, index), like.shape, like.dtype)
    return jax.numpy.zeros_like(like)


@dataclasses.dataclass(frozen=True)
class NoiseLevels:
    """A grid's timesteps (S,) and, at them and at the end (S + 1,): VE sigma, VP alpha_t and sigma_t, and the
    half log-SNR lambda = log(alpha_t / sigma_t) (+inf at the end, where sigma_t = 0)."""

    timesteps: np.ndarray
    sigmas: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    lambdas: np.ndarray


def noise_levels(diffusion: DiffusionConfig, steps: int, spacing: str, multistep: bool) -> NoiseLevels:
    """The levels a sigma-space sampler walks, rounded to float32 first as diffusers keeps them."""
    timesteps = timestep_grid(diffusion.num_train_timesteps, steps, spacing, multistep)
    sigmas = sigmas_at(alphas_cumprod(diffusion), timesteps).astype(np.float32).astype(np.float64)
    alpha, sigma = alpha_sigma(sigmas)
    with np.errstate(divide="ignore"):
        lambdas = np.log(alpha) - np.log(sigma)
    return NoiseLevels(timesteps.astype(np.int32), sigmas, alpha, sigma, lambdas)


def as_float32(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(a, np.float32) for a in arrays)
