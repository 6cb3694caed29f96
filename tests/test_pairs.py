"""build_pairs (SAM + Zero-1-to-3 + BLIP-2 -> prepared pairs, docs/model.md §10) on tiny random models and generated
photos.

Random models make junk masks, views and captions: these tests check the plumbing (layout and fields that the
pairs reader takes, the view sign convention, box enlargement, resume, sharding, filters, skip reports).
"""

from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image

from configs.tiny import tiny_model
from customnet_jax.conditioning import view_from_degrees
from customnet_jax.conditioning.boxes import mask_xywh as mask_bbox
from customnet_jax.model_folder import param_tree, save_model_folder
from customnet_jax.models.build import abstract_model, model_with_params
from customnet_jax.models.customnet import CustomNet
from customnet_jax.models.init import initial_params
from customnet_jax.pairs import cli
from customnet_jax.pairs.build import BuildOptions, BuildReport, Stages, build_pairs
from customnet_jax.pairs.caption import Captions, Subjects
from customnet_jax.pairs.cli import main
from customnet_jax.pairs.filters import Filters
from customnet_jax.pairs.prompts import Prompt, PromptSource
from customnet_jax.pairs.segment import MaskFolder, SamSegmenter, Segment
from customnet_jax.pairs.sources import Annotations, ImageItem, folder_items, load_photo, shard, tfds_items
from customnet_jax.pairs.views import ViewSynthesizer, photo_seed, random_views
from customnet_jax.weights.params import param_shapes

VIEWS, STEPS = 2, 2  # every zero123 call has this shape: one compiled program for the whole file
GOOD = ["a_car", "b_dog", "c_cat", "e_gray", "f_edge", "sub__d_cup"]  # ids of the decodable photos
BAD = ["broken", "tiny"]


# ------------------------------------------------------------------------------------------------ fixtures


def _word_tokenizer():
    """A tiny OPT-style tokenizer built offline (BLIP-2's language model side)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>", "a", "photo", "of", "red", "blue", "car", "dog", "cat", "cup", "on", "the",
             "table", "grass"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="</s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return fast


def _save_sam(folder: pathlib.Path) -> None:
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    config = SamConfig(
        vision_config=dict(hidden_size=16, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1], num_pos_feats=8,
                           mlp_dim=32),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2,
                                 iou_head_hidden_dim=16))
    SamModel(config).save_pretrained(folder)
    SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}, mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16})).save_pretrained(folder)


def _save_blip2(folder: pathlib.Path) -> None:
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    tokenizer = _word_tokenizer()
    config = Blip2Config(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                            encoder_hidden_size=16, vocab_size=len(tokenizer)),
        text_config=dict(model_type="opt", vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                         ffn_dim=32, num_attention_heads=2, max_position_embeddings=64, word_embed_proj_dim=16,
                         bos_token_id=1, eos_token_id=1, pad_token_id=0),
        num_query_tokens=4, image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    Blip2ForConditionalGeneration(config).save_pretrained(folder)
    Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer,
                   num_query_tokens=4).save_pretrained(folder)


def _save_owlvit(folder: pathlib.Path) -> None:
    from transformers import CLIPTokenizer, OwlViTConfig, OwlViTForObjectDetection, OwlViTProcessor
    from transformers.models.owlvit.image_processing_pil_owlvit import OwlViTImageProcessorPil

    from customnet_jax.text import ASSETS

    config = OwlViTConfig(
        text_config=dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=16)
    OwlViTForObjectDetection(config).save_pretrained(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(ASSETS), pad_token="!", model_max_length=16)
    OwlViTProcessor(image_processor=OwlViTImageProcessorPil(size={"height": 32, "width": 32},
                                                            crop_size={"height": 32, "width": 32}),
                    tokenizer=tokenizer).save_pretrained(folder)


def _view_sensitive_zero123():
    """A tiny random zero123 whose output depends on the view: the zero-initialised output layers and the view
    rows of cc_projection (zeros in a fresh model, so T would change nothing) get random values."""
    config = tiny_model(text=False)
    build = lambda: CustomNet(config, rngs=nnx.Rngs(0))  # noqa: E731
    params = initial_params(param_shapes(abstract_model(build)), seed=0)
    rng = np.random.default_rng(0)
    for path, value in params.items():
        if path[0] == "cc_projection" and path[-1] == "kernel":
            value = value.copy()
            value[-4:] = rng.standard_normal(value[-4:].shape)  # the T rows
        elif path[-1] == "kernel" and not value.any():
            value = (rng.standard_normal(value.shape) / np.sqrt(np.prod(value.shape[:-1]))).astype(np.float32)
        params[path] = value.astype(np.float32)
    return config, model_with_params(build, params)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Tiny random SAM, BLIP-2 and OWL-ViT (transformers save_pretrained folders) and a zero123 model folder."""
    root = tmp_path_factory.mktemp("pair_models")
    torch.manual_seed(0)
    _save_sam(root / "sam")
    _save_blip2(root / "blip2")
    _save_owlvit(root / "owlvit")
    config, model = _view_sensitive_zero123()
    zero123 = save_model_folder(root / "zero123", param_tree(model), config, provenance={"source": "test"})
    return {"sam": root / "sam", "blip2": root / "blip2", "owlvit": root / "owlvit", "zero123": zero123}


