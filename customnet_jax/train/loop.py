"""The training loop: check the config, build the sharded state, compile the step once, then
    for each step: next batch -> global arrays -> step -> (log) -> (checkpoint) -> (hooks) -> (preempted? stop)
and at the end export the weights as a model folder (<workdir>/model) for sample.py. Periodic work beyond
logging and checkpoints (sample sheets, evaluations) is passed in by the caller as hooks (hooks.py).

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
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx, traverse_util
from jax.experimental import multihost_utils

from customnet_jax import model_folder
from customnet_jax.config_files import to_dict
from customnet_jax.experiment import Config
from customnet_jax.models.build import model_with_params
from customnet_jax.text import load_tokenizer, tokenize
from customnet_jax.train import sharding as shd
from customnet_jax.train import state as st
from customnet_jax.train.adapter_export import export_adapter
from customnet_jax.train.checkpoint import Checkpointer, PreemptionFlag, WorkdirLock, abstract_like, config_differences
from customnet_jax.train.hooks import Hook, StepInfo, due
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
        from customnet_jax.data import make_iterator  # tensorflow_datasets: heavy, only for the data pipeline
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
                from tensorboardX import SummaryWriter  # optional dependency: TensorBoard scalars when installed

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
            return multihost_utils.process_allgather(tree, tiled=True)
        return jax.tree.map(np.asarray, jax.device_get(tree))

    def current_model(self) -> nnx.Module | None:
        """The model holding the current weights (EMA if kept) on process 0, None on the others (every process
        must call it: the weights are gathered from all of them)."""
        params = self.full_params()
        if jax.process_index() != 0:
            return None
        builder = st.model_builder(self.config.model, self.config.train.compute_dtype, lora=self.config.lora)
        return model_with_params(builder, traverse_util.flatten_dict(params))


def null_text_embedding(config: Config, graphdef: nnx.GraphDef, trainable: dict, frozen: dict) -> np.ndarray:
    """The CLIP text embedding of "" (1, 77, D), computed once: the dropped caption (docs/model.md §7)."""
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
    use_ema = trainer.config.train.export_ema and "ema" in trainer.state
    params = trainer.full_params(use_ema)
    if jax.process_index() == 0:
        provenance = {"format": "customnet-jax train.py", "step": step, "ema": use_ema,
                      "init": trainer.init_report.summary(), "train": to_dict(trainer.config.train)}
        model_folder.save_model_folder(path, params, trainer.config.model, trainer.config.diffusion,
                                       provenance=provenance, overwrite=True)
        log(f"exported the weights{' (EMA)' if use_ema else ''} to {path}")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("customnet_export")  # every host returns once the folder exists


def train(config: Config, workdir: str | pathlib.Path, *, make_iterator: Callable | None = None, resume: bool = True,
          log: Callable[[str], None] | None = None, hooks: Sequence[Hook] = ()) -> dict:
    """Train `config` in `workdir` (resuming from its latest complete checkpoint unless `resume=False`), calling
    each of `hooks` (hooks.py: sample sheets, evaluations...) after every step that its `every` divides.

    Returns {"step", "stopped": "done" | "preempted", "losses": [...]} (losses of the steps run here).
    """
    workdir = pathlib.Path(workdir).absolute()
    main = jax.process_index() == 0
    log = log or (lambda message: print(message, flush=True))
    say = log if main else (lambda message: None)
    with WorkdirLock(workdir) if main else contextlib.nullcontext():
        trainer = setup(config, log=say)
        if main:
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "config.json").write_text(json.dumps(to_dict(config), indent=2))
        train_cfg = config.train
        say(f"mesh {dict(trainer.mesh.shape)} over {trainer.mesh.size} {jax.devices()[0].device_kind} device(s), "
            f"{jax.process_count()} host(s); batch {train_cfg.batch_size} in {train_cfg.grad_accum_steps} "
            f"micro-batch(es); compute {train_cfg.compute_dtype}{', remat' if train_cfg.remat else ''}")
        iterator = (make_iterator or default_make_iterator())(
            config, process_index=jax.process_index(), process_count=jax.process_count(),
            batch_size_per_host=train_cfg.batch_size // jax.process_count())
        step, stopped, losses = Run(trainer, iterator, workdir, main, say, tuple(hooks)).run(resume)
        if stopped == "done" and train_cfg.export_model and config.lora.enabled:  # LoRA: the adapters alone
            export_adapter(trainer, workdir / "adapter.safetensors", step, say)
        elif stopped == "done" and train_cfg.export_model:
            export_model(trainer, workdir / "model", step, say)
    return {"step": step, "stopped": stopped, "losses": losses}


class Progress:
    """The progress line and metrics record every `log_every` steps: mean loss and grad norm of the window,
    samples/s and MFU from the window's wall time (minus the time hooks took)."""

    def __init__(self, config: Config, flops: float | None, writer: MetricsWriter, guard: NonFiniteGuard,
                 say: Callable[[str], None]):
        self.train_cfg, self.flops, self.writer, self.guard, self.say = config.train, flops, writer, guard, say
        self.peak = peak_flops(jax.devices()[0].device_kind)
        self.schedule = lr_schedule(config.train)
        self.losses: list[float] = []
        self.pending: list = []
        self.window_start, self.window_steps = time.time(), 0

    def add(self, step: int, metrics: dict) -> None:
        self.pending.append(metrics)
        self.window_steps += 1
        if step % self.train_cfg.log_every and step != self.train_cfg.num_steps:
            return
        values = jax.device_get(self.pending)
        step_time = max(time.time() - self.window_start, 1e-9) / self.window_steps
        record = {"step": step, "loss": float(np.mean([v["loss"] for v in values])),
                  "lr": float(self.schedule(step - 1)), "grad_norm": float(np.mean([v["grad_norm"] for v in values])),
                  "samples_per_s": self.train_cfg.batch_size / step_time, "step_time_s": step_time,
                  "mfu": (self.flops / step_time / self.peak) if (self.flops and self.peak) else None,
                  "time": time.time()}
        self.losses.extend(float(v["loss"]) for v in values)
        self.say(_format_progress(record, self.train_cfg.num_steps))
        self.writer.write(record)
        self.guard.observe(step, values, self.say)  # raises when the non-finite policy says stop
        self.pending, self.window_start, self.window_steps = [], time.time(), 0

    def exclude(self, seconds: float) -> None:
        """Time spent outside training (hooks): not part of the training speed."""
        self.window_start += seconds


