"""Released checkpoints -> a model folder (`customnet_jax.model_folder`), and zero123 -> CustomNet initialisation.

`convert_checkpoint` reads any supported format (`layouts.open_source`), sizes the model config from the
tensor shapes (or takes `config`), imports tensor by tensor with the whole-model name rules, optionally turns
a Zero-1-to-3 model into a trainable CustomNet (text K/V added, text encoder from a CLIP folder, conv_in
widened 8 -> 12 for the composition model), and writes the folder atomically with its provenance.
Peak memory is about one copy of the model: the source is read lazily, one tensor at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import hashlib
import json
import pathlib
import re
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

import customnet_jax
from customnet_jax.convert.layouts import apply_hints, open_clip_text, open_source
from customnet_jax.convert.schedules import diffusion_of
from customnet_jax.convert.shapes import infer_config, text_from_shapes
from customnet_jax.convert.source import EMA_PREFIX, TEXT_PREFIX, Source
from customnet_jax.convert.tensors import CheckpointFormatError, LazyTensor
from customnet_jax.convert.writers import SafetensorsWriter
from customnet_jax.diffusion.schedule import DiffusionConfig
from customnet_jax.model_files import check_replaceable, clean_leftovers
from customnet_jax.model_folder import save_model_folder
from customnet_jax.models.build import abstract_model
from customnet_jax.models.clip import CLIPTextConfig, CLIPTextEncoder
from customnet_jax.models.conv_in import CONV_IN, widen_conv_in
from customnet_jax.models.customnet import CustomNet, CustomNetConfig
from customnet_jax.models.init import initial_values
from customnet_jax.models.param_rules import path_name
from customnet_jax.models.params import param_shapes
from customnet_jax.models.unet import UNetConfig
from customnet_jax.text import ASSETS as DEFAULT_TOKENIZER
from customnet_jax.weights.clip_names import clip_text_rules
from customnet_jax.weights.customnet_names import IGNORED, customnet_rules
from customnet_jax.weights.rules import CheckpointMismatchError, Path, import_tensors, prefixed

EXTRA_TENSORS = "extra_tensors.safetensors"  # source tensors the model does not use, kept for a faithful export
TEXT_KV_INITS = {"random": "torch_uniform", "zeros": "zeros"}  # --text-kv-init -> init rule
TEXT_KV_KERNEL = re.compile(r"/to_[kv]_text/kernel$")
Log = Callable[[str], None]


def default_config(format: str) -> CustomNetConfig:
    """Full-size config of a format (configs/customnet.py or configs/zero123.py's model); sizes are then fitted."""
    if format == "customnet":
        return CustomNetConfig()
    return CustomNetConfig(unet=UNetConfig(text_context=False), text_encoder=None)


@functools.cache
def model_shapes(config: CustomNetConfig) -> Mapping[Path, tuple[int, ...]]:
    """Parameter shapes of `CustomNet(config)`, built abstractly (nothing allocated); cached per config."""
    return types.MappingProxyType(param_shapes(abstract_model(lambda: CustomNet(config, rngs=nnx.Rngs(0)))))


def sha256_file(path: pathlib.Path, progress: bool = False) -> str:
    """Hex sha256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    bar = _bar(path.stat().st_size, f"sha256 {path.name}", progress)
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
            bar.update(len(block))
    bar.close()
    return digest.hexdigest()


def _bar(total: int, description: str, enabled: bool) -> Any:
    return tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled,
                leave=False, dynamic_ncols=True)


def _counting(tensors: Mapping[str, LazyTensor], keys: set[str], bar: Any) -> dict[str, LazyTensor]:
    """`tensors` with the ones in `keys` advancing `bar` by their size the first time they are read, and refused
    when they hold NaN or inf (named by their checkpoint key)."""
    seen: set[str] = set()

    def wrap(key: str, tensor: LazyTensor) -> LazyTensor:
        def read() -> np.ndarray:
            array = tensor.read()
            if jnp.issubdtype(array.dtype, jnp.floating) and not np.all(np.isfinite(array)):
                raise CheckpointFormatError(f"tensor {key} of the checkpoint holds NaN or inf values: refusing to "
                                            "convert weights that would make black or noise pictures")
            if key not in seen:
                seen.add(key)
                bar.update(tensor.nbytes)
            return array
        return LazyTensor(tensor.shape, tensor.dtype, read)

    return {k: (wrap(k, t) if k in keys else t) for k, t in tensors.items()}


def read_params(tensors: Mapping[str, LazyTensor], config: CustomNetConfig, ignore: tuple[str, ...] = (),
                progress: bool = False, description: str = "converting") -> dict[Path, np.ndarray]:
    """CustomNet-named lazy tensors -> float32 parameters of `CustomNet(config)`, one tensor at a time."""
    rules = customnet_rules(config)
    keys = {r.torch_key for r in rules}
    bar = _bar(sum(tensors[k].nbytes for k in keys if k in tensors), description, progress)
    try:
        return import_tensors(_counting(tensors, keys, bar), rules, model_shapes(config), ignore=(*IGNORED, *ignore))
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------- zero123 -> CustomNet

def text_kv_params(shapes: Mapping[Path, tuple[int, ...]], params: Mapping[Path, Any], init: str,
                   seed: int) -> dict[Path, np.ndarray]:
    """The text K/V kernels that `shapes` has and `params` lacks, by one init rule: zeros (the model then predicts
    exactly as Zero-1-to-3) or, as the original, PyTorch's nn.Linear init U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    if init not in TEXT_KV_INITS:
        raise ValueError(f"text K/V init {init!r}: use one of {tuple(TEXT_KV_INITS)}")
    missing = {path: shape for path, shape in shapes.items()
               if path not in params and TEXT_KV_KERNEL.search(path_name(path))}
    return initial_values(missing, seed, ((TEXT_KV_KERNEL.pattern, TEXT_KV_INITS[init]),), "text K/V init")


def text_encoder_params(source: Source, config: CLIPTextConfig, progress: bool) -> dict[Path, np.ndarray]:
    """The text encoder of a transformers CLIP folder as `text_encoder/...` parameters of CustomNet."""
    rules = prefixed(clip_text_rules(config), TEXT_PREFIX, ("text_encoder",))
    shapes = param_shapes(abstract_model(lambda: CLIPTextEncoder(config, rngs=nnx.Rngs(0))))
    shapes = {("text_encoder", *p): s for p, s in shapes.items()}
    keys = {r.torch_key for r in rules}
    bar = _bar(sum(source.tensors[k].nbytes for k in keys if k in source.tensors), "text encoder", progress)
    try:
        return import_tensors(_counting(source.tensors, keys, bar), rules, shapes, ignore=("*position_ids",))
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------- the folder

def nest(params: Mapping[Path, Any]) -> dict:
    """Flat {path: array} -> the nested dict `model_folder.param_tree` gives (list indices as int keys)."""
    tree: dict = {}
    for path, value in params.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def _file_record(path: pathlib.Path, progress: bool) -> dict[str, Any]:
    return {"file": path.name, "path": str(path.resolve()), "size": path.stat().st_size,
            "sha256": sha256_file(path, progress)}


def _tokenizer_folder(tokenizer: str | pathlib.Path | None, text_encoder: str | pathlib.Path | None) -> pathlib.Path:
    """--tokenizer, else tokenizer files beside / next to the CLIP folder, else the shipped CLIP tokenizer."""
    names = ("vocab.json", "merges.txt")
    if tokenizer is not None:
        folder = pathlib.Path(tokenizer)
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"tokenizer folder {folder} lacks {missing}")
        return folder
    if text_encoder is not None:
        for folder in (pathlib.Path(text_encoder), pathlib.Path(text_encoder).parent / "tokenizer"):
            if all((folder / n).is_file() for n in names):
                return folder
    return DEFAULT_TOKENIZER


