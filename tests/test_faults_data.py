"""Data under bad input (issue 21): non-finite / non-numeric camera values, an all-bad source, a damaged JSON
index, a source changed after its build, a damaged record met while reading."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from customnet_jax.data import builders, pipeline, synthetic, synthetic_files
from customnet_jax.data.named_source import DamagedRecordError

SIZE = 32
WORLD = synthetic.World(image_size=SIZE)


def _keys(folder, split="train") -> list[str]:
    source, _ = pipeline.open_source(folder, split)
    return sorted(source[i]["id"].decode() for i in range(len(source)))


def test_bad_camera_values_are_skipped_and_counted(tmp_path):
    photos = tmp_path / "photos"
    synthetic_files.write_photo_folders(photos, 2, 3, world=WORLD)
    meta = json.loads((photos / "photo0000" / "meta.json").read_text())
    meta["view"][0] = [float("nan"), 10, 0]
    meta["view"][1] = ["abc", 10, 0]
    (photos / "photo0000" / "meta.json").write_text(json.dumps(meta))  # NaN is written as a bare NaN, as json does
    meta = json.loads((photos / "photo0001" / "meta.json").read_text())
    meta["view"][2] = [0, float("inf"), 0]
    (photos / "photo0001" / "meta.json").write_text(json.dumps(meta))
    folder, report = builders.build("pairs", tmp_path / "data", path=photos, image_size=SIZE)
    reasons = [reason for _, reason in report.items]
    assert report.count == 3 and all("is not three finite numbers" in r for r in reasons), report.summary()
    assert _keys(folder) == ["photo0000/02"] and _keys(folder, "validation") == ["photo0001/00", "photo0001/01"]

    s = synthetic.scene(0, WORLD)
    Image.fromarray(s.target).save(tmp_path / "t.png")
    Image.fromarray(s.object).save(tmp_path / "o.png")
    box = [int(v) for v in s.box_pixels]
    lines = [{"target": "t.png", "object": "o.png", "box": box, "degrees": [10, 20, 0.1]},
             {"target": "t.png", "object": "o.png", "box": box, "degrees": [math.nan, 20, 0.1]},
             {"target": "t.png", "object": "o.png", "box": box, "degrees": ["10", 20, 0.1]},
             {"target": "t.png", "object": "o.png", "box": box, "view": [0, 0, math.inf, 0]},
             {"target": "t.png", "object": "o.png", "box": [0, 0, math.nan, 10], "degrees": [0, 0, 0]}]
    lines += [lines[0]] * 95  # so that the first five lines are all in the train split
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    folder, report = builders.build("pairs", tmp_path / "data", path=tmp_path / "m.jsonl", image_size=SIZE)
    assert sorted(report.files) == [f"{tmp_path / 'm.jsonl'}:{n}" for n in (2, 3, 4, 5)], report.summary()
    assert all("finite numbers" in reason for _, reason in report.items)


def test_a_source_where_every_item_is_bad_is_one_error_naming_it(tmp_path):
    photos = tmp_path / "photos"
    synthetic_files.write_photo_folders(photos, 2, 1, world=WORLD)
    for folder in photos.iterdir():
        meta = json.loads((folder / "meta.json").read_text())
        meta["view"] = [[math.nan, 0, 0]]
        (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"the pairs source {photos} has no usable train examples: every item is "
                                         "bad; skipped 2 item"):
        builders.build("pairs", tmp_path / "data", path=photos, image_size=SIZE)


def test_a_damaged_json_index_names_its_file(tmp_path):
    views = tmp_path / "views"
    synthetic_files.write_views_folder(views, 2, 2, world=WORLD)
    (views / "valid_paths.json").write_text('["obj0000", "obj0')
    with pytest.raises(ValueError, match=f"{views / 'valid_paths.json'} is damaged or unreadable"):
        builders.build("views", tmp_path / "data", path=views, image_size=SIZE, pairs_per_object=1)


def test_a_rebuild_after_the_source_changed_does_not_reuse_the_old_build(tmp_path):
    photos = tmp_path / "photos"
    synthetic_files.write_photo_folders(photos, 2, 2, world=WORLD)
    first, _ = builders.build("pairs", tmp_path / "data", path=photos, image_size=SIZE)
    assert builders.build("pairs", tmp_path / "data", path=photos, image_size=SIZE)[0] == first  # unchanged: reused
    meta = json.loads((photos / "photo0000" / "meta.json").read_text())
    meta["caption"] = "a new caption"
    (photos / "photo0000" / "meta.json").write_text(json.dumps(meta))
    second, _ = builders.build("pairs", tmp_path / "data", path=photos, image_size=SIZE)
    assert second != first
    source, _ = pipeline.open_source(second, "train")
    assert "a new caption" in {source[i]["caption"].decode() for i in range(len(source))}
    # an explicit name: the changed source is refused unless rebuild=True
    named, _ = builders.build("pairs", tmp_path / "named", name="mine", path=photos, image_size=SIZE)
    (photos / "photo0001" / "meta.json").write_text((photos / "photo0001" / "meta.json").read_text() + " ")
    with pytest.raises(ValueError, match="before it changed"):
        builders.build("pairs", tmp_path / "named", name="mine", path=photos, image_size=SIZE)
    assert builders.build("pairs", tmp_path / "named", name="mine", path=photos, image_size=SIZE,
                          rebuild=True)[0] == named


def test_a_damaged_record_names_itself_and_its_file(tmp_path):
    folder, _ = builders.build("synthetic", tmp_path, world=WORLD, num_examples=8, num_validation=2)
    shard = next(p for p in folder.iterdir() if "train" in p.name and "array_record" in p.name)
    data = bytearray(shard.read_bytes())
    for i in range(len(data) // 4, len(data) * 3 // 4):
        data[i] ^= 0x5A
    shard.write_bytes(bytes(data))
    source, _ = pipeline.open_source(folder, "train")
    with pytest.raises(DamagedRecordError, match=rf"record \d+ of the 'train' split cannot be read from {shard}"):
        for i in range(len(source)):
            source[i]
    np.testing.assert_equal(len(source), 8)
