"""Non-finite training steps: found inside the step, acted on by the loop when it reads the metrics anyway.

Inside the compiled step (`norm_and_finite`, then `keep_if_finite`): a step whose loss, gradient norm or updated
parameters are not finite keeps the previous parameters, optimizer state and EMA (the update is skipped; the step
counter and the data move on) and reports `finite = False` in its metrics. Nothing is read back to the host for
this: the loop looks at the flags when it logs, before a checkpoint and at the end (`NonFiniteGuard`), where it
reads the metrics already. The policy is `train.nonfinite_policy`:
  "stop"  (default) stop with `NonFiniteTrainingError` once `train.nonfinite_patience` steps in a row were not
          finite: the message names the first bad step and the likely cause; no checkpoint is written during
          a bad streak and no model is exported, so the last good checkpoint stays the latest;
  "skip"  skip bad updates and go on (each log line says how many were skipped).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

POLICIES = ("stop", "skip")


class NonFiniteTrainingError(RuntimeError):
    """Training stopped: too many consecutive steps with a non-finite loss, gradient or update."""


def norm_and_finite(tx: optax.GradientTransformation, grads: Any, opt_state: Any, params: Any,
                    loss: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(the gradients' global norm, one boolean: the loss, that norm and the parameters `tx`'s update gives are
    all finite).

    Decided before the step's own update, which then writes the kept state in the same pass (`keep_if_finite`
    fuses into it). The update is traced again here on its inputs behind an optimization barrier, so that XLA
    cannot merge it with the step's update, and each leaf is read once by one variadic reduction: the sum of
    the squared gradient and the sum of zero times the new parameter (0 where every value is finite, NaN
    otherwise). Nothing is written: no new parameters stored, read back and selected between two whole states.
    The TPU compiler's figures for the full-size update: docs/tpu.md."""
    grads, opt_state, params = jax.lax.optimization_barrier((grads, opt_state, params))
    updates, _ = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)

    def leaf(g, p):
        zero = jnp.zeros((), jnp.float32)
        return jax.lax.reduce((jnp.square(g.astype(jnp.float32)), p.astype(jnp.float32) * 0), (zero, zero),
                              lambda a, b: (a[0] + b[0], a[1] + b[1]), tuple(range(g.ndim)))

    sums = [leaf(g, p) for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(new_params), strict=True)]
    grad_norm = jnp.sqrt(sum(s[0] for s in sums))
    zero = sum(s[1] for s in sums)
    return grad_norm, jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (zero == 0)


def keep_if_finite(finite: jax.Array, state: dict, new_state: dict) -> dict:
    """`new_state` if `finite`, else `state` with only its step counter advanced (inside the jit)."""
    return {key: value if key == "step" else jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                                          value, state[key])
            for key, value in new_state.items()}


def check_policy(policy: str, patience: int) -> None:
    if policy not in POLICIES:
        raise ValueError(f"train.nonfinite_policy={policy!r}: choose one of {POLICIES}")
    if patience < 1:
        raise ValueError(f"train.nonfinite_patience={patience}: it counts steps in a row, use 1 or more")


@dataclasses.dataclass
class NonFiniteGuard:
    """Follows the `finite` flags of the steps (read with the metrics) and applies the policy."""

    policy: str = "stop"
    patience: int = 5
    streak: int = 0  # consecutive non-finite steps up to `seen`
    skipped: int = 0  # all non-finite (skipped) steps of this run
    seen: int = 0  # the last step observed
    streak_start: int | None = None
    streak_kind: str | None = None  # what was non-finite at the streak's first step
    last_good: dict = dataclasses.field(default_factory=dict)  # loss / grad_norm of the last finite step
    first_grad_norm: float | None = None

    def __post_init__(self) -> None:
        check_policy(self.policy, self.patience)

    def observe(self, last_step: int, values: Sequence[dict], log: Callable[[str], None]) -> None:
        """Take the host metrics of steps last_step - len(values) + 1 .. last_step (steps seen already are
        ignored); raise `NonFiniteTrainingError` when the policy says stop."""
        first = last_step - len(values) + 1
        new_bad = 0
        for step, value in zip(range(first, last_step + 1), values, strict=True):
            if step <= self.seen:
                continue
            self.seen = step
            if bool(value.get("finite", True)):
                self.streak, self.streak_start = 0, None
                self.last_good = {"step": step, "loss": float(value["loss"]), "grad_norm": float(value["grad_norm"])}
                if self.first_grad_norm is None:
                    self.first_grad_norm = float(value["grad_norm"])
                continue
            new_bad += 1
            self.skipped += 1
            self.streak += 1
            if self.streak_start is None:
                self.streak_start = step
                self.streak_kind = _kind(value)
        if new_bad:
            log(f"warning: {new_bad} step(s) up to {last_step} had a non-finite {self.streak_kind or 'value'}; "
                f"their updates were skipped ({self.skipped} in this run, {self.streak} in a row)")
        if self.policy == "stop" and self.streak >= self.patience:
            raise NonFiniteTrainingError(self.message(last_step))

    def finish(self, last_step: int, values: Sequence[dict], log: Callable[[str], None]) -> None:
        """At the end of the run: under "stop" a run that ends in a bad streak stops with the error (nothing is
        saved or exported); under "skip" the state (the last good one) is saved and exported."""
        self.observe(last_step, values, log)
        if self.streak and self.policy == "stop":
            raise NonFiniteTrainingError(self.message(last_step))

    def safe_to_save(self) -> bool:
        """False while in a streak of non-finite steps under "stop" (the state is the last good one: rotating it in
        as a new checkpoint would push out good ones for nothing)."""
        return self.streak == 0 or self.policy == "skip"

    def message(self, last_step: int) -> str:
        return (f"stopped at step {last_step}: {self.streak} steps in a row (from step {self.streak_start}) had a "
                f"non-finite {self.streak_kind}; their updates were skipped. Likely cause: {self.likely_cause()}. "
                f"Nothing of the bad steps was saved: the latest checkpoint is the last good state, no model was "
                f"exported (train.nonfinite_policy='stop', train.nonfinite_patience={self.patience}).")

    def likely_cause(self) -> str:
        good = self.last_good
        if not good:
            return ("non-finite values from the first step: the data (a damaged batch, NaN/inf inputs) or the "
                    "starting weights (train.init_from) hold NaN or inf")
        growth = good["grad_norm"] / max(self.first_grad_norm or good["grad_norm"], 1e-30)
        if growth > 10 or not math.isfinite(growth):
            return (f"the training diverged (the gradient norm grew {growth:.3g}x to {good['grad_norm']:.4g} by step "
                    f"{good['step']}): lower train.learning_rate, add warm-up (train.warmup_steps) or clip "
                    "(train.grad_clip_norm)")
        return (f"the last finite step ({good['step']}: loss {good['loss']:.4g}, grad norm {good['grad_norm']:.4g}) "
                "looked sane, so a batch with non-finite values (check the data) or an overflow in "
                "train.compute_dtype; a learning rate too high (train.learning_rate) is the other usual cause")


def _kind(value: dict) -> str:
    if not np.isfinite(value["loss"]):
        return "loss"
    if not np.isfinite(value["grad_norm"]):
        return "gradient"
    return "update (the parameters after the step)"