@dataclasses.dataclass
class Run:
    """One call of `train` after setup: restore, compile, step until done or preempted, final checkpoint."""

    trainer: Trainer
    iterator: Any
    workdir: pathlib.Path
    main: bool
    say: Callable[[str], None]
    hooks: tuple[Hook, ...]

    def run(self, resume: bool) -> tuple[int, str, list[float]]:
        train_cfg = self.trainer.config.train
        checkpoints = Checkpointer(self.workdir / "checkpoints", every=train_cfg.checkpoint_every,
                                   keep=train_cfg.keep_checkpoints, use_async=train_cfg.async_checkpoints)
        writer, preemption = None, PreemptionFlag()
        guard = NonFiniteGuard(train_cfg.nonfinite_policy, train_cfg.nonfinite_patience)
        try:
            latest = self.restore(checkpoints, resume)
            writer = MetricsWriter(self.workdir, self.main)
            step, stopped, saved_step, losses = latest or 0, "done", latest, []
            if step >= train_cfg.num_steps:
                self.say(f"already trained: step {step} >= train.num_steps {train_cfg.num_steps}")
                guard.finish(step, [], self.say)
            else:
                step, stopped, saved_step, losses = self.steps(step, saved_step, checkpoints, writer, guard,
                                                               preemption)
            if saved_step != step:
                checkpoints.save(step, self.trainer.state, self.iterator, self.trainer.config, force=True)
                self.say(f"checkpoint of step {step} started ({stopped})")
            checkpoints.wait()
            self.say(f"checkpoints complete; latest {checkpoints.latest_step()}")
        finally:
            checkpoints.close()
            if writer is not None:
                writer.close()
            preemption.restore_handlers()
        return step, stopped, losses

    def restore(self, checkpoints: Checkpointer, resume: bool) -> int | None:
        """The step of the newest checkpoint that restores (its state and data position restored; damaged newer
        ones are skipped, checkpoint.py), None if there is none."""
        existing = checkpoints.latest_step()
        if existing is None:
            return None
        if not resume:
            raise FileExistsError(f"--no-resume, but {checkpoints.directory} holds checkpoints (latest step "
                                  f"{existing}); use a new --workdir or remove them to start over")
        config = self.trainer.config
        latest, self.trainer.state, saved_config = checkpoints.restore_latest(abstract_like(self.trainer.state),
                                                                              self.iterator, self.say)
        differences = config_differences(saved_config, to_dict(config))
        self.say(f"resumed from the checkpoint of step {latest}"
                 + (f"; config changed since: {'; '.join(differences)}" if differences else ""))
        return latest

    def steps(self, step: int, saved_step: int | None, checkpoints: Checkpointer, writer: MetricsWriter,
              guard: NonFiniteGuard, preemption: PreemptionFlag) -> tuple[int, str, int | None, list[float]]:
        """Compile, then step until train.num_steps or a preemption -> (step, stopped, last saved step, losses)."""
        trainer, config = self.trainer, self.trainer.config
        batch = next(self.iterator)
        started = time.time()
        compiled = trainer.compile(batch)
        flops = step_flops(compiled, config.train.grad_accum_steps)
        self.say(f"compiled the train step in {time.time() - started:.1f} s"
                 + (f"; {flops / 1e9:.3g} GFLOP per device per step" if flops else ""))
        progress, stopped = Progress(config, flops, writer, guard, self.say), "done"
        while step < config.train.num_steps:
            batch = next(self.iterator) if batch is None else batch
            trainer.state, metrics = compiled(trainer.state, trainer.frozen, shd.global_batch(batch, trainer.mesh))
            batch, step = None, step + 1
            progress.add(step, metrics)
            if step % config.train.checkpoint_every == 0:  # the save reads the state anyway: read the flags too
                guard.observe(step, jax.device_get(progress.pending), self.say)
            if guard.safe_to_save() and checkpoints.save(step, trainer.state, self.iterator, config):
                saved_step = step
                self.say(f"checkpoint of step {step} started")
            if hooks := due(self.hooks, step):
                hooks_started = time.time()
                info = StepInfo(step, self.workdir, config, self.main, self.say, trainer)
                for hook in hooks:
                    hook(info)
                progress.exclude(time.time() - hooks_started)
            if preemption.should_stop():
                stopped = "preempted"
                break
        guard.finish(step, jax.device_get(progress.pending), self.say)  # a bad streak at the end: no save
        return step, stopped, saved_step, progress.losses
