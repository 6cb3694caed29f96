"""Flat views of an NNX model's parameters: path -> shape / array, and writing arrays back."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Path = tuple[str | int, ...]  # a parameter's place in the model: attribute names and list indices


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the model: missing or unexpected keys, or wrong shapes."""


def param_shapes(model: nnx.Module) -> dict[Path, tuple[int, ...]]:
    """path -> shape of every nnx.Param (works on an `nnx.eval_shape` model: nothing is allocated)."""
    return {path: tuple(var.shape) for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def get_params(model: nnx.Module) -> dict[Path, np.ndarray]:
    """path -> numpy array (a writable copy) of every nnx.Param."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {path: np.array(jax.device_get(var.get_value())) for path, var in flat}


def set_params(model: nnx.Module, params: Mapping[Path, np.ndarray]) -> None:
    """Write `params` into `model` in place; every parameter must be given with its exact shape."""
    state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    missing = sorted(str(p) for p in set(flat) - set(params))
    unexpected = sorted(str(p) for p in set(params) - set(flat))
    if missing or unexpected:
        raise CheckpointMismatchError(f"parameters missing {missing[:8]}, unexpected {unexpected[:8]}")
    for path, var in flat.items():
        value = params[path]
        if tuple(value.shape) != tuple(var.shape):
            raise CheckpointMismatchError(
                f"parameter {path}: got shape {tuple(value.shape)}, model has {tuple(var.shape)}")
        var.set_value(jnp.asarray(value, dtype=var.dtype))
    nnx.update(model, state)
