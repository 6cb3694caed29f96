"""Training under faults (issue 21): non-finite steps, corrupt checkpoints, a disk that fills during a save.

The runs are in-process `train()` calls on the micro model of tests/train_micro_config.py with the synthetic
precomputed data, wrapped to go bad at a chosen step.
"""

import pathlib
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from train_micro_config import get_config  # noqa: E402

from customnet_jax.train import synthetic  # noqa: E402
from customnet_jax.train.nonfinite import (  # noqa: E402
    NonFiniteGuard,
    NonFiniteTrainingError,
    keep_if_finite,
    norm_and_finite,
)


class PoisonedIterator(grain.DatasetIterator):
    """The synthetic batches, with NaN latents from batch `poison_from` (1-based: the batch of that step) on."""

    def __init__(self, inner, poison_from: int):
        super().__init__(inner)
        self.inner, self.poison_from = inner, poison_from

    def __next__(self):
        index = self.inner.get_state()["next_index"] + 1
        batch = next(self.inner)
        if index >= self.poison_from:
            batch = dict(batch, target_mean=np.full_like(batch["target_mean"], np.nan))
        return batch

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


def poisoned(poison_from: int):
    def make(config, **kwargs):
        return PoisonedIterator(synthetic.make_iterator(config, num_examples=16, form="precomputed", **kwargs),
                                poison_from)
    return make


def _finite_tree(path: pathlib.Path) -> bool:
    import orbax.checkpoint as ocp

    restored = ocp.PyTreeCheckpointer().restore(path)
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(restored)
               if np.issubdtype(np.asarray(x).dtype, np.floating))


# ------------------------------------------------------------------------------------------- cheap checks


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def test_a_non_finite_step_keeps_the_previous_state():
    state = {"params": {"w": jnp.ones(3)}, "opt_state": (jnp.zeros(3),), "step": jnp.asarray(4)}
    new = {"params": {"w": jnp.full(3, 2.0)}, "opt_state": (jnp.ones(3),), "step": jnp.asarray(5)}
    kept = jax.jit(keep_if_finite)(jnp.asarray(False), state, new)
    assert int(kept["step"]) == 5
    np.testing.assert_array_equal(kept["params"]["w"], 1.0)
    np.testing.assert_array_equal(kept["opt_state"][0], 0.0)
    kept = keep_if_finite(jnp.asarray(True), state, new)
    assert int(kept["step"]) == 5 and float(kept["params"]["w"][0]) == 2.0 and float(kept["opt_state"][0][0]) == 1.0


@pytest.mark.parametrize("name", ["sgd_at_1e38", "adamw"])
def test_the_update_is_judged_by_the_parameters_it_gives(name):
    """`norm_and_finite` (the update traced again behind a barrier, nothing stored) agrees with a check of the
    parameters the step's own update writes: a non-finite loss or gradient norm, a NaN or inf gradient, and
    finite gradients whose update overflows a parameter (sgd at lr 1e38 from 3e38: a check of the gradients
    alone would let that step through; adamw's step is bounded by its learning rate and stays finite)."""
    tx = optax.sgd(1e38) if name == "sgd_at_1e38" else optax.adamw(1e-3)
    params = {"w": jnp.asarray([1.0, -2.0, 3e38]), "b": jnp.zeros(2)}
    opt_state = tx.init(params)

    @jax.jit
    def judged_and_written(grads, loss):
        grad_norm, finite = norm_and_finite(tx, grads, opt_state, params, loss)
        updates, _ = tx.update(grads, opt_state, params)
        written = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(optax.apply_updates(params, updates))
        return finite, written, grad_norm

    small = {"w": jnp.asarray([0.0, 0.0, 0.0]), "b": jnp.asarray([1e-38, -1e-38])}
    overflow = {"w": jnp.asarray([0.0, 0.0, -10.0]), "b": jnp.zeros(2)}
    huge = {"w": jnp.asarray([3e30, 0.0, 0.0]), "b": jnp.zeros(2)}  # finite, but its squares overflow the norm
    cases = [("finite", small, 1.0, True), ("loss", small, jnp.nan, False), ("grad_norm", huge, 1.0, False),
             ("nan_gradient", dict(small, b=jnp.asarray([jnp.nan, 0.0])), 1.0, False),
             ("inf_gradient", dict(small, w=small["w"].at[0].set(jnp.inf)), 1.0, False),
             ("overflow", overflow, 1.0, name == "adamw")]
    for case, grads, loss, expected in cases:
        finite, written, grad_norm = judged_and_written(grads, jnp.asarray(loss))
        assert bool(finite) == bool(written) == expected, case
        np.testing.assert_allclose(grad_norm, optax.tree.norm(grads), rtol=1e-6)
    assert bool(all_finite(overflow))  # the gradients of the overflowing step are finite


def test_the_guard_stops_after_the_patience_and_names_the_step():
    ok = {"loss": 0.5, "grad_norm": 1.0, "finite": True}
    nan = {"loss": float("nan"), "grad_norm": float("nan"), "finite": False}
    messages = []
    guard = NonFiniteGuard("stop", 3)
    guard.observe(2, [ok, ok], messages.append)
    guard.observe(4, [nan, nan], messages.append)  # 2 in a row: skipped, warned, not yet stopped
    assert not guard.safe_to_save() and "skipped" in messages[-1]
    guard.observe(5, [ok], messages.append)  # the streak is broken
    assert guard.safe_to_save()
    guard.observe(6, [nan], messages.append)
    with pytest.raises(NonFiniteTrainingError, match=r"stopped at step 8: 3 steps in a row \(from step 6\).*loss"):
        guard.observe(8, [nan, nan, nan], messages.append)  # step 6 again is not counted twice
    skip = NonFiniteGuard("skip", 1)
    skip.observe(3, [nan, nan, nan], messages.append)
    assert skip.skipped == 3 and skip.safe_to_save()
    with pytest.raises(ValueError, match="nonfinite_policy"):
        NonFiniteGuard("ignore", 3)


