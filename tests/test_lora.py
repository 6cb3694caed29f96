"""LoRA (issue 25): the adapted model at step 0 is the base model exactly; merged and kept-apart adapters agree;
only the adapters have optimizer state; an adapter for another base, a file that is not an adapter and a NaN
scale are one-line errors. The adaptation example itself (loss falls, held-out measure beats the base) is
tests/test_lora_example.py (slow)."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util
from safetensors.numpy import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import convert_weights  # noqa: E402
from configs import tiny  # noqa: E402
from customnet_jax import adapters  # noqa: E402
from customnet_jax.convert.lora_export import torch_names  # noqa: E402
from customnet_jax.model_folder import load_model, save_model_folder  # noqa: E402
from customnet_jax.models.build import model_with_params  # noqa: E402
from customnet_jax.models.lora import ATTENTION, CONV_1X1, CONV_3X3, FEED_FORWARD, LoraConfig  # noqa: E402
from customnet_jax.sampling.pipeline import Pipeline  # noqa: E402
from customnet_jax.train import state as st  # noqa: E402
from customnet_jax.train.adapter_export import adapter_contents  # noqa: E402
from customnet_jax.train.loop import setup as trainer_setup  # noqa: E402

LORA = LoraConfig(rank=3, alpha=6.0, targets=(ATTENTION, FEED_FORWARD, CONV_1X1, CONV_3X3))
ADAPTER = r"/lora_[ab]$"


def rel_l2(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.fixture(scope="module")
def setup():
    config = dataclasses.replace(tiny.get_config(), lora=LORA)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, trainable=((ADAPTER, True),
                                                                                            (".*", False))))
    _, shapes = st.graphdef_and_shapes(config)
    params, _ = st.initial_params(config, shapes)
    rng = np.random.default_rng(0)
    for path, value in params.items():  # LDM's zero-initialised outputs made non-zero: a base that computes something
        if path[-1] == "kernel" and not value.any():
            params[path] = 0.1 * rng.standard_normal(value.shape).astype(np.float32)
    base = {p: v for p, v in params.items() if p[-1] not in ("lora_a", "lora_b")}
    inputs = (rng.standard_normal((2, 16, 16, 4)).astype(np.float32), np.array([10, 600]),
              rng.standard_normal((2, 16, 16, 4)).astype(np.float32),
              rng.standard_normal((2, 78, 32)).astype(np.float32))
    return config, params, base, inputs


def denoise(config, params, lora=None):
    model = model_with_params(st.model_builder(config.model, lora=lora), params)
    return denoise_model(model, None)


def denoise_model(model, inputs):
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda s, *a: nnx.merge(graphdef, s).denoise(*a))
    return lambda args: np.asarray(run(state, *map(jnp.asarray, args)))


def trained_adapter(config, params, tmp_path, scale_b=0.3):
    """Random non-zero B (as after training), written by the export step's code into an adapter file."""
    rng = np.random.default_rng(1)
    trained = {p: (scale_b * rng.standard_normal(v.shape).astype(np.float32) if p[-1] == "lora_b" else v)
               for p, v in params.items()}
    paths = {p for p in trained if p[-1] in ("lora_a", "lora_b")}
    tensors, meta = adapter_contents(config, trained, paths)
    return trained, adapters.save_adapter(tmp_path / "a.safetensors", tensors, meta)


def test_step_zero_is_the_base_model(setup):
    config, params, base, inputs = setup
    assert all(not v.any() for p, v in params.items() if p[-1] == "lora_b")  # B starts at zero (init rules)
    assert all(v.std() > 0 for p, v in params.items() if p[-1] == "lora_a")
    modules = {p[:-1] for p in params if p[-1] == "lora_a"}
    assert {p[-1] for p in modules} >= {"to_q", "to_k", "to_v", "to_out", "to_k_text", "to_v_text", "proj", "out",
                                        "proj_in", "proj_out", "skip", "conv1", "conv2", "conv"}
    adapted, plain = denoise(config, params, LORA)(inputs), denoise(config, base)(inputs)
    assert np.abs(plain).mean() > 1e-2  # a base that computes something
    # the same arithmetic (each adapter adds exactly 0) in two programs that XLA fuses differently: GroupNorm's
    # per-channel sums may be taken in another order, so equal to float32 rounding (measured 6e-7), not bit for bit
    assert rel_l2(adapted, plain) <= 2e-6
    # negative control: one adapter's B (the first self-attention's to_k) at 1e-2 instead of 0: measured 1.3e-3
    key = next(p for p in params if p[-1] == "lora_b")
    nudged = {**params, key: np.full_like(params[key], 1e-2)}
    assert rel_l2(denoise(config, nudged, LORA)(inputs), plain) > 1e-4


