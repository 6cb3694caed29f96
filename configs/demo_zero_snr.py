"""Stage 2 of the built-in demo: the stage-1 model (configs/demo.py) fine-tuned to v-prediction on a zero-terminal-SNR
schedule (Lin et al. 2024), as they fine-tuned Stable Diffusion.

Why: with SD's schedule x_T still holds sqrt(a_T) = 0.068 of the picture. On 16 x 16 latents that leak carries
the picture's mean colour, and the stage-1 model learnt to read the background colour from it: sampled from pure
noise, its backgrounds took their colour from the noise, not from the caption. With a_T = 0 nothing leaks and the
caption is the only source. The recipe (`make demo-model`) runs this stage from stage 1's exported (EMA) model.
"""

import dataclasses

from configs.demo import WORKDIR
from configs.demo import get_config as stage_one
from customnet_jax.diffusion.schedule import DiffusionConfig
from customnet_jax.experiment import Config


def get_config() -> Config:
    base = stage_one()
    return dataclasses.replace(
        base,
        diffusion=DiffusionConfig(prediction_type="v_prediction", zero_terminal_snr=True),
        train=dataclasses.replace(base.train, num_steps=2_000, warmup_steps=100, cooldown_steps=1_000,
                                  ema_decay=0.995, init_from=f"{WORKDIR}/run/model"),
    )
