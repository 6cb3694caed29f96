"""The built-in default of `sample.py`: the shipped demo model and object, needing no download."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
from flax import nnx

from customnet_jax.sampling.pipeline import Pipeline

RANDOM_LABEL = "RANDOM WEIGHTS: a small untrained model (no demo model folder is shipped yet)"


def demo_pipeline(folder: pathlib.Path, dtype: Any) -> tuple[Pipeline, str]:
    """The shipped demo model if present, else a clearly labelled small random model."""
    if (folder / "config.json").is_file():
        return Pipeline.from_folder(folder, dtype=dtype), f"built-in demo model ({folder})"
    from configs.tiny import tiny_model
    from customnet_jax.models.build import initialized_model
    from customnet_jax.models.customnet import CustomNet

    model = initialized_model(lambda: CustomNet(tiny_model(), rngs=nnx.Rngs(0), dtype=dtype), seed=0)
    return Pipeline(model), RANDOM_LABEL


def default_object(resolution: int) -> np.ndarray:
    """A two-coloured toy block as an RGBA picture (transparent around it)."""
    size = resolution
    picture = np.zeros((size, size, 4), np.uint8)
    a, b, c = size // 5, size // 2, 4 * size // 5
    picture[a:c, a:b] = (210, 40, 40, 255)  # red left half
    picture[a:c, b:c] = (40, 70, 210, 255)  # blue right half
    picture[a : a + size // 10, a:c] = (240, 200, 40, 255)  # yellow top
    return picture