def _check_tokenizer(folder: pathlib.Path, config: CLIPTextConfig) -> None:
    vocab = json.loads((folder / "vocab.json").read_text())
    if len(vocab) > config.vocab_size:
        raise ValueError(f"tokenizer {folder} has {len(vocab)} tokens; the text encoder embeds only "
                         f"{config.vocab_size}")


def _with_text_encoder(target: CustomNetConfig, text_source: Any, config: CustomNetConfig | None,
                       text_encoder: str | pathlib.Path) -> CustomNetConfig:
    """The target config with the CLIP text encoder of `text_source` (its sizes read from its weights)."""
    text_base = dataclasses.replace((config.text_encoder if config else None) or CLIPTextConfig(),
                                    **text_source.hints.get("text_encoder", {}))
    try:
        text_config = text_from_shapes({k: t.shape for k, t in text_source.tensors.items()}, text_base)
    except KeyError as error:
        raise CheckpointFormatError(f"{text_encoder}: CLIP text weights lack {error.args[0]}") from error
    return dataclasses.replace(target, unet=dataclasses.replace(target.unet, text_context=True),
                               text_encoder=text_config)


def _describe(input: pathlib.Path, source: Any, ema: bool, log: Log) -> None:
    log(f"{input}: {source.format} checkpoint, {len(source.tensors)} tensors"
        + (" (EMA UNet weights)" if ema else "") + f", read with {source.info.get('reader')}")
    if source.info.get("ema_available"):
        log("note: this file also holds EMA weights (model_ema.*); --ema uses them (zero123's demo does)")
    if source.info.get("objects_not_loaded"):
        log(f"note: objects outside the weights were not loaded: {source.info['objects_not_loaded'][:5]}")


