"""A rule maps one PyTorch tensor (or a row slice of it) to one of our parameters.

Layouts:
  copy    same array (norm scales, biases, embeddings, OpenAI CLIP's `proj` which is used as x @ proj)
  linear  torch (out, in) -> ours (in, out)
  conv    torch (O, I, kh, kw) -> ours (kh, kw, I, O)

`rows` takes a slice of the torch tensor's first axis before the layout change: OpenAI CLIP keeps
q, k, v stacked in one `in_proj_weight`; three rules with rows (0, C), (C, 2C), (2C, 3C) split it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from customnet_jax.models.params import CheckpointMismatchError, Path

LAYOUTS = ("copy", "linear", "conv")


@dataclasses.dataclass(frozen=True)
class Rule:
    torch_key: str
    path: Path
    layout: str = "copy"
    rows: tuple[int, int] | None = None

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}")


def prefixed(rules: Iterable[Rule], torch_prefix: str = "", path_prefix: Path = ()) -> list[Rule]:
    """Put rules written for one network under its place in a whole-model checkpoint and parameter tree."""
    return [dataclasses.replace(r, torch_key=torch_prefix + r.torch_key, path=path_prefix + r.path) for r in rules]


def to_ours(tensor: np.ndarray, rule: Rule) -> np.ndarray:
    """The torch-layout tensor `tensor` as our parameter under `rule`."""
    if rule.rows is not None:
        tensor = tensor[rule.rows[0]:rule.rows[1]]
    if rule.layout == "linear":
        return np.ascontiguousarray(np.swapaxes(tensor, 0, 1))
    if rule.layout == "conv":
        return np.ascontiguousarray(np.transpose(tensor, (2, 3, 1, 0)))
    return np.asarray(tensor)


def to_torch(param: np.ndarray, rule: Rule) -> np.ndarray:
    """Our parameter as the torch-layout tensor (or row slice) of `rule`."""
    if rule.layout == "linear":
        return np.ascontiguousarray(np.swapaxes(param, 0, 1))
    if rule.layout == "conv":
        return np.ascontiguousarray(np.transpose(param, (3, 2, 0, 1)))
    return np.asarray(param)


def torch_shape(param_shape: tuple[int, ...], rule: Rule) -> tuple[int, ...]:
    """The torch tensor shape (of the slice, for row rules) that produces a parameter of `param_shape`."""
    if rule.layout == "linear":
        return (param_shape[1], param_shape[0])
    if rule.layout == "conv":
        return (param_shape[3], param_shape[2], param_shape[0], param_shape[1])
    return tuple(param_shape)


def check_coverage(rules: list[Rule], param_shapes: Mapping[Path, tuple[int, ...]]) -> None:
    """Every parameter is produced by exactly one rule and every rule targets a parameter."""
    targets = [r.path for r in rules]
    duplicated = sorted({str(p) for p in targets if targets.count(p) > 1})
    unknown = sorted(str(p) for p in set(targets) - set(param_shapes))
    uncovered = sorted(str(p) for p in set(param_shapes) - set(targets))
    problems = []
    if duplicated:
        problems.append(f"parameters set by several rules: {duplicated[:5]}")
    if unknown:
        problems.append(f"rules for parameters the model does not have: {unknown[:5]}")
    if uncovered:
        problems.append(f"parameters no rule sets: {uncovered[:5]}")
    if problems:
        raise CheckpointMismatchError("name rules do not fit the model: " + "; ".join(problems))


def expected_torch_shapes(rules: list[Rule], param_shapes: Mapping[Path, tuple[int, ...]]) -> dict[str, tuple]:
    """torch key -> full tensor shape the model expects (row slices stacked back)."""
    shapes: dict[str, tuple] = {}
    for rule in rules:
        shape = torch_shape(tuple(param_shapes[rule.path]), rule)
        if rule.rows is None:
            shapes[rule.torch_key] = shape
        else:
            stop = max(rule.rows[1], shapes.get(rule.torch_key, (0,))[0])
            shapes[rule.torch_key] = (stop, *shape[1:])
    return shapes


def summarize_keys(keys: Iterable[str], max_groups: int = 8, max_patterns: int = 4) -> str:
    """Checkpoint keys grouped by top-level module, numbers folded to `*`, with counts: a few lines, not 700.

    e.g. `model (32): diffusion_model.input_blocks.*.1.transformer_blocks.*.attn2.to_k_text.weight x6, ...`
    """
    groups: dict[str, dict[str, int]] = {}
    for key in keys:
        module, _, rest = key.partition(".")
        pattern = ".".join("*" if part.isdigit() else part for part in rest.split(".")) if rest else ""
        counts = groups.setdefault(module, {})
        counts[pattern] = counts.get(pattern, 0) + 1
    lines = []
    ordered = sorted(groups.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    for module, patterns in ordered[:max_groups]:
        ranked = sorted(patterns.items(), key=lambda item: (-item[1], item[0]))
        shown = ", ".join((f"{p} x{n}" if n > 1 else p) if p else "(the key itself)" for p, n in ranked[:max_patterns])
        more = f", ... {len(ranked) - max_patterns} more patterns" if len(ranked) > max_patterns else ""
        lines.append(f"    {module} ({sum(patterns.values())}): {shown}{more}")
    if len(ordered) > max_groups:
        lines.append(f"    ... {len(ordered) - max_groups} more modules")
    return "\n".join(lines)


def import_tensors(tensors: Mapping[str, Any], rules: list[Rule], param_shapes: Mapping[Path, tuple[int, ...]],
                   ignore: Iterable[str] = (), dtype: Any = np.float32) -> dict[Path, np.ndarray]:
    """Checkpoint tensors (name -> array-like, read lazily) -> our parameters (path -> numpy array).

    `ignore` holds fnmatch patterns of keys we deliberately drop (schedule buffers, position ids...).
    Raises CheckpointMismatchError naming the missing, unexpected (grouped by module) or wrongly shaped keys;
    names and shapes (a `.shape` attribute, if the values have one) are all checked before any data is read.
    """
    check_coverage(rules, param_shapes)
    expected = expected_torch_shapes(rules, param_shapes)
    ignore = list(ignore)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(k for k in set(tensors) - set(expected) if not any(fnmatch.fnmatchcase(k, p) for p in ignore))
    if missing or unexpected:
        parts = ["checkpoint does not match the model config:"]
        if missing:
            parts.append(f"  {len(missing)} missing keys (the model needs them, the checkpoint lacks them):\n"
                         + summarize_keys(missing))
        if unexpected:
            parts.append(f"  {len(unexpected)} unexpected keys (in the checkpoint, not in the model):\n"
                         + summarize_keys(unexpected))
        parts.append("  Check that the config (e.g. in_channels, zero123 vs CustomNet) matches the checkpoint, "
                     "or pass the right --format.")
        raise CheckpointMismatchError("\n".join(parts))
    wrong = []
    for key, shape in expected.items():
        have = getattr(tensors[key], "shape", None)
        if have is not None and tuple(have) != tuple(shape):
            wrong.append(f"    {key}: shape {tuple(have)} in the checkpoint, the model config expects {tuple(shape)}")
    if wrong:
        more = [f"    ... {len(wrong) - 10} more"] if len(wrong) > 10 else []
        raise CheckpointMismatchError("\n".join([f"checkpoint does not match the model config: {len(wrong)} tensors "
                                                 "have the wrong shape:", *wrong[:10], *more]))
    params: dict[Path, np.ndarray] = {}
    for rule in rules:
        tensor = np.asarray(tensors[rule.torch_key])
        if tuple(tensor.shape) != tuple(expected[rule.torch_key]):
            raise CheckpointMismatchError(
                f"{rule.torch_key}: shape {tuple(tensor.shape)} in the checkpoint, the model config expects "
                f"{tuple(expected[rule.torch_key])}")
        params[rule.path] = to_ours(tensor, rule).astype(dtype)
    return params
