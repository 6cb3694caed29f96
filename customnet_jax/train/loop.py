"""The training loop: check the config, build the sharded state, compile the step once, then
    for each step: next batch -> global arrays -> step -> (log) -> (checkpoint) -> (preempted? save and stop)
and at the end export the weights as a model folder (<workdir>/model) for sample.py.

Logs: a progress line (step, loss, lr, grad norm, samples/s, MFU from the compiled step's FLOP count) on
host 0, the same figures as JSON lines in <workdir>/metrics.jsonl, and TensorBoard scalars in <workdir>/tb
when `tensorboardX` is installed (it needs no TensorFlow).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from customnet_jax.config_files import to_dict
from customnet_jax.experiment import Config
from customnet_jax.train import sharding as shd
from customnet_jax.train import state as st
from customnet_jax.train.adapter_export import export_adapter
from customnet_jax.train.checkpoint import Checkpointer, PreemptionFlag, WorkdirLock, abstract_like, config_differences
from customnet_jax.train.nonfinite import NonFiniteGuard
from customnet_jax.train.optimizer import lr_schedule, make_optimizer
from customnet_jax.train.step import abstract_batch, jit_step, make_step_fn

# Dense bf16 peak FLOP/s per device, matched by substring of `device.device_kind`, first match wins.
PEAK_FLOPS = (("TPU v6 lite", 918e12), ("TPU v6e", 918e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),
              ("TPU v5p", 459e12), ("TPU v5", 459e12), ("TPU v4", 275e12), ("TPU v3", 123e12),
              ("B200", 2250e12), ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
              ("L4", 121e12), ("A10", 125e12), ("V100", 125e12))


def peak_flops(device_kind: str) -> float | None:
    """The device's dense bf16 peak (None for CPUs and unknown kinds: MFU is then reported as n/a)."""
    for pattern, flops in PEAK_FLOPS:
        if pattern.lower() in device_kind.lower():
            return flops
    return None


def step_flops(compiled: Any, accum_steps: int) -> float | None:
    """FLOPs per device of one compiled step. XLA's cost analysis counts a while-loop body once, so with a
    scan over micro-batches the (dominant) forward/backward part is multiplied by the accumulation count."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return None if flops is None or flops <= 0 else float(flops) * accum_steps


def default_make_iterator() -> Callable:
    try:
        from customnet_jax.data import make_iterator
    except ImportError as error:
        raise RuntimeError("the data pipeline customnet_jax.data.make_iterator is not available "
                           f"({error}); smoke run: train.py --set data.source=random_raw") from error
    return make_iterator


class MetricsWriter:
    """JSON lines (and TensorBoard scalars if tensorboardX is installed) on host 0."""

    def __init__(self, workdir: pathlib.Path, enabled: bool):
        self.enabled = enabled
        self.file = open(workdir / "metrics.jsonl", "a") if enabled else None  # noqa: SIM115
        self.tb = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(str(workdir / "tb"))
            except ImportError:
                pass

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self.tb.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


@dataclasses.dataclass
class Trainer:
    """Everything the loop needs, built by `setup` (also used by tests to drive single steps)."""

    config: Config
    mesh: Any
    graphdef: nnx.GraphDef
    tx: Any
    state: dict
    frozen: dict
    state_shardings: Any
    frozen_shardings: Any
    init_report: st.InitReport
    sampler: Any = None  # the sampling pipeline of the sample sheets, built on first use

    def step_fn(self) -> Callable:
        return make_step_fn(self.config, self.graphdef, self.tx, self.mesh)

    def compile(self, host_batch: dict) -> Any:
        batch_shardings = {k: shd.batch_sharding(self.mesh) for k in host_batch}
        jitted = jit_step(self.step_fn(), self.state_shardings, self.frozen_shardings, batch_shardings, self.mesh)
        return jitted.lower(abstract_like(self.state), abstract_like(self.frozen),
                            abstract_batch(host_batch, self.mesh, jax.process_count())).compile()

    def full_params(self, use_ema: bool = True) -> dict:
        """Every parameter (trained + frozen) gathered to host numpy, as the model folder's nested dict."""
        trained = self.state["ema"] if (use_ema and "ema" in self.state) else self.state["params"]
        tree = st.join_params(trained, self.frozen["params"])
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.process_allgather(tree, tiled=True)
        return jax.tree.map(np.asarray, jax.device_get(tree))


