"""Independent PyTorch references shared by the parity tests: diffusers UNet (+ the dual cross-attention of
docs/model.md §3 as a test-side processor) and AutoencoderKL built through diffusers' own LDM converters, transformers
CLIP towers, and LDM-layout random weights."""

import numpy as np
import torch
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from flax import nnx

from customnet_jax.models.build import abstract_model
from customnet_jax.models.clip import CLIPTextConfig, CLIPVisionConfig
from customnet_jax.models.unet import UNet, UNetConfig
from customnet_jax.models.vae import VAE, VAEConfig
from customnet_jax.weights import rules as R
from customnet_jax.weights.params import param_shapes
from customnet_jax.weights.unet_names import unet_rules
from customnet_jax.weights.vae_names import vae_rules

LDM = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


class DualCrossAttention(torch.nn.Module):
    """Test-side reference of docs/model.md §3 as a diffusers attention processor: two softmaxes, outputs summed."""

    def __init__(self, to_k_text: torch.Tensor, to_v_text: torch.Tensor):
        super().__init__()
        self.to_k_text = torch.nn.Linear(to_k_text.shape[1], to_k_text.shape[0], bias=False)
        self.to_v_text = torch.nn.Linear(to_v_text.shape[1], to_v_text.shape[0], bias=False)
        self.to_k_text.weight.data = to_k_text
        self.to_v_text.weight.data = to_v_text

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        def heads(x):
            return x.view(x.shape[0], x.shape[1], attn.heads, -1).transpose(1, 2)

        def sdpa(q, k, v):
            out = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v))
            return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)

        q = attn.to_q(hidden_states)
        image, text = encoder_hidden_states[:, :1], encoder_hidden_states[:, 1:]
        out = sdpa(q, attn.to_k(image), attn.to_v(image)) + sdpa(q, self.to_k_text(text), self.to_v_text(text))
        return attn.to_out[1](attn.to_out[0](out))


def random_ldm_state(config: UNetConfig, seed: int) -> dict[str, np.ndarray]:
    """Random LDM-layout UNet weights for `config` (norm scales around 1 so nothing degenerates)."""
    shapes = R.expected_torch_shapes(unet_rules(config), param_shapes(abstract_model(
        lambda: UNet(config, rngs=nnx.Rngs(0)))))
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in shapes.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        value = rng.normal(size=shape) / np.sqrt(fan_in)
        if "norm" in key or "in_layers.0" in key or "out_layers.0" in key or key.startswith("out.0"):
            value = (1.0 + 0.1 * rng.normal(size=shape)) if key.endswith("weight") else 0.1 * rng.normal(size=shape)
        state[key] = value.astype(np.float32)
    return state


def diffusers_unet(config: UNetConfig, ldm_state: dict[str, np.ndarray]) -> UNet2DConditionModel:
    """The reference: diffusers' UNet loaded through diffusers' own LDM converter, dual attention attached."""
    levels = len(config.channel_mult)
    down = ["CrossAttnDownBlock2D" if lvl in config.attention_levels else "DownBlock2D" for lvl in range(levels)]
    up = ["CrossAttnUpBlock2D" if lvl in config.attention_levels else "UpBlock2D" for lvl in reversed(range(levels))]
    kwargs = dict(in_channels=config.in_channels, out_channels=config.out_channels, down_block_types=down,
                  up_block_types=up, block_out_channels=[config.model_channels * m for m in config.channel_mult],
                  layers_per_block=config.num_res_blocks, cross_attention_dim=config.context_dim,
                  attention_head_dim=config.num_heads, norm_num_groups=config.norm_groups, norm_eps=1e-5,
                  flip_sin_to_cos=True, freq_shift=0)
    model = UNet2DConditionModel(**kwargs)
    converted = convert_ldm_unet_checkpoint({LDM + k: torch.from_numpy(v) for k, v in ldm_state.items()},
                                            dict(model.config))
    text_kv = {k: converted.pop(k) for k in list(converted) if "_text." in k}
    model.load_state_dict(converted, strict=True)
    if config.text_context:
        processors = {}
        for name in model.attn_processors:
            if name.endswith("attn2.processor"):
                base = name[: -len("processor")]
                processors[name] = DualCrossAttention(text_kv[base + "to_k_text.weight"],
                                                      text_kv[base + "to_v_text.weight"])
            else:
                processors[name] = model.attn_processors[name]
        assert sum(isinstance(p, DualCrossAttention) for p in processors.values()) == len(text_kv) // 2 > 0
        model.set_attn_processor(processors)
    return model.eval()


def reference_output(model: UNet2DConditionModel, x, timesteps, context) -> np.ndarray:
    """diffusers UNet eps for channels-last numpy inputs, channels-last output."""
    with torch.no_grad():
        out = model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(timesteps).long(),
                    encoder_hidden_states=torch.from_numpy(context)).sample
    return out.permute(0, 2, 3, 1).numpy()


# ---- VAE ----

def random_vae_state(config: VAEConfig, seed: int) -> dict[str, np.ndarray]:
    """LDM-layout random VAE weights (relative to `first_stage_model.`), activations kept O(1)."""
    shapes = R.expected_torch_shapes(vae_rules(config), param_shapes(abstract_model(
        lambda: VAE(config, rngs=nnx.Rngs(0)))))
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in shapes.items():
        if len(shape) == 4:
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        elif ".norm" in key and key.endswith(".weight"):
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        else:
            value = 0.1 * rng.standard_normal(shape)
        state[key] = value.astype(np.float32)
    return state


