"""Model configs sized from the tensor shapes of a checkpoint in CustomNet names."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

from customnet_jax.convert.source import TEXT_PREFIX, VISUAL_PREFIX
from customnet_jax.convert.tensors import CheckpointFormatError, LazyTensor
from customnet_jax.models.clip import CLIPTextConfig, CLIPVisionConfig
from customnet_jax.models.customnet import CustomNetConfig
from customnet_jax.models.unet import UNetConfig
from customnet_jax.models.vae import VAEConfig
from customnet_jax.weights.customnet_names import UNET_PREFIX, VAE_PREFIX


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
