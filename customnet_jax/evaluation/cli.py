"""`eval.py`: the paper's metrics over generated pictures (`metrics`), the whole protocol run (`protocol`), and
the demo model's control measured against the synthetic world's ground truth (`demo`, added by eval.py from
customnet_jax/demo/eval_command.py: the demo sits above this package).

    python eval.py metrics --samples outputs/ --dino models/dino-vits16 --clip models/clip-vit-large-patch14
    python eval.py protocol --checkpoint models/customnet --objects objects/ --out runs/eval \\
        --dino models/dino-vits16 --clip models/clip-vit-large-patch14
    python eval.py demo --scenes 16 --steps 25
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp

from customnet_jax.evaluation import protocol as P
from customnet_jax.evaluation.embedders import ClipEmbedder, DinoEmbedder, require_torch
from customnet_jax.evaluation.report import format_table, write_report
from customnet_jax.sampling.builtin_model import DEMO_FOLDER, demo_pipeline
from customnet_jax.sampling.cli import _join_negative_values, enable_compilation_cache, parse_values, views_from
from customnet_jax.sampling.flags import add_sampling_arguments, sampling_options
from customnet_jax.sampling.pipeline import Pipeline


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand added by a caller above this package (eval.py adds the demo's: customnet_jax/demo/)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _add_metric_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("metrics (embedding models from local transformers folders; nothing is downloaded)")
    g.add_argument("--dino", help="DINO / DINOv2 model folder (AutoModel + preprocessor_config.json), for DINO-I")
    g.add_argument("--clip", help="CLIPModel folder (+ preprocessor_config.json, tokenizer), for CLIP-I / CLIP-T")
    g.add_argument("--no-crop-to-box", dest="crop_to_box", action="store_false",
                   help="embed the whole picture for DINO-I / CLIP-I (default: crop to the requested box)")
    g.add_argument("--no-measures", dest="measures", action="store_false",
                   help="skip the ground-truth measures (location, viewpoint, background, identity)")
    g.add_argument("--device", help="torch device for the embedding models (default: cuda if available, else cpu)")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--references", help="reference object pictures <object id>.png (default: from the settings)")


def build_parser(commands: Sequence[Command] = ()) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval.py", description="CustomNet evaluation: DINO-I, CLIP-I, CLIP-T "
                                "(the paper's table, docs/model.md §11) and ground-truth measures.")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("metrics", help="score a folder of generated pictures (sample.py / protocol output)")
    m.add_argument("--samples", required=True, help="folder with {name}.json settings + pictures, any depth")
    m.add_argument("--out", help="report prefix (default: <samples>/metrics -> metrics.json, metrics_*.csv)")
    _add_metric_args(m)

    r = sub.add_parser("protocol", help="objects x prompts x seeds x views through a model, then the metrics; "
                                        "resumes where it stopped")
    r.add_argument("--out", required=True, help="run folder (resumed if it exists)")
    r.add_argument("--checkpoint", help="CustomNet model folder (default: the built-in demo model)")
    source = r.add_mutually_exclusive_group(required=True)
    source.add_argument("--objects", help="folder of object pictures (RGBA or on white; id = file stem; optional "
                                          "objects.json: id -> name or {name, bbox, background})")
    source.add_argument("--synthetic", type=int, metavar="N", help="N objects of the synthetic world (ground truth "
                                                                   "for the viewpoint measures)")
    r.add_argument("--num-objects", type=int, help="only the first N objects of --objects")
    r.add_argument("--world-seed", type=int, default=0, help="synthetic world seed")
    r.add_argument("--prompts", help="background prompts, one per line (default: the 26 built-in)")
    r.add_argument("--num-prompts", type=int, help="only the first N prompts")
    r.add_argument("--template", default="{name} {background}", help="model text from {name} and {background}")
    r.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (paper: 3)")
    r.add_argument("--polar", default="0", help="relative polar angle(s), as sample.py")
    r.add_argument("--azimuth", default="0", help="relative azimuth(s), as sample.py")
    r.add_argument("--radius", default="0", help="relative radius(es), as sample.py")
    r.add_argument("--bbox", help="box for objects without their own: x0,y0,x1,y1 pixels or fractions "
                                  "(default 0.15,0.15,0.85,0.85)")
    r.add_argument("--background", help="background picture for a composition model (objects without their own)")
    r.add_argument("--num-samples", type=int, default=1)
    r.add_argument("--guidance", type=float, default=3.0)
    add_sampling_arguments(r)
    r.add_argument("--bf16", action="store_true", help="bfloat16 compute and weights (as sample.py --bf16)")
    r.add_argument("--no-metrics", dest="metrics", action="store_false", help="only sample")
    _add_metric_args(r)

    for command in commands:
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    return p


def _embedders(args: argparse.Namespace) -> tuple[Any, Any]:
    dino = DinoEmbedder(args.dino, device=args.device, batch_size=args.batch_size) if args.dino else None
    clip = ClipEmbedder(args.clip, device=args.device, batch_size=args.batch_size) if args.clip else None
    return dino, clip


def _score_and_report(folder: pathlib.Path, prefix: pathlib.Path, args: argparse.Namespace, info: dict) -> int:
    if not (args.dino or args.clip):
        print("eval.py: no --dino / --clip model folder: DINO-I, CLIP-I and CLIP-T are skipped", file=sys.stderr)
    dino, clip = _embedders(args)
    rows = P.evaluate_run(folder, dino, clip, crop_to_box=args.crop_to_box, references=args.references,
                        measures=args.measures)
    if not rows:
        print(f"eval.py: error: no generated pictures (settings JSON + PNGs) under {folder}", file=sys.stderr)
        return 2
    info = dict(info, samples=str(folder), crop_to_box=args.crop_to_box,
                dino=dino.describe() if dino else None, clip=clip.describe() if clip else None)
    report = write_report(rows, prefix, info)
    columns = [c for c in report["summary"]["all"][0] if c.endswith("_mean")]
    print(format_table(report["summary"], [c[: -len("_mean")] for c in columns]))
    print("written: " + ", ".join(str(f) for f in report["files"]))
    return 0


def _protocol(args: argparse.Namespace) -> int:
    if args.metrics and (args.dino or args.clip):
        require_torch()  # fail before hours of sampling, not after
    enable_compilation_cache()

    dtype = jnp.bfloat16 if args.bf16 else jnp.float32
    if args.checkpoint:
        pipeline, label = Pipeline.from_folder(args.checkpoint, dtype=dtype), str(pathlib.Path(args.checkpoint))
    else:
        pipeline, label = demo_pipeline(DEMO_FOLDER, dtype)
    out = pathlib.Path(args.out)
    if args.synthetic is not None:
        objects = P.synthetic_objects(out, args.synthetic, pipeline.config.resolution, args.world_seed)
    else:
        objects = P.objects_from_folder(args.objects, args.num_objects)
    prompts = P.read_prompts(args.prompts) if args.prompts else P.DEFAULT_PROMPTS
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        raise SystemExit(f"--seeds {args.seeds!r}: give comma-separated integers") from None
    bbox = tuple(float(v) for v in args.bbox.split(",")) if args.bbox else P.DEFAULT_BBOX
    chosen = sampling_options(args)
    if chosen["sampler"] is None:  # the model's default sampler, recorded in protocol.json
        chosen.update(sampler=pipeline.sampler, sampler_options={**pipeline.sampler_options,
                                                                 **chosen["sampler_options"]})
    protocol = P.Protocol(
        objects=objects, prompts=prompts[: args.num_prompts], seeds=seeds,
        views=P.protocol_views(views_from(parse_values(args.polar, "polar"), parse_values(args.azimuth, "azimuth"),
                                          parse_values(args.radius, "radius"))),
        bbox=bbox, template=args.template,
        background=str(pathlib.Path(args.background).resolve()) if args.background else None,
        num_samples=args.num_samples, guidance=args.guidance, model=label, **chosen)
    print(f"model: {label}\n{P.grid_summary(protocol)} -> {out}")
    summary = P.run_protocol(pipeline, protocol, out)
    print(f"sampled {summary['sampled']}, already done {summary['skipped']} of {summary['cells']} cells "
          f"in {summary['seconds']:.1f} s")
    if not args.metrics:
        return 0
    return _score_and_report(out, out / "metrics", args, {"protocol": str(out / "protocol.json"), "model": label})


def main(argv: Sequence[str] | None = None, commands: Sequence[Command] = ()) -> int:
    """eval.py; `commands`: subcommands added by the caller (eval.py: `demo`)."""
    args = build_parser(commands).parse_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "metrics":
            folder = pathlib.Path(args.samples)
            if not folder.is_dir():
                print(f"eval.py: error: {folder} is not a folder", file=sys.stderr)
                return 2
            return _score_and_report(folder, pathlib.Path(args.out) if args.out else folder / "metrics", args, {})
        for command in commands:
            if args.command == command.name:
                return command.run(args)
        return _protocol(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"eval.py: error: {error}", file=sys.stderr)
        return 2
