"""Building blocks shared by the networks: normalisation and attention with the reference's numerics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class GroupNorm(nnx.Module):
    """GroupNorm over the channel (last) axis, computed in float32 as LDM's `GroupNorm32`.

    x: (B, ..., C) -> same shape and dtype.
    """

    def __init__(self, channels: int, *, groups: int, epsilon: float, rngs: nnx.Rngs):
        if channels % groups:
            raise ValueError(f"GroupNorm: {channels} channels do not divide into {groups} groups; "
                             "choose widths that are multiples of the group count")
        self.norm = nnx.GroupNorm(channels, num_groups=groups, epsilon=epsilon, use_fast_variance=False,
                                  dtype=jnp.float32, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(x.astype(jnp.float32)).astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm computed in float32 (PyTorch's default eps 1e-5 unless given)."""

    def __init__(self, features: int, *, epsilon: float = 1e-5, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(features, epsilon=epsilon, use_fast_variance=False, dtype=jnp.float32, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(x.astype(jnp.float32)).astype(x.dtype)


def split_heads(x: jax.Array, heads: int) -> jax.Array:
    """(B, T, C) -> (B, T, heads, C // heads)."""
    return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, *, causal: bool = False,
              implementation: str | None = None) -> jax.Array:
    """Multi-head scaled dot-product attention, scale head_dim^-0.5, softmax in float32.

    q: (B, Tq, C), k/v: (B, Tk, C) -> (B, Tq, C).
    """
    batch, length, channels = q.shape
    out = jax.nn.dot_product_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads),
                                       is_causal=causal, implementation=implementation)
    return out.reshape(batch, length, channels)


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)
