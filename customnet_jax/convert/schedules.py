"""The diffusion config of a checkpoint: recorded by our export, or recognised from its `betas` buffer.

The tensors alone cannot tell what the UNet predicts (epsilon or v): a v-prediction model sampled as an epsilon
one gives wrong pictures. So the export records the whole `DiffusionConfig` (safetensors header metadata and
`<stem>.diffusion.json` beside the .pt) and the import reads it back. Without a record the schedule comes from
the `betas` buffer: a zero-terminal-SNR schedule implies v-prediction; a plain SD 1.x schedule (the released
CustomNet and Zero-1-to-3 files) is taken as epsilon and the conversion says so; betas that match no known
schedule are refused unless the prediction type is given.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable, Mapping

import numpy as np

from customnet_jax.config_files import from_dict
from customnet_jax.convert.tensors import CheckpointFormatError, LazyTensor
from customnet_jax.diffusion.schedule import DiffusionConfig, betas

DIFFUSION_METADATA = "customnet_jax.diffusion"  # safetensors header metadata key
DIFFUSION_SUFFIX = ".diffusion.json"  # <stem>.diffusion.json beside a .pt / .ckpt / .safetensors
_ENDS = (0.012, 0.0120, 0.02)  # beta_end of SD 1.x (scaled_linear) and of DDPM (linear)


def diffusion_json_path(checkpoint: str | pathlib.Path) -> pathlib.Path:
    """Where the diffusion config of a checkpoint file is written beside it."""
    path = pathlib.Path(checkpoint)
    stem = path.with_suffix("") if path.suffix in (".pt", ".safetensors", ".ckpt") else path
    return stem.with_name(stem.name + DIFFUSION_SUFFIX)


def _parse(text: str, where: str) -> DiffusionConfig:
    try:
        data = json.loads(text)
        return from_dict(DiffusionConfig, data.get("diffusion", data))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as error:
        raise CheckpointFormatError(f"{where}: the recorded diffusion config is damaged ({error}); fix or remove "
                                    "it and give --prediction-type") from error


def recorded_diffusion(path: pathlib.Path, metadata: Mapping[str, str]) -> tuple[DiffusionConfig, str] | None:
    """The diffusion config our export recorded (header metadata first, then the JSON beside the file)."""
    if DIFFUSION_METADATA in metadata:
        return _parse(metadata[DIFFUSION_METADATA], f"{path} (header metadata)"), f"{path}'s header metadata"
    beside = diffusion_json_path(path)
    if path.is_file() and beside.is_file():
        return _parse(beside.read_text(), str(beside)), str(beside)
    return None


def _candidates(stored: np.ndarray) -> list[DiffusionConfig]:
    count, start = len(stored), round(float(stored[0]), 8)
    out = [DiffusionConfig(num_train_timesteps=count)]
    end = round(float(stored[-1]), 8)
    if 0 < start < end < 1:
        out += [DiffusionConfig(count, start, end, schedule) for schedule in ("scaled_linear", "linear")]
    for end in _ENDS:
        if 0 < start < end < 1:
            out += [DiffusionConfig(count, start, end, schedule, "v_prediction", True)
                    for schedule in ("scaled_linear", "linear")]
    return out


def diffusion_from_betas(tensors: Mapping[str, LazyTensor]) -> DiffusionConfig | None:
    """The config whose betas equal the checkpoint's `betas` buffer (None: no buffer, or no known schedule)."""
    if "betas" not in tensors:
        return DiffusionConfig()
    stored = np.asarray(tensors["betas"], np.float64).reshape(-1)
    for candidate in _candidates(stored):
        if np.allclose(betas(candidate), stored, rtol=1e-5, atol=0):
            return candidate
    return None


def diffusion_of(path: pathlib.Path, metadata: Mapping[str, str], tensors: Mapping[str, LazyTensor],
                 prediction_type: str | None, log: Callable[[str], None]) -> DiffusionConfig:
    """The diffusion config of a checkpoint; `prediction_type` (the user's word) overrides what is not recorded."""
    recorded = recorded_diffusion(path, metadata)
    from_betas = diffusion_from_betas(tensors)
    if recorded is not None:
        config, where = recorded
        if from_betas is not None and "betas" in tensors and not np.allclose(
                betas(config), np.asarray(tensors["betas"], np.float64).reshape(-1), rtol=1e-5, atol=0):
            raise CheckpointFormatError(f"{path}: the diffusion config recorded in {where} does not match the file's "
                                        "`betas` buffer; the file was changed after export")
        if prediction_type is not None and prediction_type != config.prediction_type:
            raise CheckpointFormatError(f"--prediction-type {prediction_type}, but {where} records "
                                        f"{config.prediction_type}: drop the flag")
        log(f"diffusion config from {where}: {_describe(config)}")
        return config
    if from_betas is None:
        if prediction_type is None:
            raise CheckpointFormatError(
                f"{path}: its `betas` buffer matches no scaled_linear / linear schedule (with or without zero "
                "terminal SNR) and no diffusion config is recorded: the model's noise schedule is unknown; convert "
                "it with the config it was trained with (--prediction-type, and the schedule in --config's "
                "model folder) rather than guess")
        from_betas = DiffusionConfig()
    if prediction_type is not None:
        config = dataclasses.replace(from_betas, prediction_type=prediction_type,
                                     zero_terminal_snr=from_betas.zero_terminal_snr and prediction_type != "epsilon")
        log(f"diffusion config: {_describe(config)} (--prediction-type)")
        return config
    if from_betas.zero_terminal_snr:
        log(f"diffusion config from the `betas` buffer: {_describe(from_betas)} (a zero-terminal-SNR schedule "
            "needs v-prediction)")
    else:
        log(f"note: {path} records no diffusion config; {_describe(from_betas)} assumed (the released CustomNet and "
            "Zero-1-to-3 files are epsilon models). For a v-prediction model pass --prediction-type v_prediction")
    return from_betas


def _describe(config: DiffusionConfig) -> str:
    snr = ", zero terminal SNR" if config.zero_terminal_snr else ""
    return (f"{config.prediction_type} prediction, {config.beta_schedule} betas {config.beta_start}.."
            f"{config.beta_end}{snr}")

