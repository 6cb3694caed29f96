"""`sample.py`: command-line CustomNet sampling, including multi-view sheets."""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import re
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from customnet_jax import matting
from customnet_jax.adapters import add_lora_flags, apply_adapters, read_specs
from customnet_jax.conditioning.images import to_float
from customnet_jax.model_folder import read_folder
from customnet_jax.models.layers import ATTENTION_IMPLEMENTATIONS
from customnet_jax.sampling.builtin_model import DEMO_COMPOSITION_FOLDER, DEMO_FOLDER, condition_object, demo_pipeline
from customnet_jax.sampling.flags import add_sampling_arguments, sampling_options
from customnet_jax.sampling.outputs import write_results
from customnet_jax.sampling.pipeline import Pipeline
from customnet_jax.sampling.validate import check_pictures, validate_arguments
from customnet_jax.world.held_out import default_scene

VALUE_FLAGS = ("--polar", "--azimuth", "--radius", "--bbox")


def parse_values(text: str, name: str) -> list[float]:
    """'30' -> [30]; '-60,-30,0' -> list; 'start:stop:count' -> count evenly spaced values, both ends included."""
    text = text.strip()
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            if int(count) < 1:
                raise ValueError
            return [float(v) for v in np.linspace(float(start), float(stop), int(count))]
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--{name} {text!r}: give a number, a list '-60,-30,0' or a range 'start:stop:count'") \
            from None


def views_from(polar: list[float], azimuth: list[float], radius: list[float]) -> list[tuple[float, float, float]]:
    """One view per combination; single values are shared, equal-length lists are zipped, else the grid."""
    lists = [polar, azimuth, radius]
    longest = max(len(v) for v in lists)
    if all(len(v) in (1, longest) for v in lists):
        return [tuple(v[i] if len(v) > 1 else v[0] for v in lists) for i in range(longest)]
    return list(itertools.product(*lists))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sample.py",
        description="Put an object into generated pictures with control of its box, viewpoint and background. "
                    "With no arguments: the built-in demo model and object, a multi-view sheet in outputs/.")
    p.add_argument("--demo", choices=("prompt", "composition"), default="prompt",
                   help="without --checkpoint: the built-in demo model, background from the prompt or (composition) "
                        "from a picture (--background; the built-in example brings its own)")
    p.add_argument("--checkpoint", help="model folder (convert_weights.py output or train.py export); "
                                        "default: the built-in demo model")
    p.add_argument("--object", help="object picture: RGBA (alpha = object) or RGB on white; default: built-in")
    p.add_argument("--mask", help="object mask picture (white = object) for an RGB object picture")
    matting.add_flags(p)
    p.add_argument("--bbox", help="x0,y0,x1,y1 in pixels of the model's canvas (256 for the released models) "
                                  "or fractions in [0, 1]; default: the whole canvas")
    p.add_argument("--polar", default="0", help="relative polar angle(s) in degrees: 30, -30,0,30 or -90:90:7")
    p.add_argument("--azimuth", default="0", help="relative azimuth(s) in degrees, same forms as --polar")
    p.add_argument("--radius", default="0", help="relative radius(es), in [-0.5, 0.5]")
    p.add_argument("--prompt", default="", help="text for the background (CustomNet models)")
    p.add_argument("--background", help="background picture (composition model)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--image-guidance", type=float, default=0.0, help="extra guidance towards the object alone")
    p.add_argument("--text-guidance", type=float, default=0.0, help="extra guidance towards the text alone")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 compute, weights stored in bfloat16 (half the memory and the bytes a step reads)")
    p.add_argument("--attention", choices=("auto", *ATTENTION_IMPLEMENTATIONS), default="auto",
                   help="the UNet's attention implementation; auto: per_head on a CPU (the benchmark UNet's "
                        "forward 1.8x faster there at 32x32 latents, benchmarks/RESULTS.md), jax's choice elsewhere")
    p.add_argument("--out", default="outputs", help="output folder")
    p.add_argument("--name", default="sample", help="file name prefix")
    p.add_argument("--no-progress", action="store_true")
    add_sampling_arguments(p)
    add_lora_flags(p)
    return p


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    """Let `--azimuth -60,-30` work: argparse would take '-60,-30' for an option."""
    out, argv = [], list(argv)
    for i, arg in enumerate(argv):
        if i and argv[i - 1] in VALUE_FLAGS and re.match(r"^-[\d.]", arg):
            out[-1] = f"{argv[i - 1]}={arg}"
        else:
            out.append(arg)
    return out


