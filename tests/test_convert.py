"""convert_weights.py: released-layout PyTorch checkpoints -> model folders -> PyTorch again.

Tiny random models are written in the exact layouts of customnet_v1.pt, customnet_inpaint_v1.pt, a zero123
Lightning .ckpt (raw + EMA UNet, optimizer states, callbacks), a diffusers zero123 folder and a transformers CLIP
text folder; the converted folders must reproduce the PyTorch references (diffusers / transformers).
"""

import collections
import dataclasses
import json
import os
import pickle
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors import safe_open
from safetensors.torch import save_file

import convert_weights
from configs.tiny import tiny_model
from customnet_jax.convert import (
    CheckpointFormatError,
    LazyTensor,
    UnsafeCheckpointError,
    convert_checkpoint,
    export_pytorch,
    open_checkpoint,
    text_kv_params,
)
from customnet_jax.convert.importers import default_config
from customnet_jax.convert.shapes import infer_config
from customnet_jax.model_folder import load_model
from customnet_jax.weights.rules import CheckpointMismatchError
from tests.helpers import rel_l2, torch_state_to_numpy
from tests.reference_state import reference_shapes
from tests.torch_reference import (
    clip_text,
    clip_vision,
    diffusers_unet,
    diffusers_vae,
    ldm_schedule_buffers,
    openai_visual_state,
    random_ldm_state,
    random_vae_state,
    reference_output,
)

CUSTOMNET = tiny_model()
INPAINT = tiny_model(in_channels=12)
ZERO123 = tiny_model(text=False)
UNET, VAE, CLIP = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."
TEXT = "text_encoder.transformer.text_model."
TEXT_TOKENS = 7


class ModelCheckpoint:
    """Stands for a Lightning callback class: a Lightning file's `callbacks` dict is keyed by it, which a
    weights-only load does not allow."""


class Evil:
    """A pickle that runs a shell command when loaded by an unsafe reader."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def tensors(state: dict, prefix: str = "") -> dict:
    return {prefix + k: torch.from_numpy(np.array(v, order="C")) for k, v in state.items()}


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def weights():
    """Random weights for every network and the torch references that hold them."""
    rng = np.random.default_rng(0)
    vision = clip_vision(CUSTOMNET.image_encoder, seed=6)
    text = clip_text(CUSTOMNET.text_encoder, seed=7)
    width, proj = CUSTOMNET.text_encoder.width, CUSTOMNET.image_encoder.projection_dim
    w = {
        "unet": random_ldm_state(CUSTOMNET.unet, 1),
        "unet_inpaint": random_ldm_state(INPAINT.unet, 2),
        "unet_zero123": random_ldm_state(ZERO123.unet, 3),
        "unet_zero123_ema": random_ldm_state(ZERO123.unet, 4),
        "vae": random_vae_state(CUSTOMNET.vae, 5),
        "vision": torch_state_to_numpy(vision.state_dict()),
        "text": torch_state_to_numpy(text.state_dict()),
        "cc": {"weight": (rng.normal(size=(proj, proj + 4)) / 6).astype(np.float32),
               "bias": (0.1 * rng.normal(size=proj)).astype(np.float32)},
        # the OpenAI CLIP text tower's leftovers that the released files carry (unused by the model)
        "leftovers": {"positional_embedding": rng.normal(size=(77, width)).astype(np.float32),
                      "text_projection": rng.normal(size=(width, width)).astype(np.float32),
                      "logit_scale": np.array(4.6052, np.float32),
                      "token_embedding.weight": rng.normal(size=(300, width)).astype(np.float32),
                      "ln_final.weight": rng.normal(size=width).astype(np.float32),
                      "ln_final.bias": rng.normal(size=width).astype(np.float32)},
    }
    refs = {"unet": diffusers_unet(CUSTOMNET.unet, w["unet"]),
            "unet_inpaint": diffusers_unet(INPAINT.unet, w["unet_inpaint"]),
            "unet_zero123": diffusers_unet(ZERO123.unet, w["unet_zero123"]),
            "unet_zero123_ema": diffusers_unet(ZERO123.unet, w["unet_zero123_ema"]),
            "vae": diffusers_vae(CUSTOMNET.vae, w["vae"]), "vision": vision, "text": text}
    return w, refs


def common_state(w) -> collections.OrderedDict:
    """VAE, image encoder (with the text leftovers), cc_projection, in the released files' order."""
    state = collections.OrderedDict(tensors(w["vae"], VAE))
    state.update(tensors(w["leftovers"], CLIP))
    state.update(tensors(openai_visual_state(w["vision"], CUSTOMNET.image_encoder.layers), CLIP + "visual."))
    state.update(tensors(w["cc"], "cc_projection."))
    return state


