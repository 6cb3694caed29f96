"""sample.py end to end on a tiny random model folder: files, settings, and refusals that write nothing."""

import json

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from configs.tiny import tiny_model
from customnet_jax.diffusion import samplers
from customnet_jax.model_folder import param_tree, save_model_folder
from customnet_jax.models.build import initialized_model
from customnet_jax.models.customnet import CustomNet
from customnet_jax.sampling.cli import main, parse_values, views_from


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    model = initialized_model(lambda: CustomNet(tiny_model(), rngs=nnx.Rngs(0)), seed=0)
    return save_model_folder(tmp_path_factory.mktemp("model") / "tiny", param_tree(model), tiny_model(),
                             provenance={"source": "test"})


@pytest.fixture(scope="module")
def object_file(tmp_path_factory):
    rgba = np.zeros((48, 48, 4), np.uint8)
    rgba[10:40, 12:36] = (30, 160, 60, 255)
    path = tmp_path_factory.mktemp("inputs") / "object.png"
    Image.fromarray(rgba).save(path)
    return path


@pytest.mark.slow
def test_multi_view_sheet_and_settings(model_folder, object_file, tmp_path):
    out = tmp_path / "out"
    code = main(["--checkpoint", str(model_folder), "--object", str(object_file), "--azimuth", "-60,0,60",
                 "--bbox", "0.1,0.1,0.9,0.9", "--prompt", "a green box", "--steps", "2", "--num-samples", "2",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["sample.json", "sample_object.png", "sample_sheet.png"]
                           + [f"sample_view{v}_sample{n}.png" for v in range(3) for n in range(2)])
    settings = json.loads((out / "sample.json").read_text())
    assert settings["views"] == [[0.0, -60.0, 0.0], [0.0, 0.0, 0.0], [0.0, 60.0, 0.0]]
    assert settings["bbox"] == [6, 6, 58, 58] and settings["model"]["source"] == "test"
    assert settings["sampler"] == "ddim" and settings["sampler_options"] == {"eta": 0.0, "schedule": "correct"}
    sheet = np.asarray(Image.open(out / "sample_sheet.png"))
    assert sheet.shape == (3 * 66 + 2, 3 * 66 + 2, 3)


@pytest.mark.parametrize("extra,message", [
    (["--steps", "0"], "steps"),
    (["--bbox", "0,0,100,10"], "outside"),
    (["--bbox", "5,5,5,20"], "zero or negative area"),
    (["--background", "missing.png"], "no background channels"),
    (["--sampler", "dpmpp_2m", "--eta", "0.5"], "sampler dpmpp_2m does not take eta (its options: spacing)"),
    (["--sampler", "unipc", "--steps", "1"], "steps must be between 2 and 1000 for sampler unipc"),
    (["--sampler", "ddim", "--spacing", "leading"], "sampler ddim does not take spacing"),
])
def test_refusals_write_nothing(model_folder, object_file, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    code = main(["--checkpoint", str(model_folder), "--object", str(object_file), "--out", str(out),
                 "--no-progress", *extra])
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_missing_object_and_not_a_model_folder(model_folder, tmp_path, capsys):
    assert main(["--checkpoint", str(model_folder), "--object", str(tmp_path / "nope.png"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "nope.png" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a model folder" in capsys.readouterr().err


@pytest.mark.slow  # compiles the pipeline
def test_sampler_and_its_options_reach_the_settings(model_folder, object_file, tmp_path):
    out = tmp_path / "out"
    assert main(["--checkpoint", str(model_folder), "--object", str(object_file), "--sampler", "dpmpp_2m",
                 "--spacing", "leading", "--steps", "3", "--out", str(out), "--no-progress"]) == 0
    settings = json.loads((out / "sample.json").read_text())
    assert settings["sampler"] == "dpmpp_2m" and settings["steps"] == 3
    assert settings["sampler_options"] == {"spacing": "leading"}


def test_unknown_sampler_lists_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        main(["--sampler", "heun"])
    err = capsys.readouterr().err
    assert "invalid choice: 'heun'" in err and all(name in err for name in samplers.names())


def test_value_lists_and_ranges():
    assert parse_values("-90:90:3", "azimuth") == [-90.0, 0.0, 90.0]
    assert parse_values("-60,-30", "azimuth") == [-60.0, -30.0]
    assert views_from([10.0], [0.0, 30.0], [0.0]) == [(10.0, 0.0, 0.0), (10.0, 30.0, 0.0)]
    assert len(views_from([0.0, 10.0], [0.0, 30.0, 60.0], [0.0])) == 6
    with pytest.raises(SystemExit):
        parse_values("a:b", "polar")


@pytest.mark.slow
@pytest.mark.parametrize("demo", ["prompt", "composition"])
def test_built_in_demo_models_run_with_no_inputs(tmp_path, demo):
    """`sample.py` (and `--demo composition`) with nothing else: the shipped model, the built-in example's object,
    box, caption and, for the composition model, its background; a 5-view sheet by default."""
    out = tmp_path / demo
    assert main(["--demo", demo, "--steps", "2", "--azimuth", "-90:90:3", "--out", str(out), "--no-progress"]) == 0
    settings = json.loads((out / "sample.json").read_text())
    assert settings["model"]["format"] == "customnet-jax train.py"  # a trained export, not the random fallback
    assert settings["background"] is (demo == "composition")
    assert settings["background_file"] == ("built-in" if demo == "composition" else None)
    assert len(settings["views"]) == 3 and settings["prompt"]
