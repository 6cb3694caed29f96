"""The built-in demo: a small CustomNet trained from scratch on the synthetic world, on a 2-core CPU.

Same architecture as configs/tiny.py (64 px pictures, 16x16x4 latents, width-32 encoders); its own small VAE
is trained first on the same world (customnet_jax/demo/autoencoder.py). The whole recipe is one command:
`make demo-model` (python -m customnet_jax.demo), which writes workdirs/demo/ and ships the result in
customnet_jax/assets/demo_model/. The CLIP encoders stay at their random initialisation (frozen random
features: nothing can be downloaded here); the UNet and cc_projection learn to use them.
"""

import dataclasses

from configs.tiny import tiny_model
from customnet_jax.experiment import Config, DataConfig, TrainConfig

WORKDIR = "workdirs/demo"


def get_config() -> Config:
    return Config(
        model=tiny_model(),
        data=DataConfig(source="precomputed", path=f"{WORKDIR}/precomputed", synthetic_examples=24_000,
                        image_size=64, synthetic_seed=0, synthetic_world="demo"),
        train=dataclasses.replace(
            TrainConfig(), batch_size=32, num_steps=4_000, learning_rate=4e-4, warmup_steps=300,
            grad_clip_norm=1.0, weight_decay=0.0, text_kv_lr_multiplier=1.0, ema_decay=0.999,
            init_from=f"{WORKDIR}/init", log_every=100, checkpoint_every=250, keep_checkpoints=2, seed=0),
    )