def customnet_state(w, unet: str) -> collections.OrderedDict:
    """The flat state dict of customnet_v1.pt (docs/model.md §9)."""
    state = collections.OrderedDict(tensors(w[unet], UNET))
    state.update(common_state(w))
    state.update(tensors(w["text"], TEXT))
    state[TEXT + "embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    state.update(ldm_schedule_buffers())
    return state


@pytest.fixture(scope="module")
def files(weights, tmp_path_factory):
    w, refs = weights
    root = tmp_path_factory.mktemp("checkpoints")
    paths = {"customnet": root / "customnet_v1.pt", "inpaint": root / "customnet_inpaint_v1.pt",
             "zero123": root / "105000.ckpt", "marker": root / "PWNED"}
    torch.save(customnet_state(w, "unet"), paths["customnet"])
    torch.save(customnet_state(w, "unet_inpaint"), paths["inpaint"])

    # zero123: a PyTorch-Lightning file. EMA copies named as LitEma names them; optimizer states; callbacks.
    state = collections.OrderedDict(tensors(w["unet_zero123"], UNET))
    state.update(common_state(w))
    state.update(ldm_schedule_buffers())
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(105000, dtype=torch.int32)
    for key, value in w["unet_zero123_ema"].items():
        state["model_ema." + ("diffusion_model." + key).replace(".", "")] = torch.from_numpy(value)
    adam = {i: {"step": torch.tensor(105000.0), "exp_avg": torch.randn(64), "exp_avg_sq": torch.rand(64)}
            for i in range(3)}
    torch.save({"epoch": 3, "global_step": 105000, "pytorch-lightning_version": "1.4.2", "state_dict": state,
                "optimizer_states": [{"state": adam, "param_groups": [{"lr": 1e-4, "params": [0, 1, 2]}]}],
                "lr_schedulers": [], "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.1),
                                                                     "trap": Evil(paths["marker"])}}},
               paths["zero123"])

    # a transformers CLIP text folder (what --text-encoder takes)
    paths["clip_text"] = root / "clip-text"
    refs["text"].save_pretrained(paths["clip_text"])

    # a diffusers zero123 folder holding the zero123 weights
    folder = paths["diffusers"] = root / "zero123-diffusers"
    refs["unet_zero123"].save_pretrained(folder / "unet")
    refs["vae"].save_pretrained(folder / "vae")
    refs["vision"].save_pretrained(folder / "image_encoder")
    (folder / "cc_projection").mkdir()
    save_file({f"projection.{k}": torch.from_numpy(v) for k, v in w["cc"].items()},
              folder / "cc_projection" / "diffusion_pytorch_model.safetensors")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "Zero1to3StableDiffusionPipeline"}))
    return paths


@pytest.fixture(scope="module")
def folders(files, tmp_path_factory):
    """The conversions, each once: path of each model folder."""
    out = tmp_path_factory.mktemp("folders")
    quiet = dict(progress=False, log=lambda message: None)
    result = {
        "customnet": convert_checkpoint(files["customnet"], out / "customnet", config=CUSTOMNET, **quiet),
        "inpaint": convert_checkpoint(files["inpaint"], out / "inpaint", config=CUSTOMNET, **quiet),
        "zero123": convert_checkpoint(files["zero123"], out / "zero123", config=CUSTOMNET, **quiet),
        "zero123_ema": convert_checkpoint(files["zero123"], out / "zero123_ema", ema=True, config=CUSTOMNET, **quiet),
        "diffusers": convert_checkpoint(files["diffusers"], out / "diffusers", config=CUSTOMNET, **quiet),
    }
    # and through the command line: zero123 -> composition CustomNet (text K/V zeros, conv_in widened 8 -> 12),
    # the tiny config's unrecorded numbers (heads, GroupNorm groups) from configs/tiny.py
    code = convert_weights.main(["--input", str(files["zero123"]), "--output", str(out / "init"),
                                 "--text-encoder", str(files["clip_text"]), "--text-kv-init", "zeros",
                                 "--background", "--config", "configs/tiny.py", "--no-progress"])
    assert code == 0
    result["init"] = out / "init"
    return result


@pytest.fixture(scope="module")
def models(folders):
    return {name: load_model(path) for name, path in folders.items()}


# ---------------------------------------------------------------------------------------------- forwards

