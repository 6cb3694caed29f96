"""The built-in default of `sample.py`: the shipped demo model and object, needing no download."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
from flax import nnx

from customnet_jax.sampling.pipeline import Pipeline

RANDOM_LABEL = "RANDOM WEIGHTS: a small untrained model (no demo model folder is shipped yet)"


def demo_pipeline(folder: pathlib.Path, dtype: Any, in_channels: int = 8,
                  attention: str | None = None) -> tuple[Pipeline, str]:
    """The shipped demo model if present, else a clearly labelled small random model (UNet `in_channels`)."""
    if (folder / "config.json").is_file():
        return Pipeline.from_folder(folder, dtype=dtype, attention=attention), f"built-in demo model ({folder})"
    from configs.tiny import tiny_model
    from customnet_jax.models.build import initialized_model
    from customnet_jax.models.customnet import CustomNet

    model = initialized_model(lambda: CustomNet(tiny_model(in_channels), rngs=nnx.Rngs(0), dtype=dtype,
                                                 attention=attention), seed=0)
    return Pipeline(model), RANDOM_LABEL


DEFAULT_SCENE = 0  # scene of the held-out synthetic world (customnet_jax/demo/measure.py) shown by default


def default_scene(resolution: int):
    """The built-in example: a held-out scene of the synthetic world the demo model was trained on (its
    object, box and caption), so the default shows the model on the kind of picture it knows."""
    from customnet_jax.demo.measure import held_out_scene

    return held_out_scene(DEFAULT_SCENE, resolution)


def default_object(resolution: int) -> np.ndarray:
    """The built-in example's object: its condition view on white, prepared (float (R, R, 3) in [-1, 1])."""
    from customnet_jax.demo.measure import condition_object

    return condition_object(default_scene(resolution))
