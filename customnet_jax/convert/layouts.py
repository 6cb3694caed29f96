"""Checkpoint layouts -> one view in CustomNet names (configs sized from shapes: `convert.shapes`).

Every input format is presented as a `Source`: a mapping from the names of the released `customnet_v1.pt`
(docs/model.md §9; `customnet_names.customnet_rules`) to lazily read tensors, so that one set of name rules
imports them all:
  customnet          flat state dict (customnet_v1.pt, customnet_inpaint_v1.pt)
  zero123            PyTorch-Lightning .ckpt, weights under `state_dict`; `ema` swaps in the `model_ema.*` copy
  diffusers-zero123  a diffusers folder (unet/, vae/, image_encoder/, cc_projection/), renamed to LDM names
  clip-text          a transformers CLIPTextModel folder (the text encoder a zero123 file lacks)
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

from customnet_jax.convert.diffusers_layout import open_diffusers_zero123
from customnet_jax.convert.readers import open_checkpoint
from customnet_jax.convert.source import (
    EMA_PREFIX,
    FORMATS,
    TEXT_PREFIX,
    Source,
    checkpoint_state,
    read_json,
    weights_file,
)
from customnet_jax.convert.tensors import CheckpointFormatError, LazyTensor
from customnet_jax.models.customnet import CustomNetConfig
from customnet_jax.weights.customnet_names import TEXT_ENCODER_PREFIX, UNET_PREFIX
from customnet_jax.weights.rules import summarize_keys

# ---------------------------------------------------------------------------------------------- detection

def detect_format(path: str | pathlib.Path) -> str:
    """The format of a checkpoint file or folder (opens files lazily: nothing but the pickle is read)."""
    path = pathlib.Path(path)
    if path.is_dir():
        return _folder_format(path)
    with open_checkpoint(path) as checkpoint:
        state, _ = checkpoint_state(checkpoint)
        return _keys_format(path, state)


def _folder_format(path: pathlib.Path) -> str:
    if (path / "params").is_dir() and (path / "config.json").is_file():
        raise CheckpointFormatError(f"{path} is already a model folder of ours; export it with --to-pytorch")
    if (path / "unet").is_dir() and (path / "vae").is_dir():
        return "diffusers-zero123"
    if weights_file(path, ("model.safetensors", "pytorch_model.bin"), required=False) is not None:
        return "clip-text"
    raise CheckpointFormatError(
        f"{path} is a folder of unknown layout: expected a diffusers zero123 folder (unet/, vae/, image_encoder/, "
        f"cc_projection/) or a transformers CLIP text folder (config.json + model.safetensors); it holds "
        f"{sorted(p.name for p in path.iterdir())[:10]}")


def _keys_format(path: pathlib.Path, state: Mapping[str, Any]) -> str:
    keys = list(state)
    if any(k.startswith(UNET_PREFIX) for k in keys):
        text = any(k.startswith(TEXT_ENCODER_PREFIX) or (k.startswith(UNET_PREFIX) and "_text." in k) for k in keys)
        return "customnet" if text else "zero123"
    if any(k.endswith("embeddings.token_embedding.weight") for k in keys):
        return "clip-text"
    hint = ""
    if "conv_in.weight" in state and any(k.startswith("down_blocks.") for k in keys):
        hint = " It looks like one diffusers model file: pass the whole diffusers zero123 folder instead."
    raise CheckpointFormatError(
        f"{path}: unknown checkpoint layout (no `{UNET_PREFIX}*` UNet and no CLIP text encoder).{hint} "
        f"It holds {len(keys)} tensors:\n{summarize_keys(keys)}")


# ---------------------------------------------------------------------------------------------- opening

def open_source(path: str | pathlib.Path, format: str = "auto", ema: bool = False) -> Source:
    """Open a checkpoint file or folder of any supported format as CustomNet-named lazy tensors."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if format not in ("auto", *FORMATS):
        raise ValueError(f"unknown --format {format!r}; choose auto or one of {FORMATS}")
    if path.is_dir():
        detected = _folder_format(path)
        if format not in ("auto", detected):
            raise CheckpointFormatError(f"{path} is a {detected} folder, not {format}")
        source = open_diffusers_zero123(path) if detected == "diffusers-zero123" else open_clip_text(path)
    else:
        checkpoint = open_checkpoint(path)
        try:
            state, info = checkpoint_state(checkpoint)
            detected = _keys_format(path, state)
        except BaseException:
            checkpoint.close()
            raise
        info.update(reader=checkpoint.reader, detected_format=detected)
        chosen = detected if format == "auto" else format
        source = Source(path, chosen, state, [path], info=info, _checkpoints=[checkpoint])
        if chosen == "clip-text":
            source.tensors = _clip_text_view(state, path)
    if ema:
        _use_ema(source)
    else:
        source.ignore = (EMA_PREFIX + "*",)
        if any(k.startswith(EMA_PREFIX) for k in source.tensors):
            source.info["ema_available"] = True
    source.info["ema"] = ema
    return source