unet_forward = nnx.jit(lambda unet, x, t, context: unet(x, t, context))
vision_forward = nnx.jit(lambda encoder, pixels: encoder(pixels))
text_forward = nnx.jit(lambda encoder, tokens: encoder(tokens))
vae_forward = nnx.jit(lambda vae, images: vae.encode(images))
project_forward = nnx.jit(lambda projection, embedding, view: projection(jnp.concatenate([embedding, view], -1)))


def unet_inputs(in_channels: int, text: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 16, 16, in_channels)).astype(np.float32)
    context = rng.normal(size=(2, 1 + (TEXT_TOKENS if text else 0), 32)).astype(np.float32)
    return x, np.array([3, 917], np.int32), context


def check_unet(model, reference, in_channels: int, text: bool) -> float:
    x, t, context = unet_inputs(in_channels, text)
    return rel_l2(unet_forward(model.unet, x, t, context), reference_output(reference, x, t, context))


def check_encoders(model, refs, w) -> dict[str, float]:
    """Image embedding, VAE posterior and object token of `model` vs the torch references."""
    rng = np.random.default_rng(1)
    pixels = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    images = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    view = rng.normal(size=(2, 4)).astype(np.float32)
    with torch.no_grad():
        embeds = refs["vision"](pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)).image_embeds
        token = torch.nn.functional.linear(torch.cat([embeds, torch.from_numpy(view)], -1),
                                           torch.from_numpy(w["cc"]["weight"]), torch.from_numpy(w["cc"]["bias"]))
        posterior = refs["vae"].encode(torch.from_numpy(images).permute(0, 3, 1, 2)).latent_dist
    mean, logvar = vae_forward(model.vae, jnp.asarray(images))
    ours = vision_forward(model.image_encoder, pixels)
    return {"image_embedding": rel_l2(ours, embeds.numpy()),
            "object_token": rel_l2(project_forward(model.cc_projection, ours, view), token.numpy()),
            "vae_mean": rel_l2(mean, posterior.mean.permute(0, 2, 3, 1).numpy()),
            "vae_logvar": rel_l2(logvar, posterior.logvar.permute(0, 2, 3, 1).numpy())}


def check_text(model, refs) -> float:
    tokens = np.random.default_rng(2).integers(0, 49408, (2, 77)).astype(np.int32)
    with torch.no_grad():
        reference = refs["text"](input_ids=torch.from_numpy(tokens).long()).last_hidden_state.numpy()
    return rel_l2(text_forward(model.text_encoder, tokens), reference)


# ---------------------------------------------------------------------------------------------- parity

@pytest.mark.slow
def test_customnet_file_matches_pytorch(weights, models):
    w, refs = weights
    model, folder = models["customnet"]
    assert folder.model == CUSTOMNET and folder.provenance["source"]["format"] == "customnet"
    assert folder.provenance["source"]["reader"] == "torch-weights-only"
    errors = {"eps": check_unet(model, refs["unet"], 8, True), "text": check_text(model, refs),
              **check_encoders(model, refs, w)}
    # measured: eps 6.2e-7, text 2.4e-7, image embedding 1.3e-7, object token 2.0e-7, VAE mean / logvar 9.4e-7 / 5.3e-7
    assert max(errors.values()) <= 1e-4, errors


@pytest.mark.slow
def test_inpaint_file_matches_pytorch(weights, models):
    _, refs = weights
    model, folder = models["inpaint"]
    assert folder.model.unet.in_channels == 12 and folder.model.has_background
    error = check_unet(model, refs["unet_inpaint"], 12, True)
    assert error <= 1e-4, error  # measured 7.2e-7


@pytest.mark.slow
@pytest.mark.parametrize("ema", [False, True])
def test_zero123_lightning_file_matches_pytorch(weights, models, files, ema):
    w, refs = weights
    model, folder = models["zero123_ema" if ema else "zero123"]
    assert folder.model.is_zero123 and folder.provenance["source"]["ema"] is ema
    source = folder.provenance["source"]
    assert source["global_step"] == 105000 and source["reader"] == "restricted-unpickler"
    # the callbacks' class and the planted command were never imported, let alone run
    assert {f"{__name__}.ModelCheckpoint", "posix.system"} <= set(source["objects_not_loaded"])
    assert not files["marker"].exists()
    error = check_unet(model, refs["unet_zero123_ema" if ema else "unet_zero123"], 8, False)
    assert error <= 1e-4, error  # measured 5.5e-7 (raw), 7.1e-7 (EMA)
    other = check_unet(model, refs["unet_zero123" if ema else "unet_zero123_ema"], 8, False)
    assert other > 1e-2, other  # measured 1.1: raw and EMA weights really differ, the switch is not a no-op
    errors = check_encoders(model, refs, w)
    assert max(errors.values()) <= 1e-4, errors


