"""Transformers models (DINO, CLIP, SAM, BLIP-2, zero-shot detectors) from local folders, offline, for inference.

torch and transformers are imported here only when a stage is built, so the rest of the package stays light.
"""

from __future__ import annotations

import pathlib
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str) -> Any:
    """'float32' | 'bfloat16' | 'float16' -> the torch dtype."""
    import torch  # optional dependency: only the transformers PyTorch models need it

    if name not in DTYPES:
        raise ValueError(f"torch dtype {name!r}; expected one of {DTYPES}")
    return getattr(torch, name)


def local_folder(path: str | pathlib.Path, what: str) -> pathlib.Path:
    """The folder of a save_pretrained model (config.json inside), or a FileNotFoundError that says what it is."""
    folder = pathlib.Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{what} folder {folder} has no config.json; give a folder written by transformers' "
                                "save_pretrained (e.g. a downloaded Hugging Face snapshot)")
    return folder


def load_pretrained(model_class: Any, processor_class: Any, path: str | pathlib.Path, what: str,
                    device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """(model in eval mode on `device`, processor) from a local folder; nothing is downloaded."""
    folder = local_folder(path, what)
    model = model_class.from_pretrained(str(folder), local_files_only=True, dtype=torch_dtype(dtype))
    processor = processor_class.from_pretrained(str(folder), local_files_only=True)
    return model.to(device).eval(), processor


def to_device(batch: Any, model: Any) -> dict:
    """A processor's output moved to the model's device, floating tensors cast to its dtype."""
    out = {}
    for key, value in dict(batch).items():
        if hasattr(value, "to"):
            value = value.to(model.device)
            if value.is_floating_point():
                value = value.to(model.dtype)
        out[key] = value
    return out
