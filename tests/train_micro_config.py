"""A micro CustomNet for the training tests: configs/tiny.py's structure with even smaller numbers.

16 px images, 8x8x4 latents, a 2-level UNet of width 16, 1-layer CLIPs of width 16: a train step compiles in
seconds on a 2-core CPU. `get_config(**train_overrides)` is also a valid train.py --config file.
"""

import dataclasses

from customnet_jax.experiment import Config, DataConfig, MeshConfig, TrainConfig
from customnet_jax.models.clip import CLIPTextConfig, CLIPVisionConfig
from customnet_jax.models.customnet import CustomNetConfig
from customnet_jax.models.unet import UNetConfig
from customnet_jax.models.vae import VAEConfig


def micro_model(in_channels: int = 8, text: bool = True) -> CustomNetConfig:
    return CustomNetConfig(
        unet=UNetConfig(in_channels=in_channels, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                        attention_levels=(1,), num_heads=2, context_dim=16, norm_groups=4, text_context=text),
        vae=VAEConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4),
        image_encoder=CLIPVisionConfig(image_size=16, patch_size=8, width=16, layers=1, heads=2, mlp_dim=32,
                                       projection_dim=16),
        text_encoder=CLIPTextConfig(width=16, layers=1, heads=2, mlp_dim=32) if text else None,
        resolution=16,
    )


def get_config(**train_overrides) -> Config:
    train = TrainConfig(batch_size=8, num_steps=8, learning_rate=3e-3, log_every=1, checkpoint_every=3,
                        keep_checkpoints=3, export_model=True)
    return Config(model=micro_model(), data=DataConfig(source="synthetic"),
                  train=dataclasses.replace(train, **train_overrides), mesh=MeshConfig(fsdp_min_size=256))
