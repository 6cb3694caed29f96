"""Held-out scenes of the synthetic world: what the demo model is measured on, and the built-in example.

The demo model trained on the "demo_close" world with seed 0 (configs/demo.py); these scenes come from the
"demo" world (the same objects, cameras and backgrounds, with uniform target views) with another seed, so none
of them was seen in training. Scene `DEFAULT_SCENE` is the example `sample.py` shows with no arguments.
"""

from __future__ import annotations

import numpy as np

from customnet_jax.world import synthetic

HELD_OUT_WORLD_SEED = 1
DEMO_WORLD = "demo"  # synthetic.WORLDS: configs/demo.py's world ("demo_close") with uniform target views
DEFAULT_SCENE = 0  # the built-in example: this held-out scene's object, box and caption


def held_out_scene(index: int, image_size: int) -> synthetic.Scene:
    """Scene `index` of the held-out world (the demo's world with a seed it never trained on)."""
    return synthetic.scene(index, synthetic.named_world(DEMO_WORLD, image_size=image_size, seed=HELD_OUT_WORLD_SEED))


def default_scene(resolution: int) -> synthetic.Scene:
    """The built-in example: a held-out scene of the world the demo model was trained on (its object, box and
    caption), so the default shows the model on the kind of picture it knows."""
    return held_out_scene(DEFAULT_SCENE, resolution)


def relative_degrees(scene: synthetic.Scene) -> tuple[float, float, float]:
    """The true (polar, azimuth, radius) change from the condition camera to the target camera."""
    c, t = scene.condition_camera, scene.target_camera
    return t.polar - c.polar, (t.azimuth - c.azimuth) % 360.0, t.radius - c.radius


def truth_and_mask(scene: synthetic.Scene, degrees: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth at a relative view: the render in the box over the background, and its object pixels."""
    x0, y0, x1, y1 = scene.box_pixels
    rgba = scene.render_object(scene.condition_camera.moved(*degrees), x1 - x0)
    truth = scene.background.copy()
    truth[y0:y1, x0:x1] = synthetic.over(rgba, truth[y0:y1, x0:x1])
    mask = np.zeros(truth.shape[:2], bool)
    mask[y0:y1, x0:x1] = rgba[..., 3] > 127
    return truth, mask
