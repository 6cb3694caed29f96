"""GPU (or TPU) throughput of the real train step and the sampling pipeline; runs on a CPU at a tiny size as a check.

    python benchmarks/gpu.py --parts train --batches 8,16,32,48 --remat off --attention xla,cudnn
    python benchmarks/gpu.py --parts train --batches 48,64,96 --remat on
    python benchmarks/gpu.py --parts sample --sample-batches 1,8 --attention xla,cudnn
    python benchmarks/gpu.py --size tiny --batches 2,4 --sample-batches 1,2 --steps 3   # CPU check

Train: the customnet_v1 config (configs/customnet.py) with train.compute_dtype="bfloat16", the precomputed batch
form (VAE posteriors + CLIP embeddings given: the UNet + cc_projection step alone), one batch of random
precomputed examples placed on the devices once, the library's own step (`customnet_jax.train.loop.setup` +
`Trainer.compile` = `jit_step(make_step_fn(...))`, AdamW with the text K/V at 10x, donation), mesh data = all
devices. For each per-device batch: compile time, then warm-up steps, then `--repeats` windows of `--window`
steps each ended by a block; the median window gives the step time. Reported: samples/s per device, MFU from
the compiled step's own FLOP count (XLA cost analysis, counts remat recompute) and MFU at the issue's convention
(0.53 TFLOP per sample = fwd + bwd without recompute), peak device memory. A batch that runs out of memory is
recorded as such and the larger ones of that setting are skipped.

Sample: `customnet_jax.sampling.pipeline.Pipeline` on a random full-size model (bf16 compute): CLIP image and
text encoding, VAE encoding of the location canvas, 50 guided DDIM steps (conditional and unconditional halves
in one UNet call) and the VAE decode, batch 1 and 8; compile time, then the median latency of `--repeats` calls.

Attention: `--attention xla,cudnn` swaps `jax.nn.dot_product_attention`'s implementation in the UNet
(customnet_jax.models.unet.attention); where cuDNN refuses a shape at trace time (head dim, a one-token key)
that call falls back to 'xla' and the fallbacks are listed. 'cudnn' is skipped on a CPU.

Results: one JSON line per measurement on stdout and all of them in --json (default $OUT/gpu_results.json when
$OUT is set). `--time-limit` stops starting new measurements after that many seconds (the device tool allows
10 minutes per command): run the sweep in pieces as above.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ISSUE_FLOP_PER_SAMPLE = 0.53e12
STARTED = time.time()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--parts", default="train,sample")
    parser.add_argument("--batches", default="8,16,32,48,64,96", help="per-device batch sizes of the train sweep")
    parser.add_argument("--remat", choices=("off", "on", "both"), default="off")
    parser.add_argument("--attention", default="xla", help="comma-separated: xla, cudnn")
    parser.add_argument("--sample-batches", default="1,8")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--window", type=int, default=5, help="train steps per timed window")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--time-limit", type=float, default=540.0, help="seconds; no new measurement after it")
    default_json = str(pathlib.Path(os.environ["OUT"]) / "gpu_results.json") if os.environ.get("OUT") else \
        "/tmp/gpu_results.json"
    parser.add_argument("--json", default=default_json)
    return parser.parse_args(argv)


def base_config(size: str):
    if size == "tiny":
        from configs.tiny import get_config
    else:
        from configs.customnet import get_config
    return get_config()


# ----------------------------------------------------------------------------------------------- attention


FALLBACKS: set = set()


def use_attention(implementation: str) -> None:
    """Make the UNet's attention call jax.nn.dot_product_attention with `implementation` ('cudnn' falls back to
    'xla' for the shapes cuDNN refuses at trace time; they are recorded in FALLBACKS)."""
    import customnet_jax.models.unet as unet_module
    from customnet_jax.models import layers

    if implementation == "xla":
        unet_module.attention = layers.attention
        return

    def attention(q, k, v, heads, *, causal=False, implementation=None):
        try:
            return layers.attention(q, k, v, heads, causal=causal, implementation="cudnn")
        except (NotImplementedError, ValueError, RuntimeError) as error:
            FALLBACKS.add(f"q {tuple(q.shape)} k {tuple(k.shape)} heads {heads} {q.dtype}: "
                          f"{str(error).splitlines()[0][:120]}")
            return layers.attention(q, k, v, heads, causal=causal, implementation="xla")

    unet_module.attention = attention


def is_oom(error: Exception) -> bool:
    text = str(error)
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM"))


def peak_memory() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


# ------------------------------------------------------------------------------------------------- train


def train_sweep(args, emit) -> None:
    import jax
    import numpy as np

    from customnet_jax.experiment import MeshConfig
    from customnet_jax.train import sharding as shd
    from customnet_jax.train.loop import peak_flops, setup, step_flops
    from customnet_jax.train.synthetic import make_iterator

    devices = jax.device_count()
    peak = peak_flops(jax.devices()[0].device_kind)
    batches = [int(b) for b in args.batches.split(",")]
    remats = {"off": [False], "on": [True], "both": [False, True]}[args.remat]
    for remat in remats:
        config = base_config(args.size)
        config = dataclasses.replace(
            config, mesh=MeshConfig(data=-1, fsdp=1),
            train=dataclasses.replace(config.train, compute_dtype=args.dtype, remat=remat,
                                      batch_size=batches[0] * devices, grad_accum_steps=1, ema_decay=0.0,
                                      init_from=""))
        started = time.perf_counter()
        trainer = setup(config, log=lambda message: None)
        setup_s = time.perf_counter() - started
        for implementation in args.attention.split(","):
            if implementation == "cudnn" and jax.default_backend() == "cpu":
                emit({"part": "train", "remat": remat, "attention": "cudnn", "skipped": "no cuDNN on a CPU"})
                continue
            use_attention(implementation)
            for per_device in batches:
                if time.time() - STARTED > args.time_limit:
                    emit({"part": "train", "remat": remat, "attention": implementation, "batch": per_device,
                          "skipped": f"time limit {args.time_limit:.0f} s"})
                    continue
                global_batch = per_device * devices
                trainer.config = dataclasses.replace(
                    config, train=dataclasses.replace(config.train, batch_size=global_batch))
                host_batch = next(make_iterator(trainer.config, batch_size_per_host=global_batch,
                                                num_examples=min(global_batch, 16), form="precomputed"))
                record = {"part": "train", "remat": remat, "attention": implementation, "batch": per_device,
                          "devices": devices, "dtype": args.dtype, "setup_s": setup_s}
                try:
                    started = time.perf_counter()
                    compiled = trainer.compile(host_batch)
                    record["compile_s"] = time.perf_counter() - started
                    flops = step_flops(compiled, 1)
                    memory = compiled.memory_analysis()
                    record["temp_gib"] = getattr(memory, "temp_size_in_bytes", 0) / 2**30
                    batch = shd.global_batch(host_batch, trainer.mesh)
                    for _ in range(args.warmup):
                        trainer.state, metrics = compiled(trainer.state, trainer.frozen, batch)
                    jax.block_until_ready(metrics)
                    windows = []
                    for _ in range(args.repeats):
                        started = time.perf_counter()
                        for _ in range(args.window):
                            trainer.state, metrics = compiled(trainer.state, trainer.frozen, batch)
                        jax.block_until_ready(metrics)
                        windows.append((time.perf_counter() - started) / args.window)
                    step_s = statistics.median(windows)
                    record.update(
                        step_s=step_s, step_times=windows, samples_per_s_per_device=per_device / step_s,
                        loss=float(np.asarray(metrics["loss"])),
                        hlo_tflop_per_sample=None if flops is None else flops / per_device / 1e12,
                        mfu_hlo=None if not (flops and peak) else flops / step_s / peak,
                        mfu_issue=None if not peak else ISSUE_FLOP_PER_SAMPLE * per_device / step_s / peak,
                        peak_memory_gib=peak_memory())
                    del compiled
                except Exception as error:  # noqa: BLE001 - an OOM ends this setting's sweep, anything else is reported
                    record["error"] = "out of memory" if is_oom(error) else f"{type(error).__name__}: {error}"[:300]
                    emit(record)
                    if is_oom(error):
                        break  # the donated state may be gone, and larger batches will not fit either
                    continue
                emit(record)
                gc.collect()
        del trainer
        gc.collect()


# ------------------------------------------------------------------------------------------------ sample


def sample_latency(args, emit) -> None:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from customnet_jax.models.build import initialized_model
    from customnet_jax.models.customnet import CustomNet
    from customnet_jax.sampling.builtin_model import default_object
    from customnet_jax.sampling.pipeline import Pipeline

    config = base_config(args.size)
    dtype = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}[args.dtype]
    started = time.perf_counter()
    model = initialized_model(lambda: CustomNet(config.model, rngs=nnx.Rngs(0), dtype=dtype), seed=0)
    build_s = time.perf_counter() - started
    picture = default_object(config.model.resolution)
    for implementation in args.attention.split(","):
        if implementation == "cudnn" and jax.default_backend() == "cpu":
            emit({"part": "sample", "attention": "cudnn", "skipped": "no cuDNN on a CPU"})
            continue
        use_attention(implementation)
        pipeline = Pipeline(model, config.diffusion)  # a fresh jit per attention implementation
        for batch in (int(b) for b in args.sample_batches.split(",")):
            record = {"part": "sample", "attention": implementation, "batch": batch, "steps": args.steps,
                      "guidance": args.guidance, "dtype": args.dtype, "model_build_s": build_s}
            if time.time() - STARTED > args.time_limit:
                emit({**record, "skipped": f"time limit {args.time_limit:.0f} s"})
                continue
            call = functools.partial(pipeline, picture, prompt="a toy block on a wooden table", num_samples=batch,
                                     steps=args.steps, guidance=args.guidance, progress=False)
            try:
                started = time.perf_counter()
                call(seed=0)
                record["first_call_s"] = time.perf_counter() - started  # compile + one run
                times = []
                for repeat in range(args.repeats):
                    started = time.perf_counter()
                    call(seed=repeat + 1)  # returns host numpy: the work is finished
                    times.append(time.perf_counter() - started)
                latency = statistics.median(times)
                record.update(latency_s=latency, times=times, seconds_per_image=latency / batch,
                              peak_memory_gib=peak_memory())
            except Exception as error:  # noqa: BLE001
                record["error"] = "out of memory" if is_oom(error) else f"{type(error).__name__}: {error}"[:300]
            emit(record)


# -------------------------------------------------------------------------------------------------- main


def main() -> None:
    args = parse_args()
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    import jax
    import jaxlib

    device = jax.devices()[0]
    meta = {"device_kind": device.device_kind, "platform": device.platform, "devices": jax.device_count(),
            "jax": jax.__version__, "jaxlib": jaxlib.__version__, "host": platform.node(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "size": args.size, "argv": sys.argv[1:]}
    print(json.dumps({"meta": meta}), flush=True)
    records = []
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)

    def emit(record: dict) -> None:
        records.append(record)
        print(json.dumps(record), flush=True)
        out.write_text(json.dumps({"meta": meta, "records": records, "cudnn_fallbacks": sorted(FALLBACKS)},
                                  indent=1))

    parts = args.parts.split(",")
    if "train" in parts:
        train_sweep(args, emit)
    if "sample" in parts:
        sample_latency(args, emit)
    if FALLBACKS:
        print("cuDNN fallbacks to 'xla':\n  " + "\n  ".join(sorted(FALLBACKS)), flush=True)
    emit({"part": "done", "wall_s": time.time() - STARTED})


if __name__ == "__main__":
    main()
