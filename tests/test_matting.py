"""Object preparation on synthetic photos with known masks: GrabCut finds the object on a textured background,
the auto rule picks the right matting, bad masks are refused with the fix named, SAM runs end to end on a tiny
random SAM, and sample.py writes the cut-out it used."""

import json

import numpy as np
import pytest
from PIL import Image

from customnet_jax import matting

HEIGHT, WIDTH = 120, 160


def _texture(seed: int = 0) -> np.ndarray:
    """A non-white, textured background: green-grey stripes, blotches and noise (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:HEIGHT, :WIDTH].astype(np.float32)
    stripes = 25 * np.sin(x / 5.0 + 0.3 * y / 7.0) + 15 * np.sin(y / 3.0)
    base = np.stack([90 + stripes, 130 + stripes, 100 + 0.5 * stripes], -1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _object_mask(center=(60, 80), radii=(32, 40)) -> np.ndarray:
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    return ((y - center[0]) / radii[0]) ** 2 + ((x - center[1]) / radii[1]) ** 2 <= 1


def _photo(mask: np.ndarray, background: np.ndarray) -> np.ndarray:
    """An orange, shaded object (with a dark band) drawn on the background."""
    y, x = np.mgrid[:HEIGHT, :WIDTH].astype(np.float32)
    shade = 0.75 + 0.25 * np.cos((x - 80) / 40)
    colour = np.stack([230 * shade, 120 * shade, 40 * shade], -1)
    colour[(y > 55) & (y < 62)] = (120, 40, 30)
    return np.where(mask[..., None], colour, background).astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_grabcut_finds_the_object_on_a_textured_background():
    truth = _object_mask()
    photo = _photo(truth, _texture())
    cutout = matting.cut_out(photo)  # auto: no alpha, the border is not white, no segmenter -> grabcut
    assert cutout.method == "grabcut" and cutout.warnings == ()
    assert _iou(cutout.mask, truth) >= 0.9  # measured 0.98
    assert (cutout.rgb[~cutout.mask] == 255).all() and (cutout.rgb[cutout.mask] == photo[cutout.mask]).all()
    boxed = matting.cut_out(photo, "grabcut", object_box=(30, 20, 130, 100))  # a user box around the object
    assert _iou(boxed.mask, truth) >= 0.9  # measured 0.98
    # negative control: the old rule (non-white pixels) takes the whole photo, and is refused, naming the fix
    with pytest.raises(ValueError, match=r"covers 100% .*--object-box .*--matting sam --segmenter"):
        matting.cut_out(photo, "white")


def test_auto_rule_picks_alpha_white_and_warns_on_border_masks():
    truth = _object_mask()
    rgba = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    rgba[truth] = (200, 30, 60, 255)
    cutout = matting.cut_out(rgba)
    assert cutout.method == "alpha" and (cutout.mask == truth).all()
    on_white = np.where(truth[..., None], np.uint8(90), np.uint8(255)).repeat(3, -1)
    cutout = matting.cut_out(on_white)
    assert cutout.method == "white" and (cutout.mask == truth).all() and cutout.warnings == ()
    touching = _object_mask(center=(60, 10))  # an object cut by the left border: still on white
    cutout = matting.cut_out(np.where(touching[..., None], np.uint8(90), np.uint8(255)).repeat(3, -1))
    assert cutout.method == "white" and (cutout.mask == touching).all() and cutout.warnings == ()
    frame = _object_mask(radii=(70, 90))  # touches all four sides: a warning that names the fix
    cutout = matting.cut_out(np.where(frame[..., None], np.uint8(90), np.uint8(255)).repeat(3, -1), "white")
    assert len(cutout.warnings) == 1 and "all four sides" in cutout.warnings[0] and "--mask" in cutout.warnings[0]
    with pytest.raises(ValueError, match=r"empty; give a mask \(--mask\)"):
        matting.cut_out(np.full((HEIGHT, WIDTH, 3), 255, np.uint8))
    with pytest.raises(ValueError, match="not inside the 160x120 picture"):
        matting.cut_out(on_white, "grabcut", object_box=(10, 10, 200, 50))
    with pytest.raises(ValueError, match="no alpha channel"):
        matting.cut_out(on_white, "alpha")
    with pytest.raises(ValueError, match="--segmenter DIR"):
        matting.cut_out(on_white, "sam")
    assert matting.cut_out(on_white, mask=truth).method == "mask"
    assert matting.auto_method(None, _photo(truth, _texture()), "sam-folder") == "sam"


def test_sam_matting_on_a_tiny_random_sam(tmp_path):
    from tests.test_pairs import _save_sam  # the pair builder's tiny random SAM

    _save_sam(tmp_path / "sam")
    photo = _photo(_object_mask(), _texture())
    cutout = matting.cut_out(photo, segmenter=tmp_path / "sam")  # auto with a segmenter -> sam, centre prompt
    assert cutout.method == "sam" and cutout.mask.shape == (HEIGHT, WIDTH) and cutout.mask.dtype == bool
    try:  # random weights: any mask, but the same one for the same input, and through the box prompt as well
        boxed = matting.cut_out(photo, "sam", object_box=(30, 20, 130, 100), segmenter=tmp_path / "sam")
    except ValueError as error:  # a random SAM may find nothing or everything: the refusal names the fix
        assert "--object-box" in str(error)
    else:
        assert boxed.method == "sam"
    assert (matting.cut_out(photo, segmenter=tmp_path / "sam").mask == cutout.mask).all()


@pytest.mark.slow
def test_sample_cli_writes_the_cut_out(tmp_path):
    """sample.py --object <a photo on a textured background>: the cut-out is the object, and the settings say so."""
    from flax import nnx

    from configs.tiny import tiny_model
    from customnet_jax.model_folder import param_tree, save_model_folder
    from customnet_jax.models.build import initialized_model
    from customnet_jax.models.customnet import CustomNet
    from customnet_jax.sampling.cli import main

    model = initialized_model(lambda: CustomNet(tiny_model(), rngs=nnx.Rngs(0)), seed=0)
    folder = save_model_folder(tmp_path / "tiny", param_tree(model), tiny_model(), provenance={"source": "test"})
    truth = _object_mask()
    Image.fromarray(_photo(truth, _texture())).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(folder), "--object", str(tmp_path / "photo.png"), "--steps", "1",
                 "--out", str(out), "--no-progress"]) == 0
    settings = json.loads((out / "sample.json").read_text())
    assert settings["matting"]["method"] == "grabcut" and settings["matting"]["warnings"] == []
    x0, y0, x1, y1 = settings["matting"]["mask_box"]
    assert abs(x0 - 40) <= 3 and abs(y0 - 28) <= 3 and abs(x1 - 121) <= 3 and abs(y1 - 93) <= 3
    written = np.asarray(Image.open(out / "sample_object.png"))
    assert written.shape == (64, 64, 4)  # the model's object (RGB) with its mask as alpha
    inside, outside = written[..., 3] > 127, written[..., 3] == 0
    assert inside.mean() > 0.3 and (written[outside][:, :3] >= 245).all(-1).mean() > 0.99  # white around it
    assert (written[inside][:, 0].astype(int) - written[inside][:, 1] > 40).mean() > 0.9  # orange, not green
    assert main(["--checkpoint", str(folder), "--object", str(tmp_path / "photo.png"), "--matting", "white",
                 "--out", str(tmp_path / "refused"), "--no-progress"]) == 2
    assert not (tmp_path / "refused").exists()
