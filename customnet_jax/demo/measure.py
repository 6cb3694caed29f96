"""What the demo model controls, measured on held-out synthetic scenes against their ground truth.

Held-out scenes come from another world seed (objects, cameras, boxes and backgrounds never seen in
training). For each: the condition view of the object, its box, its caption, and the true relative view
to the target camera. The model makes one picture at the true view and one at a wrong view (the
azimuth turned by 180 degrees, same seed), and a multi-view sheet at several azimuths.

The generated object is found against the picture's own background (`foreground_pixels`): the colours
that cover the picture outside the requested box are background, the pixels unlike all of them are the
object (the world never paints an object in its background's colours).

- Location: IoU of the box of those pixels with the box of the object in the ground-truth render (the
  truth itself scores ~0.96), and with the requested box (reported, but weak: the object never fills its
  box edge to edge, so even the truth scores only ~0.35 there, while noise covering the picture scores ~0.47).
- Viewpoint: the picture made for the requested view and the one made for the wrong view, each against the
  ground-truth render at the requested view, three ways: agreement (share of the render's object pixels
  within 0.15 per channel: strict, near 0 for blurry objects), colour error (mean absolute RGB difference
  over those pixels: continuous, still tells a blurry right view from a blurry wrong one) and face colours
  (colour-histogram intersection of the found object with the render's object: which faces show, whatever
  their exact place). The requested view must win (positive margin). The other two parts of T, each on its own:
  a wrong polar angle (20 degrees towards the middle of the world's range: the top face shows more or less), read
  by the same colour error over the object pixels of both truths; a wrong distance (0.5 towards the middle: the
  object is bigger or smaller in its box), read by the found object's area: does it change between the requested
  and the wrong picture as the truth's does (share of scenes), and how far is the change (|log2 of the ratio of
  areas - the truth's|, against |log2 of the truth's ratio|, what ignoring the distance gives).
- Background (the caption): distance between the mean colour outside the box of the picture and of the
  truth (RGB, 0-1 per channel, Euclidean), against the same distance to the other scenes' truths. A model
  that follows the caption is much nearer its own scene's background than the others'.
- Composition (a model given the background picture): PSNR outside the box against that background.
- Identity: colour-histogram intersection of the object's pixels in each picture of the multi-view sheet
  with the ground-truth render at that view (colours preserved while turning), and the pairwise
  consistency across the sheet.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import numpy as np

from customnet_jax.conditioning.images import to_float
from customnet_jax.conditioning.view import view_from_degrees
from customnet_jax.data import synthetic
from customnet_jax.evaluation import measures

HELD_OUT_WORLD_SEED = 1
DEMO_WORLD = "demo"  # synthetic.WORLDS: configs/demo.py's world ("demo_close") with uniform target views
SHEET_AZIMUTHS = (-90.0, -45.0, 0.0, 45.0, 90.0)
POLAR_TURN = 20.0  # degrees: the wrong polar angle's distance from the requested one
DISTANCE_CHANGE = 0.5  # world units: the wrong distance's


def held_out_scene(index: int, image_size: int) -> synthetic.Scene:
    """Scene `index` of the held-out world (the demo's world with a seed it never trained on)."""
    return synthetic.scene(index, synthetic.named_world(DEMO_WORLD, image_size=image_size, seed=HELD_OUT_WORLD_SEED))


def relative_degrees(scene: synthetic.Scene) -> tuple[float, float, float]:
    """The true (polar, azimuth, radius) change from the condition camera to the target camera."""
    c, t = scene.condition_camera, scene.target_camera
    return t.polar - c.polar, (t.azimuth - c.azimuth) % 360.0, t.radius - c.radius


def wrong_views(scene: synthetic.Scene) -> dict[str, tuple[float, float, float]]:
    """The requested view with one part wrong: azimuth turned 180 degrees; polar angle or distance moved towards
    the middle of the world's range (so the wrong camera stays near the cameras the model trained on); direction:
    the azimuth turned the other way (-a for a)."""
    polar, azimuth, radius = relative_degrees(scene)
    world, target = scene.world, scene.target_camera
    polar_sign = -1.0 if target.polar >= np.mean(world.polar_range) else 1.0
    radius_sign = -1.0 if target.radius >= np.mean(world.radius_range) else 1.0
    return {"azimuth": (polar, (azimuth + 180.0) % 360.0, radius),
            "polar": (polar + polar_sign * POLAR_TURN, azimuth, radius),
            "distance": (polar, azimuth, radius + radius_sign * DISTANCE_CHANGE),
            "direction": (polar, -azimuth % 360.0, radius)}


def truth_and_mask(scene: synthetic.Scene, degrees: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth at a relative view: the render in the box over the background, and its object pixels."""
    x0, y0, x1, y1 = scene.box_pixels
    rgba = scene.render_object(scene.condition_camera.moved(*degrees), x1 - x0)
    truth = scene.background.copy()
    truth[y0:y1, x0:x1] = synthetic.over(rgba, truth[y0:y1, x0:x1])
    mask = np.zeros(truth.shape[:2], bool)
    mask[y0:y1, x0:x1] = rgba[..., 3] > 127
    return truth, mask


def foreground_pixels(image: np.ndarray, box: tuple[int, int, int, int], step: int = 16, share: float = 0.01,
                      tolerance: int = 40) -> np.ndarray:
    """The object found against the picture's own background: the colours that cover at least `share` of the
    picture outside the requested box (quantised to `step`) are the background; pixels farther than
    `tolerance` (largest channel difference, of 255) from all of them, after a 3x3 opening -> bool (H, W)."""
    outside = ~measures.box_mask(image.shape, box)
    quantised = (image[outside].astype(np.int32) // step) * step + step // 2
    colours, counts = np.unique(quantised, axis=0, return_counts=True)
    background = colours[counts >= share * outside.sum()].astype(np.float32)
    if len(background) == 0:
        return np.zeros(image.shape[:2], bool)
    distance = np.abs(image.reshape(-1, 1, 3).astype(np.float32) - background[None]).max(-1).min(-1)
    return measures.open_mask(distance.reshape(image.shape[:2]) > tolerance, 1)


@dataclasses.dataclass
class DemoScores:
    location_iou: float  # found object box vs the requested box
    object_box_iou: float  # found object box vs the ground-truth object's box
    view_agreement: float
    wrong_view_agreement: float
    view_margin: float  # mean over scenes of (agreement - wrong-view agreement)
    view_wins: float  # share of scenes where the requested view wins
    view_error: float  # mean absolute RGB error (0-1) over the truth's object pixels, requested-view picture
    wrong_view_error: float  # the same for the wrong-view picture (against the same truth)
    view_error_wins: float  # share of scenes where the requested view's error is the smaller
    polar_error: float  # the same with a wrong polar angle, over both truths' object pixels (wrong_views)
    wrong_polar_error: float
    polar_error_wins: float
    distance_follows: float  # share of scenes where the object's area changes with a wrong distance as the truth's
    distance_area_error: float  # mean |log2 area ratio (wrong / requested picture) - the truth's log2 ratio|
    distance_area_change: float  # mean |the truth's log2 area ratio|: the area error of ignoring the distance
    view_colours: float  # colour-histogram intersection of the found object with the truth's object
    wrong_view_colours: float  # the same for the wrong-view picture
    background_error: float  # mean colour outside the box vs the truth's (0: exact)
    background_error_other: float  # the same against the other scenes' truths (what ignoring the caption gives)
    background_margin: float  # background_error_other - background_error: > 0 when the caption is followed
    composition_psnr: float  # dB outside the box vs the given background (composition models; nan otherwise)
    identity: float  # colour histogram vs the truth at each view of the sheet
    sheet_consistency: float  # colour histogram across the sheet
    scenes: int
    steps: int

    def table(self) -> str:
        return (f"location: IoU with the true object's box {self.object_box_iou:.3f} "
                f"(requested box {self.location_iou:.3f}) | "
                f"viewpoint agreement {self.view_agreement:.3f} vs wrong view {self.wrong_view_agreement:.3f} "
                f"(margin {self.view_margin:+.3f}, requested view wins in {self.view_wins:.0%}), colour error "
                f"{self.view_error:.3f} vs {self.wrong_view_error:.3f} (wins in {self.view_error_wins:.0%}), face "
                f"colours {self.view_colours:.3f} vs {self.wrong_view_colours:.3f}; wrong polar: colour error "
                f"{self.polar_error:.3f} vs {self.wrong_polar_error:.3f} (wins in {self.polar_error_wins:.0%}); wrong "
                f"distance: the object's area follows in {self.distance_follows:.0%}, log2 area-change error "
                f"{self.distance_area_error:.2f} (ignoring distance {self.distance_area_change:.2f}) | background "
                f"colour error {self.background_error:.3f} vs other scenes {self.background_error_other:.3f} | "
                + (f"composition PSNR {self.composition_psnr:.1f} dB | " if np.isfinite(self.composition_psnr) else "")
                + "identity "
                f"{self.identity:.3f} (sheet consistency {self.sheet_consistency:.3f}) | {self.scenes} held-out "
                f"scenes, {self.steps} DDIM steps")


def histogram_overlap(picture: np.ndarray, found: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Colour-histogram intersection of a picture's found object pixels with the truth's object pixels (1: same)."""
    return float(np.minimum(measures.colour_histogram(picture, found), measures.colour_histogram(truth, mask)).sum())


def object_error(picture: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute RGB difference (0-1) of a picture from the truth over the pixels of `mask`."""
    return float(np.abs(picture[mask] / 255.0 - truth[mask] / 255.0).mean())


def condition_object(scene: synthetic.Scene) -> np.ndarray:
    """The scene's object as the model is given it: the condition view on white, float (R, R, 3) in [-1, 1]."""
    return to_float(scene.object)


def evaluate(pipeline: Any, num_scenes: int = 16, steps: int = 25, seed: int = 0, guidance: float = 3.0,
             sheet_azimuths: tuple[float, ...] = SHEET_AZIMUTHS, figure_rows: list | None = None) -> DemoScores:
    """Scores of `pipeline` (a customnet_jax.sampling.Pipeline of a prompt model) on held-out scenes.
    `figure_rows`, if given, receives one `comparison_figure` row per scene."""
    if pipeline.config.is_zero123:
        raise ValueError("the demo measures take a CustomNet model (prompt-driven or composition), not Zero-1-to-3")
    composition = pipeline.config.has_background
    rows, backgrounds, psnrs = [], [], []  # backgrounds: (mean colour outside the box of the picture, of the truth)
    for index in range(num_scenes):
        scene = held_out_scene(index, pipeline.config.resolution)
        requested, wrongs = relative_degrees(scene), wrong_views(scene)
        wrong = wrongs["azimuth"]
        sheet_views = [(requested[0], (requested[1] + a) % 360.0, requested[2]) for a in sheet_azimuths]
        truths = [truth_and_mask(scene, v) for v in [requested, *sheet_views]]
        pictures = pipeline(condition_object(scene), views=[requested, wrong, wrongs["polar"], wrongs["distance"],
                                                            *sheet_views],
                            bbox=scene.box_pixels, prompt=scene.caption, steps=steps, seed=seed + index,
                            guidance=guidance, progress=False,
                            background=to_float(scene.background) if composition else None).images[:, 0]
        found = [foreground_pixels(p, scene.box_pixels) for p in pictures]
        box = measures.mask_box(found[0]) or (0, 0, 0, 0)
        truth, mask = truths[0]
        sheet, sheet_found = pictures[4:], found[4:]
        identity = [histogram_overlap(p, f, t, m) for p, f, (t, m) in zip(sheet, sheet_found, truths[1:], strict=True)]
        errors = [object_error(p, truth, mask) for p in pictures[:2]]
        both = mask | truth_and_mask(scene, wrongs["polar"])[1]
        truth_change = np.log2(truth_and_mask(scene, wrongs["distance"])[1].sum() / max(mask.sum(), 1))
        change = np.log2(max(found[3].sum(), 1) / max(found[0].sum(), 1))
        polar_and_distance = [object_error(pictures[0], truth, both), object_error(pictures[2], truth, both),
                              float(np.sign(change) == np.sign(truth_change)), abs(change - truth_change),
                              abs(truth_change)]
        rows.append([measures.box_iou(box, scene.box_pixels), measures.box_iou(box, measures.mask_box(mask)),
                     measures.colour_agreement(pictures[0], truth, mask),
                     measures.colour_agreement(pictures[1], truth, mask), np.mean(identity),
                     measures.identity_consistency(list(sheet), sheet_found)["colour"], *errors,
                     histogram_overlap(pictures[0], found[0], truth, mask),
                     histogram_overlap(pictures[1], found[1], truth, mask), *polar_and_distance])
        outside = ~measures.box_mask(truth.shape, scene.box_pixels)
        backgrounds.append([pictures[0][outside].mean(0) / 255.0, truth[outside].mean(0) / 255.0])
        psnrs.append(measures.psnr(pictures[0], scene.background, outside) if composition else np.nan)
        if figure_rows is not None:
            figure_rows.append([scene.object, truth, pictures[0], pictures[1], truth_and_mask(scene, wrong)[0]])
    r = np.asarray(rows, np.float64)
    margins = r[:, 2] - r[:, 3]
    generated, truths = (np.asarray(b) for b in zip(*backgrounds, strict=True))
    distance = np.linalg.norm(generated[:, None] - truths[None], axis=-1)  # (generated scene, truth scene)
    other = distance[~np.eye(num_scenes, dtype=bool)]
    return DemoScores(location_iou=float(r[:, 0].mean()), object_box_iou=float(r[:, 1].mean()),
                      view_agreement=float(r[:, 2].mean()), wrong_view_agreement=float(r[:, 3].mean()),
                      view_margin=float(margins.mean()), view_wins=float((margins > 0).mean()),
                      view_error=float(r[:, 6].mean()), wrong_view_error=float(r[:, 7].mean()),
                      view_error_wins=float((r[:, 6] < r[:, 7]).mean()), view_colours=float(r[:, 8].mean()),
                      wrong_view_colours=float(r[:, 9].mean()),
                      polar_error=float(r[:, 10].mean()), wrong_polar_error=float(r[:, 11].mean()),
                      polar_error_wins=float((r[:, 10] < r[:, 11]).mean()),
                      distance_follows=float(r[:, 12].mean()), distance_area_error=float(r[:, 13].mean()),
                      distance_area_change=float(r[:, 14].mean()),
                      background_error=float(np.diag(distance).mean()),
                      background_error_other=float(other.mean()) if other.size else float("nan"),
                      background_margin=float(other.mean() - np.diag(distance).mean()) if other.size else float("nan"),
                      composition_psnr=float(np.mean(psnrs)), identity=float(r[:, 4].mean()),
                      sheet_consistency=float(np.nanmean(r[:, 5])),
                      scenes=num_scenes, steps=steps)


def view_use(pipeline: Any, num_scenes: int = 32, timesteps: tuple[int, ...] = (999, 800, 600),
             seed: int = 0) -> dict[str, float]:
    """Does the model read each part of T? No sampling: the training objective (train/step.py, on the object's box
    cells only) of held-out scenes with the true T and with one part wrong (`wrong_views`), at the same noise and
    timesteps -> {part: mean loss with it wrong / with the true T - 1} (0: that part is ignored). The views' effect
    is largest at high noise, where only the conditions carry the object. "direction": the azimuth turned the
    other way (-a instead of a; the same |a|, so the same distance from the condition view): does the model know
    which way the object turns, or only how far?"""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from customnet_jax.conditioning.features import frozen_features
    from customnet_jax.data import transforms
    from customnet_jax.diffusion.schedule import alphas_cumprod
    from customnet_jax.train.step import denoising_loss

    model, config = nnx.merge(pipeline.graphdef, pipeline.state), pipeline.config
    scenes = [held_out_scene(i, config.resolution) for i in range(num_scenes)]
    decode = transforms.DecodeRaw(config.resolution)
    examples = [decode.map({"target": s.target, "object": s.object, "view": s.view, "box": s.box,
                            "caption": s.caption}) for s in scenes]  # what the data pipeline makes of the scene
    batch = {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0]}
    flags, size = jnp.zeros(num_scenes, bool), config.latent_size
    batch.update(drop_image=flags, drop_object=flags, drop_text=flags,
                 posterior_noise=jnp.zeros((num_scenes, size, size, config.latent_channels)))  # posterior means
    feats = frozen_features(model, types.SimpleNamespace(model=config), batch,
                         None if config.is_zero123 else jnp.zeros((1, 1, config.context_dim)))
    alphas = jnp.asarray(alphas_cumprod(pipeline.diffusion))
    noise = jax.random.normal(jax.random.PRNGKey(seed), (len(timesteps), *feats["z0"].shape))

    def loss(view: np.ndarray) -> float:  # 1e6: the box cells alone
        return float(np.mean([denoising_loss(model, dict(feats, view=jnp.asarray(view)), jnp.full(num_scenes, t), n,
                                             alphas, pipeline.diffusion.prediction_type, 1e6)
                              for t, n in zip(timesteps, noise, strict=True)]))

    true = loss(np.stack([s.view for s in scenes]))
    wrong = [wrong_views(s) for s in scenes]
    return {part: loss(np.stack([view_from_degrees(*views[part]) for views in wrong])) / true - 1.0
            for part in wrong[0]}


def comparison_figure(rows: list, scale: int = 2, gap: int = 2) -> np.ndarray:
    """A picture for people from `evaluate`'s figure rows: one row per held-out scene, columns = the object the
    model was given, the ground truth at the requested view, the model's picture at that view, the model's
    picture at the wrong (180-degree) view, and the ground truth there -> uint8 grid, upscaled by `scale`."""
    size = rows[0][0].shape[0]
    cell = size * scale + gap
    grid = np.full((len(rows) * cell + gap, 5 * cell + gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            big = np.repeat(np.repeat(picture, scale, 0), scale, 1)
            grid[gap + r * cell : gap + r * cell + size * scale, gap + c * cell : gap + c * cell + size * scale] = big
    return grid
