"""A checkpoint seen in CustomNet names (`Source`), and what every layout reader shares: the state dict of an
opened file, a folder's weights file, its config.json."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

from customnet_jax.convert.tensors import (
    Checkpoint,
    CheckpointFormatError,
    LazyTensor,
    UnsafeCheckpointError,
    unsafe_message,
)
from customnet_jax.convert.unpickler import foreign_name
from customnet_jax.weights.customnet_names import IMAGE_ENCODER_PREFIX, TEXT_ENCODER_PREFIX

FORMATS = ("customnet", "zero123", "clip-text", "diffusers-zero123")
EMA_PREFIX = "model_ema."
VISUAL_PREFIX = IMAGE_ENCODER_PREFIX + "visual."
TEXT_PREFIX = TEXT_ENCODER_PREFIX + "text_model."


@dataclasses.dataclass
class Source:
    """A checkpoint seen in CustomNet names. `hints` are config values read from config.json files (numbers
    the weights cannot tell, such as attention heads); `info` goes into the model folder's provenance."""

    path: pathlib.Path
    format: str
    tensors: dict[str, LazyTensor]
    files: list[pathlib.Path]
    hints: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    _checkpoints: list[Checkpoint] = dataclasses.field(default_factory=list, repr=False)

    @property
    def metadata(self) -> dict[str, str]:
        """The safetensors header metadata of a single-file source (empty otherwise)."""
        return dict(self._checkpoints[0].metadata) if len(self._checkpoints) == 1 else {}

    def close(self) -> None:
        for checkpoint in self._checkpoints:
            checkpoint.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def checkpoint_state(checkpoint: Checkpoint) -> tuple[dict[str, LazyTensor], dict[str, Any]]:
    """The weights of a checkpoint file: a flat state dict, or a Lightning file's `state_dict`."""
    path, top = checkpoint.path, checkpoint.obj
    name = foreign_name(top)
    if name is not None:
        raise UnsafeCheckpointError(unsafe_message(path, checkpoint.foreign or [name], "the whole file"))
    if not isinstance(top, Mapping):
        raise CheckpointFormatError(f"{path} is not a checkpoint: it holds a {type(top).__name__}, not a dict of "
                                    "tensors")
    info: dict[str, Any] = {}
    state = top
    if isinstance(top.get("state_dict"), Mapping):
        state = top["state_dict"]
        info["lightning"] = True
        for key in ("global_step", "epoch"):
            if isinstance(top.get(key), int):
                info[key] = top[key]
    tensors: dict[str, LazyTensor] = {}
    skipped = []
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointFormatError(f"{path}: the state dict has a non-string key {key!r}; not a checkpoint")
        bad = foreign_name(value)
        if bad is not None:
            raise UnsafeCheckpointError(unsafe_message(path, [bad], f"the entry {key!r} of its state dict"))
        if isinstance(value, LazyTensor):
            tensors[key] = value
        else:
            skipped.append(key)
    if not tensors:
        raise CheckpointFormatError(f"{path} is not a checkpoint: it holds no tensors (top-level keys "
                                    f"{list(top)[:10]})")
    if skipped:
        info["non_tensor_entries_skipped"] = skipped[:20]
    if checkpoint.foreign:
        info["objects_not_loaded"] = checkpoint.foreign  # e.g. Lightning callbacks: inert, outside the weights
    return tensors, info


def weights_file(folder: pathlib.Path, names: tuple[str, ...], required: bool = True) -> pathlib.Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    if required:
        raise CheckpointFormatError(f"{folder} lacks its weights file (one of {list(names)})")
    return None


def read_json(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointFormatError(f"{path} is not valid JSON: {error}") from error

