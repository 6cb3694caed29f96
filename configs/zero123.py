"""Zero-1-to-3 (105000.ckpt / zero123-xl): novel views of a centred object, no text, no location.

    python train.py --config configs/zero123.py --workdir runs/zero123 --set data.path=<built views dataset>
"""

from customnet_jax.experiment import Config, DataConfig
from customnet_jax.models.customnet import CustomNetConfig
from customnet_jax.models.unet import UNetConfig


def get_config() -> Config:
    return Config(model=CustomNetConfig(unet=UNetConfig(text_context=False), text_encoder=None),
                  data=DataConfig(source="views"))