@pytest.mark.slow
def test_diffusers_zero123_folder_matches_pytorch(weights, models):
    w, refs = weights
    model, folder = models["diffusers"]
    assert folder.model.is_zero123 and folder.provenance["source"]["format"] == "diffusers-zero123"
    errors = {"eps": check_unet(model, refs["unet_zero123"], 8, False), **check_encoders(model, refs, w)}
    assert max(errors.values()) <= 1e-4, errors  # measured: eps 5.5e-7, encoders as for the .ckpt


# ---------------------------------------------------------------------------------------------- zero123 -> CustomNet

@pytest.mark.slow
def test_zero123_to_customnet_zero_text_kv_predicts_as_zero123(weights, models):
    _, refs = weights
    zero123, _ = models["zero123"]
    x, t, context = unet_inputs(8, True, seed=5)  # context: [object token | 7 random "text" tokens]
    expected = np.asarray(unet_forward(zero123.unet, x, t, context[:, :1]))
    assert rel_l2(expected, reference_output(refs["unet_zero123"], x, t, context[:, :1])) <= 1e-4
    model, folder = models["init"]
    assert not folder.model.is_zero123 and folder.model.unet.in_channels == 12
    assert folder.provenance["initialisation"]["text_kv"] == "zeros" and folder.tokenizer_path is not None
    rng = np.random.default_rng(6)
    for scale in (1.0, 30.0):  # any text and any background latent, even large, contribute nothing
        background = scale * rng.normal(size=(2, 16, 16, 4)).astype(np.float32)
        text = np.concatenate([context[:, :1], scale * context[:, 1:]], axis=1)
        out = np.asarray(unet_forward(model.unet, np.concatenate([x, background], axis=-1), t, text))
        assert np.abs(out - expected).max() <= 1e-6 * np.abs(expected).max()  # measured: bit-identical
    assert check_text(model, refs) <= 1e-4  # the CLIP folder's text encoder came in (measured 2.4e-7)


def test_random_text_kv_init():
    shapes = {("unet", "a", "attn2", "to_k_text", "kernel"): (768, 320), ("unet", "a", "attn2", "to_q", "kernel"):
              (320, 320)}
    random = text_kv_params(shapes, {}, "random", seed=0)
    assert list(random) == [("unet", "a", "attn2", "to_k_text", "kernel")]
    value = random[("unet", "a", "attn2", "to_k_text", "kernel")]
    bound = 1 / np.sqrt(768)  # torch.nn.Linear's default init, as the original
    assert np.abs(value).max() <= bound and value.std() > 0.5 * bound / np.sqrt(3)
    assert np.array_equal(value, text_kv_params(shapes, {}, "random", seed=0)[("unet", "a", "attn2", "to_k_text",
                                                                                 "kernel")])
    assert not text_kv_params(shapes, {}, "zeros", seed=0)[("unet", "a", "attn2", "to_k_text", "kernel")].any()


def test_full_size_configs_are_read_from_the_released_shapes():
    """Sizing from shapes alone (no data read) gives configs/customnet.py, customnet_inpaint.py, zero123.py."""
    from configs import customnet, customnet_inpaint, zero123

    def stub(shapes):
        return {k: LazyTensor(s, np.float32, lambda: None) for k, s in shapes.items()}

    shapes = reference_shapes()
    assert infer_config(stub(shapes), default_config("customnet"), text=True) == customnet.get_config().model
    wide = {**shapes, UNET + "input_blocks.0.0.weight": (320, 12, 3, 3)}
    assert infer_config(stub(wide), default_config("customnet"), text=True) == customnet_inpaint.get_config().model
    plain = {k: s for k, s in shapes.items() if not k.startswith("text_encoder.") and "_text." not in k}
    assert infer_config(stub(plain), default_config("zero123"), text=False) == zero123.get_config().model
    # every size is read from the shapes, whatever the base: only heads / groups / eps / resolution are the base's
    fitted = infer_config(stub(shapes), dataclasses.replace(tiny_model(), unet=dataclasses.replace(
        tiny_model().unet, num_heads=8, norm_groups=32)), text=True)
    assert fitted.unet == customnet.get_config().model.unet and fitted.text_encoder.width == 768


