"""Training (issue 6): sharded steps equal the single-device step, exact resume after SIGKILL (between
checkpoints and during an async save), two jax.distributed processes agree with one, a micro model overfits
(then stops cleanly on SIGTERM), impossible configs are refused, init_from widens conv_in, AdamW with the 10x
text K/V group matches torch, the condition dropout, bf16 compute keeps float32 master weights.

The heavy checks run train.py (or a helper under tests/) in subprocesses with fast-compiling XLA flags and
the persistent compilation cache: the 8-device script runs in the background while the train.py runs go on
in the foreground (2 cores). Model: tests/train_micro_config.py (16 px, 8x8x4 latents, 254k trained params).
TRAIN_TEST_JAX_CACHE=<dir> points the subprocesses at another compilation cache (an empty one: a cold run).
"""

import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from train_micro_config import get_config, micro_model  # noqa: E402

from customnet_jax.conditioning.features import frozen_features  # noqa: E402
from customnet_jax.train import optimizer as opt  # noqa: E402
from customnet_jax.train import sharding as shd  # noqa: E402
from customnet_jax.train import state as st  # noqa: E402
from customnet_jax.train.step import box_cells, denoising_loss  # noqa: E402

# Compile time dominates these tests (XLA CPU codegen of ~2k kernels per step): -O0 codegen halves it.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
RANDOM = ["--set", "data.source=random_precomputed"]  # random in-memory examples (customnet_jax.train.synthetic)
COMMON = ["--config", "tests/train_micro_config.py", *RANDOM, "--set", "data.random_examples=16"]


def _env() -> dict:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_XLA, PYTHONUNBUFFERED="1",
               JAX_COMPILATION_CACHE_DIR=os.environ.get("TRAIN_TEST_JAX_CACHE", str(ROOT / ".cache" / "jax")),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


class Job:
    """A subprocess whose output lines are collected by a thread (so that we can wait for a marker)."""

    started: list["Job"] = []

    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=_env(), text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        Job.started.append(self)
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, marker: str, timeout: float = 300) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(marker in line for line in self.lines):
                return self.output
            if self.proc.poll() is not None:
                self.thread.join(5)
                if any(marker in line for line in self.lines):
                    return self.output
                raise AssertionError(f"exited ({self.proc.returncode}) before {marker!r}:\n{self.output[-4000:]}")
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"no {marker!r} within {timeout} s:\n{self.output[-4000:]}")

    def finish(self, timeout: float = 400) -> str:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.thread.join(10)
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}:\n{self.output[-4000:]}"
        return self.output

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        assert self.proc.returncode == -signal.SIGKILL


def _metrics(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _folder_params(path: pathlib.Path) -> dict:
    return st.read_init_folder(path)


def _checkpoint_entries(workdir: pathlib.Path) -> list[str]:
    return sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.is_dir())


@pytest.fixture(scope="module", autouse=True)
def _no_leftover_jobs():
    """A failed test must not leave a paused training process behind."""
    yield
    for job in Job.started:
        if job.proc.poll() is None:
            job.proc.kill()
            job.proc.wait(30)


@pytest.fixture(scope="module")
def sharded_job():
    """tests/train_sharded.py (8 simulated devices), started early: it runs beside the train.py tests."""
    job = Job(["tests/train_sharded.py"])
    yield job
    if job.proc.poll() is None:
        job.proc.kill()


@pytest.fixture(scope="module")
def reference(sharded_job, tmp_path_factory):
    """An uninterrupted 8-step run: checkpoints every 3 steps, a loss line per step, the exported model."""
    del sharded_job  # only started here
    workdir = tmp_path_factory.mktemp("reference")
    output = Job(["train.py", *COMMON, "--workdir", workdir]).finish()
    return {"workdir": workdir, "output": output, "losses": {m["step"]: m["loss"] for m in _metrics(workdir)}}


# ------------------------------------------------------------------------------------------- cheap checks


