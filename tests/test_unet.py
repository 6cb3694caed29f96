"""UNet: full-size shapes against the released checkpoint, and parity with diffusers on tiny random weights."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from customnet_jax.models import pallas_attention
from customnet_jax.models.build import abstract_model, model_with_params
from customnet_jax.models.lora import LoRALinear
from customnet_jax.models.params import param_shapes
from customnet_jax.models.unet import Attention, UNet, UNetConfig
from customnet_jax.weights import rules as R
from customnet_jax.weights.unet_names import unet_rules
from tests.helpers import rel_l2
from tests.reference_state import reference_shapes
from tests.torch_reference import LDM, diffusers_unet, random_ldm_state, reference_output

TINY = UNetConfig(in_channels=8, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                  attention_levels=(0, 1), num_heads=4, context_dim=32, norm_groups=8)
TEXT_TOKENS = 7


def count(config: UNetConfig) -> int:
    return sum(int(np.prod(s)) for s in param_shapes(abstract_model(lambda: UNet(config, rngs=nnx.Rngs(0)))).values())


def test_full_size_parameter_counts():
    full = UNetConfig()
    assert count(full) == 878_701_764
    assert count(dataclasses.replace(full, in_channels=12)) == 878_701_764 + 320 * 4 * 9
    assert count(dataclasses.replace(full, text_context=False)) == 859_532_484


def test_rules_cover_released_checkpoint_exactly():
    model = abstract_model(lambda: UNet(UNetConfig(), rngs=nnx.Rngs(0)))
    rules = unet_rules(UNetConfig())
    expected = R.expected_torch_shapes(rules, param_shapes(model))  # also checks one rule per parameter
    released = {k[len(LDM):]: s for k, s in reference_shapes().items() if k.startswith(LDM)}
    assert expected == released


def our_unet(config: UNetConfig, ldm_state: dict[str, np.ndarray], attention: str | None = None) -> UNet:
    build = lambda: UNet(config, rngs=nnx.Rngs(0), attention=attention)
    shapes = param_shapes(abstract_model(build))
    return model_with_params(build, R.import_tensors(ldm_state, unet_rules(config), shapes))


forward = nnx.jit(lambda model, *args: model(*args))


def inputs(config: UNetConfig, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = config.object_tokens + (TEXT_TOKENS if config.text_context else 0)
    x = rng.normal(size=(2, 16, 16, config.in_channels)).astype(np.float32)
    timesteps = np.array([3, 917], dtype=np.int32)
    context = rng.normal(size=(2, tokens, config.context_dim)).astype(np.float32)
    return x, timesteps, context


MODES = {
    "customnet_in8": TINY,
    "customnet_in12": dataclasses.replace(TINY, in_channels=12),
    "zero123": dataclasses.replace(TINY, text_context=False),
}


# the 12-channel and Zero-1-to-3 variants (the same code at other sizes) run in the full suite only
@pytest.fixture(scope="module", params=[pytest.param(name, marks=() if name == "customnet_in8" else pytest.mark.slow)
                                        for name in MODES])
def pair(request):
    config = MODES[request.param]
    state = random_ldm_state(config, seed=1)
    return config, state, our_unet(config, state), diffusers_unet(config, state)


def test_parity_with_diffusers(pair):
    config, _, ours, reference = pair
    x, timesteps, context = inputs(config)
    error = rel_l2(forward(ours, x, timesteps, context), reference_output(reference, x, timesteps, context))
    # measured on this CPU: 1.5e-7 (in 8), 1.5e-7 (in 12), 1.2e-7 (zero123)
    assert error <= 1e-4, error


@pytest.mark.slow
def test_per_head_attention_matches_diffusers_and_its_gradient(pair):
    """UNet(attention="per_head") (the CPU path: one (sample, head) at a time, rematerialised) against diffusers,
    and its parameter gradient against the default attention's."""
    config, state, ours, reference = pair
    per_head = our_unet(config, state, attention="per_head")
    x, timesteps, context = inputs(config)
    error = rel_l2(forward(per_head, x, timesteps, context), reference_output(reference, x, timesteps, context))
    assert error <= 1e-4, error
    if config is not TINY:
        return  # the gradient once (the backward pass compiles slowly)

    def grads(model):
        graphdef, params = nnx.split(model, nnx.Param)
        loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(x, timesteps, context) ** 2)
        return jax.tree.leaves(jax.jit(jax.grad(loss))(params))

    flat = lambda leaves: np.concatenate([np.ravel(g) for g in leaves])
    assert rel_l2(flat(grads(per_head)), flat(grads(ours))) <= 1e-4



