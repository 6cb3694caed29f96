"""What trains, at what rate, how it starts: ordered (regex -> value) rules in the config (issue 20 §2).

The default rules must reproduce the fixed sets they replace (UNet + cc_projection train; the text K/V at 10x;
LDM's init with zero-initialised residual outputs and the identity cc_projection), every shipped config keeps its
behaviour, and a rule list that leaves a parameter undecided or names an unknown initialiser is a one-line error
naming the parameter or the rule.
"""

import dataclasses
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import demo, tiny  # noqa: E402
from customnet_jax.config_files import override  # noqa: E402
from customnet_jax.models.init import INIT_RULES, ModelInit, initial_params  # noqa: E402
from customnet_jax.models.param_rules import RuleError, resolve  # noqa: E402
from customnet_jax.train import optimizer as opt  # noqa: E402
from customnet_jax.train import state as st  # noqa: E402


@pytest.fixture(scope="module")
def shapes():
    return st.graphdef_and_shapes(tiny.get_config())[1]


def test_default_rules_reproduce_the_former_fixed_sets(shapes):
    flat = {p: np.zeros(1) for p in shapes}
    trainable, frozen = st.split_params(flat, tiny.get_config().train.trainable)
    trained = set(st.traverse_util.flatten_dict(trainable))
    assert trained == {p for p in shapes if p[0] in ("unet", "cc_projection")}
    assert {p[0] for p in st.traverse_util.flatten_dict(frozen)} == {"vae", "image_encoder", "text_encoder"}
    for config, expected in ((tiny.get_config(), {"text_kv": 10.0, "cc_projection": 1.0}),  # the paper's 10x
                             (demo.get_config(), {"text_kv": 1.0, "cc_projection": 10.0})):  # the demo's recipe
        multipliers = st.traverse_util.flatten_dict(opt.lr_multipliers(trainable, config.train.lr_multipliers))
        for path, value in multipliers.items():
            kind = ("text_kv" if path[-2] in ("to_k_text", "to_v_text") else
                    "cc_projection" if path[0] == "cc_projection" else "other")
            assert value == expected.get(kind, 1.0), path


def test_default_init_rules(shapes):
    values = initial_params(shapes, seed=0)
    zero_kernels = sorted("/".join(map(str, p)) for p, v in values.items() if p[-1] == "kernel" and not v.any())
    # LDM's zero_module outputs: every res block's conv2, every transformer's proj_out, the UNet's conv_out
    assert all(name.startswith("unet/") and name.split("/")[-2] in ("conv2", "proj_out", "conv_out")
               for name in zero_kernels)
    assert len(zero_kernels) == sum(1 for p in shapes if p[0] == "unet" and p[-1] == "kernel"
                                    and p[-2] in ("conv2", "proj_out", "conv_out"))
    projection = values[("cc_projection", "kernel")]
    assert np.array_equal(projection, np.eye(*projection.shape, dtype=np.float32))
    assert all(not v.any() for p, v in values.items() if p[-1] == "bias")
    assert all((v == 1).all() for p, v in values.items() if p[-1] == "scale")
    kernel = values[("unet", "conv_in", "kernel")]
    assert kernel.std() == pytest.approx(1 / np.sqrt(np.prod(kernel.shape[:-1])), rel=0.1)  # fan-in normal
    # the rules decide the law, each path keeps its own stream: an earlier rule changes only what it matches
    changed = initial_params(shapes, 0, ModelInit(((r"^unet/conv_in/", "zeros"), *INIT_RULES)))
    assert not changed[("unet", "conv_in", "kernel")].any()
    assert all(np.array_equal(changed[p], v) for p, v in values.items() if p[:2] != ("unet", "conv_in"))


def test_rules_travel_through_set_overrides(shapes):
    config = override(tiny.get_config(), ['train.trainable=(("/attn2/", True), (".*", False))',
                                          'train.lr_multipliers=((".*", 2),)',
                                          'init.rules=(("^cc_projection/", "zeros"), (".*", "normal_0.02"))'])
    trainable, _ = st.split_params({p: np.zeros(1) for p in shapes}, config.train.trainable)
    assert all("attn2" in p for p in st.traverse_util.flatten_dict(trainable))
    assert set(st.traverse_util.flatten_dict(opt.lr_multipliers(trainable, config.train.lr_multipliers)).values()) \
        == {2}
    assert not initial_params(shapes, 0, config.init)[("cc_projection", "kernel")].any()


@pytest.mark.parametrize("rules, message", [
    ((("^unet/", True),), "no rule matches parameter cc_projection/bias"),
    ((("^unet/", "yes"), (".*", False)), "rule 0 ('^unet/') has value 'yes'; expected True or False"),
    ((("^unet/(", True),), "rule 0 pattern '^unet/(' is not a regular expression"),
    ((("^nothing/", True), (".*", False)), "no parameter trains"),
    (("^unet/",), "rule 0 is '^unet/'; each rule is a (regex, value) pair"),
])
def test_bad_trainable_rules_are_clear_errors(shapes, rules, message):
    with pytest.raises(ValueError) as error:
        st.split_params({p: np.zeros(1) for p in shapes}, rules)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_init_and_lr_rules_are_clear_errors(shapes):
    with pytest.raises(RuleError, match=r"init.rules: rule 0 \('.\*'\) has value 'gaussian'; expected one of"):
        initial_params(shapes, 0, ModelInit(((".*", "gaussian"),)))
    with pytest.raises(RuleError, match="no rule matches parameter cc_projection/bias"):
        initial_params(shapes, 0, ModelInit(((r"/kernel$", "zeros"),)))
    with pytest.raises(RuleError, match="train.lr_multipliers: rule 0 .* expected a number"):
        opt.lr_multipliers({"unet": {"kernel": 0}}, ((".*", float("nan")),))
    assert resolve(((r"/to_[kv]_text/", 10.0), (".*", 1.0)), [("a", "to_v_text", "kernel"), ("a", "to_q")], "x") \
        == {("a", "to_v_text", "kernel"): 10.0, ("a", "to_q"): 1.0}


def test_demo_config_keeps_its_recipe():
    """configs/demo.py expresses its former fields (cc_projection 10x, text K/V 1x) as rules; the others keep the
    defaults (UNet + cc_projection train, text K/V at 10x)."""
    train = demo.get_config().train
    assert train.lr_multipliers == ((r"^cc_projection/", 10.0), (r".*", 1.0))
    assert dataclasses.replace(train, lr_multipliers=tiny.get_config().train.lr_multipliers).lr_multipliers[0] \
        == (r"/to_[kv]_text/", 10.0)


def test_init_from_folder_settings_without_shapes_are_warned():
    """A latent scale or schedule that differs from the init_from folder's shows in no shape: it is reported.
    configs/lora.py takes the demo model's own (latent scale 1.0283, v-prediction); tiny's defaults do not."""
    from configs import lora

    config = lora.get_config()
    assert st.init_folder_mismatches(config, lora.DEMO_MODEL) == []
    mismatches = st.init_folder_mismatches(tiny.get_config(), lora.DEMO_MODEL)
    assert any(m.startswith("model.latent_scale is 0.18215 here but 1.0283") for m in mismatches)
    assert any(m.startswith("diffusion.prediction_type is epsilon here but v_prediction") for m in mismatches)
