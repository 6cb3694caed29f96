"""Model sizes the package itself needs: the tiny CustomNet of the tests, the built-in demo model and smoke runs.

`tiny_model` has the full architecture's structure (3 UNet levels, dual cross-attention, both CLIP towers, the
KL-f8 VAE) at sizes that run a train step or a sampler in seconds on a CPU: 64 px pictures, 16x16x4 latents,
2-layer CLIPs of width 32. Experiment configs (configs/tiny.py, configs/demo.py) build on it.
"""

from __future__ import annotations

from customnet_jax.models.clip import CLIPTextConfig, CLIPVisionConfig
from customnet_jax.models.customnet import CustomNetConfig
from customnet_jax.models.unet import UNetConfig
from customnet_jax.models.vae import VAEConfig


def tiny_model(in_channels: int = 8, text: bool = True) -> CustomNetConfig:
    """The tiny CustomNet: UNet `in_channels` 8 (object latent + noise), 12 with the background channels;
    `text=False` for the Zero-1-to-3 form (no text tower, no text cross-attention)."""
    return CustomNetConfig(
        unet=UNetConfig(in_channels=in_channels, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                        attention_levels=(0, 1), num_heads=4, context_dim=32, norm_groups=8, text_context=text),
        vae=VAEConfig(base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, norm_groups=8),
        image_encoder=CLIPVisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=4, mlp_dim=64,
                                       projection_dim=32),
        text_encoder=CLIPTextConfig(width=32, layers=2, heads=4, mlp_dim=64) if text else None,
        resolution=64,
    )
