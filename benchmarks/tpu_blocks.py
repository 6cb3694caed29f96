"""The TPU compiler's figures for each block of the full-size UNet, forward + backward, in seconds per compile.

    python benchmarks/tpu_blocks.py [--topology v5p-8] [--fsdp] [--per-chip 24] [--attention splash] [--only tra]
    python benchmarks/tpu_blocks.py --fsdp --only update      # the optimizer update of the train step alone

A full-size train step takes 10-27 min to compile here; one block takes 5-70 s, so a change to a block can be
judged by the compiler in a minute. Each UNet block (every ResBlock shape and every SpatialTransformer level,
with the number of times the UNet runs it) is compiled by libtpu for one chip of the topology (or, with --fsdp,
for all its chips, the weights split over them by train/sharding.py's rule and the batch split as the train step
splits it), its gradient with respect to the weights and the input taken of a sum of squares, and the compiler's
FLOPs, bytes accessed and estimated time printed with the model-FLOPs share of the chip's bf16 peak; the last
line sums the blocks. The step's update (`train.step.apply_gradients`: AdamW, the non-finite guard, on the
full-size trainable state split over the chips by the train rules) is compiled the same way, once per step. What
the sum leaves out (convolutions in and out, resamplers, the FSDP collectives) is the rest of the step's estimate
(benchmarks/RESULTS.md, TPU section). Pallas kernels (splash) declare no cost: their time is not in these figures
(`--attention xla` for a like-for-like sum).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu only compiles here

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from customnet_jax.aot.programs import abstract_train_state, with_shardings  # noqa: E402
from customnet_jax.aot.report import read_figures  # noqa: E402
from customnet_jax.aot.targets import parse_target  # noqa: E402
from customnet_jax.config_files import load_config  # noqa: E402
from customnet_jax.models import unet  # noqa: E402
from customnet_jax.models.layers import set_attention, under_mesh  # noqa: E402
from customnet_jax.train import sharding  # noqa: E402
from customnet_jax.train.step import apply_gradients  # noqa: E402

CONFIG = unet.UNetConfig()  # full size; 256 px -> 32 x 32 latents
CONTEXT_TOKENS = 1 + 77
# (input channels, output channels, latent side, times per UNet forward): down path, middle, up path
# (its inputs are the skips concatenated)
RES_BLOCKS = [(320, 320, 32, 2), (320, 640, 16, 1), (640, 640, 16, 1), (640, 1280, 8, 1), (1280, 1280, 8, 1),
              (1280, 1280, 4, 4), (2560, 1280, 4, 3), (2560, 1280, 8, 2), (1920, 1280, 8, 1), (1920, 640, 16, 1),
              (1280, 640, 16, 1), (960, 640, 16, 1), (960, 320, 32, 1), (640, 320, 32, 2)]
TRANSFORMERS = [(320, 32, 5), (640, 16, 5), (1280, 8, 5), (1280, 4, 1)]  # (width, latent side, times)


def compile_gradient(module: nnx.Module, inputs: list[tuple[int, ...]], mesh: Mesh, fsdp: bool):
    """libtpu's compiled gradient of sum(module(*inputs)^2) with respect to the weights and the first input."""
    graphdef, params = nnx.split(module)
    param_shardings = (sharding.tree_shardings(mesh, params, 2**14) if fsdp
                       else jax.tree.map(lambda _: NamedSharding(mesh, P()), params))
    data = NamedSharding(mesh, P(tuple(mesh.axis_names)))

    def loss(params, *xs):
        with under_mesh(mesh):
            return jnp.sum(nnx.merge(graphdef, params)(*xs).astype(jnp.float32) ** 2)

    xs = [jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=data) for shape in inputs]
    step = jax.jit(jax.grad(loss, argnums=(0, 1)), out_shardings=(param_shardings, data))
    return step.lower(with_shardings(params, param_shardings), *xs).compile()


