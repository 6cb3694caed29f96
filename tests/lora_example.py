"""The LoRA example measured (tests/test_lora_example.py; `python tests/lora_example.py` writes docs/lora_example.png).

configs/lora.py's adapters trained on its synthetic world ("ringed": every background in a ring pattern the demo
model never saw) from the built-in demo model, with the train loop's own setup / compiled step, on
precomputed-form batches (the frozen encoders run once over the scenes, as data.precompute does, so the step
compiles the UNet alone). The held-out measure is the training objective (object box weighted as in training) on
scenes of another world seed, at fixed timesteps and noise: the base model's and the adapted model's, same
everything else.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import lora as lora_config  # noqa: E402
from customnet_jax.data import transforms  # noqa: E402
from customnet_jax.diffusion.schedule import alphas_cumprod  # noqa: E402
from customnet_jax.model_folder import load_model  # noqa: E402
from customnet_jax.train import loop  # noqa: E402
from customnet_jax.train.step import denoising_loss  # noqa: E402
from customnet_jax.world.synthetic import named_world, scene  # noqa: E402

TIMESTEPS = (150, 400, 650, 900)


def example_config(steps: int, batch_size: int = 8, learning_rate: float | None = None):
    config = lora_config.get_config()
    train = dataclasses.replace(config.train, num_steps=steps, batch_size=batch_size, warmup_steps=min(10, steps // 4),
                                cooldown_steps=steps // 3, learning_rate=learning_rate or config.train.learning_rate)
    return dataclasses.replace(config, train=train)


def features(model, config, seeds: range, world_seed: int) -> dict:
    """Precomputed-form examples (VAE posteriors, CLIP embeddings, T, box) of the example world's scenes."""
    world = named_world(config.data.synthetic_world, image_size=config.model.resolution, seed=world_seed)
    decode = transforms.DecodeRaw(config.model.resolution)
    raw = [decode.map({"target": s.target, "object": s.object, "view": s.view, "box": s.box, "caption": s.caption})
           for s in (scene(i, world) for i in seeds)]
    batch = {k: jnp.asarray(np.stack([e[k] for e in raw])) for k in ("target", "object", "location", "tokens")}
    graphdef, state = nnx.split(model)

    @jax.jit
    def encode(state, batch):
        m = nnx.merge(graphdef, state)
        mean, logvar = m.encode(batch["target"])
        return {"target_mean": mean, "target_logvar": logvar, "location_latent": m.encode(batch["location"])[0],
                "image_embedding": m.image_embedding(batch["object"]), "text_embedding": m.encode_text(batch["tokens"])}

    out = {k: np.asarray(v) for k, v in encode(state, batch).items()}
    out.update(view=np.stack([e["view"] for e in raw]), box=np.stack([e["box"] for e in raw]))
    flags = np.zeros(len(raw), bool)
    return dict(out, drop_image=flags, drop_object=flags.copy(), drop_text=flags.copy())


def held_out_loss(trainer, held_out: dict, seed: int = 0) -> float:
    """The objective on the held-out scenes at fixed timesteps and noise (posterior means, no dropout)."""
    config = trainer.config
    model = nnx.merge(trainer.graphdef, trainer.state["params"], trainer.frozen["params"])
    scale = config.model.latent_scale
    feats = {"z0": scale * jnp.asarray(held_out["target_mean"]), "conditions": jnp.asarray(held_out["location_latent"]),
             "image_embedding": jnp.asarray(held_out["image_embedding"]), "view": jnp.asarray(held_out["view"]),
             "box": jnp.asarray(held_out["box"]), "text": jnp.asarray(held_out["text_embedding"])}
    alphas = jnp.asarray(alphas_cumprod(config.diffusion))
    n = feats["z0"].shape[0]
    noise = jax.random.normal(jax.random.PRNGKey(seed), (len(TIMESTEPS), *feats["z0"].shape))
    loss = jax.jit(lambda f, t, e: denoising_loss(model, f, t, e, alphas, config.diffusion.prediction_type,
                                                  config.train.object_loss_weight))
    return float(np.mean([loss(feats, jnp.full(n, t), e) for t, e in zip(TIMESTEPS, noise, strict=True)]))


