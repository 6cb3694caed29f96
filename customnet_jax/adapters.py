"""LoRA adapter files: write, read, check against a base model, merge into its weights or keep apart.

An adapter file is one safetensors file: the adapter weights ("/"-joined parameter paths -> float32: every
`.../lora_a` and `.../lora_b`, plus any full weights trained beside them, e.g. cc_projection) and, in its header
metadata under "customnet_jax.adapter", a small JSON: rank, alpha, targets, the adapted modules, and the base
model's provenance and hash. The hash (`params_hash`) is over the base's parameter values, so any copy of the
same weights (a model folder, the built-in demo model, a converted checkpoint) is recognised, and an adapter
trained on other weights is refused with a one-line error before anything is compiled.

    y = base(x) + scale * alpha / r * B(A(x))   per adapted module (docs/lora.md)

Several adapters (`--lora FILE[:SCALE]`, repeatable) add up. Merged, each delta is folded into the kernels (the
sampling program is the base model's); kept apart, the modules get the adapters' A and B side by side (ranks
concatenated, each B pre-scaled), one extra low-rank product per module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_bytes

from customnet_jax.models.lora import add_adapters

Path = tuple[str | int, ...]
METADATA_KEY = "customnet_jax.adapter"
FORMAT = "customnet-jax-lora"


class AdapterError(ValueError):
    """A file that is not an adapter, an adapter for another base, or a bad scale."""


@dataclasses.dataclass(frozen=True)
class Adapter:
    path: pathlib.Path
    tensors: dict  # Path -> float32 numpy
    meta: dict
    scale: float = 1.0

    @property
    def modules(self) -> list[str]:
        return list(self.meta["modules"])

    @property
    def scaling(self) -> float:
        return float(self.meta["alpha"]) / int(self.meta["rank"])

    def full_weights(self) -> dict:
        return {p: v for p, v in self.tensors.items() if p[-1] not in ("lora_a", "lora_b")}


def name(path: Path) -> str:
    return "/".join(map(str, path))


def parse_path(text: str) -> Path:
    return tuple(int(p) if p.isdigit() else p for p in text.split("/"))


def params_hash(flat: Mapping[Path, Any], exclude: Iterable[Path] = ()) -> str:
    """sha256 over (path, shape, float32 bytes) of every parameter but `exclude`, in path order."""
    skip = set(exclude)
    digest = hashlib.sha256()
    for path in sorted((p for p in flat if p not in skip), key=name):
        value = np.ascontiguousarray(np.asarray(jax.device_get(flat[path]), np.float32))
        digest.update(f"{name(path)}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def save_adapter(path: str | pathlib.Path, tensors: Mapping[Path, Any], meta: Mapping[str, Any]) -> pathlib.Path:
    """Write the adapter file atomically (beside, then renamed); non-finite weights are refused."""
    path = pathlib.Path(path)
    arrays = {name(p): np.ascontiguousarray(np.asarray(jax.device_get(v), np.float32)) for p, v in tensors.items()}
    bad = [k for k, v in arrays.items() if not np.isfinite(v).all()]
    if bad:
        raise AdapterError(f"adapter weights hold non-finite values ({bad[0]}); not saved")
    header = {METADATA_KEY: json.dumps({"format": FORMAT, "version": 1, **meta}, sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(safetensors_bytes(arrays, metadata=header))
    os.replace(partial, path)
    return path


def read_adapter(path: str | pathlib.Path, scale: float = 1.0) -> Adapter:
    """An adapter file; `AdapterError` (one line) if it is missing or not an adapter."""
    path = pathlib.Path(path)
    if not math.isfinite(scale):
        raise AdapterError(f"--lora {path}:{scale}: the scale must be a finite number")
    if not path.is_file():
        raise AdapterError(f"--lora {path}: no such file")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            meta = json.loads((handle.metadata() or {}).get(METADATA_KEY, "null"))
            tensors = {parse_path(k): handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterError(f"--lora {path}: not a LoRA adapter file ({str(error).splitlines()[0]}); "
                           "make one with train.py --config configs/lora.py") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AdapterError(f"--lora {path}: a safetensors file without CustomNet adapter metadata, not a LoRA "
                           "adapter file; make one with train.py --config configs/lora.py")
    return Adapter(path, tensors, meta, float(scale))


def parse_spec(spec: str) -> tuple[str, float]:
    """"FILE" or "FILE:SCALE" -> (file, scale)."""
    file, _, tail = spec.rpartition(":")
    if not file:
        return spec, 1.0
    try:
        return file, float(tail)
    except ValueError:
        return spec, 1.0  # a colon inside the file name


def check_base(adapter: Adapter, base: Mapping[Path, Any]) -> None:
    """The adapter fits these base weights: every module and shape exists, and the base hash agrees."""
    for module in adapter.modules:
        kernel = parse_path(module) + ("kernel",)
        a, b = (adapter.tensors[parse_path(module) + (leaf,)] for leaf in ("lora_a", "lora_b"))
        if kernel not in base:
            raise AdapterError(f"--lora {adapter.path}: made for another base model (this one has no module {module})")
        if tuple(base[kernel].shape) != (*a.shape[:-1], b.shape[-1]):
            raise AdapterError(f"--lora {adapter.path}: made for another base model ({module} has kernel "
                               f"{tuple(base[kernel].shape)} here, the adapter fits {(*a.shape[:-1], b.shape[-1])})")
    for path, value in adapter.full_weights().items():
        if path not in base or tuple(base[path].shape) != tuple(value.shape):
            raise AdapterError(f"--lora {adapter.path}: made for another base model ({name(path)} differs in shape)")
    expected = adapter.meta["base"]["hash"]
    found = params_hash(base, exclude=adapter.full_weights())
    if found != expected:
        raise AdapterError(f"--lora {adapter.path}: made for another base model (base hash {expected[:12]}..., "
                           f"this model's {found[:12]}...; base was {adapter.meta['base'].get('source')})")


def _delta_full_weights(adapters: list[Adapter], base: Mapping[Path, Any]) -> dict:
    """Full weights carried by adapters: W = W_base + sum_i scale_i (W_i - W_base)."""
    out = {}
    for adapter in adapters:
        for path, value in adapter.full_weights().items():
            start = out.get(path, np.asarray(base[path], np.float32))
            out[path] = start + adapter.scale * (value - np.asarray(base[path], np.float32))
    return out


def merged_params(base: Mapping[Path, Any], adapters: list[Adapter]) -> dict:
    """Base parameters with every adapter folded in: W + scale alpha / r A B per module."""
    out = {p: np.asarray(jax.device_get(v), np.float32) for p, v in base.items()}
    for adapter in adapters:
        for module in adapter.modules:
            key = parse_path(module)
            a, b = adapter.tensors[key + ("lora_a",)], adapter.tensors[key + ("lora_b",)]
            out[key + ("kernel",)] = out[key + ("kernel",)] + adapter.scale * adapter.scaling * np.einsum(
                "...r,ro->...o", a, b)
    out.update(_delta_full_weights(adapters, base))
    return out


def side_by_side(base: Mapping[Path, Any], adapters: list[Adapter]) -> tuple[dict, dict]:
    """(module path -> total rank, adapter leaves path -> value) for adapters kept apart: A's concatenated along
    the rank axis, B's stacked with each pre-scaled by scale alpha / r (so the modules' scaling is 1)."""
    parts: dict[str, list] = {}
    for adapter in adapters:
        for module in adapter.modules:
            key = parse_path(module)
            parts.setdefault(module, []).append((adapter.tensors[key + ("lora_a",)],
                                                 adapter.scale * adapter.scaling * adapter.tensors[key + ("lora_b",)]))
    ranks, leaves = {}, {}
    for module, pairs in parts.items():
        key = parse_path(module)
        leaves[key + ("lora_a",)] = np.concatenate([a for a, _ in pairs], axis=-1)
        leaves[key + ("lora_b",)] = np.concatenate([b for _, b in pairs], axis=0)
        ranks[module] = int(leaves[key + ("lora_a",)].shape[-1])
    leaves.update(_delta_full_weights(adapters, base))
    return ranks, leaves


def model_params(model: nnx.Module) -> dict:
    return traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def read_specs(specs: Iterable[str | tuple[str, float] | Adapter]) -> list[Adapter]:
    """"FILE[:SCALE]" / (file, scale) / Adapter -> Adapters (files read and checked to be adapters)."""
    return [s if isinstance(s, Adapter) else read_adapter(*(parse_spec(s) if isinstance(s, str) else s))
            for s in specs]


def apply_adapters(model: nnx.Module, specs: Iterable[str | tuple[str, float] | Adapter],
                   merge: bool = True) -> nnx.Module:
    """`model` (a CustomNet with its base weights) with the adapters of `specs` ("FILE[:SCALE]" or (file, scale))
    merged into its weights or kept apart; changed in place and returned. Checks every adapter first."""
    adapters = read_specs(specs)
    if not adapters:
        return model
    base = model_params(model)
    for adapter in adapters:
        check_base(adapter, base)
    state = nnx.state(model, nnx.Param)
    if merge:
        values = merged_params(base, adapters)
    else:
        ranks, values = side_by_side(base, adapters)
        add_adapters(model, ranks, 1.0)
        state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    for path, value in values.items():
        if path in flat:
            flat[path].set_value(jnp.asarray(value, jnp.float32))
    nnx.update(model, state)
    return model


def add_lora_flags(parser: Any) -> None:
    """sample.py's (and the app's) adapter flags."""
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                        help="a LoRA adapter file (train.py --config configs/lora.py) on top of the model, at SCALE "
                             "(default 1); repeatable: the adapters add up")
    parser.add_argument("--lora-apart", action="store_true",
                        help="keep the adapters apart from the weights (default: merged into them, as fast as the "
                             "base model)")
