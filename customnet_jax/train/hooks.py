"""Periodic work inside the training loop, passed in by the caller (as levanter's `Trainer.add_hook`).

The trainer knows nothing of sampling, evaluation or the demo: `train(config, workdir, hooks=[...])` takes any
object with an `every` (steps; 0: never) that can be called with a `StepInfo`. After each step's logging and
checkpoint, the loop calls every hook whose `every` divides the step number, on every process (a hook that
gathers the weights needs all of them; it does its host-0 work itself, `info.main`). Time spent in hooks is
not counted in the training speed.

    def log_norm(info: StepInfo) -> None:
        info.log(f"step {info.step}: ...")

    train(config, workdir, hooks=[every(100, log_norm), SampleSheets(every=500)])
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any, Protocol

from flax import nnx

from customnet_jax.experiment import Config


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What a hook may use: the step just finished, the run's folder and config, and the trainer's weights."""

    step: int
    workdir: pathlib.Path
    config: Config
    main: bool  # process 0 (the one that writes files and logs)
    log: Callable[[str], None]
    trainer: Any  # loop.Trainer: the state, the mesh, the compiled step's inputs

    def model(self) -> nnx.Module | None:
        """The model holding the current weights (EMA if kept) on process 0, None on the others. Every process
        must call it: the weights are gathered from all of them."""
        return self.trainer.current_model()


class Hook(Protocol):
    """Called with the StepInfo of every step that `every` divides (every <= 0: never)."""

    every: int

    def __call__(self, info: StepInfo) -> None: ...


@dataclasses.dataclass(frozen=True)
class FunctionHook:
    """A plain function as a hook."""

    every: int
    function: Callable[[StepInfo], None]

    def __call__(self, info: StepInfo) -> None:
        self.function(info)


def every(steps: int, function: Callable[[StepInfo], None]) -> FunctionHook:
    """`function(info)` every `steps` steps."""
    return FunctionHook(steps, function)


def due(hooks: list[Hook] | tuple[Hook, ...], step: int) -> list[Hook]:
    """The hooks to run after `step`."""
    return [hook for hook in hooks if hook.every > 0 and step % hook.every == 0]