# ---------------------------------------------------------------------------------------------- export

def assert_same_state(ours: dict, theirs: dict):
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        a, b = ours[key], value
        assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b), key


@pytest.mark.slow
@pytest.mark.parametrize("name", ["customnet", "zero123"])
def test_round_trip_import_export(files, folders, tmp_path, name):
    if name == "zero123":  # holds a planted command: read it with our reader, never with torch.load
        with open_checkpoint(files[name]) as checkpoint:
            assert "optimizer_states" in checkpoint.obj
            source = {k: torch.from_numpy(v.read()) for k, v in checkpoint.obj["state_dict"].items()
                      if not k.startswith("model_ema.")}
    else:
        source = torch.load(files[name], map_location="cpu", weights_only=True)
    st_path, pt_path = export_pytorch(folders[name], tmp_path / name, progress=False, log=lambda m: None)
    exported = torch.load(pt_path, map_location="cpu", weights_only=True, mmap=True)
    if name == "zero123":
        assert exported["global_step"] == 105000
        exported = exported["state_dict"]
    assert list(exported) == list(source)  # same keys, in the source file's order
    assert_same_state(exported, source)  # same shapes, dtypes (int64 position_ids too) and exact values
    assert not files["marker"].exists()
    with safe_open(st_path, framework="pt") as f:
        assert_same_state({k: f.get_tensor(k) for k in f.keys()}, source)


# ---------------------------------------------------------------------------------------------- safety and errors

