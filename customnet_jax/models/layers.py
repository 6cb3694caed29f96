"""Building blocks shared by the networks: normalisation and attention with the reference's numerics."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from customnet_jax.models import pallas_attention


class GroupNorm(nnx.Module):
    """GroupNorm over the channel (last) axis, computed in float32 as LDM's `GroupNorm32`.

    x: (B, ..., C) -> same shape and dtype. flax's `nnx.GroupNorm` holds the parameters (`norm.scale`, `norm.bias`);
    the statistics are taken per channel first, with the channels on the TPU's 128-wide lanes, and only then summed
    into groups: flax's (B, ..., groups, C / groups) form puts C / groups (10 to 40 in the UNet) on the lanes,
    padded to 128, which made GroupNorm's reductions a tenth of the full-size train step by the TPU compiler
    (docs/tpu.md). Same two-pass statistics as flax's (mean, then the mean of squared deviations).
    """

    def __init__(self, channels: int, *, groups: int, epsilon: float, rngs: nnx.Rngs):
        if channels % groups:
            raise ValueError(f"GroupNorm: {channels} channels do not divide into {groups} groups; "
                             "choose widths that are multiples of the group count")
        self.groups, self.epsilon = groups, epsilon
        self.norm = nnx.GroupNorm(channels, num_groups=groups, epsilon=epsilon, use_fast_variance=False,
                                  dtype=jnp.float32, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        batch, channels = x.shape[0], x.shape[-1]
        spatial = tuple(range(1, x.ndim - 1))
        count = math.prod(x.shape[1:-1]) * (channels // self.groups)

        def per_group(channel_sums: jax.Array) -> jax.Array:  # (B, C) -> (B, 1, ..., C): the group's value
            sums = channel_sums.reshape(batch, self.groups, channels // self.groups).sum(-1) / count
            return jnp.repeat(sums, channels // self.groups, axis=-1).reshape(batch, *(1,) * len(spatial), channels)

        centered = x32 - per_group(jnp.sum(x32, axis=spatial))
        variance = per_group(jnp.sum(jnp.square(centered), axis=spatial))
        scale = jax.lax.rsqrt(variance + self.epsilon) * self.norm.scale[...]
        return (centered * scale + self.norm.bias[...]).astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm computed in float32 (PyTorch's default eps 1e-5 unless given)."""

    def __init__(self, features: int, *, epsilon: float = 1e-5, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(features, epsilon=epsilon, use_fast_variance=False, dtype=jnp.float32, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(x.astype(jnp.float32)).astype(x.dtype)


def split_heads(x: jax.Array, heads: int) -> jax.Array:
    """(B, T, C) -> (B, T, heads, C // heads)."""
    return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)


ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "per_head", "splash")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, *, causal: bool = False,
              implementation: str | None = None) -> jax.Array:
    """Multi-head scaled dot-product attention, scale head_dim^-0.5, softmax in float32: the one switch that every
    network's attention (UNet, VAE, CLIP) goes through.

    q: (B, Tq, C), k/v: (B, Tk, C) -> (B, Tq, C). `implementation`: None (jax's choice), "xla", "cudnn"
    (jax.nn.dot_product_attention's), "per_head": one (sample, head) at a time, for CPUs (`per_head_attention`),
    or "splash": the Pallas TPU kernel, run per device under `shard_map` over the mesh the caller runs under
    (`under_mesh`; see `models/pallas_attention.py`).

    One key (the UNet's attention to the object token) is v for every query, whatever the implementation: the
    softmax of one finite logit is exactly 1 and its gradient to q and k exactly 0, so nothing is lost by not
    computing them (the full-size v5p-8 train step: 82.5 -> 81.9 ms by the TPU compiler, docs/tpu.md).
    """
    if k.shape[1] == 1:  # CustomNet's object token: softmax over one key is exactly 1, the output v (see above)
        return jnp.broadcast_to(v, (v.shape[0], q.shape[1], v.shape[2])).astype(q.dtype)
    if implementation == "per_head":
        return per_head_attention(q, k, v, heads, causal=causal)
    if implementation == "splash":
        out = pallas_attention.splash_attention(q, k, v, heads, causal=causal)
        if out is not None:
            return out  # else: a shape the kernel does not take (short or odd sequences): jax's attention below
    batch, length, channels = q.shape
    out = jax.nn.dot_product_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads),
                                       is_causal=causal, implementation=None if implementation == "splash" else
                                       implementation)
    return out.reshape(batch, length, channels)


REMAT_POLICIES = {  # what a rematerialised block keeps from its forward pass (jax.checkpoint_policies)
    "full": None,  # nothing: the whole block is recomputed in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # matmul / conv outputs kept
    "offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),  # kept in host RAM
}


def remat_policy(remat: bool | str) -> tuple[bool, object]:
    """`remat` as given to the networks (False, True = "full", or a REMAT_POLICIES name) -> (on, policy)."""
    if remat is False or remat is None:
        return False, None
    name = "full" if remat is True else remat
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat {remat!r}: use False, True or one of {tuple(REMAT_POLICIES)}")
    return True, REMAT_POLICIES[name]


def set_attention(model: nnx.Module, implementation: str | None) -> None:
    """Choose `attention`'s implementation for every attention of `model` (modules with an
    `attention_implementation` attribute: the UNet's, the VAE's and both CLIP towers')."""
    if implementation is not None and implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention {implementation!r}: use None or one of {ATTENTION_IMPLEMENTATIONS}")
    for _, module in nnx.iter_modules(model):
        if hasattr(module, "attention_implementation"):
            module.attention_implementation = implementation


@contextlib.contextmanager
def under_mesh(mesh: Mesh | None) -> Iterator[None]:
    """Run the code inside (traced, inside jit) under `mesh`, so that a kernel needing `shard_map` finds it
    (`jax.sharding.get_abstract_mesh()`); a no-op without a mesh."""
    if mesh is None:
        yield
        return
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        yield


def per_head_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, *, causal: bool = False) -> jax.Array:
    """Attention one (sample, head) at a time (lax.map), each recomputed in the backward pass (jax.checkpoint).

    XLA:CPU has no fused attention kernel: jax.nn.dot_product_attention there materialises the whole
    (B, heads, Tq, Tk) logits several times, while one head's (Tq, Tk) (4 MB at 1024 tokens) stays in cache.
    Measured on a 2-core CPU (benchmarks/RESULTS.md): the UNet forward and the sampling loop twice as fast.
    """
    b, tq, c = q.shape
    d = c // heads
    to_heads = lambda x: x.reshape(b, x.shape[1], heads, d).transpose(0, 2, 1, 3).reshape(b * heads, x.shape[1], d)
    mask = jnp.tril(jnp.ones((tq, k.shape[1]), bool)) if causal else None

    @jax.checkpoint
    def one(qkv):
        qh, kh, vh = qkv
        logits = jnp.dot(qh, kh.T, preferred_element_type=jnp.float32) * d**-0.5
        if mask is not None:
            logits = jnp.where(mask, logits, -jnp.inf)
        return jnp.dot(jax.nn.softmax(logits, axis=-1).astype(vh.dtype), vh)

    out = jax.lax.map(one, (to_heads(q), to_heads(k), to_heads(v)))
    return out.reshape(b, heads, tq, d).transpose(0, 2, 1, 3).reshape(b, tq, c)


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)
