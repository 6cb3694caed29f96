"""The CustomNet / Zero-1-to-3 denoising UNet (LDM `openaimodel.UNetModel`) with dual cross-attention.

Every cross-attention attends to the object token with the original to_k/to_v and, in CustomNet mode,
to the text tokens with a second pair to_k_text/to_v_text; the two softmax outputs are summed before the
shared output projection (docs/model.md §3). With `text_context=False` it is the Zero-1-to-3 UNet.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from customnet_jax.models import pallas_attention
from customnet_jax.models.layers import GroupNorm, LayerNorm, attention, remat_policy, set_attention


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Architecture of the UNet; the defaults are the full-size CustomNet UNet (SD-1.x widths)."""

    in_channels: int = 8  # noisy latent 4 + object latent 4 (+ background latent 4 for composition)
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (0, 1, 2)  # levels (downsample factor 2**level) with transformers
    num_heads: int = 8
    transformer_depth: int = 1
    context_dim: int = 768
    text_context: bool = True  # False: Zero-1-to-3 (no text K/V; context = object tokens only)
    object_tokens: int = 1  # leading context tokens that are the object embedding
    norm_groups: int = 32

    def __post_init__(self):
        widths = {self.model_channels * m for m in self.channel_mult}
        for width in sorted(widths):
            if width % self.norm_groups:
                raise ValueError(f"UNetConfig: width {width} is not divisible into {self.norm_groups} GroupNorm "
                                 "groups; change model_channels/channel_mult or norm_groups")
            if width % self.num_heads:
                raise ValueError(f"UNetConfig: width {width} does not divide into {self.num_heads} attention heads")
        if self.model_channels % 2:
            raise ValueError("UNetConfig: model_channels must be even (sinusoidal timestep embedding)")
        bad = [lvl for lvl in self.attention_levels if not 0 <= lvl < len(self.channel_mult)]
        if bad:
            raise ValueError(f"UNetConfig: attention_levels {bad} outside 0..{len(self.channel_mult) - 1}")
        if self.object_tokens < 1:
            raise ValueError("UNetConfig: object_tokens must be at least 1")

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


def timestep_embedding(timesteps: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding ordered [cos, sin] as LDM: (B,) -> (B, dim), float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = timesteps.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _conv(cin: int, cout: int, kernel: int, rngs: nnx.Rngs, dtype, stride: int = 1) -> nnx.Conv:
    pad = kernel // 2
    return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)), dtype=dtype,
                    rngs=rngs)