def _ema_key(key: str) -> str:
    """LitEma's name of a UNet parameter: `model.` dropped, the remaining dots removed."""
    return EMA_PREFIX + key[len("model."):].replace(".", "")


def _use_ema(source: Source) -> None:
    """Replace the raw UNet weights by their `model_ema.*` copies (zero123's demo samples with these)."""
    state = source.tensors
    if not any(k.startswith(EMA_PREFIX) for k in state):
        raise CheckpointFormatError(f"{source.path} holds no EMA weights (no {EMA_PREFIX}* keys); drop --ema")
    unet = [k for k in state if k.startswith(UNET_PREFIX)]
    lacking = [k for k in unet if _ema_key(k) not in state]
    if lacking:
        raise CheckpointFormatError(f"{source.path}: --ema, but {len(lacking)} UNet weights have no EMA copy:\n"
                                    + summarize_keys(lacking))
    view = {k: v for k, v in state.items() if not k.startswith(EMA_PREFIX)}
    for key in unet:
        view[key] = state[_ema_key(key)]
    source.tensors = view


def _clip_text_view(state: Mapping[str, LazyTensor], path: pathlib.Path) -> dict[str, LazyTensor]:
    """transformers CLIPTextModel / CLIPModel tensors (with or without `text_model.`) -> CustomNet text names."""
    anchor = [k for k in state if k.endswith("embeddings.token_embedding.weight") and "vision" not in k]
    if not anchor:
        raise CheckpointFormatError(f"{path}: no CLIP text encoder inside (no *embeddings.token_embedding.weight)")
    prefix = anchor[0][: -len("embeddings.token_embedding.weight")]
    return {TEXT_PREFIX + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def text_config_hints(config: Mapping[str, Any]) -> dict[str, Any]:
    """CLIPTextConfig fields from a transformers config.json (a CLIPTextConfig or a CLIPModel's text_config)."""
    config = config.get("text_config", config)
    names = {"num_attention_heads": "heads", "layer_norm_eps": "layer_norm_eps", "hidden_act": "activation"}
    return {ours: config[theirs] for theirs, ours in names.items() if theirs in config}


def open_clip_text(path: str | pathlib.Path) -> Source:
    """A transformers CLIP text model folder (config.json + model.safetensors / pytorch_model.bin)."""
    path = pathlib.Path(path)
    weights = weights_file(path, ("model.safetensors", "pytorch_model.bin"))
    checkpoint = open_checkpoint(weights)
    try:
        state, info = checkpoint_state(checkpoint)
        tensors = _clip_text_view(state, weights)
    except BaseException:
        checkpoint.close()
        raise
    info["reader"] = checkpoint.reader
    hints = {"text_encoder": text_config_hints(read_json(path / "config.json"))}
    return Source(path, "clip-text", tensors, [weights], hints=hints, info=info, _checkpoints=[checkpoint])


def apply_hints(config: CustomNetConfig, hints: Mapping[str, Mapping[str, Any]]) -> CustomNetConfig:
    """`config` with the values read from config.json files (see `diffusers_hints`, `text_config_hints`)."""
    changes: dict[str, Any] = dict(hints.get("model", {}))
    for field in ("unet", "vae", "image_encoder", "text_encoder"):
        values = hints.get(field)
        current = getattr(config, field)
        if values and current is not None:
            changes[field] = dataclasses.replace(current, **values)
    return dataclasses.replace(config, **changes) if changes else config
