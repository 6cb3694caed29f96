"""The LoRA export step: at the end of a run with `lora.rank` > 0, write the trained adapters (and any full weights
trained beside them, e.g. cc_projection) as an adapter file instead of a whole model folder (customnet_jax.adapters)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import jax
from flax import traverse_util

from customnet_jax.adapters import name, params_hash, save_adapter
from customnet_jax.config_files import to_dict


def adapter_contents(config: Any, full: dict, trained: set) -> tuple[dict, dict]:
    """(the adapter file's tensors, its JSON) from every parameter (flat) and the paths that trained."""
    tensors = {p: full[p] for p in sorted(trained, key=name)}
    base = {p: v for p, v in full.items() if p not in trained}
    modules = sorted({name(p[:-1]) for p in trained if p[-1] in ("lora_a", "lora_b")})
    source = config.train.init_from or f"random init (train.seed {config.train.seed})"
    meta = {"rank": config.lora.rank, "alpha": config.lora.alpha, "dropout": config.lora.dropout,
            "targets": list(config.lora.targets), "modules": modules,
            "full_weights": [name(p) for p in tensors if p[-1] not in ("lora_a", "lora_b")],
            "base": {"hash": params_hash(base), "source": str(source), "parameters": len(base)},
            "model": to_dict(config.model), "trainable": [list(r) for r in config.train.trainable]}
    return tensors, meta


def export_adapter(trainer: Any, path: pathlib.Path, step: int, log: Callable[[str], None]) -> None:
    """Write <workdir>/adapter.safetensors (EMA weights if kept; host 0 writes)."""
    use_ema = trainer.config.train.export_ema and "ema" in trainer.state
    full = traverse_util.flatten_dict(trainer.full_params(use_ema))  # every host takes part in the gather
    if jax.process_index() != 0:
        return
    tensors, meta = adapter_contents(trainer.config, full, set(traverse_util.flatten_dict(trainer.state["params"])))
    save_adapter(path, tensors, {**meta, "step": step, "ema": use_ema})
    size = path.stat().st_size
    log(f"exported the adapter{' (EMA)' if use_ema else ''} to {path} ({size / 1024:.0f} KiB, "
        f"{len(meta['modules'])} modules)")
