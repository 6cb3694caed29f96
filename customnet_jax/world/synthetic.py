"""A synthetic world for tests, the built-in demo and evaluation: coloured 3D solids on procedural backgrounds.

`scene(seed)` draws one training example deterministically: an object (renderer.py), two cameras, a square box,
a background, a caption from a template ("a red and blue cube with a yellow top on a striped green floor");
the Scene re-renders the ground truth of any camera (`target_for`). `World` holds the parameters.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from customnet_jax.conditioning import view_from_degrees
from customnet_jax.world.renderer import (
    COLORS,
    SHAPES,
    Camera,
    ObjectSpec,
    colour_boundaries,
    object_parts,
    on_white,
    over,
    render,
)

__all__ = ["COLORS", "SHAPES", "WORLDS", "BackgroundSpec", "Camera", "ObjectSpec", "Scene", "World", "background",
           "named_world", "object_parts", "on_white", "over", "relative_view", "render", "sample_background",
           "sample_box", "sample_camera", "sample_object", "scene"]

PATTERNS = ("plain", "striped", "checkered", "dotted")  # what the built-in demo model was trained on
NEW_PATTERNS = ("ringed",)  # drawn by background() but in no world the demo saw (the LoRA example's new style)
SURFACES = ("floor", "wall", "table")


@dataclasses.dataclass(frozen=True)
class World:
    """The world's parameters: image size, camera ranges (degrees), box sizes (fractions of the image)."""

    image_size: int = 64
    supersample: int = 2  # rays per pixel side (anti-aliasing)
    fov_deg: float = 45.0
    polar_range: tuple[float, float] = (45.0, 105.0)  # from +z (up); 90 = level with the object
    radius_range: tuple[float, float] = (2.0, 2.6)
    box_range: tuple[float, float] = (0.4, 0.85)  # side of the square object box
    object_radius: float = 0.7  # bounding-sphere radius of every object
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    seed: int = 0  # world seed: scene(i) of two worlds with different seeds differ
    # None: the condition camera looks from anywhere. A number d: its azimuth is within +-d degrees of one of the
    # object's two colour boundaries (renderer.colour_boundaries: where side colour A meets B), so the condition
    # view shows both side colours and a turned view rearranges what it shows rather than guessing a hidden side
    condition_spread: float | None = None
    # A share of scenes whose target camera turns at most +-close_view_spread degrees of azimuth from the condition
    # camera (0: the target azimuth is uniform, as in Zero-1-to-3's renders)
    close_view_share: float = 0.0
    close_view_spread: float = 20.0
    patterns: tuple[str, ...] = PATTERNS  # the background patterns its scenes draw from


# Named worlds (DataConfig.synthetic_world). "demo": the condition view shows both side colours and, with polar
# angles above the horizon, the top: a 2-core CPU cannot train a model to imagine a hidden side (the released models
# learnt that from 250k objects), only to turn what it sees; the demo's measures use it. "demo_close", what the
# built-in demo trains on: the same with half of the target views near the condition view (ties azimuth to picture).
_DEMO_CLOSE = World(polar_range=(55.0, 85.0), condition_spread=30.0, close_view_share=0.5)
WORLDS = {"default": World(), "demo": dataclasses.replace(_DEMO_CLOSE, close_view_share=0.0), "demo_close": _DEMO_CLOSE,
          # a background style the demo never saw (the LoRA example, configs/lora.py): every background ringed
          "ringed": dataclasses.replace(_DEMO_CLOSE, patterns=NEW_PATTERNS)}


def named_world(name: str, **changes) -> World:
    """WORLDS[name] with `changes` (image_size, seed, ...)."""
    if name not in WORLDS:
        raise ValueError(f"unknown synthetic world {name!r}; expected one of {sorted(WORLDS)}")
    return dataclasses.replace(WORLDS[name], **changes)


def relative_view(target: Camera, condition: Camera) -> np.ndarray:
    """T (4,) from the condition camera to the target camera, from their degrees (= view_from_cameras of rt())."""
    return view_from_degrees(target.polar - condition.polar, (target.azimuth - condition.azimuth) % 360.0,
                             target.radius - condition.radius)


# ----------------------------------------------------------------------------------------- backgrounds


@dataclasses.dataclass(frozen=True)
class BackgroundSpec:
    pattern: str
    color: str
    surface: str = "floor"
    angle: float = 0.0  # stripe direction (degrees)
    period: float = 0.2  # pattern period, fraction of the image side
    phase: float = 0.0

    def phrase(self) -> str:
        pattern = "" if self.pattern == "plain" else self.pattern + " "
        where = "in front of" if self.surface == "wall" else "on"
        return f"{where} a {pattern}{self.color} {self.surface}"


