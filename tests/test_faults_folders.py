"""Model folders under faults (issue 21): --overwrite of a folder that is not a model folder, atomic replacement,
leftovers of a killed writer, same-size corruption of a parameter file, NaN weights at save and at load."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

from train_micro_config import micro_model  # noqa: E402

from customnet_jax.convert.importers import nest  # noqa: E402
from customnet_jax.model_files import ModelFileError, NotReplaceableError, verify_checksums  # noqa: E402
from customnet_jax.model_folder import load_model, save_model_folder  # noqa: E402
from customnet_jax.models.build import abstract_model  # noqa: E402
from customnet_jax.models.customnet import CustomNet  # noqa: E402
from customnet_jax.weights.params import param_shapes  # noqa: E402

CONFIG = micro_model()
ASSETS = ROOT / "customnet_jax" / "assets"


@pytest.fixture(scope="module")
def params():
    shapes = param_shapes(abstract_model(lambda: CustomNet(CONFIG, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    return {path: (0.1 * rng.standard_normal(shape)).astype(np.float32) for path, shape in shapes.items()}


def _save(path, params, **kwargs):
    return save_model_folder(path, nest(params), CONFIG, **kwargs)


def _siblings(path: pathlib.Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_overwrite_refuses_what_is_not_a_model_folder(params, tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(NotReplaceableError, match=r"not a model folder \(it holds \['holiday.jpg'\]\)"):
        _save(mine, params, overwrite=True)
    assert (mine / "holiday.jpg").read_bytes() == b"precious"
    model = _save(tmp_path / "model", params)
    (model / "notes.txt").write_text("mine")  # a model folder with the user's own file in it: refused too
    with pytest.raises(NotReplaceableError, match="notes.txt"):
        _save(model, params, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotReplaceableError, match="is a file or a link"):
        _save(tmp_path / "file", params, overwrite=True)
    assert _siblings(model) == ["file", "model", "photos"]  # no staging folder left behind


def test_overwrite_swaps_in_the_new_folder(params, tmp_path):
    path = _save(tmp_path / "model", params)
    first = (path / "checksums.json").read_text()
    changed = dict(params)
    key = next(iter(changed))
    changed[key] = changed[key] + 1
    _save(path, changed, overwrite=True)
    assert (path / "checksums.json").read_text() != first
    model, _ = load_model(path)
    np.testing.assert_array_equal(np.asarray(dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))[key][...]),
                                  changed[key])
    assert _siblings(path) == ["model"]  # the old folder is gone, nothing staged is left


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_write(params, tmp_path):
    """A writer killed mid-save leaves its staging folder; the next save beside it removes it (but not the
    staging folder of a writer that is still running)."""
    script = ("import os, sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests'];"
              "import customnet_jax.model_files as f, pathlib;"
              "s = f.staging_folder(pathlib.Path(sys.argv[2]) / 'model'); (s / 'params').mkdir();"
              "os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", script, str(ROOT), str(tmp_path)], check=False)
    (tmp_path / ".model.converting-old").mkdir()  # the staging name of earlier versions
    running = tmp_path / ".model.partial-running"
    running.mkdir()
    (running / ".owner").write_text(str(os.getppid()))  # a live process
    assert len(_siblings(tmp_path / "model")) == 3
    _save(tmp_path / "model", params)
    assert _siblings(tmp_path / "model") == [".model.partial-running", "model"]


def test_same_size_corruption_of_a_parameter_file_is_found_at_load(params, tmp_path):
    path = _save(tmp_path / "model", params)
    recorded = json.loads((path / "checksums.json").read_text())["sha256"]
    assert recorded and all(name.startswith("params/") for name in recorded)
    victim = max((path / name for name in recorded), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=f"{victim} does not match the checksum"):
        load_model(path)
    victim.unlink()
    with pytest.raises(ModelFileError, match=f"{victim} is missing"):
        load_model(path)


def test_non_finite_weights_are_refused_at_save_and_at_load(params, tmp_path):
    bad = dict(params)
    key = ("unet", "conv_in", "kernel")
    bad[key] = bad[key].copy()
    bad[key][0, 0, 0, 0] = np.nan
    with pytest.raises(ModelFileError, match="tensor unet/conv_in/kernel holds NaN or inf"):
        _save(tmp_path / "nan", bad)
    assert not (tmp_path / "nan").exists()
    # a folder written without the check (an older version): refused at load, by name
    path = _save(tmp_path / "old", params)
    (path / "checksums.json").unlink()
    shutil.rmtree(path / "params")
    ocp.PyTreeCheckpointer().save(path / "params", nest(bad))
    with pytest.raises(ModelFileError, match="refusing to load .*tensor unet/conv_in/kernel holds NaN"):
        load_model(path)


@pytest.mark.parametrize("name", ["demo_model", "demo_composition_model"])
def test_shipped_model_folders_carry_matching_checksums(name):
    assert verify_checksums(ASSETS / name)
