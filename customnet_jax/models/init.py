"""Random initial parameters, drawn on the host with numpy from the abstract model's shapes, by rules.

One compiled init program for even the tiny model takes ~50 s of XLA compile on a CPU (800 random ops),
and eager construction compiles each initializer; numpy draws the full-size model in seconds. How each
parameter starts is an ordered (regex -> initialiser name) list over "/"-joined paths, first match wins
(`param_rules`); `INIT_RULES` is LDM's scheme: fan-in scaled normals, zero biases, unit norm scales, and
zero-initialised output layers of every residual branch (`zero_module` in LDM: res-block conv2, transformer
proj_out, the UNet's final conv), so a fresh UNet starts as an identity-like map; cc_projection starts as the
identity on the CLIP columns and zero on the view columns (Zero-1-to-3's init, docs/model.md §4). Low-rank
adapters start as PEFT's LoRA: A as torch's nn.Linear init, B at zero (the adapted model starts as the base).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping

import numpy as np

from customnet_jax.models.param_rules import Path, Rules, resolve


def _fan_in(shape: tuple[int, ...]) -> int:
    return max(int(np.prod(shape[:-1])), 1)


def _uniform(shape: tuple[int, ...], rng: np.random.Generator, bound: float) -> np.ndarray:
    return rng.uniform(-bound, bound, shape).astype(np.float32)


# name -> (shape, rng) -> float32 array. "torch_uniform" is torch.nn.Linear / nn.Conv2d's default
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)).
INITIALISERS: dict[str, Callable[[tuple[int, ...], np.random.Generator], np.ndarray]] = {
    "zeros": lambda shape, rng: np.zeros(shape, np.float32),
    "ones": lambda shape, rng: np.ones(shape, np.float32),
    "identity": lambda shape, rng: np.eye(*shape, dtype=np.float32),
    "fan_in_normal": lambda shape, rng: (rng.standard_normal(shape) / np.sqrt(_fan_in(shape))).astype(np.float32),
    "normal_0.02": lambda shape, rng: (0.02 * rng.standard_normal(shape)).astype(np.float32),
    "torch_uniform": lambda shape, rng: _uniform(shape, rng, 1.0 / np.sqrt(_fan_in(shape))),
}

ZERO_INIT_OUTPUTS = r"^unet/((.*/)?(resnets|resnet_1|resnet_2)/(.*/)?conv2|(.*/)?proj_out|conv_out)/kernel$"

INIT_RULES: Rules = (
    (r"^cc_projection/kernel$", "identity"),  # (772, 768): identity on the embedding rows, 0 on the view rows
    (r"/lora_a$", "torch_uniform"),
    (r"/lora_b$", "zeros"),
    (r"/bias$", "zeros"),
    (r"/scale$", "ones"),
    (ZERO_INIT_OUTPUTS, "zeros"),
    (r"/kernel$", "fan_in_normal"),
    (r".*", "normal_0.02"),  # embeddings, class / position embeddings
)


@dataclasses.dataclass(frozen=True)
class ModelInit:
    """How a model's fresh parameters start: ordered (regex, initialiser name) rules (names: `INITIALISERS`)."""

    rules: tuple[tuple[str, str], ...] = INIT_RULES


def initial_values(shapes: Mapping[Path, tuple[int, ...]], seed: int, rules: Rules = INIT_RULES,
                   what: str = "init rules") -> dict[Path, np.ndarray]:
    """path -> initial value for every parameter of `shapes`; each path has its own random stream (adding a
    layer does not change the others' draws, and the rules decide the law, not the stream)."""
    names = resolve(rules, shapes, what, check=lambda name: name in INITIALISERS,
                    expected=f"one of {sorted(INITIALISERS)}")
    params = {}
    for path, shape in shapes.items():
        rng = np.random.default_rng([seed, zlib.crc32("/".join(map(str, path)).encode())])
        params[path] = INITIALISERS[names[path]](tuple(shape), rng)
    return params


def initial_params(shapes: Mapping[Path, tuple[int, ...]], seed: int,
                   init: ModelInit = ModelInit()) -> dict[Path, np.ndarray]:
    """path -> initial value for every parameter, by `init.rules`."""
    return initial_values(shapes, seed, init.rules, "init.rules")
