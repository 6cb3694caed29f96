"""LDM `AutoencoderKL` (the checkpoint's `first_stage_model.*`) names -> our `VAE` parameters.

Our modules mirror LDM's names, so each torch key `a.b.3.c.weight` maps to the path ('a', 'b', 3, 'c', ...):
convs (q/k/v/proj_out included, they are 1x1 convs on both sides) `weight` -> `kernel` (layout conv),
GroupNorm `weight`/`bias` -> `norm`/`scale`/`bias` inside our `layers.GroupNorm` wrapper.
"""

from __future__ import annotations

from customnet_jax.models.vae import VAEConfig
from customnet_jax.weights.rules import Path, Rule


def _conv(key: str, path: Path) -> list[Rule]:
    return [Rule(f"{key}.weight", (*path, "kernel"), "conv"), Rule(f"{key}.bias", (*path, "bias"))]


def _norm(key: str, path: Path) -> list[Rule]:
    return [Rule(f"{key}.weight", (*path, "norm", "scale")), Rule(f"{key}.bias", (*path, "norm", "bias"))]


def _resnet(key: str, path: Path, shortcut: bool) -> list[Rule]:
    rules = _norm(f"{key}.norm1", (*path, "norm1")) + _conv(f"{key}.conv1", (*path, "conv1"))
    rules += _norm(f"{key}.norm2", (*path, "norm2")) + _conv(f"{key}.conv2", (*path, "conv2"))
    return rules + (_conv(f"{key}.nin_shortcut", (*path, "nin_shortcut")) if shortcut else [])


def _mid(part: str) -> list[Rule]:
    rules = _resnet(f"{part}.mid.block_1", (part, "mid", "block_1"), False)
    rules += _norm(f"{part}.mid.attn_1.norm", (part, "mid", "attn_1", "norm"))
    for name in ("q", "k", "v", "proj_out"):
        rules += _conv(f"{part}.mid.attn_1.{name}", (part, "mid", "attn_1", name))
    return rules + _resnet(f"{part}.mid.block_2", (part, "mid", "block_2"), False)


def vae_rules(config: VAEConfig) -> list[Rule]:
    """Rules for every VAE tensor, torch keys relative to `first_stage_model.`."""
    widths, levels = config.widths, len(config.widths)
    rules = _conv("encoder.conv_in", ("encoder", "conv_in"))
    for i, w in enumerate(widths):
        cin = widths[max(i - 1, 0)]
        for j in range(config.num_res_blocks):
            rules += _resnet(f"encoder.down.{i}.block.{j}", ("encoder", "down", i, "block", j), j == 0 and cin != w)
        if i < levels - 1:
            rules += _conv(f"encoder.down.{i}.downsample.conv", ("encoder", "down", i, "downsample", "conv"))
    rules += _mid("encoder")
    rules += _norm("encoder.norm_out", ("encoder", "norm_out")) + _conv("encoder.conv_out", ("encoder", "conv_out"))

    rules += _conv("decoder.conv_in", ("decoder", "conv_in")) + _mid("decoder")
    for i, w in enumerate(widths):
        cin = widths[min(i + 1, levels - 1)]
        for j in range(config.num_res_blocks + 1):
            rules += _resnet(f"decoder.up.{i}.block.{j}", ("decoder", "up", i, "block", j), j == 0 and cin != w)
        if i > 0:
            rules += _conv(f"decoder.up.{i}.upsample.conv", ("decoder", "up", i, "upsample", "conv"))
    rules += _norm("decoder.norm_out", ("decoder", "norm_out")) + _conv("decoder.conv_out", ("decoder", "conv_out"))
    return rules + _conv("quant_conv", ("quant_conv",)) + _conv("post_quant_conv", ("post_quant_conv",))
