"""CustomNet as released (customnet_v1): 256 px, object + location, text-driven background."""

from customnet_jax.experiment import Config, DataConfig


def get_config() -> Config:
    return Config(data=DataConfig(source="pairs"))
