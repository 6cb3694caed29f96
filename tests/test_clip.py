"""CLIP text / vision encoders vs transformers' PyTorch CLIP, the checkpoint names, and the tokenizer."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from customnet_jax.models.clip import CLIPImageEncoder, CLIPTextConfig, CLIPTextEncoder, CLIPVisionConfig
from customnet_jax.text import load_tokenizer, tokenize
from customnet_jax.weights.clip_names import clip_text_rules, clip_vision_openai_rules, clip_vision_transformers_rules
from customnet_jax.weights.params import param_shapes, set_params
from customnet_jax.weights.rules import expected_torch_shapes, import_tensors, prefixed
from tests.helpers import rel_l2, torch_state_to_numpy

TSV = pathlib.Path(__file__).parent / "data" / "customnet_v1_state_dict.tsv"
TEXT = CLIPTextConfig(vocab_size=1000, width=32, layers=2, heads=4, mlp_dim=64, max_length=77)
VISION = CLIPVisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=4, mlp_dim=64, projection_dim=16)


def checkpoint_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
    """key -> shape of the released customnet_v1.pt tensors under `prefix`."""
    shapes = {}
    for line in TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _ = line.split("\t")
        if key.startswith(prefix):
            shapes[key] = tuple(int(s) for s in shape.split(",")) if shape else ()
    return shapes


def abstract(model_cls, config):
    """The model with shape-only parameters (nothing allocated, no initializer compiled)."""
    return nnx.eval_shape(lambda: model_cls(config, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def full_size():
    # eval_shape of ViT-L takes ~5 s here (flax reads `.sharding` of traced RNG counters), so only once.
    return {"text": abstract(CLIPTextEncoder, CLIPTextConfig()),
            "vision": abstract(CLIPImageEncoder, CLIPVisionConfig())}


def test_full_size_parameter_count(full_size):
    count = {name: sum(int(np.prod(s)) for s in param_shapes(model).values()) for name, model in full_size.items()}
    assert count == {"text": 123_060_480, "vision": 303_966_208}


def test_full_size_output_shapes(full_size):
    text = nnx.eval_shape(lambda m, x: m(x), full_size["text"], jax.ShapeDtypeStruct((2, 77), jnp.int32))
    image = nnx.eval_shape(lambda m, x: m(x), full_size["vision"], jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
    assert (text.shape, image.shape) == ((2, 77, 768), (2, 768))


def test_rules_reproduce_checkpoint_keys(full_size):
    text_prefix, vision_prefix = "text_encoder.transformer.text_model.", "cond_stage_model.model.visual."
    text = expected_torch_shapes(prefixed(clip_text_rules(CLIPTextConfig()), text_prefix),
                                 param_shapes(full_size["text"]))
    wanted = checkpoint_shapes(text_prefix)
    assert wanted.pop(text_prefix + "embeddings.position_ids") == (1, 77)  # a buffer, ignored by the loader
    assert text == wanted
    vision = expected_torch_shapes(prefixed(clip_vision_openai_rules(CLIPVisionConfig()), vision_prefix),
                                   param_shapes(full_size["vision"]))
    assert vision == checkpoint_shapes(vision_prefix)
    leftovers = set(checkpoint_shapes("cond_stage_model.model.")) - set(vision)  # OpenAI text tower, unused
    assert {k.removeprefix("cond_stage_model.model.") for k in leftovers} == {
        "token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection",
        "logit_scale"}


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Move layer norms and biases off their trivial 1 / 0 init so that a mis-mapped one shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def build(model_cls, config, tensors: dict, rules, ignore=()) -> nnx.Module:
    """Our model holding the reference's weights (built abstractly: every parameter comes from `tensors`)."""
    model = abstract(model_cls, config)
    set_params(model, import_tensors(tensors, rules, param_shapes(model), ignore=ignore))
    return model


@nnx.jit
def forward(model, x):
    return model(x)


# ---- text ----

@pytest.fixture(scope="module")
def text_reference():
    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(vocab_size=TEXT.vocab_size, hidden_size=TEXT.width,
                                         intermediate_size=TEXT.mlp_dim, num_hidden_layers=TEXT.layers,
                                         num_attention_heads=TEXT.heads, max_position_embeddings=TEXT.max_length,
                                         hidden_act="quick_gelu", layer_norm_eps=1e-5,
                                         bos_token_id=998, eos_token_id=999, pad_token_id=999)
    model = randomise(transformers.CLIPTextModel(config))
    tokens = np.random.default_rng(0).integers(0, TEXT.vocab_size, (2, TEXT.max_length)).astype(np.int32)
    with torch.no_grad():
        full = model(input_ids=torch.from_numpy(tokens).long()).last_hidden_state.numpy()
        short = model(input_ids=torch.from_numpy(tokens[:, :9]).long()).last_hidden_state.numpy()
    return torch_state_to_numpy(model.state_dict()), tokens, full, short


