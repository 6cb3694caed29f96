"""`build_pairs.py` / `python -m customnet_jax.pairs`: photos -> CustomNet training pairs (docs/model.md §10).

    python build_pairs.py --images photos/ --out pairs/ --zero123 models/zero123 --sam models/sam-vit-huge \\
        --blip2 models/blip2-opt-2.7b --boxes boxes.json --views-per-image 2

Several hosts: run the same command with --process-index i --process-count n on each (same --out on a shared
disk, or separate ones merged later). Run it again to resume. The report of skipped photos is
<out>/pairs_report_<i>_of_<n>.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys
from collections.abc import Sequence

from customnet_jax.local_models import DTYPES, local_folder
from customnet_jax.pairs.build import BuildOptions, Stages, build_pairs
from customnet_jax.pairs.caption import SUBJECT_QUESTION, Blip2Captioner, Captions, Subjects
from customnet_jax.pairs.filters import Filters
from customnet_jax.pairs.prompts import PromptSource, ZeroShotDetector
from customnet_jax.pairs.segment import MaskFolder, SamSegmenter
from customnet_jax.pairs.sources import Annotations, folder_items, tfds_items


class ModelLoadError(Exception):
    """A model folder named on the command line could not be loaded (fatal: no photo could be processed)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build_pairs.py",
        description="Turn natural photos into CustomNet training pairs: segment the object (SAM), synthesise new "
                    "views of it (our Zero-1-to-3), caption the photo (BLIP-2); one folder per photo in the "
                    "prepared-pairs layout. Resumable; sharded with --process-index/--process-count.")
    src = p.add_argument_group("photos (one of)")
    src.add_argument("--images", help="folder of pictures (searched recursively)")
    src.add_argument("--tfds", help="tfds image dataset: a prepared dataset folder or a name in --tfds-data-dir")
    src.add_argument("--tfds-split", default="train")
    src.add_argument("--tfds-data-dir", help="tfds data_dir holding --tfds (by name); nothing is downloaded")
    src.add_argument("--tfds-image-key", default="image", help="the image feature (default: image)")
    src.add_argument("--tfds-id-key", help="a string feature to name the output folders (default: the index)")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per photo)")

    seg = p.add_argument_group("segmentation (SAM or given masks) and its prompt")
    seg.add_argument("--sam", help="SAM folder (transformers save_pretrained: SamModel + SamProcessor)")
    seg.add_argument("--masks", help="folder of given masks named like the photos (white = object): skips SAM")
    seg.add_argument("--boxes", help="JSON {photo: [x0, y0, x1, y1]} in the photo's pixels")
    seg.add_argument("--points", help="JSON {photo: [x, y] or [[x, y], ...]} in the photo's pixels")
    seg.add_argument("--detector", help="zero-shot detector folder (OWL-ViT / OWLv2, transformers save_pretrained)")
    seg.add_argument("--detect", default="", help="comma-separated detector queries (e.g. 'car,dog,chair'); a "
                                                   "photo's entry in --subjects is its query when given")
    seg.add_argument("--detector-threshold", type=float, default=0.1)
    seg.add_argument("--center-point", action="store_true", help="prompt SAM with the photo's centre when no "
                                                                 "box, point or detection is available")

    view = p.add_argument_group("novel views (Zero-1-to-3)")
    view.add_argument("--zero123", required=True, help="our Zero-1-to-3 model folder (converted weights)")
    view.add_argument("--views-per-image", type=int, default=2)
    view.add_argument("--max-polar", type=float, default=60.0, help="|polar| drawn from [0, this) degrees")
    view.add_argument("--max-azimuth", type=float, default=60.0, help="|azimuth| drawn from [0, this) degrees")
    view.add_argument("--max-radius", type=float, default=0.0, help="radius delta drawn from (-this, this)")
    view.add_argument("--steps", type=int, default=50, help="DDIM steps")
    view.add_argument("--guidance", type=float, default=3.0)

    cap = p.add_argument_group("captions and subject names")
    cap.add_argument("--blip2", help="BLIP-2 folder (transformers save_pretrained: model + Blip2Processor)")
    cap.add_argument("--captions", help="JSON {photo: caption or [captions]}: known captions (BLIP-2 fills gaps)")
    cap.add_argument("--no-captions", action="store_true", help="write empty captions (no BLIP-2, no JSON)")
    cap.add_argument("--caption-prompt", default="", help="text BLIP-2 continues (default: none, a plain caption)")
    cap.add_argument("--caption-tokens", type=int, default=30, help="BLIP-2 max new tokens")
    cap.add_argument("--caption-min-tokens", type=int, default=0, help="BLIP-2 min new tokens")
    cap.add_argument("--caption-beams", type=int, default=1)
    cap.add_argument("--subjects", help="JSON {photo: subject name} (meta.json sbj_txt)")
    cap.add_argument("--subject-question", default=SUBJECT_QUESTION,
                     help="asked of BLIP-2 about the cut-out object when no subject is known ('' = don't ask)")

    flt = p.add_argument_group("quality filters")
    flt.add_argument("--min-area", type=float, default=0.01, help="min mask area, fraction of the photo")
    flt.add_argument("--max-area", type=float, default=0.95, help="max mask area, fraction of the photo")
    flt.add_argument("--min-score", type=float, default=0.0, help="min mask confidence (SAM predicted IoU)")
    flt.add_argument("--reject-border", action="store_true", help="skip objects cut by the photo's border")
    flt.add_argument("--border-margin", type=int, default=0, help="pixels from the border that count as touching")

    run = p.add_argument_group("run")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--process-index", type=int, default=0)
    run.add_argument("--process-count", type=int, default=1)
    run.add_argument("--max-side", type=int, help="shrink photos whose longer side exceeds this many pixels")
    run.add_argument("--jpeg-quality", type=int, default=95)
    run.add_argument("--retry-skipped", action="store_true", help="retry photos a previous run skipped")
    run.add_argument("--limit", type=int, help="stop after this many new pairs")
    run.add_argument("--torch-device", default="cpu", help="device for SAM / BLIP-2 / the detector (cpu, cuda)")
    run.add_argument("--torch-dtype", default="float32", choices=DTYPES)
    run.add_argument("--quiet", action="store_true")
    return p


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if (args.images is None) == (args.tfds is None):
        parser.error("give the photos with exactly one of --images DIR or --tfds DATASET")
    if (args.sam is None) == (args.masks is None):
        parser.error("give exactly one of --sam (segment with SAM) or --masks (given masks)")
    if args.sam and not (args.boxes or args.points or args.detector or args.center_point):
        parser.error("SAM needs a prompt source: --boxes, --points, --detector (with --detect or --subjects) "
                     "or --center-point")
    if args.detector and not (args.detect.strip() or args.subjects):
        parser.error("--detector needs queries: --detect 'car,dog' or per-photo --subjects")
    if not (args.blip2 or args.captions or args.no_captions):
        parser.error("give a caption source: --blip2, --captions, or --no-captions")
    if args.views_per_image < 1 or args.steps < 1:
        parser.error("--views-per-image and --steps must be >= 1")
    if not 1 <= args.jpeg_quality <= 100:
        parser.error("--jpeg-quality must be in [1, 100]")


