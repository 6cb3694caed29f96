"""Conditioning inputs vs independent references: Zero-1-to-3's get_T formula, torch interpolate, the demo canvas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from customnet_jax import conditioning as cond
from tests.helpers import rel_l2

RNG = np.random.default_rng(0)


def _rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _camera(polar_deg, azimuth_deg, radius, rng) -> np.ndarray:
    """A 3x4 world->camera matrix with a random rotation whose centre has the given spherical coordinates."""
    p, a = math.radians(polar_deg), math.radians(azimuth_deg)
    centre = radius * np.array([math.sin(p) * math.cos(a), math.sin(p) * math.sin(a), math.cos(p)])
    rot = _rotation(rng)
    return np.concatenate([rot, (-rot @ centre)[:, None]], 1)


def _reference_T(target, condition) -> list[float]:
    """docs/model.md §4 / Zero-1-to-3 get_T, one matrix at a time with the math module."""

    def spherical(rt):
        x, y, z = -rt[:, :3].T @ rt[:, 3]
        return math.atan2(math.sqrt(x * x + y * y), z), math.atan2(y, x), math.sqrt(x * x + y * y + z * z)

    (pt, at, rt_), (pc, ac, rc) = spherical(target), spherical(condition)
    daz = (at - ac) % (2 * math.pi)
    return [pt - pc, math.sin(daz), math.cos(daz), rt_ - rc]


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


# ---------------------------------------------------------------------------------------------- viewpoint


def test_view_from_degrees():
    polar, azimuth = np.array([[-90.0], [30.0]]), np.array([-180.0, 45.0, 170.0])
    t = cond.view_from_degrees(polar, azimuth, 0.25)
    assert t.shape == (2, 3, 4) and t.dtype == np.float32
    expected = [[[math.radians(p), math.sin(math.radians(a)), math.cos(math.radians(a)), 0.25]
                 for a in azimuth] for p in polar[:, 0]]
    np.testing.assert_allclose(t, expected, atol=1e-7)
    np.testing.assert_allclose(cond.view_from_degrees(0, 0), [0, 0, 1, 0])


def test_view_from_cameras_matches_get_T():
    rng = np.random.default_rng(1)
    def random_rt():
        return np.concatenate([_rotation(rng), rng.normal(size=(3, 1)) * 2], 1)

    pairs = [(random_rt(), random_rt()) for _ in range(6)]
    for target, condition in pairs:
        np.testing.assert_allclose(cond.view_from_cameras(target, condition), _reference_T(target, condition),
                                   atol=1e-6)
    batched = cond.view_from_cameras(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
    np.testing.assert_allclose(batched, [_reference_T(*p) for p in pairs], atol=1e-6)


def test_view_from_cameras_wraparound_and_identity():
    rng = np.random.default_rng(2)
    target, condition = _camera(60, -170, 1.7, rng), _camera(80, 170, 1.5, rng)
    t = cond.view_from_cameras(target, condition)  # azimuth -170 - 170 = -340 = +20 degrees (mod 360)
    np.testing.assert_allclose(t, [math.radians(-20), math.sin(math.radians(20)), math.cos(math.radians(20)), 0.2],
                               atol=1e-6)
    np.testing.assert_allclose(t, _reference_T(target, condition), atol=1e-6)
    np.testing.assert_array_equal(cond.view_from_cameras(target, target), [0, 0, 1, 0])
    with pytest.raises(ValueError, match="3x4 world->camera"):
        cond.view_from_cameras(np.eye(4), np.eye(4))


# ------------------------------------------------------------------------------------------------- resize


@pytest.mark.parametrize("method, in_hw, out_hw", [
    ("bicubic_align_corners", (256, 256), (224, 224)),
    ("bicubic_align_corners", (37, 53), (90, 20)),
    ("bilinear", (256, 256), (100, 37)),  # down
    ("bilinear", (31, 64), (256, 129)),  # up, non-square
    ("bilinear", (256, 256), (256, 1)),
])
def test_resize_matches_torch(method, in_hw, out_hw):
    x = RNG.uniform(-1, 1, size=(2, *in_hw, 3)).astype(np.float32)
    mode = "bicubic" if method.startswith("bicubic") else "bilinear"
    ref = _nhwc(F.interpolate(_nchw(x), size=out_hw, mode=mode, align_corners=mode == "bicubic"))
    ours = cond.resize(x, out_hw, method)
    assert ours.dtype == np.float32
    assert rel_l2(ours, ref) <= 1e-5  # measured: bicubic 2.5e-7 / 2.9e-7, bilinear 6.3e-8, (256 -> 256x1) 0
    assert rel_l2(cond.resize(x[0], out_hw, method), ref[0]) <= 1e-5
    jitted = jax.jit(lambda v: cond.resize(v, out_hw, method))(jnp.asarray(x))
    assert isinstance(jitted, jax.Array) and rel_l2(jitted, ref) <= 1e-5  # measured: same to 2 digits


def test_resize_negative():
    """Bilinear with align_corners=True (a deliberate mistake) is far from our half-pixel bilinear."""
    x = RNG.uniform(-1, 1, size=(1, 64, 64, 3)).astype(np.float32)
    wrong = _nhwc(F.interpolate(_nchw(x), size=(40, 40), mode="bilinear", align_corners=True))
    assert rel_l2(cond.resize(x, 40, "bilinear"), wrong) > 1e-2
    with pytest.raises(ValueError, match="unknown resize method"):
        cond.resize(x, 40, "nearest")


def test_clip_preprocess_matches_torch():
    x = RNG.uniform(-1, 1, size=(2, 256, 256, 3)).astype(np.float32)
    t = F.interpolate(_nchw(x), size=(224, 224), mode="bicubic", align_corners=True)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    ref = _nhwc(((t + 1) / 2 - mean) / std)
    assert rel_l2(cond.clip_preprocess(x), ref) <= 1e-5  # measured 2.6e-7
    assert rel_l2(jax.jit(cond.clip_preprocess)(jnp.asarray(x)), ref) <= 1e-5  # measured 2.6e-7


# ------------------------------------------------------------------------------------------------ canvases


def _demo_location_canvas(obj: np.ndarray, box) -> np.ndarray:
    """The original demo: F.interpolate(img, (y1-y0, x1-x0), mode="bilinear") pasted into torch.ones."""
    x0, y0, x1, y1 = box
    patch = F.interpolate(_nchw(obj[None]), (y1 - y0, x1 - x0), mode="bilinear")
    canvas = torch.ones(1, 3, 256, 256)
    canvas[:, :, y0:y1, x0:x1] = patch
    return _nhwc(canvas)[0]


@pytest.mark.parametrize("box, pixels", [
    ((0, 0, 256, 256), (0, 0, 256, 256)),
    ((255, 10, 256, 250), (255, 10, 256, 250)),  # 1-pixel-wide box on the right edge
    ((30, 40, 130, 240), (30, 40, 130, 240)),
    ((0.25, 0.5, 0.75, 1.0), (64, 128, 192, 256)),  # fractions
])
def test_location_canvas_matches_demo(box, pixels):
    obj = RNG.uniform(-1, 1, size=(256, 256, 3)).astype(np.float32)
    assert cond.parse_bbox(box) == pixels
    ours = cond.location_canvas(obj, box)
    assert ours.shape == (256, 256, 3) and ours.dtype == np.float32
    assert rel_l2(ours, _demo_location_canvas(obj, pixels)) <= 1e-6  # measured 0 (full canvas) to 1.5e-8


def test_background_canvas():
    bg = RNG.uniform(-1, 1, size=(300, 200, 3)).astype(np.float32)
    x0, y0, x1, y1 = 20, 50, 120, 90
    ours = cond.background_canvas(bg, (x0, y0, x1, y1))
    resized = cond.resize(bg, 256, "bilinear")
    assert (ours[y0:y1, x0:x1] == 1).all()
    outside = np.ones((256, 256), bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(ours[outside], resized[outside])
    ref = _nhwc(F.interpolate(_nchw(bg[None]), (256, 256), mode="bilinear"))[0]
    assert rel_l2(resized, ref) <= 1e-5  # measured 6.1e-8


@pytest.mark.parametrize("call, message", [
    (lambda img: cond.location_canvas(img, (10, 10, 300, 80)),
     r"bbox \(10, 10, 300, 80\) reaches outside the 256x256 canvas; give pixel coordinates in \[0, 256\]"),
    (lambda img: cond.location_canvas(img, (-1, 10, 30, 80)), "reaches outside"),
    (lambda img: cond.location_canvas(img, (10, 10, 10, 80)), "zero or negative area"),
    (lambda img: cond.location_canvas(img, (50, 10, 20, 80)), "zero or negative area"),
    (lambda img: cond.background_canvas(img, (0.1, float("nan"), 0.5, 0.5)), "non-finite"),
    (lambda img: cond.location_canvas(np.linspace(0, 255, img.size).reshape(img.shape), (0, 0, 64, 64)),
     r"object image has values in \[0, 255\]; pass float images scaled to \[-1, 1\] \(x / 127.5 - 1\)"),
    (lambda img: cond.location_canvas(((img + 1) * 127.5).astype(np.uint8), (0, 0, 64, 64)), r"\(uint8\)"),
    (lambda img: cond.background_canvas(img[..., :2], (0, 0, 64, 64)), r"background image has shape .*\(H, W, 3\)"),
    (lambda img: cond.location_canvas(np.where(img > 0.9, np.nan, img), (0, 0, 64, 64)), "non-finite"),
])
def test_errors(call, message):
    img = RNG.uniform(-1, 1, size=(64, 64, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=message):
        call(img)


# ---------------------------------------------------------------------------------------------- user images


def test_object_on_white_rgba():
    rgba = np.zeros((300, 400, 4), np.uint8)  # transparent, coloured junk under alpha 0
    rgba[..., :3] = 17
    rgba[100:150, 120:220] = (200, 30, 60, 255)  # 50 x 100 object -> 100 x 200 on the canvas
    out = cond.object_on_white(rgba)
    assert out.shape == (256, 256, 3) and out.dtype == np.float32
    colour = np.array([200, 30, 60]) / 127.5 - 1
    expected = np.ones((256, 256, 3), np.float32)
    expected[78:178, 28:228] = colour
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # Same object given as RGB + mask, and as RGB already on white.
    rgb = np.full((300, 400, 3), 255, np.uint8)
    rgb[100:150, 120:220] = (200, 30, 60)
    mask = (rgba[..., 3] > 0).astype(np.uint8) * 255
    np.testing.assert_allclose(cond.object_on_white(np.where(mask[..., None] > 0, rgb, 0).astype(np.uint8),
                                                    mask=mask), expected, atol=1e-6)
    np.testing.assert_allclose(cond.object_on_white(Image.fromarray(rgb)), expected, atol=1e-6)


def test_object_on_white_and_load_rgb_errors_and_loading(tmp_path):
    with pytest.raises(ValueError, match="alpha channel is empty"):
        cond.object_on_white(np.zeros((64, 64, 4), np.uint8))
    with pytest.raises(ValueError, match="mask is empty"):
        cond.object_on_white(np.zeros((64, 64, 3), np.uint8), mask=np.zeros((64, 64), bool))
    rgba = np.zeros((40, 30, 4), np.uint8)
    rgba[10:20, 5:15] = (0, 0, 0, 255)
    path = tmp_path / "obj.png"
    Image.fromarray(rgba).save(path)
    loaded = cond.load_rgb(path)
    assert loaded.shape == (40, 30, 3) and loaded[0, 0].tolist() == [1, 1, 1] and loaded[12, 8].tolist() == [-1] * 3
    assert cond.load_rgb(Image.fromarray(rgba), size=(20, 60)).shape == (20, 60, 3)
