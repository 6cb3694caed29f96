"""AdamW as the original (torch defaults, docs/model.md §8), the text K/V at 10x lr (and optionally cc_projection at a
multiple), warm-up, clipping, and the EMA update.

The 10x group is a per-leaf scale applied after AdamW: torch's AdamW step for a group with lr' = 10 lr is
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

TEXT_KV = ("to_k_text", "to_v_text")


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


def _names(keypath: tuple) -> set:
    return {getattr(k, "key", None) for k in keypath}


def lr_multipliers(params: Any, text_kv_multiplier: float, cc_projection_multiplier: float = 1.0) -> Any:
    """A tree like `params`: `text_kv_multiplier` on the text K/V kernels, `cc_projection_multiplier` on
    cc_projection (the object token's CLIP-embedding + view mixing), 1 elsewhere."""

    def multiplier(path, _):
        names = _names(path)
        if names & set(TEXT_KV):
            return text_kv_multiplier
        return cc_projection_multiplier if "cc_projection" in names else 1.0

    return jax.tree_util.tree_map_with_path(multiplier, params)


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
    """[clip by global norm] -> AdamW(lr schedule, betas, eps, decoupled weight decay) -> text K/V x multiplier."""
    parts = []
    if train.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(train.grad_clip_norm))
    parts.append(optax.adamw(lr_schedule(train), b1=train.adam_b1, b2=train.adam_b2, eps=train.adam_eps,
                             weight_decay=train.weight_decay))
    if train.text_kv_lr_multiplier != 1.0 or train.cc_projection_lr_multiplier != 1.0:
        parts.append(scale_by_tree(lr_multipliers(params, train.text_kv_lr_multiplier,
                                                  train.cc_projection_lr_multiplier)))
    return optax.chain(*parts)


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """ema <- decay * ema + (1 - decay) * params."""
    return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)
