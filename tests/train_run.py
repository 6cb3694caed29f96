"""Helper for tests/test_train.py: train.py's CLI with two test hooks that make a SIGKILL land at a known point.

    python tests/train_run.py [train.py arguments] --pause-after-step N [--wait-checkpoint S]
                              [--block-finalize-step K]

--pause-after-step N   after step N has finished (logged, its checkpoint started), print "PAUSED N" and sleep
                       until killed; with --wait-checkpoint S, first wait until checkpoint S is complete and no
                       save is in flight (so the kill falls between checkpoints)
--block-finalize-step K  hold orbax's background finalisation of checkpoint K (the rename of its temporary
                       folder) forever: a kill after that lands during the async save of K
The data are the config's random in-memory source (data.source "random_raw" / "random_precomputed"), wrapped
to pause in `next()` (the loop asks for the batch of step N + 1 only after step N is complete).
"""

import argparse
import asyncio
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import grain  # noqa: E402

import train  # noqa: E402


class PausingIterator(grain.DatasetIterator):
    """A grain iterator that stops (prints PAUSED and sleeps) when asked for the batch after `pause_after`."""

    def __init__(self, inner, pause_after, checkpoints, wait_checkpoint):
        super().__init__(inner)
        self.inner, self.pause_after = inner, pause_after
        self.checkpoints, self.wait_checkpoint = checkpoints, wait_checkpoint

    def __next__(self):
        done = self.inner.get_state()["next_index"]  # batches consumed so far = steps completed
        if done >= self.pause_after:
            if self.wait_checkpoint is not None:
                deadline = time.time() + 120
                while time.time() < deadline and not self._complete(self.wait_checkpoint):
                    time.sleep(0.05)
            print(f"PAUSED {done}", flush=True)
            while True:
                time.sleep(60)
        return next(self.inner)

    def _complete(self, step):
        folder = self.checkpoints
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        return str(step) in names and not any("tmp" in n for n in names)

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


def block_finalize(step: int) -> None:
    """Hold orbax's commit of checkpoint `step` (run in its background thread) forever."""
    from orbax.checkpoint._src.path import atomicity

    original = atomicity.on_commit_callback

    async def on_commit_callback(tmp_dir, **kwargs):
        if tmp_dir.get_final().name == str(step):
            print(f"BLOCKED-FINALIZE {step}", flush=True)
            await asyncio.sleep(3600)
        return await original(tmp_dir, **kwargs)

    atomicity.on_commit_callback = on_commit_callback


def main():
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--pause-after-step", type=int, required=True)
    parser.add_argument("--wait-checkpoint", type=int)
    parser.add_argument("--block-finalize-step", type=int)
    ours, rest = parser.parse_known_args()
    args = train.parse_args(rest)
    if ours.block_finalize_step is not None:
        block_finalize(ours.block_finalize_step)
    checkpoints = pathlib.Path(args.workdir).absolute() / "checkpoints"

    def make_iterator(config, **kwargs):
        inner = train.random_iterator(config)(config, **kwargs)
        return PausingIterator(inner, ours.pause_after_step, checkpoints, ours.wait_checkpoint)

    train.main(rest, make_iterator=make_iterator)


if __name__ == "__main__":
    main()
