"""Steps for the same picture: each sampler at a few step counts against DDIM with 1000 steps from the same x_T.

    python benchmarks/sampler_steps.py --scenes 4 --json benchmarks/results/sampler_steps.json
    python benchmarks/sampler_steps.py --model random --scenes 4     # the tests' small random model

For held-out scenes of the demo's synthetic world (object, box, caption, seed = scene index; one view, the
requested one), every (sampler, steps) pipeline call is compared with DDIM-1000 from the same x_T: the relative
L2 distance of the final latent and the RMS difference of the decoded picture (in [0, 1] units), and its wall time
per picture (the first call of each (sampler, steps) compiles and is not timed). With --measures the demo's
location / background / identity scores (customnet_jax/demo/measure.py) are added per row (slow: 9 views per
scene). Prints a markdown table; the README / benchmarks/RESULTS.md "Samplers" section holds the numbers.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from customnet_jax.diffusion import samplers  # noqa: E402
from customnet_jax.sampling.cli import DEMO_FOLDER  # noqa: E402
from customnet_jax.sampling.pipeline import Pipeline, guided_model_fn  # noqa: E402


def random_pipeline(attention: str | None) -> Pipeline:
    """tests/test_sampling.py's model: tiny random CustomNet, zero-initialised output layers made random."""
    from configs.tiny import tiny_model
    from customnet_jax.models.build import initialized_model
    from customnet_jax.models.customnet import CustomNet
    from customnet_jax.weights.params import get_params, set_params

    model = initialized_model(lambda: CustomNet(tiny_model(), rngs=nnx.Rngs(0), attention=attention), seed=0)
    params, rng = get_params(model), np.random.default_rng(1)
    for path, value in params.items():
        if path[-1] == "kernel" and not value.any():
            params[path] = (0.05 * rng.standard_normal(value.shape)).astype(np.float32)
    params[("cc_projection", "kernel")][-4:] = rng.standard_normal((4, 32))
    set_params(model, params)
    return Pipeline(model)


class Scene:
    """One held-out scene prepared once: x_T as the pipeline draws it from the seed, and a jitted guided UNet
    (pipeline.guided_model_fn on the pipeline's own conditions and context), so that each (sampler, steps) only
    compiles its small loop: the UNet is reached through a host callback."""

    def __init__(self, pipeline: Pipeline, index: int, guidance: float):
        from customnet_jax.demo.measure import condition_object, held_out_scene, relative_degrees

        scene = held_out_scene(index, pipeline.config.resolution)
        _, obj, location, background, views, tokens = pipeline.host_inputs(
            condition_object(scene), scene.box_pixels, [relative_degrees(scene)], scene.caption, None, None)
        c = pipeline.config
        shape = (1, c.latent_size, c.latent_size, c.latent_channels)
        self.x_T = jax.random.normal(jax.random.fold_in(jax.random.key(index), 0), shape, jnp.float32)
        merge = lambda state: nnx.merge(pipeline.graphdef, state)
        names = ("cond", "uncond")  # guidance_terms ("all",)
        conditions, context = jax.jit(lambda state, *a: pipeline.guidance_inputs(merge(state), *a, 1, ("all",))[:2])(
            pipeline.state, *(jnp.asarray(a) for a in (obj[None], location[None], background[None], views, tokens)))
        scales = jnp.asarray([guidance, 0.0, 0.0], jnp.float32)
        guided = jax.jit(lambda state, x, t: guided_model_fn(merge(state), conditions, context, names, scales)(x, t))
        self.unet = lambda x, t: np.asarray(guided(pipeline.state, x, t))
        self.decode = jax.jit(lambda state, latents: jnp.clip((merge(state).decode(latents) + 1) / 2, 0, 1))
        self.state = pipeline.state
        self.unet(self.x_T, np.full((1,), 999, np.int32))  # compile now, not inside a timed run
        self.decode(self.state, self.x_T)


CURRENT: list[Scene] = []  # the scene whose UNet the compiled loops call (one loop per (sampler, steps))


def model_fn(x: jax.Array, t: jax.Array) -> jax.Array:
    return jax.pure_callback(lambda x, t: CURRENT[0].unet(x, t), jax.ShapeDtypeStruct(x.shape, x.dtype), x, t)


@functools.partial(jax.jit, static_argnames=("name",))
def sample(name: str, x_T: jax.Array, schedule, key: jax.Array) -> jax.Array:
    return samplers.get(name).sample(model_fn, x_T, schedule, key)


