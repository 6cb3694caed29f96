"""Checkpoints with orbax: the train state, the grain iterator position and the config, saved asynchronously.

    <workdir>/checkpoints/<step>/state       params, optimizer state, step, RNG (sharded arrays, every host writes
                                              its shards)
                                 /data_iter   grain iterator state, one JSON file per host
                                 /config      the experiment config (JSON)
orbax writes each checkpoint under a temporary name and renames it when every host has finished, so a
checkpoint that was being written when the process died is never listed: `latest_step()` is the latest
complete one, and the leftovers of a half-written one are ignored (and removed when the next run starts).
A checkpoint that does not restore (truncated file, missing metadata, damaged data-iterator state) is skipped:
`restore_latest` takes the newest one that restores, says which were skipped and why, and moves each skipped one
aside to `<step>.unreadable` (kept for inspection; a new checkpoint of that step could not be written beside it).
A save that fails (disk full) stops the run with one `CheckpointSaveError` naming the step and the cause; the
earlier checkpoints are untouched, and the failed one's temporary folder is removed when the next run starts.
A SIGTERM (preemption) asks the loop to write a checkpoint of the current step and stop (`PreemptionFlag`).
One run per workdir (`WorkdirLock`): a second trainer there would write over the first one's checkpoints.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pathlib
import signal
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from customnet_jax.config_files import to_dict
from customnet_jax.experiment import Config

ITEMS = ("state", "data_iter", "config")


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed (disk full, permissions); the earlier checkpoints are intact."""


class CheckpointRestoreError(RuntimeError):
    """No checkpoint of the workdir restores."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _reason(error: BaseException) -> str:
    """The first line of an error (orbax / tensorstore errors run over many lines), with its root cause's."""
    root = error
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    return _first_line(error) + (f" (cause: {_first_line(root)})" if root is not error else "")


class Checkpointer:
    """orbax CheckpointManager for the train state + data iterator + config, every `every` steps, keeping `keep`."""

    def __init__(self, directory: str | pathlib.Path, *, every: int, keep: int, use_async: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        self.every = every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=use_async, cleanup_tmp_directories=True, create=True)
        self.manager = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)
        self._saving: int | None = None  # the step of the save that may still be in flight

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
        with self._failures(step):  # an earlier async save's failure surfaces here too: it names that step
            started = self.manager.save(step, args=args, force=True)
        self._saving = step
        return started

    @contextlib.contextmanager
    def _failures(self, step: int | None) -> Iterator[None]:
        """Turn a failed save (this one, or an earlier async one surfacing now) into one CheckpointSaveError."""
        try:
            yield
        except Exception as error:  # noqa: BLE001 - orbax / tensorstore / OS errors alike
            # orbax's other write tasks failed the same way; asyncio would log each one's traceback at exit
            logging.getLogger("asyncio").addFilter(lambda record: "never retrieved" not in record.getMessage())
            failed = self._saving if self._saving is not None else step
            self._saving = None
            kept = [s for s in self.all_steps() if s != failed]
            raise CheckpointSaveError(
                f"saving the checkpoint of step {failed} in {self.directory} failed: {_reason(error)}. The earlier "
                f"checkpoints ({kept or 'none'}) are intact; free disk space (or fix the folder's permissions) and "
                "run again: it resumes from the latest of them") from None

    def restore_latest(self, abstract_state: Any, iterator: Any, log: Any) -> tuple[int, Any, dict] | None:
        """(step, state, config) of the newest checkpoint that restores; skipped ones are reported and moved aside
        to <step>.unreadable; None when there are no checkpoints; `CheckpointRestoreError` when none restores."""
        failures: list[tuple[int, str]] = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, config = self.restore(step, abstract_state, iterator)
            except Exception as error:  # noqa: BLE001 - any damage: try the next older checkpoint
                failures.append((step, _reason(error)))
                log(f"warning: the checkpoint of step {step} does not restore ({_reason(error)}); trying the "
                    "previous one")
                continue
            for bad, _ in failures:
                aside = self.directory / f"{bad}.unreadable"
                if jax.process_index() == 0 and not aside.exists():
                    os.rename(self.directory / str(bad), aside)
                log(f"skipped the unreadable checkpoint of step {bad}: moved aside to {aside} for inspection")
            if failures:
                self.manager.reload()
            return step, state, config
        if failures:
            raise CheckpointRestoreError(
                f"no checkpoint in {self.directory} restores: "
                + "; ".join(f"step {s}: {reason}" for s, reason in failures)
                + ". Move the folder away (or use a new --workdir) to start over")
        return None

    def restore(self, step: int, abstract_state: Any, iterator: Any) -> tuple[Any, dict]:
        """The state at `step` (placed as `abstract_state`'s shardings); `iterator` is moved to its saved position."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                  data_iter=grain.checkpoint.CheckpointRestore(iterator),
                                  config=ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        return restored.state, restored.config

    def wait(self) -> None:
        with self._failures(None):
            self.manager.wait_until_finished()
        self._saving = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            with contextlib.suppress(Exception):  # a failed save was reported by wait()
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
