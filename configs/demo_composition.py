"""The built-in demo's composition variant: the stage-2 demo model (configs/demo_zero_snr.py) given a background.

As customnet_inpaint to customnet: 12 UNet input channels (+ the background latent: the target picture with the
object's box painted white), the new conv_in channels start at zero, captions dropped half of the time. A short
fine-tune, since outside the box the model has to learn to copy its input. The recipe (`make demo-model`)
ships it in customnet_jax/assets/demo_composition_model (`sample.py --demo composition`).
"""

import dataclasses

from configs.demo import WORKDIR
from configs.demo_zero_snr import get_config as stage_two
from configs.tiny import tiny_model
from customnet_jax.experiment import Config


def get_config() -> Config:
    base = stage_two()
    return dataclasses.replace(
        base, model=tiny_model(in_channels=12),
        train=dataclasses.replace(base.train, num_steps=1_000, warmup_steps=50, cooldown_steps=500, text_dropout=0.5,
                                  init_from=f"{WORKDIR}/zero_snr/model"),
    )