def test_merged_equals_kept_apart_and_training_form(setup, tmp_path):
    config, params, base, inputs = setup
    trained, file = trained_adapter(config, params, tmp_path)
    as_trained = denoise(config, trained, LORA)(inputs)
    plain = denoise(config, base)(inputs)
    assert rel_l2(as_trained, plain) > 1e-2  # the adapter matters (negative control for the comparisons below)
    for scale in (1.0, 0.6):
        merged = adapters.apply_adapters(model_with_params(st.model_builder(config.model), base),
                                         [f"{file}:{scale}"], merge=True)
        apart = adapters.apply_adapters(model_with_params(st.model_builder(config.model), base),
                                        [(str(file), scale)], merge=False)
        out_merged, out_apart = denoise_model(merged, None)(inputs), denoise_model(apart, None)(inputs)
        assert rel_l2(out_merged, out_apart) <= 1e-5  # measured: ~1e-7
        if scale == 1.0:
            assert rel_l2(out_merged, as_trained) <= 1e-5
    # two adapters add up: the same file at 0.6 + 0.4 is the file at 1
    both = adapters.apply_adapters(model_with_params(st.model_builder(config.model), base),
                                   [f"{file}:0.6", f"{file}:0.4"], merge=False)
    assert rel_l2(denoise_model(both, None)(inputs), as_trained) <= 1e-5
    weights = sum(v.nbytes for v in adapters.read_adapter(file).tensors.values())  # 93k parameters here
    # + the header: safetensors' index of 262 tensors and the JSON (measured: 38 KB on 371 KB of weights)
    assert file.stat().st_size < 1.15 * weights and not list(tmp_path.glob(".*partial"))


def test_only_the_adapters_are_in_the_optimizer_state(setup):
    config, params, _, _ = setup
    trainer = trainer_setup(config, log=lambda message: None)
    trained = traverse_util.flatten_dict(trainer.state["params"])
    assert trained and all(p[-1] in ("lora_a", "lora_b") for p in trained)
    adapter_size = sum(v.size for p, v in params.items() if p[-1] in ("lora_a", "lora_b"))
    moments = [x for x in jax.tree.leaves(trainer.state["opt_state"]) if np.ndim(x) > 0]
    assert sum(x.size for x in moments) == 2 * adapter_size  # AdamW's mu and nu, nothing of the base
    assert sum(np.size(v) for v in jax.tree.leaves(trainer.frozen["params"])) == sum(
        v.size for p, v in params.items() if p[-1] not in ("lora_a", "lora_b"))


def test_bad_adapters_are_one_line_errors(setup, tmp_path):
    config, params, base, _ = setup
    _, file = trained_adapter(config, params, tmp_path)
    model = model_with_params(st.model_builder(config.model), base)
    other = dict(base)
    key = ("unet", "conv_in", "kernel")
    other[key] = other[key] + 1e-3
    cases = [
        (lambda: adapters.apply_adapters(model_with_params(st.model_builder(config.model), other), [str(file)]),
         "made for another base model (base hash"),
        (lambda: adapters.apply_adapters(model, [f"{file}:nan"]), "the scale must be a finite number"),
        (lambda: adapters.apply_adapters(model, [str(tmp_path / "missing.safetensors")]), "no such file"),
    ]
    (tmp_path / "text.safetensors").write_text("not a tensor file")
    cases.append((lambda: adapters.apply_adapters(model, [str(tmp_path / "text.safetensors")]),
                  "not a LoRA adapter file"))
    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "plain.safetensors"))
    cases.append((lambda: adapters.apply_adapters(model, [str(tmp_path / "plain.safetensors")]),
                  "without CustomNet adapter metadata"))
    wide = dataclasses.replace(config.model, unet=dataclasses.replace(config.model.unet, model_channels=16))
    _, wide_shapes = st.graphdef_and_shapes(dataclasses.replace(config, model=wide, lora=LoraConfig()))
    wide_params, _ = st.initial_params(config, wide_shapes)
    cases.append((lambda: adapters.apply_adapters(model_with_params(st.model_builder(wide), wide_params),
                                                  [str(file)]), "made for another base model ("))
    for call, message in cases:
        with pytest.raises(adapters.AdapterError) as error:
            call()
        assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert adapters.parse_spec("runs/a.safetensors:0.5") == ("runs/a.safetensors", 0.5)
    assert adapters.parse_spec("c:/x.safetensors") == ("c:/x.safetensors", 1.0)