def null_text_embedding(config: Config, graphdef: nnx.GraphDef, trainable: dict, frozen: dict) -> np.ndarray:
    """The CLIP text embedding of "" (1, 77, D), computed once: the dropped caption (docs/model.md §7)."""
    from customnet_jax.text import load_tokenizer, tokenize

    tokens = tokenize(load_tokenizer(), [""], length=config.model.text_encoder.max_length)
    encode = jax.jit(lambda p, f, t: nnx.merge(graphdef, p, f).encode_text(t))
    return np.asarray(encode(trainable, frozen, tokens))


def setup(config: Config, *, devices: list | None = None, log: Callable[[str], None] = print) -> Trainer:
    """Check the config, make the mesh, initialise (random or `train.init_from`) and place the state."""
    devices = list(jax.devices() if devices is None else devices)
    shd.check_config(config, len(devices), jax.process_count())
    mesh = shd.make_mesh(config.mesh, devices)
    graphdef, shapes = st.graphdef_and_shapes(config)
    folder = config.train.init_from
    for mismatch in st.init_folder_mismatches(config, folder) if folder else []:
        log(f"warning: train.init_from: {mismatch}; set it as the folder has it unless this is meant")
    flat, report = st.initial_params(config, shapes, folder_params=st.read_init_folder(folder) if folder else None,
                                     source=folder or "random")
    trainable, frozen_params = st.split_params(flat, config.train.trainable)
    log(f"parameters: {report.summary()}; trained {_count(trainable):,}, frozen {_count(frozen_params):,}")
    frozen = {"params": frozen_params}
    if not config.model.is_zero123:
        frozen["null_text"] = null_text_embedding(config, graphdef, trainable, frozen_params)
    min_size = config.mesh.fsdp_min_size
    frozen_shardings = shd.tree_shardings(mesh, frozen, min_size)
    frozen = shd.put_global(frozen, frozen_shardings)
    tx = make_optimizer(config.train, trainable)
    param_shardings = shd.tree_shardings(mesh, trainable, min_size)
    params = shd.put_global(trainable, param_shardings)

    def init(p):
        return st.new_state(p, tx, config.train.seed, ema=config.train.ema_decay > 0)

    state_shardings = shd.tree_shardings(mesh, jax.eval_shape(init, params), min_size)
    state = jax.jit(init, out_shardings=state_shardings)(params)
    return Trainer(config, mesh, graphdef, tx, state, frozen, state_shardings, frozen_shardings, report)