@pytest.fixture(scope="module")
def views(models) -> ViewSynthesizer:
    """The zero123 stage for the API tests (the CLI test loads its own from the folder, as a user would)."""
    return ViewSynthesizer.from_folder(models["zero123"], steps=STEPS)


def _ellipse(height: int, width: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    y, x = np.mgrid[:height, :width]
    return ((x + 0.5 - cx) / rx) ** 2 + ((y + 0.5 - cy) / ry) ** 2 <= 1


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path, dict[str, np.ndarray]]:
    """(photo folder, mask folder, id -> object mask): six photos in various formats, a broken file, a 4x4 one."""
    root = tmp_path_factory.mktemp("photos")
    images, masks_dir = root / "images", root / "masks"
    (images / "sub").mkdir(parents=True)
    (masks_dir / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    specs = {  # relative path: (height, width, ellipse cx, cy, rx, ry, colour)
        "a_car.jpg": (60, 80, 40, 30, 18, 12, (200, 30, 30)),
        "b_dog.png": (64, 64, 30, 34, 14, 20, (40, 40, 200)),
        "c_cat.jpg": (48, 72, 50, 24, 6, 6, (240, 200, 20)),
        "sub/d_cup.png": (60, 60, 30, 30, 15, 10, (20, 160, 60)),
        "e_gray.png": (56, 64, 32, 28, 16, 14, (30, 30, 30)),
        "f_edge.jpg": (64, 64, 6, 32, 14, 12, (150, 20, 150)),  # cut by the left border
    }
    truth = {}
    for name, (h, w, cx, cy, rx, ry, colour) in specs.items():
        mask = _ellipse(h, w, cx, cy, rx, ry)
        background = (np.linspace(90, 170, w)[None, :, None] + rng.normal(0, 8, (h, w, 3))).clip(0, 255)
        picture = np.where(mask[..., None], np.array(colour, float), background).astype(np.uint8)
        path = images / name
        if name == "sub/d_cup.png":
            Image.fromarray(np.dstack([picture, np.full((h, w), 255, np.uint8)]), "RGBA").save(path)
        elif name == "e_gray.png":
            Image.fromarray(picture.mean(-1).astype(np.uint8), "L").save(path)
        else:
            Image.fromarray(picture).save(path, quality=95)
        Image.fromarray(mask.astype(np.uint8) * 255).save(masks_dir / (name.rsplit(".", 1)[0] + ".png"))
        truth[name.rsplit(".", 1)[0].replace("/", "__")] = mask
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG" + bytes(range(200)))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(images / "tiny.png")
    (images / "notes.txt").write_text("not a picture")
    return images, masks_dir, truth


class WhiteViews:
    """A stand-in view stage (white pictures) for tests about everything but zero123."""

    resolution = 64

    def __call__(self, photo, mask, views, seed):
        return np.full((len(views), 64, 64, 3), 255, np.uint8)


class PipelineSpy:
    """Wraps a Pipeline and records each call's views and seed, and the pictures it returned."""

    def __init__(self, pipeline):
        self.pipeline, self.config, self.folder, self.calls = pipeline, pipeline.config, pipeline.folder, []

    def __call__(self, object_image, **kwargs):
        result = self.pipeline(object_image, **kwargs)
        self.calls.append({"views": [list(v) for v in kwargs["views"]], "seed": kwargs["seed"],
                           "images": result.images[:, 0]})
        return result


def _folder_files(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _expected_square(bbox, width: int, height: int) -> tuple[int, int, int, int]:
    """docs/model.md §10 by hand: bbox scaled to the 256 canvas as int(255 x / W), the square of side int(max * 256/200)
    centred on it."""
    x, y, w, h = bbox
    x0, y0, bw, bh = int(255 * x / width), int(255 * y / height), int(255 * w / width), int(255 * h / height)
    side = int(max(bw, bh) * 256 / 200)
    left, top = int(np.floor(x0 + bw / 2 - side / 2)), int(np.floor(y0 + bh / 2 - side / 2))
    return left, top, left + side, top + side


# ------------------------------------------------------------------------------------------------ the chain


@pytest.mark.slow
def test_cli_whole_chain_writes_what_the_pairs_reader_takes(models, photos, tmp_path, monkeypatch):
    """SAM (given boxes, a point, OWL-ViT detections) + zero123 + BLIP-2, all loaded from folders by the CLI."""
    from customnet_jax.data.pairs import read_photo
    from customnet_jax.data.records import SkipReport

    images, _, _ = photos
    boxes, points = tmp_path / "boxes.json", tmp_path / "points.json"
    boxes.write_text(json.dumps({"a_car.jpg": [20, 16, 60, 44], "b_dog": [14, 12, 46, 56], "c_cat.jpg": [36, 10, 64,
                                                                                                          38]}))
    points.write_text(json.dumps({"sub/d_cup.png": [30, 30]}))
    out = tmp_path / "pairs"
    args = ["--images", str(images), "--out", str(out), "--zero123", str(models["zero123"]),
            "--sam", str(models["sam"]), "--boxes", str(boxes), "--points", str(points),
            "--detector", str(models["owlvit"]), "--detect", "car,dog", "--detector-threshold", "0",
            "--blip2", str(models["blip2"]), "--caption-min-tokens", "2", "--caption-tokens", "6",
            "--views-per-image", str(VIEWS), "--steps", str(STEPS), "--min-area", "0", "--max-area", "1",
            "--min-score", "-1",  # a random SAM's predicted IoUs are ~0, either sign
            "--seed", "3", "--quiet"]
    assert main(args) == 0
    report = json.loads((out / "pairs_report_0_of_1.json").read_text())
    skipped = {s["image"]: s for s in report["skipped"]}
    assert {skipped[b]["stage"] for b in BAD} == {"load"}  # bad files are reported, never fatal
    assert "unreadable image" in skipped["broken"]["reason"] and "4x4" in skipped["tiny"]["reason"]
    written = sorted(report["written"])
    assert set(written) | set(skipped) == set(GOOD + BAD) and not set(written) & set(skipped)
    assert written, f"random SAM masks were all rejected: {skipped}"  # the seeds are fixed; some must pass
    assert sorted(d.name for d in out.iterdir() if d.is_dir()) == written  # no staging folder left

    kinds = {}
    for image_id in written:
        folder = out / image_id
        names = ["caption.json", "input.jpg", "mask.jpg", "meta.json", "object.json"]
        assert _folder_files(folder) == sorted(names + [f"multi_view_{i:02d}.jpg" for i in range(VIEWS)])
        meta = json.loads((folder / "meta.json").read_text())
        details = json.loads((folder / "object.json").read_text())
        assert set(meta) == {"sbj_txt", "caption", "bbox", "view"}
        assert isinstance(meta["sbj_txt"], str) and isinstance(meta["caption"], str) and meta["caption"]
        assert json.loads((folder / "caption.json").read_text()) == {"caption": [meta["caption"]]}
        photo = np.asarray(Image.open(folder / "input.jpg"))
        mask = np.asarray(Image.open(folder / "mask.jpg")) > 127
        assert photo.ndim == 3 and mask.shape == photo.shape[:2] == tuple(details["size"][::-1])
        assert meta["bbox"] == mask_bbox(mask)  # the tight box of the written mask, photo pixels
        assert len(meta["view"]) == VIEWS
        for polar, azimuth, radius in meta["view"]:
            assert abs(polar) < 60 and abs(azimuth) < 60 and radius == 0
        for i in range(VIEWS):
            assert np.asarray(Image.open(folder / f"multi_view_{i:02d}.jpg")).shape == (64, 64, 3)
        kinds[image_id] = details["prompt"]["kind"]
        assert details["models"]["segmenter"] == str(models["sam"].absolute())

        # the data engineer's reader takes the folder as is: one record per view, T maps the view to the photo
        report_reader = SkipReport()
        records = list(read_photo(folder, 64, report_reader))
        assert report_reader.count == 0 and len(records) == VIEWS
        for (_, record), (polar, azimuth, radius) in zip(records, meta["view"], strict=True):
            np.testing.assert_allclose(record["view"], view_from_degrees(-polar, -azimuth, -radius), atol=1e-6)
            np.testing.assert_allclose(record["box"] * 256, _expected_square(meta["bbox"], *details["size"]),
                                       atol=1e-3)
    expected_kinds = {"a_car": "box", "b_dog": "box", "c_cat": "box", "sub__d_cup": "point",
                      "e_gray": "detector", "f_edge": "detector"}
    assert all(kinds[k] == expected_kinds[k] for k in kinds)

    # resume: a second run finds every pair done, rewrites nothing and loads no model
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "report" not in p.name}
    monkeypatch.setattr(cli, "make_stages", lambda args: pytest.fail("a finished shard loaded its models"))
    assert main(args) == 0
    again = json.loads((out / "pairs_report_0_of_1.json").read_text())
    assert again["written"] == [] and again["existing"] == len(written)
    assert {s["image"] for s in again["skipped"]} == set(skipped)  # not retried
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "report" not in p.name}


