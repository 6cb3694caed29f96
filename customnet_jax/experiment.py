"""One experiment = one config file in configs/ returning `Config`: model, diffusion, data, training, mesh, init,
LoRA."""

from __future__ import annotations

import dataclasses
from typing import Literal

from customnet_jax.diffusion.schedule import DiffusionConfig
from customnet_jax.models.customnet import CustomNetConfig
from customnet_jax.models.init import ModelInit
from customnet_jax.models.lora import LoraConfig


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # "synthetic" (the rendered synthetic world) | "views" (zero123 renders) | "pairs" (prepared natural pairs) |
    # "precomputed" (frozen encoders' outputs) | "random_raw" / "random_precomputed": random in-memory examples in
    # the raw / precomputed batch form, no files (tests, smoke runs; customnet_jax.train.synthetic)
    source: Literal["synthetic", "views", "pairs", "precomputed", "random_raw", "random_precomputed"] = "synthetic"
    path: str = ""  # a built tfds dataset folder or a data_dir holding one ("synthetic": built there if missing)
    split: str = "train"
    num_workers: int = 0  # grain worker processes (0: in-process)
    shuffle_seed: int = 0
    read_threads: int = 2  # grain read threads per process
    prefetch: int = 2  # batches buffered (per read pipeline and per worker)
    image_size: int = 0  # stored picture size of a synthetic world built on demand (0: model resolution)
    synthetic_examples: int = 4096  # train examples of a synthetic world built on demand
    synthetic_seed: int = 0  # its world seed
    synthetic_world: str = "default"  # its parameters: a name in customnet_jax.world.synthetic.WORLDS
    random_examples: int = 64  # how many examples the "random_*" sources draw


TRAINABLE = ((r"^(unet|cc_projection)/", True), (r".*", False))
LR_MULTIPLIERS = ((r"/to_[kv]_text/", 10.0), (r".*", 1.0))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The paper's optimisation (docs/model.md §8) and the condition dropout of docs/model.md §7."""

    batch_size: int = 96
    num_steps: int = 500_000
    learning_rate: float = 2e-6
    # What trains and at what rate: ordered (regex, value) rules over "/"-joined parameter paths, first match wins
    # (customnet_jax.models.param_rules). Untrained parameters are frozen: not in the optimizer state.
    trainable: tuple[tuple[str, bool], ...] = TRAINABLE
    # multiples of the learning rate (the default: the original recipe trains the new text K/V at 10x)
    lr_multipliers: tuple[tuple[str, float], ...] = LR_MULTIPLIERS
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 0
    cooldown_steps: int = 0  # linear decay of the lr to 0 over the last cooldown_steps of num_steps
    grad_clip_norm: float = 0.0  # 0: no clipping
    ema_decay: float = 0.0  # 0: no EMA
    grad_accum_steps: int = 1
    compute_dtype: str = "float32"  # "bfloat16": bf16 compute, fp32 master weights and optimizer state
    remat: bool = False
    remat_policy: str = "full"  # with remat: "full", "dots" (keep matmul outputs), "offload" (models/layers.py)
    attention: str = ""  # layers.attention's implementation: "" (jax's choice), "xla", "per_head", "splash" (TPU)
    image_dropout: float = 0.10  # r < 0.10: zero the CLIP image embedding before cc_projection
    object_latent_dropout: tuple[float, float] = (0.05, 0.15)  # 0.05 <= r < 0.15: zero the object latent
    text_dropout: float = 0.15  # caption -> "" (0.5 for the composition model)
    object_loss_weight: float = 1.0  # weight of the latent cells inside the object's box (1: the paper's plain MSE)
    init_from: str = ""  # a model folder (converted zero123 / CustomNet) to start from; "" = random init
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    async_checkpoints: bool = True  # orbax writes in the background while training goes on
    sample_every: int = 0  # write a sample sheet every N steps (0: never)
    sample_steps: int = 50  # DDIM steps of the sample sheets
    sample_prompt: str = ""  # their caption (CustomNet models)
    export_model: bool = True  # write the trained weights as a model folder <workdir>/model at the end
    export_ema: bool = True  # export the EMA weights when ema_decay > 0 (False: the raw weights)
    nonfinite_policy: str = "stop"  # a step with a NaN/inf loss, gradient or update is skipped; "stop": stop after
    nonfinite_patience: int = 5  # this many in a row (docs/faults.md); "skip": skip them and go on


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # -1: all devices not used by fsdp
    fsdp: int = 1
    fsdp_min_size: int = 2**18  # parameters with fewer elements stay replicated


@dataclasses.dataclass(frozen=True)
class Config:
    model: CustomNetConfig = CustomNetConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()
    init: ModelInit = ModelInit()  # how fresh parameters start: (regex, initialiser) rules
    lora: LoraConfig = LoraConfig()  # rank > 0: low-rank adapters on the UNet (configs/lora.py, docs/lora.md)
