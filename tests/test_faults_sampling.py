"""sample.py under bad input (issue 21): every argument is checked before any work, one error line each, and a
non-finite result is an error, not a black PNG.

The model folder here has a config and no weights: a refusal that comes back 2 from it was made before any
weight was read (loading would fail differently)."""

import json
import types

import numpy as np
import pytest
from PIL import Image

from configs.tiny import tiny_model
from customnet_jax.config_files import to_dict
from customnet_jax.sampling import cli
from customnet_jax.sampling.validate import NonFinitePicturesError, check_pictures


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    folder = root / "config_only"
    (folder / "params").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": to_dict(tiny_model())}))
    rgba = np.zeros((48, 48, 4), np.uint8)
    rgba[10:40, 12:36] = (30, 160, 60, 255)
    Image.fromarray(rgba).save(root / "object.png")
    (root / "damaged.png").write_bytes((root / "object.png").read_bytes()[:60])
    Image.new("1", (9000, 9000)).save(root / "bomb.png")  # 81 M pixels in a few kB
    (root / "a_file").write_text("x")
    return root


CASES = [
    (["--polar", "1e40"], "--polar 1e+40: each value must be a finite number in [-90, 90]"),
    (["--radius", "1e40"], "--radius 1e+40"),
    (["--radius", "5"], "--radius 5: each value must be a finite number in [-0.5, 0.5]"),
    (["--azimuth", "nan"], "--azimuth nan"),
    (["--azimuth", "-200"], "[-180, 180]"),
    (["--polar", "0:inf:3"], "--polar"),
    (["--bbox", "1,2,3"], "--bbox '1,2,3': give four finite numbers"),
    (["--bbox", "a,b,c,d"], "give four finite numbers"),
    (["--bbox", "nan,0,1,1"], "give four finite numbers"),
    (["--bbox", "0.5,0.1,0.2,0.9"], "zero or negative area"),
    (["--mask", "{root}/missing.png"], "--mask {root}/missing.png: no such file"),
    (["--mask", "{root}/damaged.png"], "not a readable picture"),
    (["--object", "{root}/bomb.png"], "9000x9000 pixels is too large to decode"),
    (["--out", "{root}/a_file/out"], "is a file, not a folder"),
]


@pytest.mark.parametrize("extra,message", CASES)
def test_bad_arguments_are_refused_before_any_work(inputs, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    extra = [e.format(root=inputs) for e in extra]
    args = ["--checkpoint", str(inputs / "config_only"), "--object", str(inputs / "object.png"), "--out", str(out),
            "--no-progress", *extra]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sample.py: error: ") and err.count("\n") == 1, err
    assert message.format(root=inputs) in err, err
    assert not out.exists()


def test_a_non_finite_result_is_an_error_not_a_black_picture(inputs, tmp_path, monkeypatch, capsys):
    with pytest.raises(NonFinitePicturesError):
        check_pictures(np.array([0.0, np.nan]))
    check_pictures(np.zeros(3))

    class Diverging:
        config = tiny_model()

        def __call__(self, *args, **kwargs):
            return types.SimpleNamespace(latents=np.full((1, 1, 16, 16, 4), np.nan, np.float32), settings={})

    from customnet_jax.sampling import pipeline

    monkeypatch.setattr(pipeline.Pipeline, "from_folder", classmethod(lambda cls, *a, **k: Diverging()))
    out = tmp_path / "out"
    code = cli.main(["--checkpoint", str(inputs / "config_only"), "--object", str(inputs / "object.png"),
                     "--out", str(out), "--no-progress"])
    assert code == 2 and "not finite" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
