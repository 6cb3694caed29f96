"""Photos -> CustomNet training pairs in the prepared-pairs layout (docs/model.md §10), resumable and sharded.

Per photo: load (upright RGB) -> prompt (box / point / detector / centre) -> segment (SAM or given masks) ->
filters -> zero123 views at random relative viewpoints -> caption and subject -> write one folder:

    <out>/<image id>/input.jpg          the photo (= the training target), upright RGB
                     mask.jpg           the object mask (white = object), the photo's size
                     multi_view_00.jpg  zero123 views of the object on white, one per view
                     meta.json          {"sbj_txt", "caption", "bbox": [x, y, w, h] (tight box of the mask in
                                         the photo's pixels), "view": [[polar, azimuth, radius], ...]}
                     caption.json       {"caption": [...]}
                     object.json        how the pair was made (prompt, mask score and area, seeds, models, ...)

meta "view" i is the zero123 delta (degrees) that turned the photo's object into multi_view_i; training takes
view i as the condition and the photo as the target, so T = [rad(-polar), sin(rad(-azimuth)),
cos(rad(-azimuth)), -radius] (customnet_jax.data.pairs does that, and enlarges the bbox to the square of side
max(w, h) * 256/200 on the 256 canvas). object.json also records that square in photo pixels.

Each folder is written under <out>/.staging/ and renamed into place when complete, so an existing folder is a
finished pair: resuming skips it. Process i of n takes the photos at positions k with k % n == i of the sorted
listing. Photos that cannot give a pair are skipped and listed with the stage and reason in
<out>/pairs_report_<i>_of_<n>.json; on a resumed run they are not retried unless retry_skipped is set.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from customnet_jax.conditioning.boxes import centred_square, mask_xywh
from customnet_jax.pairs.caption import Captions, Subjects
from customnet_jax.pairs.filters import Filters
from customnet_jax.pairs.prompts import Prompt, PromptSource
from customnet_jax.pairs.segment import Segmenter
from customnet_jax.pairs.sources import ImageItem, SkipImage, load_photo, shard
from customnet_jax.pairs.views import ViewMaker, photo_seed, random_views

log = logging.getLogger(__name__)
STAGING = ".staging"
FILES = ("input.jpg", "mask.jpg", "meta.json", "caption.json", "object.json")  # + multi_view_NN.jpg
ENLARGE = 256 / 200  # docs/model.md §10: the training box is the square of side max(w, h) * 256/200


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    views_per_image: int = 2
    seed: int = 0
    max_polar: float = 60.0
    max_azimuth: float = 60.0
    max_radius: float = 0.0
    process_index: int = 0
    process_count: int = 1
    max_side: int | None = None  # shrink photos whose longer side is larger (None: keep their size)
    jpeg_quality: int = 95
    retry_skipped: bool = False  # on resume, retry photos a previous run skipped
    limit: int | None = None  # stop after this many new pairs (a quick look at the output)
    report_every: int = 50  # rewrite the report after this many photos


@dataclasses.dataclass
class Stages:
    """The swappable stages. `prompts` may be None when the segmenter needs no prompt (given masks)."""

    segmenter: Segmenter
    views: ViewMaker
    captions: Captions = dataclasses.field(default_factory=Captions)
    subjects: Subjects = dataclasses.field(default_factory=lambda: Subjects(question=None))
    prompts: PromptSource | None = None
    filters: Filters = dataclasses.field(default_factory=Filters)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)  # model paths etc., into object.json


@dataclasses.dataclass
class BuildReport:
    """What one process did: pairs written now, pairs found done, photos skipped (id -> stage, reason, file)."""

    process_index: int = 0
    process_count: int = 1
    written: list[str] = dataclasses.field(default_factory=list)
    existing: int = 0
    skipped: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def file_name(self) -> str:
        return f"pairs_report_{self.process_index}_of_{self.process_count}.json"

    def add_skip(self, item: ImageItem, stage: str, reason: str) -> None:
        self.skipped[item.id] = {"file": item.source, "stage": stage, "reason": reason}
        log.warning("skipped %s (%s): %s: %s", item.id, item.source, stage, reason)

    def to_json(self) -> dict[str, Any]:
        return {"process_index": self.process_index, "process_count": self.process_count,
                "written": self.written, "existing": self.existing, "skipped_count": len(self.skipped),
                "skipped": [{"image": k, **v} for k, v in sorted(self.skipped.items())],
                "seconds": round(self.seconds, 2)}

    def save(self, out: pathlib.Path) -> pathlib.Path:
        path = out / self.file_name
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        temporary.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(temporary, path)
        return path

    @classmethod
    def load_skipped(cls, path: pathlib.Path) -> dict[str, dict[str, str]]:
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
            return {d["image"]: {k: d[k] for k in ("file", "stage", "reason")} for d in data["skipped"]}
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable report %s", path)
            return {}

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for entry in self.skipped.values():
            reasons[entry["stage"]] = reasons.get(entry["stage"], 0) + 1
        by_stage = ", ".join(f"{stage} {n}" for stage, n in sorted(reasons.items())) or "none"
        return (f"process {self.process_index}/{self.process_count}: wrote {len(self.written)} pair folder(s), "
                f"{self.existing} already done, skipped {len(self.skipped)} photo(s) (by stage: {by_stage}) "
                f"in {self.seconds:.1f} s")


def square_box(bbox: Sequence[int], enlarge: float = ENLARGE) -> list[float]:
    """The square (x0, y0, x1, y1) of side max(w, h) * enlarge centred on the box [x, y, w, h] (photo pixels;
    may reach outside the photo). Informational: the pairs reader derives the training box from meta bbox."""
    return [round(v, 2) for v in centred_square(bbox, max(bbox[2], bbox[3]) * enlarge)]


def _save_jpeg(array: np.ndarray, path: pathlib.Path, quality: int, subsampling: int = -1) -> None:
    Image.fromarray(array).save(path, format="JPEG", quality=quality, subsampling=subsampling)


def _write_pair(out: pathlib.Path, staging_root: pathlib.Path, item: ImageItem, photo: np.ndarray,
                mask: np.ndarray, views: list[list[float]], pictures: np.ndarray, meta: dict[str, Any],
                captions: list[str], details: dict[str, Any], quality: int) -> bool:
    """Write the pair folder atomically; False if another process finished it first."""
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f"{item.id}-", dir=staging_root))
    try:
        _save_jpeg(photo, staging / "input.jpg", quality)
        _save_jpeg(mask.astype(np.uint8) * 255, staging / "mask.jpg", 100, 0)  # a binary mask: keep its edges
        for i, picture in enumerate(pictures):
            _save_jpeg(picture, staging / f"multi_view_{i:02d}.jpg", quality)
        (staging / "meta.json").write_text(json.dumps(meta, indent=1))
        (staging / "caption.json").write_text(json.dumps({"caption": captions}, indent=1))
        (staging / "object.json").write_text(json.dumps(details, indent=1))
        target = out / item.id
        if target.exists():
            return False
        try:
            os.rename(staging, target)
        except OSError:
            if target.is_dir():  # a concurrent writer won
                return False
            raise
        return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def make_pair(item: ImageItem, stages: Stages, options: BuildOptions) -> dict[str, Any]:
    """Run the stages on one photo -> everything the folder needs. SkipImage when it cannot give a pair."""
    photo, scale = load_photo(item, options.max_side)
    if stages.prompts is not None and getattr(stages.segmenter, "needs_prompt", True):
        prompt = _stage("prompt", lambda: stages.prompts(item, photo, scale))
    else:
        prompt = Prompt("none")
    segment = _stage("segment", lambda: stages.segmenter(item, photo, prompt))
    mask = np.asarray(segment.mask, bool)
    if mask.shape != photo.shape[:2]:
        raise SkipImage("segment", f"mask is {mask.shape}, the photo {photo.shape[:2]}")
    rejected = stages.filters.check(mask, segment.score)
    if rejected:
        raise SkipImage("filter", rejected)
    bbox = mask_xywh(mask)
    seed = photo_seed(options.seed, item.id)
    views = random_views(np.random.default_rng(seed), options.views_per_image, options.max_polar,
                         options.max_azimuth, options.max_radius)
    pictures = _stage("views", lambda: np.asarray(stages.views(photo, mask, views, seed)))
    if pictures.shape[0] != len(views) or pictures.dtype != np.uint8 or pictures.ndim != 4:
        raise SkipImage("views", f"the view stage returned {pictures.shape} {pictures.dtype}; expected uint8 "
                                 f"({len(views)}, R, R, 3)")
    captions, caption_source = _stage("caption", lambda: stages.captions(item, photo))
    subject, subject_source = _stage("subject", lambda: stages.subjects(item, photo, mask, prompt))
    meta = {"sbj_txt": subject, "caption": captions[0], "bbox": bbox, "view": views}
    details = {
        "image_id": item.id, "source": item.source, "size": [int(photo.shape[1]), int(photo.shape[0])],
        "prompt": prompt.to_json(), "mask_score": round(float(segment.score), 5),
        "mask_area": round(float(mask.mean()), 5), "bbox": bbox, "square_box": square_box(bbox),
        "view_convention": "view = zero123 delta [polar, azimuth, radius] (degrees) from the photo to the view; "
                           "the training T maps the view back to the photo: T(-polar, -azimuth, -radius)",
        "seed": seed, "caption_source": caption_source, "subject_source": subject_source,
        "view_resolution": int(pictures.shape[1]), **stages.provenance,
    }
    return {"photo": photo, "mask": mask, "views": views, "pictures": pictures, "meta": meta,
            "captions": captions, "details": details}


def _stage(name: str, run: Callable[[], Any]) -> Any:
    """Run a stage; any failure other than SkipImage becomes a SkipImage naming the stage (never fatal)."""
    try:
        return run()
    except SkipImage:
        raise
    except Exception as e:  # noqa: BLE001 - one photo's failure must not stop the build
        log.debug("stage %s failed", name, exc_info=True)
        raise SkipImage(name, f"{type(e).__name__}: {e}") from e


def build_pairs(items: Sequence[ImageItem], out: str | pathlib.Path, stages: Stages | Callable[[], Stages],
                options: BuildOptions = BuildOptions(),
                on_progress: Callable[[int, int], None] | None = None) -> BuildReport:
    """Build this process's share of `items` into `out`; returns (and saves) the report.

    `stages` may be a function that makes them: it is called at the first photo with work left, so a resumed
    run that finds everything done loads no model."""
    started = time.time()
    made: list[Stages] = [stages] if isinstance(stages, Stages) else []

    def get_stages() -> Stages:
        if not made:
            made.append(stages())
        return made[0]

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mine = shard(items, options.process_index, options.process_count)
    report = BuildReport(options.process_index, options.process_count)
    previous = BuildReport.load_skipped(out / report.file_name)
    staging_root = out / STAGING / f"p{options.process_index}_of_{options.process_count}"
    shutil.rmtree(staging_root, ignore_errors=True)  # leftovers of an interrupted run of this process
    staging_root.mkdir(parents=True)
    try:
        for done, item in enumerate(mine):
            if on_progress is not None:
                on_progress(done, len(mine))
            if (out / item.id).is_dir():
                report.existing += 1
                continue
            if item.id in previous and not options.retry_skipped:
                report.skipped[item.id] = previous[item.id]
                continue
            if options.limit is not None and len(report.written) >= options.limit:
                break
            try:
                pair = make_pair(item, get_stages(), options)
            except SkipImage as e:
                report.add_skip(item, e.stage, e.reason)
            else:
                if _write_pair(out, staging_root, item, pair["photo"], pair["mask"], pair["views"],
                               pair["pictures"], pair["meta"], pair["captions"], pair["details"],
                               options.jpeg_quality):
                    report.written.append(item.id)
                else:
                    report.existing += 1
            if (done + 1) % options.report_every == 0:
                report.seconds = time.time() - started
                report.save(out)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
        try:
            (out / STAGING).rmdir()  # only when no other process is still staging there
        except OSError:
            pass
        report.seconds = time.time() - started
        report.save(out)
    log.info("%s", report.summary())
    return report