def diffusers_vae(config: VAEConfig, ldm_state: dict[str, np.ndarray]) -> AutoencoderKL:
    """diffusers AutoencoderKL holding LDM-layout weights (through diffusers' converter)."""
    model = AutoencoderKL(
        in_channels=config.in_channels, out_channels=config.out_channels, latent_channels=config.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * len(config.channel_mult),
        up_block_types=("UpDecoderBlock2D",) * len(config.channel_mult),
        block_out_channels=config.widths, layers_per_block=config.num_res_blocks, norm_num_groups=config.norm_groups)
    converted = convert_ldm_vae_checkpoint({VAE_PREFIX + k: torch.from_numpy(v) for k, v in ldm_state.items()},
                                           dict(model.config))
    model.load_state_dict(converted, strict=True)
    return model.eval()


# ---- CLIP ----

def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move layer norms and biases off their trivial 1 / 0 init so that a mis-mapped one shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def clip_vision(config: CLIPVisionConfig, seed: int) -> transformers.CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    hf = transformers.CLIPVisionConfig(image_size=config.image_size, patch_size=config.patch_size,
                                       hidden_size=config.width, intermediate_size=config.mlp_dim,
                                       num_hidden_layers=config.layers, num_attention_heads=config.heads,
                                       projection_dim=config.projection_dim, hidden_act="quick_gelu",
                                       layer_norm_eps=1e-5)
    return _randomise(transformers.CLIPVisionModelWithProjection(hf), seed)


def clip_text(config: CLIPTextConfig, seed: int) -> transformers.CLIPTextModel:
    torch.manual_seed(seed)
    hf = transformers.CLIPTextConfig(vocab_size=config.vocab_size, hidden_size=config.width,
                                     intermediate_size=config.mlp_dim, num_hidden_layers=config.layers,
                                     num_attention_heads=config.heads, max_position_embeddings=config.max_length,
                                     hidden_act="quick_gelu", layer_norm_eps=1e-5,
                                     bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return _randomise(transformers.CLIPTextModel(hf), seed)


def openai_visual_state(hf: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    """transformers `CLIPVisionModelWithProjection` state dict -> OpenAI CLIP `visual.*` names (test-side)."""
    v = "vision_model."
    out = {"conv1.weight": hf[v + "embeddings.patch_embedding.weight"],
           "class_embedding": hf[v + "embeddings.class_embedding"],
           "positional_embedding": hf[v + "embeddings.position_embedding.weight"],
           "proj": np.ascontiguousarray(hf["visual_projection.weight"].T)}  # x @ proj
    for kind in ("weight", "bias"):
        out[f"ln_pre.{kind}"] = hf[f"{v}pre_layrnorm.{kind}"]
        out[f"ln_post.{kind}"] = hf[f"{v}post_layernorm.{kind}"]
        for i in range(layers):
            h, o = f"{v}encoder.layers.{i}.", f"transformer.resblocks.{i}."
            out[f"{o}attn.in_proj_{kind}"] = np.concatenate([hf[f"{h}self_attn.{n}_proj.{kind}"] for n in "qkv"])
            out[f"{o}attn.out_proj.{kind}"] = hf[f"{h}self_attn.out_proj.{kind}"]
            out[f"{o}ln_1.{kind}"] = hf[f"{h}layer_norm1.{kind}"]
            out[f"{o}ln_2.{kind}"] = hf[f"{h}layer_norm2.{kind}"]
            out[f"{o}mlp.c_fc.{kind}"] = hf[f"{h}mlp.fc1.{kind}"]
            out[f"{o}mlp.c_proj.{kind}"] = hf[f"{h}mlp.fc2.{kind}"]
    return out


# ---- the LDM noise schedule buffers, as ldm/models/diffusion/ddpm.py register_schedule computes them ----

def ldm_schedule_buffers(timesteps: int = 1000, start: float = 0.00085, end: float = 0.012) -> dict[str, torch.Tensor]:
    betas = (torch.linspace(start ** 0.5, end ** 0.5, timesteps, dtype=torch.float64) ** 2).numpy()
    alphas = 1.0 - betas
    cumprod = np.cumprod(alphas, axis=0)
    prev = np.append(1.0, cumprod[:-1])
    variance = betas * (1.0 - prev) / (1.0 - cumprod)
    to_torch = lambda x: torch.tensor(x, dtype=torch.float32)
    return {
        "betas": to_torch(betas), "alphas_cumprod": to_torch(cumprod), "alphas_cumprod_prev": to_torch(prev),
        "sqrt_alphas_cumprod": to_torch(np.sqrt(cumprod)),
        "sqrt_one_minus_alphas_cumprod": to_torch(np.sqrt(1.0 - cumprod)),
        "log_one_minus_alphas_cumprod": to_torch(np.log(1.0 - cumprod)),
        "sqrt_recip_alphas_cumprod": to_torch(np.sqrt(1.0 / cumprod)),
        "sqrt_recipm1_alphas_cumprod": to_torch(np.sqrt(1.0 / cumprod - 1)),
        "posterior_variance": to_torch(variance),
        "posterior_log_variance_clipped": to_torch(np.log(np.maximum(variance, 1e-20))),
        "posterior_mean_coef1": to_torch(betas * np.sqrt(prev) / (1.0 - cumprod)),
        "posterior_mean_coef2": to_torch((1.0 - prev) * np.sqrt(alphas) / (1.0 - cumprod)),
    }
