"""A tiny CustomNet with the full architecture's structure: runs a train step or a sampler in seconds on a CPU.

Used by the tests; 64 px images, 16x16x4 latents, 3 UNet levels, 2-layer CLIPs of width 32. A smoke run on
random in-memory examples (no data, no download; the rendered synthetic world: --set data.source=synthetic):

    python train.py --config configs/tiny.py --workdir /tmp/tiny --set data.source=random_raw
"""

from customnet_jax.experiment import Config, DataConfig, TrainConfig
from customnet_jax.models.clip import CLIPTextConfig, CLIPVisionConfig
from customnet_jax.models.customnet import CustomNetConfig
from customnet_jax.models.unet import UNetConfig
from customnet_jax.models.vae import VAEConfig


def tiny_model(in_channels: int = 8, text: bool = True) -> CustomNetConfig:
    return CustomNetConfig(
        unet=UNetConfig(in_channels=in_channels, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                        attention_levels=(0, 1), num_heads=4, context_dim=32, norm_groups=8, text_context=text),
        vae=VAEConfig(base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, norm_groups=8),
        image_encoder=CLIPVisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=4, mlp_dim=64,
                                       projection_dim=32),
        text_encoder=CLIPTextConfig(width=32, layers=2, heads=4, mlp_dim=64) if text else None,
        resolution=64,
    )


def get_config() -> Config:
    return Config(model=tiny_model(), data=DataConfig(source="synthetic"),
                  train=TrainConfig(batch_size=4, num_steps=10, learning_rate=1e-4, log_every=1,
                                    checkpoint_every=5))
