"""CLIP checkpoint names -> `customnet_jax.models.clip` parameters.

Three layouts: transformers text (`text_model.*` in CustomNet's checkpoint), OpenAI CLIP visual
(`visual.*` under `cond_stage_model.model.` in CustomNet / Zero-1-to-3) and transformers
`CLIPVisionModelWithProjection` (the diffusers-format zero123's `image_encoder`).
"""

from __future__ import annotations

from customnet_jax.models.clip import CLIPTextConfig, CLIPVisionConfig
from customnet_jax.weights.rules import Path, Rule


def _norm(torch_prefix: str, path: Path) -> list[Rule]:
    return [Rule(torch_prefix + "weight", (*path, "norm", "scale")),
            Rule(torch_prefix + "bias", (*path, "norm", "bias"))]


def _linear(torch_prefix: str, path: Path) -> list[Rule]:
    return [Rule(torch_prefix + "weight", (*path, "kernel"), "linear"), Rule(torch_prefix + "bias", (*path, "bias"))]


def _transformers_layers(prefix: str, count: int) -> list[Rule]:
    """transformers `CLIPEncoderLayer`s under `prefix` (`encoder.layers.`)."""
    rules = []
    for i in range(count):
        t, p = f"{prefix}{i}.", ("layers", i)
        rules += _norm(t + "layer_norm1.", (*p, "ln_1")) + _norm(t + "layer_norm2.", (*p, "ln_2"))
        for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("out", "out_proj")):
            rules += _linear(f"{t}self_attn.{theirs}.", (*p, ours))
        rules += _linear(t + "mlp.fc1.", (*p, "fc1")) + _linear(t + "mlp.fc2.", (*p, "fc2"))
    return rules


def clip_text_rules(config: CLIPTextConfig) -> list[Rule]:
    """transformers `CLIPTextModel`, keys relative to `text_model.` (transformers 5 drops that prefix itself).

    `embeddings.position_ids` is a buffer, not a parameter: callers list it as ignored.
    """
    return [Rule("embeddings.token_embedding.weight", ("token_embedding", "embedding")),
            Rule("embeddings.position_embedding.weight", ("position_embedding",)),
            *_transformers_layers("encoder.layers.", config.layers),
            *_norm("final_layer_norm.", ("final_layer_norm",))]


def clip_vision_openai_rules(config: CLIPVisionConfig) -> list[Rule]:
    """OpenAI CLIP `VisionTransformer`, keys relative to `visual.`; q, k, v are thirds of `in_proj_*`."""
    c = config.width
    rules = [Rule("conv1.weight", ("patch_embedding", "kernel"), "conv"),
             Rule("class_embedding", ("class_embedding",)),
             Rule("positional_embedding", ("position_embedding",)),
             *_norm("ln_pre.", ("ln_pre",))]
    for i in range(config.layers):
        t, p = f"transformer.resblocks.{i}.", ("layers", i)
        for n, ours in enumerate(("q", "k", "v")):
            rows = (n * c, (n + 1) * c)
            rules += [Rule(t + "attn.in_proj_weight", (*p, ours, "kernel"), "linear", rows),
                      Rule(t + "attn.in_proj_bias", (*p, ours, "bias"), rows=rows)]
        rules += _linear(t + "attn.out_proj.", (*p, "out"))
        rules += _norm(t + "ln_1.", (*p, "ln_1")) + _norm(t + "ln_2.", (*p, "ln_2"))
        rules += _linear(t + "mlp.c_fc.", (*p, "fc1")) + _linear(t + "mlp.c_proj.", (*p, "fc2"))
    return rules + [*_norm("ln_post.", ("ln_post",)), Rule("proj", ("projection", "kernel"))]  # x @ proj


def clip_vision_transformers_rules(config: CLIPVisionConfig) -> list[Rule]:
    """transformers `CLIPVisionModelWithProjection` (keys `vision_model.*`, `visual_projection.weight`)."""
    v = "vision_model."
    return [Rule(v + "embeddings.patch_embedding.weight", ("patch_embedding", "kernel"), "conv"),
            Rule(v + "embeddings.class_embedding", ("class_embedding",)),
            Rule(v + "embeddings.position_embedding.weight", ("position_embedding",)),
            *_norm(v + "pre_layrnorm.", ("ln_pre",)),
            *_transformers_layers(v + "encoder.layers.", config.layers),
            *_norm(v + "post_layernorm.", ("ln_post",)),
            Rule("visual_projection.weight", ("projection", "kernel"), "linear")]
