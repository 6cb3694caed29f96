r"""CustomNet composition model (customnet_inpaint_v1): + the background latent, 12 UNet input channels.

    python train.py --config configs/customnet_inpaint.py --workdir runs/inpaint \
        --set data.path=PAIRS --set train.init_from=MODEL

PAIRS: the prepared pairs (build_pairs.py); MODEL: a CustomNet model folder (its conv_in is widened, zeros).
"""

import dataclasses

from customnet_jax.experiment import Config, DataConfig, TrainConfig
from customnet_jax.models.customnet import CustomNetConfig
from customnet_jax.models.unet import UNetConfig


def get_config() -> Config:
    return Config(model=CustomNetConfig(unet=UNetConfig(in_channels=12)), data=DataConfig(source="pairs"),
                  train=dataclasses.replace(TrainConfig(), text_dropout=0.5))