@pytest.mark.parametrize("pair", ["customnet_in8"], indirect=True)  # one mode: the kernel ignores the conditioning
def test_splash_attention_matches_diffusers(pair):
    """UNet(attention="splash"): the Pallas TPU kernel (interpret mode on a CPU) on the level-0 self-attention
    (16 x 16 = 256 tokens, 8-wide heads zero-padded to 128), jax's attention elsewhere, against diffusers."""
    config, state, _, reference = pair
    splash = our_unet(config, state, attention="splash")
    x, timesteps, context = inputs(config)
    error = rel_l2(forward(splash, x, timesteps, context), reference_output(reference, x, timesteps, context))
    assert error <= 1e-4, error  # measured 1.5e-7


def _self_attention_pair(adapted: bool = False):
    """An attention module (64 channels, 4 heads of 16, bias on to_out) with random weights, as "splash" and "xla"."""
    module = Attention(64, 64, 4, text_kv=False, object_tokens=0, rngs=nnx.Rngs(0), dtype=jnp.float32)
    keys = iter(jax.random.split(jax.random.key(1), 8))
    for linear in (module.to_q, module.to_k, module.to_v, module.to_out):
        linear.kernel[...] = jax.random.normal(next(keys), linear.kernel.shape) * 0.2
    module.to_out.bias[...] = jax.random.normal(next(keys), (64,))
    if adapted:
        module.to_q = LoRALinear(module.to_q, rank=2, scaling=1.0)
        module.to_q.lora_a[...] = jax.random.normal(next(keys), (64, 2))
        module.to_q.lora_b[...] = jax.random.normal(next(keys), (2, 64)) * 0.1
    graphdef, params = nnx.split(module)

    def run(implementation, params, x):
        model = nnx.merge(graphdef, params)
        model.attention_implementation = implementation
        return model(x)

    x = jax.random.normal(next(keys), (2, 128, 64))  # 128 tokens: one splash block
    return run, params, x


@pytest.mark.parametrize("adapted", [False, True])
def test_splash_self_attention_folds_the_projections(adapted):
    """The UNet's self-attention under "splash" (projection weights laid out head-major and zero-padded to 128
    around the kernel, interpret mode on a CPU) equals jax's attention: forward, and gradients with respect to the
    weights and the input. With a LoRA adapter on to_q it takes the unfolded path (and still matches)."""
    run, params, x = _self_attention_pair(adapted)
    assert rel_l2(run("splash", params, x), run("xla", params, x)) <= 1e-5  # measured ~3e-7
    loss = lambda implementation: lambda p, x: jnp.sum(run(implementation, p, x) ** 2)
    splash = jax.grad(loss("splash"), argnums=(0, 1))(params, x)
    xla = jax.grad(loss("xla"), argnums=(0, 1))(params, x)
    flat = lambda tree: np.concatenate([np.ravel(g) for g in jax.tree.leaves(tree)])
    assert rel_l2(flat(splash), flat(xla)) <= 1e-5


def test_splash_self_attention_with_swapped_projections_fails():
    """Negative control: the same comparison with to_k and to_v exchanged in the folded path is far off."""
    run, params, x = _self_attention_pair()
    expected = run("xla", params, x)
    kernels = [params[name]["kernel"][...] for name in ("to_q", "to_v", "to_k", "to_out")]
    swapped = pallas_attention.splash_self_attention(x, 4, *kernels, x.dtype) + params["to_out"]["bias"][...]
    assert rel_l2(swapped, expected) > 0.1


def test_unknown_attention_implementation_is_refused():
    with pytest.raises(ValueError, match="attention 'flash'"):
        UNet(TINY, rngs=nnx.Rngs(0), attention="flash")


def test_swapped_weights_break_parity(pair):
    config, state, _, reference = pair
    broken = dict(state)
    key = "input_blocks.1.1.transformer_blocks.0.attn2."
    if config.text_context:  # object and text value projections exchanged
        a, b = key + "to_v.weight", key + "to_v_text.weight"
        broken[a], broken[b] = state[b], state[a]
    else:  # the two res-block convs of one level exchanged
        a, b = "input_blocks.1.0.in_layers.2.weight", "input_blocks.1.0.out_layers.3.weight"
        broken[a], broken[b] = state[b], state[a]
    x, timesteps, context = inputs(config)
    error = rel_l2(forward(our_unet(config, broken), x, timesteps, context),
                   reference_output(reference, x, timesteps, context))
    assert error > 1e-3, error


def test_bad_inputs_raise_clear_errors(pair):
    config, _, ours, _ = pair
    x, timesteps, context = inputs(config)
    with pytest.raises(ValueError, match="expected \\(B, H, W"):
        ours(x[..., :3], timesteps, context)
    with pytest.raises(ValueError, match="multiple of 4"):
        ours(x[:, :14, :14], timesteps, context)
    wrong = context[:, :1] if config.text_context else np.concatenate([context, context], axis=1)
    with pytest.raises(ValueError, match="context has"):
        ours(x, timesteps, wrong)


def test_config_that_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="GroupNorm"):
        dataclasses.replace(TINY, model_channels=36)
    with pytest.raises(ValueError, match="heads"):
        dataclasses.replace(TINY, num_heads=5, norm_groups=1)
