"""`eval.py demo`: what the demo model controls, measured on held-out scenes of the synthetic world (measure.py).

The demo's measures sit above the evaluation package, so eval.py adds this subcommand to evaluation's parser
(`evaluation.cli.main(commands=[COMMAND])`); the evaluation package does not import the demo.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib

from PIL import Image

from customnet_jax.demo.measure import comparison_figure, evaluate, view_use
from customnet_jax.evaluation.cli import Command
from customnet_jax.sampling.builtin_model import DEMO_FOLDER
from customnet_jax.sampling.cli import enable_compilation_cache
from customnet_jax.sampling.flags import add_sampling_arguments, sampling_options
from customnet_jax.sampling.pipeline import Pipeline


def add_arguments(d: argparse.ArgumentParser) -> None:
    d.add_argument("--checkpoint", help="model folder (default: the built-in demo model)")
    d.add_argument("--scenes", type=int, default=16, help="held-out scenes")
    d.add_argument("--guidance", type=float, default=3.0)
    add_sampling_arguments(d, steps=25)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", help="also write the scores here")
    d.add_argument("--figure", help="also write a PNG: object, truth, picture at the requested view, picture at "
                                    "the wrong view, truth there (one row per scene, the first 4 scenes)")


def run(args: argparse.Namespace) -> int:
    enable_compilation_cache()
    folder = pathlib.Path(args.checkpoint) if args.checkpoint else DEMO_FOLDER
    figure_rows = [] if args.figure else None
    pipeline = Pipeline.from_folder(folder)
    chosen = sampling_options(args)  # evaluate() calls the pipeline with steps only: set its default sampler
    if chosen["sampler"] is not None:
        pipeline.sampler, pipeline.sampler_options = chosen["sampler"], {}
    pipeline.sampler_options.update(chosen["sampler_options"])
    scores = evaluate(pipeline, args.scenes, chosen["steps"], args.seed, args.guidance, figure_rows=figure_rows)
    use = view_use(pipeline, max(args.scenes, 32), seed=args.seed)
    print(f"model: {folder}\n{scores.table()}\nview use (training loss on the object's box with one part of T wrong, "
          "vs right; 0: ignored): " + ", ".join(f"{part} {value:+.1%}" for part, value in use.items()))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"model": str(folder), **dataclasses.asdict(scores),
                                                       "view_use": use}, indent=1))
    if args.figure:
        Image.fromarray(comparison_figure(figure_rows[:4])).save(args.figure)
        print(f"written: {args.figure}")
    return 0


COMMAND = Command("demo", "location, viewpoint and identity of a model trained on the synthetic world, on held-out "
                          "scenes against their ground-truth renders", add_arguments, run)