def convert_checkpoint(input: str | pathlib.Path, output: str | pathlib.Path, *, format: str = "auto",
                       ema: bool = False, text_encoder: str | pathlib.Path | None = None,
                       tokenizer: str | pathlib.Path | None = None, text_kv_init: str = "random",
                       background: bool = False, config: CustomNetConfig | None = None, seed: int = 0,
                       progress: bool = True, overwrite: bool = False, prediction_type: str | None = None,
                       log: Log = print) -> pathlib.Path:
    """Convert a released checkpoint into a model folder that `model_folder.load_model` reads.

    format: auto | customnet | zero123 | diffusers-zero123 (clip-text folders go in `text_encoder`).
    ema: zero123 files: take the `model_ema.*` copy of the UNet.
    text_encoder: a transformers CLIP text folder; with a zero123 input it makes a CustomNet ready for
      training (text K/V initialised by `text_kv_init`: 'random' as the original, 'zeros' to start exactly
      as Zero-1-to-3).
    background: widen conv_in to 12 input channels with zeros (the composition model's initialisation).
    config: the model config; default: the format's full-size config, sizes fitted to the checkpoint.
    prediction_type: what the UNet predicts, for files that do not record it (`convert.schedules`).
    """
    if text_kv_init not in TEXT_KV_INITS:
        raise ValueError(f"--text-kv-init {text_kv_init!r}: use one of {tuple(TEXT_KV_INITS)}")
    input, output = pathlib.Path(input), pathlib.Path(output)
    check_replaceable(output.absolute(), overwrite)
    clean_leftovers(output.absolute(), log)
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open_source(input, format, ema))
        if source.format == "clip-text":
            raise CheckpointFormatError(f"{input} is a CLIP text encoder alone, not a whole model: pass it as "
                                        "--text-encoder together with a zero123 --input")
        _describe(input, source, ema, log)
        is_customnet = source.format == "customnet"
        base = config if config is not None else apply_hints(default_config(source.format), source.hints)
        source_config = infer_config(source.tensors, base, text=is_customnet, fit_sizes=config is None)

        # Everything that can be refused is checked before the weights are read.
        target = source_config
        text_source = None
        if text_encoder is not None:
            if is_customnet:
                raise ValueError("--text-encoder is for zero123 inputs: this CustomNet checkpoint has its own")
            text_source = stack.enter_context(open_clip_text(text_encoder))
            target = _with_text_encoder(target, text_source, config, text_encoder)
        elif not is_customnet and text_kv_init != "random":
            log("note: --text-kv-init only matters with --text-encoder (zero123 -> CustomNet)")
        if background:
            channels = 3 * target.latent_channels
            if target.unet.in_channels == channels:
                raise ValueError(f"--background: the checkpoint's UNet already takes {channels} input channels")
            target = dataclasses.replace(target, unet=dataclasses.replace(target.unet, in_channels=channels))
        tokenizer_folder = None
        if target.text_encoder is not None:
            tokenizer_folder = _tokenizer_folder(tokenizer, text_encoder)
            _check_tokenizer(tokenizer_folder, target.text_encoder)
        shapes = model_shapes(target) if target != source_config else None

        diffusion = diffusion_of(input, source.metadata, source.tensors, prediction_type, log)
        params = read_params(source.tensors, source_config, source.ignore, progress)
        provenance_init: dict[str, Any] = {}
        text_record = None
        if text_source is not None:
            params.update(text_encoder_params(text_source, target.text_encoder, progress))
            text_record = {**_file_record(text_source.files[0], progress), "format": "clip-text"}
        if background:
            params[CONV_IN] = widen_conv_in(params[CONV_IN], target.unet.in_channels)
            provenance_init["background"] = "conv_in widened with zero kernels for the background latent"
        if shapes is not None:
            added = text_kv_params(shapes, params, text_kv_init, seed)
            if added:
                params.update(added)
                provenance_init["text_kv"] = text_kv_init
                provenance_init["seed"] = seed
            _check_complete(params, shapes)

        used = {r.torch_key for r in customnet_rules(source_config)}
        extras = {k: t for k, t in source.tensors.items() if k not in used and not k.startswith(EMA_PREFIX)}
        provenance = _provenance(input, source, ema, text_record, tokenizer_folder, provenance_init,
                                 config is not None, len(extras), progress)
        return _write_folder(output, params, target, diffusion, provenance, tokenizer_folder, extras,
                             list(source.tensors), overwrite, log)


