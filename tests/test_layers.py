"""models/layers.GroupNorm (statistics per channel, then summed into groups) against torch's group_norm."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from customnet_jax.models.layers import GroupNorm


def torch_group_norm(x: np.ndarray, groups: int, scale: np.ndarray, bias: np.ndarray, epsilon: float) -> np.ndarray:
    """(B, ..., C) through torch.nn.functional.group_norm, which takes the channels second."""
    channels_first = torch.from_numpy(np.moveaxis(x, -1, 1).astype(np.float64))
    out = torch.nn.functional.group_norm(channels_first, groups, torch.from_numpy(scale.astype(np.float64)),
                                         torch.from_numpy(bias.astype(np.float64)), epsilon)
    return np.moveaxis(out.numpy(), 1, -1)


@pytest.mark.parametrize("shape", [(2, 6, 5, 64), (3, 7, 64), (1, 2, 3, 4, 64)], ids=["image", "tokens", "volume"])
def test_group_norm_matches_torch(shape):
    """float32 to 2e-5 relative to torch in float64, on inputs offset by 100 (where one-pass statistics lose
    digits); the dtype is kept. Negative control: groups taken as every 32nd channel instead of 2 adjacent ones."""
    rng = np.random.default_rng(0)
    norm = GroupNorm(64, groups=32, epsilon=1e-5, rngs=nnx.Rngs(0))
    scale, bias = rng.normal(size=64).astype(np.float32), rng.normal(size=64).astype(np.float32)
    norm.norm.scale[...], norm.norm.bias[...] = jnp.asarray(scale), jnp.asarray(bias)
    x = (100.0 + rng.normal(size=shape) * rng.uniform(0.5, 3.0, size=64)).astype(np.float32)
    reference = torch_group_norm(x, 32, scale, bias, 1e-5)
    ours = np.asarray(norm(jnp.asarray(x)))
    assert ours.dtype == np.float32
    assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) < 2e-5
    strided = np.moveaxis(torch_group_norm(np.moveaxis(x.reshape(*shape[:-1], 2, 32), -1, -2).reshape(shape),
                                           32, np.ones(64, np.float32), np.zeros(64, np.float32), 1e-5)
                          .reshape(*shape[:-1], 32, 2), -1, -2).reshape(shape) * scale + bias
    assert np.linalg.norm(strided - reference) / np.linalg.norm(reference) > 1e-2
    half = norm(jnp.asarray(x, jnp.bfloat16))
    assert half.dtype == jnp.bfloat16
