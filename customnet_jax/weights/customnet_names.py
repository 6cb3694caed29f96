"""Whole-model names of the released checkpoints (docs/model.md §9) -> our `CustomNet` parameters."""

from __future__ import annotations

from customnet_jax.models.customnet import CustomNetConfig
from customnet_jax.weights.clip_names import clip_text_rules, clip_vision_openai_rules
from customnet_jax.weights.rules import Rule, prefixed
from customnet_jax.weights.unet_names import unet_rules
from customnet_jax.weights.vae_names import vae_rules

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
IMAGE_ENCODER_PREFIX = "cond_stage_model.model."  # + "visual."
TEXT_ENCODER_PREFIX = "text_encoder.transformer."  # + "text_model."

SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")

# Keys of the released files we deliberately drop: the noise schedule (recomputed from DiffusionConfig),
# position_ids buffers, and the OpenAI CLIP text tower leftovers that the image encoder does not use.
IGNORED = (*SCHEDULE_BUFFERS, "*position_ids", "logvar",
           *(IMAGE_ENCODER_PREFIX + k for k in ("token_embedding.weight", "positional_embedding", "ln_final.*",
                                                "text_projection", "logit_scale", "transformer.*")))


def customnet_rules(config: CustomNetConfig) -> list[Rule]:
    """Every parameter of `CustomNet(config)` with its name in customnet_v1.pt (or a zero123 .ckpt's state_dict)."""
    rules = (prefixed(unet_rules(config.unet), UNET_PREFIX, ("unet",))
             + prefixed(vae_rules(config.vae), VAE_PREFIX, ("vae",))
             + prefixed(clip_vision_openai_rules(config.image_encoder), IMAGE_ENCODER_PREFIX + "visual.",
                        ("image_encoder",))
             + [Rule("cc_projection.weight", ("cc_projection", "kernel"), "linear"),
                Rule("cc_projection.bias", ("cc_projection", "bias"))])
    if config.text_encoder is not None:
        rules += prefixed(clip_text_rules(config.text_encoder), TEXT_ENCODER_PREFIX + "text_model.", ("text_encoder",))
    return rules
