"""`python -m customnet_jax.aot`: compile the project's programs for a TPU slice on this machine, without a TPU.

    python -m customnet_jax.aot --config configs/customnet.py --topology v5p-8 \\
        --set train.batch_size=96 --set train.compute_dtype=bfloat16 --set mesh.fsdp=4
    python -m customnet_jax.aot --config configs/tiny.py --topology v5e:2x2 --programs train,sample --json out.json

Needs libtpu (`pip install -e '.[tpu]'`). The mesh is the config's (`mesh.data` x `mesh.fsdp` must use every
chip of the slice); the batch is `train.batch_size` in the config's batch form (`data.source = "precomputed"`:
VAE posteriors and CLIP embeddings given; otherwise raw pictures and tokens, encoded inside the step). Exit
status: 0 when every program fits its chips' HBM, 1 when one does not, 2 for input that cannot be compiled.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from customnet_jax.aot import analytic
from customnet_jax.aot import programs as build
from customnet_jax.aot.report import as_record, format_figures, hlo_text, read_figures
from customnet_jax.aot.targets import parse_target
from customnet_jax.config_files import load_config, override
from customnet_jax.diffusion import samplers
from customnet_jax.train import sharding as shd
from customnet_jax.train.loop import step_flops

EXIT_DOES_NOT_FIT, EXIT_BAD_INPUT = 1, 2
PROGRAMS = ("train", "sample", "encoders")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m customnet_jax.aot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="an experiment config file (configs/<name>.py)")
    parser.add_argument("--topology", required=True, help="a TPU slice: v5p-8, v5e-16, ... or libtpu's v5p:2x2x1")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field (repeatable), e.g. --set mesh.fsdp=4")
    parser.add_argument("--programs", default="train", help=f"comma-separated, of {', '.join(PROGRAMS)}")
    parser.add_argument("--sample-batches", default="1", help="pictures per sampling program, e.g. 1,8,32")
    parser.add_argument("--sample-steps", type=int, default=50, help="steps of the sampling program")
    parser.add_argument("--sampler", choices=samplers.names(), default="ddim",
                        help="the sampling program's sampler (its default options)")
    parser.add_argument("--encoder-batch", type=int, default=16, help="examples per precompute-encoder call")
    parser.add_argument("--json", help="write every program's figures here")
    parser.add_argument("--xla-flag", dest="xla_flags", action="append", default=[], metavar="NAME=VALUE",
                        help="a compiler option for every program (repeatable), e.g. "
                             "xla_tpu_spmd_unroll_windowed_einsum=true (see docs/tpu.md)")
    parser.add_argument("--hlo", metavar="DIR", help="write each compiled program's optimized HLO text into DIR "
                        "(read it with `python -m customnet_jax.aot.traffic`: where the bytes go)")
    return parser


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _check(args: argparse.Namespace):
    """Everything that can be refused before compiling: returns (config, target, devices, programs, batches)."""

    programs = [p.strip() for p in args.programs.split(",") if p.strip()]
    unknown = sorted(set(programs) - set(PROGRAMS))
    if unknown or not programs:
        raise ValueError(f"--programs {args.programs!r}: choose from {', '.join(PROGRAMS)}")
    try:
        batches = [int(b) for b in args.sample_batches.split(",")]
    except ValueError:
        raise ValueError(f"--sample-batches {args.sample_batches!r}: give integers such as 1,8,32") from None
    if min(batches) < 1 or args.sample_steps < 1 or args.encoder_batch < 1:
        raise ValueError("--sample-batches, --sample-steps and --encoder-batch must be >= 1")
    args.compiler_options = compiler_options(args.xla_flags)
    if args.hlo:  # before minutes of compiling, not after
        try:
            pathlib.Path(args.hlo).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"--hlo {args.hlo}: cannot create it ({error.strerror}); give a writable folder") from None
    config = override(load_config(args.config), args.overrides)
    target = parse_target(args.topology)
    devices = target.devices()
    data, fsdp = shd.mesh_shape(config.mesh, len(devices))
    if data * fsdp != len(devices):
        raise ValueError(f"mesh data={data} x fsdp={fsdp} = {data * fsdp} devices does not divide {target.name}'s "
                         f"{len(devices)} devices exactly; set --set mesh.fsdp=F with F dividing {len(devices)} "
                         "(and mesh.data=-1)")
    check_compiler_options(args.compiler_options, devices[0])
    try:
        shd.check_config(config, len(devices))
    except shd.ConfigError as error:
        raise ValueError(" ".join(str(error).split("\n")[1:]).replace("  - ", "")) from None
    return config, target, devices, programs, batches


class DoesNotFit(Exception):
    """The TPU compiler refused a program for want of HBM (it reports the bytes it needed)."""


def compiler_options(flags: Sequence[str]) -> dict[str, str]:
    """["name=value", ...] -> {name: value}; refused in one line when a flag is not NAME=VALUE."""
    options = {}
    for flag in flags:
        name, sep, value = flag.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"--xla-flag {flag!r}: give NAME=VALUE, e.g. xla_tpu_spmd_unroll_windowed_einsum=true")
        options[name.strip().lstrip("-")] = value.strip()
    return options


def check_compiler_options(options: dict[str, str], device) -> None:
    """Compile a one-line program for `device` with `options`: libtpu refuses an unknown option or a bad value
    in a second here, before the real programs are traced and lowered."""
    if not options:
        return
    x = jax.ShapeDtypeStruct((8, 128), jnp.float32, sharding=NamedSharding(build.one_chip(device), P()))
    try:
        jax.jit(lambda a: a + 1).lower(x).compile(compiler_options=options)
    except Exception as error:  # noqa: BLE001 - XLA reports a bad option as a runtime error
        raise ValueError(f"--xla-flag: the TPU compiler refused the options ({str(error).splitlines()[0]}); "
                         "give options libtpu knows, as NAME=VALUE") from None


def _compile(lowered, name: str, hlo_dir: str | None = None, options: dict | None = None):
    started = time.perf_counter()
    try:
        compiled = lowered.compile(compiler_options=options or None)
    except Exception as error:  # noqa: BLE001 - XLA reports running out of memory as a runtime error
        text = str(error)
        if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
            raise
        detail = next((line.strip() for line in text.splitlines() if "memory" in line.lower()), text.splitlines()[0])
        raise DoesNotFit(f"{name}: the TPU compiler ran out of HBM ({detail[:300]})") from None
    print(f"[{name}: compiled in {time.perf_counter() - started:.0f} s]", flush=True)
    if hlo_dir:
        write_atomically(pathlib.Path(hlo_dir) / f"{name.replace(' ', '_')}.hlo.txt", hlo_text(compiled))
    return compiled


def write_atomically(path: pathlib.Path, text: str) -> None:
    """Write beside, then swap: a killed run leaves no half-written file under the final name."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def run(args: argparse.Namespace) -> int:
    try:
        config, target, devices, programs, batches = _check(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        return _fail(str(error))

    try:
        return _run(args, config, target, devices, programs, batches)
    except DoesNotFit as error:
        print(f"does not fit: {error}; use more chips (mesh.fsdp), a smaller train.batch_size or "
              "train.remat=True", file=sys.stderr)
        return EXIT_DOES_NOT_FIT


def _run(args: argparse.Namespace, config, target, devices, programs, batches) -> int:
    per_chip = max(len(devices) // target.chips, 1)
    results = []
    compile_program = lambda lowered, name: _compile(lowered, name, args.hlo, args.compiler_options)

    def report(figures) -> None:
        print("\n".join(format_figures(figures, target)), flush=True)
        results.append(as_record(figures, target))

    if "train" in programs:
        mesh = shd.make_mesh(config.mesh, devices)
        lowered, batch, kernels = build.lower_train_step(config, mesh, build.batch_form(config))
        compiled = compile_program(lowered, "train step")
        figures = read_figures(compiled, "train step", target, len(devices), per_chip, config.train.batch_size)
        figures.flops_per_device = step_flops(compiled, config.train.grad_accum_steps) or 0.0
        figures.analytic_flops_per_sample = analytic.train_flops_per_sample(config, batch)
        figures.add_kernels(kernels, target)
        report(figures)
    chip = build.one_chip(devices[0])
    for count in batches if "sample" in programs else []:
        whole, step, kernels = build.lower_sampling(config, chip, count, args.sample_steps, args.sampler)
        title = f"sampling program ({args.sample_steps} {args.sampler} steps, guidance batched)"
        program = read_figures(compile_program(whole, f"sampling x{count}"), title, target, 1, per_chip, count)
        report(program)
        figures = read_figures(compile_program(step, f"sampling step x{count}"),
                               "one guided UNet step (cond + uncond)", target, 1, per_chip, count)
        figures.add_kernels(kernels, target)
        report(figures)
        if program.seconds and figures.seconds:
            # the compiler counts the DDIM loop's body once in the whole program (its FLOPs say so): add the others
            seconds = program.seconds + (args.sample_steps - 1) * figures.seconds
            print(f"  per picture: (program + {args.sample_steps - 1} x step) / {count} = "
                  f"{seconds / count * 1e3:.1f} ms -> {count / seconds:.2f} pictures/s per chip", flush=True)
            results[-2]["per_picture_seconds"] = seconds / count
    if "encoders" in programs:
        compiled = compile_program(build.lower_encoders(config, chip, args.encoder_batch), "encoders")
        report(read_figures(compiled, "precompute encoders", target, 1, per_chip, args.encoder_batch))
    if args.json:
        write_atomically(pathlib.Path(args.json), json.dumps(
            {"config": args.config, "topology": args.topology, "overrides": args.overrides,
             "xla_flags": args.xla_flags, "results": results}, indent=1))
    return exit_status(results, target.name)


def exit_status(results: list[dict], target_name: str) -> int:
    """0 when every program fits its chips' HBM; else a line naming those that do not, and EXIT_DOES_NOT_FIT."""
    misfits = [r["program"] for r in results if not r["fits"]]
    if misfits:
        print(f"does not fit: {', '.join(misfits)} (per-chip memory above {target_name}'s HBM)", file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