def test_sample_cli_lora_errors_are_one_line(tmp_path):
    (tmp_path / "bad.safetensors").write_text("nope")
    run = subprocess.run([sys.executable, "sample.py", "--lora", str(tmp_path / "bad.safetensors"), "--out",
                          str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "not a LoRA adapter file" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_convert_merges_into_a_folder_and_exports_peft(setup, tmp_path):
    """convert_weights.py --merge-lora writes a folder whose weights are the merged ones; --to-peft writes PEFT's
    layout, whose B A (alpha / r) rebuilt in numpy from torch-layout tensors is the merged kernels' change."""
    config, params, base, _ = setup
    _, file = trained_adapter(config, params, tmp_path)
    save_model_folder(tmp_path / "base", traverse_util.unflatten_dict(base), config.model)
    assert convert_weights.main(["--input", str(tmp_path / "base"), "--merge-lora", f"{file}:0.5",
                                 "--output", str(tmp_path / "merged")]) == 0
    merged = adapters.model_params(load_model(tmp_path / "merged")[0])
    expected = adapters.merged_params(base, adapters.read_specs([f"{file}:0.5"]))
    assert all(np.allclose(merged[p], expected[p], atol=1e-7) for p in expected)
    assert convert_weights.main(["--input", str(file), "--to-peft", "--output", str(tmp_path / "peft")]) == 0
    peft_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert peft_config["peft_type"] == "LORA" and peft_config["r"] == 3 and peft_config["lora_alpha"] == 6.0
    full = adapters.merged_params(base, adapters.read_specs([str(file)]))
    paths = {torch_key: path for path, (torch_key, _) in torch_names(config.model).items()}
    for module in ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k_text",
                   "model.diffusion_model.input_blocks.1.0.in_layers.2"):  # a Linear and a 3x3 conv
        assert module in peft_config["target_modules"]
        a = tensors[f"base_model.model.{module}.lora_A.weight"]
        b = tensors[f"base_model.model.{module}.lora_B.weight"]
        delta = 2.0 * np.einsum("or...,ri...->oi...", b.reshape(b.shape[:2]), a)  # alpha / r = 2
        path = paths[module + ".weight"]
        ours = full[path] - base[path]
        np.testing.assert_allclose(ours.T if ours.ndim == 2 else ours.transpose(3, 2, 0, 1), delta, atol=1e-6)


def test_bf16_pipeline_takes_adapters_on_its_float32_weights(setup, tmp_path):
    """A bf16 pipeline stores its weights in bf16; adapters are applied before that (`from_folder(adapt=...)`), on
    the float32 weights their base hash is over: the stored kernels are the float32 merge rounded once to bf16.
    Negative control: the same adapter on the bf16-stored weights of a plain bf16 pipeline is refused (another
    base hash): the reason adapters go in before the cast."""
    config, params, base, _ = setup
    _, file = trained_adapter(config, params, tmp_path)
    save_model_folder(tmp_path / "base", traverse_util.unflatten_dict(base), config.model)
    pipeline = Pipeline.from_folder(tmp_path / "base", dtype=jnp.bfloat16,
                                    adapt=lambda model: adapters.apply_adapters(model, [f"{file}:0.5"]))
    stored = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(nnx.merge(pipeline.graphdef, pipeline.state),
                                                                   nnx.Param)))
    expected = adapters.merged_params(base, adapters.read_specs([f"{file}:0.5"]))
    changed = [p for p in expected if p[-1] == "kernel" and not np.array_equal(expected[p], base[p])]
    assert changed and all(stored[p].dtype == jnp.bfloat16 for p in changed)
    assert all(np.array_equal(np.asarray(stored[p]), np.asarray(expected[p]).astype(jnp.bfloat16)) for p in changed)
    plain = Pipeline.from_folder(tmp_path / "base", dtype=jnp.bfloat16)
    with pytest.raises(adapters.AdapterError, match="another base model"):
        adapters.apply_adapters(nnx.merge(plain.graphdef, plain.state), [str(file)])
