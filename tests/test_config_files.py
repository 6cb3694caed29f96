"""Config files and `--set` overrides (customnet_jax.config_files): every value is checked against its field's
type when it is parsed (issue 21), the config files round-trip through JSON, train.py refuses a bad value with
one line and exit 2 before building anything."""

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from customnet_jax.config_files import ConfigValueError, from_dict, load_config, override, to_dict  # noqa: E402
from customnet_jax.experiment import Config  # noqa: E402

CONFIG_FILES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.py"))


@pytest.fixture(scope="module")
def tiny() -> Config:
    return load_config(ROOT / "configs" / "tiny.py")


@pytest.mark.parametrize("path", [*CONFIG_FILES, "tests/train_micro_config.py"])
def test_config_files_load_and_round_trip_through_json(path):
    config = load_config(ROOT / path)
    assert isinstance(config, Config)
    assert from_dict(Config, to_dict(config)) == config


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_each_config_file_says_the_command_that_runs_it(path):
    """big_vision's habit: the docstring holds the command line that runs the file."""
    import ast
    import re

    docstring = ast.get_docstring(ast.parse((ROOT / path).read_text())) or ""
    assert re.search(rf"^ *python .*-config {re.escape(path)}", docstring, re.MULTILINE), docstring


@pytest.mark.parametrize("assignment, message", [
    ("train.learning_rate=abc", "train.learning_rate: expected float, got 'abc' (str)"),
    ("train.batch_size=1.5", "train.batch_size: expected int, got 1.5 (float)"),
    ("train.batch_size=True", "train.batch_size: expected int, got True (bool)"),
    ("train.remat=maybe", "train.remat: expected bool, got 'maybe' (str)"),
    ("train.object_latent_dropout=(0.1,)", "train.object_latent_dropout: expected 2 values"),
    ("train.object_latent_dropout=(0.1,x)", "train.object_latent_dropout: expected tuple[float, float], got '(0.1,x)'"),
    ("train.object_latent_dropout=0.1", "train.object_latent_dropout: expected tuple[float, float], got 0.1"),
    ("model.unet.channel_mult=(1,2.5)", "model.unet.channel_mult[1]: expected int, got 2.5 (float)"),
    ("model.text_encoder.width=wide", "model.text_encoder.width: expected int, got 'wide' (str)"),
    ("data.source=pair", "data.source: expected one of 'synthetic', 'views', 'pairs'"),
    ("train.nope=1", "no field 'nope' in TrainConfig"),
    ("train=3", "train is a config section; set its fields"),
    ("train.learning_rate", "must look like 'section.field=value'"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_field(tiny, assignment, message):
    with pytest.raises(ConfigValueError) as error:
        override(tiny, [assignment])
    assert message in str(error.value)


def test_values_are_converted_to_the_field_type(tiny):
    config = override(tiny, ["train.learning_rate=1", "train.remat=true", "data.path=123",
                             "train.object_latent_dropout=[0, 0.1]", "train.sample_prompt=a red mug, on grass",
                             "data.source=random_raw", "mesh.data=2", "train.init_from='quoted'"])
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.train.remat is True and config.data.path == "123" and config.mesh.data == 2
    assert config.train.object_latent_dropout == (0.0, 0.1) and config.train.sample_prompt == "a red mug, on grass"
    assert config.data.source == "random_raw" and config.train.init_from == "quoted"
    assert override(tiny, ["train.learning_rate=2e-5"]).train.learning_rate == 2e-5
    # an optional section may be switched off (a text encoder goes with a text-reading UNet: both at once)
    zero123 = override(tiny, ["model.unet.text_context=False", "model.text_encoder=None"])
    assert zero123.model.text_encoder is None


def test_config_json_and_config_files_are_checked_too(tmp_path, tiny):
    data = to_dict(tiny)
    data["train"]["learning_rate"] = "fast"
    with pytest.raises(ConfigValueError, match=r"train.learning_rate: expected float, got 'fast'"):
        from_dict(Config, data)
    bad = tmp_path / "bad.py"
    bad.write_text("import dataclasses\nfrom customnet_jax.experiment import Config, TrainConfig\n\n\n"
                   "def get_config():\n    return Config(train=TrainConfig(num_steps='10'))\n")
    with pytest.raises(ConfigValueError, match=r"train.num_steps: expected int, got '10' \(str\)"):
        load_config(bad)


def test_train_cli_refuses_a_bad_value_with_one_line(tmp_path, capsys):
    import train

    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", "tests/train_micro_config.py", "--workdir", str(tmp_path / "run"),
                    "--set", "train.learning_rate=abc"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: train.learning_rate: expected float, got 'abc' (str)\n"
    assert not (tmp_path / "run").exists()  # refused before anything was built
