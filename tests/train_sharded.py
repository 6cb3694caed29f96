"""Helper for tests/test_train.py: the same train steps on 1 device and on 8 simulated CPU devices.

Run as a script (it sets XLA_FLAGS for 8 host devices before importing jax). For each mesh in
`--meshes` (data x fsdp; "1x1" uses only the first device) it runs `--steps` steps of the micro model on
the same raw-form batches (from customnet_jax.data's pipeline) and prints one JSON line: the per-step
losses, the parameters' largest difference from the single-device run, and how the parameters and the Adam
moments were sharded.
"""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from train_micro_config import get_config  # noqa: E402

from customnet_jax.data import make_iterator  # noqa: E402
from customnet_jax.train import loop  # noqa: E402
from customnet_jax.train import sharding as shd  # noqa: E402


def run(config, devices, batches, steps):
    trainer = loop.setup(config, devices=devices, log=lambda message: None)
    compiled = trainer.compile(batches[0])
    losses = []
    state = trainer.state
    for batch in batches[:steps]:
        state, metrics = compiled(state, trainer.frozen, shd.global_batch(batch, trainer.mesh))
        losses.append(float(metrics["loss"]))
    params = jax.tree.map(np.asarray, jax.device_get(state["params"]))
    specs = jax.tree.leaves(jax.tree.map(lambda x: str(x.sharding.spec), state["params"]))
    mu = state["opt_state"][1][0].mu  # clip_by_global_norm, (ScaleByAdam, ...), ...
    mu_specs = jax.tree.leaves(jax.tree.map(lambda x: str(x.sharding.spec), mu))
    frozen_specs = jax.tree.leaves(jax.tree.map(lambda x: str(x.sharding.spec), trainer.frozen["params"]))
    batch_spec = str(shd.global_batch(batches[0], trainer.mesh)["target"].sharding.spec)
    return losses, params, {"params_split_over_fsdp": sum("fsdp" in s for s in specs),
                            "frozen_split_over_fsdp": sum("fsdp" in s for s in frozen_specs),
                            "moments_follow_params": mu_specs == specs, "batch_spec": batch_spec}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--meshes", default="1x1,2x4,8x1")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--accum", type=int, default=1, help="grad_accum_steps for meshes after the first")
    args = parser.parse_args()
    # adam_eps 1e-3: Adam's g / (sqrt(v) + eps) is then well conditioned for the tiny gradients of the
    # zero-initialised output layers, whose update would otherwise amplify float32 summation-order noise
    base = get_config(ema_decay=0.9, grad_clip_norm=1.0, warmup_steps=2, adam_eps=1e-3)
    # raw-form batches from the data pipeline (customnet_jax.data): its synthetic world, built in a temp folder
    with tempfile.TemporaryDirectory() as data_dir:
        base = dataclasses.replace(base, data=dataclasses.replace(base.data, path=data_dir, synthetic_examples=32))
        iterator = make_iterator(base, process_index=0, process_count=1, batch_size_per_host=base.train.batch_size)
        batches = [next(iterator) for _ in range(args.steps)]
    reference = None
    for index, name in enumerate(args.meshes.split(",")):
        data, fsdp = map(int, name.split("x"))
        config = dataclasses.replace(base, mesh=dataclasses.replace(base.mesh, data=data, fsdp=fsdp))
        if index:
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, grad_accum_steps=args.accum))
        devices = jax.devices()[:data * fsdp]
        losses, params, specs = run(config, devices, batches, args.steps)
        out = {"mesh": name, "devices": len(devices), "losses": losses,
               "accum": config.train.grad_accum_steps, **specs}
        flat = {"/".join(map(str, k)): v for k, v in _flatten(params).items()}
        if reference is None:
            reference = flat
            initial = _flatten_init(config)
            moved = {k: float(np.max(np.abs(flat[k] - v0))) for k, v0 in initial.items()}
            out["params_moved"] = sum(d > 0 for d in moved.values())
            out["params_total"] = len(moved)
        else:
            diff = {k: flat[k] - reference[k] for k in flat}
            update = {k: reference[k] - initial[k] for k in flat}
            worst = max(flat, key=lambda k: np.max(np.abs(diff[k])))
            out["max_abs_diff"] = float(np.max(np.abs(diff[worst])))
            out["worst_leaf"] = worst
            out["worst_leaf_update_max"] = float(np.max(np.abs(update[worst])))
            # the difference measured against the size of what the 3 steps changed, over all parameters
            out["rel_l2_of_update"] = float(np.sqrt(sum(np.sum(d.astype(np.float64) ** 2) for d in diff.values()))
                                            / np.sqrt(sum(np.sum(u.astype(np.float64) ** 2) for u in update.values())))
            out["max_rel_l2"] = max(float(np.linalg.norm(diff[k]) / (np.linalg.norm(reference[k]) + 1e-30))
                                    for k in flat)
        print(json.dumps(out), flush=True)


def _flatten(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _flatten_init(config):
    from customnet_jax.train import state as st

    _, shapes = st.graphdef_and_shapes(config)
    flat, _ = st.initial_params(config, shapes)
    return {"/".join(map(str, k)): v for k, v in flat.items() if st.is_trainable(k)}


if __name__ == "__main__":
    main()
