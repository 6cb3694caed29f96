"""Train CustomNet (or Zero-1-to-3) with sharded data + FSDP parallelism and exact resume.

    python train.py --config configs/customnet.py --workdir runs/customnet [--set train.batch_size=48 ...]
    python train.py --config configs/tiny.py --workdir /tmp/tiny --set data.source=random_raw   # smoke run, no data

Everything about the run is a config field: the config file sets them, each `--set section.field=value`
overrides one (checked against the field's type), e.g. `--set mesh.data=2 --set mesh.fsdp=4` for the mesh, or
`--set data.source=random_precomputed --set data.random_examples=16` for random in-memory examples.

Multi-host: run the same command on every host; `jax.distributed.initialize()` is called when
--coordinator/--num-processes/--process-id are given, or when the cluster environment announces several
hosts (SLURM, Open MPI, TPU pods, JAX_COORDINATOR_ADDRESS); --distributed on|off forces it.
Resumes from <workdir>/checkpoints unless --no-resume; SIGTERM writes a checkpoint and stops.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the package imports jax: train.py imports it after jax.distributed is set up
    from customnet_jax.experiment import Config

RANDOM_SOURCES = {"random_raw": "raw", "random_precomputed": "precomputed"}  # data.source -> batch form


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="an experiment config file (configs/<name>.py)")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, the exported model/")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue from the latest complete checkpoint in the workdir (default: on)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field (repeatable), e.g. --set train.learning_rate=1e-5")
    group = parser.add_argument_group("multi-host")
    group.add_argument("--distributed", choices=("auto", "on", "off"), default="auto",
                       help="call jax.distributed.initialize(): auto = when flags or the cluster ask for it")
    group.add_argument("--coordinator", help="coordinator address host:port (process 0)")
    group.add_argument("--num-processes", type=int, help="number of processes (hosts)")
    group.add_argument("--process-id", type=int, help="this process's index")
    return parser.parse_args(argv)


def _cluster_has_several_hosts() -> bool:
    """The environment of a multi-host launch: an explicit coordinator, SLURM / Open MPI with several tasks, or
    a TPU pod slice with several workers (jax.distributed.initialize() reads the details from it)."""
    if any(v in os.environ for v in ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")):
        return True
    for count in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if int(os.environ.get(count, "1") or 1) > 1:
            return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def init_distributed(args: argparse.Namespace) -> None:
    """jax.distributed.initialize() before anything touches the devices, when asked or when on a cluster."""
    import jax

    flags = {"coordinator_address": args.coordinator, "num_processes": args.num_processes,
             "process_id": args.process_id}
    given = {k: v for k, v in flags.items() if v is not None}
    if args.distributed == "off" or (args.distributed == "auto" and not given and not _cluster_has_several_hosts()):
        return
    jax.distributed.initialize(**given)


def load(args: argparse.Namespace) -> Config:
    """The config file with the --set overrides; a bad file, field or value is a one-line error, exit 2."""
    from customnet_jax.config_files import load_config, override

    try:
        return override(load_config(args.config), args.overrides)
    except (ValueError, FileNotFoundError) as error:  # ConfigValueError, CustomNetConfig's checks, a missing file
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def random_iterator(config: Config) -> Callable | None:
    """The make_iterator of the "random_*" data sources (random in-memory examples), None for the others."""
    from customnet_jax.train import synthetic

    form = RANDOM_SOURCES.get(config.data.source)
    if form is None:
        return None
    return functools.partial(synthetic.make_iterator, num_examples=config.data.random_examples, form=form)


def main(argv: list[str] | None = None, make_iterator: Callable | None = None) -> dict:
    """The CLI; `make_iterator` (tests) replaces the data source config.data.source names."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    init_distributed(args)  # first: the config files import jax, which must not start its backends before it
    config = load(args)

    from customnet_jax.train.checkpoint import CheckpointRestoreError, CheckpointSaveError, WorkdirInUse
    from customnet_jax.train.loop import train
    from customnet_jax.train.nonfinite import NonFiniteTrainingError
    from customnet_jax.train.sharding import ConfigError

    try:
        return train(config, args.workdir, make_iterator=make_iterator or random_iterator(config),
                     resume=args.resume)
    except (ConfigError, WorkdirInUse, FileExistsError, NonFiniteTrainingError, CheckpointRestoreError,
            CheckpointSaveError) as error:  # the user's to fix or know: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    result = main()
    raise SystemExit(0 if result["stopped"] in ("done", "preempted") else 1)
