"""The shipped demo models' measured control on held-out synthetic scenes: location, background, identity and the
distance and azimuth parts of the viewpoint (the azimuth by how far the object turns, not which way).

The scores (customnet_jax/demo/measure.py) are measured on scenes of a world seed the model never trained
on, against the ground-truth renders. Thresholds sit below the measured values of the shipped model
(docs/demo_model.md) with margin; the same thresholds must fail for the untrained model the recipe
started from (its own seed-0 initialisation with the trained VAE), so the test cannot pass by accident.
"""

import dataclasses

import pytest
from flax import nnx

from customnet_jax.demo import measure
from customnet_jax.model_folder import load_model
from customnet_jax.models.build import initialized_model
from customnet_jax.models.customnet import CustomNet
from customnet_jax.sampling.cli import DEMO_COMPOSITION_FOLDER, DEMO_FOLDER
from customnet_jax.sampling.pipeline import Pipeline

pytestmark = pytest.mark.slow  # sampling with the shipped models: minutes on 2 cores

SCENES, STEPS = 8, 20
# Measured on these 8 scenes x 20 DDIM steps, shipped model | its untrained start. Prompt model: configs/demo.py
# (5400 steps from scratch); composition model: + background channels (configs/demo_composition.py, 500 steps).
THRESHOLDS = {
    "prompt": {
        "object_box_iou": 0.6,  # location: found object box vs the true object's box: 0.786 | 0.150 (truth ~0.94)
        "background_margin": 0.04,  # the caption's background: 0.080 | -0.002 (16 scenes: 0.141)
        "identity": 0.2,  # colours across a 5-view sheet vs the truth: 0.273 | 0.139 (truth ~0.98)
        # viewpoint distance: the object's area changes as the truth's when the distance is wrong: 1.0 | 0.0
        # (log2 area-change error 0.10 | 0.63, the truth's change 0.63)
        "distance_follows": 0.75,
        # Not asserted on pictures: the azimuth. Here the picture for the requested view beats the one for the view
        # turned 180 degrees in 8 of 8 scenes, but in 8 of 16 further held-out scenes (README): the sampled effect
        # is too weak to hold on 8 scenes, so the azimuth is asserted with view use below (loss-based, 32 scenes).
    },
    "composition": {
        "object_box_iou": 0.6,  # 0.815 | 0.150
        "composition_psnr": 18.0,  # dB outside the box vs the given background: 21.1 | 15.4
        "identity": 0.17,  # 0.305 | 0.139
        "distance_follows": 0.75,  # 1.0 | 0.0 (area-change error 0.13 | 0.63)
    },
}
FOLDERS = {"prompt": DEMO_FOLDER, "composition": DEMO_COMPOSITION_FOLDER}
# Teacher-forced check that the azimuth and distance of T are read. Not asserted: the polar angle and the azimuth's
# direction (turned -a instead of a), which neither model reads (prompt -0.1%, -0.0%; composition +0.1%, +0.1%).
VIEW_USE = {"azimuth": 0.04, "distance": 0.1}  # measured, 32 scenes: prompt 0.072, 0.32; composition 0.103, 0.43


def failures(scores: measure.DemoScores, kind: str) -> list[str]:
    values = dataclasses.asdict(scores)
    return [f"{name} {values[name]:.3f} < {low}" for name, low in THRESHOLDS[kind].items() if not values[name] >= low]


@pytest.fixture(scope="module", params=list(THRESHOLDS))
def shipped(request):
    folder_path = FOLDERS[request.param]
    assert (folder_path / "config.json").is_file(), f"no demo model in {folder_path}: run `make demo-model`"
    model, folder = load_model(folder_path)
    return request.param, model, folder


def test_shipped_model_controls_location_background_identity_and_viewpoint(shipped):
    kind, model, folder = shipped
    scores = measure.evaluate(Pipeline(model, folder.diffusion, folder, folder.tokenizer_path), SCENES, STEPS)
    assert not failures(scores, kind), f"{failures(scores, kind)}\n{scores.table()}"


def untrained_start(model, folder) -> CustomNet:
    """The recipe's start: the trained VAE, the rest at its seed-0 initialisation."""
    untrained = initialized_model(lambda: CustomNet(folder.model, rngs=nnx.Rngs(0)), seed=0)
    nnx.update(untrained.vae, nnx.state(model.vae, nnx.Param))
    return untrained


def test_thresholds_fail_for_the_untrained_model(shipped):
    kind, model, folder = shipped
    untrained = untrained_start(model, folder)
    scores = measure.evaluate(Pipeline(untrained, folder.diffusion, folder, folder.tokenizer_path), SCENES, STEPS)
    missed = {f.split()[0] for f in failures(scores, kind)}
    assert missed == set(THRESHOLDS[kind]), scores.table()


def test_shipped_model_reads_azimuth_and_distance(shipped):
    """measure.view_use: the training loss on the object's box rises when the azimuth or the distance of T is wrong;
    for the untrained start (cc_projection's view columns are zero) it does not change at all."""
    _, model, folder = shipped
    use = measure.view_use(Pipeline(model, folder.diffusion, folder, folder.tokenizer_path), 32)
    assert all(use[part] >= low for part, low in VIEW_USE.items()), use
    untrained = untrained_start(model, folder)
    assert measure.view_use(Pipeline(untrained, folder.diffusion, folder, folder.tokenizer_path), 8) == {
        "azimuth": 0.0, "polar": 0.0, "distance": 0.0, "direction": 0.0}