# ------------------------------------------------------------------------------------------ runs


@pytest.mark.slow
def test_nan_training_stops_keeps_the_good_checkpoint_and_exports_nothing(tmp_path, capsys):
    """Batches 5.. hold NaN: steps 5-7 are skipped and the run stops at the third (patience 3) with an error
    naming step 5; checkpoint 4 (good) stays the latest, no checkpoint of a bad streak is written and no
    model is exported; under "skip" the run goes on and its checkpoints and export are finite."""
    from customnet_jax.train.loop import train

    config = get_config(num_steps=10, checkpoint_every=2, nonfinite_patience=3, async_checkpoints=False)
    workdir = tmp_path / "nan"
    with pytest.raises(NonFiniteTrainingError, match=r"from step 5\).*non-finite loss.*Likely cause") as error:
        train(config, workdir, make_iterator=poisoned(5))
    assert "stopped at step 7" in str(error.value)
    checkpoints = workdir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == ["2", "4"]
    assert _finite_tree(checkpoints / "4" / "state")
    assert not (workdir / "model").exists()

    config = get_config(num_steps=6, checkpoint_every=3, nonfinite_policy="skip", async_checkpoints=False)
    result = train(config, tmp_path / "skip", make_iterator=poisoned(5))
    assert result["stopped"] == "done" and "their updates were skipped" in capsys.readouterr().out
    assert _finite_tree(tmp_path / "skip" / "checkpoints" / "6" / "state")
    assert _finite_tree(tmp_path / "skip" / "model" / "params")


@pytest.mark.slow
def test_train_py_exits_non_zero_on_a_diverging_run(tmp_path, capsys):
    """A learning rate far too high: train.py ends with one error line (exit status non-zero), no export."""
    import train

    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", "tests/train_micro_config.py", "--set", "data.source=random_precomputed",
                    "--set", "data.random_examples=16", "--workdir", str(tmp_path / "run"),
                    "--set", "train.num_steps=40", "--set", "train.learning_rate=1e12",
                    "--set", "train.checkpoint_every=100"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert err.startswith("error: stopped at step") and "non-finite" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "model").exists()


def _run(workdir, **overrides):
    from customnet_jax.train.loop import train

    config = get_config(**dict(dict(checkpoint_every=2, async_checkpoints=False, export_model=False), **overrides))
    return train(config, workdir, make_iterator=poisoned(10**9))


def _largest_file(folder: pathlib.Path) -> pathlib.Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.slow
def test_resume_skips_unreadable_checkpoints_and_says_why(tmp_path, capsys):
    """Checkpoint 6 with a damaged data-iterator state and 4 with a truncated parameter file: the run resumes
    from 2, names both and why, keeps them (moved aside as <step>.unreadable) and goes on; when none restores,
    one clear error."""
    from customnet_jax.train.checkpoint import CheckpointRestoreError

    workdir = tmp_path / "run"
    _run(workdir, num_steps=6)
    checkpoints = workdir / "checkpoints"
    for state_file in (checkpoints / "6" / "data_iter").glob("*.json"):
        state_file.write_text("{not json")
    victim = _largest_file(checkpoints / "4" / "state")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    capsys.readouterr()
    result = _run(workdir, num_steps=8)
    out = capsys.readouterr().out
    assert "resumed from the checkpoint of step 2" in out and result["step"] == 8
    assert "the checkpoint of step 6 does not restore" in out and "the checkpoint of step 4 does not restore" in out
    assert (checkpoints / "6.unreadable").is_dir() and (checkpoints / "4.unreadable").is_dir()
    # 4 and 6 written again, 2 rotated out (keep 3)
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["4", "6", "8"]

    for step in ("4", "6", "8"):
        for state_file in (checkpoints / step / "data_iter").glob("*.json"):
            state_file.write_text("")
    with pytest.raises(CheckpointRestoreError, match=r"no checkpoint in .* restores: step 8: .*; step 6: .*; step 4"):
        _run(workdir, num_steps=10)


DISK_FULL = """
import resource, signal, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
import train
from test_faults_train import poisoned
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
train.main(sys.argv[3:], make_iterator=poisoned(10**9))
"""


@pytest.mark.slow
def test_a_failed_save_is_one_clear_error_and_the_next_run_cleans_up(tmp_path):
    """Checkpoints 2 and 4 written; then a run whose files may not grow past 200 kB (a full disk): the save of
    step 6 fails with one error line (the only line starting "error:") naming step 6, exit non-zero, 2 and 4
    intact; the next run removes the leftover and resumes from 4."""
    import subprocess

    workdir = tmp_path / "run"
    _run(workdir, num_steps=4)
    args = ["--config", "tests/train_micro_config.py", "--workdir", str(workdir), "--set", "train.num_steps=8",
            "--set", "train.checkpoint_every=2", "--set", "train.export_model=False"]
    env = dict(__import__("os").environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", DISK_FULL, str(ROOT), str(200_000), *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "saving the checkpoint of step 6" in errors[0] and "[2, 4]" in errors[0], run.stderr
    # (orbax's writer threads may still log their own tracebacks before it: not ours to silence)
    checkpoints = workdir / "checkpoints"
    assert {"2", "4"} <= {p.name for p in checkpoints.iterdir()} and "6" not in {p.name for p in checkpoints.iterdir()}
    result = _run(workdir, num_steps=8)
    assert result["step"] == 8
    assert sorted(p.name for p in checkpoints.iterdir()) == ["4", "6", "8"]  # no leftover; 2 rotated out (keep 3)
