"""LDM `openaimodel.UNetModel` names (relative to `model.diffusion_model.`) -> our UNet parameters."""

from __future__ import annotations

from customnet_jax.models.unet import UNetConfig
from customnet_jax.weights.rules import Path, Rule


def _norm(torch: str, path: Path) -> list[Rule]:
    return [Rule(f"{torch}.weight", (*path, "norm", "scale")), Rule(f"{torch}.bias", (*path, "norm", "bias"))]


def _layer(torch: str, path: Path, layout: str, bias: bool = True) -> list[Rule]:
    rules = [Rule(f"{torch}.weight", (*path, "kernel"), layout)]
    return rules + ([Rule(f"{torch}.bias", (*path, "bias"))] if bias else [])


def _resblock(torch: str, path: Path, has_skip: bool) -> list[Rule]:
    rules = (_norm(f"{torch}.in_layers.0", (*path, "norm1"))
             + _layer(f"{torch}.in_layers.2", (*path, "conv1"), "conv")
             + _layer(f"{torch}.emb_layers.1", (*path, "time_proj"), "linear")
             + _norm(f"{torch}.out_layers.0", (*path, "norm2"))
             + _layer(f"{torch}.out_layers.3", (*path, "conv2"), "conv"))
    return rules + (_layer(f"{torch}.skip_connection", (*path, "skip"), "conv") if has_skip else [])


def _attention(torch: str, path: Path, text_kv: bool) -> list[Rule]:
    names = ["to_q", "to_k", "to_v"] + (["to_k_text", "to_v_text"] if text_kv else [])
    rules = [r for n in names for r in _layer(f"{torch}.{n}", (*path, n), "linear", bias=False)]
    return rules + _layer(f"{torch}.to_out.0", (*path, "to_out"), "linear")


def _transformer(torch: str, path: Path, config: UNetConfig) -> list[Rule]:
    rules = _norm(f"{torch}.norm", (*path, "norm")) + _layer(f"{torch}.proj_in", (*path, "proj_in"), "conv")
    for d in range(config.transformer_depth):
        t, p = f"{torch}.transformer_blocks.{d}", (*path, "blocks", d)
        rules += _attention(f"{t}.attn1", (*p, "attn1"), text_kv=False)
        rules += _attention(f"{t}.attn2", (*p, "attn2"), text_kv=config.text_context)
        rules += _layer(f"{t}.ff.net.0.proj", (*p, "ff", "proj"), "linear")
        rules += _layer(f"{t}.ff.net.2", (*p, "ff", "out"), "linear")
        for i in (1, 2, 3):
            rules += [Rule(f"{t}.norm{i}.weight", (*p, f"norm{i}", "norm", "scale")),
                      Rule(f"{t}.norm{i}.bias", (*p, f"norm{i}", "norm", "bias"))]
    return rules + _layer(f"{torch}.proj_out", (*path, "proj_out"), "conv")


def unet_rules(config: UNetConfig) -> list[Rule]:
    """Every parameter of `UNet(config)` with its LDM checkpoint name."""
    c = config
    widths = [c.model_channels * m for m in c.channel_mult]
    last = len(widths) - 1
    rules = (_layer("time_embed.0", ("time_embedding", "linear_1"), "linear")
             + _layer("time_embed.2", ("time_embedding", "linear_2"), "linear")
             + _layer("input_blocks.0.0", ("conv_in",), "conv"))

    block, cin, skip_widths = 1, c.model_channels, [c.model_channels]
    for level, width in enumerate(widths):
        for j in range(c.num_res_blocks):
            rules += _resblock(f"input_blocks.{block}.0", ("down_levels", level, "resnets", j), cin != width)
            if level in c.attention_levels:
                rules += _transformer(f"input_blocks.{block}.1", ("down_levels", level, "attentions", j), c)
            cin = width
            skip_widths.append(width)
            block += 1
        if level != last:
            rules += _layer(f"input_blocks.{block}.0.op", ("down_levels", level, "resample", "conv"), "conv")
            skip_widths.append(width)
            block += 1

    rules += _resblock("middle_block.0", ("middle", "resnet_1"), False)
    rules += _transformer("middle_block.1", ("middle", "attention"), c)
    rules += _resblock("middle_block.2", ("middle", "resnet_2"), False)

    block = 0
    for k, level in enumerate(reversed(range(len(widths)))):
        width = widths[level]
        for j in range(c.num_res_blocks + 1):
            rules += _resblock(f"output_blocks.{block}.0", ("up_levels", k, "resnets", j),
                               cin + skip_widths.pop() != width)
            sub = 1
            if level in c.attention_levels:
                rules += _transformer(f"output_blocks.{block}.1", ("up_levels", k, "attentions", j), c)
                sub = 2
            if level and j == c.num_res_blocks:
                rules += _layer(f"output_blocks.{block}.{sub}.conv", ("up_levels", k, "resample", "conv"), "conv")
            cin = width
            block += 1

    return rules + _norm("out.0", ("norm_out",)) + _layer("out.2", ("conv_out",), "conv")
