"""VAE: full-size structure against the released checkpoint's keys; tiny-config parity with diffusers.AutoencoderKL."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from customnet_jax.models.build import abstract_model
from customnet_jax.models.layers import set_attention
from customnet_jax.models.vae import VAE, VAEConfig, sample_posterior
from customnet_jax.weights import params as P
from customnet_jax.weights import rules as R
from customnet_jax.weights.vae_names import vae_rules
from tests.helpers import rel_l2
from tests.reference_state import reference_shapes
from tests.torch_reference import diffusers_vae, random_vae_state

PREFIX = "first_stage_model."
# Tiny but structurally complete: 3 levels (channel change, two down/upsamplers), 2 res blocks, mid attention.
TINY = VAEConfig(base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=2, norm_groups=8)


def checkpoint_vae_shapes() -> dict[str, tuple[int, ...]]:
    """VAE key -> shape from the released customnet_v1.pt key listing."""
    return {k: s for k, s in reference_shapes().items() if k.startswith(PREFIX)}


def test_full_size_matches_checkpoint_keys():
    shapes = P.param_shapes(abstract_vae(VAEConfig()))
    assert sum(int(np.prod(s)) for s in shapes.values()) == 83_653_863
    rules = R.prefixed(vae_rules(VAEConfig()), PREFIX)
    R.check_coverage(rules, shapes)
    assert R.expected_torch_shapes(rules, shapes) == checkpoint_vae_shapes()


def abstract_vae(config: VAEConfig) -> VAE:
    return abstract_model(lambda: VAE(config, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def tiny():
    """(our model, its LDM state, diffusers reference, jitted encode, jitted decode), built once."""
    state = random_vae_state(TINY, seed=0)
    model = abstract_vae(TINY)
    P.set_params(model, R.import_tensors(state, vae_rules(TINY), P.param_shapes(model)))
    reference = diffusers_vae(TINY, state)
    return model, state, reference, nnx.jit(lambda m, x: m.encode(x)), nnx.jit(lambda m, z: m.decode(z))


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(1).uniform(-1, 1, (2, 24, 16, 3)).astype(np.float32)  # non-square NHWC


def reference_encode(reference, image):
    with torch.no_grad():
        dist = reference.encode(torch.from_numpy(image).permute(0, 3, 1, 2)).latent_dist
    return dist.mean.permute(0, 2, 3, 1).numpy(), dist.logvar.permute(0, 2, 3, 1).numpy()


def test_encode_decode_parity(tiny, image):
    model, _, reference, encode, decode = tiny
    mean, logvar = encode(model, jnp.asarray(image))
    ref_mean, ref_logvar = reference_encode(reference, image)
    assert mean.shape == (2, 6, 4, TINY.latent_channels)
    # measured: mean 1.2e-6, logvar 1.0e-6 (float32, CPU)
    assert rel_l2(mean, ref_mean) <= 1e-4, rel_l2(mean, ref_mean)
    assert rel_l2(logvar, ref_logvar) <= 1e-4, rel_l2(logvar, ref_logvar)

    z = np.random.default_rng(2).standard_normal((2, 6, 4, TINY.latent_channels)).astype(np.float32)
    with torch.no_grad():
        ref_image = reference.decode(torch.from_numpy(z).permute(0, 3, 1, 2)).sample.permute(0, 2, 3, 1).numpy()
    out = decode(model, jnp.asarray(z))
    assert out.shape == (2, 24, 16, 3)
    # measured: 1.1e-6
    assert rel_l2(out, ref_image) <= 1e-4, rel_l2(out, ref_image)


@pytest.mark.parametrize("implementation", ["per_head", "splash"])
def test_attention_switch_keeps_parity(tiny, implementation):
    """The VAE's attention goes through layers.attention's switch: the CPU kernel and Pallas splash (interpret mode
    here; the mid attention's 16 x 16 = 256 tokens are a size the kernel takes) against diffusers."""
    model, _, reference, encode, decode = tiny
    image = np.random.default_rng(3).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    z = np.random.default_rng(4).standard_normal((2, 16, 16, TINY.latent_channels)).astype(np.float32)
    with torch.no_grad():
        ref_image = reference.decode(torch.from_numpy(z).permute(0, 3, 1, 2)).sample.permute(0, 2, 3, 1).numpy()
    set_attention(model, implementation)
    try:
        mean, _ = encode(model, jnp.asarray(image))
        out = decode(model, jnp.asarray(z))
    finally:
        set_attention(model, None)
    # measured: per_head 1.2e-6 / 1.1e-6, splash 1.2e-6 / 1.1e-6
    assert rel_l2(mean, reference_encode(reference, image)[0]) <= 1e-4
    assert rel_l2(out, ref_image) <= 1e-4


def test_wrong_mapping_breaks_parity(tiny, image):
    """Swapping two same-shaped tensors (encoder mid attention q <-> k) must show up clearly."""
    model, state, reference, encode, _ = tiny
    rules = vae_rules(TINY)
    swap = {"encoder.mid.attn_1.q.weight": "encoder.mid.attn_1.k.weight",
            "encoder.mid.attn_1.k.weight": "encoder.mid.attn_1.q.weight"}
    wrong = [dataclasses.replace(r, torch_key=swap.get(r.torch_key, r.torch_key)) for r in rules]
    good = P.get_params(model)
    try:
        P.set_params(model, R.import_tensors(state, wrong, P.param_shapes(model)))
        mean, _ = encode(model, jnp.asarray(image))
    finally:
        P.set_params(model, good)
    error = rel_l2(mean, reference_encode(reference, image)[0])
    assert error > 1e-3, error  # measured: 2.0e-1


def test_wrong_groupnorm_eps_breaks_parity(tiny, image):
    """The VAE's GroupNorm eps (1e-6) matters: 1e-2 instead must show up clearly."""
    _, state, reference, encode, _ = tiny
    config = dataclasses.replace(TINY, norm_eps=1e-2)
    model = abstract_vae(config)
    P.set_params(model, R.import_tensors(state, vae_rules(config), P.param_shapes(model)))
    mean, _ = encode(model, jnp.asarray(image))
    error = rel_l2(mean, reference_encode(reference, image)[0])
    assert error > 1e-3, error  # measured: 1.6e-2


def test_bad_inputs_raise(tiny):
    model = tiny[0]
    with pytest.raises(ValueError, match="multiple of 4"):
        model.encode(jnp.zeros((1, 18, 16, 3)))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        model.encode(jnp.zeros((1, 16, 16, 4)))
    with pytest.raises(ValueError, match="latents"):
        model.decode(jnp.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="norm_groups"):
        VAEConfig(base_channels=20, norm_groups=8)


def test_sample_posterior():
    mean = jnp.arange(6.0).reshape(1, 1, 2, 3)
    assert np.allclose(sample_posterior(mean, jnp.full_like(mean, -30.0), jax.random.key(0)), mean, atol=1e-5)
    draw = sample_posterior(jnp.zeros((4096,)), jnp.full((4096,), 2 * np.log(3.0)), jax.random.key(1))
    assert abs(float(jnp.std(draw)) - 3.0) < 0.2
