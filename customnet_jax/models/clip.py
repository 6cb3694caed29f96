"""CLIP text and vision encoders (OpenAI ViT-L/14), numerically equal to transformers' PyTorch CLIP.

The text encoder is Stable Diffusion's prompt encoder (`CLIPTextModel.last_hidden_state`); the image
encoder is Zero-1-to-3 / CustomNet's object encoder (`CLIPVisionModelWithProjection.image_embeds`).
Both share one pre-LN transformer block.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from customnet_jax.models import layers

ACTIVATIONS = {"quick_gelu": layers.quick_gelu, "gelu": functools.partial(jax.nn.gelu, approximate=False)}


def _check_tower(name: str, width: int, heads: int, activation: str) -> None:
    if width % heads:
        raise ValueError(f"{name}: width {width} is not divisible by {heads} heads; choose a multiple")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{name}: unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)}")


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """openai/clip-vit-large-patch14 text tower."""

    vocab_size: int = 49408
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    max_length: int = 77
    layer_norm_eps: float = 1e-5
    activation: str = "quick_gelu"

    def __post_init__(self):
        _check_tower("CLIPTextConfig", self.width, self.heads, self.activation)


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """openai/clip-vit-large-patch14 vision tower with its projection."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    projection_dim: int = 768
    layer_norm_eps: float = 1e-5
    activation: str = "quick_gelu"

    def __post_init__(self):
        _check_tower("CLIPVisionConfig", self.width, self.heads, self.activation)
        if self.image_size % self.patch_size:
            raise ValueError(f"CLIPVisionConfig: image_size {self.image_size} is not a multiple of "
                             f"patch_size {self.patch_size}")

    @property
    def num_positions(self) -> int:
        """Patches plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1


class Block(nnx.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + fc2(act(fc1(ln_2(x)))).

    x: (B, T, width) -> (B, T, width).
    """

    def __init__(self, width: int, heads: int, mlp_dim: int, *, epsilon: float, activation: str, causal: bool,
                 rngs: nnx.Rngs, dtype=jnp.float32):
        linear = functools.partial(nnx.Linear, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.ln_1 = layers.LayerNorm(width, epsilon=epsilon, rngs=rngs)
        self.q, self.k, self.v, self.out = (linear(width, width) for _ in range(4))
        self.ln_2 = layers.LayerNorm(width, epsilon=epsilon, rngs=rngs)
        self.fc1 = linear(width, mlp_dim)
        self.fc2 = linear(mlp_dim, width)
        self.heads, self.causal, self.activation = heads, causal, activation
        self.attention_implementation: str | None = None  # layers.attention's; set by layers.set_attention

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.ln_1(x)
        x = x + self.out(layers.attention(self.q(h), self.k(h), self.v(h), self.heads, causal=self.causal,
                                            implementation=self.attention_implementation))
        return x + self.fc2(ACTIVATIONS[self.activation](self.fc1(self.ln_2(x))))


def _blocks(config: CLIPTextConfig | CLIPVisionConfig, *, causal: bool, rngs: nnx.Rngs, dtype) -> nnx.List:
    return nnx.List([Block(config.width, config.heads, config.mlp_dim, epsilon=config.layer_norm_eps,
                           activation=config.activation, causal=causal, rngs=rngs, dtype=dtype)
                     for _ in range(config.layers)])


class CLIPTextEncoder(nnx.Module):
    """Token ids (B, L) int, L <= max_length -> last_hidden_state (B, L, width) after the final layer norm.

    Causal self-attention and no padding mask, as Stable Diffusion calls `CLIPTextModel`.
    """

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, attention: str | None = None):
        self.config, self.dtype = config, dtype
        self.token_embedding = nnx.Embed(config.vocab_size, config.width, dtype=dtype, param_dtype=jnp.float32,
                                         embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.position_embedding = nnx.Param(nnx.initializers.normal(0.01)(rngs.params(),
                                                                           (config.max_length, config.width)))
        self.layers = _blocks(config, causal=True, rngs=rngs, dtype=dtype)
        self.final_layer_norm = layers.LayerNorm(config.width, epsilon=config.layer_norm_eps, rngs=rngs)
        layers.set_attention(self, attention)  # layers.attention's implementation (None: jax's)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= self.config.max_length:
            raise ValueError(f"CLIPTextEncoder: token ids must be (batch, length) with 1 <= length <= "
                             f"{self.config.max_length}, got shape {tokens.shape}; tokenize with length="
                             f"{self.config.max_length}")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"CLIPTextEncoder: token ids must be integers, got {tokens.dtype}")
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.position_embedding[:length].astype(self.dtype)  # (B, L, C)
        for block in self.layers:
            x = block(x)
        return self.final_layer_norm(x)


class CLIPImageEncoder(nnx.Module):
    """CLIP-normalised pixels (B, S, S, 3) NHWC -> image embedding (B, projection_dim).

    post_layernorm(CLS token) @ projection, not normalised (= transformers `image_embeds`).
    """

    def __init__(self, config: CLIPVisionConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, attention: str | None = None):
        self.config, self.dtype = config, dtype
        p, width = config.patch_size, config.width
        self.patch_embedding = nnx.Conv(3, width, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                                        dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.class_embedding = nnx.Param(nnx.initializers.normal(width**-0.5)(rngs.params(), (width,)))
        self.position_embedding = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(),
                                                                           (config.num_positions, width)))
        self.ln_pre = layers.LayerNorm(width, epsilon=config.layer_norm_eps, rngs=rngs)
        self.layers = _blocks(config, causal=False, rngs=rngs, dtype=dtype)
        self.ln_post = layers.LayerNorm(width, epsilon=config.layer_norm_eps, rngs=rngs)
        self.projection = nnx.Linear(width, config.projection_dim, use_bias=False, dtype=dtype,
                                     param_dtype=jnp.float32, rngs=rngs)
        layers.set_attention(self, attention)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        size = self.config.image_size
        if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise ValueError(f"CLIPImageEncoder: expected CLIP-normalised pixels (batch, {size}, {size}, 3) NHWC, "
                             f"got shape {pixels.shape}; resize to {size} px first")
        x = self.patch_embedding(pixels.astype(self.dtype))  # (B, S/p, S/p, C)
        x = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, N, C), row-major patches as torch's flatten
        cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.position_embedding[...].astype(x.dtype)  # (B, N + 1, C)
        x = self.ln_pre(x)
        for block in self.layers:
            x = block(x)
        return self.projection(self.ln_post(x[:, 0]))  # (B, projection_dim)
