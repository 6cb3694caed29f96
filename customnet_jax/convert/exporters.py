"""A model folder -> a CustomNet-layout PyTorch state dict (safetensors and .pt) that the original code loads.

The names are those of the released checkpoints (`customnet_names.customnet_rules`); tensors the model does
not use but the source file had (noise-schedule buffers, position ids, the OpenAI CLIP text leftovers) come
back from the folder's `extra_tensors.safetensors`, so import -> export reproduces the source file's keys,
shapes and values. A model trained from scratch has no such file: the schedule buffers (as LDM's
`register_schedule` computes them) and position ids are regenerated. Zero-1-to-3 models are written as a
Lightning-style `{"state_dict": ...}` .pt, as zero123's own loader expects.

The diffusion config (schedule, prediction type, zero-terminal SNR), which the tensors cannot fully tell, goes
with the weights: in the safetensors header's metadata and in `<output>.diffusion.json` beside the .pt; the
import reads it back (`importers.diffusion_of`).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np
from flax import nnx

from customnet_jax.config_files import to_dict
from customnet_jax.convert.importers import EXTRA_TENSORS, _bar
from customnet_jax.convert.readers import open_checkpoint
from customnet_jax.convert.schedules import DIFFUSION_METADATA, diffusion_json_path
from customnet_jax.convert.source import TEXT_PREFIX
from customnet_jax.convert.writers import SafetensorsWriter, TorchZipWriter
from customnet_jax.diffusion.schedule import DiffusionConfig, betas
from customnet_jax.model_folder import load_model
from customnet_jax.weights.customnet_names import customnet_rules
from customnet_jax.weights.params import param_shapes
from customnet_jax.weights.rules import Rule, expected_torch_shapes, to_torch


def schedule_buffers(config: DiffusionConfig) -> dict[str, np.ndarray]:
    """The 12 noise-schedule buffers of LDM's DDPM.register_schedule (v_posterior 0), float32."""
    b = betas(config)
    alphas = 1.0 - b
    cumprod = np.cumprod(alphas, axis=0)
    prev = np.append(1.0, cumprod[:-1])
    variance = b * (1.0 - prev) / (1.0 - cumprod)
    with np.errstate(divide="ignore"):  # a zero-terminal-SNR schedule has a_T = 0: inf where LDM's has them too
        values = {
            "betas": b, "alphas_cumprod": cumprod, "alphas_cumprod_prev": prev,
            "sqrt_alphas_cumprod": np.sqrt(cumprod), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - cumprod),
            "log_one_minus_alphas_cumprod": np.log(1.0 - cumprod), "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / cumprod - 1), "posterior_variance": variance,
            "posterior_log_variance_clipped": np.log(np.maximum(variance, 1e-20)),
            "posterior_mean_coef1": b * np.sqrt(prev) / (1.0 - cumprod),
            "posterior_mean_coef2": (1.0 - prev) * np.sqrt(alphas) / (1.0 - cumprod),
        }
    return {k: v.astype(np.float32) for k, v in values.items()}


def _output_paths(output: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    output = pathlib.Path(output)
    stem = output.with_suffix("") if output.suffix in (".pt", ".safetensors", ".ckpt") else output
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".pt")