def _check_folders(args: argparse.Namespace) -> None:
    """Every model folder named exists and looks right (configs only; the weights load at the first photo)."""
    from customnet_jax.model_folder import read_folder

    for path, what in ((args.sam, "SAM"), (args.blip2, "BLIP-2"), (args.detector, "detector")):
        if path:
            local_folder(path, what)
    if not read_folder(pathlib.Path(args.zero123).absolute()).model.is_zero123:
        raise ValueError(f"--zero123 {args.zero123} is a CustomNet model folder; the view stage needs Zero-1-to-3")
    for path, what in ((args.masks, "--masks"), (args.images, "--images")):
        if path and not pathlib.Path(path).is_dir():
            raise FileNotFoundError(f"{what} folder {path} does not exist")
    for path in (args.boxes, args.points, args.captions, args.subjects):
        if path and not pathlib.Path(path).is_file():
            raise FileNotFoundError(f"annotation file {path} does not exist")


def make_stages(args: argparse.Namespace) -> Stages:
    """Load every model the arguments name (errors here are fatal: nothing would work without them)."""
    from customnet_jax.pairs.views import ViewSynthesizer

    device, dtype = args.torch_device, args.torch_dtype
    segmenter = SamSegmenter(args.sam, device, dtype) if args.sam else MaskFolder(args.masks)
    subjects_known = Annotations(args.subjects) if args.subjects else None
    detector = ZeroShotDetector(args.detector, args.detector_threshold, device, dtype) if args.detector else None
    prompts = PromptSource(Annotations(args.boxes) if args.boxes else None,
                           Annotations(args.points) if args.points else None, detector,
                           [q.strip() for q in args.detect.split(",") if q.strip()], subjects_known,
                           args.center_point)
    blip2 = (Blip2Captioner(args.blip2, device, dtype, args.caption_tokens, args.caption_min_tokens,
                            args.caption_beams) if args.blip2 else None)
    views = ViewSynthesizer.from_folder(args.zero123, steps=args.steps, guidance=args.guidance)
    provenance = {"models": {"zero123": str(pathlib.Path(args.zero123).absolute()),
                             "segmenter": str(pathlib.Path(args.sam or args.masks).absolute()),
                             "detector": args.detector and str(pathlib.Path(args.detector).absolute()),
                             "blip2": args.blip2 and str(pathlib.Path(args.blip2).absolute())},
                  "zero123_sampling": {"steps": args.steps, "guidance": args.guidance}}
    return Stages(
        segmenter=segmenter, views=views, prompts=prompts,
        captions=Captions(Annotations(args.captions) if args.captions else None, blip2, args.caption_prompt or None),
        subjects=Subjects(subjects_known, blip2, args.subject_question or None),
        filters=Filters(args.min_area, args.max_area, args.min_score, args.reject_border, args.border_margin),
        provenance=provenance)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(args, parser)
    if args.torch_device != "cpu":  # share the accelerator with torch: JAX must not grab 75% of it up front
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("customnet_jax").setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        Filters(args.min_area, args.max_area, args.min_score, args.reject_border, args.border_margin)  # check early
        _check_folders(args)
        if args.images:
            items = folder_items(args.images)
        else:
            items = tfds_items(args.tfds, args.tfds_split, args.tfds_data_dir, args.tfds_image_key,
                               args.tfds_id_key, args.process_index, args.process_count)
        options = BuildOptions(
            views_per_image=args.views_per_image, seed=args.seed, max_polar=args.max_polar,
            max_azimuth=args.max_azimuth, max_radius=args.max_radius, process_index=args.process_index,
            process_count=args.process_count, max_side=args.max_side, jpeg_quality=args.jpeg_quality,
            retry_skipped=args.retry_skipped, limit=args.limit)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"build_pairs: {e}", file=sys.stderr)
        return 2

    def stages() -> Stages:  # loaded at the first photo with work left: a finished shard loads no model
        try:
            return make_stages(args)
        except (FileNotFoundError, ValueError, OSError) as e:
            raise ModelLoadError(str(e)) from e

    def progress(done: int, total: int) -> None:
        if done and done % 100 == 0:
            logging.getLogger(__name__).info("%d / %d photos of this process looked at", done, total)

    try:
        report = build_pairs(items, args.out, stages, options, on_progress=progress)
    except ModelLoadError as e:
        print(f"build_pairs: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"report: {pathlib.Path(args.out) / report.file_name}")
    return 0 if report.written or report.existing or not (items and report.skipped) else 1