def test_refuses_configs_that_cannot_run(tmp_path, capsys):
    config = get_config()  # batch 8

    def problems(devices, data=-1, fsdp=1, **train):
        import dataclasses

        c = dataclasses.replace(config, mesh=dataclasses.replace(config.mesh, data=data, fsdp=fsdp),
                                train=dataclasses.replace(config.train, **train))
        with pytest.raises(shd.ConfigError) as error:
            shd.check_config(c, devices)
        return str(error.value)

    assert "not divisible by the data-parallel size 8" in problems(8, batch_size=12)
    assert "needs 16 devices but only 8 exist" in problems(8, data=4, fsdp=4)
    assert "grad_accum_steps=3 does not divide the per-device batch 4" in problems(2, grad_accum_steps=3)
    assert "fsdp=3 does not divide the 8 devices" in problems(8, fsdp=3)
    assert "together fit in train.num_steps=10" in problems(8, num_steps=10, warmup_steps=4, cooldown_steps=7)
    assert "object_loss_weight=0: must be > 0" in problems(8, object_loss_weight=0)
    assert shd.check_config(config, 8) == (8, 1)
    assert shd.check_config(config, 8, 1) == (8, 1)

    import train

    with pytest.raises(SystemExit) as exit_info:  # refused by the CLI before anything is built or compiled
        train.main(["--config", "tests/train_micro_config.py", "--workdir", str(tmp_path), "--set", "mesh.data=2",
                    "--set", "mesh.fsdp=2", *RANDOM])
    assert exit_info.value.code == 2
    assert "needs 4 devices but only 1 exist" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_second_run_in_a_busy_workdir_is_refused(tmp_path, capsys):
    import train
    from customnet_jax.train.checkpoint import WorkdirLock

    args = ["--config", "tests/train_micro_config.py", "--workdir", str(tmp_path), *RANDOM,
            "--set", "train.num_steps=1", "--set", "train.warmup_steps=0", "--set", "train.cooldown_steps=0"]
    with WorkdirLock(tmp_path):  # as another process would hold it (flock: separate opens conflict)
        with pytest.raises(SystemExit) as exit_info:
            train.main(args)
        assert exit_info.value.code == 2
        assert f"another training process (pid {os.getpid()}) is running in {tmp_path}" in capsys.readouterr().err
        assert not (tmp_path / "checkpoints").exists()
    assert train.main(args)["step"] == 1  # free again once the holder lets go
    assert train.main(args)["step"] == 1  # and after a run that ended (the lock file stays, unlocked)


def test_sharding_rules():
    big = shd.partition_spec(("unet", "conv_in", "kernel"), (3, 3, 8, 320), 4, 1024)
    assert big == shd.P(None, None, None, "fsdp")  # largest divisible dimension
    assert shd.partition_spec(("x", "kernel"), (768, 1280), 4, 1024) == shd.P(None, "fsdp")
    assert shd.partition_spec(("x", "kernel"), (772, 768), 8, 1024) == shd.P(None, "fsdp")  # 772 % 8 != 0
    assert shd.partition_spec(("x", "bias"), (1280,), 4, 1024) == shd.P()  # 1-D: replicated
    assert shd.partition_spec(("x", "kernel"), (16, 16), 4, 1024) == shd.P()  # small: replicated
    assert shd.partition_spec(("x", "kernel"), (768, 1280), 1, 1024) == shd.P()  # no fsdp axis


@pytest.mark.parametrize("warmup,cooldown", [(0, 0), (3, 0), (0, 4), (3, 4)])
def test_lr_schedule_warmup_stable_cooldown(warmup, cooldown):
    """optax's schedule at every step vs the rule written out: ramp from 0, hold, linear decay to 0 at num_steps."""
    train = get_config(learning_rate=0.5, num_steps=12, warmup_steps=warmup, cooldown_steps=cooldown).train
    schedule = opt.lr_schedule(train)
    for step in range(train.num_steps + 1):
        if step < warmup:
            expected = 0.5 * step / warmup
        elif cooldown and step >= 12 - cooldown:
            expected = 0.5 * (1 - (step - (12 - cooldown)) / cooldown)
        else:
            expected = 0.5
        assert float(schedule(step)) == pytest.approx(expected, abs=1e-7), step
    if cooldown:
        assert float(schedule(12)) == 0.0


