"""The Stable Diffusion 1.x VAE (LDM KL-f8 `AutoencoderKL`), NHWC, module names mirroring LDM's.

`encode` returns the diagonal-Gaussian posterior moments (after `quant_conv`); `decode` takes the
unscaled latent (the 0.18215 scale factor belongs to the diffusion code).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from customnet_jax.models.layers import GroupNorm, attention, set_attention


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """LDM `ddconfig` + `embed_dim`; the defaults are SD 1.x's KL-f8 (83,653,863 parameters)."""

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128  # LDM `ch`
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    latent_channels: int = 4  # LDM `embed_dim` (quant_conv output / 2)
    norm_groups: int = 32
    norm_eps: float = 1e-6

    def __post_init__(self):
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"VAEConfig.channel_mult {self.channel_mult} must be a non-empty tuple of positive ints")
        for name in ("in_channels", "out_channels", "base_channels", "num_res_blocks", "z_channels",
                     "latent_channels", "norm_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"VAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        bad = [w for w in self.widths if w % self.norm_groups]
        if bad:
            raise ValueError(f"VAEConfig: widths {bad} (base_channels x channel_mult) are not multiples of "
                             f"norm_groups={self.norm_groups}; change base_channels or norm_groups")
        if self.norm_eps <= 0:
            raise ValueError(f"VAEConfig.norm_eps must be > 0, got {self.norm_eps}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel width of each resolution level."""
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def downsample_factor(self) -> int:
        """Image side / latent side (8 for SD)."""
        return 2 ** (len(self.channel_mult) - 1)


def sample_posterior(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
    """A draw from N(mean, exp(logvar)): mean + exp(0.5 logvar) * eps."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


def _conv(cin: int, cout: int, k: int, dtype, rngs: nnx.Rngs, **kw) -> nnx.Conv:
    """k x k conv, 'same' padding unless given; float32 parameters, `dtype` compute."""
    padding = kw.pop("padding", ((k // 2, k // 2),) * 2)
    return nnx.Conv(cin, cout, (k, k), padding=padding, dtype=dtype, param_dtype=jnp.float32, rngs=rngs, **kw)


class ResnetBlock(nnx.Module):
    """GN, SiLU, conv3x3, GN, SiLU, conv3x3, plus a 1x1 `nin_shortcut` when widths differ (no time input)."""

    def __init__(self, cin: int, cout: int, config: VAEConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        gn = dict(groups=config.norm_groups, epsilon=config.norm_eps, rngs=rngs)
        self.norm1 = GroupNorm(cin, **gn)
        self.conv1 = _conv(cin, cout, 3, dtype, rngs)
        self.norm2 = GroupNorm(cout, **gn)
        self.conv2 = _conv(cout, cout, 3, dtype, rngs)
        self.nin_shortcut = _conv(cin, cout, 1, dtype, rngs) if cin != cout else None

    def __call__(self, x: jax.Array) -> jax.Array:  # (B, H, W, cin) -> (B, H, W, cout)
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nnx.Module):
    """Single-head self-attention over all H*W positions; q, k, v, proj_out are 1x1 convs as in LDM."""

    def __init__(self, channels: int, config: VAEConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.norm = GroupNorm(channels, groups=config.norm_groups, epsilon=config.norm_eps, rngs=rngs)
        self.q, self.k, self.v, self.proj_out = (_conv(channels, channels, 1, dtype, rngs) for _ in range(4))
        self.attention_implementation: str | None = None  # layers.attention's; set by layers.set_attention

    def __call__(self, x: jax.Array) -> jax.Array:  # (B, H, W, C) -> same
        b, h, w, c = x.shape
        y = self.norm(x)
        q, k, v = (f(y).reshape(b, h * w, c) for f in (self.q, self.k, self.v))  # (B, HW, C)
        out = attention(q, k, v, 1, implementation=self.attention_implementation)
        return x + self.proj_out(out.reshape(b, h, w, c))


class Mid(nnx.Module):
    """block_1, attn_1, block_2 at the deepest width."""

    def __init__(self, channels: int, config: VAEConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.block_1 = ResnetBlock(channels, channels, config, rngs=rngs, dtype=dtype)
        self.attn_1 = AttnBlock(channels, config, rngs=rngs, dtype=dtype)
        self.block_2 = ResnetBlock(channels, channels, config, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.block_2(self.attn_1(self.block_1(x)))


class Resample(nnx.Module):
    """LDM Downsample (pad right/bottom by 1, conv3x3 stride 2, no padding) or Upsample (nearest x2, conv3x3)."""

    def __init__(self, channels: int, *, down: bool, rngs: nnx.Rngs, dtype=jnp.float32):
        self.down = down
        self.conv = (_conv(channels, channels, 3, dtype, rngs, strides=2, padding=((0, 1), (0, 1))) if down
                     else _conv(channels, channels, 3, dtype, rngs))

    def __call__(self, x: jax.Array) -> jax.Array:  # (B, H, W, C) -> (B, H/2, W/2, C) or (B, 2H, 2W, C)
        if not self.down:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(x)


class Level(nnx.Module):
    """One resolution level: `block` (ResnetBlocks) then an optional `downsample` / `upsample`."""

    def __init__(self, widths_in: list[int], cout: int, config: VAEConfig, resample: str | None, *,
                 rngs: nnx.Rngs, dtype=jnp.float32):
        self.block = nnx.List([ResnetBlock(cin, cout, config, rngs=rngs, dtype=dtype) for cin in widths_in])
        if resample == "down":
            self.downsample = Resample(cout, down=True, rngs=rngs, dtype=dtype)
        elif resample == "up":
            self.upsample = Resample(cout, down=False, rngs=rngs, dtype=dtype)
        self.resample = resample

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.block:
            x = block(x)
        if self.resample == "down":
            x = self.downsample(x)
        elif self.resample == "up":
            x = self.upsample(x)
        return x


class Encoder(nnx.Module):
    """Image (B, H, W, in) -> (B, H/f, W/f, 2 z_channels)."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        widths, n = config.widths, config.num_res_blocks
        self.conv_in = _conv(config.in_channels, widths[0], 3, dtype, rngs)
        prev = [widths[0], *widths[:-1]]
        self.down = nnx.List([
            Level([prev[i]] + [w] * (n - 1), w, config, "down" if i < len(widths) - 1 else None,
                  rngs=rngs, dtype=dtype) for i, w in enumerate(widths)])
        self.mid = Mid(widths[-1], config, rngs=rngs, dtype=dtype)
        self.norm_out = GroupNorm(widths[-1], groups=config.norm_groups, epsilon=config.norm_eps, rngs=rngs)
        self.conv_out = _conv(widths[-1], 2 * config.z_channels, 3, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        return self.conv_out(jax.nn.silu(self.norm_out(self.mid(x))))


class Decoder(nnx.Module):
    """z (B, h, w, z_channels) -> image (B, h f, w f, out); `up[i]` is level i, run deepest first."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        widths, n = config.widths, config.num_res_blocks
        self.conv_in = _conv(config.z_channels, widths[-1], 3, dtype, rngs)
        self.mid = Mid(widths[-1], config, rngs=rngs, dtype=dtype)
        prev = [*widths[1:], widths[-1]]  # the width coming in from the level below
        self.up = nnx.List([
            Level([prev[i]] + [w] * n, w, config, "up" if i > 0 else None, rngs=rngs, dtype=dtype)
            for i, w in enumerate(widths)])
        self.norm_out = GroupNorm(widths[0], groups=config.norm_groups, epsilon=config.norm_eps, rngs=rngs)
        self.conv_out = _conv(widths[0], config.out_channels, 3, dtype, rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(jax.nn.silu(self.norm_out(x)))


class VAE(nnx.Module):
    """KL autoencoder: `encode` -> posterior (mean, logvar); `decode` unscaled latent -> image in ~[-1, 1]."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, attention: str | None = None):
        self.config = config
        self.encoder = Encoder(config, rngs=rngs, dtype=dtype)
        self.decoder = Decoder(config, rngs=rngs, dtype=dtype)
        self.quant_conv = _conv(2 * config.z_channels, 2 * config.latent_channels, 1, dtype, rngs)
        self.post_quant_conv = _conv(config.latent_channels, config.z_channels, 1, dtype, rngs)
        set_attention(self, attention)  # layers.attention's implementation (None: jax's)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x (B, H, W, in_channels) in [-1, 1] -> mean, logvar, each (B, H/f, W/f, latent_channels)."""
        cfg, f = self.config, self.config.downsample_factor
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
            raise ValueError(f"VAE.encode expects NHWC images (B, H, W, {cfg.in_channels}), got shape {x.shape}")
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"VAE.encode: image size {x.shape[1]}x{x.shape[2]} is not a multiple of {f}; "
                             f"resize or pad the image to a multiple of {f}")
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array) -> jax.Array:
        """z (B, h, w, latent_channels), unscaled -> image (B, h f, w f, out_channels)."""
        if z.ndim != 4 or z.shape[-1] != self.config.latent_channels:
            raise ValueError(f"VAE.decode expects latents (B, h, w, {self.config.latent_channels}), got {z.shape}")
        return self.decoder(self.post_quant_conv(z))
