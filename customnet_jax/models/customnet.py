"""CustomNet: the denoising UNet with its frozen encoders and the object/view embedding (docs/model.md §1, §4).

Pure Flax, no I/O. The pieces a sampler or a training step needs:
  object_token(object_image, view)   CLIP image embedding ++ T -> cc_projection -> (B, 1, 768)
  encode_text(tokens)                 CLIP text last_hidden_state (B, 77, 768)
  encode(images) / decode(latents)    the VAE (conditioning latents use the posterior mode, unscaled)
  denoise(noisy, t, conditions, ctx)  eps prediction from [noisy | object | background] channels
With `text_encoder=None` the model is Zero-1-to-3 (the UNet's context is the object token alone).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from customnet_jax.conditioning import clip_preprocess
from customnet_jax.models import layers
from customnet_jax.models.clip import CLIPImageEncoder, CLIPTextConfig, CLIPTextEncoder, CLIPVisionConfig
from customnet_jax.models.unet import UNet, UNetConfig
from customnet_jax.models.vae import VAE, VAEConfig

VIEW_DIM = 4  # [dpolar (rad), sin(dazimuth), cos(dazimuth), dradius]


@dataclasses.dataclass(frozen=True)
class CustomNetConfig:
    """The whole model. Defaults: the released customnet_v1 (256 px, text prompt, no background)."""

    unet: UNetConfig = UNetConfig()
    vae: VAEConfig = VAEConfig()
    image_encoder: CLIPVisionConfig = CLIPVisionConfig()
    text_encoder: CLIPTextConfig | None = CLIPTextConfig()  # None: Zero-1-to-3
    resolution: int = 256
    latent_scale: float = 0.18215

    def __post_init__(self):
        u, v = self.unet, self.vae
        if (self.text_encoder is None) == u.text_context:
            raise ValueError("CustomNetConfig: a text encoder goes with unet.text_context=True (CustomNet), none with "
                             "unet.text_context=False (Zero-1-to-3)")
        widths = {"unet.context_dim": u.context_dim, "image_encoder.projection_dim": self.image_encoder.projection_dim}
        if self.text_encoder is not None:
            widths["text_encoder.width"] = self.text_encoder.width
        if len(set(widths.values())) != 1:
            raise ValueError(f"CustomNetConfig: context widths differ {widths}; they must be equal")
        latent = v.latent_channels
        if u.in_channels not in (2 * latent, 3 * latent) or u.out_channels != latent:
            raise ValueError(f"CustomNetConfig: unet in/out channels {u.in_channels}/{u.out_channels} do not fit "
                             f"{latent}-channel latents: in = {2 * latent} (noisy, object) or {3 * latent} "
                             f"(+ background), out = {latent}")
        factor = self.vae_factor * u.downsample_factor
        if self.resolution % factor:
            raise ValueError(f"CustomNetConfig: resolution {self.resolution} must be a multiple of {factor} "
                             "(VAE downsampling x UNet downsampling)")

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.channel_mult) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae_factor

    @property
    def latent_channels(self) -> int:
        return self.vae.latent_channels

    @property
    def has_background(self) -> bool:
        """Composition model: the background latent is a third group of UNet input channels."""
        return self.unet.in_channels == 3 * self.vae.latent_channels

    @property
    def is_zero123(self) -> bool:
        return self.text_encoder is None

    @property
    def context_dim(self) -> int:
        return self.unet.context_dim


def identity_projection_init(key, shape, dtype=jnp.float32) -> jax.Array:
    """cc_projection's original init: identity on the CLIP-embedding columns, zeros on the view columns."""
    del key
    return jnp.eye(shape[0], shape[1], dtype=dtype)


class CustomNet(nnx.Module):
    def __init__(self, config: CustomNetConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, remat: bool | str = False,
                 attention: str | None = None):
        self.config = config
        self.unet = UNet(config.unet, rngs=rngs, dtype=dtype, remat=remat, attention=attention)
        self.vae = VAE(config.vae, rngs=rngs, dtype=dtype)
        self.image_encoder = CLIPImageEncoder(config.image_encoder, rngs=rngs, dtype=dtype)
        self.text_encoder = (None if config.text_encoder is None
                             else CLIPTextEncoder(config.text_encoder, rngs=rngs, dtype=dtype))
        layers.set_attention(self, attention)  # every network's attention: UNet, VAE, both CLIP towers
        embed = config.image_encoder.projection_dim
        self.cc_projection = nnx.Linear(embed + VIEW_DIM, config.context_dim, kernel_init=identity_projection_init,
                                        bias_init=nnx.initializers.zeros, rngs=rngs)

    def image_embedding(self, object_image: jax.Array) -> jax.Array:
        """Object pictures (B, S, S, 3) in [-1, 1] -> CLIP image embeddings (B, 768)."""
        size = self.config.image_encoder.image_size
        return self.image_encoder(clip_preprocess(object_image, size)).astype(jnp.float32)

    def project_object(self, image_embedding: jax.Array, view: jax.Array) -> jax.Array:
        """cc_projection(concat[CLIP embedding (B, 768), T (B, 4)]) -> object token (B, 1, 768)."""
        if view.shape != (image_embedding.shape[0], VIEW_DIM):
            raise ValueError(f"view has shape {view.shape}; expected ({image_embedding.shape[0]}, {VIEW_DIM}): "
                             "[polar (rad), sin(azimuth), cos(azimuth), radius] per sample")
        joined = jnp.concatenate([image_embedding, view.astype(jnp.float32)], axis=-1)
        return self.cc_projection(joined)[:, None, :]

    def object_token(self, object_image: jax.Array, view: jax.Array) -> jax.Array:
        return self.project_object(self.image_embedding(object_image), view)

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        if self.text_encoder is None:
            raise ValueError("this is a Zero-1-to-3 model: it has no text encoder and takes no prompt")
        return self.text_encoder(tokens).astype(jnp.float32)

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Images (B, H, W, 3) in [-1, 1] -> VAE posterior (mean, logvar), unscaled."""
        mean, logvar = self.vae.encode(images)
        return mean.astype(jnp.float32), logvar.astype(jnp.float32)

    def decode(self, latents: jax.Array) -> jax.Array:
        """Diffusion latents (scaled by latent_scale) -> images in [-1, 1] (not clipped)."""
        return self.vae.decode(latents / self.config.latent_scale).astype(jnp.float32)

    def context(self, object_token: jax.Array, text_embedding: jax.Array | None) -> jax.Array:
        """[object token | text tokens] (B, 1 + 77, 768); the object token alone for Zero-1-to-3."""
        if self.config.is_zero123:
            return object_token
        return jnp.concatenate([object_token, text_embedding.astype(object_token.dtype)], axis=1)

    def denoise(self, noisy: jax.Array, timesteps: jax.Array, conditions: jax.Array, context: jax.Array) -> jax.Array:
        """eps prediction. noisy (B, h, w, 4); conditions (B, h, w, 4 or 8) = object latent [| background latent]."""
        expected = self.config.unet.in_channels - self.config.latent_channels
        if conditions.shape[-1] != expected:
            raise ValueError(f"conditions have {conditions.shape[-1]} channels; this model takes {expected} "
                             "(object latent" + (" + background latent)" if self.config.has_background else ")"))
        return self.unet(jnp.concatenate([noisy, conditions.astype(noisy.dtype)], axis=-1), timesteps, context)
