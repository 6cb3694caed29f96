"""The built-in demo's composition variant: the demo model (configs/demo.py) given a background.

As customnet_inpaint to customnet: 12 UNet input channels (+ the background latent: the target picture with the
object's box painted white), the new conv_in channels start at zero, captions dropped half of the time. A short
fine-tune, since outside the box the model has to learn to copy its input. The recipe (`make demo-model`)
ships it in customnet_jax/assets/demo_composition_model (`sample.py --demo composition`).

    python -m customnet_jax.demo --composition-config configs/demo_composition.py   # stage 7 of make demo-model
"""

import dataclasses

from configs.demo import WORKDIR
from configs.demo import get_config as prompt_model
from configs.tiny import tiny_model
from customnet_jax.experiment import Config


def get_config() -> Config:
    base = prompt_model()
    return dataclasses.replace(
        base, model=tiny_model(in_channels=12),
        train=dataclasses.replace(base.train, num_steps=500, warmup_steps=50, cooldown_steps=250, text_dropout=0.5,
                                  init_from=f"{WORKDIR}/run/model"),
    )
