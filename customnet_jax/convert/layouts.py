"""Checkpoint layouts -> one view in CustomNet names, and model configs sized from tensor shapes.

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
import json
import math
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from customnet_jax.convert.readers import (
    Checkpoint,
    CheckpointFormatError,
    LazyTensor,
    UnsafeCheckpointError,
    derived,
    foreign_name,
    open_checkpoint,
    unsafe_message,
)
from customnet_jax.models.clip import CLIPTextConfig, CLIPVisionConfig
from customnet_jax.models.customnet import CustomNetConfig
from customnet_jax.models.unet import UNetConfig
from customnet_jax.models.vae import VAEConfig
from customnet_jax.weights.customnet_names import (
    IMAGE_ENCODER_PREFIX,
    TEXT_ENCODER_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
)
from customnet_jax.weights.rules import summarize_keys
from customnet_jax.weights.unet_names import unet_rules
from customnet_jax.weights.vae_names import vae_rules

FORMATS = ("customnet", "zero123", "clip-text", "diffusers-zero123")
EMA_PREFIX = "model_ema."
VISUAL_PREFIX = IMAGE_ENCODER_PREFIX + "visual."
TEXT_PREFIX = TEXT_ENCODER_PREFIX + "text_model."


@dataclasses.dataclass
class Source:
    """A checkpoint seen in CustomNet names. `hints` are config values read from config.json files (numbers
    the weights cannot tell, such as attention heads); `info` goes into the model folder's provenance."""

    path: pathlib.Path
    format: str
    tensors: dict[str, LazyTensor]
    files: list[pathlib.Path]
    hints: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    _checkpoints: list[Checkpoint] = dataclasses.field(default_factory=list, repr=False)

    def close(self) -> None:
        for checkpoint in self._checkpoints:
            checkpoint.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- detection

def detect_format(path: str | pathlib.Path) -> str:
    """The format of a checkpoint file or folder (opens files lazily: nothing but the pickle is read)."""
    path = pathlib.Path(path)
    if path.is_dir():
        return _folder_format(path)
    with open_checkpoint(path) as checkpoint:
        state, _ = _state_dict(checkpoint)
        return _keys_format(path, state)


def _folder_format(path: pathlib.Path) -> str:
    if (path / "params").is_dir() and (path / "config.json").is_file():
        raise CheckpointFormatError(f"{path} is already a model folder of ours; export it with --to-pytorch")
    if (path / "unet").is_dir() and (path / "vae").is_dir():
        return "diffusers-zero123"
    if _weights_file(path, ("model.safetensors", "pytorch_model.bin"), required=False) is not None:
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


def _state_dict(checkpoint: Checkpoint) -> tuple[dict[str, LazyTensor], dict[str, Any]]:
    """The weights of a checkpoint file: a flat state dict, or a Lightning file's `state_dict`."""
    path, top = checkpoint.path, checkpoint.obj
    name = foreign_name(top)
    if name is not None:
        raise UnsafeCheckpointError(unsafe_message(path, checkpoint.foreign or [name], "the whole file"))
    if not isinstance(top, Mapping):
        raise CheckpointFormatError(f"{path} is not a checkpoint: it holds a {type(top).__name__}, not a dict of "
                                    "tensors")
    info: dict[str, Any] = {}
    state = top
    if isinstance(top.get("state_dict"), Mapping):
        state = top["state_dict"]
        info["lightning"] = True
        for key in ("global_step", "epoch"):
            if isinstance(top.get(key), int):
                info[key] = top[key]
    tensors: dict[str, LazyTensor] = {}
    skipped = []
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointFormatError(f"{path}: the state dict has a non-string key {key!r}; not a checkpoint")
        bad = foreign_name(value)
        if bad is not None:
            raise UnsafeCheckpointError(unsafe_message(path, [bad], f"the entry {key!r} of its state dict"))
        if isinstance(value, LazyTensor):
            tensors[key] = value
        else:
            skipped.append(key)
    if not tensors:
        raise CheckpointFormatError(f"{path} is not a checkpoint: it holds no tensors (top-level keys "
                                    f"{list(top)[:10]})")
    if skipped:
        info["non_tensor_entries_skipped"] = skipped[:20]
    if checkpoint.foreign:
        info["objects_not_loaded"] = checkpoint.foreign  # e.g. Lightning callbacks: inert, outside the weights
    return tensors, info


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
            state, info = _state_dict(checkpoint)
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


