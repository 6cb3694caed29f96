"""Coloured 3D solids and an analytic ray-casting renderer (numpy, vectorised over pixels).

Objects are unions of convex solids (boxes, prisms, pyramids, cones, octahedra, a house) whose side faces are
coloured by which half of the object they face (colour A / colour B, in alternating full and light tones) and
whose top faces have a third colour, so every viewpoint looks different; a fixed world light shades them.
Cameras follow the Zero-1-to-3 / Blender convention: z is up, a camera at spherical (polar from +z, azimuth,
radius) looks at the origin, and `Camera.rt()` is its 3x4 world->camera matrix (camera looks along -z, y up),
so `conditioning.view_from_cameras(target.rt(), condition.rt())` is the relative view T of docs/model.md §4.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "green": (35, 160, 55), "blue": (35, 75, 215), "yellow": (240, 205, 30),
    "orange": (245, 125, 25), "purple": (130, 50, 185), "cyan": (30, 195, 205), "pink": (240, 105, 175),
    "brown": (125, 80, 35), "black": (35, 35, 35),
}
SHAPES = ("cube", "box", "pyramid", "cylinder", "cone", "prism", "diamond", "house")
LIGHT = np.array([0.45, -0.35, 0.82]) / np.linalg.norm([0.45, -0.35, 0.82])


@dataclasses.dataclass(frozen=True)
class Camera:
    """A camera looking at the origin from spherical coordinates (degrees, world units)."""

    polar: float
    azimuth: float
    radius: float

    def centre(self) -> np.ndarray:
        p, a = math.radians(self.polar), math.radians(self.azimuth)
        return self.radius * np.array([math.sin(p) * math.cos(a), math.sin(p) * math.sin(a), math.cos(p)])

    def rt(self) -> np.ndarray:
        """3x4 world->camera matrix [R | t] (Blender camera: looks along its -z axis, y up)."""
        c = self.centre()
        z = c / np.linalg.norm(c)
        x = np.cross([0.0, 0.0, 1.0], z)
        x = x / np.linalg.norm(x) if np.linalg.norm(x) > 1e-9 else np.array([0.0, 1.0, 0.0])
        rot = np.stack([x, np.cross(z, x), z])
        return np.concatenate([rot, (-rot @ c)[:, None]], 1)

    def moved(self, dpolar: float, dazimuth: float, dradius: float = 0.0) -> Camera:
        """This camera moved by a relative view in degrees (the user-facing form of T)."""
        return Camera(self.polar + dpolar, (self.azimuth + dazimuth) % 360.0, self.radius + dradius)


# -------------------------------------------------------------------------------------------- objects


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    """One object: shape, three colour names (side A, side B, top), yaw (degrees), proportions."""

    shape: str
    colors: tuple[str, str, str]
    yaw: float = 0.0
    width: float = 1.0  # relative half-width (x)
    depth: float = 1.0  # relative half-depth (y)
    height: float = 1.0  # relative half-height (z)

    def caption(self) -> str:
        a, b, c = self.colors
        top = {"house": " with a {} roof", "cube": " with a {} top", "box": " with a {} top",
               "cylinder": " with a {} top", "prism": " with a {} top"}.get(self.shape, "")
        article = "an" if a[0] in "aeiou" else "a"
        return f"{article} {a} and {b} {self.shape}" + top.format(c)


def _box(w, d, h):
    normals = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float64)
    corners = np.array([[sx * w, sy * d, sz * h] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    return normals, np.array([w, w, d, d, h, h], np.float64), corners


def _ring(n, r, phase=0.0):
    ang = phase + 2 * np.pi * np.arange(n) / n
    return ang, np.stack([r * np.cos(ang), r * np.sin(ang)], -1)


def _prism(n, r, h, phase=0.0):
    ang, ring = _ring(n, r, phase)
    mid = ang + np.pi / n
    sides = np.stack([np.cos(mid), np.sin(mid), np.zeros(n)], -1)
    normals = np.concatenate([sides, [[0, 0, 1], [0, 0, -1]]])
    offsets = np.concatenate([np.full(n, r * np.cos(np.pi / n)), [h, h]])
    corners = np.concatenate([np.c_[ring, np.full(n, h)], np.c_[ring, np.full(n, -h)]])
    return normals, offsets, corners


def _pyramid(n, r, h, phase=0.0):
    ang, ring = _ring(n, r, phase)
    mid, apothem = ang + np.pi / n, r * np.cos(np.pi / n)
    sides = np.stack([np.cos(mid) * 2 * h, np.sin(mid) * 2 * h, np.full(n, apothem)], -1)
    sides /= np.linalg.norm(sides, axis=-1, keepdims=True)
    normals = np.concatenate([sides, [[0, 0, -1]]])
    offsets = np.concatenate([sides[:, 2] * h, [h]])
    return normals, offsets, np.concatenate([np.c_[ring, np.full(n, -h)], [[0, 0, h]]])


def _octahedron(sx, sy, sz):
    signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], np.float64)
    normals = signs / np.array([sx, sy, sz])
    norm = np.linalg.norm(normals, axis=-1)
    corners = np.array([[sx, 0, 0], [-sx, 0, 0], [0, sy, 0], [0, -sy, 0], [0, 0, sz], [0, 0, -sz]])
    return normals / norm[:, None], 1 / norm, corners


def _house(w, d, h):
    body_top = 0.2 * h
    body_n, _, body_c = _box(w, d, 1.0)
    body_o = np.array([w, w, d, d, body_top, h])  # z from -h to body_top
    body_c[:, 2] = np.where(body_c[:, 2] > 0, body_top, -h)
    ridge = h + 0.15 * h
    slope = np.array([[0, ridge - body_top, d * 1.15], [0, -(ridge - body_top), d * 1.15]], np.float64)
    slope /= np.linalg.norm(slope, axis=-1, keepdims=True)
    roof_n = np.concatenate([slope, [[1, 0, 0], [-1, 0, 0], [0, 0, -1]]])
    roof_o = np.concatenate([slope[:, 2] * ridge, [w * 1.05, w * 1.05, -body_top]])
    roof_c = np.array([[sx * w * 1.05, sy * d * 1.15, body_top] for sx in (-1, 1) for sy in (-1, 1)]
                      + [[sx * w * 1.05, 0, ridge] for sx in (-1, 1)])
    return [(body_n, body_o, body_c), (roof_n, roof_o, roof_c)]


def _solids(spec: ObjectSpec) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Convex parts (outward normals (F,3), offsets (F,), corners (V,3)) in the object frame, unscaled."""
    w, d, h = 0.5 * spec.width, 0.5 * spec.depth, 0.5 * spec.height
    shape = spec.shape
    if shape == "cube":
        return [_box(w, w, w)]
    if shape == "box":
        return [_box(w, d, h)]
    if shape == "pyramid":
        return [_pyramid(4, w * 1.3, h, np.pi / 4)]
    if shape == "cone":
        return [_pyramid(16, w, h)]
    if shape == "cylinder":
        return [_prism(16, w, h)]
    if shape == "prism":
        return [_prism(3, w * 1.3, h, np.pi / 2)]
    if shape == "diamond":
        return [_octahedron(w, d, h * 1.3)]
    if shape == "house":
        return _house(w, d, h)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