def test_adamw_with_text_kv_group_matches_torch():
    """optax chain (AdamW, then x10 on to_k_text / to_v_text) vs torch.optim.AdamW with two param groups."""
    import torch

    rng = np.random.default_rng(0)
    params = {"attn": {"to_k_text": {"kernel": rng.standard_normal((4, 3)).astype(np.float32)},
                       "to_q": {"kernel": rng.standard_normal((4, 3)).astype(np.float32)}},
              "bias": rng.standard_normal(3).astype(np.float32)}
    grads = [jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), params) for _ in range(3)]
    train = get_config(learning_rate=1e-2, weight_decay=0.1, warmup_steps=0).train
    tx = opt.make_optimizer(train, params)
    ours, state = jax.tree.map(jnp.asarray, params), tx.init(params)
    update = jax.jit(tx.update)
    for g in grads:
        updates, state = update(g, state, ours)
        ours = jax.tree.map(jnp.add, ours, updates)

    text = torch.nn.Parameter(torch.tensor(params["attn"]["to_k_text"]["kernel"]))
    rest = [torch.nn.Parameter(torch.tensor(params["attn"]["to_q"]["kernel"])),
            torch.nn.Parameter(torch.tensor(params["bias"]))]
    torch_opt = torch.optim.AdamW([{"params": rest}, {"params": [text], "lr": 10 * train.learning_rate}],
                                  lr=train.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    for g in grads:
        for p, value in zip([rest[0], rest[1], text], [g["attn"]["to_q"]["kernel"], g["bias"],
                                                       g["attn"]["to_k_text"]["kernel"]], strict=True):
            p.grad = torch.tensor(value)
        torch_opt.step()
    # measured: max |difference| 2.0e-6 at lr 0.1 (text K/V), 2e-7 at lr 0.01: optax forms the bias correction
    # 1 - 0.999^t in float32 (0.999 is 0.99900001 there), torch in float64; torch is within 1.5e-7 of a float64
    # AdamW. A missing 10x, a coupled weight decay or a wrong beta gives differences of ~1e-2.
    np.testing.assert_allclose(ours["attn"]["to_k_text"]["kernel"], text.detach().numpy(), atol=5e-6)
    np.testing.assert_allclose(ours["attn"]["to_q"]["kernel"], rest[0].detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(ours["bias"], rest[1].detach().numpy(), atol=1e-6)
    moved_text = np.abs(ours["attn"]["to_k_text"]["kernel"] - params["attn"]["to_k_text"]["kernel"]).mean()
    moved_q = np.abs(ours["attn"]["to_q"]["kernel"] - params["attn"]["to_q"]["kernel"]).mean()
    assert moved_text > 5 * moved_q  # the 10x group really moves faster


def test_cc_projection_lr_multiplier_scales_only_cc_projection():
    """train.lr_multipliers with a cc_projection rule: cc_projection's AdamW steps are that many times the others'
    (same Adam state), the text K/V keep their own multiplier."""
    params = {"cc_projection": {"kernel": jnp.ones((3, 2))}, "attn": {"to_k_text": {"kernel": jnp.ones((2, 2))},
                                                                      "to_q": {"kernel": jnp.ones((2, 2))}}}
    grads = jax.tree.map(lambda x: 0.5 * jnp.ones_like(x), params)
    train = get_config(learning_rate=1e-2, weight_decay=0.0, warmup_steps=0).train

    def first_step(**multipliers):
        tx = opt.make_optimizer(dataclasses.replace(train, **multipliers), params)
        updates, _ = tx.update(grads, tx.init(params), params)
        return {k: float(jnp.abs(v).mean()) for k, v in
                {"cc": updates["cc_projection"]["kernel"], "text": updates["attn"]["to_k_text"]["kernel"],
                 "q": updates["attn"]["to_q"]["kernel"]}.items()}

    plain = first_step(lr_multipliers=((".*", 1.0),))
    assert plain["cc"] == pytest.approx(plain["q"]) == pytest.approx(plain["text"])
    both = first_step(lr_multipliers=(("^cc_projection/", 3.0), ("/to_[kv]_text/", 10.0), (".*", 1.0)))
    assert both["cc"] == pytest.approx(3 * plain["q"]) and both["text"] == pytest.approx(10 * plain["q"])
    assert both["q"] == pytest.approx(plain["q"])


@pytest.mark.parametrize("zero_snr", [False, True])
def test_noising_and_training_target_match_diffusers(zero_snr):
    """q(x_t | x_0) and the target (eps, or v for the zero-terminal-SNR schedule) vs diffusers' DDPMScheduler
    add_noise / get_velocity on the same draws; t covers both ends of the schedule."""
    import torch
    from diffusers import DDPMScheduler

    from customnet_jax.diffusion.schedule import DiffusionConfig, add_noise, alphas_cumprod, training_target

    diffusion = DiffusionConfig(prediction_type="v_prediction" if zero_snr else "epsilon", zero_terminal_snr=zero_snr)
    reference = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              rescale_betas_zero_snr=zero_snr, prediction_type=diffusion.prediction_type)
    rng = np.random.default_rng(0)
    x0, noise = (rng.standard_normal((4, 8, 8, 4)).astype(np.float32) for _ in range(2))
    t = np.array([0, 1, 500, 999])
    alphas = jnp.asarray(alphas_cumprod(diffusion))
    nchw = lambda a: torch.from_numpy(np.transpose(a, (0, 3, 1, 2)).copy())
    back = lambda a: np.transpose(a.numpy(), (0, 2, 3, 1))
    expected_noisy = back(reference.add_noise(nchw(x0), nchw(noise), torch.from_numpy(t)))
    np.testing.assert_allclose(add_noise(x0, noise, t, alphas), expected_noisy, atol=2e-6)
    target = training_target(x0, noise, t, alphas, diffusion.prediction_type)
    if zero_snr:
        np.testing.assert_allclose(target, back(reference.get_velocity(nchw(x0), nchw(noise), torch.from_numpy(t))),
                                   atol=5e-6)  # diffusers rescales float32 betas: 2.7e-6 measured
        np.testing.assert_allclose(target[-1], -x0[-1], atol=1e-6)  # at SNR 0, v = -x_0
    else:
        np.testing.assert_array_equal(target, noise)


def test_condition_dropout_and_target_latent():
    """docs/model.md §7 drops on precomputed features: image embedding zeroed before cc_projection, object latent
    zeroed, caption -> embedding of ""; background kept; z0 = scale (mean + exp(logvar / 2) n)."""
    config = get_config()
    rng = np.random.default_rng(1)
    b, h, d = 3, 8, 16
    batch = {"target_mean": rng.standard_normal((b, h, h, 4)), "target_logvar": rng.standard_normal((b, h, h, 4)),
             "location_latent": rng.standard_normal((b, h, h, 4)) + 3,
             "background_latent": rng.standard_normal((b, h, h, 4)),
             "image_embedding": rng.standard_normal((b, d)) + 3, "text_embedding": rng.standard_normal((b, 77, d)),
             "view": rng.standard_normal((b, 4)), "posterior_noise": rng.standard_normal((b, h, h, 4)),
             "drop_image": np.array([True, False, False]), "drop_object": np.array([False, True, False]),
             "drop_text": np.array([False, False, True])}
    batch = {k: jnp.asarray(v, jnp.float32) if v.dtype != bool else jnp.asarray(v) for k, v in batch.items()}
    null_text = jnp.full((1, 77, d), 7.0)
    feats = jax.tree.map(np.asarray, frozen_features(None, config, batch, null_text))
    assert np.all(feats["image_embedding"][0] == 0) and np.all(feats["image_embedding"][1:] != 0)
    assert np.all(feats["conditions"][1] == 0) and np.all(feats["conditions"][[0, 2]] != 0)
    np.testing.assert_array_equal(feats["text"][2], null_text[0])
    np.testing.assert_array_equal(feats["text"][:2], batch["text_embedding"][:2])
    np.testing.assert_array_equal(feats["view"], batch["view"])  # T is kept when the image is dropped
    expected = 0.18215 * (batch["target_mean"] + np.exp(0.5 * batch["target_logvar"]) * batch["posterior_noise"])
    np.testing.assert_allclose(feats["z0"], expected, rtol=1e-6, atol=1e-7)

    import dataclasses

    composition = dataclasses.replace(config, model=micro_model(in_channels=12))
    feats = jax.tree.map(np.asarray, frozen_features(None, composition, batch, null_text))
    assert feats["conditions"].shape == (b, h, h, 8)  # [object | background]
    np.testing.assert_array_equal(feats["conditions"][1, ..., 4:], batch["background_latent"][1])  # never dropped


def test_object_loss_weight_weighs_the_box_cells():
    """train.object_loss_weight: cells whose centre is inside the box weigh w, the rest 1, a weighted mean per
    sample (written out in numpy here); w = 1 is the paper's plain MSE."""
    import types

    from customnet_jax.diffusion.schedule import DiffusionConfig, alphas_cumprod

    boxes = np.array([[0.0, 0.0, 0.5, 0.25], [0.3, 0.3, 0.95, 1.0]], np.float32)
    cells = np.asarray(box_cells(jnp.asarray(boxes), 4))
    expected_cells = np.zeros((2, 4, 4))
    expected_cells[0, 0, 0:2] = 1  # centres 0.125, 0.375 < 0.5 in x; only 0.125 < 0.25 in y
    expected_cells[1, 1:4, 1:4] = 1  # centres 0.375, 0.625, 0.875 in both
    np.testing.assert_array_equal(cells, expected_cells)

    rng = np.random.default_rng(0)
    output = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
    model = types.SimpleNamespace(project_object=lambda e, v: e[:, None], context=lambda token, text: token,
                                  denoise=lambda noisy, t, conditions, context: jnp.asarray(output))
    feats = {"z0": jnp.asarray(rng.standard_normal((2, 4, 4, 3)), jnp.float32), "box": jnp.asarray(boxes),
             "image_embedding": jnp.zeros((2, 8)), "view": jnp.zeros((2, 4)), "conditions": None}
    t, noise = jnp.array([10, 900]), jnp.asarray(rng.standard_normal((2, 4, 4, 3)), jnp.float32)
    alphas = jnp.asarray(alphas_cumprod(DiffusionConfig()))
    squared = (output - np.asarray(noise)) ** 2  # eps prediction: the target is the noise
    plain = float(denoising_loss(model, feats, t, noise, alphas))
    np.testing.assert_allclose(plain, squared.mean(), rtol=1e-6)
    weight = 1 + 4 * expected_cells[..., None]
    per_sample = (weight * squared).sum((1, 2, 3)) / (weight.sum((1, 2, 3)) * 3)
    weighted = float(denoising_loss(model, feats, t, noise, alphas, object_loss_weight=5.0))
    np.testing.assert_allclose(weighted, per_sample.mean(), rtol=1e-6)
    assert abs(weighted - plain) > 1e-3  # the weighting changes the loss


@pytest.mark.slow
def test_init_from_model_folder_widens_conv_in(tmp_path):
    """A converted 8-channel CustomNet folder initialises the 12-channel composition model (zeros on the new
    channels); a Zero-1-to-3 folder initialises CustomNet with fresh text K/V and text encoder."""
    import dataclasses

    from flax import traverse_util

    from customnet_jax.model_folder import save_model_folder

    source_config = get_config()
    _, shapes = st.graphdef_and_shapes(source_config)
    source, _ = st.initial_params(dataclasses.replace(source_config, train=dataclasses.replace(
        source_config.train, seed=5)), shapes)
    save_model_folder(tmp_path / "m8", traverse_util.unflatten_dict(source), source_config.model)

    wide = dataclasses.replace(source_config, model=micro_model(in_channels=12))
    _, wide_shapes = st.graphdef_and_shapes(wide)
    params, report = st.initial_params(wide, wide_shapes, folder_params=st.read_init_folder(tmp_path / "m8"),
                                       source="m8")
    conv_in = params[("unet", "conv_in", "kernel")]
    assert conv_in.shape[2] == 12 and report.widened == [("unet", "conv_in", "kernel")]
    np.testing.assert_array_equal(conv_in[:, :, :8], source[("unet", "conv_in", "kernel")])
    assert not conv_in[:, :, 8:].any()
    assert not report.fresh and len(report.loaded) == len(source) - 1
    for path in report.loaded:
        np.testing.assert_array_equal(params[path], source[path])

    zero123 = dataclasses.replace(source_config, model=micro_model(text=False))
    _, z_shapes = st.graphdef_and_shapes(zero123)
    z_params, _ = st.initial_params(zero123, z_shapes)
    save_model_folder(tmp_path / "z", traverse_util.unflatten_dict(z_params), zero123.model)
    params, report = st.initial_params(source_config, shapes, folder_params=st.read_init_folder(tmp_path / "z"),
                                       source="z")
    fresh = {"/".join(map(str, p)) for p in report.fresh}
    assert all("text" in p for p in fresh) and any("to_k_text" in p for p in fresh)
    assert any(p.startswith("text_encoder/") for p in fresh)
    np.testing.assert_array_equal(params[("unet", "conv_in", "kernel")], z_params[("unet", "conv_in", "kernel")])


@pytest.mark.slow
def test_bfloat16_and_remat_switches_keep_float32_master_weights():
    """compute_dtype=bfloat16 builds the model computing in bf16 (remat on): the traced step (no compile)
    keeps float32 parameters, optimizer moments and loss."""
    from flax import nnx

    from customnet_jax.models.build import abstract_model
    from customnet_jax.train.step import make_step_fn

    config = get_config(compute_dtype="bfloat16", remat=True)
    model = abstract_model(st.model_builder(config.model, "bfloat16", remat=True))
    assert model.unet.dtype == jnp.bfloat16 and model.unet.remat
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}

    graphdef, shapes = st.graphdef_and_shapes(config)
    trainable, frozen = st.split_params({p: jax.ShapeDtypeStruct(s, jnp.float32) for p, s in shapes.items()})
    tx = opt.make_optimizer(config.train, trainable)
    state = jax.eval_shape(lambda p: st.new_state(p, tx, 0, ema=False), trainable)
    b, r = 2, config.model.resolution

    def spec(*shape, dtype=jnp.float32):
        return jax.ShapeDtypeStruct(shape, dtype)

    batch = {**{k: spec(b, r, r, 3) for k in ("target", "object", "location", "background")}, "view": spec(b, 4),
             "tokens": spec(b, 77, dtype=jnp.int32),
             **{k: spec(b, dtype=jnp.bool_) for k in ("drop_image", "drop_object", "drop_text")}}
    frozen = {"params": frozen, "null_text": spec(1, 77, config.model.context_dim)}
    new_state, metrics = jax.eval_shape(make_step_fn(config, graphdef, tx), state, frozen, batch)
    assert {x.dtype for x in jax.tree.leaves(new_state["params"])} == {jnp.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(new_state["opt_state"]) if x.ndim} == {jnp.dtype("float32")}
    assert metrics["loss"].dtype == jnp.float32