class ResBlock(nnx.Module):
    """GN-SiLU-conv, + Linear(SiLU(emb)), GN-SiLU-conv, with a 1x1 skip when channels change."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, *, rngs: nnx.Rngs, dtype):
        self.norm1 = GroupNorm(cin, groups=groups, epsilon=1e-5, rngs=rngs)
        self.conv1 = _conv(cin, cout, 3, rngs, dtype)
        self.time_proj = nnx.Linear(emb_dim, cout, dtype=dtype, rngs=rngs)
        self.norm2 = GroupNorm(cout, groups=groups, epsilon=1e-5, rngs=rngs)
        self.conv2 = _conv(cout, cout, 3, rngs, dtype)
        self.skip = _conv(cin, cout, 1, rngs, dtype) if cin != cout else None

    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = h + self.time_proj(nnx.silu(emb))[:, None, None, :]
        h = self.conv2(nnx.silu(self.norm2(h)))
        return (x if self.skip is None else self.skip(x)) + h


class Attention(nnx.Module):
    """Multi-head attention without q/k/v bias. Self-attention when no context is given.

    With `text_kv`, the context is [object tokens | text tokens]: the object part goes through to_k/to_v,
    the text part through to_k_text/to_v_text, and the two attention outputs are summed (docs/model.md §3).
    """

    def __init__(self, dim: int, context_dim: int, heads: int, *, text_kv: bool, object_tokens: int,
                 rngs: nnx.Rngs, dtype):
        linear = lambda cin: nnx.Linear(cin, dim, use_bias=False, dtype=dtype, rngs=rngs)
        self.heads = heads
        self.object_tokens = object_tokens
        self.to_q = linear(dim)
        self.to_k = linear(context_dim)
        self.to_v = linear(context_dim)
        self.to_k_text = linear(context_dim) if text_kv else None
        self.to_v_text = linear(context_dim) if text_kv else None
        self.to_out = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)
        self.attention_implementation: str | None = None  # layers.attention's; set by layers.set_attention

    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        if context is None and self.attention_implementation == "splash":
            out = self._splash_self_attention(x)
            if out is not None:
                return out
        q = self.to_q(x)
        run = lambda k, v: attention(q, k, v, self.heads, implementation=self.attention_implementation)
        if context is None:  # self-attention
            return self.to_out(run(self.to_k(x), self.to_v(x)))
        objects = context[:, :self.object_tokens]
        out = run(self.to_k(objects), self.to_v(objects))
        if self.to_k_text is not None:
            text = context[:, self.object_tokens:]
            out = out + run(self.to_k_text(text), self.to_v_text(text))
        return self.to_out(out)

    def _splash_self_attention(self, x: jax.Array) -> jax.Array | None:
        """Self-attention by the splash kernel with the projections folded around it (`pallas_attention`), or None
        when the kernel does not take the shape or a projection is not a plain Linear (a LoRA adapter)."""
        projections = (self.to_q, self.to_k, self.to_v, self.to_out)
        if any(type(p) is not nnx.Linear for p in projections):
            return None
        dtype = self.to_q.dtype or jnp.result_type(x, self.to_q.kernel[...])
        out = pallas_attention.splash_self_attention(x, self.heads, *(p.kernel[...] for p in projections), dtype)
        return None if out is None else out + self.to_out.bias[...].astype(dtype)


class FeedForward(nnx.Module):
    """GEGLU: Linear C -> 8C, split (h, gate), h * gelu(gate) (exact erf), Linear 4C -> C."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype):
        self.proj = nnx.Linear(dim, 8 * dim, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(4 * dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h, gate = jnp.split(self.proj(x), 2, axis=-1)
        return self.out(h * jax.nn.gelu(gate, approximate=False))


class TransformerBlock(nnx.Module):
    """x += attn1(LN(x)); x += attn2(LN(x), context); x += ff(LN(x))."""

    def __init__(self, dim: int, config: UNetConfig, *, rngs: nnx.Rngs, dtype):
        heads = config.num_heads
        self.norm1 = LayerNorm(dim, rngs=rngs)
        self.attn1 = Attention(dim, dim, heads, text_kv=False, object_tokens=0, rngs=rngs, dtype=dtype)
        self.norm2 = LayerNorm(dim, rngs=rngs)
        self.attn2 = Attention(dim, config.context_dim, heads, text_kv=config.text_context,
                               object_tokens=config.object_tokens, rngs=rngs, dtype=dtype)
        self.norm3 = LayerNorm(dim, rngs=rngs)
        self.ff = FeedForward(dim, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nnx.Module):
    """GN (eps 1e-6), 1x1-conv proj_in, transformer blocks over the H*W tokens, 1x1-conv proj_out, residual."""

    def __init__(self, dim: int, config: UNetConfig, *, rngs: nnx.Rngs, dtype):
        self.norm = GroupNorm(dim, groups=config.norm_groups, epsilon=1e-6, rngs=rngs)
        self.proj_in = _conv(dim, dim, 1, rngs, dtype)
        self.blocks = nnx.List([TransformerBlock(dim, config, rngs=rngs, dtype=dtype)
                                for _ in range(config.transformer_depth)])
        self.proj_out = _conv(dim, dim, 1, rngs, dtype)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        h = self.proj_in(self.norm(x)).reshape(batch, height * width, channels)
        for block in self.blocks:
            h = block(h, context)
        return x + self.proj_out(h.reshape(batch, height, width, channels))


class Downsample(nnx.Module):
    """3x3 conv, stride 2, padding 1."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype):
        self.conv = _conv(dim, dim, 3, rngs, dtype, stride=2)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest x2, then 3x3 conv."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype):
        self.conv = _conv(dim, dim, 3, rngs, dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class Level(nnx.Module):
    """One resolution level: res blocks, each optionally followed by a spatial transformer, and a resampler."""

    def __init__(self, resnets: list[ResBlock], attentions: list[SpatialTransformer],
                 resample: Downsample | Upsample | None):
        self.resnets = nnx.List(resnets)
        self.attentions = nnx.List(attentions)
        self.resample = resample


class TimestepEmbedding(nnx.Module):
    def __init__(self, dim: int, emb_dim: int, *, rngs: nnx.Rngs, dtype):
        self.dim = dim
        self.linear_1 = nnx.Linear(dim, emb_dim, dtype=dtype, rngs=rngs)
        self.linear_2 = nnx.Linear(emb_dim, emb_dim, dtype=dtype, rngs=rngs)

    def __call__(self, timesteps: jax.Array) -> jax.Array:
        return self.linear_2(nnx.silu(self.linear_1(timestep_embedding(timesteps, self.dim))))


class MiddleBlock(nnx.Module):
    def __init__(self, dim: int, config: UNetConfig, *, rngs: nnx.Rngs, dtype):
        emb = config.time_embed_dim
        self.resnet_1 = ResBlock(dim, dim, emb, config.norm_groups, rngs=rngs, dtype=dtype)
        self.attention = SpatialTransformer(dim, config, rngs=rngs, dtype=dtype)
        self.resnet_2 = ResBlock(dim, dim, emb, config.norm_groups, rngs=rngs, dtype=dtype)


class UNet(nnx.Module):
    """eps prediction: x (B, H, W, in_channels), timesteps (B,), context (B, T, context_dim) -> (B, H, W, 4).

    context = [object token(s) | text tokens] in CustomNet mode, the object token(s) alone in zero123 mode.
    `down_levels[l]` is level l (downsample 2**l); `up_levels[k]` runs k-th, from the deepest level up.
    `remat` recomputes each block's activations in the backward pass (jax.checkpoint) to save memory: True or
    "full", or a policy of layers.REMAT_POLICIES ("dots": keep matmul outputs, "offload": keep them in host RAM).
    `attention` picks layers.attention's implementation (None: jax's; "per_head" is the fast one on CPUs,
    "splash" the Pallas TPU kernel).
    """

    def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, remat: bool | str = False,
                 attention: str | None = None):
        self.config = config
        self.dtype = dtype
        self.remat, self.remat_policy = remat_policy(remat)
        c = config
        emb, groups = c.time_embed_dim, c.norm_groups
        widths = [c.model_channels * m for m in c.channel_mult]
        last = len(widths) - 1
        self.time_embedding = TimestepEmbedding(c.model_channels, emb, rngs=rngs, dtype=dtype)
        self.conv_in = _conv(c.in_channels, c.model_channels, 3, rngs, dtype)

        skip_widths = [c.model_channels]
        down, cin = [], c.model_channels
        for level, width in enumerate(widths):
            resnets, attentions = [], []
            for _ in range(c.num_res_blocks):
                resnets.append(ResBlock(cin, width, emb, groups, rngs=rngs, dtype=dtype))
                if level in c.attention_levels:
                    attentions.append(SpatialTransformer(width, c, rngs=rngs, dtype=dtype))
                cin = width
                skip_widths.append(width)
            resample = Downsample(width, rngs=rngs, dtype=dtype) if level != last else None
            if resample is not None:
                skip_widths.append(width)
            down.append(Level(resnets, attentions, resample))
        self.down_levels = nnx.List(down)
        self.middle = MiddleBlock(cin, c, rngs=rngs, dtype=dtype)

        up = []
        for level in reversed(range(len(widths))):
            width = widths[level]
            resnets, attentions = [], []
            for _ in range(c.num_res_blocks + 1):
                resnets.append(ResBlock(cin + skip_widths.pop(), width, emb, groups, rngs=rngs, dtype=dtype))
                if level in c.attention_levels:
                    attentions.append(SpatialTransformer(width, c, rngs=rngs, dtype=dtype))
                cin = width
            up.append(Level(resnets, attentions, Upsample(width, rngs=rngs, dtype=dtype) if level else None))
        self.up_levels = nnx.List(up)
        self.norm_out = GroupNorm(cin, groups=groups, epsilon=1e-5, rngs=rngs)
        self.conv_out = _conv(cin, c.out_channels, 3, rngs, dtype)
        set_attention(self, attention)

    def _run(self, block: nnx.Module, *args: jax.Array) -> jax.Array:
        if self.remat:
            return nnx.remat(lambda module, *a: module(*a), policy=self.remat_policy)(block, *args)
        return block(*args)

    def check_inputs(self, x: jax.Array, timesteps: jax.Array, context: jax.Array) -> None:
        """Shape checks at trace time, with messages that say what to pass instead."""
        c = self.config
        if x.ndim != 4 or x.shape[-1] != c.in_channels:
            raise ValueError(f"UNet input has shape {x.shape}; expected (B, H, W, {c.in_channels}) channels-last "
                             f"(noisy latent, object latent{', background latent' if c.in_channels == 12 else ''})")
        if x.shape[1] % c.downsample_factor or x.shape[2] % c.downsample_factor:
            raise ValueError(f"UNet input spatial size {x.shape[1:3]} must be a multiple of {c.downsample_factor}")
        if timesteps.shape != (x.shape[0],):
            raise ValueError(f"timesteps have shape {timesteps.shape}; expected ({x.shape[0]},), one per sample")
        if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != c.context_dim:
            raise ValueError(f"context has shape {context.shape}; expected ({x.shape[0]}, T, {c.context_dim})")
        if c.text_context and context.shape[1] <= c.object_tokens:
            raise ValueError(f"CustomNet context has {context.shape[1]} tokens; expected {c.object_tokens} object "
                             "token(s) followed by the text tokens (e.g. 1 + 77)")
        if not c.text_context and context.shape[1] != c.object_tokens:
            raise ValueError(f"Zero-1-to-3 context has {context.shape[1]} tokens; expected exactly "
                             f"{c.object_tokens} object token(s) and no text")

    def __call__(self, x: jax.Array, timesteps: jax.Array, context: jax.Array) -> jax.Array:
        self.check_inputs(x, timesteps, context)
        x = x.astype(self.dtype)
        context = context.astype(self.dtype)
        emb = self.time_embedding(timesteps)

        h = self.conv_in(x)
        skips = [h]
        for level in self.down_levels:
            for j, resnet in enumerate(level.resnets):
                h = self._run(resnet, h, emb)
                if len(level.attentions):
                    h = self._run(level.attentions[j], h, context)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)

        h = self._run(self.middle.resnet_1, h, emb)
        h = self._run(self.middle.attention, h, context)
        h = self._run(self.middle.resnet_2, h, emb)

        for level in self.up_levels:
            for j, resnet in enumerate(level.resnets):
                h = self._run(resnet, jnp.concatenate([h, skips.pop()], axis=-1), emb)
                if len(level.attentions):
                    h = self._run(level.attentions[j], h, context)
            if level.resample is not None:
                h = level.resample(h)

        return self.conv_out(nnx.silu(self.norm_out(h))).astype(jnp.float32)