@pytest.mark.slow
def test_views_are_the_zero123_deltas_and_the_box_is_enlarged(views, photos, tmp_path):
    """meta "view" i is the delta zero123 was given to make multi_view_i (so the reader's T = -delta maps the
    view back to the photo); bbox is the object's tight box; object.json's square has side max(w, h) * 256/200."""
    images, masks, truth = photos
    spy = PipelineSpy(views.pipeline)
    captions = Annotations(data={k: f"a photo of {k}" for k in GOOD})
    stages = Stages(segmenter=MaskFolder(masks), views=ViewSynthesizer(spy, steps=STEPS), captions=Captions(captions),
                    subjects=Subjects(Annotations(data={"a_car.jpg": "car"}), question=None),
                    filters=Filters(min_area=0, max_area=1))
    items = [i for i in folder_items(images) if i.id in ("a_car", "c_cat")]
    report = build_pairs(items, tmp_path / "out", stages, BuildOptions(views_per_image=VIEWS, seed=5))
    assert sorted(report.written) == ["a_car", "c_cat"] and not report.skipped
    for item, call in zip(items, spy.calls, strict=True):
        folder = tmp_path / "out" / item.id
        meta = json.loads((folder / "meta.json").read_text())
        details = json.loads((folder / "object.json").read_text())
        assert meta["view"] == call["views"] and details["seed"] == call["seed"] == photo_seed(5, item.id)
        for i, picture in enumerate(call["images"]):  # multi_view_i is exactly zero123's output at +view_i
            encoded = io.BytesIO()
            Image.fromarray(picture).save(encoded, format="JPEG", quality=95)
            assert (folder / f"multi_view_{i:02d}.jpg").read_bytes() == encoded.getvalue()
        assert meta["bbox"] == mask_bbox(truth[item.id])
        assert meta["sbj_txt"] == ("car" if item.id == "a_car" else "")
        x, y, w, h = meta["bbox"]
        x0, y0, x1, y1 = details["square_box"]
        assert x1 - x0 == pytest.approx(max(w, h) * 256 / 200, abs=0.02) == y1 - y0
        assert (x0 + x1) / 2 == pytest.approx(x + w / 2, abs=0.01)
        assert (y0 + y1) / 2 == pytest.approx(y + h / 2, abs=0.01)
    # and the sign matters: this random model's views at -delta differ from those at +delta
    photo, _ = load_photo(items[0])
    minus = views(photo, truth["a_car"], [[-p, -a, -r] for p, a, r in spy.calls[0]["views"]], spy.calls[0]["seed"])
    assert np.abs(minus.astype(np.float32) - spy.calls[0]["images"]).mean() > 5