def batches(train: dict, config, seed: int = 0):
    """Random batches with the condition dropout flags drawn as the data pipeline draws them (the dropped caption
    keeps the unconditional branch of classifier-free guidance trained)."""
    rng = np.random.default_rng(seed)
    count, size, settings = len(train["view"]), config.train.batch_size, config.train
    low, high = settings.object_latent_dropout
    while True:
        rows = rng.choice(count, size, replace=False)
        r = rng.uniform(size=size)
        flags = {"drop_image": r < settings.image_dropout, "drop_object": (low <= r) & (r < high),
                 "drop_text": rng.uniform(size=size) < settings.text_dropout}
        yield dict({k: v[rows] for k, v in train.items()}, **flags)


def run(steps: int = 120, train_scenes: int = 96, held_out_scenes: int = 32, log=print,
        learning_rate: float | None = None) -> dict:
    """Train the example's adapters for `steps` -> losses, held-out objective before / after, the trainer."""
    config = example_config(steps, learning_rate=learning_rate)
    base_model, _ = load_model(lora_config.DEMO_MODEL)
    train = features(base_model, config, range(train_scenes), world_seed=1)
    held_out = features(base_model, config, range(held_out_scenes), world_seed=2)
    trainer = loop.setup(config, log=log)
    start = traverse_util.flatten_dict(trainer.full_params(use_ema=False))
    initial = jax.tree.map(np.asarray, jax.device_get(trainer.state["params"]))  # the state is donated below
    before = held_out_loss(trainer, held_out)
    source = batches(train, config)
    first = next(source)
    started = time.time()
    compiled = trainer.compile(first)
    log(f"compiled in {time.time() - started:.0f} s")
    losses, batch = [], first
    for _ in range(steps):
        trainer.state, metrics = compiled(trainer.state, trainer.frozen, loop.shd.global_batch(batch, trainer.mesh))
        losses.append(float(metrics["loss"]))
        batch = next(source)
    log(f"{steps} steps in {time.time() - started:.0f} s")
    after = held_out_loss(trainer, held_out)
    end = traverse_util.flatten_dict(trainer.full_params(use_ema=False))
    changed = sorted({"/".join(map(str, p)) for p in start if not np.array_equal(start[p], end[p])})
    return {"losses": losses, "before": before, "after": after, "changed": changed, "trainer": trainer,
            "config": config, "initial": initial, "held_out": held_out}


def with_params(trainer, params: dict):
    """The trainer's model with other trained parameters (e.g. the untrained adapters of step 0)."""
    return types.SimpleNamespace(config=trainer.config, graphdef=trainer.graphdef, frozen=trainer.frozen,
                                 state={"params": params})


def smoothed(values: list[float], window: int) -> tuple[float, float]:
    return float(np.mean(values[:window])), float(np.mean(values[-window:]))


def pictures(adapter: pathlib.Path, out: pathlib.Path, scenes: int = 4, steps: int = 25) -> None:
    """Held-out scenes: the object given, the truth, the base model's picture, the adapted model's."""
    from PIL import Image

    from customnet_jax.adapters import apply_adapters
    from customnet_jax.conditioning.images import to_float
    from customnet_jax.demo.measure import comparison_figure, relative_degrees
    from customnet_jax.sampling.pipeline import Pipeline

    world = named_world(lora_config.get_config().data.synthetic_world, seed=2)
    chosen = [scene(i, world) for i in range(scenes)]
    rows = [[s.object, s.target] for s in chosen]
    for specs in ([], [str(adapter)]):
        pipeline = Pipeline.from_folder(lora_config.DEMO_MODEL, attention="per_head",
                                        adapt=lambda model, specs=specs: apply_adapters(model, specs))
        for row, s in zip(rows, chosen, strict=True):
            result = pipeline(to_float(s.object), bbox=[float(v) for v in s.box], views=[relative_degrees(s)],
                              prompt=s.caption, steps=steps, progress=False)
            row.append(result.images[0, 0])
    grid = comparison_figure([row + [np.full_like(row[0], 255)] for row in rows])
    Image.fromarray(grid[:, : grid.shape[1] * 4 // 5 + 2]).save(out)


if __name__ == "__main__":
    from customnet_jax.train.adapter_export import export_adapter

    result = run(steps=int(sys.argv[1]) if len(sys.argv) > 1 else 300,
                 learning_rate=float(sys.argv[3]) if len(sys.argv) > 3 else None)
    first, last = smoothed(result["losses"], 20)
    print(types.SimpleNamespace(loss_first=first, loss_last=last, held_out_before=result["before"],
                                held_out_after=result["after"], changed=len(result["changed"])), flush=True)
    file = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/lora_example/adapter.safetensors")
    export_adapter(result["trainer"], file, len(result["losses"]), print)
    pictures(file, ROOT / "docs" / "lora_example.png")