def _count(tree: dict) -> int:
    return int(sum(math.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def _format_progress(record: dict, num_steps: int) -> str:
    mfu = "n/a" if record["mfu"] is None else f"{100 * record['mfu']:.1f}%"
    return (f"step {record['step']}/{num_steps} | loss {record['loss']:.5f} | lr {record['lr']:.3g} | "
            f"grad_norm {record['grad_norm']:.4g} | {record['samples_per_s']:.2f} samples/s | MFU {mfu}")


def export_model(trainer: Trainer, path: pathlib.Path, step: int, log: Callable[[str], None]) -> None:
    """Write the trained weights (EMA if kept) + frozen encoders as a model folder (host 0 writes)."""
    from customnet_jax.model_folder import save_model_folder

    use_ema = trainer.config.train.export_ema and "ema" in trainer.state
    params = trainer.full_params(use_ema)
    if jax.process_index() == 0:
        provenance = {"format": "customnet-jax train.py", "step": step, "ema": use_ema,
                      "init": trainer.init_report.summary(), "train": to_dict(trainer.config.train)}
        save_model_folder(path, params, trainer.config.model, trainer.config.diffusion, provenance=provenance,
                          overwrite=True)
        log(f"exported the weights{' (EMA)' if use_ema else ''} to {path}")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("customnet_export")  # every host returns once the folder exists


def train(config: Config, workdir: str | pathlib.Path, *, make_iterator: Callable | None = None, resume: bool = True,
          log: Callable[[str], None] | None = None) -> dict:
    """Train `config` in `workdir` (resuming from its latest complete checkpoint unless `resume=False`).

    Returns {"step", "stopped": "done" | "preempted", "losses": [...]} (losses of the steps run here).
    """
    workdir = pathlib.Path(workdir).absolute()
    main = jax.process_index() == 0
    with WorkdirLock(workdir) if main else contextlib.nullcontext():
        return _train(config, workdir, main, make_iterator, resume, log)


def _train(config: Config, workdir: pathlib.Path, main: bool, make_iterator: Callable | None, resume: bool,
           log: Callable[[str], None] | None) -> dict:
    log = log or (lambda message: print(message, flush=True))
    say = log if main else (lambda message: None)
    train_cfg = config.train
    trainer = setup(config, log=say)
    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(to_dict(config), indent=2))
    say(f"mesh {dict(trainer.mesh.shape)} over {trainer.mesh.size} {jax.devices()[0].device_kind} device(s), "
        f"{jax.process_count()} host(s); batch {train_cfg.batch_size} in {train_cfg.grad_accum_steps} "
        f"micro-batch(es); compute {train_cfg.compute_dtype}{', remat' if train_cfg.remat else ''}")

    per_host = train_cfg.batch_size // jax.process_count()
    iterator = (make_iterator or default_make_iterator())(
        config, process_index=jax.process_index(), process_count=jax.process_count(), batch_size_per_host=per_host)
    checkpoints = Checkpointer(workdir / "checkpoints", every=train_cfg.checkpoint_every,
                               keep=train_cfg.keep_checkpoints, use_async=train_cfg.async_checkpoints)
    step, existing = 0, checkpoints.latest_step()
    if existing is not None and not resume:
        checkpoints.close()
        raise FileExistsError(f"--no-resume, but {checkpoints.directory} holds checkpoints (latest step {existing}); "
                              "use a new --workdir or remove them to start over")
    restored = checkpoints.restore_latest(abstract_like(trainer.state), iterator, say) if existing is not None else None
    latest = None if restored is None else restored[0]
    if restored is not None:
        latest, trainer.state, saved_config = restored
        step = latest
        differences = config_differences(saved_config, to_dict(config))
        say(f"resumed from the checkpoint of step {latest}"
            + (f"; config changed since: {'; '.join(differences)}" if differences else ""))

    metrics_out = MetricsWriter(workdir, main)
    schedule = lr_schedule(train_cfg)
    preemption = PreemptionFlag()
    guard = NonFiniteGuard(train_cfg.nonfinite_policy, train_cfg.nonfinite_patience)
    losses: list[float] = []
    pending: list = []
    stopped, saved_step = "done", latest
    try:
        if step >= train_cfg.num_steps:
            say(f"already trained: step {step} >= train.num_steps {train_cfg.num_steps}")
        else:
            batch = next(iterator)
            started = time.time()
            compiled = trainer.compile(batch)
            flops = step_flops(compiled, train_cfg.grad_accum_steps)
            peak = peak_flops(jax.devices()[0].device_kind)
            say(f"compiled the train step in {time.time() - started:.1f} s"
                + (f"; {flops / 1e9:.3g} GFLOP per device per step" if flops else ""))
            window_start, window_steps = time.time(), 0
            while step < train_cfg.num_steps:
                if batch is None:
                    batch = next(iterator)
                trainer.state, metrics = compiled(trainer.state, trainer.frozen, shd.global_batch(batch, trainer.mesh))
                batch = None
                step += 1
                window_steps += 1
                pending.append(metrics)
                if step % train_cfg.log_every == 0 or step == train_cfg.num_steps:
                    values = jax.device_get(pending)
                    elapsed = max(time.time() - window_start, 1e-9)
                    step_time = elapsed / window_steps
                    record = {"step": step, "loss": float(np.mean([v["loss"] for v in values])),
                              "lr": float(schedule(step - 1)),
                              "grad_norm": float(np.mean([v["grad_norm"] for v in values])),
                              "samples_per_s": train_cfg.batch_size / step_time, "step_time_s": step_time,
                              "mfu": (flops / step_time / peak) if (flops and peak) else None,
                              "time": time.time()}
                    losses.extend(float(v["loss"]) for v in values)
                    say(_format_progress(record, train_cfg.num_steps))
                    metrics_out.write(record)
                    guard.observe(step, values, say)  # raises when the non-finite policy says stop
                    pending, window_start, window_steps = [], time.time(), 0
                if step % train_cfg.checkpoint_every == 0:  # the save reads the state anyway: read the flags too
                    guard.observe(step, jax.device_get(pending), say)
                if guard.safe_to_save() and checkpoints.save(step, trainer.state, iterator, config):
                    saved_step = step
                    say(f"checkpoint of step {step} started")
                if train_cfg.sample_every and step % train_cfg.sample_every == 0:
                    sampling_started = time.time()
                    write_sample_sheet(trainer, workdir, step, say)
                    window_start += time.time() - sampling_started  # not part of the training speed
                if preemption.should_stop():
                    stopped = "preempted"
                    break
        guard.finish(step, jax.device_get(pending), say)  # a bad streak at the end: no save, and stop says so
        if saved_step != step:
            checkpoints.save(step, trainer.state, iterator, config, force=True)
            say(f"checkpoint of step {step} started ({stopped})")
        checkpoints.wait()
        say(f"checkpoints complete; latest {checkpoints.latest_step()}")
    finally:
        checkpoints.close()
        metrics_out.close()
        preemption.restore_handlers()
    if stopped == "done" and train_cfg.export_model:
        if config.lora.enabled:  # the LoRA export step: the adapters alone
            export_adapter(trainer, workdir / "adapter.safetensors", step, say)
        else:
            export_model(trainer, workdir / "model", step, say)
    return {"step": step, "stopped": stopped, "losses": losses}


SAMPLE_VIEWS = ((0.0, 0.0, 0.0), (0.0, 45.0, 0.0), (0.0, 90.0, 0.0), (0.0, 180.0, 0.0))


def write_sample_sheet(trainer: Trainer, workdir: pathlib.Path, step: int, log: Callable[[str], None]) -> None:
    """Samples of the current weights (EMA if kept) by the sampling pipeline: the demo object turned to four
    azimuths, two samples each, <workdir>/samples/step_<step>_sheet.png (+ the single pictures and settings)."""
    from flax import traverse_util

    from customnet_jax.models.build import model_with_params
    from customnet_jax.sampling.demo import default_object
    from customnet_jax.sampling.outputs import write_results
    from customnet_jax.sampling.pipeline import Pipeline

    params = trainer.full_params()  # every host takes part in the gather; host 0 samples
    if jax.process_index() != 0:
        return
    config = trainer.config
    model = model_with_params(st.model_builder(config.model, config.train.compute_dtype, lora=config.lora),
                              traverse_util.flatten_dict(params))
    if trainer.sampler is None:
        trainer.sampler = Pipeline(model, config.diffusion)
    else:  # same structure: swap the weights, keep the compiled sampling program
        trainer.sampler.state = nnx.split(model)[1]
    result = trainer.sampler(default_object(config.model.resolution), views=SAMPLE_VIEWS,
                             prompt=config.train.sample_prompt, num_samples=2, seed=0,
                             steps=config.train.sample_steps, progress=False)
    written = write_results(result, workdir / "samples", name=f"step_{step:08d}")
    log(f"sample sheet {next(p for p in written if p.name.endswith('_sheet.png'))}")
