"""The demo measures on stand-in pipelines with known answers: an oracle that paints the ground truth must score
near perfectly, one that ignores the view must show no viewpoint margin, one that ignores the caption must show
in the background measure, one that paints only the background must fail location and identity."""

import types

import numpy as np
import pytest

from customnet_jax.demo import measure

SIZE = 64


class StandIn:
    """Answers like a Pipeline: images (V, 1, R, R, 3) for the requested views of the scene of the prompt."""

    def __init__(self, mode: str, num_scenes: int, composition: bool = False):
        self.config = types.SimpleNamespace(resolution=SIZE, is_zero123=False, has_background=composition)
        self.scenes = {s.caption: s for s in (measure.held_out_scene(i, SIZE) for i in range(num_scenes))}
        self.captions = list(self.scenes)
        self.mode = mode

    def __call__(self, object_image, *, views, bbox, prompt, background=None, **_):
        scene = self.scenes[prompt]
        assert tuple(bbox) == scene.box_pixels and object_image.shape == (SIZE, SIZE, 3)
        if self.config.has_background:  # given the scene's background, as float in [-1, 1]
            np.testing.assert_allclose((background + 1) * 127.5, scene.background, atol=1e-3)
        else:
            assert background is None
        if self.mode == "oracle":
            pictures = [measure.truth_and_mask(scene, v)[0] for v in views]
        elif self.mode == "ignores caption":  # the right object, on the background of another scene
            other = self.scenes[self.captions[(self.captions.index(prompt) + 1) % len(self.captions)]]
            pictures = [np.where(mask[..., None], truth, other.background)
                        for truth, mask in (measure.truth_and_mask(scene, v) for v in views)]
        elif self.mode == "ignores view":
            pictures = [measure.truth_and_mask(scene, (0.0, 0.0, 0.0))[0]] * len(views)
        else:  # "background only"
            pictures = [scene.background] * len(views)
        return types.SimpleNamespace(images=np.stack(pictures)[:, None])


def scores(mode: str, num_scenes: int = 6, composition: bool = False) -> measure.DemoScores:
    return measure.evaluate(StandIn(mode, num_scenes, composition), num_scenes=num_scenes, steps=1)


def test_oracle_scores_near_perfect():
    s = scores("oracle")
    # the object fills only part of its box (~0.35 IoU with the requested box even for the truth); its own box exactly
    assert 0.25 < s.location_iou < 0.5 and s.object_box_iou > 0.9
    assert s.view_agreement == pytest.approx(1.0) and s.view_wins == 1.0 and s.view_margin > 0.3
    assert s.view_error < 0.01 < 0.05 < s.wrong_view_error and s.view_error_wins == 1.0
    assert s.view_colours > 0.95 and s.wrong_view_colours < s.view_colours - 0.1
    assert s.polar_error < 0.01 < 0.04 < s.wrong_polar_error and s.polar_error_wins == 1.0  # a wrong polar shows
    # a wrong distance: the found object's area changes as the render's (anti-aliased edges aside)
    assert s.distance_follows == 1.0 and s.distance_area_error < 0.1 < 0.4 < s.distance_area_change
    assert s.identity > 0.95  # found pixels vs the render's mask differ only at anti-aliased edges
    assert s.background_error < 0.02 and s.background_error_other > 0.15


def test_ignoring_the_caption_shows_in_the_background_measure():
    oracle, blind = scores("oracle"), scores("ignores caption")
    assert blind.background_error > 0.15 and blind.background_error > oracle.background_error + 0.1
    assert blind.object_box_iou > 0.5 and blind.view_agreement > 0.9  # object, place and view still right


def test_ignoring_the_view_loses_the_margin():
    oracle, blind = scores("oracle"), scores("ignores view")
    assert blind.view_agreement < oracle.view_agreement - 0.3
    assert abs(blind.view_agreement - blind.wrong_view_agreement) < 1e-9 and blind.view_wins == 0.0
    assert blind.view_error == pytest.approx(blind.wrong_view_error) and blind.view_error_wins == 0.0
    assert blind.view_colours == pytest.approx(blind.wrong_view_colours)
    assert blind.polar_error == pytest.approx(blind.wrong_polar_error) and blind.polar_error_wins == 0.0
    assert blind.distance_follows == 0.0 and blind.distance_area_error == pytest.approx(blind.distance_area_change)
    assert blind.view_error > oracle.view_error + 0.03 and blind.view_colours < oracle.view_colours - 0.1
    assert blind.object_box_iou > 0.5  # still in the right place


def test_composition_psnr_outside_the_box():
    """Given the background, the oracle keeps it exactly outside the box; painting another scene's does not."""
    assert scores("oracle", composition=True).composition_psnr >= 60  # identical pixels: measures.psnr's cap
    assert scores("ignores caption", composition=True).composition_psnr < 15
    assert np.isnan(scores("oracle").composition_psnr)  # prompt models: not measured


def test_background_only_fails_location_and_identity():
    s = scores("background only")
    assert s.location_iou == 0.0 and s.object_box_iou == 0.0 and s.identity < 0.05


def test_foreground_pixels_separate_object_from_background():
    scene = measure.held_out_scene(0, SIZE)
    truth, mask = measure.truth_and_mask(scene, measure.relative_degrees(scene))
    found = measure.foreground_pixels(truth, scene.box_pixels)
    assert (found & mask).sum() / mask.sum() > 0.85 and (found & ~mask).sum() / (~mask).sum() < 0.02
    assert not measure.foreground_pixels(scene.background, scene.box_pixels).any()


@pytest.mark.slow
def test_view_use_reads_only_the_view_columns():
    """measure.view_use on the demo architecture, untrained: cc_projection's view columns start at zero, so a wrong
    part of T changes nothing (exactly 0); given weight on the azimuth columns alone, only the azimuth (and so its
    direction) reads."""
    import jax.numpy as jnp
    from flax import nnx

    from configs.tiny import tiny_model
    from customnet_jax.models.build import initialized_model
    from customnet_jax.models.customnet import CustomNet
    from customnet_jax.sampling.pipeline import Pipeline

    model = initialized_model(lambda: CustomNet(tiny_model(), rngs=nnx.Rngs(0)), seed=0)
    rng = np.random.default_rng(0)
    for _, param in nnx.iter_graph(model.unet):  # the zero-initialised output layers too, so that context matters
        if isinstance(param, nnx.Param) and not np.any(param.get_value()):
            param.set_value(jnp.asarray(0.1 * rng.standard_normal(param.shape), param.dtype))
    assert measure.view_use(Pipeline(model), num_scenes=4, timesteps=(900,)) == {
        "azimuth": 0.0, "polar": 0.0, "distance": 0.0, "direction": 0.0}
    kernel = model.cc_projection.kernel
    rows = jnp.arange(kernel.shape[0])[:, None]
    azimuth_rows = (rows == kernel.shape[0] - 3) | (rows == kernel.shape[0] - 2)  # the sin, cos rows of T
    kernel.set_value(jnp.where(azimuth_rows, 3.0, kernel.get_value()))
    use = measure.view_use(Pipeline(model), num_scenes=4, timesteps=(900,))
    assert abs(use["azimuth"]) > 1e-3 and abs(use["direction"]) > 1e-3, use
    assert use["polar"] == 0.0 and use["distance"] == 0.0, use