def enable_compilation_cache() -> None:
    """Reuse compiled programs across runs (JAX's persistent cache), unless the user configured one."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(pathlib.Path.home() / ".cache" / "customnet_jax" / "jax"))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, OSError) as error:  # the user's to fix: one line, no traceback
        print(f"sample.py: error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    # every argument, before any work (the model's canvas size from its config alone)
    folder = args.checkpoint or (DEMO_COMPOSITION_FOLDER if args.demo == "composition" else DEMO_FOLDER)
    validate_arguments(args, parse_values, lambda: read_folder(folder).model)
    enable_compilation_cache()
    adapters = read_specs(args.lora)  # before the model is loaded: a bad file or scale fails fast
    cutout = None  # the object cut out of the user's picture, before any model is loaded
    if args.object is not None:
        mask = np.asarray(Image.open(args.mask).convert("L")) if args.mask else None
        cutout = matting.from_args(args, mask)
        for warning in cutout.warnings:
            print(f"sample.py: warning: {warning}", file=sys.stderr)
    pipeline, label, attention = _load_pipeline(args, adapters)
    inputs = _inputs(args, pipeline, cutout)
    result = pipeline(**inputs, num_samples=args.num_samples, seed=args.seed, guidance=args.guidance,
                      image_guidance=args.image_guidance, text_guidance=args.text_guidance,
                      progress=not args.no_progress, **sampling_options(args))
    check_pictures(result.latents)
    result.settings.update(model_label=label, object=args.object or "built-in", mask=args.mask,
                           background_file=args.background or ("built-in" if inputs["background"] is not None
                                                               else None),
                           bf16=args.bf16, attention=attention, matting=cutout and cutout.record())
    files = write_results(result, args.out, args.name)
    if cutout is not None:
        path = matting.write_object(cutout, pipeline.prepare_object, args.out, args.name)
        print(f"object: cut out by {cutout.method} matting -> {path} (alpha = the mask)")
    print(f"model: {label}")
    print(f"{len(inputs['views'])} view(s) x {args.num_samples} sample(s) in {result.settings['seconds']:.1f} s -> "
          f"{pathlib.Path(args.out) / (args.name + '_sheet.png')} ({len(files)} files)")
    print(json.dumps({k: result.settings[k] for k in ("prompt", "bbox", "seed", "sampler", "steps", "guidance")}))
    return 0


def _load_pipeline(args: argparse.Namespace, adapters: list) -> tuple[Pipeline, str, str | None]:
    """The model folder (or the built-in demo model) as a Pipeline, LoRA adapters applied: (pipeline, label,
    attention implementation)."""
    dtype = jnp.bfloat16 if args.bf16 else jnp.float32
    attention = args.attention
    if attention == "auto":
        attention = "per_head" if jax.default_backend() == "cpu" else None
    # LoRA adapters (customnet_jax/adapters.py), checked against the float32 weights before anything compiles
    adapt = (lambda model: apply_adapters(model, adapters, merge=not args.lora_apart)) if adapters else None
    if args.checkpoint:
        pipeline = Pipeline.from_folder(args.checkpoint, dtype=dtype, attention=attention, adapt=adapt)
        label = args.checkpoint
    else:
        folder = DEMO_COMPOSITION_FOLDER if args.demo == "composition" else DEMO_FOLDER
        pipeline, label = demo_pipeline(folder, dtype, attention, adapt)
    label += "".join(f" + LoRA {a.path}:{a.scale:g}" for a in adapters)
    return pipeline, label, attention


def _inputs(args: argparse.Namespace, pipeline: Pipeline, cutout: Any) -> dict[str, Any]:
    """The Pipeline's inputs from the flags; without --object the built-in example fills in the object, its
    caption, box and (composition) background."""
    built_in = args.object is None
    example = default_scene(pipeline.config.resolution) if built_in else None
    object_image, mask = (condition_object(example), None) if built_in else (cutout.rgb, cutout.mask)
    views = views_from(parse_values(args.polar, "polar"), parse_values(args.azimuth, "azimuth"),
                       parse_values(args.radius, "radius"))
    if built_in and args.checkpoint is None and args.azimuth == "0" and args.polar == "0":
        views = views_from([0.0], parse_values("-90:90:5", "azimuth"), [0.0])  # the default: a multi-view sheet
    prompt = args.prompt
    if not prompt and built_in and not pipeline.config.is_zero123:
        prompt = example.caption  # the built-in example's own caption
    bbox = [float(v) for v in args.bbox.split(",")] if args.bbox else None
    if bbox is None and built_in and not pipeline.config.is_zero123:
        bbox = [float(v) for v in example.box]
    if bbox is not None and len(bbox) != 4:
        raise SystemExit(f"--bbox {args.bbox!r}: give four numbers x0,y0,x1,y1")
    background = args.background
    if background is None and built_in and pipeline.config.has_background:
        background = to_float(example.background)  # the built-in example's own background
    return {"object_image": object_image, "mask": mask, "views": views, "prompt": prompt, "bbox": bbox,
            "background": background}
