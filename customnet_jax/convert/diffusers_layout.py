"""A diffusers-format zero123 folder (unet/, vae/, image_encoder/, cc_projection/) seen under the LDM / CustomNet
names of a zero123 .ckpt."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from customnet_jax.convert.readers import open_checkpoint
from customnet_jax.convert.source import VISUAL_PREFIX, Source, checkpoint_state, read_json, weights_file
from customnet_jax.convert.tensors import Checkpoint, CheckpointFormatError, LazyTensor, derived
from customnet_jax.models.unet import UNetConfig
from customnet_jax.models.vae import VAEConfig
from customnet_jax.weights.customnet_names import UNET_PREFIX, VAE_PREFIX
from customnet_jax.weights.unet_names import unet_rules
from customnet_jax.weights.vae_names import vae_rules

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
    unet = read_json(path / "unet" / "config.json")
    vae = read_json(path / "vae" / "config.json")
    vision = read_json(path / "image_encoder" / "config.json")
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
            weights = weights_file(path / part, names)
            checkpoint = open_checkpoint(weights)
            checkpoints.append(checkpoint)
            states[part], _ = checkpoint_state(checkpoint)
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