def test_cli_refuses_incomplete_arguments(tmp_path, capsys):
    base = ["--images", str(tmp_path), "--out", str(tmp_path / "out"), "--zero123", str(tmp_path / "z")]
    for extra, message in [([], "--sam"), (["--sam", "s"], "prompt source"),
                           (["--sam", "s", "--center-point"], "caption source"),
                           (["--sam", "s", "--detector", "d", "--no-captions"], "queries")]:
        with pytest.raises(SystemExit):
            main(base + extra)
        assert message in capsys.readouterr().err
    # a model folder that is not there: a clear message and status 2, before any photo is touched
    assert main(base + ["--sam", str(tmp_path / "nope"), "--center-point", "--no-captions"]) == 2
    assert "SAM folder" in capsys.readouterr().err and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ resume and sharding


@pytest.mark.slow
def test_sharding_is_disjoint_and_resume_skips_done_work(models, views, photos, tmp_path):
    """Three processes split the photos by position; a rerun after a crash redoes only what is missing."""
    images, _, _ = photos
    items = folder_items(images)
    out = tmp_path / "out"
    stages = Stages(segmenter=SamSegmenter(models["sam"]), views=views,
                    prompts=PromptSource(center=True), captions=Captions(Annotations(data={k: k for k in GOOD})),
                    filters=Filters(min_area=0, max_area=1))
    reports = [build_pairs(items, out, stages, BuildOptions(views_per_image=VIEWS, seed=1, process_index=i,
                                                            process_count=3)) for i in range(3)]
    done = [set(r.written) | set(r.skipped) for r in reports]
    assert all(not (a & b) for k, a in enumerate(done) for b in done[k + 1:])  # disjoint
    assert set().union(*done) == {i.id for i in items}  # complete
    for k, share in enumerate(done):
        assert share == {i.id for i in items if i.index % 3 == k} == {i.id for i in shard(items, k, 3)}
    written = sorted(sum((r.written for r in reports), []))
    assert written and sorted(d.name for d in out.iterdir() if d.is_dir()) == written

    # a crash left a half-written staging folder, and one finished pair was lost: only that one is redone
    staging = out / ".staging" / "p0_of_3" / "a_car-half"
    staging.mkdir(parents=True)
    (staging / "input.jpg").write_bytes(b"partial")
    lost = sorted(reports[0].written)[0]
    meta_before = (out / lost / "meta.json").read_text()
    views_before = (out / lost / "multi_view_00.jpg").read_bytes()
    import shutil

    shutil.rmtree(out / lost)
    again = build_pairs(items, out, stages, BuildOptions(views_per_image=VIEWS, seed=1, process_index=0,
                                                         process_count=3))
    assert again.written == [lost] and again.existing == len(reports[0].written) - 1
    assert again.skipped == reports[0].skipped  # carried over, not retried
    assert (out / lost / "meta.json").read_text() == meta_before  # deterministic: same views, seed, caption
    assert (out / lost / "multi_view_00.jpg").read_bytes() == views_before
    assert not (out / ".staging").exists()
    retried = build_pairs(items, out, stages, BuildOptions(views_per_image=VIEWS, seed=1, process_count=3,
                                                           retry_skipped=True))
    assert retried.written == [] and retried.skipped == reports[0].skipped  # retried, same reasons


