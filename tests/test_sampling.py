"""DDIM with guidance against diffusers' DDIMScheduler + the reference UNet; the pipeline's behaviour."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from flax import nnx

from customnet_jax.diffusion.samplers import ddim
from customnet_jax.diffusion.schedule import DiffusionConfig, alphas_cumprod
from customnet_jax.models.build import initialized_model
from customnet_jax.models.customnet import CustomNet
from customnet_jax.models.params import get_params, set_params
from customnet_jax.models.presets import tiny_model
from customnet_jax.sampling.pipeline import Pipeline, cast_weights
from tests.helpers import rel_l2
from tests.test_unet import TINY, diffusers_unet, our_unet, random_ldm_state

GUIDANCE = 3.0
STEPS = 10
BATCH = 2


SD = DiffusionConfig()
ZERO_SNR = DiffusionConfig(prediction_type="v_prediction", zero_terminal_snr=True)


def reference_scheduler(diffusion: DiffusionConfig = SD) -> DDIMScheduler:
    """diffusers DDIM configured as the original LDM sampler (docs/model.md §7), or for a zero-terminal-SNR v model."""
    zero_snr = diffusion.zero_terminal_snr
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=0 if zero_snr else 1,
                         timestep_spacing="trailing" if zero_snr else "leading", rescale_betas_zero_snr=zero_snr,
                         prediction_type=diffusion.prediction_type)


@pytest.fixture(scope="module")
def setup():
    config = dataclasses.replace(TINY, in_channels=8)
    state = random_ldm_state(config, seed=3)
    rng = np.random.default_rng(0)
    h = 16
    data = dict(
        x_T=rng.normal(size=(BATCH, h, h, 4)).astype(np.float32),
        object_latent=rng.normal(size=(BATCH, h, h, 4)).astype(np.float32),
        context=rng.normal(size=(BATCH, 8, config.context_dim)).astype(np.float32),
        null_context=np.concatenate([np.zeros((BATCH, 1, config.context_dim), np.float32),
                                     rng.normal(size=(BATCH, 7, config.context_dim)).astype(np.float32)], 1),
        noises=rng.normal(size=(STEPS, BATCH, h, h, 4)).astype(np.float32),
    )
    return config, our_unet(config, state), diffusers_unet(config, state), data


@functools.partial(nnx.jit, static_argnames="prediction_type")
def guided_ddim(unet, x_T, conditions, context, noises, timesteps, alphas, alphas_prev, sigmas, prediction_type):
    """Our sampler with batched cond/uncond guidance; one compile per number of steps."""
    def model_fn(x, t):
        out = unet(jnp.concatenate([jnp.tile(x, (2, 1, 1, 1)), conditions], -1), jnp.tile(t, 2), context)
        cond, uncond = jnp.split(out, 2)
        return uncond + GUIDANCE * (cond - uncond)

    plan = ddim.DDIMSchedule(timesteps, alphas, alphas_prev, sigmas, prediction_type)
    return ddim.sample(model_fn, x_T, plan, noises=noises)


def ours(unet, data, eta: float, schedule: str, diffusion: DiffusionConfig = SD) -> np.ndarray:
    plan = ddim.ddim_schedule(alphas_cumprod(diffusion), STEPS, eta, schedule, diffusion.prediction_type)
    conditions = np.concatenate([data["object_latent"], np.zeros_like(data["object_latent"])])
    context = np.concatenate([data["context"], data["null_context"]])
    noises = data["noises"][: plan.num_steps]  # multiplied by sigma = 0 when eta = 0
    return np.asarray(guided_ddim(unet, data["x_T"], conditions, context, noises, plan.timesteps, plan.alphas,
                                  plan.alphas_prev, plan.sigmas, plan.prediction_type))


def reference(model, data, eta: float, schedule: str, diffusion: DiffusionConfig = SD) -> np.ndarray:
    scheduler = reference_scheduler(diffusion)
    scheduler.set_timesteps(STEPS)
    timesteps = scheduler.timesteps[1:] if schedule == "original" else scheduler.timesteps
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2))))
    x = nchw(data["x_T"])
    conditions = torch.cat([nchw(data["object_latent"]), torch.zeros_like(nchw(data["object_latent"]))])
    context = torch.from_numpy(np.concatenate([data["context"], data["null_context"]]))
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            out = model(torch.cat([torch.cat([x, x]), conditions], 1), torch.full((2 * BATCH,), int(t)),
                        encoder_hidden_states=context).sample
            cond, uncond = out.chunk(2)
            eps = uncond + GUIDANCE * (cond - uncond)
            noise = nchw(data["noises"][i]) if eta else None
            x = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
    return x.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("eta,schedule", [(0.0, "correct"), pytest.param(0.0, "original", marks=pytest.mark.slow),
                                          (1.0, "correct")])
def test_ddim_with_guidance_matches_diffusers(setup, eta, schedule):
    _, unet, reference_unet, data = setup
    error = rel_l2(ours(unet, data, eta, schedule), reference(reference_unet, data, eta, schedule))
    # measured: 1.1e-6 (eta 0), 1.0e-6 (original schedule), 1.5e-6 (eta 1, same noise draws)
    assert error <= 1e-4, error


@pytest.mark.slow
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_zero_terminal_snr_v_prediction_matches_diffusers(setup, eta):
    """Rescaled betas (a_T = 0), v outputs, trailing grid from t = 999: diffusers' DDIMScheduler with
    rescale_betas_zero_snr, prediction_type="v_prediction", timestep_spacing="trailing"."""
    _, unet, reference_unet, data = setup
    error = rel_l2(ours(unet, data, eta, "trailing", ZERO_SNR), reference(reference_unet, data, eta, "trailing",
                                                                            ZERO_SNR))
    # measured: 5.7e-7 (eta 0), 2.6e-6 (eta 1, same noise draws)
    assert error <= 1e-4, error
    # the same v sampler on SD's un-rescaled betas is far off (measured 3.5e-2, 4.0e-2)
    unrescaled = DiffusionConfig(zero_terminal_snr=False, prediction_type="v_prediction")
    assert rel_l2(ours(unet, data, eta, "trailing", unrescaled), reference(reference_unet, data, eta, "trailing",
                                                                            ZERO_SNR)) > 1e-2


def test_zero_terminal_snr_schedule():
    """a_T = 0, a_0 unchanged, diffusers' rescaled alphas_cumprod; the trailing grid starts at T - 1; eps
    prediction is refused with it (x_0 cannot be read from eps at SNR 0)."""
    ours_acp, sd_acp = alphas_cumprod(ZERO_SNR), alphas_cumprod(DiffusionConfig())
    assert ours_acp[-1] == 0.0 and ours_acp[0] == pytest.approx(sd_acp[0], rel=1e-6)
    np.testing.assert_allclose(ours_acp, reference_scheduler(ZERO_SNR).alphas_cumprod.numpy(), rtol=1e-5, atol=1e-7)
    plan = ddim.ddim_schedule(ours_acp, 25, 0.0, "trailing", "v_prediction")
    assert plan.timesteps[0] == 999 and plan.timesteps[-1] == 39 and plan.alphas[0] == 0.0
    assert plan.alphas_prev[-1] == ours_acp[0]
    with pytest.raises(ValueError, match="v_prediction"):
        DiffusionConfig(zero_terminal_snr=True)


@pytest.mark.slow
@pytest.mark.parametrize("steps", [20, 25, 50, 100])
def test_eta_one_from_zero_terminal_snr_stays_finite(steps):
    """At eta = 1 the first step (a_t = 0) has 1 - a_prev - sigma^2 = 0 exactly; float32 rounding made it -6e-8 for
    20, 25 and 100 steps and the whole picture NaN (black) before it was clamped."""
    plan = ddim.ddim_schedule(alphas_cumprod(ZERO_SNR), steps, 1.0, "trailing", "v_prediction")
    x_T = jax.random.normal(jax.random.key(0), (1, 4, 4, 4))
    out = ddim.sample(lambda x, t: 0.5 * x, x_T, plan, jax.random.key(1))
    assert np.isfinite(np.asarray(out)).all()


def test_original_schedule_drops_the_top_step():
    acp = alphas_cumprod(DiffusionConfig())
    correct, original = (ddim.ddim_schedule(acp, 50, 0.0, s) for s in ("correct", "original"))
    assert correct.timesteps[0] == 981 and correct.timesteps[-1] == 1 and correct.num_steps == 50
    assert original.timesteps[0] == 961 and original.num_steps == 49
    assert original.alphas_prev[-1] == acp[0] and original.alphas_prev[0] == acp[941]
    with pytest.raises(ValueError, match="steps"):
        ddim.ddim_schedule(acp, 0)


@pytest.mark.slow
def test_wrong_schedule_breaks_parity(setup):
    _, unet, reference_unet, data = setup
    error = rel_l2(ours(unet, data, 0.0, "original"), reference(reference_unet, data, 0.0, "correct"))
    assert error > 1e-3, error


# ----------------------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def pipeline():
    """A tiny random CustomNet whose zero-initialised parts (output layers, cc_projection's view rows) are made
    random, so that every input matters."""
    model = initialized_model(lambda: CustomNet(tiny_model(), rngs=nnx.Rngs(0)), seed=0)
    params, rng = get_params(model), np.random.default_rng(1)
    for path, value in params.items():
        if path[-1] == "kernel" and not value.any():
            params[path] = (0.05 * rng.standard_normal(value.shape)).astype(np.float32)
    params[("cc_projection", "kernel")][-4:] = rng.standard_normal((4, 32))  # the view rows start at zero too
    set_params(model, params)
    return Pipeline(model)


@pytest.fixture(scope="module")
def object_picture():
    rgba = np.zeros((40, 30, 4), np.uint8)
    rgba[5:35, 5:25] = (200, 30, 30, 255)
    rgba[5:20, 5:25, :3] = (30, 30, 200)
    return rgba


@pytest.mark.slow
def test_same_seed_same_pictures_and_views_share_the_noise(pipeline, object_picture):
    kwargs = dict(bbox=(8, 8, 56, 56), views=[(0, 0, 0), (0, 90, 0)], prompt="a red box", steps=3,
                  progress=False)
    first = pipeline(object_picture, seed=7, **kwargs)
    again = pipeline(object_picture, seed=7, **kwargs)
    other = pipeline(object_picture, seed=8, **kwargs)
    assert first.images.shape == (2, 1, 64, 64, 3) and first.images.dtype == np.uint8
    np.testing.assert_array_equal(first.images, again.images)
    assert not np.array_equal(first.images, other.images)
    assert not np.array_equal(first.latents[0], first.latents[1])  # the view changes the picture...
    # ... from the same starting noise: with zero steps of change the two views would coincide
    assert first.settings["seed"] == 7 and first.settings["bbox"] == [8, 8, 56, 56]
    assert first.settings["views"] == [[0.0, 0.0, 0.0], [0.0, 90.0, 0.0]]


@pytest.mark.slow
def test_zero_terminal_snr_model_samples_on_the_trailing_grid(pipeline, object_picture):
    """A model folder's diffusion config reaches the sampler: a zero-SNR v model defaults to the trailing grid and
    reads its outputs as v (read as eps, the first step would divide by sqrt(a_T) = 0)."""
    v_pipeline = Pipeline(nnx.merge(pipeline.graphdef, pipeline.state), ZERO_SNR)
    kwargs = dict(bbox=(8, 8, 56, 56), prompt="a red box", steps=4, progress=False)
    default = v_pipeline(object_picture, **kwargs)
    trailing = v_pipeline(object_picture, sampler_options={"schedule": "trailing"}, **kwargs)
    assert default.settings["sampler_options"]["schedule"] == "trailing" and np.isfinite(default.latents).all()
    np.testing.assert_array_equal(default.images, trailing.images)
    eps_model = pipeline(object_picture, **kwargs)
    assert eps_model.settings["sampler_options"]["schedule"] == "correct"
    assert rel_l2(eps_model.latents, default.latents) > 0.1


def test_pipeline_bad_inputs(pipeline, object_picture, tmp_path):
    with pytest.raises(ValueError, match="outside"):
        pipeline(object_picture, bbox=(0, 0, 80, 30), steps=2, progress=False)
    with pytest.raises(ValueError, match="zero or negative area"):
        pipeline(object_picture, bbox=(10, 10, 10, 30), steps=2, progress=False)
    with pytest.raises(ValueError, match="no background channels"):
        pipeline(object_picture, background=np.zeros((64, 64, 3), np.float32), steps=2, progress=False)
    with pytest.raises(ValueError, match="steps"):
        pipeline(object_picture, steps=0, progress=False)
    with pytest.raises(ValueError, match="empty"):
        pipeline(np.zeros((20, 20, 4), np.uint8), steps=2, progress=False)
    with pytest.raises(FileNotFoundError):
        pipeline(str(tmp_path / "missing.png"), steps=2, progress=False)


@pytest.mark.slow
def test_guided_step_is_one_program(pipeline, object_picture):
    """Changing guidance or the prompt reuses the compiled program; only shapes recompile."""
    kwargs = dict(bbox=(8, 8, 56, 56), views=[(0, 0, 0), (0, 90, 0)], steps=3, progress=False)
    pipeline(object_picture, prompt="a", guidance=2.0, **kwargs)
    before = pipeline._generate._cache_size()
    params = jax.tree.leaves(pipeline.state)
    pipeline(object_picture, prompt="something else entirely", guidance=5.0, seed=3, **kwargs)
    assert pipeline._generate._cache_size() == before
    # parameters stay on device between calls: device arrays, the very same ones (not copied in again per call)
    after = jax.tree.leaves(pipeline.state)
    assert params and all(isinstance(x, jax.Array) for x in after)
    assert len(after) == len(params) and all(a is b for a, b in zip(after, params, strict=True))



def _with_compute_dtype(model: CustomNet, dtype) -> CustomNet:
    """The same weights (float32) in a model computing in `dtype`."""
    other = initialized_model(lambda: CustomNet(model.config, rngs=nnx.Rngs(0), dtype=dtype), seed=0)
    set_params(other, get_params(model))
    return other


def _state_bytes(state) -> int:
    return sum(leaf.nbytes for leaf in jax.tree.leaves(state))


@pytest.mark.slow
def test_bf16_weights_read_half_the_bytes_and_match_bf16_compute(pipeline, object_picture):
    """sample.py --bf16 stores the weights in bf16 (Pipeline.from_folder): the layers round them to bf16 at each
    call anyway, so the outputs match bf16 compute on float32 weights, for half the bytes a step reads. Checked on
    what a sampling step computes from the weights: the object token (CLIP + cc_projection) and one UNet call.
    Tolerance: bf16 weights may be at most 1.5x as far from float32 as bf16 compute alone (+1e-3); the negative
    control (weights through float8 e4m3 before bf16) is refused by it."""
    model = _with_compute_dtype(nnx.merge(pipeline.graphdef, pipeline.state), jnp.bfloat16)
    compute_only = Pipeline(model)
    stored = Pipeline(model, weights_dtype=jnp.bfloat16)
    dtypes = {(leaf.ndim >= 2, leaf.dtype) for leaf in jax.tree.leaves(stored.state)
              if jnp.issubdtype(leaf.dtype, jnp.floating)}
    assert dtypes == {(True, jnp.dtype(jnp.bfloat16)), (False, jnp.dtype(jnp.float32))}, dtypes  # vectors stay
    assert _state_bytes(stored.state) < 0.51 * _state_bytes(compute_only.state)
    lossy = cast_weights(cast_weights(compute_only.state, jnp.float8_e4m3fn), jnp.bfloat16)

    c, rng = pipeline.config, np.random.default_rng(4)
    obj = jnp.asarray(pipeline.prepare_object(object_picture)[None])
    view = jnp.asarray([[0.3, 0.5, 0.8, 0.1]], jnp.float32)
    x = jnp.asarray(rng.standard_normal((1, c.latent_size, c.latent_size, c.latent_channels)), jnp.float32)
    conditions = jnp.asarray(rng.standard_normal((1, c.latent_size, c.latent_size,
                                                  c.unet.in_channels - c.latent_channels)), jnp.float32)
    text = jnp.asarray(rng.standard_normal((1, c.text_encoder.max_length, c.context_dim)), jnp.float32)

    def outputs(p: Pipeline, state) -> np.ndarray:
        def run(state):
            m = nnx.merge(p.graphdef, state)
            token = m.object_token(obj, view)
            eps = m.denoise(x, jnp.asarray([500]), conditions, m.context(token, text))
            return jnp.concatenate([token.ravel(), eps.ravel()]).astype(jnp.float32)
        return np.asarray(jax.jit(run)(state))

    reference = outputs(pipeline, pipeline.state)
    error = {name: rel_l2(outputs(p, state), reference) for name, p, state in
             [("compute", compute_only, compute_only.state), ("stored", stored, stored.state),
              ("lossy", stored, lossy)]}
    assert 0 < error["compute"] and error["stored"] <= 1.5 * error["compute"] + 1e-3, error
    assert error["lossy"] > 1.5 * error["compute"] + 1e-3, error  # negative control
