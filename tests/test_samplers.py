"""The samplers behind the `Sampler` interface against diffusers' schedulers driving the same small model function
(same random weights, same x_T, same per-step noise), eps and v prediction, SD 1.x and zero-terminal-SNR; the
refusals of bad names, steps and options; one compiled program per (sampler, steps)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from customnet_jax.diffusion import samplers
from customnet_jax.diffusion.schedule import DiffusionConfig
from tests.helpers import rel_l2

SHAPE = (2, 6, 6, 4)  # (B, h, w, c)
HIDDEN = 16
REFERENCES = {"dpmpp_2m": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler,
              "euler": EulerDiscreteScheduler, "euler_ancestral": EulerAncestralDiscreteScheduler}
CASES = {  # name -> (diffusion config, spacing)
    "sd_eps_leading": (DiffusionConfig(), "leading"),
    "sd_v_trailing": (DiffusionConfig(prediction_type="v_prediction"), "trailing"),
    "zero_snr_v_trailing": (DiffusionConfig(prediction_type="v_prediction", zero_terminal_snr=True), "trailing"),
}


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(0)
    return dict(w1=rng.normal(size=(4, HIDDEN)) / 2, w2=rng.normal(size=(HIDDEN, 4)) / 4,
                embed=rng.normal(size=(HIDDEN, HIDDEN)) / 4, freqs=np.exp(-np.linspace(0, 8, HIDDEN // 2)),
                x_T=rng.normal(size=SHAPE))


def model_fn(w, x, t):
    """A small per-pixel network of (x, t): 0.6 x + tanh(x W1 + embedding(t)) W2 (jax)."""
    angles = t.astype(jnp.float32)[:, None] * jnp.asarray(w["freqs"], jnp.float32)
    embedding = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1) @ jnp.asarray(w["embed"], jnp.float32)
    hidden = jnp.tanh(x @ jnp.asarray(w["w1"], jnp.float32) + embedding[:, None, None, :])
    return 0.6 * x + hidden @ jnp.asarray(w["w2"], jnp.float32)


def torch_model_fn(w, x, t):
    """The same network in torch."""
    f = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in w.items()}
    angles = torch.full((x.shape[0],), float(t))[:, None] * f["freqs"]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], -1) @ f["embed"]
    hidden = torch.tanh(x @ f["w1"] + embedding[:, None, None, :])
    return 0.6 * x + hidden @ f["w2"]


@functools.partial(jax.jit, static_argnames=("name",))
def run(name, w, x_T, schedule, noises):
    return samplers.get(name).sample(functools.partial(model_fn, w), x_T, schedule, noises=noises)


def ours(name, w, diffusion, steps, spacing, noises=None):
    _, schedule, _ = samplers.make_schedule(name, diffusion, steps, {"spacing": spacing})
    return np.asarray(run(name, w, jnp.asarray(w["x_T"], jnp.float32), schedule, noises))


def reference(name, w, diffusion, steps, spacing, seed=5):
    """diffusers' scheduler as its pipelines drive it: x_T scaled by init_noise_sigma, scale_model_input, step."""
    scheduler = REFERENCES[name](num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                 beta_schedule="scaled_linear", prediction_type=diffusion.prediction_type,
                                 timestep_spacing=spacing, steps_offset=1,
                                 rescale_betas_zero_snr=diffusion.zero_terminal_snr)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.asarray(w["x_T"], np.float32)) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            output = torch_model_fn(w, scheduler.scale_model_input(x, t), t)
            extra = {"generator": generator} if name == "euler_ancestral" else {}
            x = scheduler.step(output, t, x, **extra).prev_sample
    return x.numpy()


def reference_noises(steps, seed=5):
    """The draws diffusers' ancestral step makes from torch.Generator(seed): one randn of the sample's shape each."""
    generator = torch.Generator().manual_seed(seed)
    return jnp.asarray(np.stack([torch.randn(SHAPE, generator=generator).numpy() for _ in range(steps)]))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", REFERENCES)
@pytest.mark.parametrize("steps", [10, 20])
def test_matches_diffusers(weights, name, case, steps):
    diffusion, spacing = CASES[case]
    noises = reference_noises(steps) if name == "euler_ancestral" else None
    error = rel_l2(ours(name, weights, diffusion, steps, spacing, noises),
                   reference(name, weights, diffusion, steps, spacing))
    # measured (10 / 20 steps): dpmpp_2m 3.0e-7..4.1e-7, unipc 2.4e-7..3.5e-7, euler 1.8e-7..4.0e-6 (4e-6: zero SNR,
    # x starts at sigma = 4096 there), euler_ancestral 2.3e-7..4.9e-7
    assert error <= 1e-4, error