# ---------------------------------------------------------------------------------------------- config from shapes

def _indices(shapes: Mapping[str, tuple], prefix: str) -> list[int]:
    found = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return sorted(found)


def unet_from_shapes(shapes: Mapping[str, tuple], base: UNetConfig, text: bool) -> UNetConfig:
    """UNetConfig sized from LDM UNet tensor shapes (`model.diffusion_model.*`); num_heads and norm_groups,
    which the weights do not record, come from `base`."""
    p = UNET_PREFIX
    conv_in = shapes[p + "input_blocks.0.0.weight"]
    model_channels, in_channels = conv_in[0], conv_in[1]
    blocks = _indices(shapes, p + "input_blocks.")
    downs = [i for i in blocks if p + f"input_blocks.{i}.0.op.weight" in shapes]
    num_res = (downs[0] - 1) if downs else max(blocks)
    levels = len(downs) + 1
    widths, attention = [], []
    for level in range(levels):
        first = 1 + level * (num_res + 1)
        widths.append(shapes[p + f"input_blocks.{first}.0.in_layers.2.weight"][0])
        if p + f"input_blocks.{first}.1.norm.weight" in shapes:
            attention.append(level)
    if any(w % model_channels for w in widths):
        raise CheckpointFormatError(f"UNet level widths {widths} are not multiples of model_channels {model_channels}")
    depth = len(_indices(shapes, p + "middle_block.1.transformer_blocks."))
    context = shapes[p + "middle_block.1.transformer_blocks.0.attn2.to_k.weight"][1]
    return dataclasses.replace(
        base, in_channels=in_channels, out_channels=shapes[p + "out.2.weight"][0], model_channels=model_channels,
        channel_mult=tuple(w // model_channels for w in widths), num_res_blocks=num_res,
        attention_levels=tuple(attention), transformer_depth=depth, context_dim=context, text_context=text)


def vae_from_shapes(shapes: Mapping[str, tuple], base: VAEConfig) -> VAEConfig:
    """VAEConfig sized from `first_stage_model.*` shapes (norm_groups / norm_eps from `base`)."""
    p = VAE_PREFIX
    conv_in = shapes[p + "encoder.conv_in.weight"]
    levels = _indices(shapes, p + "encoder.down.")
    widths = [shapes[p + f"encoder.down.{i}.block.0.conv1.weight"][0] for i in levels]
    base_channels = conv_in[0]
    return dataclasses.replace(
        base, in_channels=conv_in[1], out_channels=shapes[p + "decoder.conv_out.weight"][0],
        base_channels=base_channels, channel_mult=tuple(w // base_channels for w in widths),
        num_res_blocks=len(_indices(shapes, p + "encoder.down.0.block.")),
        z_channels=shapes[p + "encoder.conv_out.weight"][0] // 2,
        latent_channels=shapes[p + "quant_conv.weight"][0] // 2)


def vision_from_shapes(shapes: Mapping[str, tuple], base: CLIPVisionConfig) -> CLIPVisionConfig:
    """CLIPVisionConfig sized from OpenAI-layout `visual.*` shapes (heads from `base`)."""
    p = VISUAL_PREFIX
    conv = shapes[p + "conv1.weight"]
    grid = math.isqrt(shapes[p + "positional_embedding"][0] - 1)
    return dataclasses.replace(
        base, width=conv[0], patch_size=conv[2], image_size=grid * conv[2],
        layers=len(_indices(shapes, p + "transformer.resblocks.")),
        mlp_dim=shapes[p + "transformer.resblocks.0.mlp.c_fc.weight"][0], projection_dim=shapes[p + "proj"][1])


def text_from_shapes(shapes: Mapping[str, tuple], base: CLIPTextConfig) -> CLIPTextConfig:
    """CLIPTextConfig sized from transformers-layout `text_model.*` shapes (heads from `base`)."""
    p = TEXT_PREFIX
    tokens = shapes[p + "embeddings.token_embedding.weight"]
    return dataclasses.replace(
        base, vocab_size=tokens[0], width=tokens[1],
        max_length=shapes[p + "embeddings.position_embedding.weight"][0],
        layers=len(_indices(shapes, p + "encoder.layers.")),
        mlp_dim=shapes[p + "encoder.layers.0.mlp.fc1.weight"][0])


def shapes_of(tensors: Mapping[str, LazyTensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def infer_config(tensors: Mapping[str, LazyTensor], base: CustomNetConfig, *, text: bool,
                 fit_sizes: bool = True) -> CustomNetConfig:
    """The config of the model stored in `tensors` (CustomNet names).

    `text` (the format's word) decides CustomNet vs Zero-1-to-3; the UNet's in_channels always comes from
    the checkpoint; with `fit_sizes` every other size the shapes determine too (widths, depths, levels), while
    numbers the weights do not record (heads, GroupNorm groups, eps, resolution) stay `base`'s.
    """
    shapes = shapes_of(tensors)
    text_base = base.text_encoder or CLIPTextConfig()
    try:
        if fit_sizes:
            unet = unet_from_shapes(shapes, base.unet, text)
            vae = vae_from_shapes(shapes, base.vae)
            vision = vision_from_shapes(shapes, base.image_encoder)
            text_config = text_from_shapes(shapes, text_base) if text else None
        else:
            conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
            unet = dataclasses.replace(base.unet, text_context=text,
                                       **({"in_channels": conv_in[1]} if conv_in and len(conv_in) == 4 else {}))
            vae, vision = base.vae, base.image_encoder
            text_config = text_base if text else None
        return dataclasses.replace(base, unet=unet, vae=vae, image_encoder=vision, text_encoder=text_config)
    except KeyError as error:
        raise CheckpointFormatError(
            f"cannot size the model from the checkpoint: tensor {error.args[0]} is missing. The file is incomplete "
            "or of another layout; pass --config with the model's config to see every missing key") from error
    except (ValueError, ZeroDivisionError, IndexError) as error:
        raise CheckpointFormatError(f"the checkpoint's shapes give an invalid config ({error}); the numbers the "
                                    "weights do not record (heads, GroupNorm groups) may need --config") from error


# ---------------------------------------------------------------------------------------------- transformers CLIP text

def _weights_file(folder: pathlib.Path, names: tuple[str, ...], required: bool = True) -> pathlib.Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    if required:
        raise CheckpointFormatError(f"{folder} lacks its weights file (one of {list(names)})")
    return None


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointFormatError(f"{path} is not valid JSON: {error}") from error


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
    weights = _weights_file(path, ("model.safetensors", "pytorch_model.bin"))
    checkpoint = open_checkpoint(weights)
    try:
        state, info = _state_dict(checkpoint)
        tensors = _clip_text_view(state, weights)
    except BaseException:
        checkpoint.close()
        raise
    info["reader"] = checkpoint.reader
    hints = {"text_encoder": text_config_hints(_read_json(path / "config.json"))}
    return Source(path, "clip-text", tensors, [weights], hints=hints, info=info, _checkpoints=[checkpoint])


# ---------------------------------------------------------------------------------------------- diffusers zero123

_RESNET = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
           ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut"))


def _resnet_name(rest: str) -> str:
    for ldm, diffusers in _RESNET:
        if rest.startswith(ldm + "."):
            return diffusers + rest[len(ldm):]
    return rest


def diffusers_unet_name(key: str, config: UNetConfig) -> str:
    """LDM UNet name (relative to `model.diffusion_model.`) -> diffusers UNet2DConditionModel name."""
    n, levels = config.num_res_blocks, len(config.channel_mult)
    fixed = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
             "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
    for ldm, diffusers in fixed.items():
        if key.startswith(ldm + "."):
            return diffusers + key[len(ldm):]
    parts = key.split(".")
    if parts[0] == "middle_block":
        sub, rest = int(parts[1]), ".".join(parts[2:])
        return {0: "mid_block.resnets.0." + _resnet_name(rest), 1: "mid_block.attentions.0." + rest,
                2: "mid_block.resnets.1." + _resnet_name(rest)}[sub]
    block, sub, rest = int(parts[1]), int(parts[2]), ".".join(parts[3:])
    if parts[0] == "input_blocks":
        level, j = divmod(block - 1, n + 1)
        if j == n:
            return f"down_blocks.{level}.downsamplers.0.conv." + rest.removeprefix("op.")
        if sub == 0:
            return f"down_blocks.{level}.resnets.{j}." + _resnet_name(rest)
        return f"down_blocks.{level}.attentions.{j}." + rest
    level, j = divmod(block, n + 1)
    if sub == 0:
        return f"up_blocks.{level}.resnets.{j}." + _resnet_name(rest)
    if sub == 1 and (levels - 1 - level) in config.attention_levels:
        return f"up_blocks.{level}.attentions.{j}." + rest
    return f"up_blocks.{level}.upsamplers.0." + rest


_VAE_ATTENTION = {"norm": ("group_norm",), "q": ("to_q", "query"), "k": ("to_k", "key"), "v": ("to_v", "value"),
                  "proj_out": ("to_out.0", "proj_attn")}


def diffusers_vae_names(key: str, config: VAEConfig) -> tuple[str, ...]:
    """LDM VAE name (relative to `first_stage_model.`) -> diffusers AutoencoderKL name(s) (new, old)."""
    levels = len(config.channel_mult)
    parts = key.split(".")
    part = parts[0]
    if part in ("quant_conv", "post_quant_conv"):
        return (key,)
    rest = parts[1:]
    if rest[0] in ("conv_in", "conv_out"):
        return (key,)
    if rest[0] == "norm_out":
        return (".".join([part, "conv_norm_out", *rest[1:]]),)
    if rest[0] == "mid":
        if rest[1].startswith("block_"):
            index = int(rest[1][-1]) - 1
            tail = ".".join(rest[2:]).replace("nin_shortcut", "conv_shortcut")
            return (f"{part}.mid_block.resnets.{index}.{tail}",)
        names = _VAE_ATTENTION[rest[2]]
        return tuple(f"{part}.mid_block.attentions.0.{n}.{rest[-1]}" for n in names)
    level = int(rest[1])
    block = f"{part}.down_blocks.{level}" if part == "encoder" else f"{part}.up_blocks.{levels - 1 - level}"
    if rest[2] in ("downsample", "upsample"):
        kind = "downsamplers" if rest[2] == "downsample" else "upsamplers"
        return (f"{block}.{kind}.0.{'.'.join(rest[3:])}",)
    tail = ".".join(rest[4:]).replace("nin_shortcut", "conv_shortcut")
    return (f"{block}.resnets.{rest[3]}.{tail}",)


def _as_conv1x1(tensor: LazyTensor) -> LazyTensor:
    """A (out, in) linear weight seen as the (out, in, 1, 1) 1x1 conv weight of the LDM layout."""
    if len(tensor.shape) != 2:
        return tensor
    return derived((*tensor.shape, 1, 1), tensor.dtype, lambda: tensor.read()[:, :, None, None])


def _openai_visual_view(hf: Mapping[str, LazyTensor], layers: int) -> dict[str, LazyTensor]:
    """transformers CLIPVisionModelWithProjection tensors -> OpenAI CLIP `visual.*` names (q, k, v stacked)."""
    v = "vision_model."
    out = {"conv1.weight": hf[v + "embeddings.patch_embedding.weight"],
           "class_embedding": hf[v + "embeddings.class_embedding"],
           "positional_embedding": hf[v + "embeddings.position_embedding.weight"]}
    projection = hf["visual_projection.weight"]
    out["proj"] = derived(projection.shape[::-1], projection.dtype, lambda: np.ascontiguousarray(projection.read().T))
    for kind in ("weight", "bias"):
        out[f"ln_pre.{kind}"] = hf[f"{v}pre_layrnorm.{kind}"]
        out[f"ln_post.{kind}"] = hf[f"{v}post_layernorm.{kind}"]
        for i in range(layers):
            h, o = f"{v}encoder.layers.{i}.", f"transformer.resblocks.{i}."
            qkv = [hf[f"{h}self_attn.{n}_proj.{kind}"] for n in "qkv"]
            shape = (sum(t.shape[0] for t in qkv), *qkv[0].shape[1:])
            out[f"{o}attn.in_proj_{kind}"] = derived(shape, qkv[0].dtype,
                                                     lambda qkv=qkv: np.concatenate([t.read() for t in qkv]))
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[f"{o}{ours}.{kind}"] = hf[f"{h}{theirs}.{kind}"]
    return {VISUAL_PREFIX + k: t for k, t in out.items()}


def diffusers_hints(path: pathlib.Path) -> dict[str, dict[str, Any]]:
    """Config values of a diffusers zero123 folder's config.json files that the weights do not record."""
    unet = _read_json(path / "unet" / "config.json")
    vae = _read_json(path / "vae" / "config.json")
    vision = _read_json(path / "image_encoder" / "config.json")
    hints: dict[str, dict[str, Any]] = {"unet": {}, "vae": {}, "image_encoder": {}, "model": {}}
    heads = unet.get("num_attention_heads") or unet.get("attention_head_dim")  # diffusers' SD-1.x naming quirk
    if isinstance(heads, (list, tuple)):
        if len(set(heads)) != 1:
            raise CheckpointFormatError(f"{path}/unet: per-level attention heads {heads} are not supported")
        heads = heads[0]
    if heads:
        hints["unet"]["num_heads"] = int(heads)
    if "norm_num_groups" in unet:
        hints["unet"]["norm_groups"] = unet["norm_num_groups"]
    if unet.get("flip_sin_to_cos", True) is not True or unet.get("freq_shift", 0) != 0:
        raise CheckpointFormatError(f"{path}/unet: timestep embedding (flip_sin_to_cos / freq_shift) differs from LDM")
    if "norm_num_groups" in vae:
        hints["vae"]["norm_groups"] = vae["norm_num_groups"]
    if "scaling_factor" in vae:
        hints["model"]["latent_scale"] = float(vae["scaling_factor"])
    if unet.get("sample_size") and vae.get("block_out_channels"):
        hints["model"]["resolution"] = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    names = {"num_attention_heads": "heads", "layer_norm_eps": "layer_norm_eps", "hidden_act": "activation"}
    hints["image_encoder"] = {ours: vision[theirs] for theirs, ours in names.items() if theirs in vision}
    return hints


def open_diffusers_zero123(path: str | pathlib.Path) -> Source:
    """A diffusers-format zero123 folder, its tensors renamed to the LDM / CustomNet names of a zero123 .ckpt."""
    path = pathlib.Path(path)
    parts = {"unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
             "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
             "image_encoder": ("model.safetensors", "pytorch_model.bin"),
             "cc_projection": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")}
    checkpoints: list[Checkpoint] = []
    states: dict[str, dict[str, LazyTensor]] = {}
    files = []
    try:
        for part, names in parts.items():
            if not (path / part).is_dir():
                raise CheckpointFormatError(f"{path} lacks {part}/: not a complete diffusers zero123 folder")
            weights = _weights_file(path / part, names)
            checkpoint = open_checkpoint(weights)
            checkpoints.append(checkpoint)
            states[part], _ = _state_dict(checkpoint)
            files.append(weights)
        hints = diffusers_hints(path)
        tensors = _diffusers_view(states)
    except BaseException:
        for checkpoint in checkpoints:
            checkpoint.close()
        raise
    return Source(path, "diffusers-zero123", tensors, files, hints=hints,
                  info={"reader": checkpoints[0].reader}, ignore=("*position_ids",),
                  _checkpoints=checkpoints)


def _diffusers_view(states: dict[str, dict[str, LazyTensor]]) -> dict[str, LazyTensor]:
    """The diffusers models' tensors under LDM / CustomNet names (unmapped ones kept under unet/, vae/)."""
    unet_state, vae_state = states["unet"], states["vae"]

    def count(state: Mapping[str, Any], prefix: str, position: int) -> int:
        return len({k.split(".")[position] for k in state if k.startswith(prefix)})

    # The structure, from names and shapes alone; heads and GroupNorm groups do not change names (set to 1 here).
    try:
        levels = count(unet_state, "down_blocks.", 1)
        widths = [unet_state[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels)]
        attention = tuple(i for i in range(levels) if f"down_blocks.{i}.attentions.0.norm.weight" in unet_state)
        conv_in = unet_state["conv_in.weight"].shape
        context = unet_state["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape[1]
        unet_config = UNetConfig(in_channels=conv_in[1], out_channels=unet_state["conv_out.weight"].shape[0],
                                 model_channels=conv_in[0], channel_mult=tuple(w // conv_in[0] for w in widths),
                                 num_res_blocks=count(unet_state, "down_blocks.0.resnets.", 3),
                                 attention_levels=attention, num_heads=1, norm_groups=1, context_dim=context,
                                 transformer_depth=count(unet_state, "mid_block.attentions.0.transformer_blocks.", 4),
                                 text_context=False)
        vae_levels = count(vae_state, "encoder.down_blocks.", 2)
        vae_widths = [vae_state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(vae_levels)]
        base = vae_state["encoder.conv_in.weight"].shape[0]
        vae_config = VAEConfig(base_channels=base, channel_mult=tuple(w // base for w in vae_widths),
                               num_res_blocks=count(vae_state, "encoder.down_blocks.0.resnets.", 4), norm_groups=1,
                               z_channels=vae_state["encoder.conv_out.weight"].shape[0] // 2,
                               latent_channels=vae_state["quant_conv.weight"].shape[0] // 2)
    except (KeyError, ValueError) as error:
        raise CheckpointFormatError(f"the diffusers unet/ or vae/ weights are not an SD-1.x-style UNet2DConditionModel "
                                    f"/ AutoencoderKL ({error})") from error
    tensors: dict[str, LazyTensor] = {}
    used: set[str] = set()
    for ldm in dict.fromkeys(r.torch_key for r in unet_rules(unet_config)):
        name = diffusers_unet_name(ldm, unet_config)
        if name in unet_state:
            used.add(name)
            tensor = unet_state[name]
            tensors[UNET_PREFIX + ldm] = _as_conv1x1(tensor) if ldm.endswith(("proj_in.weight", "proj_out.weight")) \
                else tensor
    tensors.update({"unet/" + k: v for k, v in unet_state.items() if k not in used})  # reported as unexpected

    used = set()
    for ldm in dict.fromkeys(r.torch_key for r in vae_rules(vae_config)):
        for name in diffusers_vae_names(ldm, vae_config):
            if name in vae_state:
                used.add(name)
                tensor = vae_state[name]
                tensors[VAE_PREFIX + ldm] = _as_conv1x1(tensor) if ".mid.attn_1." in ldm and "norm" not in ldm \
                    and ldm.endswith("weight") else tensor
                break
    tensors.update({"vae/" + k: v for k, v in vae_state.items() if k not in used})

    vision = states["image_encoder"]
    layers = len({k.split(".")[3] for k in vision if k.startswith("vision_model.encoder.layers.")})
    try:
        tensors.update(_openai_visual_view(vision, layers))
    except KeyError as error:
        raise CheckpointFormatError(f"image_encoder lacks {error.args[0]}: not a CLIPVisionModelWithProjection") \
            from error
    projection = states["cc_projection"]
    for kind in ("weight", "bias"):
        if f"projection.{kind}" in projection:
            tensors[f"cc_projection.{kind}"] = projection[f"projection.{kind}"]
    return tensors


def apply_hints(config: CustomNetConfig, hints: Mapping[str, Mapping[str, Any]]) -> CustomNetConfig:
    """`config` with the values read from config.json files (see `diffusers_hints`, `text_config_hints`)."""
    changes: dict[str, Any] = dict(hints.get("model", {}))
    for field in ("unet", "vae", "image_encoder", "text_encoder"):
        values = hints.get(field)
        current = getattr(config, field)
        if values and current is not None:
            changes[field] = dataclasses.replace(current, **values)
    return dataclasses.replace(config, **changes) if changes else config
