"""A tiny CustomNet with the full architecture's structure: runs a train step or a sampler in seconds on a CPU.

Used by the tests; 64 px images, 16x16x4 latents, 3 UNet levels, 2-layer CLIPs of width 32 (the model:
customnet_jax/models/presets.py). A smoke run on random in-memory examples (no data, no download; the rendered
synthetic world: --set data.source=synthetic):

    python train.py --config configs/tiny.py --workdir /tmp/tiny --set data.source=random_raw
"""

from customnet_jax.experiment import Config, DataConfig, TrainConfig
from customnet_jax.models.presets import tiny_model

__all__ = ["get_config", "tiny_model"]


def get_config() -> Config:
    return Config(model=tiny_model(), data=DataConfig(source="synthetic"),
                  train=TrainConfig(batch_size=4, num_steps=10, learning_rate=1e-4, log_every=1,
                                    checkpoint_every=5))
