"""The built-in default of `sample.py`: the shipped demo models and the built-in example, needing no download.

The demo model (and its composition variant, with background channels) is a small CustomNet trained on the
synthetic world by `make demo-model` (customnet_jax/demo/recipe.py) and shipped in customnet_jax/assets/. The
built-in example is a held-out scene of that world (customnet_jax/world/held_out.py).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from customnet_jax.conditioning.images import to_float
from customnet_jax.sampling.pipeline import Pipeline
from customnet_jax.world import held_out, synthetic

DEMO_FOLDER = pathlib.Path(__file__).resolve().parents[1] / "assets" / "demo_model"
DEMO_COMPOSITION_FOLDER = DEMO_FOLDER.with_name("demo_composition_model")


def demo_pipeline(folder: pathlib.Path, dtype: Any, attention: str | None = None,
                  adapt: Callable[[Any], Any] | None = None) -> tuple[Pipeline, str]:
    """The shipped demo model of `folder` (DEMO_FOLDER or DEMO_COMPOSITION_FOLDER) and its label (`adapt`: as
    `Pipeline.from_folder`'s)."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"the built-in demo model is missing from {folder}: reinstall the package, or make it "
                                "again with `make demo-model`")
    pipeline = Pipeline.from_folder(folder, dtype=dtype, attention=attention, adapt=adapt)
    return pipeline, f"built-in demo model ({folder})"


def condition_object(scene: synthetic.Scene) -> np.ndarray:
    """The scene's object as the model is given it: the condition view on white, float (R, R, 3) in [-1, 1]."""
    return to_float(scene.object)


def default_object(resolution: int) -> np.ndarray:
    """The built-in example's object: its condition view on white, prepared (float (R, R, 3) in [-1, 1])."""
    return condition_object(held_out.default_scene(resolution))