@dataclasses.dataclass(frozen=True, eq=False)
class _Part:
    normals: np.ndarray  # (F, 3) world frame
    offsets: np.ndarray  # (F,)  inside: normals @ x <= offsets
    colors: np.ndarray  # (F, 3) lit colour in [0, 1]


def _face_groups(normals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The colouring rule per face: (is_side, azimuth in [0, 2pi) (object frame, nudged by 0.01 so that a face
    facing azimuth 0 is A), is_a: a side face facing azimuth [0, 180) takes colour A, the others B)."""
    azimuth = np.mod(np.arctan2(normals[:, 1], normals[:, 0]) + 0.01, 2 * np.pi)
    return np.abs(normals[:, 2]) <= 0.7, azimuth, azimuth < np.pi


def _face_colors(normals: np.ndarray, colors: tuple[str, str, str]) -> np.ndarray:
    """Top/bottom faces colour C; side faces colour A or B (`_face_groups`), in alternating full and light tones
    around the object, so that every side view shows a different pattern."""
    a, b, c = (np.array(COLORS[n], np.float64) / 255 for n in colors)
    is_side, azimuth, is_a = _face_groups(normals)
    side = np.where(is_a[:, None], a, b)
    rank = np.empty(len(normals), int)
    rank[np.lexsort((normals[:, 2], azimuth))] = np.arange(len(normals))
    order = np.cumsum(is_side[np.argsort(rank)])[rank] - 1  # position among side faces by azimuth
    side = np.where((order % 2 == 1)[:, None], 0.55 * side + 0.45, side)  # light tones: mixed with white
    return np.where(is_side[:, None], side, c)


def colour_boundaries(spec: ObjectSpec) -> tuple[float, float]:
    """Object-frame azimuths (degrees) where the side colour turns from B to A and from A to B (midway between
    the neighbouring side faces of the first convex part, by the rule of `_face_groups`): a camera there sees both."""
    is_side, azimuth, is_a = _face_groups(_solids(spec)[0][0])
    a, b = azimuth[is_side & is_a], azimuth[is_side & ~is_a]
    b_to_a = 0.5 * (b.max() - 2 * np.pi + a.min()) - 0.01
    a_to_b = 0.5 * (a.max() + b.min()) - 0.01
    return math.degrees(b_to_a) % 360.0, math.degrees(a_to_b) % 360.0


def object_parts(spec: ObjectSpec, object_radius: float = 0.7) -> list[_Part]:
    """The object's convex parts in the world frame: coloured, lit, yawed, scaled to the bounding radius."""
    if len(spec.colors) != 3 or any(c not in COLORS for c in spec.colors):
        raise ValueError(f"colors {spec.colors} must be three names from {tuple(COLORS)}")
    solids = _solids(spec)
    corners = np.concatenate([s[2] for s in solids])
    centre_z = 0.5 * (corners[:, 2].max() + corners[:, 2].min())
    scale = object_radius / np.linalg.norm(corners - [0, 0, centre_z], axis=-1).max()
    yaw = math.radians(spec.yaw)
    rot = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
    parts = []
    for normals, offsets, _ in solids:
        base = _face_colors(normals, spec.colors)
        offsets = (offsets - normals[:, 2] * centre_z) * scale  # shift down by centre_z, then scale
        world = normals @ rot.T
        shade = 0.55 + 0.45 * np.clip(world @ LIGHT, 0, None)
        parts.append(_Part(world, offsets, np.clip(base * shade[:, None], 0, 1)))
    return parts


# ------------------------------------------------------------------------------------------- renderer


def _rays(camera: Camera, n: int, fov_deg: float) -> np.ndarray:
    """World-space ray directions (n*n, 3) through pixel centres, row-major from the top-left."""
    coords = (np.arange(n) + 0.5) / n * 2 - 1
    u, v = np.meshgrid(coords, coords)
    tan = math.tan(math.radians(fov_deg) / 2)
    cam = np.stack([u * tan, -v * tan, -np.ones_like(u)], -1).reshape(-1, 3)
    return cam @ camera.rt()[:, :3]  # R^T d


def render(spec: ObjectSpec, camera: Camera, size: int = 64, *, fov_deg: float = 45.0, supersample: int = 2,
           object_radius: float = 0.7) -> np.ndarray:
    """The object seen from `camera`: uint8 RGBA (size, size, 4), straight alpha, transparent background.

    Analytic ray casting: a ray hits a convex part between its last entering and first leaving plane; the
    nearest part wins. Only rays through the bounding sphere are cast.
    """
    n = size * supersample
    dirs, origin = _rays(camera, n, fov_deg), camera.centre()
    along = dirs @ origin  # ray / bounding-sphere test: |o + t d| = r has a real root
    cast = np.flatnonzero(along * along - (dirs * dirs).sum(1) * (origin @ origin - object_radius**2) >= 0)
    dirs = dirs[cast]
    depth = np.full(len(cast), np.inf)
    color = np.zeros((len(cast), 3))
    for part in object_parts(spec, object_radius):
        denom = dirs @ part.normals.T  # (N, F): < 0 where the ray enters the plane's half-space
        denom[denom == 0] = 1e-12  # parallel: leaving at +-inf decides inside/outside
        t = (part.offsets - part.normals @ origin) / denom
        t_near = np.where(denom < 0, t, -np.inf)
        face = t_near.argmax(1)
        t_near = np.take_along_axis(t_near, face[:, None], 1)[:, 0]
        t_far = np.where(denom > 0, t, np.inf).min(1)
        hit = (t_near <= t_far) & (t_near > 0) & (t_near < depth)
        depth[hit] = t_near[hit]
        color[hit] = part.colors[face[hit]]
    full_color, full_alpha = np.zeros((n * n, 3)), np.zeros(n * n)
    full_color[cast], full_alpha[cast] = color, np.isfinite(depth)
    color = full_color.reshape(size, supersample, size, supersample, 3).mean((1, 3))
    alpha = full_alpha.reshape(size, supersample, size, supersample).mean((1, 3))
    rgb = np.where(alpha[..., None] > 0, color / np.maximum(alpha, 1e-9)[..., None], 0.0)
    return np.rint(np.concatenate([rgb, alpha[..., None]], -1) * 255).astype(np.uint8)


def over(rgba: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Alpha-composite uint8 RGBA over a uint8 RGB picture of the same size -> uint8 RGB."""
    a = rgba[..., 3:].astype(np.float32) / 255
    out = rgba[..., :3].astype(np.float32) * a + background.astype(np.float32) * (1 - a)
    return np.rint(out).astype(np.uint8)


def on_white(rgba: np.ndarray) -> np.ndarray:
    return over(rgba, np.full(rgba.shape[:2] + (3,), 255, np.uint8))