def export_pytorch(folder: str | pathlib.Path, output: str | pathlib.Path, *, progress: bool = True,
                   overwrite: bool = False, log: Callable[[str], None] = print) -> tuple[pathlib.Path, pathlib.Path]:
    """Write `<output>.safetensors` and `<output>.pt` (CustomNet layout) from a model folder; returns both paths."""
    safetensors_path, pt_path = _output_paths(output)
    for path in (safetensors_path, pt_path):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; choose another --output or pass --overwrite")
    model, info = load_model(folder)
    safetensors_path.parent.mkdir(parents=True, exist_ok=True)
    rules = customnet_rules(info.model)
    shapes = expected_torch_shapes(rules, param_shapes(model))
    values = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    by_key: dict[str, list[Rule]] = {}
    for rule in rules:
        by_key.setdefault(rule.torch_key, []).append(rule)

    producers: dict[str, tuple[tuple[int, ...], Any, Callable[[], np.ndarray]]] = {}
    for key, key_rules in by_key.items():
        producers[key] = (shapes[key], np.dtype(np.float32),
                          lambda key_rules=key_rules: _torch_tensor(key_rules, values))

    extra_file = pathlib.Path(folder) / EXTRA_TENSORS
    order: list[str] = []
    extras_checkpoint = None
    if extra_file.is_file():
        extras_checkpoint = open_checkpoint(extra_file)
        order = json.loads(extras_checkpoint.metadata.get("source_key_order", "[]"))
        for key, tensor in extras_checkpoint.obj.items():
            producers.setdefault(key, (tensor.shape, tensor.dtype, tensor.read))
    else:
        log("note: the folder has no extra tensors (it was not converted from a released file): the schedule "
            "buffers and position ids are regenerated, the unused OpenAI-CLIP text leftovers are not written")
    regenerated = dict(schedule_buffers(info.diffusion))
    if "betas" in producers and not np.allclose(producers["betas"][2](), regenerated["betas"], rtol=1e-5, atol=0):
        for key in regenerated:  # the source file's schedule is not the folder's (trained on another one): ours
            producers.pop(key, None)
    if info.model.text_encoder is not None:  # e.g. a zero123 -> CustomNet folder: its text came from a CLIP folder
        regenerated[TEXT_PREFIX + "embeddings.position_ids"] = np.arange(info.model.text_encoder.max_length,
                                                                        dtype=np.int64)[None]
    for key, value in regenerated.items():
        producers.setdefault(key, (value.shape, value.dtype, lambda value=value: value))
    keys = [k for k in order if k in producers] + [k for k in producers if k not in set(order)]
    items = [(k, producers[k][0], producers[k][1]) for k in keys]

    zero123 = info.model.text_encoder is None
    step = info.provenance.get("source", {}).get("global_step")
    wrap = (lambda state: {"state_dict": state, **({"global_step": step} if isinstance(step, int) else {})}) \
        if zero123 else None
    diffusion_json = json.dumps(to_dict(info.diffusion))
    safetensors = SafetensorsWriter(safetensors_path, items, {"format": "pt", "layout": "customnet",
                                                              DIFFUSION_METADATA: diffusion_json})
    torch_file = TorchZipWriter(pt_path, items, wrap=wrap)
    bar = _bar(sum(int(np.prod(s)) * np.dtype(d).itemsize for _, s, d in items), "exporting", progress)
    try:
        for key in keys:
            array = np.asarray(producers[key][2]())
            safetensors.write(array)
            torch_file.write(array)
            bar.update(array.nbytes)
        safetensors.close()
        torch_file.close()
        beside = diffusion_json_path(pt_path)
        partial = beside.with_name(beside.name + ".partial")
        partial.write_text(json.dumps({"diffusion": json.loads(diffusion_json)}, indent=2))
        os.replace(partial, beside)
    except BaseException:
        safetensors.abort()
        torch_file.abort()
        raise
    finally:
        bar.close()
        if extras_checkpoint is not None:
            extras_checkpoint.close()
    log(f"wrote {safetensors_path} and {pt_path} (+ {diffusion_json_path(pt_path).name}): {len(keys)} tensors"
        + (" (zero123 layout: the .pt holds {'state_dict': ...})" if zero123 else ""))
    return safetensors_path, pt_path


def _torch_tensor(rules: list[Rule], values: dict) -> np.ndarray:
    """One torch-layout tensor from its rule(s) (row slices concatenated in order)."""
    pieces = sorted(((r.rows[0] if r.rows else 0, to_torch(np.asarray(values[r.path].get_value()), r))
                     for r in rules), key=lambda x: x[0])
    return pieces[0][1] if len(pieces) == 1 else np.concatenate([p for _, p in pieces])
