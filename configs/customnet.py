r"""CustomNet as released (customnet_v1): 256 px, object + location, text-driven background.

    python train.py --config configs/customnet.py --workdir runs/customnet \
        --set data.path=PAIRS --set train.init_from=ZERO123

PAIRS: the prepared pairs (build_pairs.py); ZERO123: a converted Zero-1-to-3 model folder (convert_weights.py).
"""

from customnet_jax.experiment import Config, DataConfig


def get_config() -> Config:
    return Config(data=DataConfig(source="pairs"))
