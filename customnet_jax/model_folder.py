"""A model folder: what `sample.py` and `train.py` take as `--checkpoint` / `init_from`.

    <folder>/config.json       {"model": CustomNetConfig, "diffusion": DiffusionConfig} as JSON
    <folder>/params/           the parameters, an orbax checkpoint of the nnx.Param tree
    <folder>/tokenizer/        vocab.json + merges.txt (CustomNet models; Zero-1-to-3 has no text)
    <folder>/provenance.json   where the weights came from (file, size, sha256, format, EMA), free-form
    <folder>/checksums.json    sha256 of every parameter file, verified at load (older folders have none)

The folder is written under a temporary name and swapped in when complete (`customnet_jax.model_files`): a
reader never sees half of one, `overwrite` replaces only a model folder, NaN / inf weights are never written
nor loaded.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from customnet_jax.config_files import from_dict, to_dict
from customnet_jax.diffusion.schedule import DiffusionConfig
from customnet_jax.model_files import (
    check_finite,
    check_replaceable,
    clean_leftovers,
    publish,
    staging_folder,
    verify_checksums,
    write_checksums,
)
from customnet_jax.models.build import abstract_model
from customnet_jax.models.customnet import CustomNet, CustomNetConfig
from customnet_jax.text import ASSETS as DEFAULT_TOKENIZER

FILES = ("config.json", "params")


class NotAModelFolderError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class ModelFolder:
    path: pathlib.Path
    model: CustomNetConfig
    diffusion: DiffusionConfig
    provenance: dict[str, Any]

    @property
    def tokenizer_path(self) -> pathlib.Path | None:
        folder = self.path / "tokenizer"
        return folder if folder.is_dir() else None


def read_folder(path: str | pathlib.Path) -> ModelFolder:
    """The configs and provenance of a model folder (no weights are read)."""
    path = pathlib.Path(path).absolute()  # orbax needs absolute paths
    missing = [name for name in FILES if not (path / name).exists()]
    if not path.is_dir() or missing:
        raise NotAModelFolderError(
            f"{path} is not a model folder (missing {missing if path.is_dir() else 'the folder itself'}); make one "
            "with convert_weights.py from a PyTorch checkpoint, or use a train.py export")
    try:
        data = json.loads((path / "config.json").read_text())
        model = from_dict(CustomNetConfig, data["model"])
        diffusion = from_dict(DiffusionConfig, data.get("diffusion", {}))
    except (KeyError, TypeError, ValueError) as error:
        raise NotAModelFolderError(f"{path}/config.json is not a valid model config: {error}") from error
    provenance_file = path / "provenance.json"
    provenance = json.loads(provenance_file.read_text()) if provenance_file.is_file() else {}
    return ModelFolder(path, model, diffusion, provenance)


def param_tree(model: nnx.Module) -> dict:
    """The nnx.Param values as a nested dict (list indices as int keys)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def save_model_folder(path: str | pathlib.Path, params: dict, model_config: CustomNetConfig,
                      diffusion_config: DiffusionConfig | None = None, provenance: dict | None = None,
                      tokenizer: str | pathlib.Path | None = DEFAULT_TOKENIZER,
                      overwrite: bool = False,
                      extra: Callable[[pathlib.Path], None] | None = None) -> pathlib.Path:
    """Write a model folder atomically. `params` is `param_tree(model)` (arrays, numpy or jax); `extra(folder)`
    adds files to the staging folder before it is published. Refuses non-finite weights, naming the tensor, and
    (with `overwrite`) any existing `path` that is not a model folder, before anything is written."""
    diffusion_config = diffusion_config or DiffusionConfig()
    path = pathlib.Path(path).absolute()
    check_replaceable(path, overwrite)
    check_finite(params, f"refusing to write the model folder {path}")
    clean_leftovers(path)
    staging = staging_folder(path)
    try:
        (staging / "config.json").write_text(json.dumps(
            {"model": to_dict(model_config), "diffusion": to_dict(diffusion_config)}, indent=2))
        (staging / "provenance.json").write_text(json.dumps(provenance or {}, indent=2, default=str))
        if tokenizer is not None and not model_config.is_zero123:
            (staging / "tokenizer").mkdir()
            for name in ("vocab.json", "merges.txt"):
                shutil.copy(pathlib.Path(tokenizer) / name, staging / "tokenizer" / name)
        # this process alone writes (and syncs with no other): a multi-host train.py exports from host 0 only
        me = jax.process_index()
        only_me = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
        # synchronous, <= 1 GB in flight, uncompressed: the async default stages a host copy of every array and
        # zstd-in-OCDBT buffers the compressed output, ~2.7x a full-size model's memory (benchmarks/RESULTS.md)
        handler = ocp.PyTreeCheckpointHandler(save_concurrent_gb=1, use_compression=False,
                                              multiprocessing_options=only_me)
        ocp.Checkpointer(handler, multiprocessing_options=only_me).save(staging / "params",
                                                                        args=ocp.args.PyTreeSave(params))
        if extra is not None:
            extra(staging)
        write_checksums(staging)
        publish(staging, path, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def load_model(path: str | pathlib.Path, *, dtype: Any = jnp.float32, remat: bool = False,
               sharding: Any = None, attention: str | None = None) -> tuple[CustomNet, ModelFolder]:
    """The CustomNet of a model folder, parameters restored (placed with `sharding`: a
    jax.sharding.Sharding for all, or a function path -> Sharding; default: the first device).
    `attention`: the UNet's attention implementation (models/layers.py)."""
    folder = read_folder(path)
    verify_checksums(folder.path)
    model = abstract_model(lambda: CustomNet(folder.model, rngs=nnx.Rngs(0), dtype=dtype, remat=remat,
                                             attention=attention))
    state = nnx.state(model, nnx.Param)
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def target(keypath, leaf):
        placement = sharding(keypath) if callable(sharding) else (sharding or default)
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=placement)

    abstract = jax.tree_util.tree_map_with_path(target, nnx.to_pure_dict(state))
    try:
        restored = ocp.StandardCheckpointer().restore(folder.path / "params", abstract)
    except (ValueError, KeyError) as error:
        raise NotAModelFolderError(f"{folder.path}/params does not match {folder.path}/config.json: {error}") from error
    check_finite(restored, f"refusing to load {folder.path}/params")
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return model, folder


def tree_size(tree: dict) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