def test_mfu_helpers():
    from customnet_jax.train import loop

    assert loop.peak_flops("cpu") is None
    assert loop.peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and loop.peak_flops("TPU v5 lite") == 197e12

    class Compiled:
        def cost_analysis(self):
            return {"flops": 1e9}

    assert loop.step_flops(Compiled(), 4) == 4e9  # a scan body is counted once by XLA


# ------------------------------------------------------------------------------------------ subprocess runs


@pytest.mark.slow
def test_reference_run_logs_and_exports(reference):
    """The progress line, the JSON lines, the checkpoints kept and the exported model folder."""
    out = reference["output"]
    assert "step 8/8 | loss " in out and "samples/s | MFU n/a" in out and "compiled the train step" in out
    assert sorted(reference["losses"]) == list(range(1, 9))
    record = _metrics(reference["workdir"])[-1]
    assert {"step", "loss", "lr", "grad_norm", "samples_per_s", "mfu"} <= set(record)
    assert _checkpoint_entries(reference["workdir"]) == ["3", "6", "8"]
    from customnet_jax.model_folder import read_folder

    folder = read_folder(reference["workdir"] / "model")
    assert folder.model == get_config().model and folder.provenance["step"] == 8


@pytest.mark.slow
def test_sigkill_between_checkpoints_and_during_async_save_then_exact_resume(reference, tmp_path):
    """Kill 1: after step 5 (checkpoint 3 complete, none in flight). Kill 2: the resumed run is killed after
    step 7 while the async save of step 6 is still being finalised. The next run resumes from 3 (the half-
    written 6 is never taken) and every loss ever logged equals the uninterrupted run's at that step, bit for
    bit; the final weights are identical."""
    workdir = tmp_path / "run"
    run = ["tests/train_run.py", *COMMON, "--workdir", workdir]

    job = Job([*run, "--pause-after-step", "5", "--wait-checkpoint", "3"])
    job.wait_for("PAUSED 5")
    assert _checkpoint_entries(workdir) == ["3"]
    job.sigkill()

    job = Job([*run, "--pause-after-step", "7", "--block-finalize-step", "6"])
    job.wait_for("PAUSED 7")
    out = job.wait_for("BLOCKED-FINALIZE 6")  # checkpoint 6 is written but not yet committed (renamed)
    assert "resumed from the checkpoint of step 3" in out
    entries = _checkpoint_entries(workdir)
    assert "3" in entries and "6" not in entries and any(e.startswith("6.") and "tmp" in e for e in entries)
    job.sigkill()

    out = Job(["train.py", *COMMON, "--workdir", workdir]).finish()
    assert "resumed from the checkpoint of step 3" in out
    assert _checkpoint_entries(workdir) == ["3", "6", "8"]  # the leftover temporary folder is gone

    logged = _metrics(workdir)
    assert {m["step"] for m in logged} == set(range(1, 9))
    assert len(logged) == 5 + 4 + 5  # steps 1-5, 4-7, 4-8
    for m in logged:
        assert m["loss"] == reference["losses"][m["step"]], m
    ours, theirs = _folder_params(workdir / "model"), _folder_params(reference["workdir"] / "model")
    assert ours.keys() == theirs.keys()
    for path in ours:
        np.testing.assert_array_equal(ours[path], theirs[path])