@pytest.mark.parametrize("name", REFERENCES)
def test_a_wrong_option_breaks_parity(weights, name):
    """Negative control: our sampler on the other grid spacing (and, for the ancestral one, other draws); measured
    0.14 (dpmpp_2m), 0.13 (unipc), 0.20 (euler), 0.43 (euler_ancestral)."""
    diffusion, _ = CASES["sd_v_trailing"]
    expected = reference(name, weights, diffusion, 10, "trailing")
    noises = reference_noises(10) if name == "euler_ancestral" else None
    assert rel_l2(ours(name, weights, diffusion, 10, "leading", noises), expected) > 1e-3
    if name == "euler_ancestral":
        assert rel_l2(ours(name, weights, diffusion, 10, "trailing", reference_noises(10, seed=6)), expected) > 1e-3


def test_one_program_per_sampler_and_steps(weights):
    """Other options of the same sampler and steps reuse the program; other steps compile one more."""
    diffusion = DiffusionConfig()
    before = run._cache_size()
    ours("unipc", weights, diffusion, 7, "trailing")
    ours("unipc", weights, diffusion, 7, "leading")
    assert run._cache_size() == before + 1
    ours("unipc", weights, diffusion, 8, "leading")
    assert run._cache_size() == before + 2


@pytest.mark.parametrize("name,steps,options,message", [
    ("heun", 10, {}, "unknown sampler 'heun': use one of ddim, dpmpp_2m"),
    ("dpmpp_2m", 1, {}, "steps must be between 2 and 1000 for sampler dpmpp_2m"),
    ("unipc", 1, {}, "steps must be between 2 and 1000"),
    ("ddim", 0, {}, "steps must be between 1 and 1000"),
    ("euler", 1001, {}, "steps must be between 1 and 1000"),
    ("dpmpp_2m", 10, {"eta": 0.5}, "sampler dpmpp_2m does not take eta (its options: spacing)"),
    ("euler", 10, {"schedule": "original"}, "does not take schedule"),
    ("euler", 10, {"spacing": "linspace"}, "spacing 'linspace' for sampler euler: use one of"),
    ("ddim", 10, {"spacing": "trailing"}, "sampler ddim does not take spacing (its options: eta, schedule)"),
    ("dpmpp_2m", 999, {"spacing": "leading"}, "no grid of distinct timesteps"),
])
def test_bad_input_is_refused_with_one_line(name, steps, options, message):
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        samplers.make_schedule(name, DiffusionConfig(), steps, options)
    assert "\n" not in str(error.value)


def test_none_options_mean_the_default():
    """A flag left unset (None) takes the sampler's default, which may depend on the model."""
    zero_snr = DiffusionConfig(prediction_type="v_prediction", zero_terminal_snr=True)
    assert samplers.make_schedule("ddim", zero_snr, 5, {"eta": None})[2] == {"eta": 0.0, "schedule": "trailing"}
    assert samplers.make_schedule("ddim", DiffusionConfig(), 5)[2]["schedule"] == "correct"
    assert samplers.make_schedule("euler", DiffusionConfig(), 5)[2] == {"spacing": "trailing"}


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "unipc", "euler_ancestral"])
def test_zero_terminal_snr_stays_finite(name):
    """From a_T = 0 (pure noise) every sampler ends finite, at many step counts."""
    diffusion = DiffusionConfig(prediction_type="v_prediction", zero_terminal_snr=True)
    x_T = jax.random.normal(jax.random.key(0), (1, 4, 4, 4))
    for steps in (2, 25, 50):
        _, schedule, _ = samplers.make_schedule(name, diffusion, steps)
        out = samplers.get(name).sample(lambda x, t: 0.5 * x, x_T, schedule, jax.random.key(1))
        assert np.isfinite(np.asarray(out)).all(), steps


def test_sample_and_eval_share_the_sampling_flags():
    """sample.py, eval.py protocol and eval.py demo parse the same flags into the same Pipeline keywords; options
    not given stay out (the sampler's default), so that one a sampler does not take can be refused."""
    from customnet_jax.demo.eval_command import COMMAND as DEMO_COMMAND
    from customnet_jax.evaluation.cli import build_parser
    from customnet_jax.sampling.cli import build_parser as sample_parser
    from customnet_jax.sampling.flags import sampling_options

    def eval_parser():  # as eval.py builds it: the demo subcommand comes from its caller
        return build_parser(commands=[DEMO_COMMAND])

    flags = ["--sampler", "euler", "--steps", "12", "--spacing", "leading"]
    parsed = [sample_parser().parse_args(flags),
              eval_parser().parse_args(["protocol", "--out", "o", "--synthetic", "1", *flags]),
              eval_parser().parse_args(["demo", *flags])]
    for args in parsed:
        assert sampling_options(args) == {"sampler": "euler", "steps": 12, "sampler_options": {"spacing": "leading"}}
    assert sampling_options(sample_parser().parse_args([])) == {"sampler": None, "steps": 50, "sampler_options": {}}
    assert sampling_options(eval_parser().parse_args(["demo"]))["steps"] == 25
    assert sampling_options(sample_parser().parse_args(["--eta", "1"]))["sampler_options"] == {"eta": 1.0}
