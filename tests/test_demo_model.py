"""The shipped demo model's measured control on held-out synthetic scenes (so far: location).

The scores (customnet_jax/demo/measure.py) are measured on scenes of a world seed the model never trained
on, against the ground-truth renders. Thresholds sit below the measured values of the shipped model (README,
"The built-in demo model") with margin; the same thresholds must fail for the untrained model the recipe
started from (its own seed-0 initialisation with the trained VAE), so the test cannot pass by accident.
"""

import dataclasses

import pytest
from flax import nnx

from customnet_jax.demo import measure
from customnet_jax.model_folder import load_model
from customnet_jax.models.build import initialized_model
from customnet_jax.models.customnet import CustomNet
from customnet_jax.sampling.cli import DEMO_FOLDER
from customnet_jax.sampling.pipeline import Pipeline

SCENES, STEPS = 8, 20
# Shipped model, 8 scenes x 20 DDIM steps (README): see the measured values there.
THRESHOLDS = {  # what the shipped model (4000 steps, ~90 CPU minutes) controls: measured 0.635, untrained ~0.17
    "object_box_iou": 0.5,  # found object box vs the true object's box (location; the truth itself scores ~0.95)
}
# Not yet controlled at 4000 steps, so not asserted (README): viewpoint margin (measured -0.001) and identity
# (0.12, no better than untrained): the objects land in their boxes with the wrong colours.


def failures(scores: measure.DemoScores) -> list[str]:
    values = dataclasses.asdict(scores)
    return [f"{name} {values[name]:.3f} < {low}" for name, low in THRESHOLDS.items() if not values[name] >= low]


@pytest.fixture(scope="module")
def shipped():
    assert (DEMO_FOLDER / "config.json").is_file(), f"no demo model in {DEMO_FOLDER}: run `make demo-model`"
    model, folder = load_model(DEMO_FOLDER)
    return model, folder


def test_shipped_model_places_the_object_in_its_box(shipped):
    model, folder = shipped
    scores = measure.evaluate(Pipeline(model, folder.diffusion, folder, folder.tokenizer_path), SCENES, STEPS)
    assert not failures(scores), f"{failures(scores)}\n{scores.table()}"


def test_thresholds_fail_for_the_untrained_model(shipped):
    model, folder = shipped
    untrained = initialized_model(lambda: CustomNet(folder.model, rngs=nnx.Rngs(0)), seed=0)
    nnx.update(untrained.vae, nnx.state(model.vae, nnx.Param))  # the recipe's start: trained VAE, random rest
    scores = measure.evaluate(Pipeline(untrained, folder.diffusion, folder, folder.tokenizer_path), SCENES, STEPS)
    missed = {f.split()[0] for f in failures(scores)}
    assert missed == set(THRESHOLDS), scores.table()