@pytest.mark.slow
def test_two_processes_agree_with_one(reference, tmp_path):
    """Two local jax.distributed processes (one CPU device each, mesh data=2), each feeding its half of the
    global batch, with 2 micro-batches of accumulation, against the one-process run (no accumulation)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path / "two"
    jobs = [Job(["train.py", *COMMON, "--workdir", workdir, "--coordinator", f"127.0.0.1:{port}",
                 "--num-processes", "2", "--process-id", str(i), "--set", "train.grad_accum_steps=2"]) for i in (0, 1)]
    outputs = [job.finish() for job in jobs]
    assert "mesh {'data': 2, 'fsdp': 1} over 2 cpu device(s), 2 host(s)" in outputs[0]
    losses = {m["step"]: m["loss"] for m in _metrics(workdir)}
    assert sorted(losses) == list(range(1, 9))  # the reference run's 8 steps
    # measured: relative differences ~1e-7 (reduction order)
    np.testing.assert_allclose([losses[s] for s in range(1, 9)], [reference["losses"][s] for s in range(1, 9)],
                               rtol=2e-5)
    # every host wrote its data-iterator state into the checkpoint
    assert sorted(p.name for p in (workdir / "checkpoints" / "3" / "data_iter").glob("*.json")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
    # the exported weights equal the one-process run's, by value. Measured: trained leaves differ by at most 2.7e-5
    # (reduction order) where the 8 steps moved them by up to 0.15; the difference over the size of the 8 updates
    # (L2 over all parameters) is 1.2e-5; the frozen leaves are identical.
    two, one = _folder_params(workdir / "model"), _folder_params(reference["workdir"] / "model")
    assert two.keys() == one.keys()
    _, shapes = st.graphdef_and_shapes(get_config())
    start, _ = st.initial_params(get_config(), shapes)
    trained = [path for path in one if st.is_trainable(path)]
    for path in one:
        if st.is_trainable(path):
            np.testing.assert_allclose(two[path], one[path], rtol=0, atol=2e-4, err_msg=str(path))
        else:
            np.testing.assert_array_equal(two[path], one[path], err_msg=str(path))
    l2 = lambda arrays: float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in arrays)))
    update = l2(one[path] - start[path] for path in trained)
    assert update > 1.0 and l2(two[path] - one[path] for path in trained) < 1e-3 * update


@pytest.mark.slow
def test_micro_model_overfits_a_handful_of_examples_then_stops_on_sigterm(reference, tmp_path):
    """4 examples, no condition dropout, lr 3e-3: after 150 steps the loss has fallen by more than 10x. Then
    SIGTERM (preemption): the run writes a checkpoint of the step it reached and exits cleanly."""
    del reference  # reuses its compiled step from the persistent cache
    workdir = tmp_path / "overfit"
    args = ["train.py", "--config", "tests/train_micro_config.py", *RANDOM, "--set", "data.random_examples=4",
            "--workdir", workdir, "--set", "train.num_steps=1000",
            "--set", "train.checkpoint_every=1000", "--set", "train.image_dropout=0.0",
            "--set", "train.object_latent_dropout=(0.0,0.0)", "--set", "train.text_dropout=0.0"]
    job = Job(args)
    job.wait_for("step 150/1000")
    job.proc.send_signal(signal.SIGTERM)
    out = job.finish()
    logged = _metrics(workdir)
    stopped = logged[-1]["step"]
    assert [m["step"] for m in logged] == list(range(1, stopped + 1)) and 150 <= stopped < 1000
    assert f"checkpoint of step {stopped} started (preempted)" in out and not (workdir / "model").exists()
    assert _checkpoint_entries(workdir) == [str(stopped)]
    losses = [m["loss"] for m in logged[:150]]
    first, last = losses[0], float(np.mean(losses[-10:]))
    # measured: first 0.976, mean of steps 141-150 ~0.06
    assert last < first / 10, (first, last)


@pytest.mark.slow
def test_sharded_steps_equal_the_single_device_step(sharded_job):
    """3 steps (AdamW, warm-up, clipping, EMA; raw batches from the data pipeline, so the frozen VAE and CLIPs
    run sharded too) on meshes 2x4 (FSDP) and 8x1 (data parallel) of 8 simulated devices vs 1 device: same
    losses, parameters within float32 tolerance."""
    sharded_job.finish(timeout=600)
    runs = {r["mesh"]: r for r in map(json.loads, (line for line in sharded_job.lines if line.startswith("{")))}
    single, fsdp, data = runs["1x1"], runs["2x4"], runs["8x1"]
    assert single["params_moved"] > 0.6 * single["params_total"]  # the comparison covers most parameters
    for run in (fsdp, data):
        assert run["devices"] == 8 and run["batch_spec"] == "P(('data', 'fsdp'),)"
        np.testing.assert_allclose(run["losses"], single["losses"], rtol=1e-6)
        # measured: max |diff| 1.5e-8; difference / size of the 3 updates (L2 over all parameters) 7.4e-7;
        # worst leaf relative L2 1.1e-6
        assert run["max_abs_diff"] < 1e-6 and run["rel_l2_of_update"] < 1e-5 and run["max_rel_l2"] < 1e-5, run
        assert run["moments_follow_params"]  # the optimizer state has the parameters' shardings
    assert fsdp["params_split_over_fsdp"] > 50 and fsdp["frozen_split_over_fsdp"] > 20
    assert data["params_split_over_fsdp"] == 0


@pytest.mark.parametrize("export_ema", [True, False])
def test_export_takes_the_ema_unless_told_not_to(tmp_path, monkeypatch, export_ema):
    """train.export_ema chooses which weights the exported model folder holds (and says so)."""
    import types

    import customnet_jax.model_folder as model_folder
    from customnet_jax.train.loop import export_model

    written = {}
    monkeypatch.setattr(model_folder, "save_model_folder",
                        lambda path, params, *args, provenance, **kwargs: written.update(params=params, **provenance))
    trainer = types.SimpleNamespace(
        config=get_config(ema_decay=0.9, export_ema=export_ema), state={"params": {}, "ema": {}},
        init_report=types.SimpleNamespace(summary=lambda: "random"),
        full_params=lambda use_ema=True: "EMA weights" if use_ema else "raw weights")
    export_model(trainer, tmp_path / "model", 8, lambda message: None)
    assert written["params"] == ("EMA weights" if export_ema else "raw weights") and written["ema"] is export_ema


@pytest.mark.slow  # compiles a train step and a sampler in-process (41 s with a warm compilation cache)
def test_hooks_run_after_their_steps_and_the_sample_sheet_hook_writes_the_current_weights(tmp_path):
    """train(hooks=...): each hook runs after every step its `every` divides, with that step's StepInfo; the
    sample-sheet hook (passed in by train.py and the demo recipe: the trainer imports no sampling code) writes a
    sheet of the weights of that step, reusing its compiled sampler the second time."""
    import functools

    from PIL import Image

    from customnet_jax.sampling.training_sheets import SampleSheets, sample_sheet_hooks
    from customnet_jax.train import synthetic
    from customnet_jax.train.hooks import every
    from customnet_jax.train.loop import train

    config = get_config(num_steps=4, checkpoint_every=4, export_model=False)
    seen, lines, sheets = [], [], SampleSheets(every=2, steps=2)
    result = train(config, tmp_path / "run", log=lines.append,
                   make_iterator=functools.partial(synthetic.make_iterator, num_examples=8, form="precomputed"),
                   hooks=[every(1, lambda info: seen.append((info.step, info.main, info.workdir))), sheets,
                          every(0, lambda info: seen.append("never"))])
    assert result["step"] == 4 and seen == [(step, True, tmp_path / "run") for step in (1, 2, 3, 4)]
    samples = tmp_path / "run" / "samples"
    assert sorted(p.name for p in samples.glob("*_sheet.png")) == ["step_00000002_sheet.png",
                                                                    "step_00000004_sheet.png"]
    assert sum("sample sheet" in line for line in lines) == 2
    first, second = (np.asarray(Image.open(samples / f"step_0000000{s}_sheet.png")) for s in (2, 4))
    assert first.shape == second.shape and not np.array_equal(first, second)  # two steps of training apart
    assert sample_sheet_hooks(config.train) == []  # train.sample_every = 0: none
    hook, = sample_sheet_hooks(dataclasses.replace(config.train, sample_every=5, sample_steps=3, sample_prompt="a"))
    assert (hook.every, hook.steps, hook.prompt) == (5, 3, "a")

