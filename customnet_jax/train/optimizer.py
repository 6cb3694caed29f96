"""AdamW as the original (torch defaults), learning-rate multiples by rules (train.lr_multipliers: the text K/V at
10x by default, as the original), warm-up, clipping, and the EMA update.

A multiple is a per-leaf scale applied after AdamW: torch's AdamW step for a group with lr' = 10 lr is
-lr' (adam + wd p) = 10 x (-lr (adam + wd p)), so one AdamW state covers both groups exactly.
Gradient accumulation is done in the step (a scan over micro-batches, step.py), not here: one optimizer
update per global batch, whatever the accumulation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from customnet_jax.experiment import TrainConfig
from customnet_jax.models.param_rules import is_number, map_tree


def lr_schedule(train: TrainConfig) -> optax.Schedule:
    """Linear warm-up from 0 over `warmup_steps`, constant `learning_rate`, then a linear cool-down to 0 over the
    last `cooldown_steps` of `num_steps` (warmup-stable-decay: a run of the stable phase can be extended or
    cooled down later from its checkpoints, since the schedule before the cool-down does not depend on its end)."""
    pieces, boundaries = [optax.constant_schedule(train.learning_rate)], []
    if train.warmup_steps > 0:
        pieces.insert(0, optax.linear_schedule(0.0, train.learning_rate, train.warmup_steps))
        boundaries.append(train.warmup_steps)
    if train.cooldown_steps > 0:
        pieces.append(optax.linear_schedule(train.learning_rate, 0.0, train.cooldown_steps))
        boundaries.append(train.num_steps - train.cooldown_steps)
    return optax.join_schedules(pieces, boundaries) if boundaries else pieces[0]


def lr_multipliers(params: Any, rules: Any) -> Any:
    """A tree like `params` (nested dicts) holding each leaf's learning-rate multiple: the first of the
    (regex, multiple) `rules` (train.lr_multipliers) that matches its "/"-joined path."""
    return map_tree(rules, params, "train.lr_multipliers", is_number, "a number")


class _Empty(NamedTuple):
    pass


def scale_by_tree(multipliers: Any) -> optax.GradientTransformation:
    """Multiply each update leaf by a fixed Python float (no state)."""

    def init(params):
        del params
        return _Empty()

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u if m == 1.0 else u * jnp.asarray(m, u.dtype), updates, multipliers), state

    return optax.GradientTransformation(init, update)


def make_optimizer(train: TrainConfig, params: Any) -> optax.GradientTransformation:
    """[clip by global norm] -> AdamW(lr schedule, betas, eps, decoupled weight decay) -> x lr multiples (rules).

    `params` is the trainable tree only (train.trainable): frozen parameters have no optimizer state."""
    parts = []
    if train.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(train.grad_clip_norm))
    parts.append(optax.adamw(lr_schedule(train), b1=train.adam_b1, b2=train.adam_b2, eps=train.adam_eps,
                             weight_decay=train.weight_decay))
    parts.append(scale_by_tree(lr_multipliers(params, train.lr_multipliers)))  # a no-op on leaves at 1
    return optax.chain(*parts)


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """ema <- decay * ema + (1 - decay) * params."""
    return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)