def background(spec: BackgroundSpec, size: int) -> np.ndarray:
    """A procedural two-tone picture (pale tones of the colour, so objects stand out) -> uint8 (size, size, 3)."""
    base = np.array(COLORS[spec.color], np.float64)
    light, dark = 0.3 * base + 0.7 * 255, 0.65 * base + 0.35 * 255
    coords = (np.arange(size) + 0.5) / size
    y, x = np.meshgrid(coords, coords, indexing="ij")
    a = math.radians(spec.angle)
    u = (x * math.cos(a) + y * math.sin(a)) / spec.period + spec.phase
    v = (-x * math.sin(a) + y * math.cos(a)) / spec.period + spec.phase
    if spec.pattern == "plain":
        mix = 0.35 * (y if spec.surface != "wall" else x)  # a gentle gradient
    elif spec.pattern == "striped":
        mix = (np.floor(u) % 2).astype(np.float64)
    elif spec.pattern == "checkered":
        mix = ((np.floor(u) + np.floor(v)) % 2).astype(np.float64)
    elif spec.pattern == "dotted":
        fu, fv = u - np.floor(u) - 0.5, v - np.floor(v) - 0.5
        mix = (fu * fu + fv * fv < 0.09).astype(np.float64)
    elif spec.pattern == "ringed":  # concentric rings around a centre on the diagonal, placed by the phase
        mix = (np.floor(np.hypot(x - spec.phase, y - 1.0 + spec.phase) / spec.period) % 2).astype(np.float64)
    else:
        raise ValueError(f"unknown pattern {spec.pattern!r}; expected one of {PATTERNS + NEW_PATTERNS}")
    out = light * (1 - mix[..., None]) + dark * mix[..., None]
    return np.rint(out).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- scenes


def sample_object(rng: np.random.Generator, world: World = World()) -> ObjectSpec:
    colors = tuple(str(c) for c in rng.choice(world.colors, 3, replace=False))
    w, d, h = rng.uniform(0.7, 1.3, 3)
    return ObjectSpec(str(rng.choice(world.shapes)), colors, float(rng.uniform(0, 360)), float(w), float(d), float(h))


def sample_camera(rng: np.random.Generator, world: World = World()) -> Camera:
    return Camera(float(rng.uniform(*world.polar_range)), float(rng.uniform(0, 360)),
                  float(rng.uniform(*world.radius_range)))


def sample_background(rng: np.random.Generator, exclude: tuple[str, ...] = (),
                      patterns: tuple[str, ...] = PATTERNS) -> BackgroundSpec:
    colors = [c for c in COLORS if c not in exclude and c != "black"]
    return BackgroundSpec(str(rng.choice(patterns)), str(rng.choice(colors)), str(rng.choice(SURFACES)),
                          float(rng.choice([0.0, 45.0, 90.0, 135.0])), float(rng.uniform(0.1, 0.3)),
                          float(rng.uniform(0, 1)))


def sample_box(rng: np.random.Generator, size: int, box_range: tuple[float, float]) -> tuple[int, int, int, int]:
    """A square box (x0, y0, x1, y1) in pixels, inside the size x size image."""
    side = int(np.clip(round(rng.uniform(*box_range) * size), 4, size))
    x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
    return x0, y0, x0 + side, y0 + side


@dataclasses.dataclass(frozen=True, eq=False)
class Scene:
    """One example of the world: target (object in its box on the background), condition view, T, caption."""

    world: World
    spec: ObjectSpec
    condition_camera: Camera
    target_camera: Camera
    background_spec: BackgroundSpec
    box_pixels: tuple[int, int, int, int]  # (x0, y0, x1, y1) in the world's image_size pixels
    target: np.ndarray  # uint8 (S, S, 3)
    object: np.ndarray  # uint8 (S, S, 3): the condition view on white
    background: np.ndarray  # uint8 (S, S, 3): the background without the object

    @property
    def view(self) -> np.ndarray:
        return relative_view(self.target_camera, self.condition_camera)

    @property
    def box(self) -> np.ndarray:
        """The box as fractions (x0, y0, x1, y1) of the image side."""
        return np.asarray(self.box_pixels, np.float32) / self.world.image_size

    @property
    def caption(self) -> str:
        return f"{self.spec.caption()} {self.background_spec.phrase()}"

    def render_object(self, camera: Camera, size: int | None = None) -> np.ndarray:
        """RGBA (size, size, 4) of this scene's object seen from `camera` (default size: the world's)."""
        w = self.world
        return render(self.spec, camera, size or w.image_size, fov_deg=w.fov_deg, supersample=w.supersample,
                      object_radius=w.object_radius)

    def target_for(self, camera: Camera) -> np.ndarray:
        """Ground truth: the object seen from `camera`, in this scene's box on its background -> uint8 RGB."""
        x0, y0, x1, y1 = self.box_pixels
        out = self.background.copy()
        out[y0:y1, x0:x1] = over(self.render_object(camera, x1 - x0), out[y0:y1, x0:x1])
        return out


def scene(seed: int, world: World = World()) -> Scene:
    """The example number `seed` of the world (deterministic in (world.seed, seed))."""
    rng = np.random.default_rng([world.seed, seed])
    spec = sample_object(rng, world)
    condition, target = sample_camera(rng, world), sample_camera(rng, world)
    if world.condition_spread is not None:
        facing = (spec.yaw + colour_boundaries(spec)[int(rng.integers(2))]
                  + rng.uniform(-world.condition_spread, world.condition_spread))
        condition = dataclasses.replace(condition, azimuth=float(facing % 360.0))
    if world.close_view_share > 0 and rng.uniform() < world.close_view_share:
        turn = rng.uniform(-world.close_view_spread, world.close_view_spread)
        target = dataclasses.replace(target, azimuth=float((condition.azimuth + turn) % 360.0))
    bg_spec = sample_background(rng, exclude=spec.colors, patterns=world.patterns)
    size = world.image_size
    box = sample_box(rng, size, world.box_range)
    bg = background(bg_spec, size)
    partial = Scene(world, spec, condition, target, bg_spec, box, bg, bg, bg)
    obj = on_white(partial.render_object(condition))
    return dataclasses.replace(partial, target=partial.target_for(target), object=obj)
