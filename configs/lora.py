"""LoRA: adapt the built-in demo model to a background style it never saw, in a few minutes on a CPU.

    python train.py --config configs/lora.py --workdir runs/lora
    python sample.py --lora runs/lora/adapter.safetensors --out outputs/lora      # the demo model + the adapter

Starts from the shipped demo model (customnet_jax/assets/demo_model, train.init_from) and trains rank-8 adapters
on the UNet's attention projections (q, k, v, out, the object and the text K/V) on the "ringed" synthetic world:
every background drawn in concentric rings (customnet_jax/world/synthetic.py WORLDS), built on first use under
data.path. Only the adapters train (train.trainable); the base stays frozen and has no optimizer state. The
run ends by writing <workdir>/adapter.safetensors (the adapter weights and a JSON header: base model hash, rank,
alpha, targets), 226 KiB. Add cc_projection to what trains with
`--set 'train.trainable=(("/lora_[ab]$", True), ("^cc_projection/", True), (".*", False))'`; the feed-forward and
the convolutions with `--set 'lora.targets=(...)'` (customnet_jax/models/lora.py presets). docs/lora.md shows
before / after pictures and the held-out measure.
"""

import dataclasses
import pathlib

from configs.demo import get_config as demo_config
from customnet_jax.experiment import Config, DataConfig
from customnet_jax.model_folder import read_folder
from customnet_jax.models.lora import ATTENTION, LoraConfig

DEMO_MODEL = pathlib.Path(__file__).resolve().parents[1] / "customnet_jax" / "assets" / "demo_model"


def get_config() -> Config:
    base = demo_config()
    folder = read_folder(DEMO_MODEL)  # the base's own model and schedule: its VAE's latent scale, v-prediction
    return dataclasses.replace(
        base, model=folder.model, diffusion=folder.diffusion,
        data=DataConfig(source="synthetic", path="workdirs/lora_ringed_data", synthetic_world="ringed",
                        synthetic_examples=512, synthetic_seed=1, image_size=64),
        lora=LoraConfig(rank=8, alpha=8.0, targets=(ATTENTION,)),
        train=dataclasses.replace(
            base.train, batch_size=16, num_steps=300, learning_rate=2e-3, warmup_steps=20, cooldown_steps=100,
            ema_decay=0.0, init_from=str(DEMO_MODEL), log_every=25, checkpoint_every=100, keep_checkpoints=1,
            trainable=((r"/lora_[ab]$", True), (r".*", False)), lr_multipliers=((r".*", 1.0),)),
    )