def _provenance(input: pathlib.Path, source: Any, ema: bool, text_record: dict | None,
                tokenizer_folder: pathlib.Path | None, initialisation: dict, config_given: bool, extra_tensors: int,
                progress: bool) -> dict[str, Any]:
    """Where a converted model folder came from: the source files and their hashes, the initialisation of what
    the source lacked, the converter."""
    files = (_file_record(input, progress) if input.is_file() else
             {"folder": str(input.resolve()), "files": [_file_record(f, progress) for f in source.files]})
    return {
        "source": {**files, "format": source.format, "ema": ema,
                   **{k: v for k, v in source.info.items() if k not in ("ema", "ema_available")}},
        "text_encoder": text_record,
        "tokenizer": str(tokenizer_folder) if tokenizer_folder else None,
        "initialisation": initialisation or None,
        "config_from": "--config" if config_given else "checkpoint shapes + full-size defaults",
        "converter": {"tool": "convert_weights.py", "customnet_jax": customnet_jax.__version__,
                      "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
        "extra_tensors": extra_tensors,
    }


def _check_complete(params: Mapping[Path, np.ndarray], shapes: Mapping[Path, tuple[int, ...]]) -> None:
    missing = sorted(str(p) for p in set(shapes) - set(params))
    unexpected = sorted(str(p) for p in set(params) - set(shapes))
    wrong = [f"{p}: {params[p].shape} vs {s}" for p, s in shapes.items() if p in params and params[p].shape != s]
    if missing or unexpected or wrong:
        raise CheckpointMismatchError(f"the converted parameters do not fit the target model: missing {missing[:5]}, "
                                      f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")


def _write_folder(output: pathlib.Path, params: dict[Path, np.ndarray], config: CustomNetConfig,
                  diffusion: DiffusionConfig, provenance: dict, tokenizer: pathlib.Path | None,
                  extras: Mapping[str, LazyTensor], key_order: list[str], overwrite: bool, log: Log) -> pathlib.Path:
    """save_model_folder with the extra tensors added before the folder is published (atomically)."""
    # jax arrays, one at a time (orbax saves those without a staging copy); waiting for each transfer lets
    # its numpy source go at once: async device_puts would keep all the sources alive, a second model copy
    for path in list(params):
        params[path] = jax.block_until_ready(jax.device_put(params.pop(path)))

    def write_extras(staging: pathlib.Path) -> None:
        if not extras:
            return
        items = [(k, t.shape, t.dtype) for k, t in extras.items()]
        writer = SafetensorsWriter(staging / EXTRA_TENSORS, items, {"source_key_order": json.dumps(key_order)})
        try:
            for tensor in extras.values():
                writer.write(tensor.read())
            writer.close()
        except BaseException:
            writer.abort()
            raise

    save_model_folder(output, nest(params), config, diffusion, provenance, tokenizer=tokenizer, overwrite=overwrite,
                      extra=write_extras)
    size = sum(int(np.prod(v.shape)) for v in params.values())
    log(f"wrote {output}: {size:,} parameters ({'CustomNet' if config.text_encoder else 'Zero-1-to-3'}, "
        f"UNet in_channels {config.unet.in_channels}), {len(extras)} extra tensors kept for export")
    return output