def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    plain = tmp_path / "evil.pt"
    torch.save(Evil(marker), plain)  # the whole file is a command
    bare = tmp_path / "evil.pkl"
    bare.write_bytes(pickle.dumps(Evil(marker)))  # a bare pickle (legacy path)
    inside = tmp_path / "evil_inside.pt"
    torch.save({"model.diffusion_model.conv.weight": torch.zeros(1), "cc_projection.weight": Evil(marker)}, inside)
    legacy = tmp_path / "evil_legacy.pt"  # the pre-1.6 (non-zip) torch.save format
    torch.save(Evil(marker), legacy, _use_new_zipfile_serialization=False)
    legacy_inside = tmp_path / "evil_legacy_inside.pt"
    torch.save({"model.diffusion_model.conv.weight": torch.zeros(1), "trap": Evil(marker)}, legacy_inside,
               _use_new_zipfile_serialization=False)
    for path in (plain, bare, inside, legacy, legacy_inside):
        with pytest.raises(UnsafeCheckpointError, match="refused .*asks to run code .*posix.system.* will not be "
                                                        "loaded; nothing from the file was executed") as refused:
            convert_checkpoint(path, tmp_path / "out", progress=False, log=lambda m: None)
        assert "weights_only" not in str(refused.value)  # never the advice to load it unsafely
        assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_corrupt_and_non_checkpoint_files(files, tmp_path):
    data = files["customnet"].read_bytes()
    cases = {
        "truncated.pt": (data[: len(data) // 2], "corrupt or truncated"),
        "notes.txt": (b"this is not a checkpoint\n", "not a checkpoint"),
        "empty.pt": (b"", "empty"),
        "image.png": (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a checkpoint"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointFormatError, match=message):
            convert_checkpoint(tmp_path / name, tmp_path / "out", progress=False, log=lambda m: None)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointFormatError, match="not a checkpoint: it holds a list"):
        convert_checkpoint(tmp_path / "list.pt", tmp_path / "out", progress=False, log=lambda m: None)
    torch.save({"encoder.weight": torch.zeros(2), "decoder.bias": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointFormatError, match="unknown checkpoint layout"):
        convert_checkpoint(tmp_path / "other.pt", tmp_path / "out", progress=False, log=lambda m: None)


def test_non_finite_tensor_is_refused_at_conversion_by_name(weights, tmp_path):
    w, _ = weights
    state = customnet_state(w, "unet")
    state["cc_projection.weight"] = state["cc_projection.weight"].clone()
    state["cc_projection.weight"][0, 0] = float("inf")
    torch.save(state, tmp_path / "inf.pt")
    with pytest.raises(CheckpointFormatError, match="tensor cc_projection.weight of the checkpoint holds NaN or inf"):
        convert_checkpoint(tmp_path / "inf.pt", tmp_path / "out", config=CUSTOMNET, progress=False,
                           log=lambda m: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_then_import_keeps_the_diffusion_config(weights, folders, tmp_path):
    """A v-prediction, zero-terminal-SNR model -> .safetensors + .pt (+ .diffusion.json) -> model folders with the
    same diffusion config; without the record the zero-SNR betas tell it; betas of no known schedule and no
    record: refused, not guessed."""
    from customnet_jax.config_files import to_dict
    from customnet_jax.diffusion.schedule import DiffusionConfig
    from customnet_jax.model_folder import read_folder

    v_model = tmp_path / "v_model"
    shutil.copytree(folders["customnet"], v_model)
    v_config = DiffusionConfig(prediction_type="v_prediction", zero_terminal_snr=True)
    config = json.loads((v_model / "config.json").read_text())
    (v_model / "config.json").write_text(json.dumps(dict(config, diffusion=to_dict(v_config))))
    st_path, pt_path = export_pytorch(v_model, tmp_path / "export" / "v", progress=False, log=lambda m: None)
    with safe_open(st_path, framework="pt") as f:
        assert json.loads(f.metadata()["customnet_jax.diffusion"])["prediction_type"] == "v_prediction"
    quiet = dict(config=CUSTOMNET, progress=False, log=lambda m: None)
    for path in (st_path, pt_path):
        back = convert_checkpoint(path, tmp_path / f"back_{path.suffix[1:]}", **quiet)
        assert read_folder(back).diffusion == v_config
    (tmp_path / "export" / "v.diffusion.json").unlink()
    messages = []
    back = convert_checkpoint(pt_path, tmp_path / "back_betas", **dict(quiet, log=messages.append))
    assert read_folder(back).diffusion == v_config and any("zero-terminal-SNR" in m for m in messages)

    w, _ = weights
    state = customnet_state(w, "unet")
    state["betas"] = torch.linspace(1e-4, 0.5, 1000, dtype=torch.float64).float() ** 1.5
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(CheckpointFormatError, match="noise schedule is unknown"):
        convert_checkpoint(tmp_path / "odd.pt", tmp_path / "odd", **quiet)


def test_wrong_format_reports_grouped_missing_and_unexpected_keys(files, tmp_path):
    quiet = dict(progress=False, log=lambda m: None, config=CUSTOMNET)
    with pytest.raises(CheckpointMismatchError) as missing:
        convert_checkpoint(files["zero123"], tmp_path / "a", format="customnet", **quiet)
    message = str(missing.value)
    assert "missing keys" in message and "text_encoder (36)" in message, message
    assert "attn2.to_k_text.weight x" in message and len(message.splitlines()) < 15, message
    with pytest.raises(CheckpointMismatchError) as unexpected:
        convert_checkpoint(files["customnet"], tmp_path / "b", format="zero123", **quiet)
    message = str(unexpected.value)
    assert "unexpected keys" in message and "text_encoder (36)" in message and "to_v_text" in message, message
    deeper = dataclasses.replace(CUSTOMNET, unet=dataclasses.replace(CUSTOMNET.unet, num_res_blocks=2))
    with pytest.raises(CheckpointMismatchError) as wrong_config:
        convert_checkpoint(files["customnet"], tmp_path / "c", progress=False, log=lambda m: None, config=deeper)
    message = str(wrong_config.value)
    assert "missing keys" in message and "unexpected keys" in message and "model (" in message, message
    assert len(message.splitlines()) < 15, message
    with pytest.raises(CheckpointFormatError, match="CLIP text encoder alone"):
        convert_checkpoint(files["clip_text"], tmp_path / "d", progress=False, log=lambda m: None)


def test_shape_mismatch_names_both_shapes(weights, tmp_path):
    w, _ = weights
    state = customnet_state(w, "unet")
    state["cc_projection.weight"] = torch.zeros(32, 40)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError, match=r"cc_projection.weight: shape \(32, 40\) in the checkpoint, "
                                                      r"the model config expects \(32, 36\)"):
        convert_checkpoint(tmp_path / "bad.pt", tmp_path / "out", config=CUSTOMNET, progress=False,
                           log=lambda m: None)


def test_cli_reports_errors_without_traceback(files, tmp_path, capsys):
    code = convert_weights.main(["--input", str(files["zero123"]), "--output", str(tmp_path / "x"), "--format",
                                 "customnet", "--config", "configs/tiny.py", "--no-progress"])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: checkpoint does not match the model config")
    code = convert_weights.main(["--input", str(files["customnet"]), "--output", str(tmp_path / "y"), "--ema",
                                 "--config", "configs/tiny.py", "--no-progress"])
    assert code == 2 and "no EMA weights" in capsys.readouterr().err
