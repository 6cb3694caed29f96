"""convert_weights.py's LoRA steps: merge adapters into a model folder, export an adapter in PEFT's layout.

PEFT layout (a folder, as `peft.PeftModel.save_pretrained` writes it): adapter_config.json (peft_type LORA, r,
lora_alpha, target_modules), adapter_model.safetensors with `base_model.model.<module>.lora_A.weight` /
`.lora_B.weight`, where <module> is the PyTorch module name in the original CustomNet / LDM checkpoint
(`model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q`, weights/customnet_names.py), and
customnet_jax.json (the adapter's own JSON: base hash, targets). torch layouts: Linear A (r, in), B (out, r);
Conv2d A (r, cin, kh, kw) with the base's stride and padding, B (out, r, 1, 1). Full weights trained beside the
adapters (cc_projection) are listed in `modules_to_save`.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
from safetensors.numpy import save_file

from customnet_jax.adapters import Adapter, merged_params, model_params, name, parse_path, read_specs
from customnet_jax.adapters import check_base as check_adapter_base
from customnet_jax.config_files import from_dict
from customnet_jax.convert.importers import nest
from customnet_jax.model_folder import load_model, save_model_folder
from customnet_jax.models.customnet import CustomNetConfig
from customnet_jax.weights.customnet_names import customnet_rules
from customnet_jax.weights.rules import Path

PEFT_PREFIX = "base_model.model."


def torch_names(config: CustomNetConfig) -> dict[Path, tuple[str, str]]:
    """our parameter path -> (its PyTorch key in the original checkpoint, its layout)."""
    return {rule.path: (rule.torch_key, rule.layout) for rule in customnet_rules(config)}


def peft_tensors(adapter: Adapter, config: CustomNetConfig) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """(PEFT tensors, target module names, modules_to_save) of one adapter, in torch's layouts."""
    names = torch_names(config)
    tensors, targets = {}, []
    for module in adapter.modules:
        key = parse_path(module)
        torch_key, _ = names[key + ("kernel",)]
        module_name = torch_key.removesuffix(".weight")
        a, b = adapter.tensors[key + ("lora_a",)], adapter.tensors[key + ("lora_b",)]
        if a.ndim == 4:  # conv: (kh, kw, cin, r) -> (r, cin, kh, kw); B as a 1x1 conv
            a_torch, b_torch = a.transpose(3, 2, 0, 1), b.T[:, :, None, None]
        else:
            a_torch, b_torch = a.T, b.T
        tensors[f"{PEFT_PREFIX}{module_name}.lora_A.weight"] = np.ascontiguousarray(a_torch)
        tensors[f"{PEFT_PREFIX}{module_name}.lora_B.weight"] = np.ascontiguousarray(b_torch)
        targets.append(module_name)
    saved = []
    for path, value in adapter.full_weights().items():
        torch_key, layout = names[path]
        saved.append(torch_key.rsplit(".", 1)[0])
        tensors[f"{PEFT_PREFIX}{torch_key}"] = np.ascontiguousarray(value.T if layout == "linear" else value)
    return tensors, targets, sorted(set(saved))


def export_peft(spec: str, output: str | pathlib.Path, overwrite: bool = False) -> pathlib.Path:
    """An adapter file -> a PEFT adapter folder (written beside, then renamed into place)."""
    (adapter,) = read_specs([spec])
    output = pathlib.Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    config = from_dict(CustomNetConfig, adapter.meta["model"])  # the adapter's JSON holds the base's model config
    tensors, targets, saved = peft_tensors(adapter, config)
    peft_config = {"peft_type": "LORA", "task_type": None, "r": int(adapter.meta["rank"]),
                   "lora_alpha": float(adapter.meta["alpha"]), "lora_dropout": float(adapter.meta["dropout"]),
                   "target_modules": targets, "modules_to_save": saved or None, "bias": "none",
                   "init_lora_weights": True, "fan_in_fan_out": False, "inference_mode": True,
                   "base_model_name_or_path": str(adapter.meta["base"].get("source"))}
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = pathlib.Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    save_file({k: v.astype(np.float32) * (adapter.scale if ".lora_B." in k else 1.0) for k, v in tensors.items()},
              str(partial / "adapter_model.safetensors"))
    (partial / "adapter_config.json").write_text(json.dumps(peft_config, indent=2))
    (partial / "customnet_jax.json").write_text(json.dumps({**adapter.meta, "scale_in_lora_B": adapter.scale},
                                                           indent=2))  # base hash, targets: beside PEFT's config
    if output.exists():
        shutil.rmtree(output)
    os.replace(partial, output)
    return output


def merge_into_folder(folder: str | pathlib.Path, specs: list[str], output: str | pathlib.Path,
                      overwrite: bool = False) -> pathlib.Path:
    """A model folder with adapters merged into its weights, as a new model folder (provenance names them)."""
    model, source = load_model(folder)
    adapters = read_specs(specs)
    base = model_params(model)
    for adapter in adapters:
        check_adapter_base(adapter, base)
    merged = merged_params(base, adapters)
    provenance = {"format": "convert_weights.py --merge-lora", "base": str(pathlib.Path(folder).resolve()),
                  "base_provenance": source.provenance,
                  "adapters": [{"file": str(a.path), "scale": a.scale, "base_hash": a.meta["base"]["hash"],
                                "modules": len(a.modules), "full_weights": [name(p) for p in a.full_weights()]}
                               for a in adapters]}
    tokenizer = source.tokenizer_path
    return save_model_folder(output, nest(merged), source.model, source.diffusion, provenance=provenance,
                             overwrite=overwrite, **({"tokenizer": tokenizer} if tokenizer else {}))