def test_text_parity(text_reference):
    state, tokens, full, short = text_reference
    # transformers 5 `CLIPTextModel.state_dict()` has no `text_model.` prefix; position_ids is not persistent.
    ours = build(CLIPTextEncoder, TEXT, state, clip_text_rules(TEXT), ignore=["*position_ids"])
    assert rel_l2(forward(ours, tokens), full) <= 1e-4  # measured 1.9e-7
    # A shorter prompt: causal mask and positions sliced to its length.
    assert rel_l2(forward(ours, tokens[:, :9]), short) <= 1e-4  # measured 2.1e-7
    with pytest.raises(ValueError, match="length"):
        ours(np.zeros((1, 78), np.int32))


def test_text_wrong_layer_norm_eps_breaks_parity(text_reference):
    state, tokens, full, _ = text_reference
    config = CLIPTextConfig(**{**TEXT.__dict__, "layer_norm_eps": 1e-3})
    ours = build(CLIPTextEncoder, config, state, clip_text_rules(config))
    assert rel_l2(forward(ours, tokens), full) > 1e-3  # measured 1.0e-1


# ---- vision ----

def to_openai_layout(hf: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    """transformers `CLIPVisionModelWithProjection` state dict -> OpenAI CLIP `visual.*` names (test-side)."""
    v = "vision_model."
    out = {"conv1.weight": hf[v + "embeddings.patch_embedding.weight"],
           "class_embedding": hf[v + "embeddings.class_embedding"],
           "positional_embedding": hf[v + "embeddings.position_embedding.weight"],
           "proj": hf["visual_projection.weight"].T}  # x @ proj
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


@pytest.fixture(scope="module")
def vision_reference():
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(image_size=VISION.image_size, patch_size=VISION.patch_size,
                                           hidden_size=VISION.width, intermediate_size=VISION.mlp_dim,
                                           num_hidden_layers=VISION.layers, num_attention_heads=VISION.heads,
                                           projection_dim=VISION.projection_dim, hidden_act="quick_gelu",
                                           layer_norm_eps=1e-5)
    model = randomise(transformers.CLIPVisionModelWithProjection(config))
    pixels = np.random.default_rng(0).standard_normal((2, VISION.image_size, VISION.image_size, 3), np.float32)
    with torch.no_grad():
        embeds = model(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)).image_embeds.numpy()
    hf = torch_state_to_numpy(model.state_dict())
    return hf, pixels, embeds


def test_vision_parity_openai_layout(vision_reference):
    hf, pixels, embeds = vision_reference
    ours = build(CLIPImageEncoder, VISION, to_openai_layout(hf, VISION.layers), clip_vision_openai_rules(VISION))
    assert rel_l2(forward(ours, pixels), embeds) <= 1e-4  # measured 2.2e-7
    with pytest.raises(ValueError, match="resize"):
        ours(np.zeros((1, 28, 28, 3), np.float32))


def test_vision_parity_transformers_layout(vision_reference):
    hf, pixels, embeds = vision_reference
    ours = build(CLIPImageEncoder, VISION, hf, clip_vision_transformers_rules(VISION), ignore=["*position_ids"])
    assert rel_l2(forward(ours, pixels), embeds) <= 1e-4  # measured 2.2e-7


def test_vision_swapped_q_k_breaks_parity(vision_reference):
    hf, pixels, embeds = vision_reference
    openai, c = to_openai_layout(hf, VISION.layers), VISION.width
    for i in range(VISION.layers):
        for kind in ("weight", "bias"):
            w = openai[f"transformer.resblocks.{i}.attn.in_proj_{kind}"]
            openai[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = np.concatenate([w[c:2 * c], w[:c], w[2 * c:]])
    ours = build(CLIPImageEncoder, VISION, openai, clip_vision_openai_rules(VISION))
    assert rel_l2(forward(ours, pixels), embeds) > 1e-3  # measured 7.1e-2


# ---- tokenizer ----

def test_tokenizer():
    tokenizer = load_tokenizer()
    ids = tokenize(tokenizer, ["a photo of a cat", ""])
    assert ids.shape == (2, 77) and ids.dtype == np.int32
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (ids[0, 7:] == 49407).all()
    assert ids[1, 0] == 49406 and (ids[1, 1:] == 49407).all()
    long = tokenize(tokenizer, ["a photo of a cat " * 30])
    assert long.shape == (1, 77) and long[0, 0] == 49406 and long[0, -1] == 49407 and long[0, -2] != 49407