# ---------------------------------------------------------------------------------- filters and bad inputs


def test_filters():
    mask = np.zeros((100, 100), bool)
    mask[40:60, 40:60] = True  # area 0.04, 40 px from every border
    assert Filters(min_area=0.01, max_area=0.5).check(mask, 0.9) is None
    assert "min_area" in Filters(min_area=0.05).check(mask, 0.9)
    assert "max_area" in Filters(min_area=0, max_area=0.03).check(mask, 0.9)
    assert "min_score" in Filters(min_score=0.95).check(mask, 0.9)
    assert "min_score" in Filters(min_score=0.5).check(mask, float("nan"))
    assert Filters().check(np.zeros((10, 10), bool), 1.0) == "empty mask"
    assert Filters(reject_border=True, border_margin=39).check(mask, 1.0) is None
    assert "border" in Filters(reject_border=True, border_margin=40).check(mask, 1.0)
    edge = np.zeros((100, 100), bool)
    edge[30:50, 0:20] = True
    assert Filters(reject_border=False).check(edge, 1.0) is None
    assert "(left;" in Filters(reject_border=True).check(edge, 1.0)
    with pytest.raises(ValueError, match="area range"):
        Filters(min_area=0.5, max_area=0.1)


def test_filters_in_a_build_and_bad_inputs_never_stop_it(photos, tmp_path):
    """Border and area filters on given masks; unreadable / tiny photos, missing prompts and captions, and a
    stage that raises are each skipped with their stage and reason while the rest is written."""
    images, masks, _ = photos
    items = folder_items(images)

    class Flaky(MaskFolder):
        def __call__(self, item, photo, prompt):
            if item.id == "b_dog":
                raise RuntimeError("segmenter crashed")
            return super().__call__(item, photo, prompt)

    captions = Annotations(data={k: "x" for k in GOOD if k != "e_gray"})
    stages = Stages(segmenter=Flaky(masks), views=WhiteViews(), captions=Captions(captions),
                    filters=Filters(min_area=0.05, max_area=1, reject_border=True))
    report = build_pairs(items, tmp_path / "a", stages, BuildOptions(views_per_image=VIEWS))
    stage_of = {k: v["stage"] for k, v in report.skipped.items()}
    assert stage_of == {"broken": "load", "tiny": "load", "b_dog": "segment", "c_cat": "filter", "f_edge": "filter",
                        "e_gray": "caption"}
    assert "RuntimeError: segmenter crashed" in report.skipped["b_dog"]["reason"]
    assert "touches the photo's border" in report.skipped["f_edge"]["reason"]
    assert "min_area" in report.skipped["c_cat"]["reason"]  # c_cat's object is 0.033 of the photo
    assert "no caption" in report.skipped["e_gray"]["reason"]
    assert sorted(report.written) == ["a_car", "sub__d_cup"]
    saved = json.loads((tmp_path / "a" / report.file_name).read_text())
    assert saved["skipped_count"] == 6 and {s["image"] for s in saved["skipped"]} == set(report.skipped)

    # prompts: SAM-style segmenters need one; a box outside the photo or no source at all skips the photo
    seen: dict[str, Prompt] = {}

    def given(item, photo, prompt):
        seen[item.id] = prompt
        return Segment(np.pad(np.ones((8, 8), bool), ((10, photo.shape[0] - 18), (10, photo.shape[1] - 18))), 0.5)

    given.needs_prompt = True
    boxes = Annotations(data={"a_car.jpg": [20, 16, 60, 44], "b_dog": [100, 100, 120, 130]})
    points = Annotations(data={"c_cat": [[50, 24], [52, 20]]})
    stages = Stages(segmenter=given, views=WhiteViews(), prompts=PromptSource(boxes, points),
                    filters=Filters(min_area=0, max_area=1))
    report = build_pairs(items, tmp_path / "b", stages, BuildOptions(views_per_image=VIEWS, max_side=40))
    assert sorted(report.written) == ["a_car", "c_cat"]
    assert report.skipped["b_dog"]["stage"] == "prompt" and "outside" in report.skipped["b_dog"]["reason"]
    assert report.skipped["e_gray"]["reason"].startswith("no prompt")
    # --max-side 40 shrank the 80x60 photo by 1/2 and the 72x48 one by 40/72: the prompts were scaled with it
    assert seen["a_car"].box == pytest.approx((10, 8, 30, 22))
    np.testing.assert_allclose(seen["c_cat"].points, np.array([[50, 24], [52, 20]]) * 40 / 72)
    assert np.asarray(Image.open(tmp_path / "b" / "a_car" / "input.jpg")).shape == (30, 40, 3)