def compile_update(mesh: Mesh):
    """libtpu's compiled update of the full-size train state (`apply_gradients`), sharded as the train step's."""
    config = load_config(ROOT / "configs" / "customnet.py")
    _, tx, state, _ = abstract_train_state(config)
    state_shardings = sharding.tree_shardings(mesh, state, config.mesh.fsdp_min_size)
    scalar = NamedSharding(mesh, P())
    update = jax.jit(lambda state, grads, loss: apply_gradients(tx, state, grads, loss),
                     in_shardings=(state_shardings, state_shardings["params"], scalar),
                     out_shardings=(state_shardings, scalar), donate_argnums=(0,))
    return update.lower(with_shardings(state, state_shardings), with_shardings(state["params"],
                                                                               state_shardings["params"]),
                        jax.ShapeDtypeStruct((), jnp.float32, sharding=scalar)).compile()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", default="v5p-8")
    parser.add_argument("--fsdp", action="store_true", help="all the slice's chips, weights split (else one chip)")
    parser.add_argument("--per-chip", type=int, default=24, help="samples per chip (24: batch 96 on v5p-8)")
    parser.add_argument("--attention", default="splash", choices=["splash", "xla"])
    parser.add_argument("--only", default="", choices=["", "res", "tra", "update"],
                        help="one kind of block (res, tra) or the optimizer update")
    args = parser.parse_args()

    target = parse_target(args.topology)
    devices = target.devices() if args.fsdp else target.devices()[:1]
    mesh = Mesh(np.array(devices).reshape(1, len(devices)), ("data", "fsdp"))
    batch = args.per_chip * len(devices)
    rngs, dtype, emb = nnx.Rngs(0), jnp.bfloat16, CONFIG.time_embed_dim
    blocks = []
    if args.only in ("", "res"):
        blocks += [(f"ResBlock {cin}->{cout} at {side}x{side}", count,
                    lambda cin=cin, cout=cout: unet.ResBlock(cin, cout, emb, CONFIG.norm_groups, rngs=rngs,
                                                             dtype=dtype),
                    [(batch, side, side, cin), (batch, emb)]) for cin, cout, side, count in RES_BLOCKS]
    if args.only in ("", "tra"):
        blocks += [(f"SpatialTransformer {width} at {side}x{side}", count,
                    lambda width=width: unet.SpatialTransformer(width, CONFIG, rngs=rngs, dtype=dtype),
                    [(batch, side, side, width), (batch, CONTEXT_TOKENS, CONFIG.context_dim)])
                   for width, side, count in TRANSFORMERS]
    if args.only in ("", "update"):
        blocks.append(("update (AdamW + guard), per step", 1, None, None))
    print(f"{target.name} ({target.topology}), {len(devices)} chip(s), {args.per_chip} samples per chip, "
          f"attention {args.attention}, jax {jax.__version__}; per chip, forward + backward:")
    totals = np.zeros(3)
    for name, count, build, inputs in blocks:
        start = time.time()
        if build is None:
            compiled = compile_update(mesh)
        else:
            module = build()
            set_attention(module, args.attention)
            compiled = compile_gradient(module, inputs, mesh, args.fsdp)
        # the compiler's figures per device, libtpu's uncosted calls added back
        figures = read_figures(compiled, name, target, len(devices), 1, batch)
        flops, nbytes, seconds = figures.flops_per_device, figures.bytes_accessed_per_device, figures.seconds
        totals += count * np.array([flops, nbytes, seconds])
        print(f"  {name:34s} x{count}  {flops / 1e9:7.1f} GFLOP {nbytes / 1e9:6.2f} GB {seconds * 1e3:7.3f} ms "
              f"({flops / seconds / target.chip.peak_flops:4.0%} of peak in compiled FLOPs)  "
              f"[{time.time() - start:.0f} s]", flush=True)
    flops, nbytes, seconds = totals
    print(f"  sum: {flops / 1e12:.2f} TFLOP, {nbytes / 1e9:.1f} GB, {seconds * 1e3:.2f} ms "
          f"({flops / seconds / target.chip.peak_flops:.0%} of peak)")


if __name__ == "__main__":
    main()
