"""The device mesh (`data` x `fsdp`), the one set of sharding rules, and the refusal of configs that cannot run.

Rules (MaxText / big_vision style, kept to one function, `partition_spec`):
  - a parameter (or an optimizer moment, which has the parameter's path suffix and shape) with at least
    `mesh.fsdp_min_size` elements is split over `fsdp` along its largest dimension divisible by the fsdp size;
  - everything else (biases, norm scales, small kernels, scalars such as the optimizer count) is replicated;
  - parameters are replicated over `data`; the batch is split over both axes: P(("data", "fsdp")).
The mesh uses Auto axis types (jax.make_mesh defaults to Explicit, which breaks the jit(in_shardings=...)
style used here: docs/stack.md §4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from customnet_jax.experiment import Config, MeshConfig

AXES = ("data", "fsdp")
BATCH_SPEC = P(AXES)


class ConfigError(ValueError):
    """A training config that cannot run on these devices; the message names the fix."""


def mesh_shape(mesh_config: MeshConfig, num_devices: int) -> tuple[int, int]:
    """(data, fsdp) sizes; data = -1 means every device not used by fsdp."""
    fsdp = mesh_config.fsdp
    data = mesh_config.data if mesh_config.data != -1 else max(num_devices // max(fsdp, 1), 1)
    return data, fsdp


def check_config(config: Config, num_devices: int, process_count: int = 1) -> tuple[int, int]:
    """Refuse, before anything is compiled, a config that cannot run; return the mesh (data, fsdp) sizes.

    All problems are reported at once, each with the setting to change.
    """
    train, problems = config.train, []
    if config.mesh.fsdp < 1 or (config.mesh.data < 1 and config.mesh.data != -1):
        raise ConfigError(f"mesh data={config.mesh.data}, fsdp={config.mesh.fsdp}: sizes must be >= 1 "
                          "(data may be -1: all devices not used by fsdp); set --set mesh.data=N / --set mesh.fsdp=M")
    data, fsdp = mesh_shape(config.mesh, num_devices)
    size = data * fsdp
    if size > num_devices:
        problems.append(f"the mesh data={data} x fsdp={fsdp} needs {size} devices but only {num_devices} exist; "
                        f"choose --set mesh.data=N / --set mesh.fsdp=M with data * fsdp <= {num_devices}")
    elif config.mesh.data == -1 and num_devices % fsdp:
        problems.append(f"mesh.fsdp={fsdp} does not divide the {num_devices} devices; with mesh.data=-1 "
                        "(all devices) choose an fsdp size that divides the device count")
    if process_count > 1 and size != num_devices:
        problems.append(f"a multi-host run must use every device: data * fsdp = {size} but there are "
                        f"{num_devices}; set --set mesh.data=N / --set mesh.fsdp=M (or mesh.data=-1)")
    accum = train.grad_accum_steps
    if accum < 1:
        problems.append(f"train.grad_accum_steps={accum}: must be >= 1")
    elif train.batch_size % size:
        problems.append(f"train.batch_size={train.batch_size} is not divisible by the data-parallel size "
                        f"{size} (data {data} x fsdp {fsdp}: the batch is split over both axes); use a batch "
                        f"size that is a multiple of {size}, or change the mesh")
    elif train.batch_size % (size * accum):
        problems.append(f"train.grad_accum_steps={accum} does not divide the per-device batch "
                        f"{train.batch_size // size} (batch {train.batch_size} over {size} devices); each "
                        "micro-batch must split evenly over the devices: choose a batch size that is a multiple "
                        f"of {size * accum} or an accumulation count that divides {train.batch_size // size}")
    if train.batch_size % process_count:
        problems.append(f"train.batch_size={train.batch_size} does not split over {process_count} hosts")
    if train.compute_dtype not in ("float32", "bfloat16"):
        problems.append(f"train.compute_dtype={train.compute_dtype!r}: use 'float32' or 'bfloat16'")
    low, high = train.object_latent_dropout
    if not 0 <= low <= high <= 1:
        problems.append(f"train.object_latent_dropout={train.object_latent_dropout}: need 0 <= low <= high <= 1")
    for name in ("image_dropout", "text_dropout"):
        if not 0 <= getattr(train, name) <= 1:
            problems.append(f"train.{name}={getattr(train, name)}: must be a probability in [0, 1]")
    if train.num_steps < 1 or train.checkpoint_every < 1 or train.log_every < 1:
        problems.append("train.num_steps, train.checkpoint_every and train.log_every must be >= 1")
    warmup, cooldown = train.warmup_steps, train.cooldown_steps
    if warmup < 0 or cooldown < 0 or warmup + cooldown > train.num_steps:
        problems.append(f"train.warmup_steps={warmup} and train.cooldown_steps={cooldown} must be >= 0 and "
                        f"together fit in train.num_steps={train.num_steps}")
    if train.object_loss_weight <= 0:
        problems.append(f"train.object_loss_weight={train.object_loss_weight}: must be > 0 (1: plain MSE)")
    if not 0 <= train.ema_decay < 1:
        problems.append(f"train.ema_decay={train.ema_decay}: use 0 (no EMA) or a decay in (0, 1)")
    if problems:
        raise ConfigError("this training config cannot run:\n  - " + "\n  - ".join(problems))
    return data, fsdp


def make_mesh(mesh_config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp) mesh with Auto axes over `devices` (default: all), the first data * fsdp of them."""
    devices = list(jax.devices() if devices is None else devices)
    data, fsdp = mesh_shape(mesh_config, len(devices))
    if data * fsdp > len(devices):
        raise ConfigError(f"mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices; {len(devices)} available")
    chosen = devices[:data * fsdp]
    if len(chosen) == len(jax.devices()):
        return jax.make_mesh((data, fsdp), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=chosen)
    return Mesh(np.array(chosen).reshape(data, fsdp), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def partition_spec(path: Sequence[Any], shape: Sequence[int], fsdp: int, min_size: int) -> P:
    """The sharding rule for one array (parameter, optimizer moment, EMA copy) from its path and shape."""
    del path  # the rule is by shape; kept in the signature so that per-name exceptions have one place to go
    if fsdp <= 1 or len(shape) < 2 or math.prod(shape) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: (shape[d], d), reverse=True):
        if shape[dim] % fsdp == 0:
            return P(*[("fsdp" if d == dim else None) for d in range(len(shape))])
    return P()


def _names(keypath: tuple) -> tuple:
    out = []
    for key in keypath:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                out.append(getattr(key, attr))
                break
    return tuple(out)


def tree_shardings(mesh: Mesh, tree: Any, min_size: int) -> Any:
    """NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs) by `partition_spec`."""
    fsdp = mesh.shape["fsdp"]

    def leaf(keypath, x):
        return NamedSharding(mesh, partition_spec(_names(keypath), tuple(np.shape(x)), fsdp, min_size))

    return jax.tree_util.tree_map_with_path(leaf, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, BATCH_SPEC)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put_global(tree: Any, shardings: Any) -> Any:
    """Host arrays (the same on every process) -> global jax.Arrays with `shardings` (works multi-host)."""

    def put(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree, shardings)


def global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This host's rows of the batch -> global arrays split over (data, fsdp)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