def test_random_views_and_ids():
    rng = np.random.default_rng(0)
    drawn = np.asarray(random_views(rng, 4000))
    assert drawn.shape == (4000, 3) and (drawn[:, 2] == 0).all()
    for column in (0, 1):
        values = drawn[:, column]
        assert np.abs(values).max() < 60 and (values > 30).any() and (values < -30).any()  # both signs
        assert 0.4 < (values > 0).mean() < 0.6
    assert random_views(np.random.default_rng(7), 3) == random_views(np.random.default_rng(7), 3)
    assert np.abs(np.asarray(random_views(np.random.default_rng(1), 500, max_radius=0.3))[:, 2]).max() < 0.3
    assert photo_seed(0, "a") == photo_seed(0, "a") != photo_seed(1, "a")
    with pytest.raises(ValueError, match="process index"):
        shard([], 3, 3)


def test_tfds_image_dataset_source(tmp_path):
    """A tfds dataset (array_record, no TensorFlow) as the photo source: each process lists only its share."""
    import tensorflow_datasets as tfds

    from customnet_jax.data.images import png_bytes

    class Photos(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        code_path = None

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "name": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(5):
                yield i, {"image": png_bytes(np.full((16 + i, 20, 3), 40 * i, np.uint8)), "name": f"photo {i}"}

    builder = Photos(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    every = tfds_items(builder.data_dir, "train")
    assert [i.id for i in every] == [f"{k:08d}" for k in range(5)]
    heights = [np.asarray(item.load()).shape[0] for item in every]  # tfds stores the examples shuffled
    assert sorted(heights) == [16, 17, 18, 19, 20]
    named = tfds_items(builder.data_dir, "train", id_key="name", process_index=1, process_count=2)
    assert [(i.index, i.id) for i in named] == [(k, f"photo_{heights[k] - 16}") for k in (1, 3)]
    assert shard(named, 1, 2) == named

    masks = tmp_path / "masks"
    masks.mkdir()
    for k, height in enumerate(heights):
        mask = np.pad(np.full((8, 8), 255, np.uint8), ((4, height - 12), (6, 6)))
        Image.fromarray(mask).save(masks / f"{k:08d}.png")
    stages = Stages(segmenter=MaskFolder(masks), views=WhiteViews(), filters=Filters(min_area=0, max_area=1))
    report = build_pairs(every, tmp_path / "out", stages, BuildOptions(views_per_image=VIEWS))
    assert len(report.written) == 5 and json.loads((tmp_path / "out" / "00000002" / "meta.json").read_text())[
        "bbox"] == [6, 4, 8, 8]


def test_item_ids_and_annotation_keys(photos):
    images, _, _ = photos
    items = folder_items(images)
    assert [i.id for i in items] == ["a_car", "b_dog", "broken", "c_cat", "e_gray", "f_edge", "sub__d_cup", "tiny"]
    assert [i.index for i in items] == list(range(8))  # sorted by relative path; notes.txt is not a picture
    cup = next(i for i in items if i.id == "sub__d_cup")
    assert Annotations(data={"sub/d_cup.png": 1}).get(cup) == 1 and Annotations(data={"d_cup.png": 2}).get(cup) == 2
    assert Annotations(data={"sub__d_cup": 3}).get(cup) == 3 and Annotations(data={"x": 4}).get(cup) is None
    assert isinstance(cup, ImageItem) and BuildReport().file_name == "pairs_report_0_of_1.json"
