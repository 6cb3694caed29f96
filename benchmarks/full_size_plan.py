"""Full-size memory and FLOP plan without a GPU: compile (never run) the real train step for 8 simulated devices.

    python benchmarks/full_size_plan.py [--timeout 1800] [--max-rss-gb 9] [--json /tmp/full_size_plan.json]
    python benchmarks/full_size_plan.py --only 2,4,remat      # one configuration (data, fsdp, remat|noremat)

The customnet_v1 config (configs/customnet.py) with train.compute_dtype="bfloat16", batch 96 (12 per device,
as the original's 8 x 12), precomputed batch form (VAE posteriors + CLIP embeddings given), AdamW with the
text K/V at 10x lr, for meshes (data, fsdp) = (8, 1), (2, 4), (1, 8), with and without remat. Everything is
abstract: the train state is `jax.eval_shape` of the real init and the step is `jit_step(make_step_fn(...))`
lowered with ShapeDtypeStructs carrying the shardings, then compiled by XLA:CPU for 8 host devices
(`--xla_force_host_platform_device_count=8`). Reported per device from the compiled (SPMD-partitioned) program:
`memory_analysis()` (arguments, outputs, aliased = donated, temporaries, generated code) and
`cost_analysis()["flops"]`; FLOPs per sample = step flops x 8 / 96.

Each configuration is compiled in its own child process, one after the other, with a time limit and an RSS
watch (the child is stopped above --max-rss-gb so that other jobs on the machine are not starved). The parent
also computes an analytic estimate that does not depend on XLA:CPU: exact sharded bytes of params / Adam
moments / grads / frozen encoders from the sharding rules, and the activations kept for the backward pass
(the residuals of `jax.vjp` of the UNet loss, by `jax.eval_shape`, for one device's 12 samples).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEVICES = 8
BATCH = 96
MESHES = ((8, 1), (2, 4), (1, 8))
GB = 1e9
GIB = 2**30
ISSUE_TFLOP_PER_SAMPLE = 0.53  # the issue's figure (fwd + bwd = 3x the forward, no remat recompute)


def _set_flags() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={DEVICES}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def make_config(data: int, fsdp: int, remat: bool):
    from configs.customnet import get_config
    from customnet_jax.experiment import MeshConfig

    config = get_config()
    return dataclasses.replace(
        config, train=dataclasses.replace(config.train, compute_dtype="bfloat16", batch_size=BATCH, remat=remat),
        mesh=MeshConfig(data=data, fsdp=fsdp))


def precomputed_batch_shapes(config) -> dict:
    """The precomputed batch form (customnet_jax/conditioning/batch.py) as (shape, dtype), the fields this model
    reads (no box: the object loss weight is 1; the background latent only for the composition model)."""
    from customnet_jax.conditioning import batch

    mc = config.model
    return {key: ((BATCH, *field.shape), field.dtype) for key, field in batch.fields(mc, "precomputed").items()
            if key != "box" and (key != "background_latent" or mc.has_background)}


def abstract_setup(config):
    """Mesh, graphdef, optimizer and the abstract (state, frozen, batch) with shardings: nothing allocated."""
    import jax
    import jax.numpy as jnp

    from customnet_jax.train import sharding as shd
    from customnet_jax.train import state as st
    from customnet_jax.train.optimizer import make_optimizer

    shd.check_config(config, DEVICES)
    mesh = shd.make_mesh(config.mesh)
    graphdef, shapes = st.graphdef_and_shapes(config)
    flat = {path: jax.ShapeDtypeStruct(shape, jnp.float32) for path, shape in shapes.items()}
    trainable, frozen_params = st.split_params(flat)
    frozen = {"params": frozen_params,
              "null_text": jax.ShapeDtypeStruct((1, config.model.text_encoder.max_length, config.model.context_dim),
                                                jnp.float32)}
    tx = make_optimizer(config.train, trainable)
    state = jax.eval_shape(lambda p: st.new_state(p, tx, config.train.seed, ema=False), trainable)
    min_size = config.mesh.fsdp_min_size
    state_shardings = shd.tree_shardings(mesh, state, min_size)
    frozen_shardings = shd.tree_shardings(mesh, frozen, min_size)
    with_sharding = lambda tree, shardings: jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
    batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=shd.batch_sharding(mesh))
             for k, (shape, dtype) in precomputed_batch_shapes(config).items()}
    return dict(mesh=mesh, graphdef=graphdef, tx=tx, state=with_sharding(state, state_shardings),
                frozen=with_sharding(frozen, frozen_shardings), batch=batch, state_shardings=state_shardings,
                frozen_shardings=frozen_shardings)


def compile_one(data: int, fsdp: int, remat: bool) -> dict:
    """Lower and compile one configuration; memory and cost analysis of the per-device program."""
    _set_flags()
    import jax

    from customnet_jax.train import sharding as shd
    from customnet_jax.train.loop import step_flops
    from customnet_jax.train.step import jit_step, make_step_fn

    assert len(jax.devices()) == DEVICES, jax.devices()
    config = make_config(data, fsdp, remat)
    started = time.perf_counter()
    s = abstract_setup(config)
    batch_shardings = {k: shd.batch_sharding(s["mesh"]) for k in s["batch"]}
    jitted = jit_step(make_step_fn(config, s["graphdef"], s["tx"], s["mesh"]), s["state_shardings"],
                      s["frozen_shardings"], batch_shardings, s["mesh"])
    lowered = jitted.lower(s["state"], s["frozen"], s["batch"])
    lower_s = time.perf_counter() - started
    started = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - started
    memory = compiled.memory_analysis()
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes", "host_temp_size_in_bytes")
    mem = {f: int(getattr(memory, f, 0) or 0) for f in fields}
    # live at the peak: arguments + temporaries + outputs that do not reuse a donated argument buffer
    mem["total_bytes"] = (mem["argument_size_in_bytes"] + mem["output_size_in_bytes"] - mem["alias_size_in_bytes"]
                          + mem["temp_size_in_bytes"] + mem["generated_code_size_in_bytes"])
    flops = step_flops(compiled, config.train.grad_accum_steps)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    hlo = compiled.as_text() or ""
    collectives = collective_summary(hlo)
    return {"data": data, "fsdp": fsdp, "remat": remat, "lower_s": lower_s, "compile_s": compile_s, **mem,
            "flops_per_device": flops, "bytes_accessed_per_device": float((cost or {}).get("bytes accessed", 0)),
            "flops_per_sample": None if flops is None else flops * DEVICES / BATCH, "collectives": collectives,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB}


DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1, "f64": 8, "s64": 8}


def collective_summary(hlo: str) -> dict:
    """Count and result bytes of each collective in the compiled per-device HLO (what crosses devices)."""
    import re

    ops = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
    out = {op: {"count": 0, "bytes": 0} for op in ops}
    pattern = re.compile(r"=\s*(.*?)\s+(" + "|".join(ops) + r")(?:-start)?\(")
    for line in hlo.splitlines():
        match = pattern.search(line)
        if not match:
            continue
        nbytes = 0
        for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", match.group(1)):
            if dtype in DTYPE_BYTES:
                nbytes += DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
        out[match.group(2)]["count"] += 1
        out[match.group(2)]["bytes"] += nbytes
    return out


# ------------------------------------------------------------------------------------------- analytic estimate


def sharded_bytes(tree, mesh, min_size: int) -> float:
    """Bytes per device of a tree of ShapeDtypeStructs under the project's sharding rules."""
    import jax
    import numpy as np

    from customnet_jax.train import sharding as shd

    total = 0.0
    fsdp = mesh.shape["fsdp"]
    for x in jax.tree.leaves(tree):
        spec = shd.partition_spec((), tuple(x.shape), fsdp, min_size)
        split = fsdp if any(s == "fsdp" for s in spec) else 1
        total += math.prod(x.shape) * np.dtype(x.dtype).itemsize / split
    return total


