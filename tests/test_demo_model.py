"""The shipped demo model's measured control on held-out synthetic scenes: location, background, identity.

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
# Measured on these 8 scenes x 20 DDIM steps: shipped model (stage 1 eps 4000 steps + zero-SNR v fine-tune 2000
# steps) | untrained start.
THRESHOLDS = {
    "object_box_iou": 0.55,  # location: found object box vs the true object's box: 0.719 | 0.182 (truth ~0.95)
    "background_margin": 0.08,  # the caption's background: 0.157 (error 0.206 vs 0.363) | 0.003
    "identity": 0.19,  # colours across a 5-view sheet vs the truth: 0.247 | 0.155 (truth ~0.99)
}
# Not controlled yet, so not asserted (README): the viewpoint (margin -0.000 over the wrong view).


def failures(scores: measure.DemoScores) -> list[str]:
    values = dataclasses.asdict(scores)
    return [f"{name} {values[name]:.3f} < {low}" for name, low in THRESHOLDS.items() if not values[name] >= low]


@pytest.fixture(scope="module")
def shipped():
    assert (DEMO_FOLDER / "config.json").is_file(), f"no demo model in {DEMO_FOLDER}: run `make demo-model`"
    model, folder = load_model(DEMO_FOLDER)
    return model, folder


def test_shipped_model_controls_location_background_and_identity(shipped):
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
