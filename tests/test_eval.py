"""Evaluation: the paper's metrics equal a direct cosine of the same models' embeddings, aggregation, the
ground-truth measures on pictures with known answers, and the resumable protocol runner on a tiny grid."""

import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image
from transformers import (
    BitImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizer,
    Dinov2Config,
    Dinov2Model,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

from configs.tiny import tiny_model
from customnet_jax.data import synthetic
from customnet_jax.evaluation import measures
from customnet_jax.evaluation.cli import main as eval_main
from customnet_jax.evaluation.embedders import IMAGENET_MEAN, IMAGENET_STD, ClipEmbedder, DinoEmbedder
from customnet_jax.evaluation.metrics import Sample, aggregate, collect_samples, cosine, score
from customnet_jax.evaluation.protocol import Protocol, evaluate_run, run_protocol, synthetic_objects
from customnet_jax.evaluation.report import write_report
from customnet_jax.models.build import initialized_model
from customnet_jax.models.customnet import CustomNet
from customnet_jax.sampling.pipeline import Pipeline
from customnet_jax.text import ASSETS

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
            patch_size=8)


# ------------------------------------------------------------------------------------ tiny embedding models


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Random tiny DINO (ViT, with its processor config), DINOv2 (no processor config: our standard
    preprocessing) and CLIP (processor config + the CLIP BPE tokenizer files) saved with save_pretrained."""
    root = tmp_path_factory.mktemp("embedders")
    torch.manual_seed(0)
    ViTModel(ViTConfig(**TINY), add_pooling_layer=False).save_pretrained(root / "dino")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=IMAGENET_MEAN,
                      image_std=IMAGENET_STD).save_pretrained(root / "dino")
    Dinov2Model(Dinov2Config(**TINY)).save_pretrained(root / "dinov2")
    text = dict(vocab_size=49408, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=77)
    CLIPModel(CLIPConfig(text_config=text, vision_config=TINY, projection_dim=16)).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(ASSETS / name, root / "clip" / name)
    return root


@pytest.fixture(scope="module")
def embedders(folders):
    return (DinoEmbedder(folders / "dino", device="cpu"), DinoEmbedder(folders / "dinov2", device="cpu"),
            ClipEmbedder(folders / "clip", device="cpu"))


@pytest.fixture(scope="module")
def picture_set(tmp_path_factory):
    """Four random 64x64 'generated' pictures with boxes, and two references (one RGBA)."""
    root, rng = tmp_path_factory.mktemp("pictures"), np.random.default_rng(0)
    refs = [root / "ref_a.png", root / "ref_b.png"]
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(refs[0])
    rgba = rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random((40, 40)) < 0.5, 255, 0)
    Image.fromarray(rgba).save(refs[1])
    samples = []
    for i in range(4):
        path = root / f"gen{i}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(path, refs[i % 2], ["on the beach", "in the snow"][i // 2], (8 + i, 4, 48 + i, 44),
                              {"view": i % 2, "sample": 0}))
    return samples


def direct_dino(model, pixels):
    with torch.no_grad():
        return model(pixel_values=pixels).last_hidden_state[:, 0].double().numpy()


def rgb(path):
    """A reference as the metric reads it: RGBA composited over white."""
    image = Image.open(path)
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return image.convert("RGB")


def boxed(sample):
    x0, y0, x1, y1 = sample.bbox
    return Image.open(sample.image).convert("RGB").crop((x0, y0, x1, y1))


@pytest.mark.parametrize("which", ["dino", "dinov2"])
def test_dino_i_equals_direct_cosine(folders, embedders, picture_set, which):
    """DINO-I = cos(CLS(generated box crop), CLS(reference)), computed here with transformers' own processors:
    ViTImageProcessor from the folder, and for DINOv2 (no processor config) BitImageProcessor with the standard
    DINO parameters (shorter side 37 = round(32*256/224), centre crop 32, ImageNet statistics). Measured max |diff|
    ~1e-8 (float32 embeddings)."""
    dino = embedders[0] if which == "dino" else embedders[1]
    ours = np.array([r["dino_i"] for r in score(picture_set, dino=dino)])
    if which == "dino":
        model, processor = ViTModel.from_pretrained(folders / "dino"), ViTImageProcessor.from_pretrained(
            folders / "dino")
    else:
        model = Dinov2Model.from_pretrained(folders / "dinov2")
        processor = BitImageProcessor(size={"shortest_edge": 37}, crop_size={"height": 32, "width": 32},
                                      image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    pixels = lambda images: processor(images=images, return_tensors="pt")["pixel_values"]
    gen = direct_dino(model, pixels([boxed(s) for s in picture_set]))
    ref = direct_dino(model, pixels([rgb(s.reference) for s in picture_set]))
    direct = (gen * ref).sum(1) / np.linalg.norm(gen, axis=1) / np.linalg.norm(ref, axis=1)
    np.testing.assert_allclose(ours, direct, atol=1e-6)
    assert np.ptp(ours) > 1e-3  # four different pictures: a constant would hide a mistake
    # without the crop the whole picture is embedded: a different number
    whole = np.array([r["dino_i"] for r in score(picture_set, dino=dino, crop_to_box=False)])
    assert np.abs(whole - ours).max() > 1e-3


def test_clip_i_and_clip_t_equal_direct_cosine(folders, embedders, picture_set):
    """CLIP-I = cos(image_embeds(box crop), image_embeds(reference)); CLIP-T = cos(image_embeds(whole picture),
    text_embeds(background text)), via CLIPModel.get_image_features / get_text_features and the folder's
    processor and tokenizer; the logit scale is not applied. Measured max |diff| 1.0e-8 (CLIP-I), 5.6e-8
    (CLIP-T)."""
    clip = embedders[2]
    rows = score(picture_set, clip=clip)
    model = CLIPModel.from_pretrained(folders / "clip")
    processor = CLIPImageProcessor.from_pretrained(folders / "clip")
    tokenizer = CLIPTokenizer.from_pretrained(folders / "clip")

    def image_features(images):
        with torch.no_grad():
            out = model.get_image_features(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
        return getattr(out, "pooler_output", out).double().numpy()

    def text_features(texts):
        with torch.no_grad():
            out = model.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt"))
        return getattr(out, "pooler_output", out).double().numpy()

    cos = lambda a, b: (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    gen = image_features([boxed(s) for s in picture_set])
    assert gen.shape == (4, 16)  # projected: CLIP space, not the vision tower's width
    clip_i = cos(gen, image_features([rgb(s.reference) for s in picture_set]))
    clip_t = cos(image_features([Image.open(s.image).convert("RGB") for s in picture_set]),
                 text_features([s.text for s in picture_set]))
    np.testing.assert_allclose([r["clip_i"] for r in rows], clip_i, atol=1e-6)
    np.testing.assert_allclose([r["clip_t"] for r in rows], clip_t, atol=1e-6)
    assert all(-1 <= r["clip_t"] <= 1 for r in rows)  # a cosine: logit_scale (exp 2.66 = 14.3) not applied
    assert float(model.logit_scale.detach().exp()) > 10


def test_cosine_and_aggregation():
    a, b = np.array([[1.0, 0, 0], [1, 1, 0]]), np.array([[2.0, 0, 0], [0, 1, 0]])
    np.testing.assert_allclose(cosine(a, b), [1.0, 1 / math.sqrt(2)])
    rows = [{"view": 0, "dino_i": 0.5, "clip_t": 0.2}, {"view": 0, "dino_i": 0.7, "clip_t": float("nan")},
            {"view": 1, "dino_i": 0.9, "clip_t": 0.3}, {"view": 1, "dino_i": 0.1}]
    (overall,) = aggregate(rows)
    assert overall["count"] == 4 and overall["dino_i_n"] == 4 and overall["clip_t_n"] == 2
    assert overall["dino_i_mean"] == pytest.approx(0.55) and overall["dino_i_std"] == pytest.approx(np.std(
        [0.5, 0.7, 0.9, 0.1]))
    assert overall["clip_t_mean"] == pytest.approx(0.25)  # NaN and missing values are left out
    by_view = {g["view"]: g for g in aggregate(rows, ("view",))}
    assert by_view[0]["dino_i_mean"] == pytest.approx(0.6) and by_view[1]["dino_i_mean"] == pytest.approx(0.5)
    assert by_view[0]["clip_t_mean"] == pytest.approx(0.2) and by_view[0]["clip_t_std"] == 0


# ------------------------------------------------------------------------------------------------ measures


def test_measures_known_answers():
    background = np.full((64, 64, 3), 200, np.uint8)
    background[:, ::8] = 120  # a striped background: found against it, not against a constant
    square = background.copy()
    square[16:48, 16:48] = (200, 30, 30)
    assert measures.location_iou(square, background, (16, 16, 48, 48)) == 1.0
    # requested box shifted by 8 px in x: intersection 24x32, union 2*32*32 - 24*32
    assert measures.location_iou(square, background, (24, 16, 56, 48)) == pytest.approx(768 / 1280)
    assert measures.location_iou(background, background, (0, 0, 8, 8)) == 0.0  # nothing found
    speckled = square.copy()
    speckled[2, 60] = 0  # one stray pixel is removed by the opening
    assert measures.location_iou(speckled, background, (16, 16, 48, 48)) == 1.0
    assert measures.box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0

    # PSNR outside the box: unchanged background -> the cap (inf uncapped); a known error -> its figure
    assert measures.background_psnr(square, background, (16, 16, 48, 48)) == measures.PSNR_CAP_DB
    assert measures.background_psnr(square, background, (16, 16, 48, 48), cap=None) == math.inf
    noisy = square.astype(np.int32)
    noisy[:8] += 51  # 8 of the 64 rows are off by 51/255 = 0.2 outside the box (16 rows in the box are not)
    expected = -10 * math.log10(0.04 * 8 * 64 / (64 * 64 - 32 * 32))
    assert measures.background_psnr(np.clip(noisy, 0, 255).astype(np.uint8), background,
                                    (16, 16, 48, 48)) == pytest.approx(expected, rel=1e-3)

    # identity: the same object in two views -> 1; another colour -> 0
    mask = measures.box_mask((64, 64), (16, 16, 48, 48))
    same = measures.identity_consistency([square, square], [mask, mask])
    assert same == {"colour": 1.0, "area_ratio": 1.0}
    blue = background.copy()
    blue[16:32, 16:48] = (30, 30, 200)
    other = measures.identity_consistency([square, blue], [mask, measures.box_mask((64, 64), (16, 16, 48, 32))])
    assert other["colour"] == 0.0 and other["area_ratio"] == 0.5


def test_viewpoint_margin_on_synthetic_renders():
    """A 'model' that draws the requested view exactly: each view's picture agrees fully with its own truth and
    clearly less with the others' (the synthetic objects have differently coloured sides)."""
    from customnet_jax.evaluation.groundtruth import synthetic_truth

    scene = synthetic.scene(3, synthetic.World(image_size=64))
    views = [(0, 0, 0), (0, 90, 0), (0, 180, 0)]
    truths = [synthetic_truth(scene, v, (8, 8, 56, 56), scene.background) for v in views]
    agreement, wrong, margin = measures.viewpoint_margins([t[0] for t in truths], [t[0] for t in truths],
                                                          [t[1] for t in truths])
    np.testing.assert_array_equal(agreement, 1.0)
    assert (margin > 0.2).all(), margin  # measured: 0.50, 0.95, 0.45
    # and a model that ignores the view (always the first view) has no margin
    agreement, wrong, margin = measures.viewpoint_margins([truths[0][0]] * 3, [t[0] for t in truths],
                                                          [t[1] for t in truths])
    np.testing.assert_allclose(margin, 0)