def residual_bytes(config, per_device_batch: int) -> dict:
    """Bytes of the activations saved for the backward pass of one device's loss (the residuals of jax.vjp),
    from `jax.eval_shape`: backend independent, nothing allocated."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from customnet_jax.diffusion.schedule import alphas_cumprod
    from customnet_jax.train import state as st
    from customnet_jax.train.step import denoising_loss

    graphdef, shapes = st.graphdef_and_shapes(config)
    flat = {path: jax.ShapeDtypeStruct(shape, jnp.float32) for path, shape in shapes.items()}
    trainable, frozen = st.split_params(flat)
    mc, b = config.model, per_device_batch
    h, c, d = mc.latent_size, mc.latent_channels, mc.context_dim
    f32 = jnp.float32
    feats = {"z0": jax.ShapeDtypeStruct((b, h, h, c), f32), "conditions": jax.ShapeDtypeStruct((b, h, h, c), f32),
             "image_embedding": jax.ShapeDtypeStruct((b, d), f32), "view": jax.ShapeDtypeStruct((b, 4), f32),
             "text": jax.ShapeDtypeStruct((b, mc.text_encoder.max_length, d), f32)}
    t = jax.ShapeDtypeStruct((b,), jnp.int32)
    noise = jax.ShapeDtypeStruct((b, h, h, c), f32)
    alphas = jnp.asarray(alphas_cumprod(config.diffusion))

    def residuals(params, feats, t, noise):
        loss = lambda p: denoising_loss(nnx.merge(graphdef, p, frozen), feats, t, noise, alphas)
        _, vjp_fn = jax.vjp(loss, params)
        return vjp_fn  # a pytree whose leaves are the saved residuals (+ the primal params it closes over)

    out = jax.eval_shape(residuals, trainable, feats, t, noise)
    param_shapes = {tuple(x.shape) for x in jax.tree.leaves(trainable)}
    weights = activations = 0.0
    for x in jax.tree.leaves(out):
        size = math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
        if tuple(x.shape) in param_shapes:  # a parameter (float32) or its compute-dtype copy
            weights += size if x.dtype != jnp.float32 else 0.0
        else:
            activations += size
    return {"activations": activations, "weight_copies": weights}


def largest_block_bytes(config, per_device_batch: int) -> dict:
    """With remat, the backward recomputes one block at a time: on top of the saved block inputs, the working set
    is about one block's own residuals. Those of every block at the largest resolution (32 x 32 latents: the
    level-0 res blocks and transformers, down and up), by `jax.eval_shape` of their vjp; returns the largest."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from customnet_jax.models.build import abstract_model
    from customnet_jax.train import state as st

    model = abstract_model(st.model_builder(config.model, config.train.compute_dtype, remat=False))
    unet, b, h = model.unet, per_device_batch, config.model.latent_size
    dtype = st.COMPUTE_DTYPES[config.train.compute_dtype]
    emb = jax.ShapeDtypeStruct((b, config.model.unet.time_embed_dim), dtype)
    ctx = jax.ShapeDtypeStruct((b, 1 + config.model.text_encoder.max_length, config.model.context_dim), dtype)
    sizes = {}
    for side, level in (("down", unet.down_levels[0]), ("up", unet.up_levels[-1])):
        blocks = [(f"{side} res block {i}", r, emb) for i, r in enumerate(level.resnets)]
        blocks += [(f"{side} transformer {i}", a, ctx) for i, a in enumerate(level.attentions)]
        for name, block, second in blocks:
            channels = block.conv1.in_features if hasattr(block, "conv1") else block.proj_in.in_features
            x = jax.ShapeDtypeStruct((b, h, h, channels), dtype)
            graphdef, params = nnx.split(block)

            def vjp_of(p, x, second, graphdef=graphdef):
                return jax.vjp(lambda p: nnx.merge(graphdef, p)(x, second).astype(jnp.float32).sum(), p)[1]

            shapes = {tuple(v.shape) for v in jax.tree.leaves(params)}
            out = jax.eval_shape(vjp_of, params, x, second)
            sizes[name] = sum(math.prod(v.shape) * jnp.dtype(v.dtype).itemsize for v in jax.tree.leaves(out)
                              if tuple(v.shape) not in shapes)
    name = max(sizes, key=sizes.get)
    return {"largest": name, "bytes": sizes[name], "all": sizes}


