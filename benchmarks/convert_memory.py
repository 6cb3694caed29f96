"""Peak memory and time of convert_weights.py on a full-size, random-valued customnet_v1.pt (not run in CI).

    python benchmarks/convert_memory.py [--workdir /tmp/convert_bench] [--keep] [--zero123]

1. writes a customnet_v1.pt with every key and shape of tests/data/customnet_v1_state_dict.tsv (1479 tensors,
   5.7 GB), random values, streamed tensor by tensor (the generator never holds two tensors);
2. converts it to a model folder in a child process, 3. exports that folder back to PyTorch in another,
   reporting each child's peak RSS (getrusage ru_maxrss) and wall time, and checks a few exported tensors.
With --zero123 it also writes a 15.5 GB zero123-style Lightning .ckpt (raw + EMA UNet, Adam states) and
converts it with --ema. Generated files are deleted unless --keep.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from customnet_jax.convert.writers import TorchZipWriter  # noqa: E402

TSV = ROOT / "tests" / "data" / "customnet_v1_state_dict.tsv"
GB = 1e9


def released_items() -> list[tuple[str, tuple[int, ...], np.dtype]]:
    items = []
    for line in TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        items.append((key, tuple(int(s) for s in shape.split(",")) if shape else (), np.dtype(dtype)))
    return items


def value(key: str, shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    if dtype == np.int64:
        return np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    return (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(dtype)


def write_checkpoint(path: pathlib.Path, items, wrap=None) -> float:
    rng = np.random.default_rng(0)
    start = time.time()
    writer = TorchZipWriter(path, items, wrap=wrap)
    for key, shape, dtype in items:
        writer.write(value(key, shape, dtype, rng))
    writer.close()
    return time.time() - start


def zero123_items(items):
    """A zero123 .ckpt's tensors: customnet_v1's minus text encoder and text K/V, plus the EMA UNet copy."""
    state = [(k, s, d) for k, s, d in items if not k.startswith("text_encoder.") and "_text." not in k]
    state += [("model_ema.decay", (), np.dtype(np.float32)), ("model_ema.num_updates", (), np.dtype(np.int64))]
    state += [("model_ema." + k[len("model."):].replace(".", ""), s, d) for k, s, d in state
              if k.startswith("model.diffusion_model.")]
    # Adam's two moments of every UNet parameter (what makes the real file 15.5 GB)
    adam = [(f"optimizer.{i}.{m}", s, d) for i, (k, s, d) in enumerate(state) if k.startswith("model.diffusion")
            for m in ("exp_avg", "exp_avg_sq")]
    return state, adam


class Callback:
    """Stands for an old PyTorch-Lightning callback class keying `callbacks` (weights_only refuses it)."""


def run_child(args: list[str]) -> tuple[float, float, str]:
    """Run a child Python process; (peak RSS in GB, wall seconds, output tail)."""
    start = time.time()
    process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.time() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{args} failed:\n{output[-3000:]}")
    return usage.ru_maxrss * 1024 / GB, wall, output.strip().splitlines()[-1] if output.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/convert_bench")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--zero123", action="store_true", help="also the 15.5 GB zero123 Lightning file, with --ema")
    args = parser.parse_args()
    work = pathlib.Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        items = released_items()
        source = work / "customnet_v1.pt"
        seconds = write_checkpoint(source, items)
        size = source.stat().st_size
        params = sum(int(np.prod(s)) for _, s, _ in items)
        gen_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
        print(f"generated {source}: {size / GB:.2f} GB, {len(items)} tensors, {params:,} values, {seconds:.0f} s, "
              f"generator peak RSS {gen_rss:.2f} GB", flush=True)
        rows.append(("generate customnet_v1.pt (streamed)", size, gen_rss, seconds))

        folder = work / "customnet_v1"
        rss, wall, last = run_child(["convert_weights.py", "--input", str(source), "--output", str(folder),
                                     "--overwrite", "--no-progress"])
        print(f"convert: peak RSS {rss:.2f} GB, {wall:.0f} s  ({last})", flush=True)
        rows.append(("convert customnet_v1.pt -> model folder", size, rss, wall))

        exported = work / "exported"
        rss, wall, last = run_child(["convert_weights.py", "--to-pytorch", "--input", str(folder), "--output",
                                     str(exported), "--overwrite", "--no-progress"])
        print(f"export: peak RSS {rss:.2f} GB, {wall:.0f} s  ({last})", flush=True)
        rows.append(("export model folder -> .safetensors + .pt", size, rss, wall))

        check = ("import torch, sys\n"
                 "a = torch.load(sys.argv[1], map_location='cpu', weights_only=True, mmap=True)\n"
                 "b = torch.load(sys.argv[2], map_location='cpu', weights_only=True, mmap=True)\n"
                 "assert list(a) == list(b), 'keys differ'\n"
                 "bad = [k for k in a if not torch.equal(a[k], b[k])]\n"
                 "print('round trip: all', len(a), 'tensors equal' if not bad else f'{len(bad)} differ: {bad[:3]}')\n")
        rss, wall, last = run_child(["-c", check, str(source), str(exported.with_suffix(".pt"))])
        print(last, flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        for path in (exported.with_suffix(".pt"), exported.with_suffix(".safetensors")):
            path.unlink(missing_ok=True)

        if args.zero123:
            state, adam = zero123_items(items)
            ckpt = work / "105000.ckpt"
            start = time.time()
            writer = TorchZipWriter(ckpt, state + adam, wrap=lambda sd: {
                "epoch": 3, "global_step": 105000,
                "state_dict": {k: sd[k] for k, _, _ in state},
                "optimizer_states": [{"state": {i: {"exp_avg": sd[f"optimizer.{i}.exp_avg"],
                                                    "exp_avg_sq": sd[f"optimizer.{i}.exp_avg_sq"]}
                                                for i in range(len(adam) // 2)}}],
                "callbacks": {Callback: {"best_model_score": None}}})
            rng = np.random.default_rng(1)
            for key, shape, dtype in state + adam:
                writer.write(value(key, shape, dtype, rng))
            writer.close()
            size = ckpt.stat().st_size
            print(f"generated {ckpt}: {size / GB:.2f} GB in {time.time() - start:.0f} s", flush=True)
            rss, wall, last = run_child(["convert_weights.py", "--input", str(ckpt), "--output",
                                         str(work / "zero123"), "--ema", "--overwrite", "--no-progress"])
            print(f"convert zero123 --ema: peak RSS {rss:.2f} GB, {wall:.0f} s  ({last})", flush=True)
            rows.append(("convert zero123 .ckpt (--ema) -> model folder", size, rss, wall))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    import jax
    import torch

    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GB:.0f} GB RAM; jax {jax.__version__}, "
          f"torch {torch.__version__}, python {platform.python_version()}")
    print("| step | input size | peak RSS | wall time |\n|---|---|---|---|")
    for name, size, rss, wall in rows:
        print(f"| {name} | {size / GB:.2f} GB | {rss:.2f} GB | {wall:.0f} s |")


if __name__ == "__main__":
    main()