# ------------------------------------------------------------------------------------------- the protocol


class CountingPipeline:
    """The real pipeline, counting its calls (a resumed run must not sample a finished cell again)."""

    def __init__(self, pipeline):
        self.pipeline, self.config, self.calls = pipeline, pipeline.config, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.pipeline(*args, **kwargs)


@pytest.fixture(scope="module")
def tiny_pipeline():
    return Pipeline(initialized_model(lambda: CustomNet(tiny_model(), rngs=nnx.Rngs(0)), seed=0))


@pytest.mark.slow
def test_protocol_resumes_and_scores(tiny_pipeline, embedders, tmp_path, capsys):
    out = tmp_path / "run"
    objects = synthetic_objects(out, 2, resolution=64)
    protocol = Protocol(objects=objects, prompts=("on the beach", "in the snow"), seeds=(0, 1),
                        views=((0.0, 0.0, 0.0), (0.0, 90.0, 0.0)), steps=2, model="tiny random")
    pipeline = CountingPipeline(tiny_pipeline)

    class Stop(Exception):
        pass

    def stop_after_three(cell, folder):
        if pipeline.calls == 3:
            raise Stop

    with pytest.raises(Stop):
        run_protocol(pipeline, protocol, out, on_sample=stop_after_three, log=None)
    finished = sorted(out.glob("*/*/seed*/sample.json"))
    assert len(finished) == 3
    stamps = {p: p.stat().st_mtime_ns for p in finished}

    summary = run_protocol(pipeline, protocol, out, log=None)
    assert summary == {**summary, "cells": 8, "sampled": 5, "skipped": 3} and pipeline.calls == 8
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing redone
    assert run_protocol(pipeline, protocol, out, log=None)["sampled"] == 0 and pipeline.calls == 8
    with pytest.raises(ValueError, match="differs in seeds"):
        run_protocol(pipeline, Protocol(**{**protocol.__dict__, "seeds": (0, 5)}), out, log=None)

    settings = json.loads((out / "synth0000" / "01" / "seed1" / "sample.json").read_text())
    assert settings["background_text"] == "in the snow" and settings["prompt"].endswith(" in the snow")
    assert settings["prompt"].startswith(objects[0].name) and settings["seed"] == 1
    assert settings["bbox"] == list(objects[0].bbox)

    dino, _, clip = embedders
    rows = evaluate_run(out, dino, clip)
    assert len(rows) == 2 * 2 * 2 * 2  # objects x prompts x seeds x views, one sample each
    assert {(r["object"], r["prompt_index"], r["seed"], r["view"]) for r in rows} == {
        (o.id, p, s, v) for o in objects for p in (0, 1) for s in (0, 1) for v in (0, 1)}
    for row in rows:
        for column in ("dino_i", "clip_i", "clip_t", "view_agreement", "view_wrong", "identity_colour"):
            assert math.isfinite(row[column]), (column, row)
        assert row["view_margin"] == pytest.approx(row["view_agreement"] - row["view_wrong"])
    samples = collect_samples(out)
    assert {s.text for s in samples} == {"on the beach", "in the snow"}  # CLIP-T: the background text only
    assert all(s.reference.parent.name == "objects" for s in samples)

    report = write_report(rows, out / "metrics")
    assert report["summary"]["all"][0]["count"] == 16 and len(report["summary"]["view"]) == 2
    saved = json.loads((out / "metrics.json").read_text())
    assert len(saved["rows"]) == 16 and saved["summary"]["all"][0]["dino_i_n"] == 16

    # eval.py metrics on the same folder: the same numbers, printed and written
    code = eval_main(["metrics", "--samples", str(out), "--dino", str(embedders[0].folder), "--clip",
                      str(clip.folder), "--out", str(tmp_path / "cli" / "table"), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0 and "DINO-I" in printed and "CLIP-T" in printed
    cli = json.loads((tmp_path / "cli" / "table.json").read_text())
    assert cli["summary"]["all"][0]["clip_t_mean"] == pytest.approx(report["summary"]["all"][0]["clip_t_mean"])
    assert (tmp_path / "cli" / "table_per_image.csv").read_text().count("\n") == 17


def test_composition_measures_and_refusals(tmp_path, monkeypatch, capsys):
    """A composition sample written by hand (the known background kept outside the box, a square inside it):
    location IoU 1 and capped PSNR; the CLI refuses a missing model folder, and a missing torch, cleanly."""
    from customnet_jax.evaluation.groundtruth import measure_set

    rng = np.random.default_rng(0)
    background = rng.integers(100, 200, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(background).save(tmp_path / "bg.png")
    picture = background.copy()
    picture[10:40, 20:50] = (0, 0, 0)
    Image.fromarray(picture).save(tmp_path / "s_view0_sample0.png")
    (tmp_path / "s.json").write_text(json.dumps({
        "views": [[0, 0, 0]], "bbox": [20, 10, 50, 40], "files": {}, "num_samples": 1, "resolution": 64,
        "background_file": "bg.png", "prompt": "x"}))
    result = measure_set(tmp_path / "s.json")[0, 0]
    assert result["location_iou"] == 1.0 and result["background_psnr"] == measures.PSNR_CAP_DB
    assert eval_main(["metrics", "--samples", str(tmp_path), "--dino", str(tmp_path / "none")]) == 2
    assert "no config.json" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    assert eval_main(["metrics", "--samples", str(tmp_path), "--clip", str(tmp_path)]) == 2
    assert "pip install torch==2.13.0" in capsys.readouterr().err
