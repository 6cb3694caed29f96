"""Train CustomNet (or Zero-1-to-3) with sharded data + FSDP parallelism and exact resume.

    python train.py --config configs/customnet.py --workdir runs/customnet [--set train.batch_size=48 ...]
    python train.py --config configs/tiny.py --workdir /tmp/tiny --synthetic-data raw      # smoke run, no data

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="an experiment config file (configs/<name>.py)")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, the exported model/")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue from the latest complete checkpoint in the workdir (default: on)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field (repeatable), e.g. --set train.learning_rate=1e-5")
    parser.add_argument("overrides_positional", nargs="*", metavar="SECTION.FIELD=VALUE",
                        help="overrides may also be given without --set")
    parser.add_argument("--mesh-data", type=int, help="data-parallel mesh size (-1: all devices not in fsdp)")
    parser.add_argument("--mesh-fsdp", type=int, help="FSDP mesh size (parameters split over it)")
    parser.add_argument("--synthetic-data", choices=("raw", "precomputed"),
                        help="train on random in-memory examples of this batch form instead of the data pipeline")
    parser.add_argument("--synthetic-examples", type=int, default=64, help="how many random examples")
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


def main(argv: list[str] | None = None, make_iterator=None) -> dict:
    """The CLI; `make_iterator` (tests) replaces the data pipeline's customnet_jax.data.make_iterator."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    init_distributed(args)

    from customnet_jax.config import load_config, override
    from customnet_jax.train import synthetic
    from customnet_jax.train.checkpoint import CheckpointRestoreError, CheckpointSaveError, WorkdirInUse
    from customnet_jax.train.loop import train
    from customnet_jax.train.nonfinite import NonFiniteTrainingError
    from customnet_jax.train.sharding import ConfigError

    config = override(load_config(args.config), args.overrides + args.overrides_positional)
    mesh = []
    if args.mesh_data is not None:
        mesh.append(f"mesh.data={args.mesh_data}")
    if args.mesh_fsdp is not None:
        mesh.append(f"mesh.fsdp={args.mesh_fsdp}")
    config = override(config, mesh)
    if args.synthetic_data and make_iterator is None:
        make_iterator = functools.partial(synthetic.make_iterator, num_examples=args.synthetic_examples,
                                          form=args.synthetic_data)
    try:
        return train(config, args.workdir, make_iterator=make_iterator, resume=args.resume)
    except (ConfigError, WorkdirInUse, FileExistsError, NonFiniteTrainingError, CheckpointRestoreError,
            CheckpointSaveError) as error:  # the user's to fix or know: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    result = main()
    raise SystemExit(0 if result["stopped"] in ("done", "preempted") else 1)
