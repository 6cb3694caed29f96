"""JAX vs the PyTorch reference on this CPU, same scaled-down CustomNet UNet, same weights, same batch, one run.

    python benchmarks/cpu_vs_torch.py                       # forward, train step, 50-step guided DDIM
    python benchmarks/cpu_vs_torch.py --parts fwd,train --xla-flags "--xla_cpu_use_xnnpack=true"
    python benchmarks/cpu_vs_torch.py --variants            # the JAX speed-up attempts, one child process each

Ours: `customnet_jax.models.unet.UNet` under `jax.jit` (parameters split from the graph), the train step a
value_and_grad of the eps-MSE + optax AdamW jitted with donation, the sampler `diffusion.samplers.ddim.sample` (one
`lax.scan`, conditional and unconditional halves batched in one UNet call). Reference: diffusers
UNet2DConditionModel with the dual cross-attention processor, built from the same LDM-layout random weights by
tests/torch_reference.py, torch.optim.AdamW (fused when available), and the same guided DDIM loop with
diffusers' DDIMScheduler configured as tests/test_sampling.py does. Before timing, the two forwards and the
two sampling loops are checked to agree (relative L2).

Timing: compile (JAX) timed separately, warm-up calls, then the repeats interleaved A B A B ... so that other
load on the machine hits both sides alike; medians and the JAX/PyTorch ratio of medians; the load average
(os.getloadavg) before and after each part.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GUIDANCE = 3.0
TEXT_TOKENS = 77

# The JAX speed-up attempts of --variants: name -> extra command-line arguments of a child run (values that
# start with '--' joined with '=' so that argparse takes them as values). The XLA flags
# are tried on top of the per-head attention (the one change that clearly helps, see RESULTS.md).
PER_HEAD = ["--attention", "per_head"]
VARIANTS = {
    "baseline": [],
    "einsum attention": ["--attention", "einsum"],
    "per-head attention": PER_HEAD,
    "per-head + thunk runtime off": [*PER_HEAD, "--xla-flags=--xla_cpu_use_thunk_runtime=false"],
    "per-head + XNNPACK": [*PER_HEAD, "--xla-flags=--xla_cpu_use_xnnpack=true"],
    "per-head + YNN conv+dot": [*PER_HEAD,
                                "--xla-flags=--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot"],
    "per-head + oneDNN": [*PER_HEAD, "--xla-flags=--xla_cpu_use_onednn=true "
                                     "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce"],
    "per-head + fast math": [*PER_HEAD, "--xla-flags=--xla_cpu_enable_fast_math=true"],
    "per-head + bf16 compute": [*PER_HEAD, "--jax-dtype", "bfloat16"],
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="batch of the forward and the train step")
    parser.add_argument("--sample-batch", type=int, default=2, help="pictures per sampling run (UNet sees 2x)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--size", type=int, default=32, help="latent height = width")
    parser.add_argument("--model-channels", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the forward and train step")
    parser.add_argument("--sample-repeats", type=int, default=3, help="timed repeats of the sampling loop")
    parser.add_argument("--parts", default="fwd,train,sample")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--xla-flags", default="", help="extra XLA_FLAGS for the JAX side (set before jax import)")
    parser.add_argument("--attention", choices=("xla", "einsum", "per_head"), default="xla",
                        help="xla: layers.attention (jax.nn.dot_product_attention); einsum: plain einsum/softmax; "
                             "per_head: one (sample, head) at a time, rematerialised (UNet(attention='per_head'))")
    parser.add_argument("--jax-dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=("PASSIVE", "ACTIVE"),
                        help="OMP_WAIT_POLICY for torch's OpenMP threads (set before torch is imported)")
    parser.add_argument("--variants", default="", help="'all' or comma-separated VARIANTS names: run each in a child "
                                                        "process (XLA flags are read once per process)")
    parser.add_argument("--json", default="", help="write the results here")
    return parser.parse_args(argv)


def unet_config(args):
    from customnet_jax.models.unet import UNetConfig

    return UNetConfig(in_channels=8, model_channels=args.model_channels, channel_mult=(1, 2, 4), num_res_blocks=2,
                      attention_levels=(0, 1), num_heads=4, context_dim=128, norm_groups=32)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def einsum_attention(q, k, v, heads, *, causal=False, implementation=None):
    """Plain multi-head attention (einsum, float32 softmax): the alternative to jax.nn.dot_product_attention."""
    import jax
    import jax.numpy as jnp

    del implementation
    assert not causal
    b, tq, c = q.shape
    d = c // heads
    qh, kh, vh = (x.reshape(x.shape[0], x.shape[1], heads, d) for x in (q, k, v))
    logits = jnp.einsum("bqhd,bkhd->bhqk", qh, kh, preferred_element_type=jnp.float32) * d**-0.5
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, vh).reshape(b, tq, c)


class Interleaved:
    """Timed repeats of several callables, interleaved; each callable blocks until its result is ready."""

    def __init__(self):
        self.times: dict[str, list[float]] = {}

    def run(self, fns: dict, repeats: int) -> None:
        for _ in range(repeats):
            for name, fn in fns.items():
                started = time.perf_counter()
                fn()
                self.times.setdefault(name, []).append(time.perf_counter() - started)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])


def benchmark(args) -> dict:
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # OpenMP threads that spin while waiting make PyTorch several times slower when other processes share the
    # cores (measured here: a 3x3 conv 5x slower with 2 spinning threads); PASSIVE is torch's best setting here
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch
    from flax import nnx

    import customnet_jax.models.unet as unet_module
    from customnet_jax.diffusion.samplers import ddim
    from customnet_jax.diffusion.schedule import DiffusionConfig, add_noise, alphas_cumprod
    from customnet_jax.models.build import abstract_model, model_with_params
    from customnet_jax.models.unet import UNet
    from customnet_jax.weights import rules as R
    from customnet_jax.weights.params import param_shapes
    from customnet_jax.weights.unet_names import unet_rules
    from tests.helpers import rel_l2
    from tests.test_sampling import reference_scheduler
    from tests.torch_reference import diffusers_unet, random_ldm_state

    if args.attention == "einsum":
        unet_module.attention = einsum_attention
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    config = unet_config(args)
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.jax_dtype]

    # ---- the same weights and inputs on both sides
    ldm_state = random_ldm_state(config, seed=0)
    build = lambda: UNet(config, rngs=nnx.Rngs(0), dtype=dtype,
                         attention="per_head" if args.attention == "per_head" else None)
    params_np = R.import_tensors(ldm_state, unet_rules(config), param_shapes(abstract_model(build)))
    ours = model_with_params(build, params_np)
    graphdef, params = nnx.split(ours)
    params = nnx.to_pure_dict(params)
    reference = diffusers_unet(config, ldm_state)
    n_params = sum(int(np.prod(v.shape)) for v in params_np.values())

    rng = np.random.default_rng(0)
    b, s, tokens = args.batch, args.size, 1 + TEXT_TOKENS
    x0 = rng.normal(size=(b, s, s, 4)).astype(np.float32)
    cond = rng.normal(size=(b, s, s, 4)).astype(np.float32)
    noise = rng.normal(size=(b, s, s, 4)).astype(np.float32)
    timesteps = rng.integers(0, 1000, b).astype(np.int32)
    context = rng.normal(size=(b, tokens, config.context_dim)).astype(np.float32)
    x_in = np.concatenate([x0, cond], -1)
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2))))
    alphas_np = alphas_cumprod(DiffusionConfig())
    result = {"config": dataclasses.asdict(config), "unet_params": n_params, "batch": b, "latent": s,
              "tokens": tokens, "jax": jax.__version__, "torch": torch.__version__, "xla_flags": args.xla_flags,
              "attention": args.attention, "jax_dtype": args.jax_dtype, "threads": args.threads,
              "torch_threads": torch.get_num_threads(), "omp_wait_policy": args.omp_wait_policy,
              "torch_mkldnn": torch.backends.mkldnn.is_available(), "parts": {}}

    def compile_timed(fn, *example, donate=()):
        started = time.perf_counter()
        compiled = jax.jit(fn, donate_argnums=donate).lower(*example).compile()
        return compiled, time.perf_counter() - started

    # ---- forward
    if "fwd" in parts:
        fwd, compile_s = compile_timed(lambda p, x, t, c: nnx.merge(graphdef, p)(x, t, c), params, x_in, timesteps,
                                       context)
        ours_out = np.asarray(fwd(params, x_in, timesteps, context))
        args_t = (nchw(x_in), torch.from_numpy(timesteps).long(), torch.from_numpy(context))
        with torch.no_grad():
            ref_out = reference(*args_t[:2], encoder_hidden_states=args_t[2]).sample.permute(0, 2, 3, 1).numpy()
        error = rel_l2(ours_out, ref_out)

        def jax_fwd():
            fwd(params, x_in, timesteps, context).block_until_ready()

        def torch_fwd():
            with torch.no_grad():
                reference(*args_t[:2], encoder_hidden_states=args_t[2])

        timer = Interleaved()
        before = load()
        timer.run({"jax": jax_fwd, "torch": torch_fwd}, 2)  # warm-up
        timer = Interleaved()
        timer.run({"jax": jax_fwd, "torch": torch_fwd}, args.repeats)
        result["parts"]["fwd"] = summary(timer, compile_s, before, rel_l2=error)
        print_part("UNet forward", result["parts"]["fwd"])

    # ---- train step: noise, UNet, eps-MSE, backward, AdamW (torch defaults, lr 1e-4)
    if "train" in parts:
        tx = optax.adamw(1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
        alphas = jnp.asarray(alphas_np)

        def train_step(p, opt_state, x0, cond, t, noise, ctx):
            def loss_fn(p):
                noisy = add_noise(x0, noise, t, alphas)
                eps = nnx.merge(graphdef, p)(jnp.concatenate([noisy, cond], -1), t, ctx)
                return jnp.mean(jnp.square(eps - noise))

            loss, grads = jax.value_and_grad(loss_fn)(p)
            updates, opt_state = tx.update(grads, opt_state, p)
            return optax.apply_updates(p, updates), opt_state, loss

        holder = {"p": jax.tree.map(jnp.array, params)}
        holder["opt"] = tx.init(holder["p"])
        step, compile_s = compile_timed(train_step, holder["p"], holder["opt"], x0, cond, timesteps, noise, context,
                                        donate=(0, 1))

        def jax_train():
            holder["p"], holder["opt"], loss = step(holder["p"], holder["opt"], x0, cond, timesteps, noise, context)
            loss.block_until_ready()

        # its own copy: DualCrossAttention keeps torch.from_numpy views of the text K/V arrays it is given, so
        # training a model built from `ldm_state` itself would also change `reference` (and `ldm_state`)
        torch_model = diffusers_unet(config, {k: v.copy() for k, v in ldm_state.items()}).train()
        try:
            opt = torch.optim.AdamW(torch_model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                                    weight_decay=0.01, fused=True)
            opt_kind = "fused"
        except (RuntimeError, TypeError):
            opt = torch.optim.AdamW(torch_model.parameters(), lr=1e-4, weight_decay=0.01, foreach=True)
            opt_kind = "foreach"
        a = torch.from_numpy(alphas_np[timesteps]).view(-1, 1, 1, 1)
        tx0, tcond, tnoise, tt = nchw(x0), nchw(cond), nchw(noise), torch.from_numpy(timesteps).long()
        tctx = torch.from_numpy(context)

        def torch_train():
            noisy = a.sqrt() * tx0 + (1 - a).sqrt() * tnoise
            eps = torch_model(torch.cat([noisy, tcond], 1), tt, encoder_hidden_states=tctx).sample
            loss = torch.nn.functional.mse_loss(eps, tnoise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        before = load()
        timer = Interleaved()
        timer.run({"jax": jax_train, "torch": torch_train}, 2)
        timer = Interleaved()
        timer.run({"jax": jax_train, "torch": torch_train}, args.repeats)
        result["parts"]["train"] = summary(timer, compile_s, before, torch_optimizer=opt_kind)
        print_part("train step (fwd + bwd + AdamW)", result["parts"]["train"])
        del torch_model, opt, holder

    # ---- guided DDIM sampling, 50 steps, eta 0
    if "sample" in parts:
        n = args.sample_batch
        plan = ddim.ddim_schedule(alphas_np, args.steps, 0.0)
        x_T = rng.normal(size=(n, s, s, 4)).astype(np.float32)
        obj = rng.normal(size=(n, s, s, 4)).astype(np.float32)
        ctx = rng.normal(size=(n, tokens, config.context_dim)).astype(np.float32)
        null_ctx = np.concatenate([np.zeros((n, 1, config.context_dim), np.float32), ctx[:, 1:]], 1)
        conditions = np.concatenate([obj, np.zeros_like(obj)])
        both_ctx = np.concatenate([ctx, null_ctx])

        def sample_fn(p, x_T, conditions, both_ctx):
            unet = nnx.merge(graphdef, p)

            def eps_fn(x, t):
                out = unet(jnp.concatenate([jnp.tile(x, (2, 1, 1, 1)), conditions], -1), jnp.tile(t, 2), both_ctx)
                c, u = jnp.split(out, 2)
                return u + GUIDANCE * (c - u)

            return ddim.sample(eps_fn, x_T, plan)

        sampler, compile_s = compile_timed(sample_fn, params, x_T, conditions, both_ctx)
        scheduler = reference_scheduler()
        scheduler.set_timesteps(args.steps)
        t_cond, t_ctx = nchw(conditions), torch.from_numpy(both_ctx)

        def torch_sample():
            x = nchw(x_T)
            with torch.no_grad():
                for t in scheduler.timesteps:
                    out = reference(torch.cat([torch.cat([x, x]), t_cond], 1), torch.full((2 * n,), int(t)),
                                    encoder_hidden_states=t_ctx).sample
                    c, u = out.chunk(2)
                    x = scheduler.step(u + GUIDANCE * (c - u), t, x, eta=0.0).prev_sample
            return x.permute(0, 2, 3, 1).numpy()

        error = rel_l2(np.asarray(sampler(params, x_T, conditions, both_ctx)), torch_sample())
        before = load()
        timer = Interleaved()
        timer.run({"jax": lambda: sampler(params, x_T, conditions, both_ctx).block_until_ready(),
                   "torch": torch_sample}, args.sample_repeats)
        result["parts"]["sample"] = summary(timer, compile_s, before, rel_l2=error, pictures=n,
                                            unet_batch=2 * n, steps=args.steps)
        print_part(f"{args.steps}-step guided DDIM, {n} pictures", result["parts"]["sample"])
    return result


def summary(timer: Interleaved, compile_s: float, load_before: str, **extra) -> dict:
    jax_s, torch_s = timer.median("jax"), timer.median("torch")
    return {"jax_median_s": jax_s, "torch_median_s": torch_s, "ratio": jax_s / torch_s, "jax_compile_s": compile_s,
            "jax_times": timer.times["jax"], "torch_times": timer.times["torch"], "load_before": load_before,
            "load_after": load(), **extra}


def print_part(title: str, r: dict) -> None:
    extra = {k: v for k, v in r.items() if k not in ("jax_times", "torch_times", "jax_median_s", "torch_median_s",
                                                     "ratio", "jax_compile_s", "load_before", "load_after")}
    print(f"{title}: JAX {r['jax_median_s']:.3f} s, PyTorch {r['torch_median_s']:.3f} s, ratio {r['ratio']:.2f} "
          f"(compile {r['jax_compile_s']:.1f} s; load {r['load_before']} -> {r['load_after']}; {extra})", flush=True)


def run_variants(args) -> list[dict]:
    """Each JAX speed-up attempt in its own process (XLA flags are read once), interleaved with PyTorch again."""
    results = []
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    for index, name in enumerate(names):
        extra = VARIANTS[name]
        out = pathlib.Path(f"/tmp/cpu_vs_torch_{os.getpid()}_{index}.json")
        out.unlink(missing_ok=True)
        command = [sys.executable, __file__, "--parts", args.parts, "--batch", str(args.batch), "--repeats",
                   str(args.repeats), "--sample-batch", str(args.sample_batch), "--sample-repeats",
                   str(args.sample_repeats), "--steps", str(args.steps), "--json", str(out), *extra]
        print(f"== {name}: {' '.join(extra)}", flush=True)
        proc = subprocess.run(command, check=False)
        if out.exists():
            results.append({"variant": name, **json.loads(out.read_text())})
        else:
            results.append({"variant": name, "error": f"exit {proc.returncode}"})
    return results


def markdown(results: list[dict]) -> str:
    """One table row per (variant, part): medians, ratio, compile time, load, agreement."""
    lines = ["| variant | part | JAX median s | PyTorch median s | JAX/PyTorch | JAX compile s | load before -> "
             "after | rel. L2 vs PyTorch |", "|---|---|---|---|---|---|---|---|"]
    titles = {"fwd": "UNet forward", "train": "train step", "sample": "guided DDIM"}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['error']} |  |  |  |  |  |  |")
            continue
        for part, v in r["parts"].items():
            error = f"{v['rel_l2']:.1e}" if "rel_l2" in v else "-"
            lines.append(f"| {r['variant']} | {titles[part]} | {v['jax_median_s']:.3f} | {v['torch_median_s']:.3f} | "
                         f"{v['ratio']:.2f} | {v['jax_compile_s']:.0f} | {v['load_before'].split()[0]} -> "
                         f"{v['load_after'].split()[0]} | {error} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    meta = {"machine": f"{platform.node()}, {os.cpu_count()} CPU cores", "date": time.strftime("%Y-%m-%d %H:%M"),
            "python": platform.python_version()}
    if args.variants:
        results = {"meta": meta, "variants": run_variants(args)}
        print(markdown(results["variants"]))
    else:
        results = {"meta": meta, **benchmark(args)}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