def run(pipeline: Pipeline, scenes: list[Scene], sampler: str, steps: int) -> dict:
    """Every scene through one (sampler, steps): latents, pictures in [0, 1], seconds per picture (UNet + sampler
    loop; the first scene compiles the loop and is not timed)."""
    _, schedule, _ = samplers.make_schedule(sampler, pipeline.diffusion, steps)
    latents, pictures, seconds = [], [], []
    for k, scene in enumerate(scenes):
        started = time.perf_counter()
        CURRENT[:] = [scene]
        latent = sample(sampler, scene.x_T, schedule, jax.random.key(k)).block_until_ready()
        if k or len(scenes) == 1:
            seconds.append(time.perf_counter() - started)
        latents.append(np.asarray(latent[0]))
        pictures.append(np.asarray(scene.decode(scene.state, latent)[0], np.float64))
    return {"latents": np.stack(latents), "pictures": np.stack(pictures), "seconds": float(np.median(seconds))}


def distances(out: dict, reference: dict) -> tuple[float, float]:
    """(mean relative L2 of the latents, mean RMS picture difference) over scenes."""
    latent = [np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(out["latents"], reference["latents"],
                                                                          strict=True)]
    picture = [np.sqrt(np.mean((a - b) ** 2)) for a, b in zip(out["pictures"], reference["pictures"], strict=True)]
    return float(np.mean(latent)), float(np.mean(picture))


def demo_measures(pipeline: Pipeline, sampler: str, steps: int, scenes: int, guidance: float) -> dict:
    from customnet_jax.demo.measure import evaluate

    pipeline.sampler, pipeline.sampler_options = sampler, {}
    try:
        scores = evaluate(pipeline, scenes, steps, 0, guidance)
    finally:
        pipeline.sampler = samplers.DEFAULT
    return {"location": scores.object_box_iou, "background": scores.background_error, "identity": scores.identity}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("demo", "random"), default="demo")
    p.add_argument("--scenes", type=int, default=4)
    p.add_argument("--samplers", default=",".join(samplers.names()))
    p.add_argument("--steps", default="5,10,15,20,25,50")
    p.add_argument("--reference-steps", type=int, default=1000)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--measures", action="store_true", help="also the demo's measures (slow)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    attention = "per_head" if jax.default_backend() == "cpu" else None
    pipeline = random_pipeline(attention) if args.model == "random" else Pipeline.from_folder(DEMO_FOLDER,
                                                                                               attention=attention)
    scenes = [Scene(pipeline, i, args.guidance) for i in range(args.scenes)]
    started = time.perf_counter()
    reference = run(pipeline, scenes, "ddim", args.reference_steps)
    print(f"reference: ddim {args.reference_steps} steps, {reference['seconds']:.2f} s per picture "
          f"({time.perf_counter() - started:.0f} s in all)", flush=True)
    rows = []
    print("| sampler | steps | UNet evaluations | latent rel. L2 to DDIM-1000 | picture RMS to DDIM-1000 "
          "| s / picture |" + (" location IoU | background error | identity |" if args.measures else ""))
    print("|---|---|---|---|---|---|" + ("---|---|---|" if args.measures else ""))
    for sampler in args.samplers.split(","):
        for steps in (int(s) for s in args.steps.split(",")):
            out = run(pipeline, scenes, sampler, steps)
            latent, picture = distances(out, reference)
            row = dict(sampler=sampler, steps=steps, evaluations=2 * steps, latent=latent, picture=picture,
                       seconds=out["seconds"])
            if args.measures:
                row.update(demo_measures(pipeline, sampler, steps, args.scenes, args.guidance))
            rows.append(row)
            extra = "".join(f" {row.get(k, float('nan')):.3f} |" for k in ("location", "background", "identity")) \
                if args.measures else ""
            print(f"| {sampler} | {steps} | {2 * steps} | {latent:.4f} | {picture:.4f} | {out['seconds']:.2f} |"
                  + extra, flush=True)
    if args.json:
        info = dict(model=args.model, scenes=args.scenes, reference_steps=args.reference_steps,
                    reference_seconds=reference["seconds"], guidance=args.guidance, jax=jax.__version__,
                    machine=platform.platform(), cpus=jax.local_device_count(), backend=jax.default_backend())
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
