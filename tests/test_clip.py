"""CLIP text / vision encoders vs transformers' PyTorch CLIP, the checkpoint names, and the tokenizer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from customnet_jax.models.build import abstract_model
from customnet_jax.models.clip import CLIPImageEncoder, CLIPTextConfig, CLIPTextEncoder, CLIPVisionConfig
from customnet_jax.models.layers import set_attention
from customnet_jax.text import load_tokenizer, tokenize
from customnet_jax.weights.clip_names import clip_text_rules, clip_vision_openai_rules, clip_vision_transformers_rules
from customnet_jax.weights.params import param_shapes, set_params
from customnet_jax.weights.rules import expected_torch_shapes, import_tensors, prefixed
from tests.helpers import rel_l2, torch_state_to_numpy
from tests.reference_state import reference_shapes
from tests.torch_reference import clip_text, clip_vision, openai_visual_state

TEXT = CLIPTextConfig(vocab_size=1000, width=32, layers=2, heads=4, mlp_dim=64, max_length=77)
VISION = CLIPVisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=4, mlp_dim=64, projection_dim=16)


def checkpoint_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
    """key -> shape of the released customnet_v1.pt tensors under `prefix`."""
    return {k: v for k, v in reference_shapes().items() if k.startswith(prefix)}


def abstract(model_cls, config):
    """The model with shape-only parameters (nothing allocated, no initializer compiled)."""
    return abstract_model(lambda: model_cls(config, rngs=nnx.Rngs(0)))


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
    model = clip_text(TEXT, seed=0)
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


def test_text_attention_switch_keeps_parity(text_reference):
    """CLIP's attention goes through layers.attention's switch: the per-head CPU kernel (causal) against
    transformers; "splash" does not take 77 tokens and falls back to jax's attention."""
    state, tokens, full, _ = text_reference
    for implementation in ("per_head", "splash"):
        ours = build(CLIPTextEncoder, TEXT, state, clip_text_rules(TEXT), ignore=["*position_ids"])
        set_attention(ours, implementation)
        assert rel_l2(forward(ours, tokens), full) <= 1e-4, implementation  # measured 2.0e-7


def test_text_wrong_layer_norm_eps_breaks_parity(text_reference):
    state, tokens, full, _ = text_reference
    config = CLIPTextConfig(**{**TEXT.__dict__, "layer_norm_eps": 1e-3})
    ours = build(CLIPTextEncoder, config, state, clip_text_rules(config))
    assert rel_l2(forward(ours, tokens), full) > 1e-3  # measured 1.0e-1


# ---- vision ----

@pytest.fixture(scope="module")
def vision_reference():
    model = clip_vision(VISION, seed=0)
    pixels = np.random.default_rng(0).standard_normal((2, VISION.image_size, VISION.image_size, 3), np.float32)
    with torch.no_grad():
        embeds = model(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)).image_embeds.numpy()
    hf = torch_state_to_numpy(model.state_dict())
    return hf, pixels, embeds


def test_vision_parity_openai_layout(vision_reference):
    hf, pixels, embeds = vision_reference
    ours = build(CLIPImageEncoder, VISION, openai_visual_state(hf, VISION.layers), clip_vision_openai_rules(VISION))
    assert rel_l2(forward(ours, pixels), embeds) <= 1e-4  # measured 2.2e-7
    with pytest.raises(ValueError, match="resize"):
        ours(np.zeros((1, 28, 28, 3), np.float32))


def test_vision_parity_transformers_layout(vision_reference):
    hf, pixels, embeds = vision_reference
    ours = build(CLIPImageEncoder, VISION, hf, clip_vision_transformers_rules(VISION), ignore=["*position_ids"])
    assert rel_l2(forward(ours, pixels), embeds) <= 1e-4  # measured 2.2e-7


def test_vision_swapped_q_k_breaks_parity(vision_reference):
    hf, pixels, embeds = vision_reference
    openai, c = openai_visual_state(hf, VISION.layers), VISION.width
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