def forward_flops(config, batch: int = 1) -> dict:
    """Matmul + convolution FLOPs of one UNet forward (2 x multiply-adds), counted on the jaxpr (no compile)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from customnet_jax.train import state as st

    graphdef, shapes = st.graphdef_and_shapes(config)
    flat = {path: jax.ShapeDtypeStruct(shape, jnp.float32) for path, shape in shapes.items()}
    trainable, frozen = st.split_params(flat)
    mc = config.model
    h, d = mc.latent_size, mc.context_dim
    x = jax.ShapeDtypeStruct((batch, h, h, mc.unet.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.int32)
    ctx = jax.ShapeDtypeStruct((batch, 1 + mc.text_encoder.max_length, d), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda p, x, t, c: nnx.merge(graphdef, p, frozen).unet(x, t, c))(trainable, x, t, ctx)
    counts = {"dot_general": 0.0, "conv_general_dilated": 0.0}

    def walk(jaxpr) -> None:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                (contract, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                out = eqn.outvars[0].aval.shape
                counts["dot_general"] += 2.0 * math.prod(out) * math.prod(lhs[i] for i in contract)
            elif eqn.primitive.name == "conv_general_dilated":
                rhs = eqn.invars[1].aval.shape  # HWIO here (NHWC convs): spatial x in-features per output
                out = eqn.outvars[0].aval.shape
                counts["conv_general_dilated"] += 2.0 * math.prod(out) * math.prod(rhs[:-1])
            for sub in jax.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return {"attention_and_linear": counts["dot_general"] / batch,
            "convolution": counts["conv_general_dilated"] / batch, "total": sum(counts.values()) / batch}


def analytic(data: int, fsdp: int, remat: bool, residuals: dict, block_bytes: float) -> dict:
    _set_flags()
    import jax

    config = make_config(data, fsdp, remat)
    s = abstract_setup(config)
    min_size = config.mesh.fsdp_min_size
    params = sharded_bytes(s["state"]["params"], s["mesh"], min_size)
    opt = sharded_bytes(s["state"]["opt_state"], s["mesh"], min_size)
    frozen = sharded_bytes(s["frozen"], s["mesh"], min_size)
    n_trainable = sum(math.prod(x.shape) for x in jax.tree.leaves(s["state"]["params"]))
    n_frozen = sum(math.prod(x.shape) for x in jax.tree.leaves(s["frozen"]["params"]))
    bf16_full = 2 * n_trainable  # the bf16 compute copy of the whole UNet if gathered at once
    scale = DEVICES / (data * fsdp)  # residuals were measured for 96 / 8 samples
    activations = residuals[remat]["activations"] * scale + (block_bytes * scale if remat else 0.0)
    return {"data": data, "fsdp": fsdp, "remat": remat, "params_bytes": params, "adam_bytes": opt,
            "grads_bytes": params, "frozen_bytes": frozen, "bf16_copy_bytes": bf16_full,
            "activation_bytes": activations,
            "weight_copy_bytes": residuals[remat]["weight_copies"], "n_trainable": n_trainable, "n_frozen": n_frozen,
            "state_total_bytes": params + opt + params + frozen}


# ------------------------------------------------------------------------------------------------- driver


def run_child(data: int, fsdp: int, remat: bool, timeout: float, max_rss: float) -> dict:
    """Compile one configuration in a child process, watching its time and RSS."""
    tag = f"{data},{fsdp},{'remat' if remat else 'noremat'}"
    out = pathlib.Path(f"/tmp/full_size_plan_{data}_{fsdp}_{int(remat)}.json")
    out.unlink(missing_ok=True)
    started = time.time()
    proc = subprocess.Popen([sys.executable, __file__, "--only", tag, "--child-json", str(out)])
    peak, reason = 0.0, None
    while proc.poll() is None:
        time.sleep(2.0)
        try:
            rss = int(next(line for line in open(f"/proc/{proc.pid}/status") if line.startswith("VmRSS")).split()[1])
            peak = max(peak, rss * 1024 / GB)
        except (OSError, StopIteration):
            pass
        if time.time() - started > timeout:
            reason = f"stopped after {timeout:.0f} s (time limit)"
        elif peak > max_rss:
            reason = f"stopped at RSS {peak:.1f} GB (limit {max_rss:.1f} GB)"
        if reason:
            proc.kill()
            proc.wait()
            break
    wall = time.time() - started
    if out.exists():
        result = json.loads(out.read_text())
        result["wall_s"] = wall
        result["watched_peak_rss_gb"] = peak
        return result
    return {"data": data, "fsdp": fsdp, "remat": remat, "error": reason or f"child exited {proc.returncode}",
            "wall_s": wall, "watched_peak_rss_gb": peak}


def fmt_gib(x: float | None) -> str:
    return "-" if x is None else f"{x / GIB:.2f}"


def report(results: list[dict], estimates: list[dict], meta: dict) -> str:
    lines = [f"Machine: {meta['machine']}; jax {meta['jax']}, jaxlib {meta['jaxlib']}; load average "
             f"{meta['load_before']} before, {meta['load_after']} after.", "",
             "| mesh (data, fsdp) | remat | args GiB | out GiB | aliased GiB | temp GiB | code GiB | total GiB | "
             "fits 16 GB | fits 80 GB | TFLOP/sample | compile s | child RSS GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        mesh, remat = f"({r['data']}, {r['fsdp']})", "on" if r["remat"] else "off"
        if "error" in r:
            lines.append(f"| {mesh} | {remat} | {r['error']} |  |  |  |  |  |  |  |  |  | "
                         f"{r['watched_peak_rss_gb']:.1f} |")
            continue
        total = r["total_bytes"]
        flops = "-" if r["flops_per_sample"] is None else f"{r['flops_per_sample'] / 1e12:.3f}"
        lines.append(
            f"| {mesh} | {remat} | {fmt_gib(r['argument_size_in_bytes'])} | {fmt_gib(r['output_size_in_bytes'])} | "
            f"{fmt_gib(r['alias_size_in_bytes'])} | {fmt_gib(r['temp_size_in_bytes'])} | "
            f"{fmt_gib(r['generated_code_size_in_bytes'])} | {fmt_gib(total)} | {'yes' if total <= 16e9 else 'no'} | "
            f"{'yes' if total <= 80e9 else 'no'} | {flops} | {r['compile_s']:.0f} | "
            f"{max(r['peak_rss_gb'], r['watched_peak_rss_gb']):.1f} |")
    lines += ["", "Analytic estimate per device (exact sharded sizes from the sharding rules; activations = "
              "residuals of jax.vjp of one device's loss (96 / devices samples), bf16 compute; with remat, the saved "
              "block inputs + one recomputed block's residuals (the largest, at 32 x 32)):", "",
              "| mesh (data, fsdp) | remat | params fp32 | Adam mu+nu | grads | frozen encoders | activations | "
              "state+grads+frozen+act GiB |", "|---|---|---|---|---|---|---|---|"]
    for e in estimates:
        total = e["state_total_bytes"] + e["activation_bytes"]
        lines.append(f"| ({e['data']}, {e['fsdp']}) | {'on' if e['remat'] else 'off'} | {fmt_gib(e['params_bytes'])} | "
                     f"{fmt_gib(e['adam_bytes'])} | {fmt_gib(e['grads_bytes'])} | {fmt_gib(e['frozen_bytes'])} | "
                     f"{fmt_gib(e['activation_bytes'])} | {fmt_gib(total)} |")
    if "forward_flops_per_sample" in meta:
        f = meta["forward_flops_per_sample"]
        lines += ["", f"UNet forward per sample (jaxpr count, 2 x multiply-adds): {f['total'] / 1e9:.1f} GFLOP "
                  f"({f['convolution'] / 1e9:.1f} convolutions, {f['attention_and_linear'] / 1e9:.1f} attention and "
                  f"linear); 3 x forward = {3 * f['total'] / 1e12:.3f} TFLOP per trained sample."]
    if estimates:
        e = estimates[0]
        lines += ["", f"Trainable parameters {e['n_trainable']:,} (UNet + cc_projection), frozen {e['n_frozen']:,} "
                  f"(VAE + CLIP image + CLIP text); a bf16 copy of the whole UNet is {fmt_gib(e['bf16_copy_bytes'])} "
                  "GiB."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="one configuration: data,fsdp,remat|noremat")
    parser.add_argument("--child-json", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    parser.add_argument("--max-rss-gb", type=float, default=9.0, help="stop a child above this RSS")
    parser.add_argument("--meshes", default="", help="e.g. '8,1;1,1' (data,fsdp; default the three 8-device "
                                                      "meshes); (1,1) = all 96 samples on one device")
    parser.add_argument("--skip-compile", action="store_true", help="only the analytic estimate")
    parser.add_argument("--json", default="/tmp/full_size_plan.json")
    args = parser.parse_args()
    _set_flags()

    if args.only:
        data, fsdp, remat = args.only.split(",")
        result = compile_one(int(data), int(fsdp), remat == "remat")
        text = json.dumps(result, indent=1)
        if args.child_json:
            pathlib.Path(args.child_json).write_text(text)
        print(text, flush=True)
        return

    import jax
    import jaxlib

    meta = {"machine": f"{platform.node()}, {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}",
            "jax": jax.__version__, "jaxlib": jaxlib.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    residuals = {}
    for remat in (False, True):
        started = time.perf_counter()
        residuals[remat] = residual_bytes(make_config(8, 1, remat), BATCH // DEVICES)
        print(f"saved for backward (12 samples, remat={remat}): activations "
              f"{residuals[remat]['activations'] / GIB:.2f} GiB, bf16 weight copies "
              f"{residuals[remat]['weight_copies'] / GIB:.2f} GiB ({time.perf_counter() - started:.0f} s)", flush=True)
    block = largest_block_bytes(make_config(8, 1, True), BATCH // DEVICES)
    meta["largest_block_residuals_12"] = block
    print(f"largest block's residuals (12 samples): {block['largest']} {block['bytes'] / GIB:.2f} GiB", flush=True)
    meta["forward_flops_per_sample"] = forward_flops(make_config(8, 1, False))
    print(f"UNet forward, matmul + conv: {meta['forward_flops_per_sample']}", flush=True)
    meshes = [tuple(int(n) for n in m.split(",")) for m in args.meshes.split(";")] if args.meshes else MESHES
    estimates = [analytic(d, f, r, residuals, block["bytes"]) for r in (False, True) for d, f in meshes]
    results = []
    if not args.skip_compile:
        for remat in (False, True):
            for data, fsdp in meshes:
                print(f"compiling mesh ({data}, {fsdp}), remat={remat} ...", flush=True)
                results.append(run_child(data, fsdp, remat, args.timeout, args.max_rss_gb))
                print(json.dumps(results[-1]), flush=True)
                pathlib.Path(args.json).write_text(json.dumps({"meta": meta, "results": results,
                                                               "estimates": estimates}, indent=1))
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    pathlib.Path(args.json).write_text(json.dumps({"meta": meta, "results": results, "estimates": estimates},
                                                  indent=1))
    print(report(results, estimates, meta))


if __name__ == "__main__":
    main()
