"""Checkpoints with orbax: the train state, the grain iterator position and the config, saved asynchronously.

    <workdir>/checkpoints/<step>/state       params, optimizer state, step, RNG (sharded arrays, every host writes
                                              its shards)
                                 /data_iter   grain iterator state, one JSON file per host
                                 /config      the experiment config (JSON)
orbax writes each checkpoint under a temporary name and renames it when every host has finished, so a
checkpoint that was being written when the process died is never listed: `latest_step()` is the latest
complete one, and the leftovers of a half-written one are ignored (and removed when the next run starts).
A SIGTERM (preemption) asks the loop to write a checkpoint of the current step and stop (`PreemptionFlag`).
One run per workdir (`WorkdirLock`): a second trainer there would write over the first one's checkpoints.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pathlib
import signal
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from customnet_jax.config_files import to_dict
from customnet_jax.experiment import Config

ITEMS = ("state", "data_iter", "config")


class Checkpointer:
    """orbax CheckpointManager for the train state + data iterator + config, every `every` steps, keeping `keep`."""

    def __init__(self, directory: str | pathlib.Path, *, every: int, keep: int, use_async: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        self.every = every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=use_async, cleanup_tmp_directories=True, create=True)
        self.manager = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)

    def latest_step(self) -> int | None:
        """The latest complete checkpoint (a half-written one is never listed)."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, iterator: Any, config: Config, *, force: bool = False) -> bool:
        """Start an (async) save if `step` is a multiple of `every` (or `force`); returns whether one started."""
        if not force and step % self.every:
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data_iter=grain.checkpoint.CheckpointSave(iterator),
                                  config=ocp.args.JsonSave(to_dict(config)))
        return self.manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state: Any, iterator: Any) -> tuple[Any, dict]:
        """The state at `step` (placed as `abstract_state`'s shardings); `iterator` is moved to its saved position."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                  data_iter=grain.checkpoint.CheckpointRestore(iterator),
                                  config=ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        return restored.state, restored.config

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a tree of global arrays, the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """'a.b: saved -> current' for every field that differs between two to_dict() configs."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(config_differences(a, b, f"{prefix}{key}."))
        elif a != b and not (isinstance(a, list) and isinstance(b, (list, tuple)) and list(b) == a):
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


class PreemptionFlag:
    """Set by SIGTERM; the loop checkpoints and stops at the next step boundary (all hosts agree first)."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.requested = False
        self._previous = {}
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, no preemption saves
                logging.warning("PreemptionFlag: cannot install a handler for signal %s outside the main thread", sig)

    def _handle(self, signum, frame) -> None:
        del frame
        logging.warning("signal %s: will checkpoint and stop after this step", signum)
        self.requested = True

    def should_stop(self) -> bool:
        """True on every host when any host got the signal (one small all-gather per call when multi-host)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array([self.requested]))))

    def restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class WorkdirInUse(RuntimeError):
    """Another training process holds the workdir."""


class WorkdirLock:
    """An exclusive lock on <workdir>/.lock (flock, released when the process ends however it ends): a second
    train.py in the same workdir stops with a clear error instead of racing the first one's checkpoints."""

    def __init__(self, workdir: pathlib.Path):
        self.path = workdir / ".lock"
        self._file = None

    def __enter__(self) -> WorkdirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")  # noqa: SIM115 (held for the run)
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            raise WorkdirInUse(f"another training process (pid {holder}) is running in {self.path.parent}: two runs in "
                               "one workdir overwrite each other's checkpoints; stop it first or use another "
                               "--workdir") from None
        file.truncate(0)
        file.write(str(os.getpid()))
        file.flush()
        self._file = file
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
