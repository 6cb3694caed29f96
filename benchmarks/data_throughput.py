"""Input-pipeline throughput (examples/s), raw and precomputed, at 64 px (configs/tiny.py) and 256 px (full size).

    python benchmarks/data_throughput.py [--workdir DIR] [--batches 20] [--append benchmarks/RESULTS.md]

Builds small synthetic datasets (cached in workdir), writes precomputed datasets of the right shapes with a
stand-in encoder (random numbers: reading speed depends on shapes, not values), then times make_iterator
batches after a warm-up, in-process (read threads) and with grain worker processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import platform
import tempfile
import time

import numpy as np


def fake_encoder(config):
    """Stand-in for the frozen encoders: random outputs of the model's shapes."""
    m = config.model
    h, c, d = m.latent_size, m.latent_channels, m.image_encoder.projection_dim
    text = m.text_encoder.width if m.text_encoder is not None else 0
    rng = np.random.default_rng(0)

    def run(batch):
        n = len(batch["target"])
        out = {k: rng.normal(size=(n, h, h, c)).astype(np.float32)
               for k in ("target_mean", "target_logvar", "location_latent", "background_latent")}
        out["image_embedding"] = rng.normal(size=(n, d)).astype(np.float32)
        if text:
            out["text_embedding"] = rng.normal(size=(n, 77, text)).astype(np.float32)
        return out

    return run


def measure(config, batch_size: int, batches: int) -> tuple[float, float]:
    """(seconds to the first batch, examples/s over `batches` batches after 2 warm-up batches)."""
    from customnet_jax.data import make_iterator

    start = time.perf_counter()
    it = make_iterator(config, process_index=0, process_count=1, batch_size_per_host=batch_size)
    next(it)
    first = time.perf_counter() - start
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return first, batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(pathlib.Path(tempfile.gettempdir()) / "customnet_data_bench"))
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--append", default="", help="append the markdown section to this file")
    args = parser.parse_args()

    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from configs import tiny
    from customnet_jax.data import build, precompute
    from customnet_jax.experiment import Config, DataConfig
    from customnet_jax.world.synthetic import World

    work = pathlib.Path(args.workdir)
    rows = []
    for label, config, size, count, batch in (
        ("tiny, 64 px", tiny.get_config(), 64, 512, 16),
        ("full size, 256 px", Config(), 256, 160, 8),
    ):
        start = time.perf_counter()
        raw, _ = build("synthetic", work, world=World(image_size=size, supersample=1 if size > 64 else 2),
                       num_examples=count, num_validation=8)
        built = time.perf_counter() - start
        start = time.perf_counter()
        raw_config = dataclasses.replace(config, data=DataConfig(source="synthetic", path=str(raw)))
        pre = precompute(raw_config, None, work / "pre", encoder=fake_encoder(config), batch_size=batch)
        written = time.perf_counter() - start
        print(f"{label}: built {count} raw examples in {built:.1f} s, precomputed records in {written:.1f} s",
              flush=True)
        for form, path, source in (("raw", raw, "synthetic"), ("precomputed", pre, "precomputed")):
            for workers in (0, 2):
                data = DataConfig(source=source, path=str(path), num_workers=workers)
                first, rate = measure(dataclasses.replace(config, data=data), batch, args.batches)
                rows.append((label, form, workers, batch, first, rate))
                print(f"  {form:12s} workers={workers} batch={batch}: {rate:7.1f} examples/s "
                      f"(first batch after {first:.1f} s)", flush=True)

    load = os.getloadavg()
    lines = ["", "## Data pipeline throughput", "",
             f"`python benchmarks/data_throughput.py` on {platform.node() or 'this machine'}: {os.cpu_count()} CPU "
             f"cores, load average {load[0]:.1f} when finished (other jobs running share the cores). Synthetic-world "
             "records (PNG), decoded, resized to R, location canvas + background built, tokens, dropout flags, "
             "batched; precomputed = reading latents / embeddings (text embeddings float16 -> float32). "
             f"Steady rate over {args.batches} batches after 2 warm-up batches; workers = grain `mp_prefetch` "
             "processes (0: in-process, 2 read threads).", "",
             "| model size | form | workers | batch | examples/s | first batch (s) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {label} | {form} | {workers} | {batch} | {rate:.1f} | {first:.1f} |"
              for label, form, workers, batch, first, rate in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
